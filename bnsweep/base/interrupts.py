"""Ctrl-C in the driver: never lost, and never in the middle of Ray's start-up.

CPython runs a Python signal handler in the main thread at the next bytecode boundary, wherever that
is. Python's own handler raises ``KeyboardInterrupt`` there, which goes wrong in two places the driver
really reaches (both seen on a 2-core machine, one launch in ten interrupted at random times):

- inside a ``__del__`` or a weakref callback that the garbage collector happens to run (SQLAlchemy's
  class registry, for one), CPython prints "Exception ignored" and *drops* the exception: the Ctrl-C
  is lost and the sweep runs to its end;
- inside ``ray.init``, which leaves a half-started Ray whose shutdown can then kill the driver with
  SIGSEGV (exit -11) instead of the clean exit 130.

``catching()`` (the CLI's launch and resume run inside it) installs a handler that raises as Python's
does but also remembers the signal (and keeps CPython's "Exception ignored" traceback of a dropped one
off the terminal), so a dropped one is raised again at the next ``raise_if_pending()``:
between the driver's start-up phases and at every step of Ray Tune's loop (``SweepMonitor``), where it
is handed to Ray Tune's own handler so the sweep stops gracefully. ``deferred()`` holds a Ctrl-C until
the block it guards has finished (a second Ctrl-C does not wait).

SIGTERM (``kill PID``, a scheduler's time limit, ``systemctl stop``) stops at once, as a second Ctrl-C
does, without Ray Tune's graceful stop: sent to the whole process group it has already ended Ray's own
processes, and the graceful stop would wait a minute for them. ``ray.init`` installs Ray's crash-dump
handler for SIGTERM; ``reassert()`` puts ours back. ``terminated()`` tells the CLI to exit 143, not 130.

Example::

    with catching():
        with deferred():
            start_something_that_must_not_be_torn()
        raise_if_pending()
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

_pending = False  # a SIGINT reached `catching`'s handler and no KeyboardInterrupt is known to have ended the run
_installed = False
_holding = False  # inside `deferred`: the first SIGINT is held, not raised
_held = False  # a SIGINT arrived while holding
_held_note = ""
_terminated = False  # the stop came as SIGTERM
_received = False  # a SIGINT or SIGTERM reached this process inside the current `catching()` block (any handler)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending, _held, _received
    _pending, _received = True, True
    if _holding and not _held:
        _held = True
        with contextlib.suppress(OSError):  # (os.write: print could re-enter a write to stderr under way)
            os.write(2, f"\n{_held_note} (Ctrl-C again to stop now)\n".encode())
        return
    raise KeyboardInterrupt


def _term_handler(signum: int, frame: FrameType | None) -> None:
    global _terminated, _received
    _terminated, _received = True, True
    _handler(signum, frame)  # held inside `deferred`, raised (KeyboardInterrupt) everywhere else


def terminated() -> bool:
    """The last ``catching()`` block was stopped by SIGTERM."""
    return _terminated


def received() -> bool:
    """A Ctrl-C (or SIGTERM) reached this process inside the last ``catching()`` block, whichever handler took
    it (ours, or Ray Tune's: ``note_received()``): a sweep that stopped without one stopped for another
    reason."""
    return _received


def note_received() -> None:
    """Another handler took a Ctrl-C inside the ``catching()`` block (Ray Tune's, during ``tuner.fit``:
    ``ray_compat.tune_took_sigint``); ``received()`` says so from now on."""
    global _received
    _received = True


def reassert() -> None:
    """Put this module's SIGINT and SIGTERM handlers back (``ray.init`` replaces the SIGTERM one)."""
    if _installed and _in_main_thread():
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _term_handler)


@contextlib.contextmanager
def catching() -> Iterator[None]:
    """Install the remembering SIGINT (and SIGTERM) handler for the block (main thread only; elsewhere a
    no-op)."""
    global _installed, _pending, _terminated, _received
    if not _in_main_thread() or _installed:
        yield
        return
    previous, previous_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    previous_hook = sys.unraisablehook

    def quiet_about_dropped_ctrl_c(info: Any) -> None:  # remembered above; no "Exception ignored" traceback
        if not isinstance(info.exc_value, KeyboardInterrupt):
            previous_hook(info)

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _term_handler)
    sys.unraisablehook = quiet_about_dropped_ctrl_c
    _installed, _pending, _terminated, _received = True, False, False, False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)  # None: set from C
        signal.signal(signal.SIGTERM, previous_term if previous_term is not None else signal.SIG_DFL)
        sys.unraisablehook = previous_hook
        _installed, _pending = False, False


def pending() -> bool:
    """A Ctrl-C arrived that may not have been acted on."""
    return _pending


def raise_if_pending() -> None:
    """Raise ``KeyboardInterrupt`` for a Ctrl-C that was received but dropped (see the module docstring)."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


def redeliver_if_pending() -> None:
    """Send a dropped Ctrl-C again, to whichever handler is current (inside Ray Tune's loop: Tune's own,
    which stops the sweep gracefully and saves its state)."""
    global _pending
    if _pending and _in_main_thread():
        _pending = False
        signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def deferred(note: str = "stopping once this step is done") -> Iterator[None]:
    """Hold a Ctrl-C until the block has finished, then raise it (``KeyboardInterrupt``); ``note`` is
    printed when one is held, and a second Ctrl-C raises at once. Only under ``catching()`` in the main
    thread; elsewhere a no-op."""
    global _holding, _held, _held_note
    if not _installed or not _in_main_thread() or _holding:
        yield
        return
    _holding, _held, _held_note = True, False, note
    try:
        yield
    finally:
        held = _held
        _holding, _held = False, False
    if held:
        raise_if_pending()


def let_exit_status_through() -> None:
    """Call just before exiting (``python -m bnsweep`` does). CPython 3.11 remembers a KeyboardInterrupt
    that ended any *string* ``exec``/``eval`` (dataclass and namedtuple creation use them, e.g. in an
    import that a Ctrl-C interrupts) even when a caller caught it, and under ``python -m`` it then ends
    the process by SIGINT at exit (status -2) instead of with the status the program chose (130). Every
    string eval first resets that flag: one harmless eval lets the status through."""
    eval("None")
