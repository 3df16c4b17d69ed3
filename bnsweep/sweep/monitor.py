"""Live progress of a sweep (a Ray Tune callback on the driver) and all record keeping: the driver is
the only writer of the run directory.

Three displays (``display``): on a terminal, ``live``: one line per event (trial started/ended/retried)
above a live table of the running trials (configuration, epoch k/N, val accuracy, images/s), a bar over
the sweep's epochs with an ETA from measured epoch times, the counts and the best so far (never a failed
or lost trial) (sweep/live.py); off a terminal (a pipe, a log file, ``--plain``), ``plain``: the same event
lines and a status line after each trial's end and at most once a minute, never twice the same;
``quiet=True`` (``json``): JSON lines (for scripts), a status line at most every 10 s. A live view that
fails to draw is stopped (the terminal restored) and plain lines follow.

Every checkpoint a trial reports (into the run's storage, from wherever it runs) is read at once and its
replicates' records and progress copied into the run directory (sweep/collect.py). When a trial ends
without a record for every replicate, the missing ones are recorded from its last checkpoint: ``pruned``
(stopped by ASHA while running), ``failed`` (Ray gave up: its error is the reason), or ``lost`` when
neither a record nor a checkpoint of the replicate can be found (never an invented result). The results
table is rewritten (at most every few seconds; always at the end), so a crash loses at most the epochs
in flight.

Crash safety: Ray Tune snapshots its experiment state (which trials exist, the searcher's state) only
every 10 s or more. A trial that started after the last snapshot would be unknown to ``resume``: its
configuration sampled again under a new id, its records orphaned. So when a trial starts, the monitor
makes Ray write a snapshot at once (before the trial trains), and again after every checkpoint (so a
restored trial resumes from its newest checkpoint, not one up to 10 s older); for a local run directory
it keeps a copy, written atomically, in ``ray/.bnsweep-backup`` for ``resume`` to fall back on should a
kill tear Ray's own (non-atomic) copy. (On an object store every object is written whole.)
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from ray.tune import Callback

from bnsweep.base import interrupts
from bnsweep.store.rundir import RunDir
from bnsweep.sweep import ray_compat
from bnsweep.sweep.live import (
    LiveSnapshot,
    LiveView,
    SweepProgress,
    TrialRow,
    format_duration,
    is_terminal,
    render,
    short_config,
)
from bnsweep.sweep.recovery import BACKUP_DIR

TABLE_INTERVAL_S = 5.0  # rewrite the results table at most this often while trials end (always at the end)
# after a checkpoint, snapshot Ray's experiment state unless one was taken this recently (a trial start's,
# another checkpoint's) and it knows the trial's previous checkpoint: a restore then resumes from the newest
# checkpoint or the one before (kept: CheckpointConfig(num_to_keep=3))
SNAPSHOT_MIN_INTERVAL_S = 2.0
PLAIN_STATUS_INTERVAL_S = 60.0  # off a terminal: a status line at most this often (and after each trial's end)
JSON_STATUS_INTERVAL_S = 10.0  # --quiet: a status event at most this often while results come
LIVE_REFRESH_S = 0.5  # the live view is redrawn at most this often (and on every result)


class SweepMonitor(Callback):
    def __init__(self, *, run_dir: Path | RunDir, total: int, replicates: int, metric: str, mode: str, quiet: bool,
                 seed_base: int, storage_url: str | None = None, snapshot_after_checkpoint: bool = True,
                 plain: bool = False) -> None:
        self.rd = RunDir.of(run_dir)
        self.run_dir = self.rd.local  # the driver's copy (the run directory itself when it is local)
        self.total, self.replicates = total, replicates
        self.storage_url = storage_url
        self.snapshot_after_checkpoint = snapshot_after_checkpoint
        self.manifests: dict[str, dict[int, str]] = {}  # trial id -> {seed: ended|running} of its last checkpoint
        self.snapshot_seconds: list[float] = []  # measured cost of the forced snapshots after checkpoints
        self._last_snapshot = -math.inf
        self._checkpoints_since_snapshot: dict[str, int] = {}  # trial id -> checkpoints registered since
        self.storage_seconds: dict[str, float] = {"collect": 0.0, "tables": 0.0, "study_copy": 0.0,
                                                  "trial_reports": 0.0}
        self.metric, self.mode, self.quiet, self.seed_base = metric, mode, quiet, seed_base
        self.started = time.time()
        self.ended: dict[str, str] = {}  # trial id -> completed | pruned | failed
        self.running: set[str] = set()
        self.best_value: float | None = None
        self.best_trial: str | None = None
        self._trial_best: dict[str, float] = {}  # trial id -> its best reported metric (failed/lost: dropped)
        self.display: Literal["json", "plain", "live"] = "json" if quiet else \
            "live" if not plain and is_terminal() else "plain"
        self.progress = SweepProgress(total=total, replicates=replicates)
        self._rows: dict[str, TrialRow] = {}  # the running trials, as the live view shows them
        self._view: LiveView | None = None
        self._last_status_text: str | None = None
        self._title = ""
        self.finished_flag = False
        self._last_trials_ended = False
        self._last_status = 0.0
        self._durations: list[float] = []
        self._trial_start: dict[str, float] = {}
        self._controller: Any = None  # Ray Tune's TuneController, found on the first trial start
        self._warned: set[str] = set()
        self._last_table = 0.0
        self._table_interval = TABLE_INTERVAL_S
        self._table_pending = False
        self._restored_checked = False

    def __getstate__(self) -> dict[str, Any]:  # the Tuner pickles its callbacks: not Ray's controller
        return {**self.__dict__, "_controller": None, "_view": None}  # (nor the terminal's live view)

    # ---------------------------------------------------------------- Ray Tune hooks
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._publish_study()  # (a URI) the study's copy first: every trial a snapshot names is in it
        self._snapshot()  # before the trial trains: resume must know every trial that wrote anything
        self.running.add(trial.trial_id)
        now = self._trial_start[trial.trial_id] = time.time()
        with self._display_guard():
            epochs = _planned_epochs(trial.config)
            self.progress.trial_started(trial.trial_id, epochs=epochs, now=now)
            self._rows[trial.trial_id] = TrialRow(trial_id=trial.trial_id, config=short_config(trial.config),
                                                  epochs=epochs, epoch=self.progress.trials[trial.trial_id].epoch)
        self._emit("started", trial=trial.trial_id, config=_short(trial.config))
        self._refresh(force=True)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        self._update_best(trial.trial_id, result.get(self.metric))
        if result.get("resumed_at_epoch"):
            self._emit("restored", trial=trial.trial_id, from_epoch=result["resumed_at_epoch"],
                       node=result.get("hostname") or result.get("node_ip"))
        with self._display_guard():
            self._record_epoch(trial, result)
        if self.display == "json" and time.time() - self._last_status > JSON_STATUS_INTERVAL_S:
            self._status(trials)
        self._refresh(force=True)

    def on_checkpoint(self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any) -> None:
        self._collect(trial, checkpoint)

    def on_trial_save(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        # the checkpoint is registered now: snapshot, so a restore after a crash resumes from it
        # Ray keeps the newest 3 checkpoints of a trial (driver.py) and deletes the oldest as a new one is
        # registered: so that the state never names only deleted ones, it is snapshotted after a trial's
        # second checkpoint since the last snapshot whatever the interval (it then lags by at most one)
        since = self._checkpoints_since_snapshot.get(trial.trial_id, 0) + 1
        self._checkpoints_since_snapshot[trial.trial_id] = since
        if self.snapshot_after_checkpoint and (since >= 2 or time.monotonic() - self._last_snapshot
                                               >= SNAPSHOT_MIN_INTERVAL_S):
            t0 = time.perf_counter()
            self._snapshot()
            self.snapshot_seconds.append(time.perf_counter() - t0)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._emit("retrying", trial=trial.trial_id, reason=_error_reason(trial, retrying=True))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._collect(trial, self._last_checkpoint(trial))
        self._close_terminated(trial)
        self._ended(trial, self._recorded_status(trial, "completed"), trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._collect(trial, trial.checkpoint)
        self._close(trial, "failed", _error_reason(trial))
        self._ended(trial, self._recorded_status(trial, "failed"), trials)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if self._table_pending and time.time() - self._last_table >= self._table_interval:
            self._write_table()
        if self.display == "plain" and time.time() - max(self._last_status, self.started) >= PLAIN_STATUS_INTERVAL_S:
            self._status(trials)
        self._refresh()

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        interrupts.redeliver_if_pending()  # a Ctrl-C the garbage collector swallowed: Tune stops gracefully
        if self._restored_checked:
            return
        self._restored_checked = True
        # Trials restored as ended (resume): one that ended while no monitor listened (the driver was
        # killed between Ray's record of the end and ours) gets its missing records now.
        for t in trials:
            if t.status in ("TERMINATED", "ERROR"):
                self._collect(t, self._last_checkpoint(t))
                if t.status == "TERMINATED":
                    self._close_terminated(t)
                else:
                    self._close(t, "failed", _error_reason(t))
                self.ended[t.trial_id] = self._recorded_status(t, "completed" if t.status == "TERMINATED" else "failed")
                with self._display_guard():
                    self.progress.trial_ended(t.trial_id, epoch=_int((t.last_result or {}).get("epoch")))
                if self.ended[t.trial_id] in ("failed", "lost"):
                    self._drop_from_best(t.trial_id)
                else:
                    self._update_best(t.trial_id, (t.last_result or {}).get(self.metric))
        self._refresh(force=True)

    def none_unfinished(self) -> bool:
        """Every trial Ray knew of at the end was seen ending (nothing left running or pending)."""
        return self._last_trials_ended

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._last_trials_ended = all(t.trial_id in self.ended for t in trials)
        # Ray marks the trials it stops on the way out (Ctrl-C) TERMINATED too: only trials seen ending
        # (or restored as ended) count as ended.
        self.finished_flag = bool(trials) and len(trials) >= self.total \
            and all(t.trial_id in self.ended for t in trials)
        if self._table_pending:
            self._write_table()
        self.stop_display()  # the live view's last frame stays; what follows prints plain

    # ---------------------------------------------------------------- the display
    def _record_epoch(self, trial: Any, result: dict[str, Any]) -> None:
        epoch = _int(result.get("epoch"))
        if epoch is None:
            return
        self.progress.epoch_reported(trial.trial_id, epoch=epoch, now=time.time(),
                                     resumed_at=_int(result.get("resumed_at_epoch")))
        row = self._rows.get(trial.trial_id)
        if row is not None:
            row.epoch = self.progress.trials[trial.trial_id].epoch
            row.epochs = self.progress.trials[trial.trial_id].epochs
            row.val_accuracy = _float(result.get("val_accuracy"))
            row.images_per_sec = _float(result.get("images_per_sec"))

    @contextlib.contextmanager
    def _display_guard(self) -> Iterator[None]:
        """The display's bookkeeping never stops the sweep (an error: one warning, the rest carries on)."""
        try:
            yield
        except Exception as e:
            self._warn_once("display", f"the progress display's bookkeeping failed ({type(e).__name__}: {e}); "
                                       "its epochs and ETA may be off")

    def _frame(self) -> Any:
        now = time.time()
        p = self.progress
        rows = [self._rows[t] for t in sorted(self._rows, key=lambda t: self._trial_start.get(t, 0.0))]
        return render(LiveSnapshot(rows=rows, done=p.done, planned=p.planned, skipped=p.skipped, eta_s=p.eta(now=now),
                                   counts=self._counts_text(), best=f"best {self.metric}: {self._best_text()}",
                                   title=self._title))

    def _refresh(self, *, force: bool = False) -> None:
        """Redraw the live view (at most every LIVE_REFRESH_S unless ``force``); never raises: a view that
        fails is stopped and plain lines follow."""
        view = self._view
        if self.display != "live" or view is None:
            return
        view.refresh(force=force)
        if view.failed:
            self._fall_back(view)

    def _fall_back(self, view: LiveView) -> None:
        self._view = None
        self.display = "plain"
        self._emit("warning", message=f"the live display failed ({view.failed}); plain lines from here on")

    def start_display(self) -> None:
        """On a terminal: start the live view (after the launch lines)."""
        if self.display != "live" or self._view is not None:
            return
        self._view = LiveView(frame=self._frame, min_interval_s=LIVE_REFRESH_S)
        if not self._view.start():
            self._fall_back(self._view)

    def stop_display(self) -> None:
        """Stop the live view (idempotent; the terminal restored, its last frame kept); plain lines after."""
        view, self._view = self._view, None
        if view is not None:
            view.stop()
        if self.display == "live":
            self.display = "plain"

    def _counts_text(self) -> str:
        c = self.counts()
        done = len(self.ended)
        text = f"done {done}/{self.total}  running {c['running']}  pruned {c['pruned']}  failed {c['failed']}"
        for extra in ("lost", "diverged"):
            if c.get(extra):
                text += f"  {extra} {c[extra]}"
        return text

    def _best_text(self) -> str:
        return "-" if self.best_value is None else f"{self.best_value:.4f} ({self.best_trial})"

    # ---------------------------------------------------------------- helpers
    def _collect(self, trial: Any, checkpoint: Any) -> None:
        """Copy a trial's checkpoint (in the run's storage) into the run directory (never raises)."""
        if checkpoint is None:
            return
        from bnsweep.sweep.collect import collect_checkpoint

        t0 = time.perf_counter()
        try:
            states = collect_checkpoint(self.rd, trial.trial_id, checkpoint)
        except Exception as e:  # record keeping must never kill the sweep
            self._emit("warning", message=f"could not read trial {trial.trial_id}'s checkpoint: {e}")
            return
        finally:
            self.storage_seconds["collect"] += time.perf_counter() - t0
        if states:
            self.manifests[trial.trial_id] = states
            self._table_pending = True

    def _last_checkpoint(self, trial: Any) -> Any:
        """The trial's newest checkpoint in the run's storage (``Trial.checkpoint`` may still name the one
        before: records closed from it would be stale); ``Trial.checkpoint`` if the storage cannot be listed."""
        try:
            return ray_compat.newest_checkpoint(trial) or trial.checkpoint
        except Exception:
            return trial.checkpoint

    def _seeds(self) -> list[int]:
        return [self.seed_base + i for i in range(self.replicates)]

    def _close_terminated(self, trial: Any) -> None:
        """A trial Ray ended normally: replicates its last checkpoint shows running were stopped by the
        scheduler (``pruned``); any other replicate without a record is ``lost``."""
        from bnsweep.sweep.recovery import mark_lost

        states = self.manifests.get(trial.trial_id, {})
        running = [s for s in self._seeds() if states.get(s) == "running"]
        if running:
            self._close(trial, "pruned", _pruned_reason(trial), seeds=running)
        for seed in self._seeds():
            if seed not in running and not self.rd.replicate(trial.trial_id, seed).result.exists():
                where = ("its last checkpoint lists it as ended but holds no record" if seed in states
                         else "no checkpoint of it reached the run's storage")
                try:
                    mark_lost(self.rd, trial.trial_id, seed, f"the trial ended, but {where}")
                except Exception as e:
                    self._emit("warning", message=f"could not record trial {trial.trial_id}: {e}")
                self._emit("lost", trial=trial.trial_id, seed=seed, reason=where)

    def _close(self, trial: Any, status: str, reason: str, seeds: list[int] | None = None) -> int:
        from bnsweep.sweep.recovery import close_unfinished_replicates

        resolved = trial.config.get("resolved")
        if resolved is None:
            return 0
        try:
            return close_unfinished_replicates(self.rd, trial.trial_id, resolved, seeds=seeds or self._seeds(),
                                               status=status, reason=reason)
        except Exception as e:  # record keeping must never kill the sweep
            self._emit("warning", message=f"could not record trial {trial.trial_id}: {e}")
            return 0

    def _recorded_status(self, trial: Any, default: str) -> str:
        """The trial's status as its replicates' records say (failed > lost > diverged > pruned > completed)."""
        statuses = set()
        for seed in self._seeds():
            files = self.rd.replicate(trial.trial_id, seed)
            if files.lost.exists() and not files.result.exists():
                statuses.add("lost")
                continue
            try:
                statuses.add(json.loads(files.result.read_text()).get("status"))
            except (OSError, ValueError, AttributeError):
                continue
        for s in ("failed", "lost", "diverged", "pruned", "completed"):
            if s in statuses:
                return s
        return default

    def _ended(self, trial: Any, status: str, trials: list[Any]) -> None:
        self.running.discard(trial.trial_id)
        with contextlib.suppress(TypeError, ValueError):
            self.storage_seconds["trial_reports"] += float((trial.last_result or {}).get("report_seconds") or 0)
        self.ended[trial.trial_id] = status
        if trial.trial_id in self._trial_start:
            self._durations.append(time.time() - self._trial_start.pop(trial.trial_id))
        last = trial.last_result or {}
        with self._display_guard():
            self.progress.trial_ended(trial.trial_id, now=time.time(), epoch=_int(last.get("epoch")))
        self._rows.pop(trial.trial_id, None)
        if status in ("failed", "lost"):  # best so far is never a trial that failed
            self._drop_from_best(trial.trial_id)
        else:
            self._update_best(trial.trial_id, last.get(self.metric))
        self._table_pending = True
        if time.time() - self._last_table >= self._table_interval:
            self._write_table()
        self._publish_study()
        self._emit(status, trial=trial.trial_id, epochs=last.get("epoch"), **{self.metric: last.get(self.metric)})
        self._status(trials)
        self._refresh(force=True)

    def _write_table(self) -> None:
        """Rewrite the results table; spaced so that writing takes at most ~10% of the driver's time."""
        from bnsweep.store.table import write_results_table

        t0 = time.time()
        try:
            write_results_table(self.run_dir)
            self.rd.push(self.rd.table_files())  # an object store: after the records, each table one object
            self.storage_seconds["tables"] += time.time() - t0
        except Exception as e:
            self._emit("warning", message=f"could not write the results table: {e}")
        self._last_table = time.time()
        self._table_pending = False
        self._table_interval = max(TABLE_INTERVAL_S, 10 * (self._last_table - t0))

    def _publish_study(self) -> None:
        """A URI run directory: a consistent copy of the Optuna SQLite study (the sqlite3 backup API) goes
        to the store after each finished trial, so ``resume URI`` on a fresh machine continues it."""
        if not self.rd.is_remote or not self.storage_url:
            return
        from bnsweep.sweep.recovery import publish_optuna_db

        t0 = time.perf_counter()
        try:
            publish_optuna_db(self.rd, self.storage_url)
            self.storage_seconds["study_copy"] += time.perf_counter() - t0
        except Exception as e:
            self._warn_once("optuna-copy", f"could not copy the Optuna study to {self.rd.uri}: {e}")

    # ---------------------------------------------------------------- Ray's experiment snapshots
    def _snapshot(self) -> None:
        """Make Ray Tune write its experiment state now (and wait for it), then back it up."""
        c = self._controller or ray_compat.tune_controller_from_stack()
        if c is None:
            self._warn_once("snapshot", "cannot reach Ray Tune's controller to snapshot the experiment state; "
                                        "a kill -9 in the next seconds may make resume sample a trial again")
            return
        self._controller = c
        try:
            ray_compat.snapshot_experiment(c)
            self._last_snapshot = time.monotonic()
            self._checkpoints_since_snapshot.clear()
            if not self.rd.is_remote:
                staging, state_name = ray_compat.experiment_staging(c)
                self._backup(Path(staging), state_name)
        except Exception as e:  # a snapshot that fails must not stop the sweep
            self._warn_once("snapshot-failed", f"could not snapshot Ray's experiment state: {e}")

    def _backup(self, staging: Path, state_name: str) -> None:
        """Copy Ray's just-written state (its driver staging directory) into ray/.bnsweep-backup,
        each file written then renamed."""
        from bnsweep.base.atomic import atomic_write_bytes, pickle_complete

        backup = self.rd.ray_dir / BACKUP_DIR
        session = state_name.removeprefix("experiment_state-").removesuffix(".json")
        names = [state_name] + [p.name for p in staging.glob(f"*{session}*") if p.name != state_name]
        for name in names:  # the experiment state last: it names the session the others belong to
            src = staging / name
            if src.is_file() and name.endswith((".json", ".pkl")):
                atomic_write_bytes(backup / name, src.read_bytes())
        for old in backup.glob("*"):
            if session not in old.name and not old.name.startswith(".") and old.name != "tuner.pkl":
                old.unlink(missing_ok=True)
        tuner = self.rd.ray_dir / "tuner.pkl"  # written once, before any trial
        if not (backup / "tuner.pkl").exists() and pickle_complete(tuner):
            atomic_write_bytes(backup / "tuner.pkl", tuner.read_bytes())

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._emit("warning", message=message)

    def _update_best(self, trial_id: str, value: Any) -> None:
        if not isinstance(value, (int, float)) or value != value or self.ended.get(trial_id) in ("failed", "lost"):
            return
        old = self._trial_best.get(trial_id)
        if old is None or (value > old if self.mode == "max" else value < old):
            self._trial_best[trial_id] = float(value)
        better = self.best_value is None or (value > self.best_value if self.mode == "max" else value < self.best_value)
        if better:
            self.best_value, self.best_trial = float(value), trial_id

    def _drop_from_best(self, trial_id: str) -> None:
        """A trial that failed (or was lost) leaves the best so far, whatever it reported before."""
        self._trial_best.pop(trial_id, None)
        if self.best_trial != trial_id:
            return
        pick = max if self.mode == "max" else min
        self.best_trial = pick(self._trial_best, key=self._trial_best.__getitem__) if self._trial_best else None
        self.best_value = self._trial_best[self.best_trial] if self.best_trial is not None else None

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

    def eta_seconds(self, trials: list[Any] | None = None) -> float | None:
        """Seconds until the sweep ends, from measured epoch times (sweep/live.py); None before the first."""
        return self.progress.eta(now=time.time())

    def _status(self, trials: list[Any]) -> None:
        self._last_status = time.time()
        c = self.counts()
        done = sum(t.status in ("TERMINATED", "ERROR") or t.trial_id in self.ended for t in trials)
        eta = None
        with self._display_guard():
            eta = self.eta_seconds(trials)
        fields: dict[str, Any] = dict(done=done, total=self.total, running=c["running"], pruned=c["pruned"],
                                      failed=c["failed"], best=self.best_value, best_trial=self.best_trial,
                                      eta_s=None if eta is None else round(eta))
        if self.display == "live":
            return  # the live view shows it
        if self.display == "plain":
            text = self._status_line(**fields, lost=c.get("lost", 0))
            if text == self._last_status_text:
                return  # never the same line twice
            self._last_status_text = text
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)
            return
        self._emit("status", **fields)

    def _status_line(self, *, done: int, total: int, running: int, pruned: int, failed: int, lost: int,
                     best: float | None, best_trial: str | None, eta_s: int | None) -> str:
        best_s = "-" if best is None else f"{best:.4f} ({best_trial})"
        lost_s = f"  lost {lost}" if lost else ""
        epochs = ""
        with self._display_guard():
            epochs = f"  epochs {self.progress.done}/{self.progress.planned}"
        return (f"done {done}/{total}  running {running}  pruned {pruned}  failed {failed}{lost_s}  "
                f"best {self.metric} {best_s}{epochs}  ETA {format_duration(eta_s)}")

    def announce(self, *, spec: Any, dashboard: str | None, restored: bool,
                 cpus_per_trial: float | None = None, concurrent: int | None = None) -> None:
        with contextlib.suppress(Exception):  # the planned epochs of a configuration not yet started
            self.progress.epochs_hint = _int(spec.base_trial_config().get("epochs"))
        self.progress.slots = concurrent
        self._title = f"{spec.name} → {self.rd.uri}"
        self._emit("resumed" if restored else "launched", sweep=spec.name, run_dir=self.rd.uri,
                   configurations=self.total, replicates=self.replicates, concurrent=concurrent,
                   cpus_per_trial=cpus_per_trial, packing_from_spec=[spec.max_concurrent is not None,
                                                                     spec.resources.cpu is not None],
                   dashboard=f"http://{dashboard}" if dashboard and not dashboard.startswith("http") else dashboard,
                   optuna_dashboard=f"optuna-dashboard sqlite:///{self.rd.optuna_db}")
        self.start_display()

    def close(self, outcome: Any) -> None:
        self.stop_display()
        event = "stopped" if not outcome.finished else "finished" if outcome.complete else "incomplete"
        self._emit(event, counts=outcome.counts, best=outcome.best, elapsed_s=round(time.time() - self.started),
                   resume=None if outcome.finished else f"bnsweep resume {self.rd.uri}",
                   problem=_problem(outcome, self.rd.uri),
                   snapshots={"count": len(self.snapshot_seconds), "seconds": round(sum(self.snapshot_seconds), 3)},
                   storage_s={k: round(v, 3) for k, v in self.storage_seconds.items()})

    def _emit(self, event: str, **fields: Any) -> None:
        if self.display == "json":
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
            if fields.get("cpus_per_trial") is not None and fields.get("concurrent") is not None:
                line += (f"\n  packing:          {fields['concurrent']} trial(s) at once × "
                         f"{fields['cpus_per_trial']:g} CPU(s) each (= TensorFlow threads)")
                if not all(fields["packing_from_spec"]):
                    line += "; chosen for this machine (set max_concurrent / resources.cpu to fix it)"
            if fields.get("dashboard"):
                line += f"\n  Ray dashboard:    {fields['dashboard']}"
            line += f"\n  Optuna dashboard: {fields['optuna_dashboard']}"
        elif event in ("finished", "stopped", "incomplete"):
            line = f"[{stamp}] {event}: {fields['counts']}  best: {fields['best']}  ({fields['elapsed_s']} s)"
            if fields.get("problem"):
                line += f"\n  {fields['problem']}"
            if fields.get("resume"):
                line += f"\n  continue with: {fields['resume']}"
        else:
            rest = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()
                             if v is not None)
            line = f"[{stamp}] {event:9s} {rest}"
        view = self._view
        if view is not None:
            if view.print(line, style="yellow" if event == "warning" else None):
                return
            self._fall_back(view)
        print(line, file=sys.stderr if event == "warning" else sys.stdout, flush=True)


def _pruned_reason(trial: Any) -> str:
    epoch = (trial.last_result or {}).get("epoch")
    return "stopped early by the scheduler" + (f" after epoch {epoch}" if epoch else "")


def _error_reason(trial: Any, retrying: bool = False) -> str:
    """Why Ray gave up on (or retries) a trial: its error file's last error (the process or node died,
    the storage unreachable...); an error bnsweep raised for the record is taken as it is."""
    text = ""
    try:
        path = trial.error_file  # Ray's error.txt of the trial (every failure appended)
    except Exception:
        path = None
    if path:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    from bnsweep.sweep.trainable import REASON_MARK

    marked = next((ln.split(REASON_MARK, 1)[1] for ln in reversed(lines) if REASON_MARK in ln), None)
    failures = getattr(getattr(trial, "run_metadata", None), "num_failures", None)
    if marked:
        what = f"the trial failed {failures} time(s)" if failures else "the trial failed"
        return f"{what}: {marked[:400]}"
    died = next((ln for ln in reversed(lines) if "died" in ln.lower() or "killed" in ln.lower()), None)
    detail = died or next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "")
    detail = detail.split(" Some common causes")[0]  # Ray's generic advice follows
    if retrying:
        return detail[:300]
    what = f"the trial failed {failures} time(s), retries exhausted" if failures else "the trial failed"
    return f"{what}: {detail[:300]}" if detail else what


def _int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _planned_epochs(config: dict[str, Any]) -> int | None:
    resolved = config.get("resolved")
    return _int(resolved.get("epochs")) if isinstance(resolved, dict) else None


def _short(config: dict[str, Any]) -> str:
    """The searched part of a trial config, for one line of output."""
    keys = [k for k in config if k != "resolved"]
    return ", ".join(f"{k}={config[k]}" for k in keys)[:160]


def _problem(outcome: Any, uri: str) -> str | None:
    """What the closing event says went wrong: failed or lost work, or a sweep that stopped unfinished
    without an interrupt (Ray Tune's loop ended early: the CLI exits 3, not 130)."""
    if not outcome.finished:
        if outcome.interrupted:
            return None
        left = outcome.counts.get("total", 0) - sum(outcome.counts.get(k, 0) for k in
                                                    ("completed", "pruned", "diverged", "failed", "lost"))
        return (f"Ray Tune ended the sweep with {left} configuration(s) not ended, without an interrupt "
                f"(see `bnsweep status {uri}`)")
    if outcome.complete:
        return None
    return (f"{outcome.counts.get('failed', 0)} configuration(s) failed, {outcome.counts.get('lost', 0)} lost "
            f"(see `bnsweep status {uri}`)")
