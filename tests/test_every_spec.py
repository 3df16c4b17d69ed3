"""Every sweep in sweeps/ (not sweeps/base/) launched for one step on 300 real CIFAR images: every configuration
of a grid (depth's 20, up to ResNet-110; notebook_recipe's 16; width's 12 …), a few samples of a search; every
trial must complete.

The spec's own science stays: its regime, schedule, optimizer, network family and batch size are not touched.
What is changed, for the CPU test machine: the data (``--data`` the real subset, ``data.train_size=300`` or the
spec's batch plus 200 where its batch is larger, 100 validation + 100 test images), one step of one epoch, one
seed, ResNet-8 where the spec's network is a basic ResNet whose depth is not what it searches, W&B off, an early
stopping grace period of 1 epoch (lr_schedules' ASHA waits 40), and the TPU spec's ``strategy: tpu`` /
``resources: {tpu: 4, cpu: 8}`` (``--set strategy=none``, no TPU, one CPU).
One Ray (2 CPUs) is shared by every launch; each launch is the driver's own ``launch`` in this process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-subset-train.npz"
SPECS = sorted((ROOT / "sweeps").glob("*.yaml"))
SEARCH_SAMPLES = int(os.environ.get("EVERY_SPEC_SAMPLES", "3"))  # of a search (a grid runs every point)
TIMES: dict[str, float] = {}

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CIFAR.is_file(), reason=f"the real CIFAR subset is absent ({CIFAR.name})")]


@pytest.fixture(scope="module")
def ray_shared():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 << 20, log_to_driver=False,
             logging_level="ERROR",
             runtime_env={"env_vars": {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2",
                                       "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}})
    t0 = time.perf_counter()
    yield ray
    ray.shutdown()
    print(f"\nevery spec: {len(TIMES)} launched in {time.perf_counter() - t0:.0f} s: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in TIMES.items()))


def tiny(path: Path):
    """The spec of ``path``, made tiny as the module docstring says (its science kept)."""
    from bnsweep.spec.config import TrialConfig
    from bnsweep.spec.sweep_spec import load_spec
    from bnsweep.sweep.space import count_configurations

    spec = load_spec(path)
    base = TrialConfig.from_dict(spec.base_trial_config())
    batches = [base.batch_size] + [int(v) for v in getattr(spec.parameters.get("batch_size"), "values", ())]
    overrides: dict[str, object] = {
        "data.source": "npz", "data.path": str(CIFAR), "data.train_size": max(300, max(batches) + 200),
        "data.val_size": 100, "data.test_size": 100, "steps_per_epoch": 1, "epochs": 1,
    }
    if base.model.arch == "resnet" and not any(k.startswith("model") for k in spec.parameters):
        overrides["model.depth"] = 8
    if base.strategy != "none":
        overrides["strategy"] = "none"  # a TPU spec on a CPU machine
    epochs = {k: overrides.pop(k) for k in ("epochs", "steps_per_epoch")}
    spec = load_spec(path, overrides=overrides)
    if spec.scheduler.type != "none" and spec.scheduler.grace_period > 1:  # (ASHA's 40 epochs of 160, lr_schedules)
        spec = spec.replace(scheduler=spec.scheduler.model_copy(update={"grace_period": 1}))
    spec = spec.replace(fixed={**spec.fixed, **epochs})
    changes: dict[str, object] = {"replicates": 1, "tracking": {"wandb": False}}
    if spec.method != "grid" and count_configurations(spec) > SEARCH_SAMPLES:
        changes["trials"] = SEARCH_SAMPLES
    if spec.resources.tpu or (spec.resources.cpu or 0) > 1:
        changes["resources"] = {"cpu": 1, "gpu": 0}
    return spec.replace(**changes)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_runs_every_trial_to_completion(path, ray_shared, tmp_path):
    from bnsweep.store.table import load_results
    from bnsweep.sweep.driver import LaunchOptions, launch
    from bnsweep.sweep.space import count_configurations, grid_size

    spec = tiny(path)
    n = count_configurations(spec)
    if spec.method == "grid":
        assert n == grid_size(spec.parameters), f"{path.name}: the test would run {n} of its grid's points"
    t0 = time.perf_counter()
    out = launch(spec, options=LaunchOptions(run_dir=tmp_path / spec.name, quiet=True, dashboard=False))
    TIMES[path.stem] = time.perf_counter() - t0
    table = load_results(tmp_path / spec.name)
    rows = [(r.trial_id, r.status, str(r.reason)[:300]) for r in table.itertuples()]
    assert out.finished and out.complete, (out.counts, rows)
    assert out.counts["completed"] == n and len(table) == n, (out.counts, rows)
    assert set(table["status"]) == {"completed"} and table["test_accuracy"].notna().all(), rows
    assert table["config_hash"].nunique() == n, f"{n} configurations ran as {table['config_hash'].nunique()}"
