"""The sweep spec: one YAML file per experiment -> a validated, frozen ``SweepSpec``.

The format is meant to feel familiar to W&B-sweep and Ray users (``bnsweep schema`` writes its JSON Schema)::

    name: lr_schedules                  # required; [A-Za-z0-9_.-]+ (the run-directory name)
    include: base.yaml                  # optional; a path (or list) relative to this file, deep-merged
    method: tpe                         # grid | random | tpe | cmaes
    metric: {name: val_accuracy, goal: maximize}
    trials: 32                          # sampled configurations (grid: optional, the first N points)
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

The typed sections (``bnsweep.spec.sections``, ``bnsweep.spec.config``) check types, ranges and choices; this
module reads the files and says where each value came from: ``load_spec`` reports every problem at once, each
with the file and line (across ``include:`` files and ``--set`` overrides), the dotted key, the value received
and what is allowed, the exact ``one_of`` option or value to blame, and a near miss ("did you mean"). Nothing is
trained or imported (no TensorFlow, Keras or Ray) to do so.

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
trials, replicates, seed, max_concurrent, scheduler, resources, retries, storage, tracking, fixed, parameters, \
watchdog, expect
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from pydantic import ValidationError

from bnsweep.base.text import shorten
from bnsweep.spec.config import (
    TrialConfig,
    flatten,
    section_keys,
    sections,
    selectors,
    set_key,
    unflatten,
    with_default_tags,
)
from bnsweep.spec.errors import ConfigError, Problem, SpecError, message, suggestion
from bnsweep.spec.fields import config_errors, tags_of
from bnsweep.spec.sections import (
    DISTRIBUTION_KINDS,
    MAX_TRIALS,
    METHODS,
    METRIC_NAMES,
    PARAM_TYPES,
    SCHEDULER_TYPES,
    Constant,
    Distribution,
    Metric,
    OneOf,
    Param,
    Resources,
    SchedulerSpec,
    SpecFile,
    TrackingConfig,
    Values,
    Watchdog,
)
from bnsweep.spec.yaml_io import MAX_BYTES, dump_yaml, read_yaml, yaml_value

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
    "TrackingConfig",
    "Values",
    "Watchdog",
    "affected_keys",
    "describe_grid",
    "grid_size",
    "load_spec",
    "merge_config",
    "one_of_layout",
    "parse_spec_text",
    "yaml_value",
]

TOP_LEVEL_KEYS: tuple[str, ...] = tuple(SpecFile.model_fields)
TRACKING_KEYS: tuple[str, ...] = tuple(TrackingConfig.model_fields)
_SECTION_MODELS: dict[str, Any] = {"metric": Metric, "scheduler": SchedulerSpec, "resources": Resources,
                                   "tracking": TrackingConfig, "watchdog": Watchdog}

# Keys people bring from W&B sweeps / Ray Tune, pointed at ours.
_TOP_HINTS = {
    "early_terminate": "scheduler", "run_cap": "trials", "num_samples": "trials", "n_trials": "trials",
    "search_alg": "method", "config": "fixed", "constants": "fixed", "params": "parameters",
    "search_space": "parameters", "seeds": "replicates", "includes": "include",
}
_SPEC_KEYS = ("values", "value", "distribution", "one_of")
_DIST_KEYS = ("distribution", "min", "max", "step")
_SECTIONS: tuple[str, ...] = tuple(sections())  # model, data, optimizer, lr_schedule: keys are dotted
_TOP_FIELDS: tuple[str, ...] = tuple(TrialConfig.model_fields)
_TAGS: dict[str, str] = selectors()  # tagged sections -> their tag ({"lr_schedule": "type"})
_ALIASES = {"data.dataset": "data.source"}
_CHOICES = {"optimizer": "name", "data": "source", **_TAGS}  # where a one_of under a section puts its option name
_OVERRIDES = "<overrides>"

Loc: TypeAlias = "tuple[str, int | None]"


# ---------------------------------------------------------------- problems


def _expected(allowed: str, received: Any) -> str:
    return f"expected {allowed}, received {shorten(received)}"


def _choice(received: Any, choices: Sequence[str]) -> str:
    return _expected("one of " + ", ".join(choices), received) + suggestion(received, choices)


def _unknown(key: str, allowed: Sequence[str], *, what: str = "key", where: str = "", hint: str | None = None) -> str:
    close = f", did you mean {hint!r}?" if hint else suggestion(key, allowed)
    return f"unknown {what} {key!r}{where}{close} allowed: {', '.join(allowed)}"


def _raise_if(errors: list[tuple[str, str]]) -> None:
    if errors:
        raise SpecError([Problem("<spec>", None, key, text) for key, text in errors])


def _section_problems(error: ValidationError, cls: Any, data: Any, prefix: str) -> list[tuple[str, str]]:
    return [(e.key, message(e)) for e in config_errors(error, cls, data, prefix=prefix)]


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_tag(key: str) -> bool:
    section, _, leaf = key.partition(".")
    return _TAGS.get(section) == leaf


# ---------------------------------------------------------------- parameters


def one_of_layout(key: str) -> tuple[str | None, str]:
    """Where a ``one_of`` at ``key`` puts its choice, and the prefix of its options' keys.

    >>> one_of_layout("lr_schedule"), one_of_layout("optimizer"), one_of_layout("model")
    (('lr_schedule.type', 'lr_schedule.'), ('optimizer.name', 'optimizer.'), (None, 'model.'))
    >>> one_of_layout("regime"), one_of_layout("optimizer.name")
    (('regime', ''), ('optimizer.name', 'optimizer.'))
    """
    if key in _CHOICES:
        return f"{key}.{_CHOICES[key]}", key + "."
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


def describe_grid(parameters: Mapping[str, Param]) -> str:
    """The grid's size and where it comes from.

    >>> describe_grid({"regime": Values(values=("all", "bn")), "lr": Values(values=(0.1, 0.2, 0.4))})
    '6 points (regime: 2 values × lr: 3 values)'
    """
    axes = []
    for key, p in parameters.items():
        if isinstance(p, Values) and len(p.values) > 1:
            axes.append(f"{key}: {len(p.values):,} values")
        elif isinstance(p, OneOf):
            axes.append(f"{key}: {len(p.options)} options, {sum(grid_size(o) for o in p.options.values()):,} points")
    size = grid_size(parameters)
    return f"{size:,} point{'s' if size != 1 else ''}" + (f" ({' × '.join(axes)})" if axes else "")


# ---------------------------------------------------------------- trial-config keys


def _key_problem(key: str) -> str | None:
    """Why ``key`` (dotted, aliases resolved) is not a trial-config key, or None."""
    parts = key.split(".")
    head = parts[0]
    if head not in _TOP_FIELDS:
        nested = [f"{s}.{head}" for s in _SECTIONS if head in section_keys(s)]
        return _unknown(head, _TOP_FIELDS, what="trial-config key", hint=nested[0] if nested else None)
    if head == "seed":
        return "the trial seed is set per replicate (top-level `seed` + replicate index); set `seed:` at the top"
    if head in _SECTIONS:
        names = section_keys(head) + (("dataset",) if head == "data" else ())
        if len(parts) > 1 and parts[1] not in names:
            return _unknown(parts[1], names, what=f"{head} setting")
        if len(parts) > 2:
            return f"{head}.{parts[1]} is a single value, it has no sub-key {'.'.join(parts[2:])!r}"
    elif len(parts) > 1:
        return f"{head} is a single value, it has no sub-key {'.'.join(parts[1:])!r}"
    return None


def _alias(key: str) -> str:
    return _ALIASES.get(key, key)


def _is_spec(v: Any) -> bool:
    return isinstance(v, Mapping) and any(k in v for k in _SPEC_KEYS)


def _tag_first(keys: Iterable[str]) -> list[str]:
    """Keys with the tags of tagged sections first (a new tag starts its section afresh)."""
    return sorted(keys, key=lambda k: not _is_tag(k))


# ---------------------------------------------------------------- resolving trial configs


def merge_config(fixed: Mapping[str, Any], sampled: Mapping[str, Any]) -> dict[str, Any]:
    """``fixed`` + ``sampled`` (nested or dotted keys) -> a flat trial config (dotted keys).

    A sampled key replaces the fixed one; a sampled tag of a tagged section (``lr_schedule.type``) that differs
    from the fixed one starts that section afresh. A schedule without a ``type`` is the default kind's.

    >>> merge_config({"lr_schedule.warmup_epochs": 1}, {"lr_schedule.type": "cosine"})
    {'lr_schedule.warmup_epochs': 1, 'lr_schedule.type': 'cosine'}
    >>> merge_config({"lr_schedule": {"type": "step", "every": 30}}, {"lr_schedule.type": "cosine"})
    {'lr_schedule.type': 'cosine'}
    """
    out = flatten(fixed)
    more = flatten(sampled)
    for k in _tag_first(more):
        set_key(out, k, more[k])
    return with_default_tags(out)


def _config_error(flat: Mapping[str, Any], extra: Any = None) -> tuple[ConfigError | None, TrialConfig | None]:
    """The first problem of a trial config (or None, and the config)."""
    try:
        cfg = TrialConfig.from_dict(dict(flat))
    except ConfigError as e:
        return e, None
    except Exception as e:  # a value of a type the checks did not expect
        return ConfigError("", flat, f"a valid trial config ({type(e).__name__}: {e})"), None
    return (extra(cfg) if extra else None), cfg


def _validation_split(metric: Any) -> Any:
    """The spec-level check of a trial config: a validation metric needs a validation split."""
    name = getattr(metric, "name", "")

    def check(cfg: TrialConfig) -> ConfigError | None:
        if isinstance(name, str) and name.startswith("val_") and cfg.data.val_size == 0:
            return ConfigError("data.val_size", 0, f"an integer > 0: metric.name {name!r} is measured on the "
                                                   "validation split (or use metric train_accuracy / train_loss)")
        return None

    return check


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
    return None if e is None else (e.key, shorten(e.received), e.allowed)


def _config_message(e: ConfigError, own: Iterable[str]) -> str:
    text = message(e)
    if e.key in own or not e.key:
        return text
    return f"makes {e.key} invalid: {text}"


class _ConfigChecker:
    """Builds a TrialConfig for every value of every parameter (each in a valid context where possible)
    and blames each failure on the value that introduced it; likewise each warning (a schedule that cannot do
    what it says) on the first value that brings it."""

    def __init__(self, fixed: Mapping[str, Any], extra: Any = None) -> None:
        self.fixed = fixed
        self.extra = extra
        self.errors: list[tuple[str, str]] = []
        self.warnings: dict[str, str] = {}  # message -> spec path (the first to bring it)

    def error(self, values: Mapping[str, Any]) -> ConfigError | None:
        return _config_error(merge_config(self.fixed, values), self.extra)[0]

    def warn(self, values: Mapping[str, Any], where: Any) -> None:
        """Record the warnings of the config ``values`` make, each at ``where(key)`` unless already recorded."""
        err, cfg = _config_error(merge_config(self.fixed, values), self.extra)
        if err is None and cfg is not None:
            for key, text in cfg.warnings():
                path = where(key)
                shown = text if key.rpartition(".")[2] in path else f"with {key}: {text}"
                self.warnings.setdefault(shown, path)

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
        dropped: set[str] = set()
        for _ in range(100):  # at the top, report each broken fixed key / parameter and set it aside
            _, chosen = self.reps(params, prefix, context)
            fulls = {rel: self.full(alt, context) for rel, alt in chosen.items()}
            base = dict(context)
            for v in fulls.values():
                base.update(v)
            base_error = self.error(base)
            if not top or base_error is None or base_error.key in dropped:  # (its default fails: said already)
                break
            path, text = self._locate_base(base_error, params, prefix, path_prefix)
            self.errors.append((path, text))
            dropped.add(base_error.key)
            if path.startswith("fixed."):
                self._drop_fixed(path[len("fixed."):])
            elif path.startswith(path_prefix) and path[len(path_prefix):] in params:
                del params[path[len(path_prefix):]]
            else:
                break
        if top and not context and base_error is None:  # the sweep's representative config
            self.warn(base, lambda key: self._locate_key(key, params, prefix, path_prefix))
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
                    continue
                if alt.inner is not None:
                    self.check(alt.inner[1], alt.inner[0], alt.path + ".", {**others, **alt.values}, top=False)
                self.warn({**others, **self.full(alt, others)}, lambda key, path=alt.path: path)

    def _drop_fixed(self, key: str) -> None:
        drop = key.partition(".")[0] if _is_tag(key) else key  # a bad tag: its section's other keys go too
        self.fixed = {k: v for k, v in self.fixed.items() if not (k == drop or k.startswith(drop + "."))}

    def _locate_key(self, key: str, params: Mapping[str, Param], prefix: str, path_prefix: str) -> str:
        if key in self.fixed:
            return f"fixed.{key}"
        for rel, p in params.items():
            if key in affected_keys(prefix + rel, p):
                return path_prefix + rel
        head = key.split(".")[0]
        near = next((k for k in self.fixed if k.split(".")[0] == head), None)
        return f"fixed.{near}" if near else "fixed"

    def _locate_base(self, e: ConfigError, params: Mapping[str, Param], prefix: str, path_prefix: str
                     ) -> tuple[str, str]:
        path = self._locate_key(e.key, params, prefix, path_prefix)
        own = [e.key] if path == f"fixed.{e.key}" else []
        own += [prefix + rel for rel in params if path == path_prefix + rel]
        return path, _config_message(e, own)


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


_TOP = SpecFile.model_fields


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: what to search, how, and with which resources. Build with ``load_spec``.

    ``fixed`` holds flat dotted trial-config keys (every section alike: ``lr_schedule.type``); ``parameters`` maps
    dotted keys to ``Values``/``Constant``/``Distribution``/``OneOf``; ``raw`` is the resolved spec as plain data
    (``to_dict()``), which ``to_yaml()`` writes so that it reads back to the same spec; ``warnings`` lists what
    the sweep's configs will not do as written (a warm-up longer than the run...), each with its file and line.

    >>> spec = SweepSpec(name="t", method="random", trials=2, fixed={"model.depth": 8},
    ...                  parameters={"lr": Values(values=(0.1, 0.2))})
    >>> spec.base_trial_config()["model"], spec.replicate_seeds, len(spec.spec_hash())
    ({'depth': 8}, (0,), 12)
    """

    name: str
    description: str = _TOP["description"].default
    method: str = _TOP["method"].default
    metric: Metric = field(default_factory=Metric)
    trials: int = _TOP["trials"].default
    replicates: int = _TOP["replicates"].default
    seed: int = _TOP["seed"].default
    max_concurrent: int | None = None  # trials at once; None: as many as fill the machine (search._packing)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    resources: Resources = field(default_factory=Resources)
    retries: int = _TOP["retries"].default
    storage: str | None = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    parameters: Mapping[str, Param] = field(default_factory=dict)
    watchdog: Watchdog = field(default_factory=Watchdog)  # hung trials (sweep/watchdog.py); not hashed
    expect: Mapping[str, Any] | None = None  # the expect: section as written (spec/expect.py reads it)
    source: str = "<string>"
    raw: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[Problem, ...] = field(default=(), init=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.fixed, Mapping):
            object.__setattr__(self, "fixed", flatten(self.fixed))
        _raise_if(self._errors())
        if not self.raw:
            object.__setattr__(self, "raw", self.to_dict())

    # ---- validation
    def _errors(self) -> list[tuple[str, str]]:
        e: list[tuple[str, str]] = []
        top = {k: getattr(self, k) for k in _TOP if k not in ("include", "fixed", "parameters")}
        try:
            checked = SpecFile.model_validate(top)
        except ValidationError as err:
            e.extend(_section_problems(err, SpecFile, top, ""))
        else:
            for key, cls in _SECTION_MODELS.items():  # a section given as a plain mapping: typed from here on
                if isinstance(getattr(checked, key), cls):
                    object.__setattr__(self, key, getattr(checked, key))
        keys_ok = self._key_errors(e)
        if self.expect is not None:
            from bnsweep.spec.expect import expectation_problems

            e.extend((p.key, _expected(p.allowed, p.received)) for p in expectation_problems(self.expect))
        if self.method == "grid":
            for path, d in _distributions(self.parameters, "parameters."):
                e.append((path, f"method grid needs {{values: [...]}} or a constant, received a {d.kind} distribution"))
        if keys_ok:
            checker = _ConfigChecker(self.fixed, _validation_split(self.metric))
            checker.check(self.parameters, "", "parameters.", {}, top=True)
            e.extend(checker.errors)
            object.__setattr__(self, "warnings", tuple(Problem("<spec>", None, path, text)
                                                       for text, path in checker.warnings.items()))
            if isinstance(self.scheduler, SchedulerSpec) and self.scheduler.type != "none":
                epochs = _max_value("epochs", self.fixed, self.parameters) or TrialConfig().epochs
                if _is_real(epochs) and self.scheduler.grace_period > epochs:
                    e.append(("scheduler.grace_period", _expected(
                        f"at most the number of epochs ({epochs})", self.scheduler.grace_period)))
        return list(dict.fromkeys(e))

    def _key_errors(self, e: list[tuple[str, str]]) -> bool:
        n = len(e)
        if not isinstance(self.fixed, Mapping) or not isinstance(self.parameters, Mapping):
            e.append(("fixed", "expected mappings for fixed and parameters"))
            return False
        for key in self.fixed:
            problem = _key_problem(_alias(key)) if isinstance(key, str) else "keys must be strings"
            if problem:
                e.append((f"fixed.{key}", problem))
        seen: dict[str, str] = {}
        for key, p in self.parameters.items():
            if not isinstance(p, PARAM_TYPES):
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
                clash = next((f for f in self.fixed if _overlaps(a, f)), None)
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
        tracking = {"wandb": self.tracking.wandb, "project": self.tracking.project,
                    **self.tracking.model_dump(exclude_unset=True)}  # the keys given, over the defaults named
        return {
            "name": self.name,
            "description": self.description,
            "method": self.method,
            "metric": self.metric.model_dump(),
            "trials": self.trials,
            "replicates": self.replicates,
            "seed": self.seed,
            "max_concurrent": self.max_concurrent,
            "scheduler": self.scheduler.model_dump(),
            "resources": self.resources.model_dump(),
            "retries": self.retries,
            "storage": self.storage,
            "tracking": tracking,
            "fixed": unflatten(dict(self.fixed)),
            "parameters": {k: _param_to_plain(p) for k, p in self.parameters.items()},
            **({"watchdog": self.watchdog.model_dump()} if self.watchdog != Watchdog() else {}),
            **({"expect": dict(self.expect)} if self.expect is not None else {}),
        }

    def to_yaml(self) -> str:
        """The resolved spec as YAML that loads back to this spec (what a run directory saves as spec.yaml).

        >>> spec = SweepSpec(name="q", description="1e3")
        >>> parse_spec_text(spec.to_yaml()).spec_hash() == spec.spec_hash()
        True
        """
        return dump_yaml({k: v for k, v in self.raw.items() if k != "include"})

    def replace(self, **changes: Any) -> SweepSpec:
        """A copy with top-level changes (``trials=3``, ``resources=...``), validated; ``SpecError`` if not valid."""
        new = dataclasses.replace(self, **changes, raw={})
        if "fixed" not in changes and "parameters" not in changes:
            object.__setattr__(new, "warnings", self.warnings)  # (already located in their files)
        return new

    def spec_hash(self) -> str:
        """12 hex digits over the resolved content (includes merged, overrides applied).

        >>> SweepSpec(name="a").spec_hash() == SweepSpec(name="a").spec_hash() != SweepSpec(name="b").spec_hash()
        True
        """
        # what trains, not what is expected of it nor how long a hung trial is waited for
        content = {k: v for k, v in self.to_dict().items() if k not in ("expect", "watchdog")}
        blob = json.dumps(content, sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- one file -> a layer


@dataclass
class _Layer:
    """One spec file (or several merged): top-level values, flat fixed keys, parameters, and where each
    normalized spec path was written."""

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

    def problem(self, ypath: str, key: str, text: str) -> None:
        self.problems.append(Problem(self.file, self.lines.get(ypath), key, text))

    def register(self, npath: str, ypath: str) -> None:
        self.layer.locs[npath] = self.loc(ypath)

    # ---- top level
    def read(self, data: Mapping[Any, Any]) -> _Layer:
        for ypath in self.lines:
            if ypath in ("fixed", "parameters") or not ypath.startswith(("fixed", "parameters")):
                self.layer.locs[ypath] = self.loc(ypath)
        for key, value in data.items():
            if not isinstance(key, str):
                self.problem("", shorten(key), _expected("string keys", key))
            elif key not in TOP_LEVEL_KEYS:
                self.problem(key, key, _unknown(key, TOP_LEVEL_KEYS, hint=_TOP_HINTS.get(key)))
            elif key == "fixed":
                self.read_fixed(value)
            elif key == "parameters":
                self.read_parameters(value)
            elif key in _SECTION_MODELS:
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
        allowed = tuple(_SECTION_MODELS[key].model_fields)
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
                elif key in _TAGS and isinstance(v, str):  # `lr_schedule: cosine` names the kind
                    self.set_fixed(f"{key}.{_TAGS[key]}", v, yp)
                else:
                    self.problem(yp, self.shown + key, _expected(self._section_phrase(key), v))
            else:
                self.set_fixed(key, v, yp)

    @staticmethod
    def _section_phrase(key: str) -> str:
        if key in _TAGS:
            kinds = ", ".join(tags_of(TrialConfig.model_fields[key]))
            return f"a mapping with a {_TAGS[key]!r} key, or the {_TAGS[key]} alone ({kinds})"
        return f"a mapping of {key} settings ({', '.join(section_keys(key))})"

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
            elif isinstance(v, Mapping) and key in _SECTIONS:
                self.read_parameters(v, ypath=yp, prefix=key + ".")
            elif isinstance(v, Mapping):
                bad = next((str(x) for x in v if x not in _SPEC_KEYS), "")
                self.problem(yp, np, _expected("a parameter spec with one of values, value, distribution, one_of",
                                               dict(v)) + suggestion(bad, _SPEC_KEYS + _DIST_KEYS))
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
            elif isinstance(v, Mapping) and full in _SECTIONS:
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


def _start_afresh(layer: _Layer, section: str) -> None:
    """Another kind of a tagged section: what was set or searched for the old kind no longer applies."""
    for k in [k for k in layer.fixed if k.startswith(section + ".")]:
        del layer.fixed[k]
    for k in [k for k in layer.params if k == section or k.startswith(section + ".")]:
        del layer.params[k]


def _apply_fixed(layer: _Layer, key: str, value: Any, loc: Loc) -> None:
    """Fix ``key`` to ``value`` over what ``layer`` had: it replaces a search of that key; fixing the choice
    of a ``one_of`` to one of its options keeps searching that option's own parameters."""
    if _is_tag(key) and key in layer.fixed and layer.fixed[key] != value:
        _start_afresh(layer, key.partition(".")[0])
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
    for tag in [a for a in aff if _is_tag(a)]:  # a searched kind: inherited settings of the section no longer apply
        _start_afresh(layer, tag.partition(".")[0])
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
    for key in _tag_first(child.fixed):
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
            if path.stat().st_size > MAX_BYTES:
                raise OSError(f"larger than {MAX_BYTES} bytes")
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = "file not found" if isinstance(e, FileNotFoundError) else str(e)
            if origin:
                problems.append(Problem(origin[0], origin[1], "include", f"cannot read {display}: {reason}"))
            else:
                problems.append(Problem(display, None, "", f"cannot read spec: {reason}"))
            return None
    read = read_yaml(text, display, problems)
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
        try:
            target = inc_path.resolve()
        except (OSError, RuntimeError):  # a symbolic link loop (Python 3.11: RuntimeError; later: OSError)
            problems.append(Problem(inc_loc[0], inc_loc[1], "include",
                                    f"cannot read {inc_display}: a symbolic link loop; point it at a real file"))
            continue
        if target in [p for p, _ in chain]:
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
    for key in _tag_first(flat):
        _apply_fixed(layer, key, flat[key], (_OVERRIDES, None))


def _build(layer: _Layer, source: str, problems: list[Problem]) -> SweepSpec | None:
    top, locs = layer.top, layer.locs
    default: Loc = (source, None)

    def locate(key: str, text: str) -> Problem:
        file, line = _lookup(locs, key, default)
        return Problem(file, line, key.removeprefix("fixed.") if file == _OVERRIDES else key, text)

    kwargs: dict[str, Any] = {k: v for k, v in top.items() if k not in ("include",)}
    if "name" not in top:
        problems.append(Problem(source, None, "name", "required: a run name of letters, digits, '_', '.', '-'"))
        kwargs["name"] = "unnamed"
    if kwargs.get("description") is None:
        kwargs["description"] = ""
    metric = dict(top.get("metric", {}))
    if "goal" not in metric and isinstance(metric.get("name"), str):
        metric["goal"] = "minimize" if metric["name"].endswith("loss") else "maximize"
    for key, cls in _SECTION_MODELS.items():
        value = metric if key == "metric" else top.get(key, {})
        try:
            kwargs[key] = cls.model_validate(value)
        except ValidationError as e:
            problems.extend(locate(k, text) for k, text in _section_problems(e, cls, value, key))
            kwargs[key] = cls()
    _anchor_data_paths(layer)
    kwargs["fixed"] = dict(layer.fixed)
    kwargs["parameters"] = dict(layer.params)
    method = kwargs.get("method", "tpe")
    if method == "grid":
        try:
            size: int | None = grid_size(layer.params)
        except ValueError:
            size = None
        trials = kwargs.get("trials")
        if size is not None and size > MAX_TRIALS:
            problems.append(locate("parameters", f"a grid of {describe_grid(layer.params)}: more configurations than "
                                                 f"the {MAX_TRIALS:,} a sweep may have; search it with method random "
                                                 "or tpe and `trials: N`, or give fewer values"))
            kwargs["trials"] = 1
        elif size is not None and (trials is None or (isinstance(trials, int) and not isinstance(trials, bool)
                                                      and trials > size)):
            kwargs["trials"] = size
    elif "trials" not in kwargs:
        problems.append(Problem(source, None, "trials", f"required for method {method!r}: the number of sampled "
                                                        "configurations"))
    if method == "cmaes" and importlib.util.find_spec("cmaes") is None:
        problems.append(locate("method", "cmaes needs the `cmaes` package (pip install cmaes), which is not "
                                         "installed; use tpe or random"))
    kwargs["source"] = source
    try:
        spec = SweepSpec(**kwargs)
    except SpecError as e:
        problems.extend(locate(p.key, p.message) for p in e.problems)
        return None
    object.__setattr__(spec, "warnings", tuple(locate(p.key, p.message) for p in spec.warnings))
    return spec


_PATH_KEYS = ("data.path", "data.test_path")


def _anchored(value: Any, file: str) -> Any:
    """A relative data path, read from the spec file it was written in: absolute (a path on the command line
    or in text without a file: from the working directory). A URI or an absolute path stays as written.

    >>> _anchored("sub/x.npz", "sweeps/base/a.yaml") == os.path.abspath("sweeps/base/sub/x.npz")
    True
    >>> _anchored("/d/x.npz", "sweeps/a.yaml"), _anchored("s3://b/x.npz", "a.yaml"), _anchored(5, "a.yaml")
    ('/d/x.npz', 's3://b/x.npz', 5)
    """
    if not isinstance(value, str) or not value or "://" in value:
        return value
    v = os.path.expanduser(value)
    if os.path.isabs(v):
        return v
    base = "" if not file or file.startswith("<") else os.path.dirname(file)
    return os.path.abspath(os.path.join(base, v))


def _anchor_data_paths(layer: _Layer) -> None:
    """``data.path``/``data.test_path`` relative to the spec file that names them, made absolute — in
    ``fixed``, in searched values and in ``one_of`` options — so the spec saved in the run directory names
    the files that trained, from whatever directory the sweep is resumed."""
    def where(path: str) -> str:
        return _lookup(layer.locs, path, ("", None))[0]

    def anchor(p: Param, path: str) -> Param:
        if isinstance(p, Values):
            return Values(values=tuple(_anchored(v, where(path)) for v in p.values))
        if isinstance(p, Constant):
            return Constant(value=_anchored(p.value, where(path)))
        return p

    for key in _PATH_KEYS:
        if key in layer.fixed:
            layer.fixed[key] = _anchored(layer.fixed[key], where(f"fixed.{key}"))
    for key, p in list(layer.params.items()):
        if key in _PATH_KEYS:
            layer.params[key] = anchor(p, f"parameters.{key}")
        elif isinstance(p, OneOf):
            _, inner = one_of_layout(key)
            options = {name: {rel: anchor(q, f"parameters.{key}.one_of.{name}.{rel}") if inner + rel in _PATH_KEYS
                              else q for rel, q in opt.items()} for name, opt in p.options.items()}
            if options != p.options:
                layer.params[key] = OneOf(options=options)


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
