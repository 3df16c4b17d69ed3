"""The driver: spec → Optuna search (through Ray Tune's ``OptunaSearch``) → Ray Tune trials → run dir.

``launch`` starts (or joins) Ray, loads the data once into the object store, and runs the sweep;
``resume`` continues one after Ctrl-C or ``kill -9`` (finished trials are kept, never re-run; the
Optuna study continues from its SQLite storage), from this machine or, for a run directory on an object
store, from any other with an empty cache.

The run directory is anywhere (``RunDir``: a local or NFS path, ``s3://``, ``gs://``, any fsspec URI)
and Ray Tune's storage is the run directory itself: trials hand their metrics and checkpoints (with
their final records inside) to Ray Tune, which stores them there from whichever node they ran on; the
driver alone writes the run directory's records and tables from them (sweep/monitor.py, collect.py).

Every search method goes through Optuna with a define-by-run space (conditional LR-schedule
parameters): ``tpe``/``random``/``cmaes`` samplers, and for ``grid`` a sampler that hands out the
enumerated grid points one by one (a grid with ``one_of`` branches works, and the study shows
readable parameters in optuna-dashboard).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from bnsweep.base import interrupts
from bnsweep.base.atomic import atomic_write_text
from bnsweep.base.meta import git_commit, now_iso
from bnsweep.store.fs import LocationError
from bnsweep.store.rundir import RunDir, RunDirError, lock_for, read_sweep_json
from bnsweep.sweep.options import LaunchOptions, Outcome
from bnsweep.sweep.raystart import cleanup_ray_staging, keep_credentials_out_of_ray_logs, start_ray
from bnsweep.sweep.recovery import (
    check_ray_state,
    check_ray_storage,
    default_storage_url,
    fail_stale_optuna_trials,
    fetch_run_dir,
    publish_optuna_db,
)
from bnsweep.sweep.searcher import STUDY_NAME, make_scheduler, make_search


def default_run_dir(spec: Any) -> Path:
    return Path("runs") / spec.name


def open_run_dir(location: str | os.PathLike[str] | RunDir) -> RunDir:
    """The ``RunDir`` of a path or URI; a location that cannot be one is a ``RunDirError`` (one line)."""
    if isinstance(location, RunDir):
        return location
    try:
        return RunDir(location)
    except LocationError as e:
        raise RunDirError(str(e)) from None
    except (OSError, RuntimeError) as e:  # a symbolic link loop on the way (Path.resolve: RuntimeError in 3.11)
        if isinstance(e, OSError) and e.errno != errno.ELOOP and "loop" not in str(e).lower():
            raise
        if isinstance(e, RuntimeError) and "loop" not in str(e).lower():
            raise
        raise RunDirError(f"{location}: a symbolic link loop (too many levels of symbolic links) on the way to the "
                          "run directory; point it at a real directory") from None


def launch(spec: Any, *, options: LaunchOptions, overrides: dict[str, Any] | None = None) -> Outcome:
    """Run ``spec`` into a new run directory (refused if the directory already holds a sweep).

    The data, a given Optuna storage and Ray are checked and started before anything is written, so
    bad input leaves no half-made run directory behind."""
    rd = open_run_dir(options.run_dir or default_run_dir(spec))
    rd.check_reachable()
    _refuse_if_holds_sweep(rd)
    check_free_space(rd)
    created = not rd.local.exists()
    db_was_there = rd.optuna_db.exists()
    try:
        with lock_for(rd):
            _refuse_if_holds_sweep(rd)  # again, now that no other driver can be writing it
            if rd.is_remote:  # a new sweep at this URI: what an earlier one left in this machine's cache is stale
                import shutil

                shutil.rmtree(rd.local, ignore_errors=True)
                created = True
            storage_url = _storage_url(rd, options, spec)
            if options.storage or spec.storage:
                _check_storage(storage_url)
            data = _load_fixed_data(spec)
            fingerprint = data.fingerprint if data is not None else None
            return _stopped_by_environment(rd, lambda: _run(
                rd, spec, options=options, restore=False, data=data,
                before_tuner=lambda: _write_run_files(rd, spec, overrides or {}, options, data_sha256=fingerprint)))
    finally:
        if not rd.sweep_json.exists():  # nothing started: no half-written Optuna study left behind either
            if not db_was_there:
                for p in (rd.optuna_db, *(rd.optuna_db.with_name(rd.optuna_db.name + x) for x in ("-journal", "-wal",
                                                                                                 "-shm"))):
                    with contextlib.suppress(OSError):
                        p.unlink(missing_ok=True)
            if created:
                _remove_if_empty(rd.local)


def resume(run_dir: Path | str | RunDir, *, options: LaunchOptions) -> Outcome:
    """Continue the sweep in ``run_dir`` (a path or URI) with the spec saved there.

    The run directory is checked first; what is missing or damaged is named (``RunDirError``). A URI
    run directory is downloaded into this machine's cache first (records, progress, the Optuna study):
    a fresh head machine resumes it as well as the one that launched it."""
    from bnsweep.spec.sweep_spec import SpecError, load_spec

    rd = open_run_dir(run_dir)
    if rd.is_remote:
        rd.check_reachable()
        if not rd.exists_remote(RunDir.SWEEP_JSON):
            raise RunDirError(f"{rd.uri}: not a bnsweep run directory (no sweep.json); "
                              "start one with `bnsweep launch SPEC --run-dir URI`")
    elif not rd.local.is_dir():
        raise RunDirError(f"{rd.local}: no such run directory")
    else:
        read_sweep_json(rd)
    with lock_for(rd):
        fetch_run_dir(rd)  # (a URI: into the local copy; under the lock, so no driver writes meanwhile)
        info = read_sweep_json(rd)
        spec_file = rd.spec_yaml
        shown = rd.shown(spec_file)
        if not spec_file.is_file():
            raise RunDirError(f"{shown}: missing; the run directory is damaged (the sweep's spec is gone)")
        try:
            spec = load_spec(spec_file)
        except SpecError as e:
            first = str(e.problems[0]) if e.problems else str(e)
            raise RunDirError(f"{shown}: no longer a valid spec ({first}); it was edited or damaged since the "
                              "sweep started: restore it, or launch anew") from None
        if spec.spec_hash() != info.get("spec_hash"):
            raise RunDirError(f"{shown}: changed since the sweep started (spec hash {spec.spec_hash()}, "
                              f"the sweep was started with {info.get('spec_hash')}); restore it or launch anew")
        options = dataclasses.replace(options, storage=_resume_storage(rd, options, info, spec=spec))
        if options.storage:
            _check_storage(options.storage)
        _check_optuna_storage(rd, _storage_url(rd, options, spec))
        done = _already_complete(rd, spec)
        if done is not None:  # nothing to run: no Ray started; only a torn Ray snapshot is repaired
            if not rd.is_remote:
                with contextlib.suppress(RunDirError):
                    check_ray_state(rd.local)
            return _report_complete(rd, spec, options=options, counts=done)
        check_free_space(rd)
        data = _load_fixed_data(spec)
        _check_same_data(rd, info, data)
        # last: it may repair a torn snapshot (a local run directory; a store's objects are whole)
        restore = check_ray_state_for_resume(rd)
        return _stopped_by_environment(rd, lambda: _run(rd, spec, options=options, restore=restore, data=data))


def check_ray_state_for_resume(rd: RunDir) -> bool:
    """Ray's state checked (and repaired), and replicates that failed for a fault of the machine (disk full,
    I/O error) made to run again: their ``failed`` records are set aside (``result.environment-fault-N.json``,
    kept), so the trial restored by Ray trains them on from their last checkpoint."""
    restore = check_ray_storage(rd) if rd.is_remote else check_ray_state(rd.local)
    if restore and not rd.is_remote:
        retry_environment_failures(rd)
    return restore


def retry_environment_failures(rd: RunDir) -> int:
    """Set aside the ``failed`` records whose reason is a fault of the environment (``environment_fault``);
    returns how many. A record of a code failure stays: that trial failed for a reason of its own."""
    from bnsweep.base.atomic import environment_fault

    moved = 0
    for p in sorted(rd.trials_dir.glob("*/seed-*/result.json")) if rd.trials_dir.is_dir() else []:
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(rec, dict) or rec.get("status") != "failed" or not environment_fault(str(rec.get("reason"))):
            continue
        n = 1
        while p.with_name(f"result.environment-fault-{n}.json").exists():
            n += 1
        os.replace(p, p.with_name(f"result.environment-fault-{n}.json"))
        moved += 1
    if moved:
        print(f"note: {moved} replicate(s) failed for a fault of the machine (disk full, I/O error): run again",
              file=sys.stderr)
    return moved


MIN_FREE_BYTES = 64 << 20  # records, checkpoints, the Optuna study, Ray's state of a small sweep
MIN_FREE_ENV = "BNSWEEP_MIN_FREE_MB"  # another minimum, in MiB (0: no check)


def check_free_space(rd: RunDir) -> None:
    """The run directory's filesystem (its local copy, for a URI) needs ``MIN_FREE_BYTES`` free: a near-full
    disk is one line before anything is written (``RunDirError``), not a failure half way through."""
    import shutil

    where = rd.local
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    need = MIN_FREE_BYTES
    with contextlib.suppress(ValueError):
        need = int(float(os.environ.get(MIN_FREE_ENV, MIN_FREE_BYTES >> 20)) * 2**20)
    if free < need:
        shown = rd.uri if rd.is_remote else _rel(rd.local)
        raise RunDirError(f"{shown}: only {free / 2**20:.1f} MiB free on its filesystem ({where}); a sweep needs at "
                          f"least {need / 2**20:g} MiB there (records, checkpoints, the Optuna study; "
                          f"${MIN_FREE_ENV} sets it): free some space or choose another --run-dir")


class SweepStopped(Exception):
    """The sweep stopped half way for a fault of the machine (disk full, I/O error): one line, exit 3; what
    finished is kept and ``bnsweep resume`` carries on (failed replicates run again) once it is fixed."""


def _stopped_by_environment(rd: RunDir, run: Any) -> Outcome:
    """``run()``; a fault of the machine escaping it is ``SweepStopped`` (or, before the sweep's files were
    written, a ``RunDirError``: nothing started), never a library traceback."""
    from bnsweep.base.atomic import environment_fault

    try:
        return run()  # type: ignore[no-any-return]
    except (RunDirError, KeyboardInterrupt):
        raise
    except Exception as e:
        fault = environment_fault(e)
        if fault is None:
            raise
        shown = rd.uri if rd.is_remote else _rel(rd.local)
        first = " ".join(str(e).split())[:200] or type(e).__name__
        if not rd.sweep_json.exists():
            raise RunDirError(f"{shown}: {fault} ({type(e).__name__}: {first}); nothing was started: free some "
                              "space (or fix the disk) and launch again") from None
        raise SweepStopped(f"{shown}: the sweep stopped: {fault} ({type(e).__name__}: {first}); what finished is "
                           f"kept: free some space (or fix the disk), then `bnsweep resume {shown}`") from None


COMPLETE_STATUSES = ("completed", "pruned", "diverged")


def _already_complete(rd: RunDir, spec: Any) -> dict[str, int] | None:
    """The counts of a sweep whose every configuration ended completed, pruned or diverged, with a record for
    each of its replicates (a resume has nothing left to do); None while anything is missing, running,
    failed or lost (a resume runs or retries it)."""
    from bnsweep.store.table import load_results
    from bnsweep.sweep.space import count_configurations

    try:
        table = load_results(rd.local)
    except Exception:
        return None
    n = count_configurations(spec)
    if not len(table):
        return None
    # without early stopping a "pruned" record is a trial Ray stopped on the way out (Ctrl-C, a kill at the end):
    # not an end, the restored trial carries on
    ends = COMPLETE_STATUSES if spec.scheduler.type != "none" else ("completed", "diverged")
    ended = 0
    for _, statuses in table.groupby("trial_id")["status"]:
        got = list(statuses)
        if len(got) < spec.replicates or any(s not in ends for s in got):
            return None
        ended += 1
    if ended < n:
        return None
    return _counts(table, total=n)


def _report_complete(rd: RunDir, spec: Any, *, options: LaunchOptions, counts: dict[str, int]) -> Outcome:
    """``resume`` of a sweep that already finished: say so (one line, or the ``finished`` JSON event with
    ``already_complete``) and change nothing."""
    from bnsweep.store.table import load_results

    shown = rd.uri if rd.is_remote else _rel(rd.local)
    _finish_bookkeeping(rd, spec, options)
    best = best_of_table(load_results(rd.local), metric=spec.metric.name, mode=spec.metric.mode)
    if options.quiet:
        print(json.dumps({"event": "finished", "already_complete": True, "counts": counts, "best": best,
                          "run_dir": shown}, default=str), flush=True)
    else:
        what = ", ".join(f"{counts[k]} {k}" for k in COMPLETE_STATUSES if counts.get(k))
        print(f"sweep {spec.name!r} in {shown} is already complete ({counts['total']} configurations: {what}); "
              f"nothing to resume. See `bnsweep status {shown}`", flush=True)
    return Outcome(run_dir=rd.uri if rd.is_remote else rd.local, finished=True, counts=counts, best=best)


def _finish_bookkeeping(rd: RunDir, spec: Any, options: LaunchOptions) -> None:
    """What a driver killed at the very end of a complete sweep may have left undone: the results tables
    (rewritten only when older than the newest record, or missing) and Optuna trials left RUNNING (told FAIL).
    A finished sweep whose driver ended normally is left byte for byte as it is."""
    from bnsweep.store.table import write_results_table

    records = list(rd.trials_dir.glob("*/seed-*/result.json")) if rd.trials_dir.is_dir() else []
    newest = max((p.stat().st_mtime for p in records), default=0.0)
    tables = rd.table_files()
    if any(not t.exists() or t.stat().st_mtime < newest for t in tables):
        write_results_table(rd.local)
        rd.push(rd.table_files())
    url = _storage_url(rd, options, spec)
    with contextlib.suppress(Exception):
        if fail_stale_optuna_trials(url):  # (none RUNNING: nothing written, the study left as it is)
            publish_optuna_db(rd, url)


def best_of_table(table: Any, *, metric: str, mode: str) -> dict[str, Any] | None:
    """The best configuration of a results table by ``metric`` (the mean over its replicates), among
    configurations whose every replicate completed, was pruned or diverged: a failed, lost or running
    trial is never named best."""
    col = {"val_accuracy": "val_accuracy_final", "val_loss": "val_loss_final"}.get(metric, metric)
    if table is None or not len(table) or col not in table:
        return None
    best: dict[str, Any] | None = None
    for trial_id, g in table.groupby("trial_id", sort=True):
        if any(s not in COMPLETE_STATUSES for s in g["status"]):
            continue
        values = g[col].dropna()
        if not len(values):
            continue
        v = float(values.mean())
        if v != v:
            continue
        if best is None or (v > best[metric] if mode == "max" else v < best[metric]):
            best = {"trial_id": str(trial_id), metric: v}
    return best


def _refuse_if_holds_sweep(rd: RunDir) -> None:
    if rd.is_remote:
        blob = rd.read_remote(RunDir.SWEEP_JSON)
        if blob is None:
            return
        text = blob.decode("utf-8", "replace")
    else:
        if not rd.sweep_json.exists():
            return
        try:
            text = rd.sweep_json.read_text()
        except OSError:
            text = ""
    try:
        info = json.loads(text)
        what = f"sweep {info.get('name')!r} (started {info.get('created')})"
    except (ValueError, AttributeError):
        what = "a sweep"
    shown = rd.uri if rd.is_remote else _rel(rd.local)
    raise RunDirError(f"{shown}: already holds {what}; continue it with `bnsweep resume {shown}`, "
                      "or choose another --run-dir")


def _remove_if_empty(run_dir: Path) -> None:
    with contextlib.suppress(OSError):
        run_dir.rmdir()


def _load_fixed_data(spec: Any) -> Any:
    """The sweep's data, loaded once (None when trials search over data settings: each loads its own, and
    the sources they would open are checked here instead). Either way the labels must fit
    ``model.num_classes`` (a ``DataError`` naming the key and the labels found)."""
    import numpy as np

    from bnsweep.engine.data import check_num_classes, load_data
    from bnsweep.spec.config import TrialConfig

    if not _data_is_fixed(spec):
        if not sources_searched(spec):  # (searched sources: the base config may name none)
            check_searched_data(spec, TrialConfig.from_dict(spec.base_trial_config()))
        return None
    base = TrialConfig.from_dict(spec.base_trial_config())
    data = load_data(base.data)
    labels = np.unique(np.concatenate([y for y in (data.y_train, data.y_val, data.y_test) if y is not None]))
    for n in _param_values(spec, "model.num_classes", base.model.num_classes):
        check_num_classes(labels, int(n), where=data_where(base.data))
    return data


def _param_values(spec: Any, key: str, default: Any) -> list[Any]:
    """The values a plainly searched key takes (``values:`` or a constant), else ``[default]``."""
    from bnsweep.spec.sections import Constant, Values

    p = spec.parameters.get(key)
    if isinstance(p, Values):
        return list(p.values)
    if isinstance(p, Constant):
        return [p.value]
    return [default]


def data_where(cfg: Any) -> str:
    """How a data config's source is named in a message (its file, else the source kind)."""
    from bnsweep.engine.data import DATA_ENV

    local = cfg.path or (os.environ.get(DATA_ENV) if cfg.source == "cifar10" else None)
    return str(local) if local else f"data.source {cfg.source}"


def check_searched_data(spec: Any, base: Any) -> None:
    """A sweep whose trials search over ``data.*`` settings loads no data before launch: the one source every
    trial would open (``--data``, the spec's ``data.path``) is opened and checked now — it exists, is a readable
    npz or CIFAR directory of uint8 images with labels, its labels fit ``model.num_classes`` and it has the
    searched ``data.train_size`` values — so a bad ``--data`` is one line before launch, not every trial
    failing. A search over the sources themselves (``data.path`` values) is left to its trials."""
    from bnsweep.engine.data import DataError, check_num_classes, inspect_data

    if sources_searched(spec):
        return  # each trial opens its own (one bad value fails its own trials, recorded as failed)
    summary = inspect_data(base.data)
    if summary is None:
        return
    where = data_where(base.data)
    for n in _param_values(spec, "model.num_classes", base.model.num_classes):
        check_num_classes(summary.labels, int(n), where=where)
    for size in _param_values(spec, "data.train_size", base.data.train_size):
        if size is not None and base.data.source != "synthetic" and int(size) > summary.train_images:
            raise DataError(f"data.train_size: {size} requested, {where} has {summary.train_images} training images")


def sources_searched(spec: Any) -> bool:
    """Whether the sweep searches over the data sources themselves (``data.path`` values, ...)."""
    return any(k in spec.parameters for k in ("data", "data.path", "data.source", "data.test_path"))


def _check_same_data(rd: RunDir, info: dict[str, Any], data: Any) -> None:
    """``resume`` trains the rest of a sweep on the data it started with, or not at all: the content hash of
    the data it would load now against the one ``launch`` recorded (sweep.json ``data_sha256``). Sweeps that
    search over data settings load their data in each trial (each record holds its own hash)."""
    started = info.get("data_sha256")
    if data is None or not started or data.fingerprint == started:
        return
    raise RunDirError(f"{rd.shown(rd.sweep_json)}: the data differs from the data the sweep started with "
                      f"({data.description}: {data.fingerprint[:19]}…, started with {str(started)[:19]}…); "
                      "resume with the same data (the spec saved in the run directory names its path), "
                      "or launch a new sweep")


def _check_storage(url: str) -> None:
    """Open a user-given Optuna storage URL now (a clear error instead of a failure after Ray started)."""
    import optuna

    shown = _redact_url(url)
    try:
        from sqlalchemy.engine import make_url

        make_url(url)
    except Exception as e:
        raise RunDirError(f"--storage {shown}: not a database URL ({type(e).__name__}); "
                          "expected e.g. sqlite:///optuna.db or postgresql://user@host/db") from None
    try:
        optuna.storages.RDBStorage(url, skip_table_creation=False)
    except Exception as e:
        msg = _redact_url(str(e)).splitlines()[0][:300] if str(e) else ""
        raise RunDirError(f"--storage {shown}: cannot open the Optuna storage ({type(e).__name__}: {msg})") from None


def _resume_storage(run_dir: RunDir, options: LaunchOptions, info: dict[str, Any], *, spec: Any) -> str | None:
    saved = info.get("storage")
    if options.storage:
        own = saved or spec.storage or default_storage_url(run_dir)  # the storage the sweep was launched with
        if _same_storage(_redact_url(options.storage), own):
            return options.storage
        how = "" if saved or spec.storage else " (the default: the run directory's own)"
        raise RunDirError(f"--storage {_redact_url(options.storage)}: not this sweep's Optuna storage; it was "
                          f"launched with {_redact_url(own)}{how}. Resume it without --storage, or with that URL "
                          "(another storage would start an empty study)")
    if saved and "***@" in saved:
        raise RunDirError(f"{run_dir.uri}: the sweep's Optuna study is in {saved}, whose password is not kept in the "
                          "run directory; pass the full URL again with --storage")
    return saved


def _same_storage(a: str, b: str) -> bool:
    """Whether two (redacted) storage URLs name one database: SQLite files compared by their real path."""
    def norm(url: str) -> str:
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///").split("?", 1)[0]
            with contextlib.suppress(OSError, RuntimeError):
                return "sqlite:///" + str(Path(path).expanduser().resolve())
        return url.rstrip("/")
    return norm(a) == norm(b)


def _check_optuna_storage(run_dir: RunDir, url: str) -> None:
    """The default SQLite study must be readable (a damaged optuna.db is named, not a traceback)."""
    import sqlite3

    if not url.startswith("sqlite:///"):
        return
    db = Path(url.removeprefix("sqlite:///"))
    if not db.exists():
        return
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            ok = con.execute("PRAGMA quick_check").fetchone()  # (an empty or table-less file is fine: Optuna fills it)
        finally:
            con.close()
    except sqlite3.Error as e:
        raise RunDirError(f"{db}: the Optuna study cannot be read ({e}); the run directory is damaged") from None
    if not ok or ok[0] != "ok":
        raise RunDirError(f"{db}: the Optuna study is corrupt ({ok[0] if ok else 'no answer'}); "
                          "the run directory is damaged")


# ------------------------------------------------------------------ internals


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _write_run_files(run_dir: Path | RunDir, spec: Any, overrides: dict[str, Any], options: LaunchOptions, *,
                     data_sha256: str | None = None) -> None:
    from bnsweep.base.meta import library_versions

    rd = RunDir.of(run_dir)
    atomic_write_text(rd.spec_yaml, spec.to_yaml())  # includes merged, command-line overrides applied
    from bnsweep.spec.sweep_spec import load_spec

    saved = load_spec(rd.spec_yaml)  # the saved spec must load back to the same sweep
    if saved.spec_hash() != spec.spec_hash():
        raise RuntimeError(f"{rd.shown(rd.spec_yaml)}: the saved spec does not reload to the spec being run "
                           f"({saved.spec_hash()} != {spec.spec_hash()}); please report this as a bnsweep bug")
    info = {
        "name": spec.name, "spec_hash": saved.spec_hash(), "created": now_iso(), "spec_source": str(spec.source),
        "git_commit": git_commit(), "versions": library_versions(), "replicates": spec.replicates,
        "seed_base": spec.seed,
        "metric": {"name": spec.metric.name, "goal": spec.metric.goal}, "overrides": overrides,
        "storage": _redact_url(options.storage) if options.storage else None,
        "data_sha256": data_sha256,  # resume refuses other data (_check_same_data); None: trials load their own
    }
    atomic_write_text(rd.sweep_json, json.dumps(info, indent=2))
    rd.push([rd.spec_yaml, rd.sweep_json])  # sweep.json last: its presence means a sweep is here


def _redact_url(url: str) -> str:
    """Never write a database password into the run directory."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _storage_url(run_dir: RunDir, options: LaunchOptions, spec: Any) -> str:
    return options.storage or spec.storage or default_storage_url(run_dir)


def _data_is_fixed(spec: Any) -> bool:
    return not any(k == "data" or k.startswith("data.") for k in spec.parameters)


_UNLOADED: Any = object()


def _run(rd: RunDir, spec: Any, *, options: LaunchOptions, restore: bool, data: Any = _UNLOADED,
         before_tuner: Any = None) -> Outcome:
    """Start Ray, build the search and run (or restore) the Tuner. ``before_tuner`` (launch: write the
    run files) is called once the data, the storage and Ray are ready, so bad input leaves no run files."""
    import ray
    from ray import tune

    from bnsweep.base.testhooks import pause_for_tests
    from bnsweep.sweep import ray_compat
    from bnsweep.sweep.monitor import SweepMonitor
    from bnsweep.sweep.searcher import trial_dirname
    from bnsweep.sweep.trainable import ENVIRONMENT_RETRIES, train_configuration
    from bnsweep.sweep.watchdog import HungTrialWatchdog

    if data is _UNLOADED:
        data = _load_fixed_data(spec)  # once per sweep (None: trials search over data settings)
    data_bytes = 0 if data is None else sum(a.nbytes for a in (data.x_train, data.x_val, data.x_test) if a is not None)
    rd.local.mkdir(parents=True, exist_ok=True)  # (a URI: the local copy, where the Optuna SQLite study lives)
    storage_url = _storage_url(rd, options, spec)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress display instead of Ray's tables
    # a failed trial is reported on one line by the monitor (its traceback is in its record and Ray's
    # error.txt), not as a traceback on the terminal
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    started_here = not ray.is_initialized()
    monitor: Any = None
    table = None
    storage_path, storage_fs = rd.ray_storage()
    try:  # (a Ctrl-C while Ray starts must not leave its processes behind either)
        interrupts.raise_if_pending()  # one the garbage collector swallowed while the data loaded
        dashboard = start_ray(rd, spec, options, data_bytes)
        if started_here and not options.address:
            keep_credentials_out_of_ray_logs()
        # ---- pre-flight (bnsweep.sweep.cluster), Ray connected, nothing written yet: trials no node can run
        # are refused; with --address the per-node packing is printed and every node that would run trials
        # must reach the run directory (and the data, when trials load their own)
        from bnsweep.sweep.cluster import preflight

        flight = preflight(spec, options, run_dir=rd.uri if rd.is_remote else rd.local)
        # ----
        searcher, n = make_search(spec, storage_url)
        interrupts.raise_if_pending()
        if before_tuner is not None:
            before_tuner()
        info = read_sweep_json(rd)
        concurrent, cpus = flight.packing.concurrent, flight.packing.cpus_per_trial  # per node (pre-flight)
        meta = {
            "run_dir": rd.uri, "sweep": spec.name, "spec_hash": info["spec_hash"],
            "git_commit": info.get("git_commit"), "versions": info.get("versions", {}),
            "replicates": spec.replicates, "seed_base": spec.seed, "threads": max(1, math.floor(cpus)),
            "tracking": spec.tracking.model_dump(), "retries": spec.retries,
        }
        resources = {"cpu": cpus, "gpu": spec.resources.gpu}
        if spec.resources.tpu:
            resources["TPU"] = spec.resources.tpu
        trainable = tune.with_resources(tune.with_parameters(train_configuration, meta=meta, data=data), resources)
        monitor = SweepMonitor(run_dir=rd, total=n, replicates=spec.replicates, metric=spec.metric.name,
                               mode=spec.metric.mode, quiet=options.quiet, seed_base=spec.seed,
                               storage_url=storage_url, plain=options.plain)
        watchdog = HungTrialWatchdog(spec=spec.watchdog, run_dir=rd, quiet=options.quiet)  # hung trials
        monitor.announce(spec=spec, dashboard=dashboard, restored=restore, cpus_per_trial=cpus,
                         concurrent=concurrent)
        try:
            if restore:
                ray_path = f"{storage_path}/{RunDir.RAY}" if rd.is_remote else str(rd.ray_dir)
                try:
                    tuner = tune.Tuner.restore(ray_path, trainable=trainable, resume_unfinished=True,
                                               resume_errored=True, restart_errored=False,
                                               storage_filesystem=storage_fs)
                except Exception as e:
                    raise RunDirError(f"{rd.uri}/{RunDir.RAY}: Ray Tune's saved state cannot be restored "
                                      f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
                                      "the run directory is damaged") from None
                # callbacks are not part of the restored state (the launching driver's are): re-attach ours
                ray_compat.set_restored_callbacks(tuner, [monitor, watchdog])
            else:
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        metric=spec.metric.name, mode=spec.metric.mode, search_alg=searcher,
                        scheduler=make_scheduler(spec), num_samples=n, max_concurrent_trials=concurrent,
                        reuse_actors=True,  # a worker keeps TF/JAX imported between trials
                        trial_dirname_creator=trial_dirname),
                    run_config=tune.RunConfig(
                        name=RunDir.RAY, storage_path=storage_path, storage_filesystem=storage_fs, verbose=0,
                        callbacks=[monitor, watchdog],
                        # the newest 3 per trial: Ray's state (snapshotted at least every 2nd checkpoint of a
                        # trial, sweep/monitor.py) then never names only deleted ones after a crash
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
                        # a worker or node that dies is the environment's fault, retried whatever `retries`
                        # says; the trial's own failures are retried by the trainable (`retries` times)
                        failure_config=tune.FailureConfig(max_failures=ENVIRONMENT_RETRIES)),
                )
            interrupts.raise_if_pending()
            handler_before_fit = ray_compat.sigint_handler()
            tuner.fit()  # (inside, SweepMonitor hands a swallowed Ctrl-C to Ray Tune's handler)
            if ray_compat.tune_took_sigint(handler_before_fit):
                interrupts.note_received()  # (the loop ended on a Ctrl-C: exit 130; without one, 3)
            pause_for_tests("sweep-end")
        finally:
            monitor.stop_display()  # (a second Ctrl-C, an error) the terminal restored before anything prints
            from bnsweep.store.table import write_results_table

            try:
                table = write_results_table(rd.local)
                rd.push(rd.table_files())
                publish_optuna_db(rd, storage_url)
            except Exception as e:  # never hide the exception that brought us here
                print(f"warning: could not write the results table: {e}", file=sys.stderr)
    finally:
        if started_here:
            ray.shutdown()
        cleanup_ray_staging()
    finished = monitor.all_ended() or (monitor.none_unfinished()
                                       and _ended_configurations(storage_url) >= monitor.total)
    if finished:
        fail_stale_optuna_trials(storage_url)
        publish_optuna_db(rd, storage_url)
        _log_summary(rd, spec)
    counts = _counts(table, total=n) if table is not None else monitor.counts()
    outcome = Outcome(run_dir=rd.uri if rd.is_remote else rd.local, finished=finished, counts=counts,
                      best=_final_best(table, spec, monitor), interrupted=not finished and interrupts.received())
    monitor.close(outcome)
    return outcome


def _final_best(table: Any, spec: Any, monitor: Any) -> dict[str, Any] | None:
    """The sweep's best configuration for its summary, from the results table: a failed, lost or running one
    is never named (the monitor's live best follows every reported epoch, a failing trial's included)."""
    if table is None:
        return None
    return best_of_table(table, metric=spec.metric.name, mode=spec.metric.mode)


def _counts(table: Any, *, total: int) -> dict[str, int]:
    """Configurations by status, from the results table (this session's events miss earlier ones)."""
    c = {"completed": 0, "pruned": 0, "diverged": 0, "failed": 0, "lost": 0, "running": 0}
    if len(table):
        for _, statuses in table.groupby("trial_id")["status"]:
            got = set(statuses.dropna())
            status = next((s for s in ("running", "failed", "lost", "diverged", "pruned") if s in got), "completed")
            c[status] += 1
    c["total"] = total
    return c


def _log_summary(rd: RunDir, spec: Any) -> None:
    """The sweep's W&B summary run: results tables and any plots made so far (never raises); for a URI
    run directory the new offline run is uploaded with the trials' ones."""
    from bnsweep.store.tracking import log_sweep_summary

    tracking = spec.tracking
    tables = [p for p in (rd.results_table("csv"), rd.history_table("csv")) if p.exists()]
    plots = sorted(rd.plots_dir.glob("*.png")) if rd.plots_dir.is_dir() else []
    before = set(rd.wandb_dir.glob("offline-run-*")) | set(rd.wandb_dir.glob("run-*"))
    log_sweep_summary(tracking=tracking, run_dir=rd.local, sweep=spec.name, table_paths=tables, plot_paths=plots,
                      config=dict(spec.raw))
    with contextlib.suppress(Exception):
        for d in sorted((set(rd.wandb_dir.glob("offline-run-*")) | set(rd.wandb_dir.glob("run-*"))) - before):
            rd.push_tree(d)


def _ended_configurations(storage_url: str) -> int:
    """Ended configurations per the Optuna study: after a resume these include trials that ended
    after Ray's last snapshot (kept on disk, unknown to the restored Ray)."""
    from bnsweep.sweep.searcher import ended_configurations

    try:
        return ended_configurations(storage_url, STUDY_NAME)
    except Exception:
        return 0


