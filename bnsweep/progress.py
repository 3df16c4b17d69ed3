"""Live progress of a sweep (a Ray Tune callback on the driver) and record keeping on trial end.

On the terminal: one line per event (trial started/ended) plus a status line at most every 10 s:
done / running / pruned / failed, best so far, ETA. ``quiet=True`` prints JSON lines instead
(for scripts). When a trial ends without a result for every replicate (pruned by ASHA, or failed
after its retries) the missing records are written from the last checkpoints, and the results
table is rewritten, so a crash loses at most the epochs in flight.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback


class SweepMonitor(Callback):
    def __init__(self, *, run_dir: Path, total: int, replicates: int, metric: str, mode: str, quiet: bool,
                 seed_base: int) -> None:
        self.run_dir, self.total, self.replicates = Path(run_dir), total, replicates
        self.metric, self.mode, self.quiet, self.seed_base = metric, mode, quiet, seed_base
        self.started = time.time()
        self.ended: dict[str, str] = {}  # trial id -> completed | pruned | failed
        self.running: set[str] = set()
        self.best_value: float | None = None
        self.best_trial: str | None = None
        self.finished_flag = False
        self._last_status = 0.0
        self._durations: list[float] = []
        self._trial_start: dict[str, float] = {}

    # ---------------------------------------------------------------- Ray Tune hooks
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._trial_start[trial.trial_id] = time.time()
        self._emit("started", trial=trial.trial_id, config=_short(trial.config))

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        self._update_best(trial.trial_id, result.get(self.metric))
        if time.time() - self._last_status > 10:
            self._status(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        written = self._close(trial, "pruned", "stopped early by the scheduler")
        self._ended(trial, "pruned" if written else "completed", trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._close(trial, "failed", "the trial raised (after its retries)")
        self._ended(trial, "failed", trials)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.finished_flag = bool(trials) and all(t.status in ("TERMINATED", "ERROR") for t in trials) \
            and len(trials) >= self.total

    # ---------------------------------------------------------------- helpers
    def _close(self, trial: Any, status: str, reason: str) -> int:
        from bnsweep.search import close_unfinished_replicates

        resolved = trial.config.get("resolved")
        if resolved is None:
            return 0
        seeds = [self.seed_base + i for i in range(self.replicates)]
        try:
            return close_unfinished_replicates(self.run_dir, trial.trial_id, resolved, seeds=seeds,
                                               status=status, reason=reason)
        except Exception as e:  # record keeping must never kill the sweep
            self._emit("warning", message=f"could not record trial {trial.trial_id}: {e}")
            return 0

    def _ended(self, trial: Any, status: str, trials: list[Any]) -> None:
        from bnsweep.results import write_results_table

        self.running.discard(trial.trial_id)
        self.ended[trial.trial_id] = status
        if trial.trial_id in self._trial_start:
            self._durations.append(time.time() - self._trial_start.pop(trial.trial_id))
        last = trial.last_result or {}
        self._update_best(trial.trial_id, last.get(self.metric))
        try:
            write_results_table(self.run_dir)
        except Exception as e:
            self._emit("warning", message=f"could not write the results table: {e}")
        self._emit(status, trial=trial.trial_id, epochs=last.get("epoch"), **{self.metric: last.get(self.metric)})
        self._status(trials)

    def _update_best(self, trial_id: str, value: Any) -> None:
        if not isinstance(value, (int, float)) or value != value:
            return
        better = self.best_value is None or (value > self.best_value if self.mode == "max" else value < self.best_value)
        if better:
            self.best_value, self.best_trial = float(value), trial_id

    def counts(self) -> dict[str, int]:
        c = {"completed": 0, "pruned": 0, "failed": 0}
        for s in self.ended.values():
            c[s] = c.get(s, 0) + 1
        c["running"] = len(self.running)
        c["total"] = self.total
        return c

    def best(self) -> dict[str, Any] | None:
        if self.best_trial is None:
            return None
        return {"trial_id": self.best_trial, self.metric: self.best_value}

    def all_ended(self) -> bool:
        return self.finished_flag

    def eta_seconds(self, trials: list[Any]) -> float | None:
        if not self._durations:
            return None
        left = max(self.total - sum(t.status in ("TERMINATED", "ERROR") or t.trial_id in self.ended
                                    for t in trials), 0)
        parallel = max(len(self.running), 1)
        return left * (sum(self._durations) / len(self._durations)) / parallel

    def _status(self, trials: list[Any]) -> None:
        self._last_status = time.time()
        c = self.counts()
        done = sum(t.status in ("TERMINATED", "ERROR") or t.trial_id in self.ended for t in trials)
        eta = self.eta_seconds(trials)
        self._emit("status", done=done, total=self.total, running=c["running"], pruned=c["pruned"],
                   failed=c["failed"], best=self.best_value, best_trial=self.best_trial,
                   eta_s=None if eta is None else round(eta))

    def announce(self, *, spec: Any, dashboard: str | None, restored: bool) -> None:
        self._emit("resumed" if restored else "launched", sweep=spec.name, run_dir=str(self.run_dir),
                   configurations=self.total, replicates=self.replicates,
                   dashboard=f"http://{dashboard}" if dashboard and not dashboard.startswith("http") else dashboard,
                   optuna_dashboard=f"optuna-dashboard sqlite:///{self.run_dir / 'optuna.db'}")

    def close(self, outcome: Any) -> None:
        self._emit("finished" if outcome.finished else "stopped", counts=outcome.counts, best=outcome.best,
                   elapsed_s=round(time.time() - self.started),
                   resume=None if outcome.finished else f"bnsweep resume {self.run_dir}")

    def _emit(self, event: str, **fields: Any) -> None:
        if self.quiet:
            print(json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=str), flush=True)
            return
        stamp = time.strftime("%H:%M:%S")
        if event == "status":
            eta = fields["eta_s"]
            best = "-" if fields["best"] is None else f"{fields['best']:.4f} ({fields['best_trial']})"
            eta_s = "-" if eta is None else (f"{eta // 60}m{eta % 60:02d}s")
            line = (f"[{stamp}] done {fields['done']}/{fields['total']}  running {fields['running']}  "
                    f"pruned {fields['pruned']}  failed {fields['failed']}  best {self.metric} {best}  ETA {eta_s}")
        elif event in ("launched", "resumed"):
            line = (f"[{stamp}] {event} sweep {fields['sweep']!r}: {fields['configurations']} configurations × "
                    f"{fields['replicates']} seeds → {fields['run_dir']}")
            if fields.get("dashboard"):
                line += f"\n  Ray dashboard:    {fields['dashboard']}"
            line += f"\n  Optuna dashboard: {fields['optuna_dashboard']}"
        elif event in ("finished", "stopped"):
            line = f"[{stamp}] {event}: {fields['counts']}  best: {fields['best']}  ({fields['elapsed_s']} s)"
            if fields.get("resume"):
                line += f"\n  continue with: {fields['resume']}"
        else:
            rest = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()
                             if v is not None)
            line = f"[{stamp}] {event:9s} {rest}"
        print(line, file=sys.stderr if event == "warning" else sys.stdout, flush=True)


def _short(config: dict[str, Any]) -> str:
    """The searched part of a trial config, for one line of output."""
    keys = [k for k in config if k != "resolved"]
    return ", ".join(f"{k}={config[k]}" for k in keys)[:160]
