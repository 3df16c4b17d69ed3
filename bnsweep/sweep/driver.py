"""The driver: spec → Optuna search (through Ray Tune's ``OptunaSearch``) → Ray Tune trials → run dir.

``launch`` starts (or joins) Ray, loads the data once into the object store, and runs the sweep;
``resume`` continues one after Ctrl-C or ``kill -9`` (finished trials are kept, never re-run; the
Optuna study continues from its SQLite storage).

Every search method goes through Optuna with a define-by-run space (conditional LR-schedule
parameters): ``tpe``/``random``/``cmaes`` samplers, and for ``grid`` a sampler that hands out the
enumerated grid points one by one (a grid with ``one_of`` branches works, and the study shows
readable parameters in optuna-dashboard).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from bnsweep.base import interrupts
from bnsweep.base.atomic import atomic_write_text
from bnsweep.base.meta import git_commit, now_iso
from bnsweep.store.rundir import RunDirError, RunLock, read_sweep_json
from bnsweep.sweep.options import LaunchOptions, Outcome
from bnsweep.sweep.packing import choose_packing
from bnsweep.sweep.raystart import cleanup_ray_staging, keep_credentials_out_of_ray_logs, start_ray
from bnsweep.sweep.recovery import check_ray_state, fail_stale_optuna_trials
from bnsweep.sweep.searcher import STUDY_NAME, make_scheduler, make_search


def default_run_dir(spec: Any) -> Path:
    return Path("runs") / spec.name


def launch(spec: Any, *, options: LaunchOptions, overrides: dict[str, Any] | None = None) -> Outcome:
    """Run ``spec`` into a new run directory (refused if the directory already holds a sweep).

    The data, a given Optuna storage and Ray are checked and started before anything is written, so
    bad input leaves no half-made run directory behind."""
    run_dir = Path(options.run_dir or default_run_dir(spec)).resolve()
    _refuse_if_holds_sweep(run_dir)
    created = not run_dir.exists()
    try:
        with RunLock(run_dir):
            _refuse_if_holds_sweep(run_dir)  # again, now that no other driver can be writing it
            storage_url = _storage_url(run_dir, options, spec)
            if options.storage or spec.storage:
                _check_storage(storage_url)
            data = _load_fixed_data(spec)
            return _run(run_dir, spec, options=options, restore=False, data=data,
                        before_tuner=lambda: _write_run_files(run_dir, spec, overrides or {}, options))
    finally:
        if created and not (run_dir / "sweep.json").exists():
            _remove_if_empty(run_dir)


def resume(run_dir: Path, *, options: LaunchOptions) -> Outcome:
    """Continue the sweep in ``run_dir`` with the spec saved there.

    The run directory is checked first; what is missing or damaged is named (``RunDirError``)."""
    from bnsweep.spec.sweep_spec import SpecError, load_spec

    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    info = read_sweep_json(run_dir)
    spec_file = run_dir / "spec.yaml"
    with RunLock(run_dir):
        if not spec_file.is_file():
            raise RunDirError(f"{spec_file}: missing; the run directory is damaged (the sweep's spec is gone)")
        try:
            spec = load_spec(spec_file)
        except SpecError as e:
            first = str(e.problems[0]) if e.problems else str(e)
            raise RunDirError(f"{spec_file}: no longer a valid spec ({first}); it was edited or damaged since the "
                              "sweep started: restore it, or launch anew") from None
        if spec.spec_hash() != info.get("spec_hash"):
            raise RunDirError(f"{spec_file}: changed since the sweep started (spec hash {spec.spec_hash()}, "
                              f"the sweep was started with {info.get('spec_hash')}); restore it or launch anew")
        options = dataclasses.replace(options, storage=_resume_storage(run_dir, options, info))
        if options.storage:
            _check_storage(options.storage)
        _check_optuna_storage(run_dir, _storage_url(run_dir, options, spec))
        restore = check_ray_state(run_dir)  # last: it may repair a torn snapshot
        return _run(run_dir, spec, options=options, restore=restore)


def _refuse_if_holds_sweep(run_dir: Path) -> None:
    if not (run_dir / "sweep.json").exists():
        return
    try:
        info = json.loads((run_dir / "sweep.json").read_text())
        what = f"sweep {info.get('name')!r} (started {info.get('created')})"
    except (OSError, ValueError, AttributeError):
        what = "a sweep"
    raise RunDirError(f"{run_dir}: already holds {what}; continue it with `bnsweep resume {_rel(run_dir)}`, "
                      "or choose another --run-dir")


def _remove_if_empty(run_dir: Path) -> None:
    with contextlib.suppress(OSError):
        run_dir.rmdir()


def _load_fixed_data(spec: Any) -> Any:
    """The sweep's data, loaded once (None when trials search over data settings: each loads its own)."""
    from bnsweep.engine.data import load_data
    from bnsweep.spec.config import TrialConfig

    if not _data_is_fixed(spec):
        return None
    return load_data(TrialConfig.from_dict(spec.base_trial_config()).data)


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


def _resume_storage(run_dir: Path, options: LaunchOptions, info: dict[str, Any]) -> str | None:
    saved = info.get("storage")
    if options.storage:
        if saved and _redact_url(options.storage) != saved:
            raise RunDirError(f"--storage {_redact_url(options.storage)}: not this sweep's Optuna storage ({saved})")
        return options.storage
    if saved and "***@" in saved:
        raise RunDirError(f"{run_dir}: the sweep's Optuna study is in {saved}, whose password is not kept in the "
                          "run directory; pass the full URL again with --storage")
    return saved


def _check_optuna_storage(run_dir: Path, url: str) -> None:
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


def _write_run_files(run_dir: Path, spec: Any, overrides: dict[str, Any], options: LaunchOptions) -> None:
    from bnsweep.base.meta import library_versions

    atomic_write_text(run_dir / "spec.yaml", spec.to_yaml())  # includes merged, command-line overrides applied
    from bnsweep.spec.sweep_spec import load_spec

    saved = load_spec(run_dir / "spec.yaml")  # the saved spec must load back to the same sweep
    if saved.spec_hash() != spec.spec_hash():
        raise RuntimeError(f"{run_dir / 'spec.yaml'}: the saved spec does not reload to the spec being run "
                           f"({saved.spec_hash()} != {spec.spec_hash()}); please report this as a bnsweep bug")
    info = {
        "name": spec.name, "spec_hash": saved.spec_hash(), "created": now_iso(), "spec_source": str(spec.source),
        "git_commit": git_commit(), "versions": library_versions(), "replicates": spec.replicates,
        "seed_base": spec.seed,
        "metric": {"name": spec.metric.name, "goal": spec.metric.goal}, "overrides": overrides,
        "storage": _redact_url(options.storage) if options.storage else None,
    }
    atomic_write_text(run_dir / "sweep.json", json.dumps(info, indent=2))


def _redact_url(url: str) -> str:
    """Never write a database password into the run directory."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _storage_url(run_dir: Path, options: LaunchOptions, spec: Any) -> str:
    return options.storage or spec.storage or f"sqlite:///{run_dir / 'optuna.db'}"


def _packing(spec: Any, options: LaunchOptions, configurations: int) -> tuple[int, float]:
    """``choose_packing`` for the Ray this driver is connected to (its CPUs and GPUs; this machine's memory
    when Ray is local)."""
    import ray

    from bnsweep.sweep.packing import physical_memory_bytes

    cluster = ray.cluster_resources() if ray.is_initialized() else {}
    return choose_packing(spec, configurations=configurations,
                          total_cpus=cluster.get("CPU") or options.num_cpus or os.cpu_count() or 1,
                          total_gpus=cluster.get("GPU", 0),
                          memory_bytes=None if options.address else physical_memory_bytes())


def _data_is_fixed(spec: Any) -> bool:
    return not any(k == "data" or k.startswith("data.") for k in spec.parameters)


_UNLOADED: Any = object()


def _run(run_dir: Path, spec: Any, *, options: LaunchOptions, restore: bool, data: Any = _UNLOADED,
         before_tuner: Any = None) -> Outcome:
    """Start Ray, build the search and run (or restore) the Tuner. ``before_tuner`` (launch: write the
    run files) is called once the data, the storage and Ray are ready, so bad input leaves no run files."""
    import ray
    from ray import tune

    from bnsweep.base.testhooks import pause_for_tests
    from bnsweep.sweep.monitor import SweepMonitor
    from bnsweep.sweep.searcher import trial_dirname
    from bnsweep.sweep.trainable import train_configuration

    if data is _UNLOADED:
        data = _load_fixed_data(spec)  # once per sweep (None: trials search over data settings)
    data_bytes = 0 if data is None else sum(a.nbytes for a in (data.x_train, data.x_val, data.x_test) if a is not None)
    storage_url = _storage_url(run_dir, options, spec)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress display instead of Ray's tables
    # a failed trial is reported on one line by the monitor (its traceback is in the run directory's
    # failure.json and Ray's error.txt), not as a traceback on the terminal
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    started_here = not ray.is_initialized()
    monitor: Any = None
    table = None
    try:  # (a Ctrl-C while Ray starts must not leave its processes behind either)
        interrupts.raise_if_pending()  # one the garbage collector swallowed while the data loaded
        dashboard = start_ray(run_dir, spec, options, data_bytes)
        if started_here and not options.address:
            keep_credentials_out_of_ray_logs()
        searcher, n = make_search(spec, storage_url)
        interrupts.raise_if_pending()
        if before_tuner is not None:
            before_tuner()
        info = read_sweep_json(run_dir)
        concurrent, cpus = _packing(spec, options, n)  # what the spec leaves unset fits the machine
        meta = {
            "run_dir": str(run_dir), "sweep": spec.name, "spec_hash": info["spec_hash"],
            "git_commit": info.get("git_commit"), "versions": info.get("versions", {}),
            "replicates": spec.replicates, "seed_base": spec.seed, "threads": max(1, math.floor(cpus)),
            "tracking": spec.tracking.model_dump(),
        }
        resources = {"cpu": cpus, "gpu": spec.resources.gpu}
        if spec.resources.tpu:
            resources["TPU"] = spec.resources.tpu
        trainable = tune.with_resources(tune.with_parameters(train_configuration, meta=meta, data=data), resources)
        monitor = SweepMonitor(run_dir=run_dir, total=n, replicates=spec.replicates, metric=spec.metric.name,
                               mode=spec.metric.mode, quiet=options.quiet, seed_base=spec.seed)
        monitor.announce(spec=spec, dashboard=dashboard, restored=restore, cpus_per_trial=cpus,
                         concurrent=concurrent)
        try:
            if restore:
                try:
                    tuner = tune.Tuner.restore(str(run_dir / "ray"), trainable=trainable, resume_unfinished=True,
                                               resume_errored=True, restart_errored=False)
                except Exception as e:
                    raise RunDirError(f"{run_dir / 'ray'}: Ray Tune's saved state cannot be restored "
                                      f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
                                      "the run directory is damaged") from None
                # callbacks are not part of the restored state: re-attach ours
                tuner._local_tuner._run_config.callbacks = [monitor]  # type: ignore[union-attr]
            else:
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        metric=spec.metric.name, mode=spec.metric.mode, search_alg=searcher,
                        scheduler=make_scheduler(spec), num_samples=n, max_concurrent_trials=concurrent,
                        reuse_actors=True,  # a worker keeps TF/JAX imported between trials
                        trial_dirname_creator=trial_dirname),
                    run_config=tune.RunConfig(
                        name="ray", storage_path=str(run_dir), verbose=0, callbacks=[monitor],
                        failure_config=tune.FailureConfig(max_failures=spec.retries)),
                )
            interrupts.raise_if_pending()
            tuner.fit()  # (inside, SweepMonitor hands a swallowed Ctrl-C to Ray Tune's handler)
            pause_for_tests("sweep-end")
        finally:
            from bnsweep.store.table import write_results_table

            try:
                table = write_results_table(run_dir)
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
        _log_summary(run_dir, spec)
    counts = _counts(table, total=n) if table is not None else monitor.counts()
    outcome = Outcome(run_dir=run_dir, finished=finished, counts=counts, best=monitor.best())
    monitor.close(outcome)
    return outcome


def _counts(table: Any, *, total: int) -> dict[str, int]:
    """Configurations by status, from the results table (this session's events miss earlier ones)."""
    c = {"completed": 0, "pruned": 0, "diverged": 0, "failed": 0, "running": 0}
    if len(table):
        for _, statuses in table.groupby("trial_id")["status"]:
            got = set(statuses.dropna())
            status = next((s for s in ("running", "failed", "diverged", "pruned") if s in got), "completed")
            c[status] += 1
    c["total"] = total
    return c


def _log_summary(run_dir: Path, spec: Any) -> None:
    """The sweep's W&B summary run: results tables and any plots made so far (never raises)."""
    from bnsweep.store.tracking import log_sweep_summary

    tracking = spec.tracking
    tables = [p for p in (run_dir / "results.csv", run_dir / "history.csv") if p.exists()]
    plots = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []
    log_sweep_summary(tracking=tracking, run_dir=run_dir, sweep=spec.name, table_paths=tables, plot_paths=plots,
                      config=dict(spec.raw))


def _ended_configurations(storage_url: str) -> int:
    """Ended configurations per the Optuna study: after a resume these include trials that ended
    after Ray's last snapshot (kept on disk, unknown to the restored Ray)."""
    from bnsweep.sweep.searcher import ended_configurations

    try:
        return ended_configurations(storage_url, STUDY_NAME)
    except Exception:
        return 0


