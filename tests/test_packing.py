"""How ``launch`` packs trials onto a machine when the spec leaves ``max_concurrent`` / ``resources.cpu``
unset (bench/RESULTS.md §4), and that a spec or flag that sets them always wins."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bnsweep.spec.sweep_spec import Resources, SweepSpec, load_spec, parse_spec_text
from bnsweep.sweep.packing import TRIAL_MEMORY_BYTES, choose_packing, default_concurrent_trials, default_cpus_per_trial

ROOT = Path(__file__).resolve().parents[1]


def _spec(**kw) -> SweepSpec:
    return SweepSpec(name="p", **kw)


@pytest.mark.parametrize("configurations, cpus, expected", [
    (2, 2, (2, 1)),   # one trial per core: measured 1.27x the images/s of one 2-thread trial
    (8, 2, (2, 1)),
    (1, 2, (1, 2)),   # a lone trial gets every core
    (3, 16, (3, 5)),  # fewer configurations than cores: every core still shared out
    (40, 16, (16, 1)),
])
def test_unset_packing_fills_the_machine_one_trial_per_cpu(configurations, cpus, expected):
    assert choose_packing(_spec(), configurations=configurations, total_cpus=cpus) == expected


def test_what_the_spec_sets_wins():
    assert choose_packing(_spec(max_concurrent=1), configurations=4, total_cpus=2) == (1, 2)
    assert choose_packing(_spec(resources=Resources(cpu=2)), configurations=4, total_cpus=2) == (1, 2)
    assert choose_packing(_spec(resources=Resources(cpu=0.5)), configurations=8, total_cpus=2) == (4, 0.5)
    assert choose_packing(_spec(max_concurrent=3, resources=Resources(cpu=1)), configurations=8,
                          total_cpus=2) == (3, 1)  # Ray then runs only as many as fit: the user's call


def test_gpus_and_memory_cap_how_many_trials_run_at_once():
    spec = _spec(resources=Resources(gpu=0.25))
    assert choose_packing(spec, configurations=20, total_cpus=16, total_gpus=1) == (4, 4)
    assert choose_packing(spec, configurations=20, total_cpus=16, total_gpus=2) == (8, 2)
    few_gb = 4 * TRIAL_MEMORY_BYTES + 1
    assert choose_packing(_spec(), configurations=100, total_cpus=64, memory_bytes=few_gb) == (4, 16)
    assert default_concurrent_trials(total_cpus=64, configurations=100, memory_bytes=1) == 1
    assert default_cpus_per_trial(3, concurrent=2) == 1 and default_cpus_per_trial(1, concurrent=4) == 1


def test_shipped_base_recipe_leaves_packing_to_the_machine_and_a_saved_spec_reads_back():
    spec = load_spec(ROOT / "sweeps" / "quickstart.yaml")
    assert spec.max_concurrent is None and spec.resources.cpu is None
    again = parse_spec_text(yaml.safe_dump(dict(spec.raw)))  # what a run directory saves
    assert again.max_concurrent is None and again.resources == spec.resources
    assert again.spec_hash() == spec.spec_hash()
    explicit = load_spec(ROOT / "sweeps" / "lr_schedules.yaml")
    assert explicit.max_concurrent == 2 and explicit.resources.cpu is None  # two TPE trials at once, CPUs shared
    assert choose_packing(explicit, configurations=48, total_cpus=2) == (2, 1)
    assert choose_packing(explicit, configurations=48, total_cpus=16) == (2, 8)


@pytest.mark.parametrize("text, key", [("max_concurrent: 0", "max_concurrent"),
                                       ("max_concurrent: 1.5", "max_concurrent"),
                                       ("resources: {cpu: 0}", "resources.cpu"),
                                       ("resources: {cpu: -2}", "resources.cpu")])
def test_bad_packing_values_are_refused_with_the_key(text, key):
    from bnsweep.spec.sweep_spec import SpecError

    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        parse_spec_text(f"name: p\n{text}\n")
