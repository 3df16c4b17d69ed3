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
