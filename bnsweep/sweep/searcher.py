"""Ray Tune searcher adjustments (imports Ray; the driver imports this lazily)."""

from __future__ import annotations

import contextlib
import pickle
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from bnsweep.sweep.ray_compat import (
    optuna_search_reattach,
    optuna_search_state,
    optuna_trial_storage_id,
    searcher_handed_trial_ids,
    searcher_live_trials,
    searcher_study,
)

ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# user attribute of an Optuna trial a driver left RUNNING when it died before Ray knew the trial (it never
# trained): told FAIL with this reason, it is not one of the sweep's configurations
INTERRUPTED_KEY = "bnsweep_interrupted"


def counts_as_configuration(trial: Any) -> bool:
    """Whether an Optuna trial is one of the sweep's ended configurations (completed, pruned or failed by
    its own code), not one a dead driver interrupted before it trained."""
    return trial.state in ENDED and not trial.user_attrs.get(INTERRUPTED_KEY)


def fail_interrupted(study: Any, trial: Any, reason: str) -> None:
    """Tell a RUNNING Optuna trial FAIL as interrupted (``INTERRUPTED_KEY``), through Optuna's public API.

    >>> import optuna
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> study = optuna.create_study()
    >>> t = study.ask()
    >>> fail_interrupted(study, study.trials[0], "its driver died")
    >>> [(u.state.name, counts_as_configuration(u)) for u in study.trials]
    [('FAIL', False)]
    """
    import optuna

    optuna.trial.Trial(study, optuna_trial_storage_id(trial)).set_user_attr(INTERRUPTED_KEY, reason)
    study.tell(trial.number, state=TrialState.FAIL)


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that survives ``kill -9`` + resume.

    The Optuna study (SQLite, written at once) can be ahead of Ray's last experiment snapshot:
    - a trial Optuna already closed may be run again by Ray: its reports are dropped instead of
      failing the driver with ``UpdateFinishedTrialError``;
    - a trial that ended after the snapshot is unknown to the restored Ray: the sweep's budget of
      ``max_configurations`` counts the study's ended trials, so it is not replaced by an extra one;
    - the pickled searcher (``tuner.pkl``, ``searcher-state-*.pkl``) holds no storage: on restore it
      reconnects to the storage this driver uses (``use_storage``), so a run directory resumed from a
      fresh machine, whose local copy of the Optuna SQLite file is elsewhere, continues its study;
    - a trial whose code failed (its final result carries ``bnsweep_failed``) is a FAIL in Optuna;
    - an Optuna trial left RUNNING that the restored Ray does not know (the driver died between asking
      Optuna and Ray's snapshot: it never trained) is told FAIL as interrupted before the first new
      suggestion, so a grid point it held is free again and it is not counted as a configuration.
    """

    def __init__(self, *args: Any, max_configurations: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_configurations = max_configurations

    def ended_in_study(self) -> int:
        study = searcher_study(self)
        assert study is not None, "the searcher is not set up yet"
        return sum(counts_as_configuration(t) for t in study.get_trials(deepcopy=False))

    def close_orphans(self) -> int:
        """Tell FAIL (interrupted) every RUNNING Optuna trial this searcher has not handed to Ray; their count."""
        study = searcher_study(self)
        if study is None:
            return 0
        handed = searcher_handed_trial_ids(self)
        orphans = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if optuna_trial_storage_id(t) not in handed]
        for t in orphans:
            fail_interrupted(study, t, "its driver died before Ray knew the trial; it never trained")
        return len(orphans)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]  # (Searcher.FINISHED)
        if not getattr(self, "_orphans_closed", False):  # once per driver: Ray's restored state is in by now
            self.close_orphans()
            self._orphans_closed = True
        cap = getattr(self, "_max_configurations", None)  # absent in searchers pickled by older versions
        handed, completed = searcher_live_trials(self)
        if cap is not None and trial_id not in handed:
            live = len(handed - completed)
            if self.ended_in_study() + live >= cap:
                return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        with contextlib.suppress(UpdateFinishedTrialError):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if result and result.get(FAILED_KEY):
            result, error = None, True  # its code failed after its retries: FAIL, not the last metric
        super().on_trial_complete(trial_id, result=result, error=error)

    # the pickled state is independent of where the Optuna storage is (see the class docstring)
    def __getstate__(self) -> dict[str, Any]:
        state = optuna_search_state(self.__dict__)
        state.pop("_orphans_closed", None)  # a restoring driver closes the orphans its predecessor left
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(optuna_search_reattach(state, _current_storage()))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:  # Ray's own temporary file, renamed by Ray (not the run dir)
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.__dict__.update(optuna_search_reattach(state, _current_storage()))


FAILED_KEY = "bnsweep_failed"  # in a trial's final result: its code failed (the value is the reason)

_STORAGE: dict[str, Any] = {}


def use_storage(url: str) -> Any:
    """Make ``url`` the Optuna storage every searcher restored in this process reconnects to."""
    import optuna

    _STORAGE["url"] = url
    _STORAGE["storage"] = optuna.storages.RDBStorage(url, **optuna_storage_kwargs(url))
    return _STORAGE["storage"]


def _current_storage() -> Any:
    return _STORAGE.get("storage")


def optuna_storage_kwargs(url: str) -> dict[str, Any]:
    """SQLite: wait up to 30 s for a lock instead of failing at once."""
    return {"engine_kwargs": {"connect_args": {"timeout": 30}}} if url.startswith("sqlite") else {}


def ended_configurations(storage_url: str, study_name: str) -> int:
    """Configurations of the sweep that ended (completed, pruned or failed), from the Optuna study."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=_current_storage() if _STORAGE.get("url") == storage_url
                              else storage_url)
    return sum(counts_as_configuration(t) for t in study.get_trials(deepcopy=False))


def trial_dirname(trial: Any) -> str:
    """Ray Tune's per-trial folder: the trial id (the default embeds the config, paths included)."""
    return str(trial.trial_id)


def make_search(spec: Any, storage_url: str) -> tuple[Any, int]:
    import optuna

    from bnsweep.sweep.space import count_configurations, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = use_storage(storage_url)
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
        from bnsweep.sweep.space import resolve_trial_config, suggest

        resolved = resolve_trial_config(self.spec, suggest(trial, self.spec.parameters), seed=self.spec.seed)
        resolved.pop("seed", None)
        return {"resolved": resolved}


def make_scheduler(spec: Any) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    s = spec.scheduler
    epochs = int(spec.base_trial_config().get("epochs", 160))
    if s.type == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=max(epochs, s.grace_period),
                             grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    if s.type == "median":
        return MedianStoppingRule(time_attr="epoch", grace_period=s.grace_period, min_samples_required=3)
    return FIFOScheduler()


STUDY_NAME = "bnsweep"
