"""The specs' ``expect:`` sections (paper numbers in the paper-study specs, the notebooks' numbers in the
notebook specs) load through the spec loader, select trials the spec actually runs, and reach the
scorecard from a run directory's saved spec. Needs the spec loader to accept ``expect:``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from bnsweep.analysis.scorecard import expectations_of

from bnsweep.spec.config import TrialConfig, flatten
from bnsweep.spec.expect import parse_expectations
from bnsweep.spec.sweep_spec import load_spec
from bnsweep.sweep.space import grid_points, resolve_trial_config

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
WITH_EXPECT = ("depth", "regimes", "all_frozen", "cifar10_full", "visualization", "notebook_subset", "notebook_full",
               "notebook_full_tpu", "notebook_adam", "notebook_batch_sizes", "notebook_all_frozen")


@pytest.mark.parametrize("name", WITH_EXPECT)
def test_every_expectation_selects_trials_the_spec_runs(name):
    spec = load_spec(SWEEPS / f"{name}.yaml")
    expectations = parse_expectations(spec.raw.get("expect"))
    assert expectations and all(e.source for e in expectations)
    configs = [flatten(TrialConfig.from_dict(resolve_trial_config(spec, p, seed=0)).to_dict())
               for p in grid_points(spec.parameters)]
    for e in expectations:
        assert any(e.matches(c) for c in configs), f"{name}: {e.label} selects nothing the spec trains"


def test_the_saved_spec_carries_its_expectations(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    raw = dict(load_spec(SWEEPS / "depth.yaml").raw)
    raw.pop("include", None)
    (run / "spec.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    got = expectations_of(run)
    assert {e.label for e in got} >= {"regime=bn, model.depth=110", "regime=all, model.depth=20"}


def test_a_bad_expect_section_is_refused_at_load_naming_its_key(tmp_path):
    from bnsweep.spec.sweep_spec import SpecError

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nmethod: grid\nparameters:\n  regime: {values: [all, bn]}\n"
                    "expect:\n  \"regime=bn\": {test_accuracy: [0.9, 0.1]}\n")
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert 'expect."regime=bn".test_accuracy' in str(e.value) and "received" in str(e.value)


def test_expectations_are_not_part_of_the_spec_hash(tmp_path):
    body = "name: s\nmethod: grid\nparameters:\n  regime: {values: [all, bn]}\n"
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(body)
    b.write_text(body + "expect:\n  \"regime=bn\": {test_accuracy: [0.4, 0.6], source: x}\n")
    sa, sb = load_spec(a), load_spec(b)
    assert sa.spec_hash() == sb.spec_hash()  # editing what is expected never blocks a resume
    assert "expect" not in sa.raw and sb.raw["expect"]["regime=bn"]["source"] == "x"
    assert load_spec(b).to_yaml() and "expect" in yaml.safe_load(sb.to_yaml())
