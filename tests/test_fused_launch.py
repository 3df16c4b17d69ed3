"""``replicates_layout: fused`` in a real launch: a configuration's seeds train as one FusedTrialRun in one
Ray trial, and every replicate still gets its own record, history, checkpoint and weights — the same
records, bit for bit, as the separate layout (N TrialRuns) on a CPU with one thread per trial. A fused run
whose training raises falls back to separate TrialRuns from the replicates' epoch checkpoints (the format
both layouts write) and still ends with the same records.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnsweep.spec.sweep_spec import load_spec
from bnsweep.store.table import TEXT_DTYPES
from bnsweep.sweep.driver import LaunchOptions, launch

FAULTS_FILE = Path(tempfile.gettempdir()) / f"bnsweep-fused-faults-{os.getpid()}.json"

SPEC = """
name: fused_{layout}
method: grid
replicates: 2
retries: {retries}
max_concurrent: 1
resources: {{cpu: 1}}
tracking: {{wandb: false}}
fixed:
  model: {{depth: 8}}
  regime: bn_output
  epochs: 3
  batch_size: 16
  steps_per_epoch: 3
  replicates_layout: {layout}
  data: {{source: synthetic, synthetic_size: 64, val_size: 32, test_size: 32}}
parameters:
  lr: {{values: [0.1]}}
"""


@pytest.fixture(scope="module")
def ray_local():
    import ray

    FAULTS_FILE.write_text("{}")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=120 << 20, log_to_driver=False,
             logging_level="ERROR",
             runtime_env={"env_vars": {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2",
                                       "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                                       "BNSWEEP_TEST_FAULTS": str(FAULTS_FILE)}})
    yield ray
    ray.shutdown()
    FAULTS_FILE.unlink(missing_ok=True)


def _launch(tmp_path: Path, layout: str, *, retries: int = 0, faults: list | None = None) -> tuple[Path, list]:
    log = tmp_path / f"{layout}-{retries}.jsonl"
    FAULTS_FILE.write_text(json.dumps({"log": str(log), "faults": faults or []}))
    spec_file = tmp_path / f"{layout}-{retries}.yaml"
    spec_file.write_text(SPEC.format(layout=layout, retries=retries))
    run_dir = tmp_path / f"run-{layout}-{retries}"
    outcome = launch(load_spec(spec_file), options=LaunchOptions(run_dir=run_dir, quiet=True, dashboard=False))
    assert outcome.finished and outcome.complete, outcome
    epochs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return run_dir, epochs


def _records(run_dir: Path) -> dict[int, dict]:
    table = pd.read_csv(run_dir / "results.csv", dtype=TEXT_DTYPES)
    assert len(table) == 2 and set(table["status"]) == {"completed"}, table[["seed", "status", "reason"]]
    out = {}
    for p in sorted(run_dir.glob("trials/*/seed-*/result.json")):
        r = json.loads(p.read_text())
        weights = np.load(p.parent / "final_weights.npz")
        out[int(r["seed"])] = {"history": [{k: h[k] for k in ("epoch", "train_loss", "train_accuracy",
                                                                "val_loss", "val_accuracy", "lr")}
                                           for h in r["history"]],
                               "test": (r["test_loss"], r["test_accuracy"]), "config_hash": r["config_hash"],
                               "weights": {k: weights[k] for k in weights.files}}
    assert sorted(out) == [0, 1]
    return out


def _same(a: dict[int, dict], b: dict[int, dict]) -> None:
    for seed in a:
        assert a[seed]["config_hash"] == b[seed]["config_hash"]  # the layout is not part of the configuration
        assert a[seed]["history"] == b[seed]["history"], seed  # bit for bit: floats compared exactly
        assert a[seed]["test"] == b[seed]["test"]
        assert a[seed]["weights"].keys() == b[seed]["weights"].keys()
        for k in a[seed]["weights"]:
            assert np.array_equal(a[seed]["weights"][k], b[seed]["weights"][k]), (seed, k)


def test_fused_and_separate_launches_record_the_same_replicates(ray_local, tmp_path):
    sep_dir, _ = _launch(tmp_path, "separate")
    fused_dir, fused_epochs = _launch(tmp_path, "fused")
    separate, fused = _records(sep_dir), _records(fused_dir)
    assert separate[0]["history"] != separate[1]["history"]  # two seeds, two trainings
    _same(separate, fused)
    # one trial process trained both seeds in each layout; the fused one says which layout it used
    assert len({e["pid"] for e in fused_epochs}) == 1 and len(fused_epochs) == 6
    layouts = pd.read_csv(fused_dir / "results.csv", dtype=TEXT_DTYPES)["replicates_layout"]
    assert set(layouts) == {"fused"}  # as asked for
    trained = {json.loads(p.read_text())["trained_as"] for p in fused_dir.glob("trials/*/seed-*/result.json")}
    assert trained == {"fused-separate"}  # and as trained (a CPU: the separate fused layout)
    assert {json.loads(p.read_text())["trained_as"] for p in sep_dir.glob("trials/*/seed-*/result.json")} == \
        {"separate"}


def test_a_fused_run_that_raises_goes_on_as_separate_trialruns_from_its_checkpoints(ray_local, tmp_path):
    sep_dir, _ = _launch(tmp_path, "separate")
    # epoch 2 of seed 0 raises once (the marker file makes it once): the fused run is abandoned, both seeds
    # restart as TrialRuns from their epoch-1 checkpoints (retries: 1) and finish
    marker = tmp_path / "raised-once"
    fused_dir, epochs = _launch(tmp_path, "fused", retries=1,
                                faults=[{"epoch": 2, "raise": "RuntimeError", "marker": str(marker),
                                         "message": "a fault in the fused step"}])
    assert marker.exists()
    per_seed = {s: [e["epoch"] for e in epochs if e["seed"] == s] for s in (0, 1)}
    assert per_seed[0] == [1, 2, 2, 3], per_seed  # epoch 2 again after the fault, not epoch 1
    _same(_records(sep_dir), _records(fused_dir))
    assert {json.loads(p.read_text())["trained_as"] for p in fused_dir.glob("trials/*/seed-*/result.json")} == \
        {"separate"}  # where it ended
