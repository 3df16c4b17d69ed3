"""Whole sweeps through a real local Ray, real Optuna SQLite storage and real Keras training.

One Ray is started for the module (``ray_local``); drivers under test join it. The kill -9 test runs
the real CLI in a subprocess (with its own Ray), kills the driver and resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from bnsweep.cli import main
from bnsweep.spec.sweep_spec import load_spec
from bnsweep.store.table import TEXT_DTYPES
from bnsweep.sweep.driver import LaunchOptions, launch

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT.parent / "shared" / "data" / "cifar10-subset-train.npz"

TINY_FIXED = """
fixed:
  model: {depth: 8}
  epochs: 3
  batch_size: 32
  steps_per_epoch: 2
  data: {source: synthetic, synthetic_size: 64, val_size: 32, test_size: 32}
"""


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=120 << 20, log_to_driver=False,
             logging_level="ERROR",
             runtime_env={"env_vars": {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2",
                                       "WANDB_MODE": "offline", "WANDB_SILENT": "true"}})
    yield ray
    ray.shutdown()


def _spec(tmp_path: Path, text: str, name: str = "s") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


def _studies(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{run_dir / 'optuna.db'}")
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).trials


def test_tpe_sweep_with_conditional_schedules_replicates_and_asha(ray_local, tmp_path):
    spec = load_spec(_spec(tmp_path, f"""
name: tpe_tiny
method: tpe
trials: 4
replicates: 2
seed: 0
max_concurrent: 2
scheduler: {{type: asha, grace_period: 1, reduction_factor: 2}}
resources: {{cpu: 1}}
tracking: {{wandb: false}}
{TINY_FIXED}
parameters:
  regime: {{values: [bn, all]}}
  lr: {{distribution: log_uniform, min: 0.01, max: 0.5}}
  lr_schedule:
    one_of:
      multistep: {{milestones: [0.5, 0.75], gamma: 0.1}}
      cosine: {{warmup_epochs: {{distribution: int_uniform, min: 0, max: 1}}}}
"""))
    run_dir = tmp_path / "run"
    out = launch(spec, options=LaunchOptions(run_dir=run_dir, quiet=True))
    assert out.finished
    df = pd.read_csv(run_dir / "results.csv", dtype=TEXT_DTYPES)
    assert len(df) == 4 * 2  # one row per replicate
    assert set(df["status"]) <= {"completed", "pruned"}
    assert (df.groupby("trial_id")["seed"].apply(sorted).map(tuple) == (0, 1)).all()
    assert (df.groupby("trial_id")["group_hash"].nunique() == 1).all()  # replicates share a configuration
    done = df[df["status"] == "completed"]
    assert len(done) >= 2 and done["test_accuracy"].notna().all()
    assert (done["epochs_run"] == 3).all()
    # the Optuna study: persisted, 4 finished trials, none stuck RUNNING, conditional params only per branch
    trials = _studies(run_dir)
    assert len(trials) == 4
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    for t in trials:
        branch = t.params["lr_schedule"]
        assert ("lr_schedule.cosine.warmup_epochs" in t.params) == (branch == "cosine")
    # the recorded config is the config that trained: it matches what Optuna sampled
    by_lr = {round(t.params["lr"], 12): t.params for t in trials}
    for _, row in df.iterrows():
        params = by_lr[round(row["lr"], 12)]
        assert row["lr_schedule.type"] == params["lr_schedule"] and row["regime"] == params["regime"]
        result = json.loads((run_dir / "trials" / row["trial_id"] / f"seed-{row['seed']}" / "result.json").read_text())
        assert result["config"]["lr"] == row["lr"] and result["config"]["seed"] == row["seed"]
    # the searcher was told the mean over seeds (Optuna's value = mean of the replicates' last val accuracy)
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            rows = df[df["lr"].round(12) == round(t.params["lr"], 12)]
            assert t.value == pytest.approx(rows["val_accuracy_final"].mean(), abs=1e-6)


def test_grid_sweep_runs_every_point_once_and_records_failures_and_divergence(ray_local, tmp_path):
    good = tmp_path / "good.npz"
    import numpy as np

    from bnsweep.engine.data import synthetic

    x, y = synthetic(96, seed=0)
    np.savez(good, x_train=x, y_train=y)
    spec = load_spec(_spec(tmp_path, f"""
name: grid_tiny
method: grid
replicates: 1
max_concurrent: 2
retries: 0
resources: {{cpu: 1}}
tracking: {{wandb: false}}
fixed:
  model: {{depth: 8}}
  epochs: 3
  batch_size: 32
  steps_per_epoch: 2
  data: {{source: npz, val_size: 16, test_size: 16}}
parameters:
  lr: {{values: [0.1, 1.0e+9]}}
  data.path: {{values: ["{good}", "{tmp_path / 'missing.npz'}"]}}
"""))
    run_dir = tmp_path / "run"
    out = launch(spec, options=LaunchOptions(run_dir=run_dir, quiet=True))
    assert out.finished
    df = pd.read_csv(run_dir / "results.csv", dtype=TEXT_DTYPES)
    assert len(df) == 4
    assert sorted(zip(df["lr"], df["data.path"].map(lambda p: Path(p).name), strict=True)) == sorted(
        [(0.1, "good.npz"), (0.1, "missing.npz"), (1e9, "good.npz"), (1e9, "missing.npz")])
    status = {(r.lr, Path(r["data.path"]).name): (r.status, r.reason) for _, r in df.iterrows()}
    assert status[(0.1, "good.npz")][0] == "completed"
    assert status[(1e9, "good.npz")][0] == "diverged"
    for lr in (0.1, 1e9):
        st, reason = status[(lr, "missing.npz")]
        assert st == "failed" and "missing.npz" in reason and "no such file" in reason


@pytest.mark.slow
@pytest.mark.skipif(not SUBSET.exists(), reason=f"the real CIFAR-10 subset is not at {SUBSET} (../shared/data)")
def test_quickstart_spec_runs_on_the_real_subset_through_the_cli(ray_local, tmp_path, capsys):
    """The README's run command, offline: --data points at the real subset."""
    run_dir = tmp_path / "quickstart"
    rc = main(["launch", str(ROOT / "sweeps" / "quickstart.yaml"), "--data", str(SUBSET),
               "--run-dir", str(run_dir), "--quiet"])
    assert rc == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert events[0]["event"] == "launched" and events[-1]["event"] == "finished"
    df = pd.read_csv(run_dir / "results.csv", dtype=TEXT_DTYPES)
    assert len(df) == 4 and set(df["status"]) == {"completed"}
    # packing chosen for the machine (the spec sets neither max_concurrent nor resources.cpu): on 2 CPUs,
    # both configurations at once with one TensorFlow thread each, and the table says so
    assert (events[0]["concurrent"], events[0]["cpus_per_trial"]) == (2, 1), events[0]
    assert (df["accelerator_threads"] == 1).all(), df["accelerator_threads"]
    spans = df.groupby("trial_id").agg(start=("started_at", "min"), end=("finished_at", "max"))
    (s0, e0), (s1, e1) = spans.itertuples(index=False)
    assert s1 < e0 and s0 < e1, spans  # the two trials trained at the same time
    acc = df.groupby("regime")["test_accuracy"].mean()
    assert acc["all"] > 0.2 and acc["bn"] > 0.13, acc  # well above chance (0.10) after 4 epochs
    assert (df["data_source"].str.contains("cifar10-subset-train.npz")).all()
    # W&B, offline by default: one run per replicate plus the sweep summary, all inside the run dir
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 4 + 1
    assert main(["status", str(run_dir)]) == 0
    assert "quickstart" in capsys.readouterr().out


def _launch_subprocess(spec: Path, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "WANDB_MODE": "offline",
           "RAY_ADDRESS": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "bnsweep", "launch", str(spec), "--run-dir", str(run_dir), "--quiet",
         "--no-dashboard", "--num-cpus", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _results_on_disk(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in (run_dir / "trials").glob("*/seed-*/result.json")}


@pytest.mark.slow
def test_kill_9_of_the_driver_mid_sweep_then_resume_loses_and_repeats_nothing(tmp_path):
    spec = _spec(tmp_path, f"""
name: kill_tiny
method: random
trials: 4
replicates: 1
max_concurrent: 1
resources: {{cpu: 2}}
tracking: {{wandb: false}}
{TINY_FIXED}
parameters:
  lr: {{distribution: log_uniform, min: 0.01, max: 0.3}}
""")
    run_dir = tmp_path / "run"
    proc = _launch_subprocess(spec, run_dir)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and len(_results_on_disk(run_dir) if run_dir.exists() else {}) < 2:
            time.sleep(0.5)
            assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-sweep
        proc.wait(30)
    finally:
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # and with it this machine's Ray (a crash, not a Ctrl-C)
    before = _results_on_disk(run_dir)
    assert 2 <= len(before) < 4
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "WANDB_MODE": "offline"}
    res = subprocess.run([sys.executable, "-m", "bnsweep", "resume", str(run_dir), "--quiet", "--no-dashboard",
                          "--num-cpus", "2"], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    after = _results_on_disk(run_dir)
    assert len(after) == 4
    for name, blob in before.items():  # finished trials kept byte for byte: never re-run
        assert after[name] == blob, name
    df = pd.read_csv(run_dir / "results.csv", dtype=TEXT_DTYPES)
    assert len(df) == 4 and df["trial_id"].is_unique and set(df["status"]) == {"completed"}
    states = [t.state for t in _studies(run_dir)]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4


def test_bad_spec_exits_2_with_one_line_per_problem_and_no_traceback(tmp_path, capsys):
    bad = _spec(tmp_path, "name: x\nmethod: tpee\ntrials: 0\nfixed: {model: {depth: 21}}\n")
    assert main(["plan", str(bad), "--no-probe"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) >= 3
    assert any(f"{bad}:2" in line and "method" in line and "tpee" in line for line in lines)
    assert any("model.depth" in line and "21" in line for line in lines)


def test_second_launch_into_a_run_directory_is_refused(tmp_path, capsys):
    from bnsweep.store.rundir import RunLock

    spec = _spec(tmp_path, f"name: busy\nmethod: random\ntrials: 1\ntracking: {{wandb: false}}\n{TINY_FIXED}")
    run_dir = tmp_path / "run"
    with RunLock(run_dir):  # a live driver holds it
        (run_dir / "sweep.json").write_text(json.dumps({"name": "busy", "created": "now", "spec_hash": "x"}))
        assert main(["launch", str(spec), "--run-dir", str(run_dir), "--no-dashboard"]) == 2
        assert "already holds sweep" in capsys.readouterr().err
        assert main(["resume", str(run_dir), "--no-dashboard"]) == 2
        assert "in use by another bnsweep" in capsys.readouterr().err
