"""The Ray Tune trainable: one sampled configuration, its replicates (seeds) trained in lockstep.

Each epoch every replicate trains one epoch, then the mean of their metrics is reported to Tune (so
the searcher and ASHA see the mean over seeds, and prune a configuration as a whole). Each replicate
checkpoints into ``trials/<trial_id>/seed-<s>/checkpoint`` after every epoch and writes its
``result.json`` when it ends; a restarted trial (retry, ``resume``) continues from there and never
re-trains a finished replicate.
"""

from __future__ import annotations

import json
import math
import traceback
from pathlib import Path
from typing import Any

from bnsweep.base.atomic import atomic_write_text
from bnsweep.base.meta import now_iso
from bnsweep.store.rundir import seed_dir

# Reported for a replicate that diverged before any finite validation result.
DIVERGED_METRIC = {"val_accuracy": 0.0, "train_accuracy": 0.0, "val_loss": 1e3, "train_loss": 1e3}

# Test-only fault injection (tests/test_reliability.py); never set it otherwise. It names a JSON file:
# {"log": "events.jsonl",                     # one line per replicate epoch: trial, seed, epoch, pid, lr
#  "faults": [{"lr": 0.05, "epoch": 2,         # before that epoch of the trials with that lr (epoch
#              "sleep": 3.0,                   #   omitted: every epoch): wait (time to kill the worker),
#              "raise": "MemoryError"}]}       #   then raise MemoryError or RuntimeError
TEST_FAULTS_ENV = "BNSWEEP_TEST_FAULTS"


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
    run_dir = Path(meta["run_dir"])
    try:
        _train(config, meta=meta, data=data, trial_id=trial_id, run_dir=run_dir)
    except Exception as e:  # recorded for the results table; Ray retries or marks the trial failed
        # (MemoryError included; not KeyboardInterrupt/SystemExit: a Ctrl-C or a stop is no trial failure)
        for seed in replicate_seeds(meta):
            d = seed_dir(run_dir, trial_id, seed)
            if not (d / "result.json").exists():
                _write_failure(d, e)
        raise


def _train(config: dict[str, Any], *, meta: dict[str, Any], data: Any, trial_id: str, run_dir: Path) -> None:
    import keras
    from ray import tune

    from bnsweep.engine.trial import Diverged, TrialRun
    from bnsweep.store.records import save_trial_record, save_trial_start
    from bnsweep.store.tracking import TrackingConfig, TrialTracker

    keras.backend.clear_session()  # a reused worker: free the previous trial's graphs and models
    resolved = config["resolved"]
    record_meta = {k: meta[k] for k in ("sweep", "spec_hash", "git_commit", "versions")}
    tracking = TrackingConfig.model_validate(meta.get("tracking", {}))
    runs: dict[int, Any] = {}
    latest: dict[int, dict[str, float]] = {}
    trackers: dict[int, Any] = {}
    for i, seed in enumerate(replicate_seeds(meta)):
        d = seed_dir(run_dir, trial_id, seed)
        done = d / "result.json"
        if done.exists():  # finished before a crash/restart: keep it, never re-run
            r = json.loads(done.read_text())
            latest[seed] = _final_metrics(r)
            continue
        cfg = trial_config_for(resolved, seed)
        run = TrialRun(cfg, data=data, checkpoint_dir=d / "checkpoint", threads=meta.get("threads"))
        started_at = now_iso()
        run.replicate, run.started_at = i, started_at  # type: ignore[attr-defined]
        runs[seed] = run
        save_trial_start(run_dir, trial_id=trial_id, seed=seed, replicate=i, config=run.config,
                         meta={**record_meta, "started_at": started_at})
        trackers[seed] = TrialTracker.start(
            tracking=tracking, run_dir=run_dir, sweep=meta["sweep"], trial_id=trial_id, seed=seed,
            group=_group(run.config),
            config=run.config.to_dict())
        if run.history:
            latest[seed] = _epoch_metrics(run.history[-1])

    def end(seed: int, status: str, reason: str = "") -> None:
        run = runs.pop(seed)
        result = run.finish(status, reason)  # type: ignore[arg-type]
        save_trial_record(run_dir, trial_id=trial_id, seed=seed, replicate=run.replicate, result=result,
                          net=run.net, meta={**record_meta, "started_at": run.started_at})
        trackers[seed].finish(_summary(result), status=status)
        latest[seed] = _final_metrics(result.as_dict())

    reported = False
    while runs:
        for seed in list(runs):
            run = runs[seed]
            _test_faults(run, trial_id=trial_id, seed=seed)
            try:
                m = run.train_epoch()
            except Diverged as e:
                end(seed, "diverged", str(e))
                continue
            latest[seed] = _epoch_metrics(m)
            trackers[seed].log_epoch(_epoch_metrics(m), epoch=m.epoch)
            if run.epoch >= run.config.epochs:
                end(seed, "completed")
        tune.report(_mean_report(latest, epoch=max([r.epoch for r in runs.values()] or [_epochs(resolved)])))
        reported = True
    if not reported:  # every replicate had finished before a restart: tell Tune (and Optuna) once more
        tune.report(_mean_report(latest, epoch=_epochs(resolved)))


def _test_faults(run: Any, *, trial_id: str, seed: int) -> None:
    """Test-only: log, delay or fail the next epoch as ``$BNSWEEP_TEST_FAULTS`` asks (see the top)."""
    import os

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
                           "lr": run.config.lr, "time": time.time()})
        with open(plan["log"], "a") as f:
            f.write(line + "\n")
    for fault in plan.get("faults", []):
        if fault.get("lr") != run.config.lr or int(fault.get("epoch", epoch)) != epoch:
            continue
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
    if r.get("status") == "diverged" or not hist:
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


def _write_failure(d: Path, e: BaseException) -> None:
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:]
    reason = f"{type(e).__name__}: {e}"[:500]
    if "ResourceExhausted" in reason or isinstance(e, MemoryError) or "out of memory" in reason.lower():
        reason = "out of memory: " + reason
    atomic_write_text(d / "failure.json", json.dumps({"reason": reason, "traceback": tb, "at": now_iso()}))
