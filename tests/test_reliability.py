"""Reliability campaigns on real sweeps: real Ray, real Optuna SQLite, real Keras training.

- kill campaign: the driver is SIGKILLed at five moments of one sweep (start-up before and after the run
  files, mid-trial, while a finished trial's results table is being written, at the very end), interrupted
  with SIGINT twice (start-up, mid-trial), and Ray's own snapshot is torn; each time the sweep carries on,
  and at the end every trial that had finished is there exactly once with its original numbers, and no
  Optuna trial is left RUNNING;
- worker faults: a trial worker SIGKILLed mid-trial is retried from its checkpoint; a trial that raises,
  runs out of memory (an injected ``MemoryError``) or diverges is recorded with its status and reason
  while the sweep goes on;
- atomic writes: a process writing the results table is SIGKILLed again and again; the table is always
  whole (old or new), never half written;
- scale: a sweep of many one-step trials completes with every row in the table and bounded driver memory;
- concurrency: a run directory in use is refused; a lock left by a killed driver is taken over; of many
  drivers racing for one run directory exactly one gets it.

The in-process sweeps share one local Ray (``ray_local``); the kill campaign runs the real CLI in
subprocesses (each with its own Ray, its temp files in a private ``RAY_TMPDIR``) and kills them.
Test-only hooks (named as such): ``BNSWEEP_TEST_FAULTS`` (bnsweep/sweep/trainable.py) and
``BNSWEEP_TEST_PAUSE_AT`` (bnsweep/store/rundir.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from bnsweep.spec.sweep_spec import load_spec
from bnsweep.store.rundir import RunDirError, RunLock
from bnsweep.store.table import TEXT_DTYPES
from bnsweep.sweep.driver import LaunchOptions, launch

ROOT = Path(__file__).resolve().parents[1]
FAULTS_FILE = Path(tempfile.gettempdir()) / f"bnsweep-test-faults-{os.getpid()}.json"

TINY_DATA = "data: {source: synthetic, synthetic_size: 64, val_size: 32, test_size: 32}"


# ---------------------------------------------------------------- helpers


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


def _spec_file(tmp_path: Path, text: str, name: str = "s") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


def _study(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{run_dir / 'optuna.db'}")
    return optuna.load_study(study_name="bnsweep", storage=storage).trials


def _records(run_dir: Path) -> dict[str, bytes]:
    """Every finished replicate's result.json, byte for byte."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in (run_dir / "trials").glob("*/seed-*/result.json")}


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def _descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _kill_all(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


class Driver:
    """``python -m bnsweep ARGS`` in a subprocess: a real driver with its own local Ray."""

    def __init__(self, args: list[str], *, logs: Path, name: str, ray_tmp: Path, env: dict[str, str] | None = None):
        self.name = name
        self.out, self.err = logs / f"{name}.out", logs / f"{name}.err"
        full_env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2",
                    "WANDB_MODE": "offline", "RAY_ADDRESS": "", "RAY_TMPDIR": str(ray_tmp), **(env or {})}
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "bnsweep", *args], stdout=out, stderr=err,
                                         env=full_env, cwd=ROOT, start_new_session=True)
        self._family: set[int] = set()

    def tail(self) -> str:
        return (self.err.read_text()[-3000:] + "\n--- stdout ---\n" + self.out.read_text()[-2000:])

    def wait_for(self, ok, *, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._family.update(_descendants(self.proc.pid))  # the Ray processes it started
            if ok():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name}: the driver exited ({self.proc.returncode}) before {what}:\n{self.tail()}")
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"{self.name}: timed out waiting for {what}:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the driver (a crash), then the Ray processes it had started (they would die with the
        machine; here they must not outlive the test)."""
        self._family.update(_descendants(self.proc.pid))
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        time.sleep(0.5)
        _kill_all(sorted(self._family))

    def finish(self, timeout: float = 600) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.name}: did not finish in {timeout} s:\n{self.tail()}")
        _kill_all(sorted(p for p in self._family if _cmdline(p)))  # leftovers, if any
        return rc


def _mid_trial(run_dir: Path, epochs: int) -> bool:
    """A replicate has checkpointed at least one epoch and is not finished."""
    for state in (run_dir / "trials").glob("*/seed-*/checkpoint/state.json"):
        if (state.parent.parent / "result.json").exists():
            continue
        with contextlib.suppress(OSError, ValueError):
            if 1 <= json.loads(state.read_text())["epoch"] < epochs:
                return True
    return False


def _finished_trials(run_dir: Path, replicates: int) -> int:
    return sum(len(list(t.glob("seed-*/result.json"))) == replicates for t in (run_dir / "trials").glob("*"))


def _table_ok_or_absent(run_dir: Path) -> int | None:
    """The results table is absent or whole: each file reads completely, with the documented columns and
    unique (trial, seed) rows. (A kill between the renames of the four table files can leave one a write
    newer than another: each is whole, the next write brings them level.) Returns the Parquet rows."""
    from bnsweep.store.columns import COLUMNS
    from bnsweep.store.table import read_table

    if not (run_dir / "results.parquet").exists():
        return None
    rows = []
    for name in ("results.parquet", "results.csv"):
        df = read_table(run_dir / name)
        assert list(df.columns)[: len(COLUMNS)] == list(COLUMNS) and not df.duplicated(["trial_id", "seed"]).any()
        assert df["status"].notna().all() and df["trial_id"].notna().all()
        rows.append(len(df))
    return rows[0]


# ---------------------------------------------------------------- kill campaign


KILL_SPEC = f"""
name: kill_campaign
method: random
trials: 5
replicates: 2
seed: 0
max_concurrent: 1
retries: 0
resources: {{cpu: 2}}
tracking: {{wandb: false}}
fixed:
  model: {{depth: 8}}
  epochs: 3
  batch_size: 32
  steps_per_epoch: 2
  {TINY_DATA}
parameters:
  lr: {{distribution: log_uniform, min: 0.01, max: 0.3}}
"""


@pytest.mark.slow
def test_kill_campaign_resume_after_every_kind_of_death(tmp_path):
    trials, replicates, epochs = 5, 2, 3
    spec = _spec_file(tmp_path, KILL_SPEC)
    run_dir = tmp_path / "run"
    logs = tmp_path / "logs"
    logs.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="bnr", dir="/tmp"))  # short: Ray's socket paths must fit
    common = ["--quiet", "--no-dashboard", "--num-cpus", "2"]
    seen: dict[str, bytes] = {}  # every result.json seen before a kill: must survive unchanged
    kills: list[str] = []

    def remember() -> None:
        now = _records(run_dir)
        for k, v in seen.items():
            assert now.get(k) == v, f"{k} changed or vanished after a kill"
        seen.update(now)

    def resume(name: str, env: dict[str, str] | None = None) -> Driver:
        return Driver(["resume", str(run_dir), *common], logs=logs, name=name, ray_tmp=ray_tmp, env=env)

    try:
        # 0. Ctrl-C during start-up (data loading / Ray starting): a clean stop, nothing left behind
        d = Driver(["launch", str(spec), "--run-dir", str(run_dir), *common], logs=logs, name="0-launch",
                   ray_tmp=ray_tmp)
        d.wait_for(lambda: (run_dir / ".lock").exists(), timeout=120, what="the lock")
        os.killpg(d.proc.pid, signal.SIGINT)
        assert d.finish(timeout=120) == 130, d.tail()
        assert "Traceback" not in d.err.read_text() + d.out.read_text(), d.tail()
        assert "interrupted before the sweep started" in d.err.read_text(), d.tail()
        assert not (run_dir / "sweep.json").exists() and not (run_dir / ".lock").exists()

        # 1. start-up, before the run files: the run directory holds no sweep, `launch` works again
        d = Driver(["launch", str(spec), "--run-dir", str(run_dir), *common], logs=logs, name="1-launch",
                   ray_tmp=ray_tmp)
        d.wait_for(lambda: (run_dir / ".lock").exists(), timeout=120, what="the lock")
        d.kill()
        kills.append("start-up, before the run files (data loading / Ray starting)")
        assert not (run_dir / "sweep.json").exists()

        # 2. start-up, just after the run files (Ray up, the Tuner not yet running trials)
        d = Driver(["launch", str(spec), "--run-dir", str(run_dir), *common], logs=logs, name="2-launch",
                   ray_tmp=ray_tmp)
        d.wait_for(lambda: (run_dir / "sweep.json").exists(), timeout=180, what="sweep.json")
        d.kill()
        kills.append("start-up, after the run files, before any trial")
        assert not list((run_dir / "trials").glob("*/seed-*/result.json"))

        # 3. mid-trial, with a trial already finished
        d = resume("3-resume")
        d.wait_for(lambda: _finished_trials(run_dir, replicates) >= 1 and _mid_trial(run_dir, epochs),
                   timeout=300, what="a finished trial and one mid-way")
        d.kill()
        kills.append("mid-trial (a replicate checkpointed, not finished)")
        remember()
        assert len(seen) >= replicates

        # 4. while a finished trial's results table is being written (written to a temporary file, not
        #    yet renamed): the table on disk stays whole
        pause = logs / "pause-4.json"
        d = resume("4-resume", env={"BNSWEEP_TEST_PAUSE_AT": "table-write", "BNSWEEP_TEST_PAUSE_FILE": str(pause)})
        d.wait_for(pause.exists, timeout=300, what="the results-table write")
        assert list(run_dir.glob(".results.parquet.*.tmp")), "paused mid-write: the temporary table exists"
        d.kill()
        kills.append("a trial finishing: its results table half written")
        _table_ok_or_absent(run_dir)
        remember()

        # 5. Ctrl-C (SIGINT to the process group, as a terminal sends it) mid-trial: a clean stop
        d = resume("5-resume")
        n_done = _finished_trials(run_dir, replicates)
        d.wait_for(lambda: _finished_trials(run_dir, replicates) > n_done and _mid_trial(run_dir, epochs),
                   timeout=300, what="a trial mid-way")
        os.killpg(d.proc.pid, signal.SIGINT)
        rc = d.finish(timeout=180)
        err, out = d.err.read_text(), d.out.read_text()
        assert rc == 130, d.tail()
        assert "Traceback" not in err + out, d.tail()
        assert f"bnsweep resume {run_dir}" in err + out, d.tail()
        assert not (run_dir / ".lock").exists()
        remember()

        # 6. at the very end: every trial done, the final table and Optuna bookkeeping not yet done
        pause = logs / "pause-6.json"
        d = resume("6-resume", env={"BNSWEEP_TEST_PAUSE_AT": "sweep-end", "BNSWEEP_TEST_PAUSE_FILE": str(pause)})
        d.wait_for(pause.exists, timeout=400, what="the end of the sweep")
        d.kill()
        kills.append("the end: all trials done, before the final table / Optuna clean-up / summary")
        remember()
        assert _finished_trials(run_dir, replicates) == trials

        # 7. Ray's own snapshot torn (its copy into the run directory is not atomic): resume repairs it
        #    from bnsweep's atomic backup and finishes
        state = sorted((run_dir / "ray").glob("experiment_state-*.json"))[-1]
        blob = state.read_bytes()
        state.write_bytes(blob[: len(blob) // 2])
        d = resume("7-resume")
        rc = d.finish()
        assert rc == 0, d.tail()
        assert "torn" in d.err.read_text()
        events = [json.loads(line) for line in d.out.read_text().splitlines() if line.startswith("{")]
        assert events[-1]["event"] == "finished", d.tail()
        assert events[-1]["counts"]["completed"] == trials
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    remember()
    assert len(kills) == 5
    # every trial present exactly once, each with all its replicates, nothing orphaned or run twice
    df = pd.read_csv(run_dir / "results.csv", dtype=TEXT_DTYPES)
    assert len(df) == trials * replicates, df[["trial_id", "seed", "status"]]
    assert set(df["status"]) == {"completed"}
    assert not df.duplicated(["trial_id", "seed"]).any()
    assert df["trial_id"].nunique() == trials
    assert sorted(p.name for p in (run_dir / "trials").iterdir()) == sorted(df["trial_id"].unique())
    assert df.groupby("trial_id")["lr"].nunique().eq(1).all()
    assert df["lr"].round(12).nunique() == trials  # no configuration sampled twice
    # ... with its original numbers (the result.json files are byte-identical, see remember())
    for _, row in df.iterrows():
        rec = json.loads((run_dir / row["path"] / "result.json").read_text())
        assert row["val_accuracy_final"] == pytest.approx(rec["final_val_accuracy"])
        assert row["test_accuracy"] == pytest.approx(rec["test_accuracy"])
        assert rec["epochs_run"] == epochs
    states = [t.state for t in _study(run_dir)]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == trials
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / ".lock").exists()
    print(f"\nkill campaign: {len(kills)} SIGKILLs + 2 SIGINTs (start-up, mid-trial) + 1 torn Ray snapshot: "
          + "; ".join(kills))


STARTUP_MOMENTS = [  # (milestone, seconds after it): data loading, Ray starting, the search, the Tuner's start
    ("the lock", 0.0), ("the lock", 2.0), ("the lock", 4.0), ("sweep.json", 0.0),
    ("the launched event", 0.15),  # where a Ctrl-C was dropped by CPython (in a weakref callback) and lost
    ("the first trial", 0.0),
]


def _events(d: Driver) -> list[str]:
    out = []
    for line in d.out.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            out.append(json.loads(line)["event"])
    return out


def _signal_and_wait(d: Driver, send) -> tuple[int, list[str], str]:
    """``send()`` a signal to a running driver; its exit status, the Ray processes it left alive, its output."""
    d._family.update(_descendants(d.proc.pid))
    send()
    try:
        rc = d.proc.wait(180)
    except subprocess.TimeoutExpired:
        d.kill()
        pytest.fail(f"{d.name}: the driver did not stop:\n{d.tail()}")
    deadline = time.time() + 20  # Ray's agents notice their raylet is gone within seconds
    while time.time() < deadline and [p for p in d._family if _cmdline(p)]:
        time.sleep(0.2)
    left = [_cmdline(p)[:80] for p in d._family if _cmdline(p)]
    d.finish()
    return rc, left, d.err.read_text() + d.out.read_text()


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_start_up_and_sigterm_stop_cleanly(tmp_path):
    """A Ctrl-C (SIGINT to the process group, as a terminal sends it) at 6 moments from taking the run
    directory to the first trial: always exit 130 with a one-line message, never a traceback, a crash
    (SIGSEGV from a half-started Ray), a lost Ctrl-C (the sweep running on to its end) or a Ray process
    left behind. Then SIGTERM mid-trial, to the driver alone (`kill PID`) and to its whole process group
    (a scheduler's time limit, which also ends Ray's own processes): exit 143 at once, how to resume, no
    crash dump; the second run directory then resumes to the end with every replicate exactly once."""
    spec = _spec_file(tmp_path, KILL_SPEC)
    ray_tmp = Path(tempfile.mkdtemp(prefix="bnr", dir="/tmp"))  # short: Ray's socket paths must fit
    logs = tmp_path / "logs"
    logs.mkdir()
    milestones = {
        "the lock": lambda run_dir, d: (run_dir / ".lock").exists(),
        "sweep.json": lambda run_dir, d: (run_dir / "sweep.json").exists(),
        "the launched event": lambda run_dir, d: "launched" in _events(d),
        "the first trial": lambda run_dir, d: "started" in _events(d),
    }
    common = ["--quiet", "--no-dashboard", "--num-cpus", "2"]
    outcomes = []
    try:
        for i, (milestone, after) in enumerate(STARTUP_MOMENTS):
            run_dir = tmp_path / f"run{i}"
            d = Driver(["launch", str(spec), "--run-dir", str(run_dir), *common], logs=logs, name=f"{i}-launch",
                       ray_tmp=ray_tmp)
            d.wait_for(lambda run_dir=run_dir, d=d, m=milestone: milestones[m](run_dir, d), timeout=180,
                       what=milestone)
            time.sleep(after)
            rc, left, err = _signal_and_wait(d, lambda d=d: os.killpg(d.proc.pid, signal.SIGINT))
            where = f"Ctrl-C at {milestone} + {after} s"
            assert rc == 130, f"{where}: exit {rc}, events {_events(d)}\n{d.tail()}"
            assert "Traceback" not in err and "Exception ignored" not in err, f"{where}:\n{d.tail()}"
            assert not left, f"{where}: Ray processes left behind: {left}"
            assert not (run_dir / ".lock").exists()
            if (run_dir / "sweep.json").exists():
                assert f"bnsweep resume {run_dir}" in err, f"{where}:\n{d.tail()}"
                assert "finished" not in _events(d), f"{where}: the Ctrl-C was lost, the sweep ran to its end"
            else:
                assert "interrupted before the sweep started" in err, f"{where}:\n{d.tail()}"
                assert not run_dir.exists()
            outcomes.append(f"{where}: 130, {'resumable' if (run_dir / 'sweep.json').exists() else 'nothing written'}")

        for to_group in (False, True):
            run_dir = tmp_path / f"term-{'group' if to_group else 'pid'}"
            d = Driver(["launch", str(spec), "--run-dir", str(run_dir), *common], logs=logs,
                       name=run_dir.name, ray_tmp=ray_tmp)
            d.wait_for(lambda run_dir=run_dir: _finished_trials(run_dir, 2) >= 1 and _mid_trial(run_dir, 3),
                       timeout=300, what="a finished trial and one mid-way")
            send = (lambda d=d: os.killpg(d.proc.pid, signal.SIGTERM)) if to_group else \
                (lambda d=d: os.kill(d.proc.pid, signal.SIGTERM))
            started = time.time()
            rc, left, err = _signal_and_wait(d, send)
            where = f"SIGTERM to the {'process group' if to_group else 'driver'} mid-trial"
            assert rc == 143, f"{where}: exit {rc}\n{d.tail()}"
            assert time.time() - started < 60, f"{where}: took {time.time() - started:.0f} s to stop"
            assert "terminated (SIGTERM)" in err and f"bnsweep resume {run_dir}" in err, f"{where}:\n{d.tail()}"
            assert "Traceback" not in err and "SIGTERM received" not in err, f"{where}:\n{d.tail()}"
            assert not left, f"{where}: Ray processes left behind: {left}"
            assert not (run_dir / ".lock").exists()
            outcomes.append(f"{where}: 143 in {time.time() - started:.0f} s")

        seen = _records(run_dir)
        d = Driver(["resume", str(run_dir), *common], logs=logs, name="term-group-resume", ray_tmp=ray_tmp)
        assert d.finish() == 0, d.tail()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    df = pd.read_csv(run_dir / "results.csv", dtype=TEXT_DTYPES)
    assert len(df) == 10 and set(df["status"]) == {"completed"}, df[["trial_id", "seed", "status"]]
    assert not df.duplicated(["trial_id", "seed"]).any()
    assert all(_records(run_dir)[k] == v for k, v in seen.items()), "a finished record changed on resume"
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in _study(run_dir)]
    print("\nCtrl-C / SIGTERM campaign: " + "; ".join(outcomes) + "; resumed after the group SIGTERM: 10/10")


# ---------------------------------------------------------------- worker faults


def test_worker_faults_retry_from_checkpoint_and_record_failures(ray_local, tmp_path):
    """Grid of five configurations, retries 1: a normal one; one whose worker process is SIGKILLed mid-
    trial (retried from its checkpoint, completes); one that raises every time (failed after its retry);
    one that runs out of memory (MemoryError; failed, reason says so); one that diverges (NaN loss)."""
    log = tmp_path / "epochs.jsonl"
    FAULTS_FILE.write_text(json.dumps({"log": str(log), "faults": [
        {"lr": 0.05, "epoch": 2, "sleep": 3.0},  # the window in which the test kills this worker
        {"lr": 0.07, "epoch": 2, "raise": "RuntimeError", "message": "a bug in epoch 2"},
        {"lr": 0.08, "epoch": 1, "raise": "MemoryError", "message": "cannot allocate"},
    ]}))
    spec = load_spec(_spec_file(tmp_path, f"""
name: faults
method: grid
replicates: 1
max_concurrent: 2
retries: 1
resources: {{cpu: 1}}
tracking: {{wandb: false}}
fixed:
  model: {{depth: 8}}
  epochs: 3
  batch_size: 32
  steps_per_epoch: 2
  {TINY_DATA}
parameters:
  lr: {{values: [0.1, 0.05, 0.07, 0.08, 1.0e+9]}}
"""))
    run_dir = tmp_path / "run"
    killed: list[int] = []

    def killer() -> None:  # SIGKILL the worker process of lr=0.05 once it trains epoch 2
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            for line in log.read_text().splitlines() if log.exists() else []:
                e = json.loads(line)
                if e["lr"] == 0.05 and e["epoch"] == 2:
                    pid = e["pid"]
                    # our own Ray's worker (a descendant of this process), never anything else
                    assert pid in _descendants(os.getpid()) and "ray::" in _cmdline(pid), _cmdline(pid)
                    time.sleep(1.0)
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.1)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        out = launch(spec, options=LaunchOptions(run_dir=run_dir, quiet=True))
    finally:
        FAULTS_FILE.write_text("{}")
        t.join(5)
    assert killed, "the worker was never killed"
    assert out.finished
    df = pd.read_csv(run_dir / "results.csv", dtype=TEXT_DTYPES).set_index("lr")
    assert len(df) == 5
    assert df.loc[0.1, "status"] == "completed" and df.loc[0.1, "epochs_run"] == 3
    # killed mid-trial -> retried from its checkpoint: epoch 2 again in a new process, epoch 1 never again
    assert df.loc[0.05, "status"] == "completed" and df.loc[0.05, "epochs_run"] == 3
    events = [json.loads(line) for line in log.read_text().splitlines()]
    mine = [(e["epoch"], e["pid"]) for e in events if e["lr"] == 0.05]
    assert [ep for ep, _ in mine] == [1, 2, 2, 3], mine
    assert mine[1][1] == killed[0] and mine[2][1] != killed[0]
    assert len(json.loads((run_dir / df.loc[0.05, "path"] / "result.json").read_text())["history"]) == 3
    # raises every time: retried once (retries: 1), then failed with the exception as its reason
    assert df.loc[0.07, "status"] == "failed"
    assert "RuntimeError" in df.loc[0.07, "reason"] and "a bug in epoch 2" in df.loc[0.07, "reason"]
    assert [e["epoch"] for e in events if e["lr"] == 0.07].count(2) == 2
    assert df.loc[0.07, "epochs_run"] == 1  # its checkpointed epoch is kept
    # out of memory
    assert df.loc[0.08, "status"] == "failed" and df.loc[0.08, "reason"].startswith("out of memory: MemoryError")
    # diverged
    assert df.loc[1e9, "status"] == "diverged" and "loss" in df.loc[1e9, "reason"]
    # the study: nothing stuck RUNNING; the failed trials are FAIL
    states = [t.state for t in _study(run_dir)]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.FAIL) == 2
    assert out.counts["failed"] == 2 and out.counts["completed"] == 2 and out.counts["diverged"] == 1


def test_a_killed_worker_is_retried_even_with_no_retries_then_recorded_failed_with_why(ray_local, tmp_path):
    """A worker process that dies is the environment's fault, not the trial's: retried from its checkpoint
    even with ``retries: 0``, ``ENVIRONMENT_RETRIES`` times; killed every time, it is recorded failed with why."""
    from bnsweep.sweep.trainable import ENVIRONMENT_RETRIES

    log = tmp_path / "epochs.jsonl"
    FAULTS_FILE.write_text(json.dumps({"log": str(log), "faults": [{"lr": 0.05, "epoch": 2, "sleep": 3.0}]}))
    spec = load_spec(_spec_file(tmp_path, f"""
name: faults0
method: grid
replicates: 2
retries: 0
resources: {{cpu: 2}}
tracking: {{wandb: false}}
fixed:
  model: {{depth: 8}}
  epochs: 3
  batch_size: 32
  steps_per_epoch: 2
  {TINY_DATA}
parameters:
  lr: {{values: [0.05]}}
"""))
    run_dir = tmp_path / "run"
    killed: list[int] = []

    def killer() -> None:  # every attempt, once it starts epoch 2 (its epoch 1 checkpointed): SIGKILL
        deadline = time.time() + 300
        while time.time() < deadline and len(killed) <= ENVIRONMENT_RETRIES:
            for line in log.read_text().splitlines() if log.exists() else []:
                e = json.loads(line)
                if e["epoch"] == 2 and e["pid"] not in killed and e["pid"] in _descendants(os.getpid()) \
                        and "ray::" in _cmdline(e["pid"]):
                    time.sleep(1.0)
                    os.kill(e["pid"], signal.SIGKILL)
                    killed.append(e["pid"])
                    break
            time.sleep(0.1)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        out = launch(spec, options=LaunchOptions(run_dir=run_dir, quiet=True))
    finally:
        FAULTS_FILE.write_text("{}")
        t.join(5)
    assert out.finished and not out.complete
    assert len(killed) == ENVIRONMENT_RETRIES + 1, killed
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines() if json.loads(line)["seed"] == 0]
    assert epochs.count(1) == 1, epochs  # every retry resumed from the epoch-1 checkpoint
    df = pd.read_csv(run_dir / "results.csv", dtype=TEXT_DTYPES)
    assert len(df) == 2 and set(df["status"]) == {"failed"}
    assert df["reason"].str.contains("died|killed|SIGKILL", case=False, regex=True).all(), list(df["reason"])
    assert (df["epochs_run"] == 1).all()  # the epoch it had checkpointed is in the record
    print(f"\nworker killed {len(killed)} times, retries 0: reason {df['reason'].iloc[0]!r}")


# ---------------------------------------------------------------- atomic writes


_WRITER = """
import sys
from bnsweep.store.table import write_results_table
print("ready", flush=True)
while True:
    write_results_table(sys.argv[1])
"""


def _fake_records(run_dir: Path, n: int) -> None:
    from bnsweep.engine.regimes import account
    from bnsweep.spec.config import ModelConfig, TrialConfig, config_hash
    from bnsweep.store.records import save_trial_record

    run_dir.mkdir(parents=True)
    (run_dir / "sweep.json").write_text(json.dumps({"name": "fake", "spec_hash": "x", "seed_base": 0}))
    acc = account(ModelConfig(depth=8), "bn").as_dict()
    for i in range(n):
        cfg = TrialConfig.from_dict({"model": {"depth": 8}, "regime": "bn", "lr": 0.01 + i * 1e-4, "epochs": 4,
                                     "seed": 0})
        hist = [dict(epoch=e + 1, train_loss=2.0, train_accuracy=0.1, val_loss=2.0, val_accuracy=0.1 + i / 1e4,
                     lr=0.1, images_per_sec=100.0, seconds=1.0) for e in range(4)]
        save_trial_record(run_dir, trial_id=f"t{i:05d}", seed=0, replicate=0, meta={
            "sweep": "fake", "spec_hash": "x", "git_commit": None, "versions": {}, "started_at": None}, result=dict(
            config=cfg.to_dict(), config_hash=config_hash(cfg), status="completed", reason="", epochs_run=4,
            final_val_accuracy=0.1 + i / 1e4, best_val_accuracy=0.1, best_epoch=1, final_val_loss=2.0,
            test_accuracy=0.1, test_loss=2.0, accounting=acc, history=hist))


def test_a_results_table_writer_killed_at_random_moments_never_leaves_a_half_table(tmp_path):
    from bnsweep.store.table import write_results_table

    n = 400
    run_dir = tmp_path / "run"
    _fake_records(run_dir, n)
    t0 = time.perf_counter()
    write_results_table(run_dir)
    one_write = time.perf_counter() - t0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(7)
    kills, torn_tmp = 10, 0
    for i in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(run_dir)], stdout=subprocess.PIPE, text=True,
                                env=env, cwd=ROOT)
        assert proc.stdout.readline().strip() == "ready"
        if i % 2:  # at a random moment
            time.sleep(rng.uniform(0, 3 * one_write))
        else:  # the moment a table file is being written (a temporary file appeared), after a random delay
            deadline = time.time() + 60
            table = rng.choice(["results", "history"])
            while not list(run_dir.glob(f".{table}.*.{proc.pid}.tmp")) and time.time() < deadline:
                time.sleep(0.0005)
        proc.kill()
        proc.wait()
        torn_tmp += bool(list(run_dir.glob(f".*.{proc.pid}.tmp")))  # died mid-write: only its temporary file is partial
        assert _table_ok_or_absent(run_dir) == n
        from bnsweep.store.table import read_table

        assert len(read_table(run_dir / "results.csv")) == n
        assert len(read_table(run_dir / "history.parquet")) == 4 * n == len(read_table(run_dir / "history.csv"))
    assert torn_tmp >= kills // 2, f"only {torn_tmp} of {kills} kills landed mid-write"
    write_results_table(run_dir)  # the next writer removes temporary files of dead writers
    assert not list(run_dir.glob(".*.tmp"))


def test_state_files_are_written_then_renamed(tmp_path, monkeypatch):
    """A write that fails half way (disk full, a kill) leaves the previous file and no temporary file."""
    from bnsweep.base import atomic
    from bnsweep.store import records

    target = tmp_path / "sweep.json"
    atomic.atomic_write_text(target, '{"old": 1}')

    class Boom(Exception):
        pass

    real_fsync = os.fsync

    def failing_fsync(fd):
        raise Boom

    monkeypatch.setattr(os, "fsync", failing_fsync)
    for write in (lambda: atomic.atomic_write_text(target, '{"new": 1}' * 1000),
                  lambda: atomic.atomic_write_bytes(target, b"x" * 10000),
                  lambda: records._atomic_json(target, {"new": 2})):
        with pytest.raises(Boom):
            write()
        assert target.read_text() == '{"old": 1}'
        assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.json"]
    monkeypatch.setattr(os, "fsync", real_fsync)


def test_every_run_directory_write_goes_through_an_atomic_helper():
    """Source audit of the modules that write into a run directory: no direct write besides the atomic
    helpers (write-then-rename locally, one PUT per object on a store) and the lock file."""
    import re

    allowed = {  # module -> functions allowed to open files for writing
        "base/atomic.py": {"atomic_write"},  # the one write-then-rename helper
        "base/testhooks.py": {"pause_for_tests"},  # the test-only pause marker, written then renamed
        "store/rundir.py": {"_acquire_by_pid"},  # the lock file (not a state file)
        "store/fs.py": {"put"},  # an object store: one PUT per object, whole or absent (no rename there)
        "sweep/searcher.py": {"save"},  # Ray Tune's own temporary searcher-state file, which Ray renames
        "sweep/trainable.py": {"_test_faults"},  # the test-only epoch log, outside any run directory
        "engine/data.py": {"_locked"},  # the download cache's lock file, outside any run directory
        # the pre-flight's probe objects on a store (one PUT each, deleted again): not run-directory state
        "sweep/cluster.py": {"check_paths", "_probe_here"},
    }
    pattern = re.compile(r"\bopen\([^)]*[\"'](?:w|wb|a|ab|x|w\+)[\"']|\.write_text\(|\.write_bytes\(|np\.savez\(|"
                         r"\.to_csv\([^)]*[\"/]|\.to_parquet\([^f]|json\.dump\(|open_output_stream\(")
    names = sorted(p.relative_to(ROOT / "bnsweep").as_posix()
                   for layer in ("base", "store", "sweep", "engine", "report")
                   for p in (ROOT / "bnsweep" / layer).glob("*.py"))
    for name in names:
        fn = None
        for line in (ROOT / "bnsweep" / name).read_text().splitlines():
            m = re.match(r"\s*def (\w+)", line)
            if m:
                fn = m.group(1)
            if pattern.search(line) and not line.strip().startswith(("#", ">>>")) and "atomic_write" not in line:
                assert fn in allowed.get(name, set()), f"bnsweep/{name}: {fn}() writes directly: {line.strip()}"


# ---------------------------------------------------------------- resume validates the run directory


def _bare_run_dir(tmp_path: Path) -> Path:
    """A run directory as `launch` writes it before any trial (no Ray needed)."""
    from bnsweep.sweep.driver import _write_run_files

    spec = load_spec(_spec_file(tmp_path, f"""
name: bare
method: random
trials: 2
tracking: {{wandb: false}}
fixed:
  model: {{depth: 8}}
  epochs: 1
  {TINY_DATA}
parameters:
  lr: {{distribution: log_uniform, min: 0.01, max: 0.3}}
"""))
    run_dir = tmp_path / "run"
    _write_run_files(run_dir, spec, {}, LaunchOptions(run_dir=run_dir))
    return run_dir


@pytest.mark.parametrize("damage, message", [
    ("no-dir", "no such run directory"),
    ("no-sweep-json", "not a bnsweep run directory (no sweep.json)"),
    ("sweep-json-torn", "sweep.json: unreadable"),
    ("sweep-json-list", "expected a JSON object"),
    ("sweep-json-no-hash", "spec_hash missing"),
    ("no-spec", "spec.yaml: missing"),
    ("spec-edited", "changed since the sweep started"),
    ("spec-broken", "no longer a valid spec"),
    ("optuna-db-garbage", "the Optuna study cannot be read"),
    ("tuner-missing-after-trials", "tuner.pkl: missing, but trials have run"),
    ("ray-state-torn-no-backup", "Ray Tune's experiment state is unreadable"),
    ("storage-password", "password is not kept in the run directory"),
])
def test_resume_names_what_is_wrong_with_a_damaged_run_directory(tmp_path, capsys, damage, message):
    from bnsweep.cli import main

    run_dir = _bare_run_dir(tmp_path)
    info = json.loads((run_dir / "sweep.json").read_text())
    if damage == "no-dir":
        run_dir = tmp_path / "nowhere"
    elif damage == "no-sweep-json":
        (run_dir / "sweep.json").unlink()
    elif damage == "sweep-json-torn":
        (run_dir / "sweep.json").write_text((run_dir / "sweep.json").read_text()[:40])
    elif damage == "sweep-json-list":
        (run_dir / "sweep.json").write_text("[1, 2]")
    elif damage == "sweep-json-no-hash":
        (run_dir / "sweep.json").write_text(json.dumps({k: v for k, v in info.items() if k != "spec_hash"}))
    elif damage == "no-spec":
        (run_dir / "spec.yaml").unlink()
    elif damage == "spec-edited":
        (run_dir / "spec.yaml").write_text((run_dir / "spec.yaml").read_text().replace("trials: 2", "trials: 3"))
    elif damage == "spec-broken":
        (run_dir / "spec.yaml").write_text("name: [unclosed\n")
    elif damage == "optuna-db-garbage":
        (run_dir / "optuna.db").write_bytes(b"this is not a database" * 100)
    elif damage in ("tuner-missing-after-trials", "ray-state-torn-no-backup"):
        (run_dir / "trials" / "abc" / "seed-0").mkdir(parents=True)
        (run_dir / "ray").mkdir()
        if damage == "ray-state-torn-no-backup":
            (run_dir / "ray" / "tuner.pkl").write_bytes(b"\x80\x05.")
            (run_dir / "ray" / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [')
    elif damage == "storage-password":
        (run_dir / "sweep.json").write_text(json.dumps({**info, "storage": "postgresql://u:***@db.example/x"}))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} if run_dir.exists() else {}
    assert main(["resume", str(run_dir), "--no-dashboard"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, err
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} if run_dir.exists() else {}
    assert after == before  # nothing touched (the lock came and went)


# ---------------------------------------------------------------- concurrency


_HOLDER = """
import os, sys, time
from bnsweep.store.rundir import RunLock
lock = RunLock(sys.argv[1])
if len(sys.argv) > 3:  # start together: wait for the go file
    print("ready", flush=True)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.001)
try:
    lock.acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
except Exception as e:
    print("refused", type(e).__name__, flush=True)
"""


def _holder(run_dir: Path, seconds: float, go: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir), str(seconds), *([str(go)] if go else [])],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_run_directory_in_use_is_refused_and_a_killed_holder_s_lock_is_taken_over(tmp_path, capsys):
    from bnsweep.cli import main

    run_dir = _bare_run_dir(tmp_path)
    holder = _holder(run_dir, 300)
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in (["resume", str(run_dir), "--no-dashboard"],):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert f"in use by another bnsweep (pid {holder.pid} on {socket.gethostname()}" in err, err
        assert RunLock(run_dir).is_held_elsewhere()
        from bnsweep.report.status import sweep_status

        assert sweep_status(run_dir)["running"]
    finally:
        holder.kill()  # kill -9: the lock file stays, naming a dead pid
        holder.wait()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == holder.pid
    from bnsweep.report.status import sweep_status

    assert not sweep_status(run_dir)["running"]
    with RunLock(run_dir) as lock:  # taken over
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (run_dir / ".lock").exists()


def test_a_stale_lock_file_naming_a_dead_pid_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    (tmp_path / ".lock").write_text("")  # a driver killed while writing it
    with RunLock(tmp_path):
        pass


def test_of_many_drivers_racing_for_one_run_directory_exactly_one_gets_it(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for round_ in range(3):
        if round_:  # a stale lock from a killed driver to race for
            (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
        go = tmp_path / f"go-{round_}"
        procs = [_holder(tmp_path, 2, go) for _ in range(6)]
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 6
        go.touch()
        answers = [p.stdout.readline().split()[0] for p in procs]
        for p in procs:
            p.wait(30)
        assert sorted(answers) == ["held"] + ["refused"] * 5, answers
    with RunLock(tmp_path):  # and once they are gone, it is free
        pass


def test_second_launch_of_an_in_use_run_directory_is_refused_before_touching_it(tmp_path, capsys):
    from bnsweep.cli import main

    run_dir = _bare_run_dir(tmp_path)
    spec = run_dir / "spec.yaml"
    holder = _holder(run_dir, 300)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        assert main(["launch", str(spec), "--run-dir", str(run_dir), "--no-dashboard"]) == 2
        assert "already holds sweep 'bare'" in capsys.readouterr().err
        fresh = tmp_path / "fresh"
        with RunLock(fresh):  # an empty directory being launched into by another driver
            assert main(["launch", str(spec), "--run-dir", str(fresh), "--no-dashboard"]) == 2
            assert "in use by another bnsweep" in capsys.readouterr().err
        assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    finally:
        holder.kill()
        holder.wait()


def test_lock_error_messages(tmp_path):
    with RunLock(tmp_path), pytest.raises(RunDirError, match="in use by another bnsweep"):
        RunLock(tmp_path).acquire()


# ---------------------------------------------------------------- scale

# "A few hundred tiny trials" (issue 7): 200 one-step trials, ~1 s of CPU each (Keras builds and traces the
# network per trial) plus Ray's per-trial work: ~1.3 s each, ~4.5 min on the 2-core machines.
# BNSWEEP_SCALE_TRIALS overrides.
SCALE_TRIALS = int(os.environ.get("BNSWEEP_SCALE_TRIALS", "200"))


@pytest.mark.slow
@pytest.mark.timeout(2700)  # ~5 min on a quiet 2-core machine; 192 trials took 14 min under a load of 20-30
def test_scale_sweep_of_many_tiny_trials_keeps_every_row_and_bounded_driver_memory(ray_local, tmp_path):
    n = SCALE_TRIALS
    spec = load_spec(_spec_file(tmp_path, f"""
name: scale
method: random
trials: {n}
replicates: 1
max_concurrent: 4
resources: {{cpu: 0.5}}
tracking: {{wandb: false}}
fixed:
  model: {{depth: 8}}
  regime: output  # the cheapest trial to build and trace (~0.9 s of CPU here; BN-only ~1.2 s, all ~1.4 s)
  epochs: 1
  batch_size: 8
  steps_per_epoch: 1
  data: {{source: synthetic, synthetic_size: 16, val_size: 8, test_size: 8}}
parameters:
  lr: {{distribution: log_uniform, min: 0.01, max: 0.3}}
"""))
    run_dir = tmp_path / "run"
    samples: list[tuple[float, float, int]] = []  # (seconds, driver RSS MB, trials finished)
    stop = threading.Event()

    def sample() -> None:
        t0 = time.time()
        while not stop.is_set():
            done = len(list((run_dir / "trials").glob("*/seed-0/result.json"))) if run_dir.exists() else 0
            samples.append((time.time() - t0, _rss_mb(os.getpid()), done))
            stop.wait(1.0)

    t = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    t.start()
    try:
        out = launch(spec, options=LaunchOptions(run_dir=run_dir, quiet=True))
    finally:
        stop.set()
        t.join(5)
    seconds = time.perf_counter() - t0
    assert out.finished and out.counts["completed"] == n
    df = pd.read_csv(run_dir / "results.csv", dtype=TEXT_DTYPES)
    assert len(df) == n and df["trial_id"].is_unique and set(df["status"]) == {"completed"}
    assert len(pd.read_csv(run_dir / "history.csv", dtype=TEXT_DTYPES)) == n
    assert len(_study(run_dir)) == n
    # driver memory: after the first fifth of the trials (imports, Ray, caches warmed up), it grows by less
    # than 1 MB per 10 trials (the per-trial bookkeeping Ray Tune keeps), not with every trial's data
    warm = [rss for _, rss, done in samples if n // 5 <= done]
    first, last = warm[: max(3, len(warm) // 10)], warm[-max(3, len(warm) // 10):]
    growth = sorted(last)[len(last) // 2] - sorted(first)[len(first) // 2]
    peak = max(rss for _, rss, _ in samples)
    by_quarter = {q: next((rss for _, rss, done in samples if done >= q * n // 4), None) for q in (1, 2, 3, 4)}
    print(f"\nscale: {n} trials in {seconds:.0f} s ({seconds / n:.2f} s/trial, 4 at a time on 2 CPUs); driver RSS "
          f"{sorted(first)[len(first) // 2]:.0f} MB after {n // 5} trials -> {sorted(last)[len(last) // 2]:.0f} MB "
          f"at the end (growth {growth:+.0f} MB), peak {peak:.0f} MB; by quarter of the trials done: "
          + ", ".join(f"{q}/4: {v:.0f} MB" for q, v in by_quarter.items() if v) + f"; {len(samples)} samples")
    assert growth < 60 + n / 10, (growth, samples[:: max(1, len(samples) // 20)])
