"""The watchdog for hung trials (a Ray Tune callback on the driver, next to ``SweepMonitor``).

A trial reports once per epoch (all its replicates, in lockstep). A RUNNING trial that reports no epoch
within its limit (a deadlocked data loader, a wedged accelerator, a collective that never returns, a
filesystem that stopped answering) is failed with the reason ``stopped by the watchdog after N s without an
epoch`` and its worker killed (``ray_compat.fail_hung_trial``): Ray Tune retries it from its last checkpoint
like a worker that died (``ENVIRONMENT_RETRIES`` times, whatever ``retries`` says), and, those spent, it ends
failed with that reason in its records, never silently. Each stop is printed (event ``watchdog``) and kept in
``trials/<trial_id>/watchdog.json``.

The limit (the spec's ``watchdog:`` section, ``bnsweep.spec.sections.Watchdog``) follows the epochs the
driver has seen: ``max(min_seconds, factor × the slowest epoch)``, where an epoch's time is the time between
two consecutive reports of one attempt (training, evaluation and the checkpoint's upload). Until an attempt
reports its first epoch, ``first_epoch_seconds`` is added (start-up, data, restore, compilation), and the
slowest epoch is the trial's own (a retried trial) or else the sweep's; once it has reported, the trial's
own, or (no two reports yet) its first report's time, start-up included. With nothing measured yet the
limit is ``min_seconds + first_epoch_seconds``. Time the driver itself was busy (a step that took longer
than ``DRIVER_STALL_S``) is not held against any trial.

>>> from bnsweep.spec.sections import Watchdog
>>> w = Watchdog(factor=10, min_seconds=300, first_epoch_seconds=3600)
>>> epoch_limit(w, slowest=None, first_epoch=True)       # nothing measured yet
3900
>>> epoch_limit(w, slowest=12.0, first_epoch=False)      # 10 × 12 s is below the floor
300
>>> epoch_limit(w, slowest=95.0, first_epoch=False), epoch_limit(w, slowest=95.0, first_epoch=True)
(950.0, 4550.0)
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from bnsweep.base.atomic import atomic_write_text
from bnsweep.base.meta import now_iso
from bnsweep.spec.sections import Watchdog
from bnsweep.store.rundir import RunDir
from bnsweep.sweep import ray_compat

CHECK_INTERVAL_S = 1.0  # how often running trials are checked (the controller's loop calls far more often)
DRIVER_STALL_S = 5.0  # a driver step longer than this: that time is not counted against the trials
WATCHDOG_FILE = "watchdog.json"  # trials/<trial_id>/: every stop of the trial by the watchdog


def epoch_limit(spec: Watchdog, *, slowest: float | None, first_epoch: bool) -> float:
    """Seconds a trial may go without reporting an epoch: ``max(min_seconds, factor × slowest)`` (``min_seconds``
    when nothing is measured), plus ``first_epoch_seconds`` for an attempt's first epoch."""
    base = spec.min_seconds if slowest is None else max(spec.min_seconds, spec.factor * slowest)
    return base + (spec.first_epoch_seconds if first_epoch else 0)


@dataclass
class _Clock:
    """One trial, as the watchdog sees it."""

    since: float | None = None  # monotonic time of the attempt's start or its last report; None: not running
    reported: bool = False  # this attempt has reported an epoch
    slowest_epoch: float | None = None  # slowest time between two reports of one attempt, any attempt
    slowest_first: float | None = None  # slowest time from an attempt's start to its first report
    epoch: int = 0  # the last epoch reported
    stops: int = 0


class HungTrialWatchdog(Callback):
    """Stops and retries trials that report no epoch within ``epoch_limit`` (see the module's docstring)."""

    def __init__(self, *, spec: Watchdog, run_dir: RunDir | None = None, quiet: bool = False) -> None:
        self.spec, self.rd, self.quiet = spec, run_dir, quiet
        self.clocks: dict[str, _Clock] = {}
        self.sweep_slowest: float | None = None  # slowest epoch of any trial
        self.stopped: list[dict[str, Any]] = []  # every stop, as recorded
        self._controller: Any = None
        self._last_check = 0.0
        self._last_tick: float | None = None

    def __getstate__(self) -> dict[str, Any]:  # the Tuner pickles its callbacks: not Ray's controller
        return {**self.__dict__, "_controller": None}

    # ---------------------------------------------------------------- the limit
    def limit(self, clock: _Clock) -> float:
        """This trial's limit now."""
        if not clock.reported:
            slowest = clock.slowest_epoch if clock.slowest_epoch is not None else self.sweep_slowest
            return epoch_limit(self.spec, slowest=slowest, first_epoch=True)
        slowest = clock.slowest_epoch if clock.slowest_epoch is not None else clock.slowest_first
        return epoch_limit(self.spec, slowest=slowest, first_epoch=False)

    # ---------------------------------------------------------------- Ray Tune hooks
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        clock = self.clocks.setdefault(trial.trial_id, _Clock())
        clock.since, clock.reported = time.monotonic(), False

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        clock = self.clocks.setdefault(trial.trial_id, _Clock())
        now = time.monotonic()
        if clock.since is not None:
            took = now - clock.since
            if clock.reported:
                clock.slowest_epoch = max(clock.slowest_epoch or 0.0, took)
                self.sweep_slowest = max(self.sweep_slowest or 0.0, took)
            else:
                clock.slowest_first = max(clock.slowest_first or 0.0, took)
        clock.since, clock.reported = now, True
        with contextlib.suppress(TypeError, ValueError):
            clock.epoch = int(result.get("epoch") or clock.epoch)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._not_running(trial)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._not_running(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._not_running(trial)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._excuse_driver_stall()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._excuse_driver_stall()
        now = time.monotonic()
        if not self.spec.enabled or now - self._last_check < CHECK_INTERVAL_S:
            return
        self._last_check = now
        for trial in list(trials):
            clock = self.clocks.get(trial.trial_id)
            if clock is None or clock.since is None or trial.status != "RUNNING":
                continue
            waited, limit = now - clock.since, self.limit(clock)
            if waited > limit:
                self._stop(trial, clock, waited=waited, limit=limit)

    # ---------------------------------------------------------------- helpers
    def _not_running(self, trial: Any) -> None:
        clock = self.clocks.get(trial.trial_id)
        if clock is not None:
            clock.since = None

    def _excuse_driver_stall(self) -> None:
        """A driver step that took long (a slow store, a long snapshot): the trials' reports may be queued
        behind it, so that time does not count against any of them."""
        now = time.monotonic()
        if self._last_tick is not None and now - self._last_tick > DRIVER_STALL_S:
            stall = now - self._last_tick
            for clock in self.clocks.values():
                if clock.since is not None:
                    clock.since += stall
        self._last_tick = now

    def _stop(self, trial: Any, clock: _Clock, *, waited: float, limit: float) -> None:
        from bnsweep.sweep.trainable import REASON_MARK

        controller = self._controller or ray_compat.tune_controller_from_stack()
        if controller is None:
            self._emit("warning", message=f"trial {trial.trial_id} reported no epoch for {waited:.0f} s (limit "
                                          f"{limit:.0f} s), but Ray Tune's controller cannot be reached to stop it")
            clock.since = time.monotonic()  # said again after another limit, not every second
            return
        self._controller = controller
        if not clock.epoch:  # (a driver that resumed the sweep: the epoch its restored checkpoint reached)
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                clock.epoch = int((trial.last_result or {}).get("epoch") or 0)
        what = f"epoch {clock.epoch + 1}" if clock.epoch else "its first epoch"
        reason = (f"stopped by the watchdog after {waited:.0f} s without an epoch (waiting for {what}; limit "
                  f"{limit:.0f} s, watchdog: {self._spec_text()})")
        clock.since = None
        clock.stops += 1
        retried = trial.max_failures < 0 or trial.num_failures + 1 <= trial.max_failures  # (as Ray decides)
        stop = {"trial_id": trial.trial_id, "at": now_iso(), "seconds_without_epoch": round(waited, 1),
                "limit_s": round(limit, 1), "last_epoch": clock.epoch, "stop": clock.stops, "retried": retried,
                "reason": reason}
        self._emit("watchdog", trial=trial.trial_id, seconds_without_epoch=round(waited, 1), limit_s=round(limit, 1),
                   last_epoch=clock.epoch, action="retried from its last checkpoint" if retried
                   else "retries exhausted: failed")
        try:
            ray_compat.fail_hung_trial(controller, trial, REASON_MARK + reason)
        except Exception as e:  # the seam broke: say so, never stop the sweep over it
            self._emit("warning", message=f"could not stop hung trial {trial.trial_id}: {type(e).__name__}: {e}")
            return
        self.stopped.append(stop)
        self._record(trial.trial_id)

    def _spec_text(self) -> str:
        s = self.spec
        return f"factor {s.factor:g}, min_seconds {s.min_seconds:g}, first_epoch_seconds {s.first_epoch_seconds:g}"

    def _record(self, trial_id: str) -> None:
        """``trials/<trial_id>/watchdog.json``: the trial's stops so far (never raises)."""
        if self.rd is None:
            return
        path = self.rd.trials_dir / trial_id / WATCHDOG_FILE
        try:
            atomic_write_text(path, json.dumps([s for s in self.stopped if s["trial_id"] == trial_id], indent=1))
            self.rd.push([path])
        except Exception as e:  # record keeping must never kill the sweep
            self._emit("warning", message=f"could not record the watchdog's stop of trial {trial_id}: {e}")

    def _emit(self, event: str, **fields: Any) -> None:
        """One line, as ``SweepMonitor`` prints its events (JSON lines with ``quiet``)."""
        if self.quiet:
            print(json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=str), flush=True)
            return
        rest = "  ".join(f"{k} {v}" for k, v in fields.items() if v is not None)
        print(f"[{time.strftime('%H:%M:%S')}] {event:9s} {rest}", file=sys.stderr if event == "warning" else sys.stdout,
              flush=True)


__all__ = ["CHECK_INTERVAL_S", "DRIVER_STALL_S", "WATCHDOG_FILE", "HungTrialWatchdog", "epoch_limit"]
