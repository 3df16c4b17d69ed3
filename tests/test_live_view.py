"""What a sweep shows while it runs: the live view on a terminal (a real launch in a pseudo-terminal, then
a Ctrl-C), plain lines in a pipe (a real launch, its stdout a pipe), and the ETA, the rows and the
fall-back on their own (no Ray)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bnsweep.sweep.live import (
    LiveSnapshot,
    LiveView,
    SweepProgress,
    TrialRow,
    format_duration,
    format_row,
    render,
    short_config,
)

# one tiny spec for both launches: 2 configurations one after the other, 3 epochs of 2 steps each
SPEC = """
name: live_tiny
method: random
trials: 2
replicates: 1
seed: 0
max_concurrent: 1
resources: {cpu: 2}
tracking: {wandb: false}
fixed:
  model: {depth: 8}
  epochs: 3
  batch_size: 32
  steps_per_epoch: 2
  lr_schedule: {type: constant}
  data: {source: synthetic, synthetic_size: 64, val_size: 32, test_size: 32}
parameters:
  lr: {distribution: log_uniform, min: 0.01, max: 0.3}
"""
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ETA = re.compile(r"ETA ((?:\d+h)?(?:\d+m)?\d+s)")
STATUS = re.compile(r"^\[\d\d:\d\d:\d\d\] (done \d+/\d+ .*)$")


def _launch_args(tmp_path: Path, name: str, *, slow_epochs: bool) -> tuple[list[str], dict[str, str]]:
    spec = tmp_path / "live.yaml"
    spec.write_text(SPEC)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "WANDB_MODE": "offline",
           "RAY_ADDRESS": ""}
    if slow_epochs:  # each epoch half a second longer: a few frames per epoch
        faults = tmp_path / "faults.json"
        faults.write_text(json.dumps({"faults": [{"sleep": 0.5}]}))
        env["BNSWEEP_TEST_FAULTS"] = str(faults)
    args = [sys.executable, "-m", "bnsweep", "launch", str(spec), "--run-dir", str(tmp_path / name),
            "--no-dashboard", "--num-cpus", "2"]
    return args, env


# ---------------------------------------------------------------- no Ray: the ETA, the rows, the fall-back
def test_eta_moves_as_epochs_complete_and_counts_down_between_them():
    p = SweepProgress(total=3, replicates=2, epochs_hint=4, slots=1)
    assert p.eta(now=0.0) is None and (p.done, p.planned) == (0, 24)  # 3 configurations × 2 seeds × 4 epochs
    p.trial_started("a", epochs=4, now=0.0)
    p.epoch_reported("a", epoch=1, now=8.0)  # the first epoch, start-up included: an upper bound at first
    first = p.eta(now=8.0)
    assert first == pytest.approx(3 * 8 + 2 * (4 * 8))  # 3 epochs left here, 2 configurations to come
    p.epoch_reported("a", epoch=2, now=10.0)  # 2 s an epoch from now on; a start-up costs 6 s
    second = p.eta(now=10.0)
    assert second == pytest.approx(2 * 2 + 2 * (4 * 2 + 6))
    assert p.eta(now=11.0) == pytest.approx(second - 1)  # counts down with the clock
    assert p.eta(now=30.0) == pytest.approx(1 * 2 + 2 * (4 * 2 + 6))  # an epoch overdue: never below the rest
    p.epoch_reported("a", epoch=3, now=12.0)
    assert p.eta(now=12.0) < second
    assert (p.done, p.planned) == (6, 24)


def test_an_early_end_takes_its_epochs_out_of_the_plan_and_parallel_trials_share_the_eta():
    p = SweepProgress(total=2, replicates=1, epochs_hint=10, slots=2)
    for t in ("a", "b"):
        p.trial_started(t, epochs=10, now=0.0)
    for epoch, now in ((1, 5.0), (2, 6.0), (3, 7.0)):
        p.epoch_reported("a", epoch=epoch, now=now)
        p.epoch_reported("b", epoch=epoch, now=now)
    assert p.eta(now=7.0) == pytest.approx(7 * 1.0)  # 2 × 7 epochs × 1 s ÷ 2 at once
    p.trial_ended("b", now=7.0)  # pruned after 3 epochs
    assert (p.done, p.planned, p.skipped) == (6, 13, 7)
    assert p.eta(now=7.0) == pytest.approx(7 * 1.0)  # a alone: its 7 epochs, one lane
    p.trial_ended("a", now=8.0, epoch=10)
    assert (p.done, p.planned, p.eta(now=8.0)) == (13, 13, 0.0)


def test_a_restored_trial_measures_only_the_epochs_it_trained():
    p = SweepProgress(total=1, replicates=1, epochs_hint=5)
    p.trial_started("a", epochs=5, now=100.0)
    p.epoch_reported("a", epoch=4, now=110.0, resumed_at=3)  # epochs 1-3 came from its checkpoint
    assert p.first_reports[-1] == (10.0, 1) and p.done == 4
    assert p.eta(now=110.0) == pytest.approx(10.0)


def test_rows_and_the_frame_show_the_config_epoch_accuracy_speed_bar_and_eta():
    assert format_duration(5) == "5s" and format_duration(65) == "1m05s" and format_duration(7260) == "2h01m"
    assert short_config({"lr": 0.123456, "regime": "bn", "resolved": {"epochs": 3}}) == "lr=0.123 regime=bn"
    assert len(short_config({"k": "x" * 200}, width=30)) == 30
    assert short_config({"name": "a\x1b[2Jb"}) == "name=a\\x1b[2Jb"  # never acted on by the terminal
    row = TrialRow(trial_id="t7", config="lr=0.1", epoch=2, epochs=3, val_accuracy=0.5, images_per_sec=980.4)
    assert format_row(row) == ("t7", "lr=0.1", "2/3", "0.5000", "980")
    assert format_row(TrialRow(trial_id="t8", config="", epochs=None))[2:] == ("0/?", "-", "-")
    from rich.console import Console

    console = Console(file=io.StringIO(), width=100, force_terminal=False)
    console.print(render(LiveSnapshot(rows=[row], done=5, planned=12, skipped=2, eta_s=75.0,
                                      counts="done 1/4  running 1", best="best val_accuracy: 0.5 (t7)")))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    for shown in ("t7", "lr=0.1", "2/3", "0.5000", "980", "5/12 epochs (2 skipped", "ETA 1m15s", "done 1/4",
                  "best val_accuracy: 0.5 (t7)"):
        assert shown in text, (shown, text)
    many = [TrialRow(trial_id=f"r{i}", config="") for i in range(5)]
    console.print(render(LiveSnapshot(rows=many, done=0, planned=5, skipped=0, eta_s=None, counts="", best=""),
                         max_rows=2))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "r1" in text and "r2" not in text and "and 3 more running" in text and "ETA -" in text


def test_a_view_that_fails_to_draw_is_stopped_and_says_why():
    out = io.StringIO()
    frames = iter([TrialRow(trial_id="ok", config="")])

    def frame():
        return format_row(next(frames))[0]  # the second frame raises StopIteration

    view = LiveView(frame=frame, file=out, min_interval_s=0.0, force_terminal=True)
    assert view.start() and view.active and "\x1b[?25l" in out.getvalue()  # cursor hidden while live
    view.refresh(force=True)  # raises inside: caught
    assert not view.active and view.failed and "StopIteration" in view.failed
    assert out.getvalue().endswith("\x1b[?25h") or "\x1b[?25h" in out.getvalue()  # the cursor is back
    assert not view.print("after")  # stopped for good


def _trial(trial_id: str, **last) -> SimpleNamespace:  # the attributes of Ray's Trial the monitor reads
    return SimpleNamespace(trial_id=trial_id, config={"lr": 0.1}, checkpoint=None, last_result=last,
                           status="RUNNING", error_file=None, run_metadata=None)


def test_the_monitor_falls_back_to_plain_lines_and_best_is_never_a_failed_trial(tmp_path, capsys):
    from bnsweep.sweep.monitor import SweepMonitor

    monitor = SweepMonitor(run_dir=tmp_path, total=3, replicates=1, metric="val_accuracy", mode="max", quiet=False,
                           seed_base=0)
    assert monitor.display == "plain"  # pytest's stdout is no terminal
    calls = []
    monitor.display = "live"  # as on a terminal, its frames drawn into a buffer: the second one fails
    monitor._view = LiveView(frame=lambda: "frame" if not calls.append(1) and len(calls) < 2 else 1 / 0,
                             file=io.StringIO(), force_terminal=True)
    assert monitor._view.start()
    a, b = _trial("aaa", epoch=1, val_accuracy=0.9), _trial("bbb", epoch=1, val_accuracy=0.4)
    monitor.on_trial_result(0, [a, b], a, a.last_result)  # draws: ZeroDivisionError, caught
    assert monitor.display == "plain" and monitor._view is None
    assert "the live display failed (ZeroDivisionError" in capsys.readouterr().err
    monitor.on_trial_result(0, [a, b], b, b.last_result)
    assert monitor.best() == {"trial_id": "aaa", "val_accuracy": 0.9}
    monitor.on_trial_error(0, [a, b], a)  # the best so far fails: it is no longer the best
    assert monitor.best() == {"trial_id": "bbb", "val_accuracy": 0.4}
    monitor.on_trial_result(0, [a, b], a, {"epoch": 2, "val_accuracy": 0.95})  # (a late result of it)
    assert monitor.best()["trial_id"] == "bbb"
    out = capsys.readouterr().out
    assert "failed    trial aaa" in out and "best val_accuracy 0.4000 (bbb)" in out, out
    status = [ln for ln in out.splitlines() if STATUS.match(ln)]
    assert len(status) == 1 and "epochs 2/" in status[0], out  # one trial event: one status line
    monitor.progress.trials = None  # type: ignore[assignment]  # the display's bookkeeping broken (a bug):
    monitor.on_trial_result(0, [a, b], b, {"epoch": 2, "val_accuracy": 0.5})  # the sweep's hooks carry on
    assert monitor.best() == {"trial_id": "bbb", "val_accuracy": 0.5}
    monitor.on_trial_complete(0, [a, b], b)  # no record of it reached the run directory: lost, never the best
    assert monitor.ended["bbb"] == "lost" and monitor.best() is None
    captured = capsys.readouterr()
    assert captured.err.count("the progress display's bookkeeping failed") == 1, captured.err
    assert "lost      trial bbb" in captured.out and "ETA -" in captured.out, captured.out


# ---------------------------------------------------------------- a real launch in a pseudo-terminal
def _read(fd: int, buf: bytearray, seconds: float) -> bool:
    """Read what the terminal shows for up to ``seconds``; False once the program closed it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every process holding the terminal has ended
                return False
            if not chunk:
                return False
            buf += chunk
    return True


def test_live_view_in_a_terminal_then_ctrl_c_restores_it(tmp_path):
    """The live table on a (pseudo-)terminal: the running trial's epoch k/3, an ETA with a time that
    moves; then a Ctrl-C typed at the terminal stops the sweep as ever (exit 130, how to resume), with the
    live view stopped first: the cursor shown again, no traceback."""
    args, env = _launch_args(tmp_path, "run-tty", slow_epochs=True)
    env.update(TERM="xterm-256color", COLUMNS="120", LINES="40")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the terminal's size, then the CLI
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            os.execve(args[0], args, env)
        finally:
            os._exit(127)
    buf = bytearray()
    deadline = time.monotonic() + 240
    etas: list[str] = []
    try:
        while time.monotonic() < deadline:
            alive = _read(fd, buf, 0.5)
            text = ANSI.sub("", buf.decode(errors="replace"))
            etas = ETA.findall(text)
            if not alive or (re.search(r"\s2/3\s", text) and len(set(etas)) >= 3):
                break
        text = ANSI.sub("", buf.decode(errors="replace"))
        assert re.search(r"\s2/3\s", text), text[-3000:]  # the epoch counter of the running trial
        assert len(set(etas)) >= 3, (etas, text[-3000:])  # an ETA with a time, and it moves
        assert "configuration" in text and "img/s" in text and "epochs" in text
        os.write(fd, b"\x03")  # Ctrl-C, as typed: SIGINT to the terminal's foreground process group
        _read(fd, buf, 120)
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    raw = buf.decode(errors="replace")
    text = ANSI.sub("", raw)
    assert rc == 130, (rc, text[-3000:])
    assert "continue with: bnsweep resume" in text and "Traceback" not in text, text[-3000:]
    assert raw.rfind("\x1b[?25h") > raw.rfind("\x1b[?25l") >= 0, raw[-2000:]  # the cursor shown again at the end


# ---------------------------------------------------------------- a real launch into a pipe
def test_plain_lines_in_a_pipe(tmp_path):
    """Off a terminal: plain lines, no escape sequences, one per trial event and a status line after
    each trial's end (and at most once a minute otherwise), never twice the same."""
    args, env = _launch_args(tmp_path, "run-pipe", slow_epochs=False)
    t0 = time.monotonic()
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, start_new_session=True)
    minutes = (time.monotonic() - t0) / 60
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "\x1b" not in out and "\r" not in out, out
    lines = out.splitlines()
    status = [m.group(1) for ln in lines if (m := STATUS.match(ln))]
    events = [ln for ln in lines if re.match(r"^\[\d\d:\d\d:\d\d\] (started|completed|pruned|diverged|failed|lost|"
                                             r"retrying|restored) ", ln)]
    assert sum(" started " in ln for ln in events) == 2 and sum(" completed " in ln for ln in events) == 2, out
    assert all(a != b for a, b in itertools.pairwise(status)), status  # never the same line twice
    assert 2 <= len(status) <= int(minutes) + 1 + len(events), (minutes, status)
    assert re.search(r"done 2/2 .* epochs 6/6 ", status[-1]), status
    assert ETA.search(status[0]), status  # the first trial's end: an ETA with a time, measured
    assert lines[-1].startswith("[") and " finished: " in lines[-1], out
