"""Crash recovery: whether Ray Tune's saved state can restore a sweep (repairing a snapshot torn by a
kill from the monitor's atomic backup), the records of replicates that ended without one, and Optuna
trials a killed driver left RUNNING.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from bnsweep.base.atomic import atomic_write_bytes, pickle_complete
from bnsweep.store.rundir import RunDirError, read_sweep_json, seed_dir

BACKUP_DIR = ".bnsweep-backup"  # inside RUN_DIR/ray: the monitor's atomic copy of Ray's last snapshot


def check_ray_state(run_dir: Path) -> bool:
    """Whether Ray Tune's state in RUN_DIR/ray can restore the sweep (True), or nothing has run yet and
    the sweep starts afresh (False). A snapshot torn by a kill is replaced by the last atomic backup
    (sweep/monitor.py); what cannot be repaired is named (``RunDirError``)."""
    ray_dir = run_dir / "ray"
    trials_ran = any((run_dir / "trials").glob("*/seed-*"))
    backup = ray_dir / BACKUP_DIR
    tuner = ray_dir / "tuner.pkl"
    if not pickle_complete(tuner) and pickle_complete(backup / "tuner.pkl"):
        atomic_write_bytes(tuner, (backup / "tuner.pkl").read_bytes())
    if not pickle_complete(tuner):
        if trials_ran:
            raise RunDirError(f"{tuner}: missing, but trials have run; Ray Tune's state of this sweep is lost "
                              "and it cannot continue. Its results so far are in results.csv; launch anew with "
                              "another --run-dir")
        return False
    if _ray_snapshot_ok(ray_dir):
        return True
    if _ray_snapshot_ok(backup):
        torn = ray_dir / ".bnsweep-torn"
        for p in _snapshot_files(ray_dir):
            torn.mkdir(exist_ok=True)
            os.replace(p, torn / p.name)
        for p in _snapshot_files(backup):
            atomic_write_bytes(ray_dir / p.name, p.read_bytes())
        print(f"note: {ray_dir}: Ray's last experiment snapshot was torn by the crash; restored the copy "
              f"saved at the last trial start (moved the torn files to {torn.name}/)", file=sys.stderr)
        return True
    if not trials_ran and not any(ray_dir.glob("experiment_state-*.json")):
        return False  # killed before Ray's first snapshot: nothing ran
    raise RunDirError(f"{ray_dir}: Ray Tune's experiment state is unreadable (torn or corrupt) and there is no "
                      "usable backup; this sweep cannot continue. Its results so far are in results.csv")


def _snapshot_files(d: Path) -> list[Path]:
    return [p for p in d.glob("*") if p.is_file() and p.name.startswith(("experiment_state-", "search_gen_state-",
                                                                        "searcher-state-"))]


def _ray_snapshot_ok(d: Path) -> bool:
    """Whether the newest experiment snapshot in ``d`` and its searcher files are complete."""
    states = sorted(d.glob("experiment_state-*.json"))
    if not states:
        return False
    newest = states[-1]
    session = newest.name.removeprefix("experiment_state-").removesuffix(".json")
    try:
        state = json.loads(newest.read_text())
        if not isinstance(state, dict) or "trial_data" not in state or "runner_data" not in state:
            return False
        # the searcher's state (search_gen_state-*.json is a pickle too, despite its name)
        for p in [*d.glob(f"search_gen_state-{session}.json"), *d.glob(f"searcher-state-{session}.pkl")]:
            if not pickle_complete(p):
                return False
    except (OSError, ValueError):
        return False
    return True


def fail_stale_optuna_trials(storage_url: str) -> int:
    """After a sweep ends, no Optuna trial may stay RUNNING (a driver killed mid-trial leaves them)."""
    import optuna

    storage = optuna.storages.RDBStorage(storage_url)
    n = 0
    for study in storage.get_all_studies():
        for t in storage.get_all_trials(study._study_id, deepcopy=False,
                                         states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            n += 1
    return n


def close_unfinished_replicates(run_dir: Path, trial_id: str, resolved: dict[str, Any], *, seeds: list[int],
                                status: str, reason: str) -> int:
    """Write ``result.json`` for replicates that ended without one (pruned by the scheduler, or failed
    after its retries), from their last checkpoint. Returns how many were written."""
    from bnsweep.engine.regimes import account
    from bnsweep.engine.trial import EpochMetrics, TrialResult
    from bnsweep.spec.config import TrialConfig, config_hash
    from bnsweep.store.records import save_trial_record
    from bnsweep.sweep.trainable import trial_config_for

    info = read_sweep_json(run_dir)
    written = 0
    for i, seed in enumerate(seeds):
        d = seed_dir(run_dir, trial_id, seed)
        if (d / "result.json").exists():
            continue
        cfg = TrialConfig.from_dict(trial_config_for(resolved, seed))
        history: list[EpochMetrics] = []
        state = d / "checkpoint" / "state.json"
        if state.exists():
            try:
                history = [EpochMetrics(**m) for m in json.loads(state.read_text())["history"]]
            except (ValueError, KeyError, TypeError):
                history = []
        why = reason
        failure = d / "failure.json"
        if status == "failed" and failure.exists():
            with contextlib.suppress(ValueError, KeyError):
                why = json.loads(failure.read_text())["reason"]
        best = max(history, key=lambda m: m.val_accuracy, default=None)
        result = TrialResult(
            config=cfg.to_dict(), config_hash=config_hash(cfg), status=status, reason=why,  # type: ignore[arg-type]
            epochs_run=len(history),
            final_val_accuracy=history[-1].val_accuracy if history else None,
            best_val_accuracy=best.val_accuracy if best else None, best_epoch=best.epoch if best else None,
            final_val_loss=history[-1].val_loss if history else None,
            accounting=account(cfg.model, cfg.regime).as_dict(),
            wall_seconds=sum(m.seconds for m in history),
            images_per_sec=(sum(m.images_per_sec for m in history) / len(history)) if history else None,
            history=history)
        started_at = None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            started_at = json.loads((d / "started.json").read_text()).get("started_at")
        save_trial_record(run_dir, trial_id=trial_id, seed=seed, replicate=i, result=result, net=None,
                          meta={k: info.get(k) for k in ("spec_hash", "git_commit", "versions")}
                          | {"sweep": info.get("name"), "started_at": started_at})
        written += 1
    return written
