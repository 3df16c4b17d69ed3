"""The Ray Tune trainable: one sampled configuration, its replicates (seeds) trained in lockstep.

A trial never writes the run directory (only the driver does), wherever it runs. Each epoch every
replicate trains one epoch, then the trial reports to Ray Tune the mean of their metrics (the searcher
and ASHA see the mean over seeds and prune a configuration as a whole), each replicate's metrics
(nested under ``"replicates"``), and a checkpoint: a folder Ray copies into the run's storage::

    bnsweep.json                          {"epoch", "replicates": {seed: "running" | "ended"}, "code_failures"}
    seed-<s>/state.json, variables.npz    a running replicate (weights, optimizer state: TrialRun._save)
    seed-<s>/result.json, final_weights.npz, started.json, wandb/offline-run-*/   an ended replicate

The driver copies ended replicates' records into ``trials/<trial_id>/seed-<s>/`` as soon as Ray has
stored the checkpoint (sweep/collect.py). A trial restarted anywhere (a retry, ``resume``) continues from
``tune.get_checkpoint()``; a replicate whose record the driver already holds (read, never written,
through the run directory's filesystem) is never re-trained.

Failures: an exception raised by the training itself (data, model, an epoch: ``MemoryError``
included) restarts that replicate in this worker from its last epoch checkpoint, ``retries`` times for
the trial; then the trial ends with its unfinished replicates recorded ``failed`` (reason, traceback,
history) in its last checkpoint, and its final result carries ``bnsweep_failed`` (Optuna: FAIL). What
stops the worker itself (its node or process died, the storage unreachable) is the environment's fault:
Ray retries it from the last stored checkpoint, ``ENVIRONMENT_RETRIES`` times, whatever ``retries`` says.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bnsweep.base.atomic import atomic_write_text
from bnsweep.base.meta import now_iso
from bnsweep.store.records import LOST_FILE, RESULT_FILE, START_FILE
from bnsweep.store.rundir import RunDir

# Reported for a replicate that diverged before any finite validation result.
DIVERGED_METRIC = {"val_accuracy": 0.0, "train_accuracy": 0.0, "val_loss": 1e3, "train_loss": 1e3}

MANIFEST = "bnsweep.json"  # in every checkpoint: which replicates run, which ended
ENVIRONMENT_RETRIES = 2  # Ray retries of a trial whose worker or node died (FailureConfig.max_failures)
FAILED_KEY = "bnsweep_failed"  # the final result of a trial whose code failed: the reason (searcher.FAILED_KEY)
REASON_MARK = "bnsweep-reason: "  # starts the message of an error raised for the driver to record as is

# Test-only fault injection (tests/test_reliability.py, tests/test_cluster.py); never set it otherwise. It
# names a JSON file: {"log": "events.jsonl",    # one line per replicate epoch: trial, seed, epoch, pid, lr
#  "faults": [{"lr": 0.05, "epoch": 2,         # before that epoch of the trials with that lr (lr omitted:
#              "sleep": 3.0,                   #   every trial; epoch omitted: every epoch): wait (time to
#              "raise": "MemoryError",         #   kill the worker), raise MemoryError or RuntimeError,
#              "marker": "PATH"}]}             #   first write this node's Ray id to PATH (once: skipped
#                                              #   while PATH exists)
TEST_FAULTS_ENV = "BNSWEEP_TEST_FAULTS"


class StorageUnreachable(RuntimeError):
    """The run directory cannot be read from the node a trial runs on (not a failure of the trial)."""


def replicate_seeds(meta: dict[str, Any]) -> list[int]:
    return [int(meta["seed_base"]) + i for i in range(int(meta["replicates"]))]


def trial_config_for(resolved: dict[str, Any], seed: int) -> dict[str, Any]:
    cfg = json.loads(json.dumps(resolved))  # a deep copy of plain data
    cfg["seed"] = seed
    return cfg


def train_configuration(config: dict[str, Any], *, meta: dict[str, Any], data: Any = None) -> None:
    """Ray Tune function trainable (``tune.with_parameters`` supplies ``meta`` and ``data``)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    rd = RunDir(meta["run_dir"])  # read-only here
    if not rd.exists_remote(RunDir.SWEEP_JSON):
        raise StorageUnreachable(
            f"{REASON_MARK}the run directory {rd.uri} is not visible from node {socket.gethostname()} "
            f"(no {RunDir.SWEEP_JSON} there): on a cluster without a shared filesystem use an object store "
            "(--run-dir s3://BUCKET/PREFIX) or a path every node mounts")
    work = Path(tempfile.mkdtemp(prefix=f"bnsweep-{trial_id}-"))
    try:
        _Trial(config, meta=meta, data=data, trial_id=trial_id, rd=rd, work=work).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Trial:
    """One attempt at a trial, in a worker-local scratch directory ``work`` (the checkpoint it reports)."""

    def __init__(self, config: dict[str, Any], *, meta: dict[str, Any], data: Any, trial_id: str, rd: RunDir,
                 work: Path) -> None:
        self.resolved = config["resolved"]
        self.meta, self.data, self.trial_id, self.rd = meta, data, trial_id, rd
        self.ckpt = work / "checkpoint"
        self.wandb_root = work / "wandb-runs"
        self.record_meta = {k: meta[k] for k in ("sweep", "spec_hash", "git_commit", "versions")}
        self.retries = int(meta.get("retries", 0))
        self.runs: dict[int, Any] = {}
        self.latest: dict[int, dict[str, float]] = {}
        self.ended: dict[int, str] = {}  # seed -> status, for replicates recorded in this checkpoint
        self.trackers: dict[int, Any] = {}
        self.group: Any = None  # the FusedTrialRun training self.runs' seeds as one model (replicates_layout)
        self.layout = "separate"  # what trains the replicates: separate | fused-separate | fused-grouped
        self.resumed_at = 0
        self.code_failures = 0
        self.failed_reason: str | None = None
        self.report_seconds = 0.0  # time in tune.report: the checkpoint's copy into the run's storage

    # ---------------------------------------------------------------- set-up
    def _restore(self) -> dict[str, Any]:
        from ray import tune

        self.ckpt.mkdir(parents=True, exist_ok=True)
        restored = tune.get_checkpoint()
        if restored is None:
            return {}
        restored.to_directory(str(self.ckpt))  # downloaded from the run's storage
        try:
            manifest = json.loads((self.ckpt / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        return manifest if isinstance(manifest, dict) else {}

    def _start_replicates(self) -> None:
        import keras

        from bnsweep.spec.tracking import TrackingConfig

        keras.backend.clear_session()  # a reused worker: free the previous trial's graphs and models
        manifest = self._restore()
        self.code_failures = int(manifest.get("code_failures", 0))
        self.resumed_at = int(manifest.get("epoch", 0))
        self.tracking = TrackingConfig.model_validate(self.meta.get("tracking", {}))
        todo: list[tuple[int, int]] = []
        for i, seed in enumerate(replicate_seeds(self.meta)):
            d = self.ckpt / f"seed-{seed}"
            held = self.rd.read_remote(self.rd.rel(self.rd.replicate(self.trial_id, seed).result))
            if held is not None:  # the driver holds its final record: never re-trained, not carried on
                shutil.rmtree(d, ignore_errors=True)
                self.latest[seed] = _final_metrics(json.loads(held))
                continue
            if (d / RESULT_FILE).exists():  # ended in the checkpoint restored: carried on until the driver has it
                rec = json.loads((d / RESULT_FILE).read_text())
                self.latest[seed] = _final_metrics(rec)
                self.ended[seed] = str(rec.get("status"))
                continue
            todo.append((i, seed))
        if not (len(todo) > 1 and self._start_fused(todo)):
            for i, seed in todo:
                self._start(i, seed)

    def _start_fused(self, todo: list[tuple[int, int]]) -> bool:
        """``replicates_layout`` fused (or auto on a GPU/TPU): the seeds still to train as one FusedTrialRun,
        each restored from its own epoch checkpoint (the format TrialRun writes, so a run may switch layouts on
        resume). False: train them as separate TrialRuns (asked for, or the fused run cannot be built)."""
        from bnsweep.engine.fused_replicates import resolve_replicates_layout, start_replicates

        try:
            choice, _ = resolve_replicates_layout(str(self.resolved.get("replicates_layout", "separate")))
        except ValueError:
            return False
        if choice != "fused" or self.resolved.get("strategy", "none") != "none":
            return False
        seeds = [seed for _, seed in todo]
        try:
            group = start_replicates(trial_config_for(self.resolved, seeds[0]), seeds, data=self.data,
                                     checkpoint_dirs=[self.ckpt / f"seed-{s}" for s in seeds],
                                     threads=self.meta.get("threads"), layout="fused")
        except Exception:  # e.g. a regime the grouped layout cannot hold: separate TrialRuns instead
            return False
        self.group, self.layout = group, group.layout_choice[0]
        for i, seed in todo:
            self._adopt(i, seed, group.replicas[seed])
        return True

    def _start(self, i: int, seed: int) -> None:
        """Build (or restore from its epoch checkpoint) replicate ``seed``; a failure is a code failure."""
        from bnsweep.engine.trial import TrialRun

        d = self.ckpt / f"seed-{seed}"
        try:
            run = TrialRun(trial_config_for(self.resolved, seed), data=self.data, checkpoint_dir=d,
                           threads=self.meta.get("threads"))
        except Exception as e:
            self._code_failure(i, seed, e)
            return
        self._adopt(i, seed, run)

    def _adopt(self, i: int, seed: int, run: Any) -> None:
        """Replicate ``seed`` trains as ``run`` (a TrialRun, or a FusedReplica of ``self.group``): its start
        record (once), its W&B run."""
        from bnsweep.store.records import write_trial_start
        from bnsweep.store.tracking import TrialTracker

        d = self.ckpt / f"seed-{seed}"
        run.replicate = i
        started = d / START_FILE
        if started.exists():
            run.started_at = json.loads(started.read_text()).get("started_at")  # type: ignore[attr-defined]
        else:
            run.started_at = now_iso()  # type: ignore[attr-defined]
            write_trial_start(d, trial_id=self.trial_id, seed=seed, replicate=i, config=run.config,
                              meta={**self.record_meta, "started_at": run.started_at})  # type: ignore[attr-defined]
        self.runs[seed] = run
        if seed not in self.trackers:
            self.trackers[seed] = TrialTracker.start_in_background(
                tracking=self.tracking, run_dir=self.wandb_root / f"seed-{seed}", sweep=self.meta["sweep"],
                trial_id=self.trial_id, seed=seed, group=_group(run.config), config=run.config.to_dict())
        if run.history:
            self.latest[seed] = _epoch_metrics(run.history[-1])

    # ---------------------------------------------------------------- failures of the training code
    def _group_failure(self, e: BaseException) -> None:
        """The fused run raised (not a divergence): one code failure; its replicates go on as separate
        TrialRuns from their last epoch checkpoints (the fused run wrote them in TrialRun's format)."""
        seeds = replicate_seeds(self.meta)
        running = [s for s in self.runs]
        self.group, self.layout = None, "separate"
        self.runs = {}
        self.code_failures += 1
        if self.code_failures <= self.retries:
            for s in running:
                self._start(seeds.index(s), s)
            return
        self.failed_reason = _reason(e)
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:]
        for j, s in enumerate(seeds):
            if s not in self.ended:
                self._record_failed(j, s, self.failed_reason, tb if s == running[0] else "")

    def _code_failure(self, i: int, seed: int, e: BaseException) -> None:
        self.runs.pop(seed, None)
        self.code_failures += 1
        reason = _reason(e)
        if self.code_failures <= self.retries:  # again from its last epoch checkpoint, in this worker
            self._start(i, seed)
            return
        self.failed_reason = reason
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:]
        for j, s in enumerate(replicate_seeds(self.meta)):  # every unfinished replicate of the trial fails
            if s not in self.ended:
                self._record_failed(j, s, reason, tb if s == seed else "")

    def _record_failed(self, i: int, seed: int, reason: str, tb: str) -> None:
        from bnsweep.store.records import write_trial_record

        d = self.ckpt / f"seed-{seed}"
        if self.rd.exists_remote(self.rd.rel(self.rd.replicate(self.trial_id, seed).result)):
            return  # the driver holds its record (it ended before)
        run = self.runs.pop(seed, None)
        history = list(run.history) if run is not None else _state_history(d)
        result = result_from_history(self.resolved, seed, status="failed", reason=reason, history=history)
        started_at = getattr(run, "started_at", None) or _started_at(d)
        write_trial_record(d, trial_id=self.trial_id, seed=seed, replicate=i, result=result, net=None,
                           meta={**self.record_meta, "started_at": started_at}, extra={"traceback": tb})
        (d / "variables.npz").unlink(missing_ok=True)
        tracker = self.trackers.pop(seed, None)
        if tracker is not None:
            tracker.finish({"reason": reason}, status="failed")
            self._keep_wandb_run(tracker, d)
        self.ended[seed] = "failed"
        self.latest.setdefault(seed, {**DIVERGED_METRIC})

    # ---------------------------------------------------------------- the loop
    def run(self) -> None:
        from bnsweep.engine.trial import Diverged

        self._start_replicates()
        reported = False
        while self.runs and self.failed_reason is None:
            if self.group is not None:
                self._fused_epoch()
                self._report()
                reported = True
                continue
            seeds = replicate_seeds(self.meta)
            for seed in list(self.runs):
                run = self.runs[seed]
                try:
                    _test_faults(run, trial_id=self.trial_id, seed=seed)
                    m = run.train_epoch()
                except Diverged as e:
                    self._end(seed, "diverged", str(e))
                    continue
                except Exception as e:  # MemoryError included; not KeyboardInterrupt/SystemExit
                    self._code_failure(seeds.index(seed), seed, e)
                    if self.failed_reason is not None:
                        break
                    continue
                self.latest[seed] = _epoch_metrics(m)
                self.trackers[seed].log_epoch(_epoch_metrics(m), epoch=m.epoch)
                if run.epoch >= run.config.epochs:
                    self._end(seed, "completed")
            self._report()
            reported = True
        if self.failed_reason is not None or not reported:
            # failed, or every replicate had ended before this attempt: the final report carries the records
            self._report()

    def _fused_epoch(self) -> None:
        """One epoch of every replicate in the fused run: each gets its own metrics, W&B epoch and, at the last
        epoch or on divergence, its own record, exactly as a TrialRun's."""
        from bnsweep.engine.trial import Diverged

        try:
            for seed, run in self.runs.items():
                _test_faults(run, trial_id=self.trial_id, seed=seed)
            outcomes = self.group.train_epoch()
        except Exception as e:  # MemoryError included; not KeyboardInterrupt/SystemExit
            self._group_failure(e)
            return
        for seed, m in outcomes.items():
            if seed not in self.runs:
                continue
            if isinstance(m, Diverged):
                self._end(seed, "diverged", str(m))
                continue
            self.latest[seed] = _epoch_metrics(m)
            self.trackers[seed].log_epoch(_epoch_metrics(m), epoch=m.epoch)
            if self.runs[seed].epoch >= self.runs[seed].config.epochs:
                self._end(seed, "completed")

    def _end(self, seed: int, status: str, reason: str = "") -> None:
        from bnsweep.store.records import write_trial_record

        run = self.runs.pop(seed)
        result = run.finish(status, reason)  # type: ignore[arg-type]
        d = self.ckpt / f"seed-{seed}"
        write_trial_record(d, trial_id=self.trial_id, seed=seed, replicate=run.replicate, result=result,
                           net=run.net, meta={**self.record_meta, "started_at": run.started_at},
                           extra={"trained_as": self.layout})  # separate | fused-separate | fused-grouped
        (d / "variables.npz").unlink(missing_ok=True)
        tracker = self.trackers.pop(seed)
        tracker.finish(_summary(result), status=status)
        self._keep_wandb_run(tracker, d)
        self.ended[seed] = status
        self.latest[seed] = _final_metrics(result.as_dict())

    def _keep_wandb_run(self, tracker: Any, d: Path) -> None:
        """The replicate's finished W&B offline run goes into the checkpoint (``seed-<s>/wandb/<run>``)."""
        src = getattr(tracker, "sync_dir", None)
        if src is None or not Path(src).is_dir():
            return
        dest = d / "wandb" / Path(src).name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest, symlinks=False, ignore_dangling_symlinks=True,
                        ignore=shutil.ignore_patterns("*.lock", "*.sock"))

    def _report(self) -> None:
        from ray import tune

        states = {str(s): "ended" for s in self.ended}
        states.update({str(s): "running" for s in self.runs})
        epochs = [r.epoch for r in self.runs.values()]
        epoch = max(epochs) if epochs else _epochs(self.resolved)
        if self.failed_reason is not None:
            epoch = max([len(_state_history(self.ckpt / f"seed-{s}")) for s in self.ended] or [0])
        atomic_write_text(self.ckpt / MANIFEST, json.dumps({
            "trial_id": self.trial_id, "epoch": epoch, "replicates": states, "code_failures": self.code_failures,
            "node": socket.gethostname(), "at": now_iso()}))
        metrics = _mean_report(self.latest, epoch=epoch)
        metrics["replicates"] = {str(s): dict(v) for s, v in self.latest.items()}
        metrics["replicates_layout"] = self.layout
        if self.resumed_at:
            metrics["resumed_at_epoch"] = self.resumed_at
            self.resumed_at = 0  # said once per attempt
        if self.failed_reason is not None:
            metrics[FAILED_KEY] = self.failed_reason
        metrics["report_seconds"] = self.report_seconds  # (reports before this one: their checkpoints' uploads)
        t0 = time.perf_counter()
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(self.ckpt)))
        self.report_seconds += time.perf_counter() - t0


def result_from_history(resolved: dict[str, Any], seed: int, *, status: str, reason: str,
                        history: list[Any]) -> Any:
    """A replicate's final ``TrialResult`` made from its epoch history alone (a replicate that failed,
    or was stopped by the scheduler): what it measured, nothing invented (no test accuracy)."""
    from bnsweep.engine.regimes import account
    from bnsweep.engine.trial import EpochMetrics, TrialResult
    from bnsweep.spec.config import TrialConfig, config_hash

    cfg = TrialConfig.from_dict(trial_config_for(resolved, seed))
    hist = [h if isinstance(h, EpochMetrics) else EpochMetrics(**h) for h in history]
    best = max(hist, key=lambda m: m.val_accuracy, default=None)
    return TrialResult(
        config=cfg.to_dict(), config_hash=config_hash(cfg), status=status, reason=reason,  # type: ignore[arg-type]
        epochs_run=len(hist),
        final_val_accuracy=hist[-1].val_accuracy if hist else None,
        best_val_accuracy=best.val_accuracy if best else None, best_epoch=best.epoch if best else None,
        final_val_loss=hist[-1].val_loss if hist else None,
        accounting=account(cfg.model, cfg.regime).as_dict(),
        wall_seconds=sum(m.seconds for m in hist),
        images_per_sec=(sum(m.images_per_sec for m in hist) / len(hist)) if hist else None,
        history=hist)


def _state_history(d: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((d / "state.json").read_text())["history"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _started_at(d: Path) -> str | None:
    try:
        return json.loads((d / START_FILE).read_text()).get("started_at")
    except (OSError, ValueError, AttributeError):
        return None


def _reason(e: BaseException) -> str:
    reason = f"{type(e).__name__}: {e}"[:500]
    if "ResourceExhausted" in reason or isinstance(e, MemoryError) or "out of memory" in reason.lower():
        reason = "out of memory: " + reason
    return reason


def _test_faults(run: Any, *, trial_id: str, seed: int) -> None:
    """Test-only: log, delay or fail the next epoch as ``$BNSWEEP_TEST_FAULTS`` asks (see the top)."""
    path = os.environ.get(TEST_FAULTS_ENV)
    if not path:
        return
    import time

    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return
    epoch = run.epoch + 1
    if plan.get("log"):
        line = json.dumps({"trial_id": trial_id, "seed": seed, "epoch": epoch, "pid": os.getpid(),
                           "host": socket.gethostname(), "lr": run.config.lr, "time": time.time()})
        with open(plan["log"], "a") as f:
            f.write(line + "\n")
    for fault in plan.get("faults", []):
        if ("lr" in fault and fault["lr"] != run.config.lr) or int(fault.get("epoch", epoch)) != epoch:
            continue
        marker = fault.get("marker")
        if marker:
            if os.path.exists(marker):
                continue
            import ray

            with open(f"{marker}.{os.getpid()}.tmp", "w") as f:
                f.write(ray.get_runtime_context().get_node_id())
            os.replace(f"{marker}.{os.getpid()}.tmp", marker)
        if fault.get("sleep"):
            time.sleep(float(fault["sleep"]))
        if fault.get("raise"):
            kind = {"MemoryError": MemoryError, "RuntimeError": RuntimeError}[fault["raise"]]
            raise kind(f"injected by the test: {fault.get('message', 'fault')}")


def _epochs(resolved: dict[str, Any]) -> int:
    return int(resolved.get("epochs", 1))


def _group(cfg: Any) -> str:
    from bnsweep.spec.config import config_hash

    return config_hash(cfg, ignore=("seed",))


def _epoch_metrics(m: Any) -> dict[str, float]:
    return {"val_accuracy": m.val_accuracy, "val_loss": m.val_loss, "train_accuracy": m.train_accuracy,
            "train_loss": m.train_loss, "lr": m.lr, "images_per_sec": m.images_per_sec}


def _final_metrics(r: dict[str, Any]) -> dict[str, float]:
    hist = r.get("history") or []
    if r.get("status") in ("diverged", "failed") or not hist:
        last = {**DIVERGED_METRIC}
        finite = [h for h in hist if math.isfinite(h.get("val_accuracy", math.nan))]
        if finite:
            last.update(val_accuracy=finite[-1]["val_accuracy"], val_loss=finite[-1]["val_loss"])
        return last
    h = hist[-1]
    h = h if isinstance(h, dict) else h.__dict__
    return {k: h[k] for k in ("val_accuracy", "val_loss", "train_accuracy", "train_loss", "lr", "images_per_sec")}


def _mean_report(latest: dict[int, dict[str, float]], *, epoch: int) -> dict[str, Any]:
    out: dict[str, Any] = {"epoch": epoch, "replicates_reported": len(latest)}
    for key in ("val_accuracy", "val_loss", "train_accuracy", "train_loss", "images_per_sec"):
        vals = [v[key] for v in latest.values() if key in v and math.isfinite(v[key])]
        out[key] = sum(vals) / len(vals) if vals else DIVERGED_METRIC.get(key, 0.0)
    for seed, v in latest.items():
        out[f"val_accuracy_seed{seed}"] = v.get("val_accuracy")
    return out


def _summary(result: Any) -> dict[str, Any]:
    return {k: getattr(result, k) for k in ("final_val_accuracy", "best_val_accuracy", "test_accuracy",
                                            "test_loss", "epochs_run", "wall_seconds", "gamma_near_zero")}


__all__ = ["DIVERGED_METRIC", "ENVIRONMENT_RETRIES", "FAILED_KEY", "LOST_FILE", "MANIFEST", "TEST_FAULTS_ENV",
           "replicate_seeds", "train_configuration", "trial_config_for"]
