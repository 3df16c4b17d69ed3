"""The watchdog for hung trials (bnsweep/sweep/watchdog.py): the limit it computes, the spec's ``watchdog:``
section, and real sweeps: a real ``bnsweep launch`` (its own local Ray, ResNet-8 really trained) where one
trial hangs on its first attempt and the watchdog, not the hang, ends it (stopped, retried from its last
checkpoint, completed, exit 0); and a trial that hangs at epoch 2 on every attempt, stopped until Ray's
retries are spent, then failed with the watchdog's reason.

The launch's hang is the test-only fault hook ``BNSWEEP_TEST_FAULTS`` (bnsweep/sweep/trainable.py): ``sleep``
far longer than the limit before epoch 3, with a ``marker`` so that only the first attempt sleeps. (Epoch 3,
not 2: after two reports the trial's limit follows its own epoch time; after one it follows its first
report's, TensorFlow's start-up included, which on a loaded 2-core machine adds ~40 s to the test.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from test_reliability import _descendants  # the /proc process tree, one copy

from bnsweep.spec.sections import Watchdog
from bnsweep.spec.sweep_spec import SpecError, parse_spec_text
from bnsweep.store.table import TEXT_DTYPES
from bnsweep.sweep.watchdog import DRIVER_STALL_S, WATCHDOG_FILE, HungTrialWatchdog, _Clock, epoch_limit

ROOT = Path(__file__).resolve().parents[1]
HANG_S = 600.0  # the injected hang: the test must end far sooner


# ---------------------------------------------------------------- the limit


def test_epoch_limit_is_a_multiple_of_the_slowest_epoch_with_a_floor_and_a_first_epoch_allowance():
    w = Watchdog(factor=10, min_seconds=300, first_epoch_seconds=3600)
    assert epoch_limit(w, slowest=None, first_epoch=False) == 300  # nothing measured: the floor
    assert epoch_limit(w, slowest=None, first_epoch=True) == 3900
    assert epoch_limit(w, slowest=29.9, first_epoch=False) == 300  # 299 s < the floor
    assert epoch_limit(w, slowest=31.0, first_epoch=False) == 310.0
    assert epoch_limit(w, slowest=31.0, first_epoch=True) == 3910.0
    assert epoch_limit(Watchdog(factor=2.5, min_seconds=1, first_epoch_seconds=0), slowest=4.0,
                       first_epoch=True) == 10.0


def test_the_trial_s_own_epochs_set_its_limit_else_the_sweep_s_else_its_first_report():
    w = HungTrialWatchdog(spec=Watchdog(factor=3, min_seconds=10, first_epoch_seconds=100))
    fresh = _Clock(since=0.0)
    assert w.limit(fresh) == 10 + 100  # the sweep's first trial, first epoch: nothing measured anywhere
    w.sweep_slowest = 20.0
    assert w.limit(fresh) == 60 + 100  # before its first epoch: the sweep's slowest epoch
    own = _Clock(since=0.0, slowest_epoch=2.0)  # a retried trial with epochs of its own, not yet reported again
    assert w.limit(own) == 10 + 100
    own.reported = True
    assert w.limit(own) == 10  # reported in this attempt: its own epochs, no allowance
    own.slowest_epoch = 50.0
    assert w.limit(own) == 150
    # reported once (no two reports yet): its first report's time (start-up included) stands in, never the
    # sweep's epochs (a deeper trial's epoch may take far longer than the sweep's others)
    first = _Clock(since=0.0, reported=True, slowest_first=40.0)
    assert w.limit(first) == 120


def test_clocks_follow_the_trial_s_reports_and_a_stalled_driver_is_not_held_against_trials():
    w = HungTrialWatchdog(spec=Watchdog(factor=2, min_seconds=1, first_epoch_seconds=5))
    t = SimpleNamespace(trial_id="t1")
    w.on_trial_start(0, [], t)
    clock = w.clocks["t1"]
    clock.since -= 7.0  # start-up + epoch 1 took 7 s
    w.on_trial_result(0, [], t, {"epoch": 1})
    assert clock.reported and clock.slowest_first == pytest.approx(7.0, abs=0.5) and clock.slowest_epoch is None
    assert w.sweep_slowest is None  # a first report is no epoch time for the sweep
    clock.since -= 3.0
    w.on_trial_result(0, [], t, {"epoch": 2})
    assert clock.epoch == 2 and clock.slowest_epoch == pytest.approx(3.0, abs=0.5)
    assert w.sweep_slowest == pytest.approx(3.0, abs=0.5)
    assert w.limit(clock) == pytest.approx(6.0, abs=1.0)
    w.on_trial_recover(0, [], t)  # retried: no clock until it starts again
    assert clock.since is None
    w.on_trial_start(0, [], t)
    assert not clock.reported and w.limit(clock) == pytest.approx(6.0 + 5, abs=1.0)
    # a driver step that took long: the time is added back to every running trial's clock
    before = clock.since
    w._last_tick = time.monotonic() - (DRIVER_STALL_S + 10)
    w.on_step_begin(0, [])
    assert clock.since == pytest.approx(before + DRIVER_STALL_S + 10, abs=0.5)


def test_a_disabled_watchdog_stops_nothing_and_one_that_cannot_reach_ray_says_so(capsys):
    late = SimpleNamespace(trial_id="t1", status="RUNNING", max_failures=2, num_failures=0)
    for enabled in (False, True):
        w = HungTrialWatchdog(spec=Watchdog(enabled=enabled, min_seconds=1, first_epoch_seconds=0), quiet=True)
        w.on_trial_start(0, [], late)
        w.clocks["t1"].since -= 5.0  # 5 s without an epoch, the limit 1 s
        w.on_step_end(0, [late])
        if not enabled:
            assert capsys.readouterr().out == "" and not w.stopped
    # enabled, but outside Ray Tune (no controller to stop it with): a warning, no stop recorded, clock reset
    said = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in said] == ["warning"] and "cannot be reached" in said[0]["message"], said
    assert not w.stopped and time.monotonic() - w.clocks["t1"].since < 1


def test_the_watchdog_section_of_a_spec_is_checked_and_never_part_of_the_spec_hash():
    base = "name: w\ntrials: 1\n"
    plain = parse_spec_text(base)
    assert plain.watchdog == Watchdog() and "watchdog" not in plain.to_dict()  # default: the saved spec unchanged
    tuned = parse_spec_text(base + "watchdog: {factor: 4, min_seconds: 60}\n")
    assert tuned.watchdog == Watchdog(factor=4, min_seconds=60)
    assert tuned.spec_hash() == plain.spec_hash()  # editing it never blocks a resume
    assert parse_spec_text(tuned.to_yaml()).watchdog == tuned.watchdog  # kept in the run directory's spec.yaml
    assert not parse_spec_text(base + "watchdog: {enabled: false}\n").watchdog.enabled
    with pytest.raises(SpecError) as e:
        parse_spec_text(base + "watchdog:\n  factor: 0.5\n  min_secs: 5\n", filename="w.yaml")
    text = str(e.value)
    assert "w.yaml:4 watchdog.factor: expected a number in [1, 1,000,000], received 0.5" in text
    assert "w.yaml:5 watchdog.min_secs: unknown key 'min_secs', did you mean 'min_seconds'?" in text


# ---------------------------------------------------------------- a trial that hangs on every attempt


def _gone(pid: int, wait: float = 10.0) -> bool:
    """The process has exited (or is a zombie awaiting its parent) within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_a_trial_hung_on_every_attempt_is_stopped_until_retries_are_spent_then_failed_with_why(ray_local, tmp_path):
    """A plain Ray Tune sweep (no training: the watchdog and Ray's retries alone) with one CPU: each stop
    kills the hung worker (else the retry would wait for its CPU), every retry restores the epoch-1
    checkpoint, and the trial ends ERROR with the watchdog's reason, which the monitor records as such."""
    from ray import tune

    from bnsweep.sweep.monitor import _error_reason

    def _hangs_at_epoch_2(config):  # (defined here: pickled by value)
        import json
        import os
        import tempfile
        import time
        from pathlib import Path

        from ray import tune

        ckpt = tune.get_checkpoint()
        start = json.loads((Path(ckpt.to_directory()) / "e.json").read_text())["epoch"] if ckpt else 0
        for epoch in range(start + 1, 4):
            if epoch == 2:
                with open(config["log"], "a") as f:
                    f.write(json.dumps({"pid": os.getpid(), "restored_from": start}) + "\n")
                time.sleep(600)
            d = tempfile.mkdtemp()
            (Path(d) / "e.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(d))

    ended: dict = {}

    class Ended(tune.Callback):
        def on_trial_error(self, iteration, trials, trial, **info):
            ended["trial"] = trial

    log = tmp_path / "hangs.jsonl"
    watchdog = HungTrialWatchdog(spec=Watchdog(factor=1, min_seconds=1, first_epoch_seconds=3), quiet=True)
    t0 = time.monotonic()
    tuner = tune.Tuner(_hangs_at_epoch_2, param_space={"log": str(log)},
                       run_config=tune.RunConfig(name="hung", storage_path=str(tmp_path), verbose=0,
                                                 callbacks=[watchdog, Ended()],
                                                 failure_config=tune.FailureConfig(max_failures=2)))
    tuner.fit()
    took = time.monotonic() - t0
    hangs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(hangs) == 3 and [h["restored_from"] for h in hangs] == [0, 1, 1], hangs  # from the checkpoint
    assert [s["retried"] for s in watchdog.stopped] == [True, True, False], watchdog.stopped
    for h in hangs:  # every hung worker was killed, none left sleeping
        assert _gone(h["pid"]), h
    trial = ended["trial"]
    assert trial.status == "ERROR" and trial.num_failures == 3
    reason = _error_reason(trial)
    assert reason.startswith("the trial failed 3 time(s): stopped by the watchdog after "), reason
    assert "s without an epoch (waiting for epoch 2" in reason, reason
    assert took < 60, f"{took:.0f} s: the watchdog, not the {HANG_S:.0f} s hang, must end each attempt"
    print(f"\nhung on every attempt: 3 stops in {took:.1f} s ({watchdog.stopped}); reason {reason!r}")


# ---------------------------------------------------------------- a real launch


SPEC = """
name: hung
method: grid
replicates: 2
retries: 0
resources: {cpu: 2}
tracking: {wandb: false}
watchdog: {factor: 3, min_seconds: 10, first_epoch_seconds: 120}
fixed:
  model: {depth: 8}
  epochs: 3
  batch_size: 32
  steps_per_epoch: 2
  lr: 0.05
  data: {source: synthetic, synthetic_size: 64, val_size: 32, test_size: 32}
"""


def test_a_launch_with_a_hung_trial_is_ended_by_the_watchdog_and_resumes_from_its_checkpoint(tmp_path):
    spec = tmp_path / "hung.yaml"
    spec.write_text(SPEC)
    run_dir = tmp_path / "run"
    log, marker = tmp_path / "epochs.jsonl", tmp_path / "hung-once"
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"log": str(log), "faults": [
        {"epoch": 3, "sleep": HANG_S, "marker": str(marker)}]}))  # the first attempt only
    ray_tmp = Path(tempfile.mkdtemp(prefix="bnw", dir="/tmp"))  # short: Ray's socket paths must fit
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "WANDB_MODE": "offline",
           "RAY_ADDRESS": "", "RAY_TMPDIR": str(ray_tmp), "BNSWEEP_TEST_FAULTS": str(faults)}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bnsweep", "launch", str(spec), "--run-dir", str(run_dir),
                             "--no-dashboard", "--quiet", "--num-cpus", "2"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    family: set[int] = set()
    try:
        while proc.poll() is None and time.monotonic() - t0 < 300:
            family.update(_descendants(proc.pid))  # its Ray processes, should any outlive it
            time.sleep(0.2)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        for p in sorted(family):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if Path(f"/proc/{p}/cmdline").exists() and b"ray" in Path(f"/proc/{p}/cmdline").read_bytes():
                    os.kill(p, signal.SIGKILL)
    took = time.monotonic() - t0
    tail = f"--- stderr ---\n{err[-3000:]}\n--- stdout ---\n{out[-3000:]}"
    assert proc.returncode == 0, tail
    assert marker.exists(), "the fault never hung the trial"
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    df = pd.read_csv(run_dir / "results.csv", dtype=TEXT_DTYPES)
    assert len(df) == 2 and set(df["status"]) == {"completed"} and (df["epochs_run"] == 3).all(), df.to_string()
    assert df["trial_id"].nunique() == 1 and sorted(df["seed"]) == [0, 1]
    hung = df["trial_id"].iloc[0]
    # the watchdog stopped it after its limit without an epoch, and Ray retried it ...
    stops = [e for e in events if e["event"] == "watchdog"]
    assert len(stops) == 1 and stops[0]["trial"] == hung and stops[0]["last_epoch"] == 2, stops
    # (both are rounded to 0.1 s in the event: a stop 10.03 s after a 10 s limit reads 10.0 and 10.0)
    assert stops[0]["limit_s"] <= stops[0]["seconds_without_epoch"] < stops[0]["limit_s"] + 10, stops
    assert stops[0]["action"] == "retried from its last checkpoint"
    retrying = [e for e in events if e["event"] == "retrying" and e["trial"] == hung]
    assert len(retrying) == 1 and "stopped by the watchdog after" in retrying[0]["reason"], retrying
    assert "s without an epoch (waiting for epoch 3" in retrying[0]["reason"]
    # ... from its epoch-2 checkpoint: epoch 3 again in a new worker, epochs 1 and 2 never again
    restored = [e for e in events if e["event"] == "restored" and e["trial"] == hung]
    assert restored and restored[0]["from_epoch"] == 2, restored
    # (both replicates train in lockstep in one worker; seed 0 hangs before epoch 3, seed 1 waits its turn)
    mine = [(json.loads(line)["seed"], json.loads(line)["epoch"], json.loads(line)["pid"])
            for line in log.read_text().splitlines()]
    assert [(s, ep) for s, ep, _ in mine] == [(0, 1), (1, 1), (0, 2), (1, 2), (0, 3), (0, 3), (1, 3)], mine
    assert mine[4][2] != mine[5][2], "the retry ran in the hung worker"
    assert _gone(mine[4][2]), "the hung worker was left sleeping"
    # recorded in the run directory, and the completed trial's record holds all three epochs
    kept = json.loads((run_dir / "trials" / hung / WATCHDOG_FILE).read_text())
    assert len(kept) == 1 and kept[0]["retried"] and kept[0]["last_epoch"] == 2
    assert "stopped by the watchdog after" in kept[0]["reason"]
    for seed in (0, 1):
        record = json.loads((run_dir / "trials" / hung / f"seed-{seed}" / "result.json").read_text())
        assert [h["epoch"] for h in record["history"]] == [1, 2, 3]
    assert took < HANG_S / 2, f"{took:.0f} s: the watchdog, not the {HANG_S:.0f} s hang, must end it"
    start = events[0]["time"]
    timeline = ", ".join(f"{e['event']} {e['time'] - start:.0f}" for e in events if e["event"] != "status")
    print(f"\nhung trial stopped after {stops[0]['seconds_without_epoch']} s (limit {stops[0]['limit_s']} s); "
          f"launch took {took:.1f} s (s after `launched`: {timeline})")
