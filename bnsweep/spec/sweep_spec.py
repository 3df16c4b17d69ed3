"""The sweep spec: one YAML file per experiment -> a validated, frozen ``SweepSpec``.

The format is meant to feel familiar to W&B-sweep and Ray users (see DESIGN.md, "Sweep spec")::

    name: lr_schedules                  # required; [A-Za-z0-9_.-]+ (the run-directory name)
    include: base.yaml                  # optional; a path (or list) relative to this file, deep-merged
    method: tpe                         # grid | random | tpe | cmaes
    metric: {name: val_accuracy, goal: maximize}
    trials: 32                          # sampled configurations (grid: optional, capped by the grid size)
    replicates: 3                       # seeds per configuration: seed, seed + 1, ...
    scheduler: {type: asha, grace_period: 10, reduction_factor: 3}
    resources: {cpu: 1, gpu: 0.25}
    fixed: {model: {depth: 20}, regime: bn, epochs: 60, data: {dataset: cifar10}}
    parameters:
      lr: {distribution: log_uniform, min: 0.01, max: 1.0}
      lr_schedule:
        one_of:
          step: {milestones: [0.5, 0.75], gamma: 0.1}
          cosine: {warmup_epochs: {distribution: int_uniform, min: 0, max: 5}}

``load_spec`` reads it with a safe YAML loader and reports every problem at once, each with the
file, line, dotted key, the value received and what is allowed; nothing is trained or imported
(no TensorFlow, Keras or Ray) to do so.

>>> spec = parse_spec_text('''
... name: demo
... method: random
... trials: 4
... fixed: {model: {depth: 8}, regime: bn, epochs: 2}
... parameters:
...   lr: {distribution: log_uniform, min: 0.01, max: 1.0}
...   lr_schedule: {one_of: {constant: {}, cosine: {warmup_epochs: {values: [0, 1]}}}}
... ''')
>>> spec.method, spec.trials, spec.parameters["lr"]
('random', 4, Distribution(kind='log_uniform', min=0.01, max=1.0, step=None))
>>> spec.base_trial_config()["model"]
{'depth': 8}
>>> try:
...     parse_spec_text("name: x\\ntrials: 2\\nmethd: tpe\\n", filename="x.yaml")
... except SpecError as e:
...     print(e)
x.yaml:3 methd: unknown key 'methd', did you mean 'method'? allowed: name, description, include, method, metric, \
trials, replicates, seed, max_concurrent, scheduler, resources, retries, storage, tracking, fixed, parameters
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias, get_args

import yaml

from bnsweep.spec.config import DataConfig, ModelConfig, OptimizerConfig, TrialConfig, unflatten
from bnsweep.spec.errors import ConfigError

__all__ = [
    "DISTRIBUTION_KINDS",
    "METHODS",
    "METRIC_NAMES",
    "SCHEDULER_TYPES",
    "TOP_LEVEL_KEYS",
    "TRACKING_KEYS",
    "Constant",
    "Distribution",
    "Metric",
    "OneOf",
    "Param",
    "Problem",
    "Resources",
    "SchedulerSpec",
    "SpecError",
    "SweepSpec",
    "Values",
    "affected_keys",
    "collapse_schedule",
    "grid_size",
    "load_spec",
    "merge_config",
    "one_of_layout",
    "parse_spec_text",
    "yaml_value",
]

Method = Literal["grid", "random", "tpe", "cmaes"]
METHODS: tuple[str, ...] = get_args(Method)
MetricName = Literal["val_accuracy", "val_loss", "train_accuracy", "train_loss"]
METRIC_NAMES: tuple[str, ...] = get_args(MetricName)
Goal = Literal["maximize", "minimize"]
GOALS: tuple[str, ...] = get_args(Goal)
SchedulerType = Literal["asha", "median", "none"]
SCHEDULER_TYPES: tuple[str, ...] = get_args(SchedulerType)
DistributionKind = Literal["uniform", "log_uniform", "int_uniform", "q_uniform", "int_log_uniform"]
DISTRIBUTION_KINDS: tuple[str, ...] = get_args(DistributionKind)

TOP_LEVEL_KEYS: tuple[str, ...] = (
    "name", "description", "include", "method", "metric", "trials", "replicates", "seed", "max_concurrent",
    "scheduler", "resources", "retries", "storage", "tracking", "fixed", "parameters",
)
TRACKING_KEYS: tuple[str, ...] = ("wandb", "project", "entity", "mode", "group", "tags")
DEFAULT_TRACKING: dict[str, Any] = {"wandb": True, "project": "bnsweep"}  # offline unless a key is set

# Keys people bring from W&B sweeps / Ray Tune, pointed at ours.
_TOP_HINTS = {
    "early_terminate": "scheduler", "run_cap": "trials", "num_samples": "trials", "n_trials": "trials",
    "search_alg": "method", "config": "fixed", "constants": "fixed", "params": "parameters",
    "search_space": "parameters", "seeds": "replicates", "includes": "include",
}
_SPEC_KEYS = ("values", "value", "distribution", "one_of")
_DIST_KEYS = ("distribution", "min", "max", "step")
_MAX_NUMBER = 1e15  # bounds of any number in a distribution (keeps Optuna/NumPy far from overflow)
_MAX_NODES = 100_000  # YAML nodes after alias expansion ("billion laughs", recursive aliases)
_MAX_BYTES = 4_000_000
_MAX_DEPTH = 64  # nesting of YAML collections
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)
_SECTIONS: dict[str, Any] = {"model": ModelConfig, "data": DataConfig, "optimizer": OptimizerConfig}
_TOP_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrialConfig))
_ALIASES = {"data.dataset": "data.source"}
_SELECTORS = {"lr_schedule": "type", "optimizer": "name", "data": "source"}
_OVERRIDES = "<overrides>"

Loc: TypeAlias = "tuple[str, int | None]"


# ---------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: ``sweeps/x.yaml:12 parameters.lr.min: expected a number > 0, received -0.1``."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where} {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class SpecError(Exception):
    """A spec is invalid; ``problems`` lists everything found, ``str()`` shows one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (Ray) with its problems intact
        return (SpecError, (self.problems,))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _expected(allowed: str, received: Any) -> str:
    return f"expected {allowed}, received {_show(received)}"


def _suggestion(received: Any, choices: Iterable[str]) -> str:
    if not isinstance(received, str):
        return ""
    choices = list(choices)
    close = difflib.get_close_matches(received, choices, n=1, cutoff=0.6)
    close = close or [c for c in choices if len(received) >= 3 and c.startswith(received)][:1]
    return f", did you mean {close[0]!r}?" if close else ""


def _choice(received: Any, choices: Sequence[str]) -> str:
    return _expected("one of " + ", ".join(choices), received) + _suggestion(received, choices)


def _unknown(key: str, allowed: Sequence[str], *, what: str = "key", where: str = "", hint: str | None = None) -> str:
    close = f", did you mean {hint!r}?" if hint else _suggestion(key, allowed)
    return f"unknown {what} {key!r}{where}{close} allowed: {', '.join(allowed)}"


def _raise_if(errors: list[tuple[str, str]]) -> None:
    if errors:
        raise SpecError([Problem("<spec>", None, key, message) for key, message in errors])


def _is_real(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if isinstance(v, int):
        return abs(v) <= _MAX_NUMBER
    return math.isfinite(v) and abs(v) <= _MAX_NUMBER


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _int_range(lo: int, hi: int) -> str:
    return f"an integer from {lo} to {hi}"


# ---------------------------------------------------------------- spec dataclasses


@dataclass(frozen=True)
class Metric:
    """What the search optimizes.

    >>> Metric(name="val_loss", goal="minimize").mode
    'min'
    """

    name: MetricName = "val_accuracy"
    goal: Goal = "maximize"

    def __post_init__(self) -> None:
        errors = []
        if self.name not in METRIC_NAMES:
            errors.append(("name", _choice(self.name, METRIC_NAMES)))
        if self.goal not in GOALS:
            errors.append(("goal", _choice(self.goal, GOALS)))
        _raise_if(errors)

    @property
    def mode(self) -> Literal["max", "min"]:
        """Ray Tune / Optuna spelling of ``goal``."""
        return "max" if self.goal == "maximize" else "min"


@dataclass(frozen=True)
class SchedulerSpec:
    """Early stopping of trials: ASHA, median stopping or none; ``grace_period`` in epochs.

    >>> SchedulerSpec(type="asha", grace_period=5).reduction_factor
    3
    """

    type: SchedulerType = "none"
    grace_period: int = 1
    reduction_factor: float = 3

    def __post_init__(self) -> None:
        errors = []
        if self.type not in SCHEDULER_TYPES:
            errors.append(("type", _choice(self.type, SCHEDULER_TYPES)))
        if not _is_int(self.grace_period, 1, 1_000_000):
            errors.append(("grace_period", _expected(_int_range(1, 1_000_000) + " (epochs)", self.grace_period)))
        if not (_is_real(self.reduction_factor) and 1 < self.reduction_factor <= 1000):
            errors.append(("reduction_factor", _expected("a number > 1 (and <= 1000)", self.reduction_factor)))
        _raise_if(errors)


@dataclass(frozen=True)
class Resources:
    """Per-trial resources for Ray Tune: CPUs (fractions ok), GPUs (fractions ok, whole above 1), TPUs.

    ``cpu`` left out (``None``) lets ``launch`` choose the packing for the machine it runs on: as few
    trials at once as fill the CPUs, each with an equal share as its TensorFlow threads
    (``sweep.packing.default_cpus_per_trial``; measured in bench/RESULTS.md §4). A number fixes it.

    >>> Resources(gpu=0.25).cpu is None, Resources(cpu=2).cpu
    (True, 2)
    """

    cpu: float | None = None
    gpu: float = 0
    tpu: int = 0

    def __post_init__(self) -> None:
        errors = []
        if self.cpu is not None and not (_is_real(self.cpu) and 0 < self.cpu <= 4096):
            errors.append(("cpu", _expected("a number > 0 (fractions allowed), or leave it out to let launch "
                                            "share the machine's CPUs out", self.cpu)))
        if not (_is_real(self.gpu) and 0 <= self.gpu <= 4096):
            errors.append(("gpu", _expected("a number >= 0 (fractions allowed)", self.gpu)))
        elif self.gpu > 1 and self.gpu != int(self.gpu):
            errors.append(("gpu", _expected("a fraction <= 1 or a whole number of GPUs", self.gpu)))
        if not _is_int(self.tpu, 0, 4096):
            errors.append(("tpu", _expected("an integer >= 0", self.tpu)))
        _raise_if(errors)


@dataclass(frozen=True)
class Values:
    """A categorical parameter (a grid axis): one of ``values``.

    >>> Values(values=(128, 256)).values
    (128, 256)
    """

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.values, (list, tuple)) or not self.values:
            _raise_if([("values", _expected("a non-empty list", self.values))])
        object.__setattr__(self, "values", tuple(self.values))


@dataclass(frozen=True)
class Constant:
    """A constant set like ``fixed`` (useful inside ``one_of`` options and for overriding an include).

    >>> Constant(value=0.9).value
    0.9
    """

    value: Any


@dataclass(frozen=True)
class Distribution:
    """A numeric range: uniform, log_uniform, q_uniform (needs ``step``), int_uniform, int_log_uniform.

    >>> Distribution(kind="int_uniform", min=0, max=5).integer
    True
    """

    kind: DistributionKind
    min: float
    max: float
    step: float | None = None

    @property
    def log(self) -> bool:
        return self.kind in ("log_uniform", "int_log_uniform")

    @property
    def integer(self) -> bool:
        return self.kind in ("int_uniform", "int_log_uniform")

    def __post_init__(self) -> None:
        errors: list[tuple[str, str]] = []
        if self.kind not in DISTRIBUTION_KINDS:
            errors.append(("distribution", _choice(self.kind, DISTRIBUTION_KINDS)))
            _raise_if(errors)
        number = "an integer" if self.integer else "a number"
        bounds_ok = True
        for key in ("min", "max"):
            v = getattr(self, key)
            if not _is_real(v) or (self.integer and not isinstance(v, int)):
                errors.append((key, _expected(f"{number} between -{_MAX_NUMBER:g} and {_MAX_NUMBER:g}", v)))
                bounds_ok = False
        if bounds_ok:
            if self.log and self.min <= 0:
                errors.append(("min", _expected(f"a number > 0 ({self.kind} needs a positive range)", self.min)))
            if self.max <= self.min:
                errors.append(("max", _expected(f"a number > min ({self.min})", self.max)))
        if self.kind == "q_uniform":
            if not (_is_real(self.step) and self.step is not None and self.step > 0):
                errors.append(("step", _expected("a number > 0 (required for q_uniform)", self.step)))
            elif bounds_ok and self.max > self.min and self.step > self.max - self.min:
                errors.append(("step", _expected(f"a step <= max - min ({self.max - self.min})", self.step)))
        elif self.kind == "int_uniform":
            if self.step is not None and not _is_int(self.step, 1, int(_MAX_NUMBER)):
                errors.append(("step", _expected("an integer >= 1", self.step)))
        elif self.step is not None:
            errors.append(("step", _expected(f"no step for {self.kind} (use q_uniform or int_uniform)", self.step)))
        _raise_if(errors)

    def endpoints(self) -> tuple[float, float]:
        """The smallest and largest values the distribution can produce (``max`` rounded down to a step)."""
        if self.step and not self.log:
            high = self.min + math.floor((self.max - self.min) / self.step + 1e-9) * self.step
            return self.min, (int(high) if self.integer else high)
        return self.min, self.max


@dataclass(frozen=True)
class OneOf:
    """A conditional choice: an option name, then that option's own parameters (relative dotted keys).

    Under ``lr_schedule`` the option name is the schedule type, under ``optimizer`` the optimizer name,
    under ``data`` the source, under a single value (``regime``) that value; see ``one_of_layout``.

    >>> OneOf(options={"constant": {}, "cosine": {"warmup_epochs": Values(values=(0, 5))}}).names
    ('constant', 'cosine')
    """

    options: Mapping[str, Mapping[str, Param]]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.options)

    def __post_init__(self) -> None:
        errors = []
        if not isinstance(self.options, Mapping) or not self.options:
            errors.append(("one_of", _expected("a non-empty mapping of option name -> settings", self.options)))
        else:
            for name, opt in self.options.items():
                if not isinstance(name, str) or not name:
                    errors.append(("one_of", _expected("option names that are non-empty strings", name)))
                elif not isinstance(opt, Mapping) or not all(isinstance(p, _PARAM_TYPES) for p in opt.values()):
                    errors.append((f"one_of.{name}", _expected("a mapping of key -> parameter", opt)))
        _raise_if(errors)


Param: TypeAlias = "Values | Constant | Distribution | OneOf"
_PARAM_TYPES = (Values, Constant, Distribution, OneOf)


def one_of_layout(key: str) -> tuple[str | None, str]:
    """Where a ``one_of`` at ``key`` puts its choice, and the prefix of its options' keys.

    >>> one_of_layout("lr_schedule"), one_of_layout("optimizer"), one_of_layout("model")
    (('lr_schedule.type', 'lr_schedule.'), ('optimizer.name', 'optimizer.'), (None, 'model.'))
    >>> one_of_layout("regime"), one_of_layout("optimizer.name")
    (('regime', ''), ('optimizer.name', 'optimizer.'))
    """
    if key in _SELECTORS:
        return f"{key}.{_SELECTORS[key]}", key + "."
    if key in _SECTIONS:
        return None, key + "."  # option names are labels only
    parent = key.rpartition(".")[0]
    return key, (parent + "." if parent else "")


def affected_keys(key: str, param: Param) -> set[str]:
    """Trial-config keys a parameter can set (for a ``one_of``: its choice and all options' keys).

    >>> sorted(affected_keys("optimizer", OneOf(options={"sgd": {"momentum": Constant(value=0.9)}, "adam": {}})))
    ['optimizer.momentum', 'optimizer.name']
    """
    if not isinstance(param, OneOf):
        return {key}
    selector, prefix = one_of_layout(key)
    out = {selector} if selector else set()
    for opt in param.options.values():
        for rel, p in opt.items():
            out |= affected_keys(prefix + rel, p)
    return out


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def grid_size(parameters: Mapping[str, Param]) -> int:
    """Number of grid points (``one_of`` options expanded); ``ValueError`` for a continuous distribution.

    >>> grid_size({"batch_size": Values(values=(128, 256)), "lr_schedule": OneOf(options={
    ...     "constant": {}, "cosine": {"warmup_epochs": Values(values=(0, 5))}})})
    6
    """
    total = 1
    for key, p in parameters.items():
        if isinstance(p, Values):
            total *= len(p.values)
        elif isinstance(p, Distribution):
            raise ValueError(f"{key}: a grid needs {{values: [...]}}, not a {p.kind} distribution")
        elif isinstance(p, OneOf):
            total *= sum(grid_size(opt) for opt in p.options.values())
    return total


# ---------------------------------------------------------------- trial-config keys


def _fields(cls: Any) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _key_problem(key: str) -> str | None:
    """Why ``key`` (dotted, aliases resolved) is not a trial-config key, or None."""
    parts = key.split(".")
    head = parts[0]
    if head not in _TOP_FIELDS:
        nested = [f"{s}.{head}" for s, cls in _SECTIONS.items() if head in _fields(cls)]
        return _unknown(head, _TOP_FIELDS, what="trial-config key", hint=nested[0] if nested else None)
    if head == "seed":
        return "the trial seed is set per replicate (top-level `seed` + replicate index); set `seed:` at the top"
    if head in _SECTIONS:
        names = _fields(_SECTIONS[head]) + (("dataset",) if head == "data" else ())
        if len(parts) > 1 and parts[1] not in names:
            return _unknown(parts[1], names, what=f"{head} setting")
        if len(parts) > 2:
            return f"{head}.{parts[1]} is a single value, it has no sub-key {'.'.join(parts[2:])!r}"
    elif head == "lr_schedule":
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isidentifier()):
            return f"expected lr_schedule settings as single names (lr_schedule.warmup_epochs), received {key!r}"
    elif len(parts) > 1:
        return f"{head} is a single value, it has no sub-key {'.'.join(parts[1:])!r}"
    return None


def _alias(key: str) -> str:
    return _ALIASES.get(key, key)


def _is_spec(v: Any) -> bool:
    return isinstance(v, Mapping) and any(k in v for k in _SPEC_KEYS)


def _is_namespace(key: str) -> bool:
    return key in _SECTIONS or key == "lr_schedule"


# ---------------------------------------------------------------- resolving trial configs


def collapse_schedule(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Gather ``lr_schedule.*`` keys into one ``lr_schedule`` dict (like ``config.flatten``).

    >>> collapse_schedule({"lr": 0.1, "lr_schedule.type": "cosine", "lr_schedule.warmup_epochs": 2})
    {'lr': 0.1, 'lr_schedule': {'type': 'cosine', 'warmup_epochs': 2}}
    """
    out: dict[str, Any] = {}
    for k, v in flat.items():
        if k == "lr_schedule" and isinstance(v, Mapping):
            out["lr_schedule"] = {**out.get("lr_schedule", {}), **v}
        elif k.startswith("lr_schedule."):
            out.setdefault("lr_schedule", {})[k.split(".", 1)[1]] = v
        else:
            out[k] = v
    return out


def merge_config(fixed: Mapping[str, Any], sampled: Mapping[str, Any]) -> dict[str, Any]:
    """``fixed`` + ``sampled`` (flat dotted keys) -> flat trial config.

    A sampled ``lr_schedule`` merges into the fixed one, unless both name a ``type`` and they differ
    (then it replaces it). A schedule without a ``type`` fills in from the default (multistep).

    >>> merge_config({"lr_schedule": {"warmup_epochs": 1}}, {"lr_schedule": {"type": "cosine"}})
    {'lr_schedule': {'warmup_epochs': 1, 'type': 'cosine'}}
    >>> merge_config({"lr_schedule": {"type": "step", "every": 30}}, {"lr_schedule.type": "cosine"})
    {'lr_schedule': {'type': 'cosine'}}
    """
    out = collapse_schedule(fixed)
    for k, v in collapse_schedule(sampled).items():
        base = out.get("lr_schedule")
        if k == "lr_schedule" and isinstance(v, Mapping) and isinstance(base, Mapping):
            replace = "type" in v and "type" in base and v["type"] != base["type"]
            out[k] = dict(v) if replace else {**base, **v}
        else:
            out[k] = dict(v) if isinstance(v, Mapping) else v
    schedule = out.get("lr_schedule")
    if isinstance(schedule, dict) and "type" not in schedule:
        out["lr_schedule"] = {**TrialConfig().lr_schedule, **schedule}
    return out


def _config_error(flat: Mapping[str, Any]) -> ConfigError | None:
    """The first problem of a trial config (TrialConfig, then the LR schedule's own parameters)."""
    try:
        cfg = TrialConfig.from_dict(dict(flat))
        from bnsweep.spec import schedules  # numpy only

        schedules.resolve_schedule(cfg.lr_schedule)
    except ConfigError as e:
        return e
    except Exception as e:  # a value of a type the checks did not expect
        return ConfigError("", flat, f"a valid trial config ({type(e).__name__}: {e})")
    return None


@dataclass(frozen=True)
class _Alt:
    """One alternative a parameter can take: its spec path, what it sets, and (one_of) its option params."""

    path: str
    values: dict[str, Any]
    inner: tuple[str, Mapping[str, Param]] | None = None


def _alternatives(key: str, param: Param, path: str) -> list[_Alt]:
    if isinstance(param, Values):
        return [_Alt(f"{path}.values[{i}]", {key: v}) for i, v in enumerate(param.values)]
    if isinstance(param, Constant):
        return [_Alt(f"{path}.value", {key: param.value})]
    if isinstance(param, Distribution):
        lo, hi = param.endpoints()
        return [_Alt(f"{path}.min", {key: lo}), _Alt(f"{path}.max", {key: hi})]
    selector, prefix = one_of_layout(key)
    return [
        _Alt(f"{path}.one_of.{name}", {selector: name} if selector else {}, (prefix, opt))
        for name, opt in param.options.items()
    ]


def _signature(e: ConfigError | None) -> tuple[str, str, str] | None:
    return None if e is None else (e.key, _show(e.received), e.allowed)


def _config_message(e: ConfigError, own: Iterable[str]) -> str:
    text = _expected(e.allowed, e.received)
    if e.allowed.startswith("one of "):
        text += _suggestion(e.received, e.allowed[7:].split(", "))
    if e.key in own or not e.key:
        return text
    return f"makes {e.key} invalid: {text}"


class _ConfigChecker:
    """Builds a TrialConfig for every value of every parameter (each in a valid context where possible)
    and blames each failure on the value that introduced it."""

    def __init__(self, fixed: Mapping[str, Any]) -> None:
        self.fixed = fixed
        self.errors: list[tuple[str, str]] = []

    def error(self, values: Mapping[str, Any]) -> ConfigError | None:
        return _config_error(merge_config(self.fixed, values))

    def full(self, alt: _Alt, context: Mapping[str, Any]) -> dict[str, Any]:
        if alt.inner is None:
            return alt.values
        prefix, params = alt.inner
        return {**alt.values, **self.reps(params, prefix, {**context, **alt.values})[0]}

    def reps(self, params: Mapping[str, Param], prefix: str, context: Mapping[str, Any]
             ) -> tuple[dict[str, Any], dict[str, _Alt]]:
        chosen: dict[str, _Alt] = {}
        values: dict[str, Any] = {}
        for rel, p in params.items():
            alts = _alternatives(prefix + rel, p, "")
            pick = next((a for a in alts if self.error({**context, **self.full(a, context)}) is None), alts[0])
            chosen[rel] = pick
            values.update(self.full(pick, context))
        return values, chosen

    def check(self, params: Mapping[str, Param], prefix: str, path_prefix: str, context: Mapping[str, Any],
              *, top: bool) -> None:
        params = dict(params)
        base_error: ConfigError | None = None
        for _ in range(100):  # at the top, report each broken fixed key / parameter and set it aside
            _, chosen = self.reps(params, prefix, context)
            fulls = {rel: self.full(alt, context) for rel, alt in chosen.items()}
            base = dict(context)
            for v in fulls.values():
                base.update(v)
            base_error = self.error(base)
            if not top or base_error is None:
                break
            path, message = self._locate_base(base_error, params, prefix, path_prefix)
            self.errors.append((path, message))
            if path.startswith("fixed."):
                self._drop_fixed(path[len("fixed."):])
            elif path.startswith(path_prefix) and path[len(path_prefix):] in params:
                del params[path[len(path_prefix):]]
            else:
                break
        for rel, p in params.items():
            others = dict(context)
            for other, v in fulls.items():
                if other != rel:
                    others.update(v)
            for alt in _alternatives(prefix + rel, p, path_prefix + rel):
                err = self.error({**others, **self.full(alt, others)})
                fails = err is not None and _signature(err) != _signature(base_error)
                if fails and alt.inner is not None:
                    # blame the option itself only if it fails without its own parameters too
                    head_error = self.error({**others, **alt.values})
                    fails = _signature(head_error) == _signature(err)
                    if not fails:
                        self.check(alt.inner[1], alt.inner[0], alt.path + ".", {**others, **alt.values}, top=True)
                        continue
                if fails and err is not None:
                    self.errors.append((alt.path, _config_message(err, alt.values)))
                elif alt.inner is not None:
                    self.check(alt.inner[1], alt.inner[0], alt.path + ".", {**others, **alt.values}, top=False)

    def _drop_fixed(self, key: str) -> None:
        fixed = dict(self.fixed)
        if key.startswith("lr_schedule.") and isinstance(fixed.get("lr_schedule"), Mapping) and key != \
                "lr_schedule.type":
            fixed["lr_schedule"] = {k: v for k, v in fixed["lr_schedule"].items() if k != key.split(".", 1)[1]}
        else:
            fixed.pop("lr_schedule" if key.startswith("lr_schedule") else key, None)
        self.fixed = fixed

    def _locate_base(self, e: ConfigError, params: Mapping[str, Param], prefix: str, path_prefix: str
                     ) -> tuple[str, str]:
        flat_fixed = _expand_schedule(self.fixed)
        if e.key in flat_fixed:
            return f"fixed.{e.key}", _config_message(e, [e.key])
        for rel, p in params.items():
            if e.key in affected_keys(prefix + rel, p):
                path = path_prefix + rel
                return path, _config_message(e, [prefix + rel])
        head = e.key.split(".")[0]
        near = next((k for k in flat_fixed if k.split(".")[0] == head), None)
        return (f"fixed.{near}" if near else "fixed"), _config_message(e, [])


def _expand_schedule(fixed: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in fixed.items():
        if k == "lr_schedule" and isinstance(v, Mapping):
            out.update({f"lr_schedule.{sk}": sv for sk, sv in v.items()})
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- the spec


def _param_to_plain(p: Param) -> dict[str, Any]:
    if isinstance(p, Values):
        return {"values": list(p.values)}
    if isinstance(p, Constant):
        return {"value": p.value}
    if isinstance(p, Distribution):
        out: dict[str, Any] = {"distribution": p.kind, "min": p.min, "max": p.max}
        if p.step is not None:
            out["step"] = p.step
        return out
    return {"one_of": {name: {rel: _param_to_plain(q) for rel, q in opt.items()} for name, opt in p.options.items()}}


def _distributions(params: Mapping[str, Param], path: str) -> Iterable[tuple[str, Distribution]]:
    for key, p in params.items():
        if isinstance(p, Distribution):
            yield path + key, p
        elif isinstance(p, OneOf):
            for name, opt in p.options.items():
                yield from _distributions(opt, f"{path}{key}.one_of.{name}.")


def _max_value(key: str, fixed: Mapping[str, Any], params: Mapping[str, Param], prefix: str = "") -> Any:
    """Largest value ``key`` can take (for epochs vs. the scheduler's grace period)."""
    found = [fixed[key]] if key in fixed and not prefix else []
    for rel, p in params.items():
        full = prefix + rel
        if full == key and isinstance(p, Values):
            found.extend(p.values)
        elif full == key and isinstance(p, Constant):
            found.append(p.value)
        elif full == key and isinstance(p, Distribution):
            found.append(p.endpoints()[1])
        elif isinstance(p, OneOf):
            _, inner = one_of_layout(full)
            for opt in p.options.values():
                v = _max_value(key, {}, opt, inner)
                if v is not None:
                    found.append(v)
    numbers = [v for v in found if _is_real(v)]
    return max(numbers) if numbers else None


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: what to search, how, and with which resources. Build with ``load_spec``.

    ``fixed`` holds flat dotted trial-config keys (``lr_schedule`` kept as one dict, as
    ``config.flatten`` does); ``parameters`` maps dotted keys to ``Values``/``Constant``/
    ``Distribution``/``OneOf``; ``raw`` is the resolved spec as plain data (``to_dict()``), which
    ``parse_spec_text(yaml.safe_dump(raw))`` reads back to the same spec.

    >>> spec = SweepSpec(name="t", method="random", trials=2, fixed={"model.depth": 8},
    ...                  parameters={"lr": Values(values=(0.1, 0.2))})
    >>> spec.base_trial_config()["model"], spec.replicate_seeds, len(spec.spec_hash())
    ({'depth': 8}, (0,), 12)
    """

    name: str
    description: str = ""
    method: Method = "tpe"
    metric: Metric = field(default_factory=Metric)
    trials: int = 1
    replicates: int = 1
    seed: int = 0
    max_concurrent: int | None = None  # trials at once; None: as many as fill the machine (search._packing)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    resources: Resources = field(default_factory=Resources)
    retries: int = 0
    storage: str | None = None
    tracking: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_TRACKING))
    fixed: Mapping[str, Any] = field(default_factory=dict)
    parameters: Mapping[str, Param] = field(default_factory=dict)
    source: str = "<string>"
    raw: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _raise_if(self._errors())
        if not self.raw:
            object.__setattr__(self, "raw", self.to_dict())

    # ---- validation
    def _errors(self) -> list[tuple[str, str]]:
        e: list[tuple[str, str]] = []
        if not (isinstance(self.name, str) and _NAME_RE.fullmatch(self.name) and self.name not in (".", "..")):
            e.append(("name", _expected("a run name of letters, digits, '_', '.', '-'", self.name)))
        if not isinstance(self.description, str):
            e.append(("description", _expected("a string", self.description)))
        if self.method not in METHODS:
            e.append(("method", _choice(self.method, METHODS)))
        ints = {"trials": (1, 1_000_000), "replicates": (1, 10_000), "seed": (0, 2**31 - 1),
                "max_concurrent": (1, 100_000), "retries": (0, 1000)}
        for key, (lo, hi) in ints.items():
            if key == "max_concurrent" and self.max_concurrent is None:
                continue
            if not _is_int(getattr(self, key), lo, hi):
                e.append((key, _expected(_int_range(lo, hi), getattr(self, key))))
        for key, cls in (("metric", Metric), ("scheduler", SchedulerSpec), ("resources", Resources)):
            if not isinstance(getattr(self, key), cls):
                e.append((key, _expected(f"a {cls.__name__}", getattr(self, key))))
        if self.storage is not None and not (isinstance(self.storage, str) and "://" in self.storage):
            e.append(("storage", _expected("null or a database URL such as sqlite:///study.db", self.storage)))
        e.extend(self._tracking_errors())
        keys_ok = self._key_errors(e)
        if self.method == "grid":
            for path, d in _distributions(self.parameters, "parameters."):
                e.append((path, f"method grid needs {{values: [...]}} or a constant, received a {d.kind} distribution"))
        if keys_ok:
            checker = _ConfigChecker(self.fixed)
            checker.check(self.parameters, "", "parameters.", {}, top=True)
            e.extend(checker.errors)
            if isinstance(self.scheduler, SchedulerSpec) and self.scheduler.type != "none":
                epochs = _max_value("epochs", self.fixed, self.parameters) or TrialConfig().epochs
                if _is_real(epochs) and self.scheduler.grace_period > epochs:
                    e.append(("scheduler.grace_period", _expected(
                        f"at most the number of epochs ({epochs})", self.scheduler.grace_period)))
        return list(dict.fromkeys(e))

    def _tracking_errors(self) -> list[tuple[str, str]]:
        if not isinstance(self.tracking, Mapping):
            return [("tracking", _expected("a mapping", self.tracking))]
        e = []
        for k, v in self.tracking.items():
            if k not in TRACKING_KEYS:
                e.append((f"tracking.{k}", _unknown(str(k), TRACKING_KEYS)))
            elif k == "wandb" and not isinstance(v, bool):
                e.append((f"tracking.{k}", _expected("true or false", v)))
            elif k == "tags" and not (isinstance(v, (list, tuple)) and all(isinstance(t, str) for t in v)):
                e.append((f"tracking.{k}", _expected("a list of strings", v)))
            elif k in ("project", "entity", "group") and not (v is None or (isinstance(v, str) and v)):
                e.append((f"tracking.{k}", _expected("a non-empty string or null", v)))
        return e

    def _key_errors(self, e: list[tuple[str, str]]) -> bool:
        n = len(e)
        if not isinstance(self.fixed, Mapping) or not isinstance(self.parameters, Mapping):
            e.append(("fixed", "expected mappings for fixed and parameters"))
            return False
        for key, value in self.fixed.items():
            problem = _key_problem(_alias(key)) if isinstance(key, str) else "keys must be strings"
            if problem is None and key in _SECTIONS:
                problem = f"expected dotted keys ({key}.x), received the whole section"
            if problem is None and key == "lr_schedule" and not isinstance(value, Mapping):
                problem = _expected("a mapping with a 'type' key", value)
            if problem:
                e.append((f"fixed.{key}", problem))
        flat_fixed = _expand_schedule(self.fixed)
        seen: dict[str, str] = {}
        for key, p in self.parameters.items():
            if not isinstance(p, _PARAM_TYPES):
                e.append((f"parameters.{key}", _expected("Values, Constant, Distribution or OneOf", p)))
                continue
            problem = _key_problem(key) if isinstance(key, str) and not (key in _SECTIONS and isinstance(
                p, OneOf)) else None
            if problem:
                e.append((f"parameters.{key}", problem))
                continue
            for a in sorted(affected_keys(key, p)):
                problem = _key_problem(a)
                if problem:
                    e.append((f"parameters.{key}", f"{a}: {problem}"))
                clash = next((f for f in flat_fixed if _overlaps(a, f)), None)
                if clash:
                    e.append((f"parameters.{key}", f"{a} is both searched and fixed (fixed.{clash}); a key is "
                                                   "either fixed or searched"))
                other = next((s for s in seen if _overlaps(a, s)), None)
                if other and seen[other] != key:
                    e.append((f"parameters.{key}", f"{a} is also set by parameters.{seen[other]}"))
                seen.setdefault(a, key)
        return len(e) == n

    # ---- views
    @property
    def replicate_seeds(self) -> tuple[int, ...]:
        """The trial seeds of one configuration: ``seed, seed + 1, ...``."""
        return tuple(range(self.seed, self.seed + self.replicates))

    def base_trial_config(self) -> dict[str, Any]:
        """``fixed`` as a nested dict, ready for ``TrialConfig.from_dict``."""
        return unflatten(merge_config(self.fixed, {}))

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (what ``raw`` holds and what a run directory saves)."""
        return {
            "name": self.name,
            "description": self.description,
            "method": self.method,
            "metric": dataclasses.asdict(self.metric),
            "trials": self.trials,
            "replicates": self.replicates,
            "seed": self.seed,
            "max_concurrent": self.max_concurrent,
            "scheduler": dataclasses.asdict(self.scheduler),
            "resources": dataclasses.asdict(self.resources),
            "retries": self.retries,
            "storage": self.storage,
            "tracking": dict(self.tracking),
            "fixed": unflatten(dict(self.fixed)),
            "parameters": {k: _param_to_plain(p) for k, p in self.parameters.items()},
        }

    def spec_hash(self) -> str:
        """12 hex digits over the resolved content (includes merged, overrides applied).

        >>> SweepSpec(name="a").spec_hash() == SweepSpec(name="a").spec_hash() != SweepSpec(name="b").spec_hash()
        True
        """
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- YAML reading


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads YAML 1.2 floats like ``1e-3`` (PyYAML reads them as strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
_SAFE_TAGS = {t for t in _Loader.yaml_constructors if t is not None}


def yaml_value(text: str) -> Any:
    """Read one YAML value the way specs are read (safe; ``1e-3`` is a float), e.g. for ``--set k=v``.

    >>> yaml_value("5e-4"), yaml_value("[0.5, 0.75]"), yaml_value("cosine")
    (0.0005, [0.5, 0.75], 'cosine')
    """
    return yaml.load(text, Loader=_Loader)  # _Loader is a yaml.SafeLoader subclass


def _short_tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


def _walk(root: yaml.Node, file: str, problems: list[Problem]) -> dict[str, int] | None:
    """Dotted YAML path -> line (1-based) of every key and list item; flags unsafe tags and duplicate keys.
    None if the document is too large (alias bombs, recursive aliases)."""
    lines: dict[str, int] = {}
    stack: list[tuple[yaml.Node, str, int]] = [(root, "", 0)]
    count = 0
    ok = True
    while stack:
        node, path, depth = stack.pop()
        count += 1
        if count > _MAX_NODES or depth > _MAX_DEPTH:
            what = f"more than {_MAX_NODES} YAML nodes" if count > _MAX_NODES else f"nested deeper than {_MAX_DEPTH}"
            problems.append(Problem(file, None, "", f"too large: {what} after expanding aliases "
                                                    "(recursive or nested aliases?)"))
            return None
        line = node.start_mark.line + 1
        if node.tag not in _SAFE_TAGS:
            problems.append(Problem(file, line, path, f"unsupported YAML tag {_short_tag(node.tag)!r}: specs "
                                                      "are read with a safe loader (plain data only)"))
            ok = False
            continue
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                if k.tag == "tag:yaml.org,2002:merge":
                    stack.append((v, path, depth + 1))
                    continue
                if not isinstance(k, yaml.ScalarNode):
                    problems.append(Problem(file, k.start_mark.line + 1, path, "mapping keys must be plain names"))
                    ok = False
                    continue
                kp = f"{path}.{k.value}" if path else str(k.value)
                kline = k.start_mark.line + 1
                if k.value in seen:
                    problems.append(Problem(file, kline, kp, f"duplicate key (first given on line {seen[k.value]})"))
                    ok = False
                seen[k.value] = kline
                lines.setdefault(kp, kline)
                stack.append((v, kp, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                ip = f"{path}[{i}]"
                lines.setdefault(ip, item.start_mark.line + 1)
                stack.append((item, ip, depth + 1))
    return lines if ok else None


def _read_yaml(text: str, file: str, problems: list[Problem]) -> tuple[Any, dict[str, int]] | None:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            problems.append(Problem(file, None, "", "empty spec: expected a mapping with at least `name`"))
            return None
        lines = _walk(node, file, problems)
        if lines is None:
            return None
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        context = f"{e.context} (line {e.context_mark.line + 1})" if e.context and e.context_mark else e.context
        what = ": ".join(str(x) for x in (context, e.problem) if x)
        problems.append(Problem(file, mark.line + 1 if mark else None, "", f"invalid YAML: {what}"))
        return None
    except yaml.YAMLError as e:
        problems.append(Problem(file, None, "", f"invalid YAML: {e}"))
        return None
    except RecursionError:
        problems.append(Problem(file, None, "", "invalid YAML: nested too deeply"))
        return None
    except (ValueError, TypeError, OverflowError) as e:
        problems.append(Problem(file, None, "", f"invalid YAML value: {e}"))
        return None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        problems.append(Problem(file, 1, "", _expected("a mapping of spec keys (name, method, ...)", data)))
        return None
    return data, lines


# ---------------------------------------------------------------- one file -> a layer


@dataclass
class _Layer:
    """One spec file (or several merged): top-level values, flat fixed keys (``lr_schedule.x`` expanded),
    parameters, and where each normalized spec path was written."""

    top: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    locs: dict[str, Loc] = field(default_factory=dict)


class _FileReader:
    def __init__(self, file: str, lines: Mapping[str, int], problems: list[Problem]) -> None:
        self.file, self.lines, self.problems = file, lines, problems
        self.layer = _Layer()
        self.shown = "fixed."  # how fixed keys are named in problems ("" for command-line overrides)

    def loc(self, ypath: str) -> Loc:
        return self.file, self.lines.get(ypath)

    def problem(self, ypath: str, key: str, message: str) -> None:
        self.problems.append(Problem(self.file, self.lines.get(ypath), key, message))

    def register(self, npath: str, ypath: str) -> None:
        self.layer.locs[npath] = self.loc(ypath)

    # ---- top level
    def read(self, data: Mapping[Any, Any]) -> _Layer:
        for ypath in self.lines:
            if not ypath.startswith(("fixed", "parameters")):
                self.layer.locs[ypath] = self.loc(ypath)
        for key, value in data.items():
            if not isinstance(key, str):
                self.problem("", _show(key), _expected("string keys", key))
            elif key not in TOP_LEVEL_KEYS:
                self.problem(key, key, _unknown(key, TOP_LEVEL_KEYS, hint=_TOP_HINTS.get(key)))
            elif key == "fixed":
                self.read_fixed(value)
            elif key == "parameters":
                self.read_parameters(value)
            elif key in ("metric", "scheduler", "resources", "tracking"):
                self.read_section(key, value)
            else:
                self.layer.top[key] = value
        self.check_conflicts()
        return self.layer

    def read_section(self, key: str, value: Any) -> None:
        if key == "metric" and isinstance(value, str):
            value = {"name": value}
        if key == "scheduler" and isinstance(value, str):
            value = {"type": value}
        if value is None:
            return
        if not isinstance(value, Mapping):
            self.problem(key, key, _expected("a mapping", value))
            return
        allowed = {"metric": _fields(Metric), "scheduler": _fields(SchedulerSpec), "resources": _fields(Resources),
                   "tracking": TRACKING_KEYS}[key]
        kept = {}
        for k, v in value.items():
            if k not in allowed:
                self.problem(f"{key}.{k}", f"{key}.{k}", _unknown(str(k), allowed))
            else:
                kept[k] = v
        self.layer.top[key] = kept

    # ---- fixed
    def read_fixed(self, value: Any, *, ypath: str = "fixed", prefix: str = "") -> None:
        if value is None:
            return
        if not isinstance(value, Mapping):
            self.problem(ypath, ypath, _expected("a mapping of trial-config keys", value))
            return
        for k, v in value.items():
            yp = f"{ypath}.{k}"
            if not isinstance(k, str):
                self.problem(ypath, yp, _expected("string keys", k))
                continue
            key = _alias(prefix + k)
            problem = _key_problem(key)
            if problem:
                self.problem(yp, self.shown + key, problem)
            elif key in _SECTIONS:
                if isinstance(v, Mapping):
                    self.read_fixed(v, ypath=yp, prefix=key + ".")
                else:
                    names = ", ".join(_fields(_SECTIONS[key]))
                    self.problem(yp, self.shown + key, _expected(f"a mapping of {key} settings ({names})", v))
            elif key == "lr_schedule":
                if isinstance(v, str):
                    v = {"type": v}
                if not isinstance(v, Mapping):
                    self.problem(yp, self.shown + key, _expected("a mapping with a 'type' key", v))
                    continue
                self.register("fixed.lr_schedule", yp)
                for sk, sv in v.items():
                    self.set_fixed(f"lr_schedule.{sk}", sv, f"{yp}.{sk}" if f"{yp}.{sk}" in self.lines else yp)
            else:
                self.set_fixed(key, v, yp)

    def set_fixed(self, key: str, value: Any, ypath: str) -> None:
        if key in self.layer.fixed:
            self.problem(ypath, self.shown + key, "given twice (nested and dotted?)")
        problem = _key_problem(key)
        if problem:
            self.problem(ypath, self.shown + key, problem)
            return
        self.layer.fixed[key] = value
        self.register(f"fixed.{key}", ypath)

    # ---- parameters
    def read_parameters(self, value: Any, *, ypath: str = "parameters", prefix: str = "") -> None:
        if value is None:
            return
        if not isinstance(value, Mapping):
            self.problem(ypath, ypath, _expected("a mapping of trial-config key -> parameter spec", value))
            return
        for k, v in value.items():
            yp = f"{ypath}.{k}"
            if not isinstance(k, str):
                self.problem(ypath, yp, _expected("string keys", k))
                continue
            key = _alias(prefix + k)
            np = f"parameters.{key}"
            problem = _key_problem(key)
            if problem:
                self.problem(yp, np, problem)
            elif _is_spec(v):
                param = self.read_param(v, yp, np, key)
                if param is not None:
                    if key in self.layer.params:
                        self.problem(yp, np, "given twice (nested and dotted?)")
                    self.layer.params[key] = param
            elif isinstance(v, Mapping) and _is_namespace(key):
                self.read_parameters(v, ypath=yp, prefix=key + ".")
            elif isinstance(v, Mapping):
                bad = next((str(x) for x in v if x not in _SPEC_KEYS), "")
                self.problem(yp, np, _expected("a parameter spec with one of values, value, distribution, one_of",
                                               dict(v)) + _suggestion(bad, _SPEC_KEYS + _DIST_KEYS))
            else:
                self.problem(yp, np, _expected(
                    "a parameter spec ({values: [...]}, {value: x}, {distribution: ...} or {one_of: {...}}); "
                    "constants can also go under `fixed`", v))

    def read_param(self, v: Mapping[str, Any], yp: str, np: str, key: str) -> Param | None:
        kinds = [k for k in _SPEC_KEYS if k in v]
        self.register(np, yp)
        for k in v:
            self.register(f"{np}.{k}", f"{yp}.{k}")
        if len(kinds) > 1:
            self.problem(yp, np, _expected("only one of values, value, distribution, one_of", sorted(kinds)))
            return None
        kind = kinds[0]
        allowed = _DIST_KEYS if kind == "distribution" else (kind,)
        for k in v:
            if k not in allowed:
                self.problem(f"{yp}.{k}", f"{np}.{k}", _unknown(str(k), allowed, where=f" for a {kind} parameter"))
        if kind == "value":
            return Constant(value=v["value"])
        if kind == "values":
            values = v["values"]
            if isinstance(values, list):
                for i in range(len(values)):
                    self.register(f"{np}.values[{i}]", f"{yp}.values[{i}]")
            return self.build(Values, np, values=values)
        if kind == "distribution":
            return self.build(Distribution, np, kind=v["distribution"], min=v.get("min"), max=v.get("max"),
                              step=v.get("step"))
        return self.read_one_of(v["one_of"], yp, np, key)

    def build(self, cls: Any, np: str, **kwargs: Any) -> Param | None:
        """Construct a parameter; its own checks become problems at ``np`` + the failing field."""
        try:
            param: Param = cls(**kwargs)
        except SpecError as e:
            for p in e.problems:
                path = f"{np}.{p.key}"
                file, line = _lookup(self.layer.locs, path, (self.file, None))
                self.problems.append(Problem(file, line, path, p.message))
            return None
        return param

    def read_one_of(self, options: Any, pyp: str, pnp: str, key: str) -> Param | None:
        yp, np = f"{pyp}.one_of", f"{pnp}.one_of"
        if not isinstance(options, Mapping) or not options:
            self.problem(yp, np, _expected("a non-empty mapping of option name -> its settings", options))
            return None
        selector, prefix = one_of_layout(key)
        parsed: dict[str, dict[str, Param]] = {}
        for name, body in options.items():
            oy, on = f"{yp}.{name}", f"{np}.{name}"
            self.register(on, oy)
            if not isinstance(name, str) or not name:
                self.problem(yp, np, _expected("option names that are non-empty strings", name))
                continue
            if body is None:
                body = {}
            if not isinstance(body, Mapping):
                self.problem(oy, on, _expected("a mapping of this option's settings (or {})", body))
                continue
            parsed[name] = {}
            self.read_option(body, oy, on, prefix, selector, prefix, parsed[name])
        if len(parsed) != len(options):
            return None
        return self.build(OneOf, pnp, options=parsed)

    def read_option(self, body: Mapping[Any, Any], yp: str, np: str, prefix: str, selector: str | None,
                    root: str, out: dict[str, Param]) -> None:
        for k, v in body.items():
            ky, kn = f"{yp}.{k}", f"{np}.{k}"
            if not isinstance(k, str):
                self.problem(yp, np, _expected("string keys", k))
                continue
            full = _alias(prefix + k)
            rel = full[len(root):]
            problem = _key_problem(full)
            if problem:
                self.problem(ky, kn, problem)
            elif full == selector:
                self.problem(ky, kn, f"{full} is the option's name here; it cannot also be set inside the option")
            elif _is_spec(v):
                param = self.read_param(v, ky, kn, full)
                if param is not None:
                    out[rel] = param
            elif isinstance(v, Mapping) and _is_namespace(full):
                self.read_option(v, ky, kn, full + ".", selector, root, out)
            else:
                self.register(kn, ky)
                out[rel] = Constant(value=v)

    # ---- fixed vs searched within one file
    def check_conflicts(self) -> None:
        layer = self.layer
        fixed = list(layer.fixed)
        owner: dict[str, str] = {}
        for key, p in list(layer.params.items()):
            np = f"parameters.{key}"
            file, line = layer.locs.get(np, (self.file, None))
            bad = False
            for a in sorted(affected_keys(key, p)):
                clash = next((f for f in fixed if _overlaps(a, f)), None)
                if clash:
                    fline = layer.locs.get(f"fixed.{clash}", (self.file, None))[1]
                    where = f" (line {fline})" if fline else ""
                    self.problems.append(Problem(file, line, np, f"{a} is both searched and fixed (fixed.{clash}"
                                                                 f"{where}); a key is either fixed or searched"))
                    bad = True
                    break
                other = next((o for o in owner if _overlaps(a, o) and owner[o] != key), None)
                if other:
                    self.problems.append(Problem(file, line, np, f"{a} is also set by parameters.{owner[other]}"))
                    bad = True
                    break
                owner[a] = key
            if bad:
                del layer.params[key]


# ---------------------------------------------------------------- merging layers


def _drop_locs(layer: _Layer, prefix: str) -> None:
    for path in [p for p in layer.locs if p == prefix or p.startswith((prefix + ".", prefix + "["))]:
        del layer.locs[path]


def _without(key: str, param: Param, target: str) -> Param | None:
    """``param`` with every option setting of ``target`` removed (it became fixed)."""
    if not isinstance(param, OneOf):
        return None if _overlaps(key, target) else param
    _, prefix = one_of_layout(key)
    options: dict[str, dict[str, Param]] = {}
    for name, opt in param.options.items():
        options[name] = {}
        for rel, p in opt.items():
            q = _without(prefix + rel, p, target)
            if q is not None:
                options[name][rel] = q
    return OneOf(options=options)


def _apply_fixed(layer: _Layer, key: str, value: Any, loc: Loc) -> None:
    """Fix ``key`` to ``value`` over what ``layer`` had: it replaces a search of that key; fixing the choice
    of a ``one_of`` to one of its options keeps searching that option's own parameters."""
    if key == "lr_schedule.type" and "lr_schedule.type" in layer.fixed and layer.fixed[key] != value:
        for k in [k for k in layer.fixed if k.startswith("lr_schedule.")]:  # another schedule: start afresh
            del layer.fixed[k]
        for k in [k for k in layer.params if k.startswith("lr_schedule.")]:
            del layer.params[k]
    for pk, p in list(layer.params.items()):
        selector, prefix = one_of_layout(pk) if isinstance(p, OneOf) else (None, "")
        if isinstance(p, OneOf) and selector == key:
            del layer.params[pk]
            if isinstance(value, str) and value in p.options:
                for rel, q in p.options[value].items():
                    layer.params[prefix + rel] = q
                    old = f"parameters.{pk}.one_of.{value}.{rel}"
                    for path in [x for x in layer.locs if x == old or x.startswith(old + ".")]:
                        layer.locs[f"parameters.{prefix + rel}" + path[len(old):]] = layer.locs[path]
            _drop_locs(layer, f"parameters.{pk}")
        elif any(_overlaps(a, key) for a in affected_keys(pk, p)):
            rest = _without(pk, p, key)
            if rest is None:
                del layer.params[pk]
                _drop_locs(layer, f"parameters.{pk}")
            else:
                layer.params[pk] = rest
    layer.fixed[key] = value
    layer.locs[f"fixed.{key}"] = loc


def _apply_param(layer: _Layer, key: str, param: Param) -> None:
    aff = affected_keys(key, param)
    if "lr_schedule.type" in aff:  # a searched schedule type: inherited schedule settings no longer apply
        for k in [k for k in layer.fixed if k.startswith("lr_schedule.")]:
            del layer.fixed[k]
        for k in [k for k in layer.params if k == "lr_schedule" or k.startswith("lr_schedule.")]:
            del layer.params[k]
    for k in [k for k in layer.fixed if any(_overlaps(k, a) for a in aff)]:
        del layer.fixed[k]
    for pk, p in list(layer.params.items()):
        if any(_overlaps(a, b) for a in aff for b in affected_keys(pk, p)):
            del layer.params[pk]
            _drop_locs(layer, f"parameters.{pk}")
    layer.params[key] = param


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _merge(parent: _Layer, child: _Layer) -> _Layer:
    out = _Layer(top=_deep_merge(parent.top, child.top), fixed=dict(parent.fixed), params=dict(parent.params),
                 locs=dict(parent.locs))
    for key in sorted(child.fixed, key=lambda k: k != "lr_schedule.type"):
        _apply_fixed(out, key, child.fixed[key], child.locs.get(f"fixed.{key}", ("", None)))
    for key, param in child.params.items():
        _apply_param(out, key, param)
    out.locs.update(child.locs)
    return out


# ---------------------------------------------------------------- loading


def _load_layer(text: str | None, path: Path, display: str, problems: list[Problem], *,
                origin: Loc | None, stack: tuple[tuple[Path, str], ...]) -> _Layer | None:
    """Read one file (and, depth first, what it includes) into a merged layer; None if unreadable."""
    if text is None:
        try:
            if path.stat().st_size > _MAX_BYTES:
                raise OSError(f"larger than {_MAX_BYTES} bytes")
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = "file not found" if isinstance(e, FileNotFoundError) else str(e)
            if origin:
                problems.append(Problem(origin[0], origin[1], "include", f"cannot read {display}: {reason}"))
            else:
                problems.append(Problem(display, None, "", f"cannot read spec: {reason}"))
            return None
    read = _read_yaml(text, display, problems)
    if read is None:
        return None
    data, lines = read
    layer = _FileReader(display, lines, problems).read(data)
    includes = data.get("include")
    if includes is None:
        return layer
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
        problems.append(Problem(display, lines.get("include"), "include",
                                _expected("a path or a list of paths relative to this file", data.get("include"))))
        return layer
    here = (path.resolve(), display)
    base: _Layer | None = None
    for i, inc in enumerate(includes):
        inc_loc = (display, lines.get(f"include[{i}]", lines.get("include")))
        inc_path = path.parent / inc
        inc_display = os.path.normpath(os.path.join(os.path.dirname(display), inc))
        chain = (*stack, here)
        if inc_path.resolve() in [p for p, _ in chain]:
            names = " -> ".join([d for _, d in chain] + [inc_display])
            problems.append(Problem(inc_loc[0], inc_loc[1], "include", f"include cycle: {names}"))
            continue
        sub = _load_layer(None, inc_path, inc_display, problems, origin=inc_loc, stack=chain)
        if sub is not None:
            base = sub if base is None else _merge(base, sub)
    return layer if base is None else _merge(base, layer)


def _lookup(locs: Mapping[str, Loc], path: str, default: Loc) -> Loc:
    p = path
    while p:
        if p in locs and locs[p][0]:
            return locs[p]
        cut = max(p.rfind("."), p.rfind("["))
        p = p[:cut] if cut > 0 else ""
    return default


def _apply_overrides(layer: _Layer, overrides: Mapping[str, Any], problems: list[Problem]) -> None:
    reader = _FileReader(_OVERRIDES, {}, problems)
    reader.shown = ""
    reader.read_fixed(dict(overrides), ypath="")
    flat = reader.layer.fixed
    for key in sorted(flat, key=lambda k: k != "lr_schedule.type"):
        _apply_fixed(layer, key, flat[key], (_OVERRIDES, None))


def _build(layer: _Layer, source: str, problems: list[Problem]) -> SweepSpec | None:
    top, locs = layer.top, layer.locs
    default: Loc = (source, None)

    def add(errors: Iterable[Problem], prefix: str = "") -> None:
        for p in errors:
            key = prefix + p.key
            file, line = _lookup(locs, key, default)
            if file == _OVERRIDES:
                key = key.removeprefix("fixed.")
            problems.append(Problem(file, line, key, p.message))

    kwargs: dict[str, Any] = {k: v for k, v in top.items() if k not in ("include",)}
    if "name" not in top:
        problems.append(Problem(source, None, "name", "required: a run name of letters, digits, '_', '.', '-'"))
        kwargs["name"] = "unnamed"
    if kwargs.get("description") is None:
        kwargs["description"] = ""
    metric = dict(top.get("metric", {}))
    if "goal" not in metric and isinstance(metric.get("name"), str):
        metric["goal"] = "minimize" if metric["name"].endswith("loss") else "maximize"
    for key, cls, value in (("metric", Metric, metric), ("scheduler", SchedulerSpec, top.get("scheduler", {})),
                            ("resources", Resources, top.get("resources", {}))):
        try:
            kwargs[key] = cls(**value)
        except SpecError as e:
            add(e.problems, key + ".")
            kwargs[key] = cls()
    kwargs["tracking"] = {**DEFAULT_TRACKING, **top.get("tracking", {})}
    kwargs["fixed"] = collapse_schedule(layer.fixed)
    kwargs["parameters"] = dict(layer.params)
    method = kwargs.get("method", "tpe")
    if method == "grid":
        try:
            size = grid_size(layer.params)
        except ValueError:
            size = None
        trials = kwargs.get("trials")
        if size is not None and (trials is None or (_is_int(trials, 1, 1_000_000) and trials > size)):
            kwargs["trials"] = size
    elif "trials" not in kwargs:
        problems.append(Problem(source, None, "trials", f"required for method {method!r}: the number of sampled "
                                                        "configurations"))
    if method == "cmaes" and importlib.util.find_spec("cmaes") is None:
        file, line = _lookup(locs, "method", default)
        problems.append(Problem(file, line, "method", "cmaes needs the `cmaes` package (pip install cmaes), which "
                                                      "is not installed; use tpe or random"))
    kwargs["source"] = source
    try:
        return SweepSpec(**kwargs)
    except SpecError as e:
        add(e.problems)
        return None


def _load(text: str | None, path: Path, display: str, overrides: Mapping[str, Any] | None) -> SweepSpec:
    problems: list[Problem] = []
    layer = _load_layer(text, path, display, problems, origin=None, stack=())
    spec = None
    if layer is not None:
        if overrides:
            _apply_overrides(layer, overrides, problems)
        spec = _build(layer, display, problems)
    if problems or spec is None:
        unique = list(dict.fromkeys(problems))
        unique.sort(key=lambda p: (p.file != display, p.file, p.line or 0))
        raise SpecError(unique)
    return spec


def load_spec(path: str | Path, *, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read, merge (``include``), override and validate a spec file; ``SpecError`` lists every problem.

    ``overrides`` are trial-config keys (flat dotted, or nested) applied on top of ``fixed``; one that
    names a searched key replaces the search with that constant (fixing the choice of a ``one_of`` to
    one of its options keeps searching that option's own parameters).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "s.yaml").write_text("name: s\\nmethod: grid\\nparameters: {batch_size: {values: [64, 128]}}\\n")
    >>> spec = load_spec(d / "s.yaml", overrides={"epochs": 3, "data.source": "synthetic"})
    >>> spec.trials, spec.fixed
    (2, {'epochs': 3, 'data.source': 'synthetic'})
    """
    return _load(None, Path(path), str(path), overrides)


def parse_spec_text(text: str, *, filename: str = "<string>") -> SweepSpec:
    """Like ``load_spec`` for a spec given as text (includes resolve relative to ``filename``)."""
    return _load(text, Path(filename), filename, None)
