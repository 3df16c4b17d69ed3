"""A ``SweepSpec``'s parameters as an Optuna define-by-run search space, and as a grid.

``suggest(trial, spec.parameters)`` samples one configuration as flat dotted trial-config keys
(``lr_schedule.type``, as ``config.flatten`` writes every section). Optuna sees each ``one_of``
as a categorical (``lr_schedule``) plus distinct conditional parameters per option
(``lr_schedule.cosine.warmup_epochs``), so TPE models each option's parameters separately.

For ``method: grid``, ``make_sampler`` returns a ``GridPointSampler`` that hands the study the grid
points of ``grid_points`` one per trial, in order (Optuna's own ``GridSampler`` takes a cartesian
product over every parameter name, which would repeat points for conditional parameters). So the
orchestrator treats every method the same way: ``OptunaSearch(space=lambda t: suggest(t, params),
sampler=make_sampler(spec))``.

>>> import optuna
>>> from bnsweep.spec.sweep_spec import parse_spec_text
>>> spec = parse_spec_text('''
... name: demo
... method: grid
... fixed: {model: {depth: 8}, epochs: 2}
... parameters:
...   batch_size: {values: [64, 128]}
...   lr_schedule: {one_of: {constant: {}, cosine: {warmup_epochs: {values: [0, 1]}}}}
... ''')
>>> grid_size(spec.parameters), count_configurations(spec)
(6, 6)
>>> grid_points(spec.parameters)[1]
{'batch_size': 64, 'lr_schedule.type': 'cosine', 'lr_schedule.warmup_epochs': 0}
>>> optuna.logging.set_verbosity(optuna.logging.WARNING)
>>> study = optuna.create_study(sampler=make_sampler(spec))
>>> suggest(study.ask(), spec.parameters)
{'batch_size': 64, 'lr_schedule.type': 'constant'}
>>> cfg = resolve_trial_config(spec, grid_points(spec.parameters)[2], seed=3)
>>> cfg["seed"], cfg["batch_size"], cfg["lr_schedule"]["type"], cfg["lr_schedule"]["warmup_epochs"]
(3, 64, 'cosine', 1)
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, CmaEsSampler, RandomSampler, TPESampler
from optuna.study import Study
from optuna.trial import BaseTrial, FrozenTrial, TrialState

from bnsweep.spec.config import TrialConfig
from bnsweep.spec.sweep_spec import (
    Constant,
    Distribution,
    OneOf,
    Param,
    SweepSpec,
    Values,
    merge_config,
    one_of_layout,
)
from bnsweep.spec.sweep_spec import grid_size as _grid_size

__all__ = [
    "GridPointSampler",
    "count_configurations",
    "grid_optuna_params",
    "grid_points",
    "grid_size",
    "make_sampler",
    "resolve_trial_config",
    "suggest",
]

_PRIMITIVE = (type(None), bool, int, float, str)


def _choices(values: Sequence[Any]) -> tuple[list[Any], bool]:
    """Optuna categorical choices for ``values``: as-is when all are None/bool/int/float/str, else
    their JSON text (lists such as milestones, mappings), which Optuna can store."""
    if all(isinstance(v, _PRIMITIVE) for v in values):
        return list(values), False
    return [json.dumps(v, sort_keys=True, default=str) for v in values], True


def _suggest_into(trial: BaseTrial, parameters: Mapping[str, Param], *, key_prefix: str, name_prefix: str,
                  out: dict[str, Any]) -> None:
    for rel, p in parameters.items():
        key, name = key_prefix + rel, name_prefix + rel
        if isinstance(p, Constant):
            out[key] = copy.deepcopy(p.value)
        elif isinstance(p, Values):
            choices, encoded = _choices(p.values)
            chosen = trial.suggest_categorical(name, choices)
            out[key] = copy.deepcopy(p.values[choices.index(chosen)]) if encoded else chosen
        elif isinstance(p, Distribution):
            if p.integer:
                out[key] = trial.suggest_int(name, int(p.min), int(p.max), step=int(p.step or 1), log=p.log)
            else:
                out[key] = trial.suggest_float(name, float(p.min), float(p.max), step=p.step, log=p.log)
        elif isinstance(p, OneOf):
            option = trial.suggest_categorical(name, list(p.options))
            selector, prefix = one_of_layout(key)
            if selector:
                out[selector] = option
            _suggest_into(trial, p.options[option], key_prefix=prefix, name_prefix=f"{name}.{option}.", out=out)
        else:  # pragma: no cover - SweepSpec validates parameter types
            raise TypeError(f"{key}: not a parameter: {p!r}")


def suggest(trial: BaseTrial, parameters: Mapping[str, Param]) -> dict[str, Any]:
    """Sample one configuration (define-by-run): flat dotted keys.

    >>> import optuna
    >>> from bnsweep.spec.sweep_spec import OneOf, Values
    >>> trial = optuna.trial.FixedTrial({"lr_schedule": "cosine", "lr_schedule.cosine.warmup_epochs": 5})
    >>> suggest(trial, {"lr_schedule": OneOf(options={"constant": {}, "cosine": {"warmup_epochs": Values(
    ...     values=(0, 5))}})})
    {'lr_schedule.type': 'cosine', 'lr_schedule.warmup_epochs': 5}
    """
    out: dict[str, Any] = {}
    _suggest_into(trial, parameters, key_prefix="", name_prefix="", out=out)
    return out


# ---------------------------------------------------------------- grids


def _iter_grid(parameters: Mapping[str, Param], *, key_prefix: str, name_prefix: str
               ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(flat config values, Optuna params) for every grid point, in order."""
    axes: list[list[tuple[dict[str, Any], dict[str, Any]]]] = []
    for rel, p in parameters.items():
        key, name = key_prefix + rel, name_prefix + rel
        if isinstance(p, Constant):
            axes.append([({key: p.value}, {})])
        elif isinstance(p, Values):
            choices, _ = _choices(p.values)
            axes.append([({key: v}, {name: c}) for v, c in zip(p.values, choices, strict=True)])
        elif isinstance(p, OneOf):
            selector, prefix = one_of_layout(key)
            axis = []
            for option, opt in p.options.items():
                head = {selector: option} if selector else {}
                for sub_values, sub_names in _iter_grid(opt, key_prefix=prefix, name_prefix=f"{name}.{option}."):
                    axis.append(({**head, **sub_values}, {name: option, **sub_names}))
            axes.append(axis)
        else:
            raise ValueError(f"{key}: a grid needs {{values: [...]}} or a constant, not a distribution")
    for combo in itertools.product(*axes):
        values: dict[str, Any] = {}
        names: dict[str, Any] = {}
        for v, n in combo:
            values.update(v)
            names.update(n)
        yield values, names


def grid_points(parameters: Mapping[str, Param], *, limit: int | None = None) -> list[dict[str, Any]]:
    """Every grid point (``one_of`` options expanded), in the same flat form as ``suggest``; the first
    ``limit`` if given. ``ValueError`` for a continuous distribution.

    >>> from bnsweep.spec.sweep_spec import Values
    >>> grid_points({"batch_size": Values(values=(64, 128)), "lr": Values(values=(0.1,))})
    [{'batch_size': 64, 'lr': 0.1}, {'batch_size': 128, 'lr': 0.1}]
    """
    points = itertools.islice(_iter_grid(parameters, key_prefix="", name_prefix=""), limit)
    return [copy.deepcopy(values) for values, _ in points]


def grid_optuna_params(parameters: Mapping[str, Param], *, limit: int | None = None) -> list[dict[str, Any]]:
    """The Optuna parameters ``suggest`` records for each grid point (e.g. for ``study.enqueue_trial``).

    >>> from bnsweep.spec.sweep_spec import OneOf, Values
    >>> grid_optuna_params({"lr_schedule": OneOf(options={"constant": {}, "step": {"gamma": Values(values=(0.1,))}})})
    [{'lr_schedule': 'constant'}, {'lr_schedule': 'step', 'lr_schedule.step.gamma': 0.1}]
    """
    points = itertools.islice(_iter_grid(parameters, key_prefix="", name_prefix=""), limit)
    return [names for _, names in points]


def grid_size(parameters: Mapping[str, Param]) -> int:
    """Number of grid points; ``ValueError`` for a continuous distribution."""
    return _grid_size(parameters)


def count_configurations(spec: SweepSpec) -> int:
    """Configurations the sweep samples (each runs ``spec.replicates`` seeds): for a grid, the grid size
    capped by ``trials``; otherwise ``trials``."""
    if spec.method == "grid":
        return min(spec.trials, grid_size(spec.parameters))
    return spec.trials


# ---------------------------------------------------------------- samplers


class GridPointSampler(BaseSampler):
    """Gives trial ``n`` grid point ``n`` (an explicit list of Optuna params, so no repeated points for
    conditional parameters); after the list, a point no finished or running trial has, else wraps.

    >>> import optuna
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> study = optuna.create_study(sampler=GridPointSampler([{"x": 1}, {"x": 2}]))
    >>> [study.ask().suggest_categorical("x", [1, 2]) for _ in range(3)]
    [1, 2, 1]
    """

    def __init__(self, points: Sequence[Mapping[str, Any]], *, seed: int | None = None) -> None:
        if not points:
            raise ValueError("GridPointSampler needs at least one point")
        self._points = [dict(p) for p in points]
        self._assigned: dict[int, int] = {}
        self._fallback = RandomSampler(seed=seed)

    @property
    def points(self) -> list[dict[str, Any]]:
        return [dict(p) for p in self._points]

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
                        ) -> dict[str, Any]:
        return {}

    def _index(self, study: Study, trial: FrozenTrial) -> int:
        if trial.number not in self._assigned:
            if trial.number < len(self._points):
                index = trial.number
            else:
                states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)
                taken = [t.params for t in study.get_trials(deepcopy=False, states=states)
                         if t.number != trial.number]
                free = [i for i, p in enumerate(self._points) if p not in taken]
                index = free[0] if free else trial.number % len(self._points)
            self._assigned[trial.number] = index
        return self._assigned[trial.number]

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        point = self._points[self._index(study, trial)]
        if param_name in point:
            return point[param_name]
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()


def make_sampler(spec: SweepSpec) -> BaseSampler:
    """The Optuna sampler for ``spec.method``, seeded with ``spec.seed``.

    tpe: multivariate TPE with ``group=True`` (models each ``one_of`` option's parameters together);
    random; cmaes: CMA-ES for the numeric parameters, TPE for categorical/conditional ones (needs the
    ``cmaes`` package); grid: ``GridPointSampler`` over the first ``count_configurations(spec)`` points.
    """
    if spec.method == "grid":
        return GridPointSampler(grid_optuna_params(spec.parameters, limit=count_configurations(spec)),
                                seed=spec.seed)
    if spec.method == "random":
        return RandomSampler(seed=spec.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        tpe = TPESampler(seed=spec.seed, multivariate=True, group=True, constant_liar=True)
        if spec.method == "tpe":
            return tpe
        if spec.method == "cmaes":
            if importlib.util.find_spec("cmaes") is None:
                raise RuntimeError("method cmaes needs the `cmaes` package (pip install cmaes)")
            return CmaEsSampler(seed=spec.seed, independent_sampler=tpe, warn_independent_sampling=False)
    raise ValueError(f"unknown method {spec.method!r}")


# ---------------------------------------------------------------- trial configs


def resolve_trial_config(spec: SweepSpec, sampled: Mapping[str, Any], *, seed: int) -> dict[str, Any]:
    """``spec.fixed`` + ``sampled`` + ``seed`` -> the nested trial config (``TrialConfig.to_dict()``);
    raises ``config.ConfigError`` if the combination is invalid.

    >>> from bnsweep.spec.sweep_spec import SweepSpec
    >>> spec = SweepSpec(name="t", fixed={"model.depth": 8, "lr_schedule.type": "cosine"})
    >>> cfg = resolve_trial_config(spec, {"lr": 0.5, "lr_schedule.warmup_epochs": 2}, seed=7)
    >>> cfg["model"]["depth"], cfg["lr"], cfg["lr_schedule"]["warmup_epochs"], cfg["seed"]
    (8, 0.5, 2, 7)
    """
    if "seed" in sampled:
        raise ValueError("the trial seed comes from the replicate, not from the sampled values")
    flat = merge_config(spec.fixed, sampled)
    flat["seed"] = seed
    return TrialConfig.from_dict(flat).to_dict()
