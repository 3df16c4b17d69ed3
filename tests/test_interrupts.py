"""Ctrl-C and SIGTERM in the driver (bnsweep.base.interrupts): a SIGINT that CPython drops is raised again; one
that lands while Ray starts waits for Ray to be up; SIGTERM stops at once and is told apart.

These send real signals to this process (pytest's own handlers are put back after each test). Real
launches interrupted end to end: test_reliability's kill campaign and its Ctrl-C / SIGTERM campaign."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

from bnsweep.base import interrupts
from bnsweep.sweep.monitor import SweepMonitor

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class _Obj:
    pass


def _sigint_swallowed_by_a_weakref_callback() -> None:
    """Deliver a SIGINT whose handler runs inside a weakref callback, as the garbage collector does when
    it frees an object some library keeps a weak registry of (SQLAlchemy's class registry did, in a real
    launch): CPython reports the KeyboardInterrupt as "Exception ignored" and drops it."""
    obj = _Obj()
    ref = weakref.ref(obj, lambda _r: signal.raise_signal(signal.SIGINT))
    del obj
    gc.collect()
    assert ref() is None


def test_python_drops_a_ctrl_c_raised_in_a_weakref_callback():
    # the CPython behaviour the module exists for: with Python's own handler this Ctrl-C just vanishes
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _sigint_swallowed_by_a_weakref_callback()  # returns normally (a KeyboardInterrupt would fail the test)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_dropped_ctrl_c_is_raised_at_the_next_check():
    with interrupts.catching():
        _sigint_swallowed_by_a_weakref_callback()  # no exception here: CPython dropped it
        assert interrupts.pending()
        with pytest.raises(KeyboardInterrupt):
            interrupts.raise_if_pending()
        assert not interrupts.pending()
        interrupts.raise_if_pending()  # once only


def test_a_ctrl_c_outside_callbacks_still_raises_at_once():
    with interrupts.catching(), pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_catching_puts_the_previous_handler_back_and_forgets():
    before = signal.getsignal(signal.SIGINT)
    with interrupts.catching():
        assert signal.getsignal(signal.SIGINT) is not before
        _sigint_swallowed_by_a_weakref_callback()
    assert signal.getsignal(signal.SIGINT) is before
    assert not interrupts.pending()


def test_without_catching_nothing_is_remembered():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _sigint_swallowed_by_a_weakref_callback()
        assert not interrupts.pending()
        interrupts.raise_if_pending()  # nothing to raise
        with interrupts.deferred(), pytest.raises(KeyboardInterrupt):  # deferred is a no-op here
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_deferred_holds_a_ctrl_c_until_the_block_ends(capfd):
    steps: list[str] = []
    with interrupts.catching():
        with pytest.raises(KeyboardInterrupt), interrupts.deferred("stopping once Ray has started"):
            signal.raise_signal(signal.SIGINT)
            steps.append("the guarded block ran on")  # (ray.init finishing)
        steps.append("after")
        assert not interrupts.pending()
    assert steps == ["the guarded block ran on", "after"]
    assert "stopping once Ray has started (Ctrl-C again to stop now)" in capfd.readouterr().err


def test_a_second_ctrl_c_does_not_wait():
    steps: list[str] = []
    with interrupts.catching(), pytest.raises(KeyboardInterrupt), interrupts.deferred():
        signal.raise_signal(signal.SIGINT)
        steps.append("held")
        signal.raise_signal(signal.SIGINT)
        steps.append("not reached")
    assert steps == ["held"]


def test_deferred_lets_the_blocks_own_error_through():
    with interrupts.catching():
        with pytest.raises(ValueError), interrupts.deferred():
            signal.raise_signal(signal.SIGINT)
            raise ValueError("Ray did not start")
        assert interrupts.pending()  # still known; the CLI exits on the error anyway


def test_the_sweep_monitor_hands_a_dropped_ctrl_c_to_ray_tunes_handler(tmp_path):
    """Inside Ray Tune's loop the dropped Ctrl-C goes to Tune's own SIGINT handler (installed by the real
    ray.tune function below), which stops the sweep gracefully and saves its state."""
    from ray.tune.tune import _setup_signal_catching

    monitor = SweepMonitor(run_dir=tmp_path, total=1, replicates=1, metric="val_accuracy", mode="max",
                           quiet=True, seed_base=0)
    usr1 = signal.getsignal(signal.SIGUSR1)
    with interrupts.catching():
        ours = signal.getsignal(signal.SIGINT)
        stop = _setup_signal_catching()
        try:
            monitor.on_step_begin(0, [])
            assert not stop.is_set()  # nothing pending: nothing sent
            _sigint_swallowed_by_a_weakref_callback()  # Tune's handler is current: it sets the event itself
            assert stop.is_set()
            stop.clear()
            signal.signal(signal.SIGINT, ours)
            _sigint_swallowed_by_a_weakref_callback()  # dropped: ours remembered it
            stop = _setup_signal_catching()
            monitor.on_step_begin(1, [])
            assert stop.is_set() and not interrupts.pending()
        finally:
            signal.signal(signal.SIGUSR1, usr1)


def test_a_dropped_ctrl_c_prints_no_traceback_but_other_dropped_errors_still_do():
    seen: list[type] = []
    before = sys.unraisablehook
    sys.unraisablehook = lambda info: seen.append(info.exc_type)
    try:
        with interrupts.catching():
            _sigint_swallowed_by_a_weakref_callback()
            obj = _Obj()
            ref = weakref.ref(obj, lambda _r: 1 / 0)
            del obj
            assert ref() is None
            assert interrupts.pending()
    finally:
        sys.unraisablehook = before
    assert seen == [ZeroDivisionError]


def test_python_m_bnsweep_exits_130_after_a_ctrl_c_caught_inside_a_string_exec(tmp_path):
    """CPython 3.11 turns the exit status of ``python -m`` into death by SIGINT (-2) when a KeyboardInterrupt
    ever ended a string exec (as dataclass creation during an import does), even one caught later: the
    driver once printed its "interrupted" line and still died by SIGINT on CI. Here the interrupt is
    raised inside a string exec in place of `bnsweep status`, then bnsweep's real __main__ runs; without
    its reset (second run) the status is lost."""
    probe = ("import runpy\n"
             "import bnsweep.cli as cli\n"
             "import bnsweep.base.interrupts as interrupts\n"
             "cli.cmd_status = lambda args: exec('raise KeyboardInterrupt', dict())\n"
             "{patch}"
             "runpy.run_module('bnsweep', run_name='__main__', alter_sys=True)\n")
    (tmp_path / "probe.py").write_text(probe.format(patch=""))
    (tmp_path / "probe_without.py").write_text(
        probe.format(patch="interrupts.let_exit_status_through = lambda: None\n"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    got = subprocess.run([sys.executable, "-m", "probe", "status", str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert got.returncode == 130, (got.returncode, got.stderr[-2000:])
    assert "interrupted." in got.stderr and "Traceback" not in got.stderr
    if sys.version_info[:2] == (3, 11):  # the CPython behaviour the reset exists for
        without = subprocess.run([sys.executable, "-m", "probe_without", "status", str(tmp_path)], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert without.returncode == -signal.SIGINT, (without.returncode, without.stderr[-2000:])


def test_sigterm_stops_at_once_like_a_second_ctrl_c_and_is_told_apart():
    before = signal.getsignal(signal.SIGTERM)
    with interrupts.catching():
        assert not interrupts.terminated()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        assert interrupts.terminated()
        with pytest.raises(KeyboardInterrupt), interrupts.deferred():  # held while Ray starts, like a Ctrl-C
            signal.raise_signal(signal.SIGTERM)
            held = True
        assert held
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as ray.init does (with its crash-dump handler)
        interrupts.reassert()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before
    with interrupts.catching():
        assert not interrupts.terminated()  # each block starts afresh


def test_a_sweep_that_stopped_unfinished_exits_130_only_after_a_ctrl_c_else_3_saying_why(tmp_path, capsys):
    """``received()``: any Ctrl-C or SIGTERM inside the block, ours or one Ray Tune's handler took
    (``note_received``, from ``ray_compat.tune_took_sigint``); the CLI's status and the closing line follow it."""
    from bnsweep.cli import EXIT_INCOMPLETE, EXIT_INTERRUPTED, _exit_status
    from bnsweep.sweep.options import Outcome

    with interrupts.catching():
        assert not interrupts.received()
        interrupts.note_received()
        assert interrupts.received()
    with interrupts.catching():
        assert not interrupts.received()  # each block starts afresh
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert interrupts.received()
    counts = {"completed": 1, "pruned": 0, "diverged": 0, "failed": 0, "lost": 0, "running": 0, "total": 3}
    for interrupted, status, said in ((True, EXIT_INTERRUPTED, None),
                                      (False, EXIT_INCOMPLETE, "2 configuration(s) not ended, without an interrupt")):
        outcome = Outcome(run_dir=tmp_path, finished=False, counts=counts, best=None, interrupted=interrupted)
        assert _exit_status(outcome) == status
        monitor = SweepMonitor(run_dir=tmp_path, total=3, replicates=1, metric="val_accuracy", mode="max",
                               quiet=False, seed_base=0, plain=True)
        monitor.close(outcome)
        out = capsys.readouterr().out
        assert "stopped:" in out and "continue with: bnsweep resume" in out, out
        assert (said in out) if said else ("not ended" not in out), out
    finished = Outcome(run_dir=tmp_path, finished=True, counts={**counts, "completed": 3}, best=None)
    assert _exit_status(finished) == 0


@pytest.mark.parametrize("where, module", [("while the CLI module imports", "argparse"),
                                           ("while a verb's modules import", "yaml")])
def test_a_ctrl_c_during_imports_exits_130_without_a_traceback(tmp_path, where, module):
    """A Ctrl-C in the first fraction of a second of any verb lands in an import: a module that raises
    KeyboardInterrupt when imported stands in for it (first on the path, it shadows the real one)."""
    (tmp_path / f"{module}.py").write_text("raise KeyboardInterrupt\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    got = subprocess.run([sys.executable, "-m", "bnsweep", "status", str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert got.returncode == 130, (where, got.returncode, got.stderr[-2000:])
    assert "Traceback" not in got.stderr and got.stderr.strip() == "interrupted.", (where, got.stderr)


def test_plan_exits_130_when_a_library_swallowed_the_ctrl_c_during_its_probe(monkeypatch, capsys):
    """A Ctrl-C dropped inside a library callback while plan's probe trains (TensorFlow, SQLAlchemy) must
    not let plan finish with exit 0: the remembered signal is raised after the probe."""
    from bnsweep import cli
    from bnsweep.report import plan

    def probe_that_swallows(*args, **kwargs):
        with contextlib.suppress(KeyboardInterrupt):  # ...and a library callback drops it
            signal.raise_signal(signal.SIGINT)  # our handler raises KeyboardInterrupt here...
        return 123.0, "fake probe"

    monkeypatch.setattr(plan, "_probe", probe_that_swallows)
    spec = ROOT / "sweeps" / "quickstart.yaml"
    assert cli.main(["plan", str(spec)]) == cli.EXIT_INTERRUPTED
