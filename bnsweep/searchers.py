"""Ray Tune searcher adjustments (imports Ray; the driver imports this lazily)."""

from __future__ import annotations

import contextlib
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that survives ``kill -9`` + resume.

    The Optuna study (SQLite, written at once) can be ahead of Ray's last experiment snapshot: a
    trial Optuna already closed is then run again by Ray, and its reports must be dropped instead of
    failing the driver with ``UpdateFinishedTrialError``.
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        with contextlib.suppress(UpdateFinishedTrialError):
            super().on_trial_result(trial_id, result)


def trial_dirname(trial: Any) -> str:
    """Ray Tune's per-trial folder: the trial id (the default embeds the config, paths included)."""
    return str(trial.trial_id)
