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
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnsweep import interrupts
from bnsweep.rundir import (
    RunDirError,
    RunLock,
    atomic_write_bytes,
    atomic_write_text,
    git_commit,
    now_iso,
    pickle_complete,
    read_sweep_json,
    seed_dir,
)

STUDY_NAME = "bnsweep"


@dataclass(frozen=True)
class LaunchOptions:
    """How to run a sweep (command-line flags), as opposed to what to run (the spec)."""

    run_dir: Path | None = None  # default runs/<spec name>
    address: str | None = None  # join a Ray cluster ("auto" or host:port); None: start a local Ray
    dashboard: bool = True
    dashboard_host: str = "127.0.0.1"  # anyone who reaches Ray's dashboard/job API can run code
    dashboard_port: int = 8265
    quiet: bool = False  # machine-readable JSON lines instead of the live display
    storage: str | None = None  # Optuna storage URL; default sqlite:///<run_dir>/optuna.db
    num_cpus: int | None = None  # CPUs of the local Ray (default: all)
    num_gpus: int | None = None


@dataclass(frozen=True)
class Outcome:
    run_dir: Path
    finished: bool  # every configuration ended (completed, pruned, diverged or failed)
    counts: dict[str, int]
    best: dict[str, Any] | None


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
    from bnsweep.spec import SpecError, load_spec

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
        restore = _check_ray_state(run_dir)  # last: it may repair a torn snapshot
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
    from bnsweep.config import TrialConfig
    from bnsweep.data import load_data

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


def _check_ray_state(run_dir: Path) -> bool:
    """Whether Ray Tune's state in RUN_DIR/ray can restore the sweep (True), or nothing has run yet and
    the sweep starts afresh (False). A snapshot torn by a kill is replaced by the last atomic backup
    (progress.py); what cannot be repaired is named (``RunDirError``)."""
    from bnsweep.progress import BACKUP_DIR

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


# ------------------------------------------------------------------ internals


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _write_run_files(run_dir: Path, spec: Any, overrides: dict[str, Any], options: LaunchOptions) -> None:
    import yaml

    from bnsweep.accelerators import library_versions

    raw = dict(spec.raw)  # canonical: includes merged, command-line overrides already applied
    raw.pop("include", None)
    atomic_write_text(run_dir / "spec.yaml", yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    from bnsweep.spec import load_spec

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


def choose_packing(spec: Any, *, configurations: int, total_cpus: float, total_gpus: float = 0,
                   memory_bytes: int | None = None) -> tuple[int, float]:
    """(trials at once, CPUs per trial) for ``spec`` on a machine. The spec's ``max_concurrent`` and
    ``resources.cpu`` (or their flags) win; what it leaves unset is chosen for the machine: one trial per
    CPU (on 2 cores, two 1-thread trials trained 1.27× the images/s of one 2-thread trial:
    bench/RESULTS.md §4), no more than the GPUs and the memory hold or there are configurations, then
    every CPU shared out between them.

    >>> from bnsweep.spec import SweepSpec
    >>> spec = SweepSpec(name="s")  # max_concurrent and resources.cpu left out
    >>> choose_packing(spec, configurations=2, total_cpus=2), choose_packing(spec, configurations=1, total_cpus=2)
    ((2, 1), (1, 2))
    """
    from bnsweep.accelerators import default_concurrent_trials, default_cpus_per_trial

    configurations = max(1, configurations)
    concurrent = spec.max_concurrent
    if concurrent is None:
        concurrent = default_concurrent_trials(
            total_cpus=total_cpus, configurations=configurations, cpu=spec.resources.cpu,
            total_gpus=total_gpus, gpu=spec.resources.gpu, memory_bytes=memory_bytes)
    cpu = spec.resources.cpu
    if cpu is None:
        cpu = default_cpus_per_trial(total_cpus, concurrent=min(concurrent, configurations))
    return concurrent, cpu


def _packing(spec: Any, options: LaunchOptions, configurations: int) -> tuple[int, float]:
    """``choose_packing`` for the Ray this driver is connected to (its CPUs and GPUs; this machine's memory
    when Ray is local)."""
    import ray

    from bnsweep.accelerators import physical_memory_bytes

    cluster = ray.cluster_resources() if ray.is_initialized() else {}
    return choose_packing(spec, configurations=configurations,
                          total_cpus=cluster.get("CPU") or options.num_cpus or os.cpu_count() or 1,
                          total_gpus=cluster.get("GPU", 0),
                          memory_bytes=None if options.address else physical_memory_bytes())


def _data_is_fixed(spec: Any) -> bool:
    return not any(k == "data" or k.startswith("data.") for k in spec.parameters)


def _ray_env(run_dir: Path, spec: Any) -> dict[str, str]:
    backend = spec.base_trial_config().get("backend", "tensorflow")
    env = {
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # several trials per GPU (JAX)
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",  # several trials per GPU (TensorFlow)
        "KERAS_HOME": str(run_dir / ".cache" / "keras"),
        "MPLCONFIGDIR": str(run_dir / ".cache" / "matplotlib"),
        "WANDB_DIR": str(run_dir), "WANDB_CACHE_DIR": str(run_dir / ".cache" / "wandb"),
        "WANDB_CONFIG_DIR": str(run_dir / ".cache" / "wandb-config"),
        "WANDB_DATA_DIR": str(run_dir / ".cache" / "wandb-data"),
        "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
    }
    # WANDB_API_KEY is never put here: Ray keeps the runtime env in its job table, which the dashboard
    # shows and its logs print. A local Ray's workers inherit it from this process's environment; on a
    # cluster (--address), set it (or `wandb login`) on the nodes.
    from bnsweep.worker import TEST_FAULTS_ENV

    for key in ("BNSWEEP_DATA", "BNSWEEP_CACHE", "WANDB_MODE", "WANDB_BASE_URL", TEST_FAULTS_ENV):
        if key in os.environ:
            env[key] = os.environ[key]
    if "WANDB_API_KEY" not in os.environ:
        env.setdefault("WANDB_MODE", "offline")
    return env


def _start_ray(run_dir: Path, spec: Any, options: LaunchOptions, data_bytes: int) -> str | None:
    import ray

    if ray.is_initialized():  # an embedding program (or the test suite) already started Ray
        return None
    env = _ray_env(run_dir, spec)
    os.environ.update({k: v for k, v in env.items() if k.startswith("WANDB_")})
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                              "logging_level": "ERROR", "configure_logging": True}
    try:
        with interrupts.deferred("stopping once Ray has started"):  # a half-started Ray can crash on shutdown
            if options.address:
                ctx = ray.init(address=options.address, **kwargs)
            else:
                ctx = ray.init(
                    num_cpus=options.num_cpus, num_gpus=options.num_gpus,
                    include_dashboard=options.dashboard, dashboard_host=options.dashboard_host,
                    dashboard_port=_dashboard_port(options),
                    object_store_memory=max(100 << 20, 2 * data_bytes + (64 << 20)),  # data once + headroom
                    **kwargs)
        interrupts.reassert()  # Ray installs its own SIGTERM handler (a crash dump, exit 1)
    except (ConnectionError, ValueError, TimeoutError, RuntimeError) as e:
        with contextlib.suppress(Exception):
            ray.shutdown()
        where = f"--address {options.address}" if options.address else "the local Ray"
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise RunDirError(f"{where}: Ray did not start ({type(e).__name__}: {first})") from None
    return getattr(ctx, "dashboard_url", None) or None


def _dashboard_port(options: LaunchOptions) -> int:
    """The requested dashboard port, or a free one if it is taken (another sweep's Ray on this machine):
    Ray would otherwise log an error and run without its dashboard (or, with --no-dashboard, still log
    the error: its API server starts anyway)."""
    import socket

    host = options.dashboard_host if options.dashboard else "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, options.dashboard_port))
            return options.dashboard_port
        except OSError:
            pass
    try:
        with socket.socket(family) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    except OSError:  # not an address of this machine: let Ray say so
        return options.dashboard_port
    if options.dashboard:
        print(f"note: port {options.dashboard_port} is taken (another Ray?); the dashboard uses {port}",
              file=sys.stderr)
    return port


def _keep_credentials_out_of_ray_logs() -> None:
    """Ray Tune copies AWS credentials from the driver's environment into every trial actor's runtime env,
    which Ray's runtime-env agent then writes, in clear, to its log. A local Ray's workers inherit this
    process's environment anyway, so the copy only leaks them: stop it."""
    with contextlib.suppress(Exception):
        from ray.tune.execution import class_cache

        class_cache.ENV_VARS_TO_PROPAGATE.difference_update(
            {k for k in class_cache.ENV_VARS_TO_PROPAGATE if k.startswith("AWS_")})


def _make_search(spec: Any, storage_url: str) -> tuple[Any, int]:
    import optuna

    from bnsweep.space import count_configurations, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(
        storage_url, engine_kwargs={"connect_args": {"timeout": 30}} if storage_url.startswith("sqlite") else {})
    from bnsweep.searchers import ResumableOptunaSearch

    searcher = ResumableOptunaSearch(
        space=DefineByRun(spec), metric=spec.metric.name, mode=spec.metric.mode,
        sampler=make_sampler(spec), storage=storage, study_name=STUDY_NAME,
        max_configurations=count_configurations(spec))
    return searcher, count_configurations(spec)


class DefineByRun:
    """The Optuna define-by-run space (a class, not a closure: Ray pickles the searcher's state).

    Returns the fully resolved trial config (without the seed: each replicate sets its own) so the
    worker never re-derives it.
    """

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def __call__(self, trial: Any) -> dict[str, Any]:
        from bnsweep.space import resolve_trial_config, suggest

        resolved = resolve_trial_config(self.spec, suggest(trial, self.spec.parameters), seed=self.spec.seed)
        resolved.pop("seed", None)
        return {"resolved": resolved}


def _make_scheduler(spec: Any) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    s = spec.scheduler
    epochs = int(spec.base_trial_config().get("epochs", 160))
    if s.type == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=max(epochs, s.grace_period),
                             grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    if s.type == "median":
        return MedianStoppingRule(time_attr="epoch", grace_period=s.grace_period, min_samples_required=3)
    return FIFOScheduler()


_UNLOADED: Any = object()


def _run(run_dir: Path, spec: Any, *, options: LaunchOptions, restore: bool, data: Any = _UNLOADED,
         before_tuner: Any = None) -> Outcome:
    """Start Ray, build the search and run (or restore) the Tuner. ``before_tuner`` (launch: write the
    run files) is called once the data, the storage and Ray are ready, so bad input leaves no run files."""
    import ray
    from ray import tune

    from bnsweep.progress import SweepMonitor
    from bnsweep.rundir import pause_for_tests
    from bnsweep.searchers import trial_dirname
    from bnsweep.worker import train_configuration

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
        dashboard = _start_ray(run_dir, spec, options, data_bytes)
        if started_here and not options.address:
            _keep_credentials_out_of_ray_logs()
        searcher, n = _make_search(spec, storage_url)
        interrupts.raise_if_pending()
        if before_tuner is not None:
            before_tuner()
        info = read_sweep_json(run_dir)
        concurrent, cpus = _packing(spec, options, n)  # what the spec leaves unset fits the machine
        meta = {
            "run_dir": str(run_dir), "sweep": spec.name, "spec_hash": info["spec_hash"],
            "git_commit": info.get("git_commit"), "versions": info.get("versions", {}),
            "replicates": spec.replicates, "seed_base": spec.seed, "threads": max(1, math.floor(cpus)),
            "tracking": dict(spec.tracking),
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
                        scheduler=_make_scheduler(spec), num_samples=n, max_concurrent_trials=concurrent,
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
            from bnsweep.results import write_results_table

            try:
                table = write_results_table(run_dir)
            except Exception as e:  # never hide the exception that brought us here
                print(f"warning: could not write the results table: {e}", file=sys.stderr)
    finally:
        if started_here:
            ray.shutdown()
        _cleanup_ray_staging()
    finished = monitor.all_ended() or (monitor.none_unfinished()
                                       and _ended_configurations(storage_url) >= monitor.total)
    if finished:
        _fail_stale_optuna_trials(storage_url)
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
    from bnsweep.tracking import TrackingConfig, log_sweep_summary

    known = set(TrackingConfig.__dataclass_fields__)
    tracking = TrackingConfig(**{k: v for k, v in dict(spec.tracking).items() if k in known})
    tables = [p for p in (run_dir / "results.csv", run_dir / "history.csv") if p.exists()]
    plots = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []
    log_sweep_summary(tracking=tracking, run_dir=run_dir, sweep=spec.name, table_paths=tables, plot_paths=plots,
                      config=dict(spec.raw))


def _ended_configurations(storage_url: str) -> int:
    """Ended configurations per the Optuna study: after a resume these include trials that ended
    after Ray's last snapshot (kept on disk, unknown to the restored Ray)."""
    from bnsweep.searchers import ended_configurations

    try:
        return ended_configurations(storage_url, STUDY_NAME)
    except Exception:
        return 0


def _fail_stale_optuna_trials(storage_url: str) -> int:
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


def _cleanup_ray_staging() -> None:
    """Ray Tune leaves checkpoint staging folders in the temp dir after a kill (DESIGN.md)."""
    import tempfile

    for p in Path(tempfile.gettempdir()).glob("checkpoint_tmp_*"):
        shutil.rmtree(p, ignore_errors=True)


def close_unfinished_replicates(run_dir: Path, trial_id: str, resolved: dict[str, Any], *, seeds: list[int],
                                status: str, reason: str) -> int:
    """Write ``result.json`` for replicates that ended without one (pruned by the scheduler, or failed
    after its retries), from their last checkpoint. Returns how many were written."""
    from bnsweep.config import TrialConfig, config_hash
    from bnsweep.regimes import account
    from bnsweep.results import save_trial_record
    from bnsweep.trial import EpochMetrics, TrialResult
    from bnsweep.worker import trial_config_for

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

