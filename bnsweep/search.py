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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnsweep.rundir import RunDirError, RunLock, atomic_write_text, git_commit, now_iso, read_sweep_json, seed_dir

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
    """Run ``spec`` into a new run directory (refused if the directory already holds a sweep)."""
    run_dir = Path(options.run_dir or default_run_dir(spec)).resolve()
    if (run_dir / "sweep.json").exists():
        info = json.loads((run_dir / "sweep.json").read_text())
        raise RunDirError(
            f"{run_dir}: already holds sweep {info.get('name')!r} (started {info.get('created')}); "
            f"continue it with `bnsweep resume {_rel(run_dir)}`, or choose another --run-dir")
    with RunLock(run_dir):
        _write_run_files(run_dir, spec, overrides or {}, options)
        return _run(run_dir, spec, options=options, restore=False)


def resume(run_dir: Path, *, options: LaunchOptions) -> Outcome:
    """Continue the sweep in ``run_dir`` with the spec saved there."""
    from bnsweep.spec import load_spec

    run_dir = Path(run_dir).resolve()
    info = read_sweep_json(run_dir)
    spec_file = run_dir / "spec.yaml"
    with RunLock(run_dir):
        if not spec_file.is_file():
            raise RunDirError(f"{run_dir}: spec.yaml is missing; the run directory is damaged")
        spec = load_spec(spec_file)
        if spec.spec_hash() != info.get("spec_hash"):
            raise RunDirError(f"{spec_file}: changed since the sweep started (spec hash {spec.spec_hash()}, "
                              f"the sweep was started with {info.get('spec_hash')}); restore it or launch anew")
        options = dataclasses.replace(options, storage=options.storage or info.get("storage"))
        restore = (run_dir / "ray" / "tuner.pkl").exists()
        return _run(run_dir, spec, options=options, restore=restore)


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


def _threads(spec: Any) -> int:
    return max(1, math.floor(spec.resources.cpu))


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
    for key in ("BNSWEEP_DATA", "BNSWEEP_CACHE", "WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
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
    if options.address:
        ctx = ray.init(address=options.address, **kwargs)
    else:
        ctx = ray.init(
            num_cpus=options.num_cpus, num_gpus=options.num_gpus,
            include_dashboard=options.dashboard, dashboard_host=options.dashboard_host,
            dashboard_port=options.dashboard_port,
            object_store_memory=max(100 << 20, 2 * data_bytes + (64 << 20)),  # data once + headroom
            **kwargs)
    return getattr(ctx, "dashboard_url", None) or None


def _make_search(spec: Any, storage_url: str) -> tuple[Any, int]:
    import optuna

    from bnsweep.space import count_configurations, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(
        storage_url, engine_kwargs={"connect_args": {"timeout": 30}} if storage_url.startswith("sqlite") else {})
    from bnsweep.searchers import ResumableOptunaSearch

    searcher = ResumableOptunaSearch(
        space=DefineByRun(spec), metric=spec.metric.name, mode=spec.metric.mode,
        sampler=make_sampler(spec), storage=storage, study_name=STUDY_NAME)
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


def _run(run_dir: Path, spec: Any, *, options: LaunchOptions, restore: bool) -> Outcome:
    import ray
    from ray import tune

    from bnsweep.config import DataConfig, TrialConfig
    from bnsweep.data import load_data
    from bnsweep.progress import SweepMonitor
    from bnsweep.searchers import trial_dirname
    from bnsweep.worker import train_configuration

    info = read_sweep_json(run_dir)
    base = TrialConfig.from_dict(spec.base_trial_config()) if _data_is_fixed(spec) else None
    data = load_data(base.data if base else DataConfig()) if base else None  # once per sweep
    data_bytes = 0 if data is None else sum(a.nbytes for a in (data.x_train, data.x_val, data.x_test) if a is not None)
    storage_url = _storage_url(run_dir, options, spec)
    searcher, n = _make_search(spec, storage_url)
    meta = {
        "run_dir": str(run_dir), "sweep": spec.name, "spec_hash": info["spec_hash"],
        "git_commit": info.get("git_commit"), "versions": info.get("versions", {}),
        "replicates": spec.replicates, "seed_base": spec.seed, "threads": _threads(spec),
        "tracking": dict(spec.tracking),
    }
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress display instead of Ray's tables
    started_here = not ray.is_initialized()
    dashboard = _start_ray(run_dir, spec, options, data_bytes)
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if spec.resources.tpu:
        resources["TPU"] = spec.resources.tpu
    trainable = tune.with_resources(tune.with_parameters(train_configuration, meta=meta, data=data), resources)
    monitor = SweepMonitor(run_dir=run_dir, total=n, replicates=spec.replicates, metric=spec.metric.name,
                           mode=spec.metric.mode, quiet=options.quiet, seed_base=spec.seed)
    monitor.announce(spec=spec, dashboard=dashboard, restored=restore)
    try:
        if restore:
            tuner = tune.Tuner.restore(str(run_dir / "ray"), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True, restart_errored=False)
            # callbacks are not part of the restored state: re-attach ours
            tuner._local_tuner._run_config.callbacks = [monitor]
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    metric=spec.metric.name, mode=spec.metric.mode, search_alg=searcher,
                    scheduler=_make_scheduler(spec), num_samples=n, max_concurrent_trials=spec.max_concurrent,
                    reuse_actors=True,  # a worker keeps TF/JAX imported between trials
                    trial_dirname_creator=trial_dirname),
                run_config=tune.RunConfig(
                    name="ray", storage_path=str(run_dir), verbose=0, callbacks=[monitor],
                    failure_config=tune.FailureConfig(max_failures=spec.retries)),
            )
        tuner.fit()
    finally:
        from bnsweep.results import write_results_table

        write_results_table(run_dir)
        if started_here:
            ray.shutdown()
        _cleanup_ray_staging()
    finished = monitor.all_ended()
    if finished:
        _fail_stale_optuna_trials(storage_url)
        _log_summary(run_dir, spec)
    outcome = Outcome(run_dir=run_dir, finished=finished, counts=monitor.counts(), best=monitor.best())
    monitor.close(outcome)
    return outcome


def _log_summary(run_dir: Path, spec: Any) -> None:
    """The sweep's W&B summary run: results tables and any plots made so far (never raises)."""
    from bnsweep.tracking import TrackingConfig, log_sweep_summary

    known = set(TrackingConfig.__dataclass_fields__)
    tracking = TrackingConfig(**{k: v for k, v in dict(spec.tracking).items() if k in known})
    tables = [p for p in (run_dir / "results.csv", run_dir / "history.csv") if p.exists()]
    plots = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []
    log_sweep_summary(tracking=tracking, run_dir=run_dir, sweep=spec.name, table_paths=tables, plot_paths=plots,
                      config=dict(spec.raw))


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
        save_trial_record(run_dir, trial_id=trial_id, seed=seed, replicate=i, result=result, net=None,
                          meta={k: info.get(k) for k in ("spec_hash", "git_commit", "versions")}
                          | {"sweep": info.get("name"), "started_at": None})
        written += 1
    return written

