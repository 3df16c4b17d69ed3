"""The sweep's progress as the driver shows it: epochs done and to do, an ETA from measured epoch times,
and, on a terminal, a live table of the running trials (rich).

``SweepProgress`` (no Ray, no rich) counts the sweep's work in replicate-epochs: every configuration ×
replicate × its planned epochs. A trial that ends early (pruned by the scheduler, diverged, failed)
has its remaining epochs removed from the plan, so the bar ends at 100 %. The ETA is the epochs left
× the recent mean seconds per epoch (plus each configuration not yet started's measured start-up) ÷
the trials running at once; between two reports it counts down with the clock.

``LiveView`` draws a rich ``Live`` region under the event lines; it never raises: a rendering error stops
it (the terminal restored) and says so, and the monitor carries on with plain lines.

>>> p = SweepProgress(total=2, replicates=1, epochs_hint=3, slots=2)
>>> p.trial_started("a", epochs=3, now=0.0)
>>> p.trial_started("b", epochs=3, now=12.0)
>>> p.eta(now=12.0) is None  # nothing measured yet
True
>>> p.epoch_reported("a", epoch=1, now=10.0)  # its first epoch: 10 s with the start-up
>>> p.epoch_reported("a", epoch=2, now=15.0)  # then 5 s an epoch
>>> p.done, p.planned
(2, 6)
>>> p.eta(now=15.0)  # (a: 1 epoch × 5 s; b: 3 × 5 s + 5 s start-up, 3 s of it spent) ÷ 2 trials at once
11.0
>>> p.eta(now=17.0)  # 2 s later, no report since: counts down
9.0
>>> p.trial_ended("a", now=16.0)  # pruned after 2 of its 3 epochs: that epoch is no longer planned
>>> p.done, p.planned, p.skipped
(2, 5, 1)
>>> format_duration(75), format_duration(3725), format_duration(None)
('1m15s', '1h02m', '-')
>>> format_row(TrialRow(trial_id="t1", config="lr=0.1", epoch=2, epochs=3, val_accuracy=0.41234,
...                     images_per_sec=1234.5))
('t1', 'lr=0.1', '2/3', '0.4123', '1,234')
"""

from __future__ import annotations

import atexit
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from bnsweep.base.text import printable

RECENT_EPOCHS = 16  # the ETA's mean seconds per epoch is over this many most recent epochs


def format_duration(seconds: float | None) -> str:
    """A duration for a status line: ``42s``, ``4m05s``, ``1h02m``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def short_config(config: dict[str, Any], *, width: int = 60) -> str:
    """The searched part of a trial's config on one short line (floats to 3 digits, no ``resolved``).

    >>> short_config({"lr": 0.012345, "regime": "bn", "resolved": {}})
    'lr=0.0123 regime=bn'
    """
    parts = []
    for k, v in config.items():
        if k == "resolved":
            continue
        shown = f"{v:.3g}" if isinstance(v, float) else str(v)
        parts.append(f"{k}={shown}")
    text = printable(" ".join(parts))
    return text if len(text) <= width else text[:width - 1] + "…"


@dataclass
class TrialRow:
    """One running trial as the live table shows it."""

    trial_id: str
    config: str
    epoch: int = 0
    epochs: int | None = None
    val_accuracy: float | None = None
    images_per_sec: float | None = None


def format_row(row: TrialRow) -> tuple[str, str, str, str, str]:
    """The live table's cells for one running trial: id, configuration, epoch k/N, val accuracy, images/s."""
    acc = "-" if row.val_accuracy is None or not math.isfinite(row.val_accuracy) else f"{row.val_accuracy:.4f}"
    ips = "-" if row.images_per_sec is None or not math.isfinite(row.images_per_sec) \
        else f"{row.images_per_sec:,.0f}"
    return (printable(row.trial_id), row.config, f"{row.epoch}/{row.epochs if row.epochs else '?'}", acc, ips)


@dataclass
class _Trial:
    epochs: int  # planned
    epoch: int = 0  # reported
    last_time: float = 0.0
    first_pending: bool = True  # its next report is the first since it (re)started
    ended: bool = False


@dataclass
class SweepProgress:
    """The sweep's epochs, done and planned, and its ETA (see the module docstring). Times are the
    caller's clock (``time.time()``), passed in so that this is testable without one."""

    total: int  # configurations
    replicates: int
    epochs_hint: int | None = None  # planned epochs of a configuration not yet started (the spec's)
    slots: int | None = None  # trials at once (the packing); None: the most seen running
    trials: dict[str, _Trial] = field(default_factory=dict)
    epoch_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_EPOCHS))
    # (seconds, epochs) of each trial's first report since it (re)started: its start-up included
    first_reports: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=RECENT_EPOCHS))
    skipped: int = 0  # replicate-epochs planned, then not needed (a trial that ended early)
    most_running: int = 0

    # ---- events
    def trial_started(self, trial_id: str, *, epochs: int | None, now: float) -> None:
        t = self.trials.get(trial_id)
        if t is None:
            t = self.trials[trial_id] = _Trial(epochs=max(int(epochs or self._hint()), 1))
        t.last_time = now
        t.first_pending, t.ended = True, False
        self.most_running = max(self.most_running, self.running)

    def epoch_reported(self, trial_id: str, *, epoch: int, now: float, resumed_at: int | None = None) -> None:
        t = self.trials.get(trial_id)
        if t is None:  # (a result before its start: never, but never a crash either)
            self.trial_started(trial_id, epochs=None, now=now)
            t = self.trials[trial_id]
        if resumed_at:  # restored: the epochs before were trained in an earlier attempt
            t.epoch = max(t.epoch, int(resumed_at)) if not t.first_pending else int(resumed_at)
        n, dt = int(epoch) - t.epoch, now - t.last_time
        if n > 0 and dt > 0:
            if t.first_pending:
                self.first_reports.append((dt, n))
            else:
                self.epoch_seconds.append(dt / n)
            t.first_pending = False
        if n > 0:
            t.epoch, t.last_time = int(epoch), now
            t.epochs = max(t.epochs, t.epoch)

    def trial_ended(self, trial_id: str, *, now: float | None = None, epoch: int | None = None) -> None:
        t = self.trials.get(trial_id)
        if t is None:
            t = self.trials[trial_id] = _Trial(epochs=int(epoch or 0))  # (ended before this driver saw it)
        if epoch is not None:
            t.epoch = max(t.epoch, int(epoch))
        if not t.ended and t.epochs > t.epoch:
            self.skipped += (t.epochs - t.epoch) * self.replicates
        t.epochs = max(t.epoch, 0)
        t.ended = True

    # ---- what it says
    @property
    def running(self) -> int:
        return sum(not t.ended for t in self.trials.values())

    @property
    def unseen(self) -> int:
        return max(self.total - len(self.trials), 0)

    @property
    def done(self) -> int:
        """Replicate-epochs trained."""
        return sum(t.epoch for t in self.trials.values()) * self.replicates

    @property
    def planned(self) -> int:
        """Replicate-epochs the sweep needs: started trials' own plans, the rest at the spec's."""
        return (sum(t.epochs for t in self.trials.values()) + self.unseen * self._hint()) * self.replicates

    def eta(self, *, now: float) -> float | None:
        """Seconds until the sweep ends, or None before any epoch was measured: each running trial's epochs
        left (and its start-up, before its first report) less the time since its last report, plus the
        configurations not started yet, ÷ the trials that can run at once."""
        spe = self._seconds_per_epoch()
        if spe is None:
            return None
        startup = self._startup_seconds(spe)
        work = self.unseen * (self._hint() * spe + startup)
        for t in self.trials.values():
            if t.ended:
                continue
            left = t.epochs - t.epoch
            mine = left * spe + (startup if t.first_pending else 0.0)
            work += max(mine - max(now - t.last_time, 0.0), max(left - 1, 0) * spe)  # (a slow epoch: not < 0)
        lanes = max(min(self.slots or max(self.most_running, 1), self.running + self.unseen), 1)
        return work / lanes

    def _seconds_per_epoch(self) -> float | None:
        if self.epoch_seconds:
            return sum(self.epoch_seconds) / len(self.epoch_seconds)
        if self.first_reports:  # nothing but first reports yet (their start-up included): an upper bound
            return sum(dt / n for dt, n in self.first_reports) / len(self.first_reports)
        return None

    def _startup_seconds(self, spe: float) -> float:
        """A trial's measured start-up (building its model, restoring...): its first report's time beyond
        its epochs'."""
        if not self.epoch_seconds or not self.first_reports:
            return 0.0
        return sum(max(dt - n * spe, 0.0) for dt, n in self.first_reports) / len(self.first_reports)

    def _hint(self) -> int:
        started = [t.epochs for t in self.trials.values() if not t.ended]
        if started:
            return max(round(sum(started) / len(started)), 1)
        return max(int(self.epochs_hint or 1), 1)


@dataclass
class LiveSnapshot:
    """What one frame of the live view shows."""

    rows: list[TrialRow]
    done: int
    planned: int
    skipped: int
    eta_s: float | None
    counts: str  # "done 3/8  running 2  pruned 1 ..."
    best: str
    title: str = ""


def render(snap: LiveSnapshot, *, max_rows: int | None = None) -> Any:
    """A rich renderable of ``snap``: the running trials' table, the epochs' bar with the ETA, the counts.
    At most ``max_rows`` trials (default: what fits the terminal's height), then how many more run."""
    if max_rows is None:
        import shutil

        max_rows = max(shutil.get_terminal_size(fallback=(120, 32)).lines - 12, 3)
    from rich import box
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, title=snap.title or None, title_justify="left", pad_edge=False)
    for name, justify in (("trial", "left"), ("configuration", "left"), ("epoch", "right"),
                          ("val acc", "right"), ("img/s", "right")):
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    for row in snap.rows[:max_rows]:
        table.add_row(*format_row(row))
    if len(snap.rows) > max_rows:
        table.add_row("…", f"and {len(snap.rows) - max_rows} more running", "", "", "")
    if not snap.rows:
        table.add_row("", "(no trial running)", "", "", "")
    bar = Table.grid(padding=(0, 1))
    skipped = f" ({snap.skipped} skipped: ended early)" if snap.skipped else ""
    bar.add_row(ProgressBar(total=max(snap.planned, 1), completed=min(snap.done, max(snap.planned, 1)), width=32),
                Text(f"{snap.done}/{snap.planned} epochs{skipped}"), Text(f"ETA {format_duration(snap.eta_s)}"))
    return Group(table, bar, Text(snap.counts), Text(snap.best))


class LiveView:
    """A rich ``Live`` region at the bottom of a terminal, redrawn by ``refresh`` (from the caller's thread:
    no drawing thread), with lines printed above it by ``print``. Any error stops it for good (``failed``
    says why) and the terminal is restored; it is also stopped at interpreter exit."""

    def __init__(self, *, frame: Callable[[], Any], file: TextIO | None = None, min_interval_s: float = 0.25,
                 force_terminal: bool | None = None) -> None:
        self.frame = frame
        self.file = file
        self.min_interval_s = min_interval_s
        self.force_terminal = force_terminal
        self.failed: str | None = None
        self._live: Any = None
        self._last = 0.0

    @property
    def active(self) -> bool:
        return self._live is not None

    def start(self) -> bool:
        try:
            from rich.console import Console
            from rich.live import Live

            out = self.file or sys.stdout
            console = Console(file=out, force_terminal=self.force_terminal, highlight=False)
            err_too = self.file is None and _isatty(sys.stderr)
            self._live = Live(self.frame(), console=console, auto_refresh=False, transient=False,
                              redirect_stdout=self.file is None, redirect_stderr=err_too,
                              vertical_overflow="ellipsis")  # (taller than the terminal: cropped)
            self._live.start(refresh=True)
            atexit.register(self.stop)
            self._last = time.monotonic()
            return True
        except Exception as e:
            self._fail(e)
            return False

    def refresh(self, *, force: bool = False) -> None:
        if self._live is None or (not force and time.monotonic() - self._last < self.min_interval_s):
            return
        try:
            self._live.update(self.frame(), refresh=True)
            self._last = time.monotonic()
        except Exception as e:
            self._fail(e)

    def print(self, line: str, *, style: str | None = None) -> bool:
        """Print ``line`` above the live region; False when the view is not (or no longer) running."""
        if self._live is None:
            return False
        try:
            from rich.text import Text

            self._live.console.print(Text(line, style=style or ""), soft_wrap=True)
            return True
        except Exception as e:
            self._fail(e)
            return False

    def stop(self) -> None:
        live, self._live = self._live, None
        if live is None:
            return
        try:
            live.stop()
        except Exception:  # a terminal gone (SIGHUP): nothing left to restore
            pass
        finally:
            atexit.unregister(self.stop)

    def _fail(self, e: Exception) -> None:
        self.failed = f"{type(e).__name__}: {e}"[:300]
        self.stop()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (stdout) is a terminal a live view can draw on (not a pipe, file, ``TERM=dumb``)."""
    import os

    return _isatty(stream if stream is not None else sys.stdout) and os.environ.get("TERM", "") not in ("dumb",
                                                                                                    "unknown")
