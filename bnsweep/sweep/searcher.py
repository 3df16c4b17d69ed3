"""Ray Tune searcher adjustments (imports Ray; the driver imports this lazily)."""

from __future__ import annotations

import contextlib
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that survives ``kill -9`` + resume.

    The Optuna study (SQLite, written at once) can be ahead of Ray's last experiment snapshot:
    - a trial Optuna already closed may be run again by Ray: its reports are dropped instead of
      failing the driver with ``UpdateFinishedTrialError``;
    - a trial that ended after the snapshot is unknown to the restored Ray: the sweep's budget of
      ``max_configurations`` counts the study's ended trials, so it is not replaced by an extra one.
    """

    def __init__(self, *args: Any, max_configurations: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_configurations = max_configurations

    def ended_in_study(self) -> int:
        assert self._ot_study is not None, "the searcher is not set up yet"
        return sum(t.state in ENDED for t in self._ot_study.get_trials(deepcopy=False))

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]  # (Searcher.FINISHED)
        cap = getattr(self, "_max_configurations", None)  # absent in searchers pickled by older versions
        if cap is not None and trial_id not in self._ot_trials:
            live = sum(tid not in self._completed_trials for tid in self._ot_trials)
            if self.ended_in_study() + live >= cap:
                return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        with contextlib.suppress(UpdateFinishedTrialError):
            super().on_trial_result(trial_id, result)


def ended_configurations(storage_url: str, study_name: str) -> int:
    """Configurations of the sweep that ended (completed, pruned or failed), from the Optuna study."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    return sum(t.state in ENDED for t in study.get_trials(deepcopy=False))


def trial_dirname(trial: Any) -> str:
    """Ray Tune's per-trial folder: the trial id (the default embeds the config, paths included)."""
    return str(trial.trial_id)


def make_search(spec: Any, storage_url: str) -> tuple[Any, int]:
    import optuna

    from bnsweep.sweep.space import count_configurations, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(
        storage_url, engine_kwargs={"connect_args": {"timeout": 30}} if storage_url.startswith("sqlite") else {})
    from bnsweep.sweep.searcher import ResumableOptunaSearch

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
