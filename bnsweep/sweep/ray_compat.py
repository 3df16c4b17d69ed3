"""Every private access to Ray Tune and Optuna, in one place, each with why (tests/test_ray_compat.py
fails loudly when an upgrade breaks one).

bnsweep needs a few things the libraries offer no public API for: forcing Ray Tune to write its
experiment state now (so a driver killed a second later resumes from what it knew), re-attaching
callbacks to a restored Tuner (``Tuner.restore`` takes none; the pickled ones would run), keeping AWS
credentials out of a local Ray's logs, an ``OptunaSearch`` whose pickled state survives the Optuna
SQLite file moving to another path (a fresh head machine with an empty cache), and, for the pre-flight
and joining a cluster, Ray's own view of this machine and of an autoscaler, and a quick question to a
cluster's GCS. The callers of the last group fall back to a plainer answer when a seam is gone, so only
the tests notice an upgrade that breaks one. Public APIs are used
wherever they exist (``study.tell(..., state=FAIL)`` for stale RUNNING trials, ``Trial.checkpoint``,
``Trial.error_file``, ``tune.get_checkpoint``).

>>> isinstance(ENV_VARS_TO_STRIP_PREFIX, str)
True
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any

ENV_VARS_TO_STRIP_PREFIX = "AWS_"


# ============================================================================ Ray Tune


def tune_controller_from_stack(depth: int = 12) -> Any:
    """The Ray Tune ``TuneController`` calling the current callback hook, or None.

    Why: Ray hands callbacks no reference to the controller, and only the controller can force an
    experiment-state snapshot (``checkpoint(force=True, wait=True)``). It is the ``self`` of a caller a
    few frames up; recognised by its attributes, not its class name."""
    f: Any = sys._getframe(1)
    for _ in range(depth):
        if f is None:
            break
        obj = f.f_locals.get("self")
        if obj is not None and hasattr(obj, "_checkpoint_manager") and callable(getattr(obj, "checkpoint", None)) \
                and hasattr(obj, "experiment_state_file_name"):
            return obj
        f = f.f_back
    return None


def sigint_handler() -> Any:
    """The SIGINT handler installed now (pass it to ``tune_took_sigint`` after ``tuner.fit``)."""
    return signal.getsignal(signal.SIGINT)


def tune_took_sigint(before: Any) -> bool:
    """Whether Ray Tune's loop ended because *its* SIGINT handler took a Ctrl-C (``before``: the handler
    installed just before ``tuner.fit``, ``sigint_handler()``).

    Why: Tune tells no caller. ``ray.tune.tune._setup_signal_catching`` installs Tune's handler at the start
    of a run (main thread, unless ``TUNE_DISABLE_SIGINT_HANDLER``); on a Ctrl-C it sets an event that ends
    the loop and puts back the handler it found; it never puts it back otherwise. So ``before`` installed
    again after the run means Tune took a Ctrl-C. (A sweep whose loop ended with work left and no Ctrl-C
    is not "interrupted": the CLI exits 3 then, not 130.)"""
    if threading.current_thread() is not threading.main_thread():
        return False
    if os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0").strip() not in ("", "0"):
        return False  # Tune installed none: our own handler took any Ctrl-C and said so
    return signal.getsignal(signal.SIGINT) is before


def snapshot_experiment(controller: Any) -> None:
    """Make Ray Tune write (and upload to the run's storage) its experiment state now, and wait for it.

    Why: Tune syncs its state at most every ~10 s; a trial restored after a driver crash resumes from
    the checkpoint the state knew, so bnsweep snapshots at every trial start and after every checkpoint."""
    controller.checkpoint(force=True, wait=True)


def experiment_staging(controller: Any) -> tuple[str, str]:
    """(the driver's staging directory of Ray's experiment state, the state file's name).

    Why: a local run directory keeps an atomic backup of the last snapshot (Ray copies it into the run
    directory non-atomically; resume repairs a torn copy from the backup)."""
    return str(controller._storage.experiment_driver_staging_path), str(controller.experiment_state_file_name)


def fail_hung_trial(controller: Any, trial: Any, reason: str) -> bool:
    """Fail a RUNNING trial whose worker hangs, with ``reason`` as its error, and kill its actor: Ray Tune then
    retries it from its last checkpoint as it does a dead worker (``FailureConfig.max_failures``), or, those
    retries spent, ends it ERROR. Returns whether it is retried.

    Why: Ray Tune has no public way to fail a trial from the driver. ``TuneController._process_trial_failure``
    is what Ray itself calls for a dead worker: it appends ``reason`` to the trial's error file, counts the
    failure, and retries or ends the trial; its stop of the actor is graceful (a ``stop`` call queued behind the
    hung epoch, force-killed only after ``TUNE_FORCE_TRIAL_CLEANUP_S``, 600 s, holding the trial's CPUs/GPUs
    meanwhile), so the actor is also killed at once (``ray.kill``, public) and its resources freed for the retry."""
    import ray
    from ray.tune.error import TuneError

    actor = trial.temporary_state.ray_actor  # (set to None by the stop below)
    retried = trial.max_failures < 0 or trial.num_failures + 1 <= trial.max_failures
    controller._process_trial_failure(trial, exception=TuneError(reason))
    if actor is not None:
        with contextlib.suppress(Exception):  # already dead: nothing to free
            ray.kill(actor)
    return retried


def newest_checkpoint(trial: Any) -> Any:
    """The newest checkpoint of ``trial`` in the run's storage (a ``tune.Checkpoint``), or None.

    Why: ``Trial.checkpoint`` can still name the previous one when Ray reports a trial complete (a restored
    trial whose function reports once and returns at once: both arrive together), and records made from
    that stale checkpoint would be wrong. A trial's checkpoints are the ``checkpoint_NNNNNN`` folders of
    its storage directory (``Trial.storage``: Ray's StorageContext), uploaded by the worker before the
    result that names them reaches the driver."""
    from pyarrow import fs as pafs
    from ray import tune

    storage = trial.storage
    fs = storage.storage_filesystem
    infos = fs.get_file_info(pafs.FileSelector(storage.trial_fs_path, allow_not_found=True))
    names = sorted(i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_"))
    return tune.Checkpoint(path=names[-1], filesystem=fs) if names else None


def set_restored_callbacks(tuner: Any, callbacks: list[Any]) -> None:
    """Replace the callbacks of a Tuner made by ``Tuner.restore``.

    Why: ``Tuner.restore`` has no ``run_config``/``callbacks`` argument and brings back the callbacks
    pickled in ``tuner.pkl`` at launch (with the launching driver's state and paths)."""
    tuner._local_tuner._run_config.callbacks = list(callbacks)


def stop_propagating_aws_env() -> None:
    """Stop Ray Tune copying ``AWS_*`` variables from the driver into every trial actor's runtime env.

    Why: Ray's runtime-env agent writes that env, credentials included, to its log in clear. A local
    Ray's workers inherit this process's environment anyway; on a cluster the nodes have their own."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(
        {k for k in class_cache.ENV_VARS_TO_PROPAGATE if k.startswith(ENV_VARS_TO_STRIP_PREFIX)})


# ============================================================================ Ray core (pre-flight, joining)


def local_resources(*, num_cpus: int | None, num_gpus: int | None) -> tuple[dict[str, Any], dict[str, str]]:
    """(resources, labels) of this machine as a local ``ray.init(num_cpus=, num_gpus=)`` would register them.

    Why: the pre-flight plans a local sweep before Ray starts; Ray's own detection (cgroup CPU limits,
    NVIDIA/AMD/Intel GPUs, TPUs, memory) is ``ResourceAndLabelSpec``, which is not public. Raises if it moved
    (the caller then counts what the standard library sees)."""
    from ray._private.resource_and_label_spec import ResourceAndLabelSpec

    spec = ResourceAndLabelSpec(num_cpus=num_cpus, num_gpus=num_gpus).resolve(is_head=True)
    return dict(spec.to_resource_dict()), dict(spec.labels or {})


def autoscaler_cluster_config() -> Any:
    """The autoscaler's node groups (a ``ClusterConfig`` message; None where none is reported).

    Why: which nodes an autoscaler (v2, KubeRay) can still start is only in Ray's private global state
    (Ray Train reads it the same way). Needs a connected Ray; raises if the accessor moved."""
    from ray._private.state import state

    return state.get_cluster_config()


def reload_ray_config() -> None:
    """Make an imported Ray read its configuration from the environment again.

    Why: Ray caches ``RAY_AUTH_MODE`` and the like when ``ray._raylet`` is first imported; bnsweep sets the
    auth mode after a token is found, possibly after that import."""
    from ray._raylet import Config  # type: ignore[attr-defined]

    Config.initialize("")


def bootstrap_address(address: str) -> str | None:
    """The GCS address ``address`` (``auto``: the cluster started on this machine) stands for, or None.

    Why: ``ray.init`` resolves it only while connecting; the driver asks the GCS first (``probe_gcs``)."""
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(address)


def probe_gcs(address: str, *, timeout_s: float) -> None:
    """Connect once to the GCS at ``address`` (HOST:PORT) and return; raise what Ray raises when it refuses
    (an authentication error names itself) or cannot be reached; ``ImportError`` if the client moved.

    Why: ``ray.init`` against a cluster that refuses the token retries for ~20 s and ends in a traceback;
    this asks once, in ``timeout_s``, so the driver can say in one line what to set."""
    from ray._raylet import InnerGcsClient  # type: ignore[attr-defined]

    InnerGcsClient.standalone(address, None, int(timeout_s * 1000))


# ============================================================================ OptunaSearch


def searcher_study(searcher: Any) -> Any:
    """The ``optuna.Study`` inside an ``OptunaSearch`` (None before it is set up).

    Why: the searcher caps the sweep by the study's ended trials (a kill -9 can leave the study ahead
    of Ray's snapshot)."""
    return searcher._ot_study


def searcher_live_trials(searcher: Any) -> tuple[set[str], set[str]]:
    """(Ray trial ids the searcher has handed out, those it has seen complete)."""
    return set(searcher._ot_trials), set(searcher._completed_trials)


def optuna_trial_storage_id(trial: Any) -> int:
    """The storage id of an Optuna ``Trial`` or ``FrozenTrial`` (``_trial_id``; not its ``number``).

    Why: a trial's user attributes are set by storage id, and ``OptunaSearch`` maps Ray's trials to them."""
    return int(trial._trial_id)


def searcher_handed_trial_ids(searcher: Any) -> set[int]:
    """Optuna's storage ids of the trials an ``OptunaSearch`` has handed to Ray (``_ot_trials``).

    Why: an Optuna trial left RUNNING that is not among them was never known to the restored Ray."""
    return {optuna_trial_storage_id(t) for t in searcher._ot_trials.values()}


def optuna_search_state(state: dict[str, Any]) -> dict[str, Any]:
    """An ``OptunaSearch.__dict__`` made independent of where its storage is: the storage, the study
    and the per-trial Optuna ``Trial`` objects (which hold the storage) replaced by references.

    Why: the pickled ``RDBStorage`` reconnects to the SQLite path it was created with when unpickled;
    a run directory resumed on another machine has its study in another local path."""
    out = dict(state)
    study = state.get("_ot_study")
    out["_ot_study"] = None
    out["_storage"] = None
    out["_bnsweep_study_name"] = getattr(study, "study_name", None) or state.get("_study_name")
    out["_ot_trials"] = {tid: int(t._trial_id) for tid, t in (state.get("_ot_trials") or {}).items()}
    return out


def optuna_search_reattach(state: dict[str, Any], storage: Any) -> dict[str, Any]:
    """The inverse of ``optuna_search_state`` with the storage this driver uses now."""
    import optuna

    out = dict(state)
    name = out.pop("_bnsweep_study_name", None) or out.get("_study_name")
    if storage is None or name is None:
        return out
    study = optuna.load_study(study_name=name, storage=storage, sampler=out.get("_sampler"),
                              pruner=optuna.pruners.NopPruner())
    out["_storage"] = storage
    out["_ot_study"] = study
    trials = {}
    for tid, internal in (out.get("_ot_trials") or {}).items():
        try:
            trials[tid] = optuna.trial.Trial(study, int(internal))
        except KeyError:  # asked after the study's last copy reached the store: a new Optuna trial stands in
            trials[tid] = study.ask()  # (without its parameters; it counts as the configuration it is)
    out["_ot_trials"] = trials
    return out
