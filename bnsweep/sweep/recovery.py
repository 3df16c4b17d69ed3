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
from bnsweep.base.meta import now_iso
from bnsweep.store.rundir import RunDir, RunDirError, read_sweep_json

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
    """After a sweep ends, no Optuna trial may stay RUNNING (a driver killed mid-trial leaves them):
    each is told FAIL (interrupted: not one of the sweep's configurations) through Optuna's public API."""
    import optuna

    from bnsweep.sweep.searcher import fail_interrupted, optuna_storage_kwargs

    storage = optuna.storages.RDBStorage(storage_url, **optuna_storage_kwargs(storage_url))
    n = 0
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            fail_interrupted(study, t, "left running when its sweep ended")
            n += 1
    return n


def close_unfinished_replicates(run_dir: Path | RunDir, trial_id: str, resolved: dict[str, Any], *,
                                seeds: list[int], status: str, reason: str) -> int:
    """Record replicates that ended without a final record, from their last progress (the epoch history
    the driver copied from the trial's last checkpoint): ``failed`` (Ray gave up on the trial: its
    error is the reason) or ``pruned`` (stopped by the scheduler). A pruned replicate with no progress
    at all is ``lost`` (``lost.json``), never a pruned record with nothing in it. Returns how many
    records were written (lost ones included)."""
    from bnsweep.base.atomic import atomic_write_text
    from bnsweep.store.records import write_trial_record
    from bnsweep.sweep.trainable import result_from_history

    rd = RunDir.of(run_dir)
    info = read_sweep_json(rd)
    written = 0
    for i, seed in enumerate(seeds):
        files = rd.replicate(trial_id, seed)
        if files.result.exists():
            continue
        history: list[dict[str, Any]] = []
        if files.state.exists():
            try:
                history = list(json.loads(files.state.read_text())["history"])
            except (ValueError, KeyError, TypeError):
                history = []
        why = reason
        if status == "failed" and files.failure.exists():
            with contextlib.suppress(ValueError, KeyError):
                why = json.loads(files.failure.read_text())["reason"]
        started_at = None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            started_at = json.loads(files.started.read_text()).get("started_at")
        if status == "pruned" and not history:
            if not files.lost.exists():
                atomic_write_text(files.lost, json.dumps({
                    "reason": f"lost: the trial ended but neither this replicate's record nor a checkpoint of it "
                              f"reached the run's storage ({reason})", "at": now_iso(), "trial_id": trial_id,
                    "seed": seed}))
                rd.push([files.lost])
                written += 1
            continue
        result = result_from_history(resolved, seed, status=status, reason=why, history=history)
        write_trial_record(files.dir, trial_id=trial_id, seed=seed, replicate=i, result=result, net=None,
                           meta={k: info.get(k) for k in ("spec_hash", "git_commit", "versions")}
                           | {"sweep": info.get("name"), "started_at": started_at})
        files.lost.unlink(missing_ok=True)
        rd.push([files.result])
        written += 1
    return written


def mark_lost(run_dir: Path | RunDir, trial_id: str, seed: int, reason: str) -> bool:
    """Record that a replicate's results are lost (``lost.json``): Ray ended its trial, but neither a
    record nor a checkpoint of it can be found. Nothing about its results is invented; a record found
    later (a resume reading a checkpoint) replaces it. Returns False when it has a record after all."""
    from bnsweep.base.atomic import atomic_write_text

    rd = RunDir.of(run_dir)
    files = rd.replicate(trial_id, seed)
    if files.result.exists():
        return False
    atomic_write_text(files.lost, json.dumps({"reason": f"lost: {reason}", "at": now_iso(), "trial_id": trial_id,
                                              "seed": seed}))
    rd.push([files.lost])
    return True


def publish_optuna_db(rd: RunDir, storage_url: str) -> bool:
    """Upload a consistent copy of the local Optuna SQLite study (made with the sqlite3 backup API, safe
    while the study is in use) to the run directory's store, as one object. Only for the default study
    of a URI run directory; returns whether it did."""
    import sqlite3
    import tempfile

    if not rd.is_remote or storage_url != default_storage_url(rd):
        return False
    with tempfile.TemporaryDirectory(prefix="bnsweep-optuna-") as tmp:
        copy = Path(tmp) / RunDir.OPTUNA_DB
        src = sqlite3.connect(f"{rd.optuna_db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            dst = sqlite3.connect(copy)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        rd.loc.upload(copy, RunDir.OPTUNA_DB)
    return True


def default_storage_url(rd: RunDir) -> str:
    """The sweep's default Optuna storage: SQLite on the driver's local disk (the run directory itself
    when it is local, its local copy for a URI)."""
    return f"sqlite:///{rd.optuna_db}"


def fetch_run_dir(rd: RunDir) -> None:
    """A URI run directory on this machine: its sweep files, records, progress and Optuna study
    downloaded into the local copy (an empty cache on a fresh head machine is filled; an existing one is
    brought up to date). A no-op for a local run directory."""
    if not rd.is_remote:
        return
    rd.pull_records()
    blob = rd.read_remote(RunDir.OPTUNA_DB)
    if blob is not None:
        atomic_write_bytes(rd.optuna_db, blob)


def check_ray_storage(rd: RunDir) -> bool:
    """``check_ray_state`` for a URI run directory: whether Ray Tune can restore from the store (each of
    its files there was written whole, as one object: nothing to repair); what cannot go on is named."""
    from ray import tune

    path, fs = rd.ray_storage()
    trials_ran = any(rd.trials_dir.glob("*/seed-*"))
    try:
        ok = tune.Tuner.can_restore(f"{path}/{RunDir.RAY}", storage_filesystem=fs)
    except Exception:
        ok = False
    if ok:
        return True
    if trials_ran:
        raise RunDirError(f"{rd.uri}/{RunDir.RAY}: Ray Tune's state is missing or unreadable, but trials have run; "
                          "this sweep cannot continue. Its results so far are in results.csv; launch anew with "
                          "another --run-dir")
    return False
