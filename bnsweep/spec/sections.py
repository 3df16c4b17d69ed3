"""The sweep-level sections of a spec, typed: ``metric``, ``scheduler``, ``resources``, ``tracking``
(``bnsweep.spec.tracking``, the one definition W&B tracking uses too), the parameter specs (``values`` /
``value`` / ``distribution`` / ``one_of``), and ``SpecFile``, the spec file's top level (``bnsweep schema``).

Building one directly raises ``SpecError`` with every problem:

>>> Metric(name="val_loss", goal="minimize").mode
'min'
>>> try:
...     Distribution(kind="log_uniform", min=0, max=1)
... except SpecError as e:
...     print(e)
<spec> min: expected a number > 0 (log_uniform needs a positive range), received 0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import AfterValidator, Field, ValidationError, model_validator

from bnsweep.spec.errors import ConfigError, ConfigErrors, Problem, SpecError, message
from bnsweep.spec.fields import Allowed, ListOut, Number, Section, config_errors
from bnsweep.spec.tracking import TrackingConfig

__all__ = ["DISTRIBUTION_KINDS", "METHODS", "METRIC_NAMES", "SCHEDULER_TYPES", "Constant", "Distribution", "Metric",
           "OneOf", "Param", "Resources", "SchedulerSpec", "SpecFile", "SpecSection", "TrackingConfig", "Values",
           "Watchdog"]

Method = Literal["grid", "random", "tpe", "cmaes"]
METHODS: tuple[str, ...] = get_args(Method)
MetricName = Literal["val_accuracy", "val_loss", "train_accuracy", "train_loss"]
METRIC_NAMES: tuple[str, ...] = get_args(MetricName)
SchedulerType = Literal["asha", "median", "none"]
SCHEDULER_TYPES: tuple[str, ...] = get_args(SchedulerType)
DistributionKind = Literal["uniform", "log_uniform", "int_uniform", "q_uniform", "int_log_uniform"]
DISTRIBUTION_KINDS: tuple[str, ...] = get_args(DistributionKind)
MAX_NUMBER = 1e15  # bounds of any number in a distribution (keeps Optuna/NumPy far from overflow)
MAX_TRIALS = 1_000_000
NonEmpty = Annotated[str, Field(min_length=1)]


class SpecSection(Section):
    """A sweep-level section: building one directly raises ``SpecError`` listing every problem."""

    @classmethod
    def construction_error(cls, error: ValidationError, data: Mapping[str, Any]) -> Exception:
        return SpecError([Problem("<spec>", None, e.key, message(e)) for e in config_errors(error, cls, data)])


# ---------------------------------------------------------------- sweep-level sections


class Metric(SpecSection):
    """What the search optimizes (``metric: val_loss`` is short for ``{name: val_loss}``; the goal follows)."""

    name: MetricName = Field("val_accuracy", description="the metric reported every epoch that the search optimizes")
    goal: Literal["maximize", "minimize"] = Field("maximize", description="maximize or minimize it")

    @property
    def mode(self) -> Literal["max", "min"]:
        """Ray Tune / Optuna spelling of ``goal``."""
        return "max" if self.goal == "maximize" else "min"


class SchedulerSpec(SpecSection):
    """Early stopping of trials: ASHA, median stopping or none (``scheduler: asha`` is short for ``{type: asha}``).

    >>> SchedulerSpec(type="asha", grace_period=5).reduction_factor
    3
    """

    type: SchedulerType = Field("none", description="asha (successive halving), median (median stopping) or none")
    grace_period: Annotated[int, Field(ge=1, le=1_000_000), Allowed("an integer from 1 to 1,000,000 (epochs)")] = \
        Field(1, description="epochs every trial runs before it can be stopped")
    reduction_factor: Annotated[Number, Field(gt=1, le=1000)] = Field(
        3, description="asha: the share of trials kept at each rung is 1 / reduction_factor")


def _whole_above_one(gpu: float) -> float:
    if gpu > 1 and gpu != int(gpu):
        raise ConfigError("", gpu, "a fraction <= 1 or a whole number of GPUs")
    return gpu


class Resources(SpecSection):
    """Per-trial resources for Ray Tune: CPUs (fractions ok), GPUs (fractions ok, whole above 1), TPU chips.

    ``cpu`` left out lets ``launch`` choose the packing for the machine it runs on (as few trials at once as fill
    the CPUs, each with an equal share as its TensorFlow threads).

    >>> Resources(gpu=0.25).cpu is None, Resources(cpu=2).cpu
    (True, 2)
    """

    cpu: Annotated[Number | None, Field(gt=0, le=4096), Allowed(
        "a number > 0 (fractions allowed), or leave it out to let launch share the machine's CPUs out")] = Field(
        None, description="CPUs per trial (fractions allowed); left out: launch shares the machine's CPUs out")
    gpu: Annotated[Number, Field(ge=0, le=4096), AfterValidator(_whole_above_one),
                   Allowed("a number >= 0 (fractions allowed)")] = Field(
        0, description="GPUs per trial (a fraction <= 1 shares a GPU, or a whole number)")
    tpu: int = Field(0, ge=0, le=4096, description="TPU chips per trial")


class Watchdog(SpecSection):
    """Hung trials (``sweep/watchdog.py``): a running trial that reports no epoch within its limit is stopped
    and retried from its last checkpoint (an environment fault: ``ENVIRONMENT_RETRIES`` times, then failed with
    that reason). The limit is ``max(min_seconds, factor × the slowest epoch seen)`` (the trial's own, or the
    sweep's before the trial has one), plus ``first_epoch_seconds`` until each attempt reports its first epoch
    (start-up, data, restore, compilation). Not part of the spec hash: changing it never blocks a ``resume``.

    >>> Watchdog().factor, Watchdog(min_seconds=60).min_seconds, Watchdog(enabled=False).enabled
    (10, 60, False)
    """

    enabled: bool = Field(True, description="stop and retry trials that report no epoch within the limit")
    factor: Annotated[Number, Field(ge=1, le=1_000_000)] = Field(
        10, description="the limit is this multiple of the slowest epoch seen (the trial's, else the sweep's)")
    min_seconds: Annotated[Number, Field(gt=0, le=1e8)] = Field(
        300, description="the limit is never below this many seconds")
    first_epoch_seconds: Annotated[Number, Field(ge=0, le=1e8)] = Field(
        3600, description="added to the limit of each attempt's first epoch (start-up, restore, compilation)")


# ---------------------------------------------------------------- parameter specs


class Values(SpecSection):
    """A categorical parameter (a grid axis): one of ``values``.

    >>> Values(values=(128, 256)).values
    (128, 256)
    """

    values: Annotated[tuple[Any, ...], Field(strict=False, min_length=1), ListOut, Allowed("a non-empty list")] = \
        Field(description="the values to choose from")


class Constant(SpecSection):
    """A constant set like ``fixed`` (useful inside ``one_of`` options and for overriding an include).

    >>> Constant(value=0.9).value
    0.9
    """

    value: Any = Field(description="the value")


_BOUND = f"between -{MAX_NUMBER:g} and {MAX_NUMBER:g}"
Bound = Annotated[Number, Field(ge=-MAX_NUMBER, le=MAX_NUMBER), Allowed(f"a number {_BOUND}")]


class Distribution(SpecSection):
    """A numeric range: uniform, log_uniform, q_uniform (needs ``step``), int_uniform, int_log_uniform.

    >>> Distribution(kind="int_uniform", min=0, max=5).integer
    True
    """

    kind: DistributionKind = Field(alias="distribution", description="how values are drawn from [min, max]")
    min: Bound = Field(description="smallest value")
    max: Bound = Field(description="largest value")
    step: Annotated[Number | None, Allowed("a number > 0 (q_uniform) or an integer >= 1 (int_uniform)")] = Field(
        None, description="q_uniform: the grid step (required); int_uniform: the step (default 1)")

    @property
    def log(self) -> bool:
        return self.kind in ("log_uniform", "int_log_uniform")

    @property
    def integer(self) -> bool:
        return self.kind in ("int_uniform", "int_log_uniform")

    @model_validator(mode="after")
    def _consistent(self) -> Distribution:
        errors = [ConfigError(k, v, f"an integer {_BOUND}") for k, v in (("min", self.min), ("max", self.max))
                  if self.integer and not isinstance(v, int)]
        if not errors and self.log and self.min <= 0:
            errors.append(ConfigError("min", self.min, f"a number > 0 ({self.kind} needs a positive range)"))
        if not errors and self.max <= self.min:
            errors.append(ConfigError("max", self.max, f"a number > min ({self.min})"))
        step = self.step
        if self.kind == "q_uniform":
            if step is None or not step > 0:
                errors.append(ConfigError("step", step, "a number > 0 (required for q_uniform)"))
            elif not errors and step > self.max - self.min:
                errors.append(ConfigError("step", step, f"a step <= max - min ({self.max - self.min})"))
        elif self.kind == "int_uniform":
            if step is not None and not (isinstance(step, int) and 1 <= step <= MAX_NUMBER):
                errors.append(ConfigError("step", step, "an integer >= 1"))
        elif step is not None:
            errors.append(ConfigError("step", step, f"no step for {self.kind} (use q_uniform or int_uniform)"))
        if errors:
            raise ConfigErrors(errors)
        return self

    def endpoints(self) -> tuple[float, float]:
        """The smallest and largest values the distribution can produce (``max`` rounded down to a step)."""
        if self.step and not self.log:
            high = self.min + math.floor((self.max - self.min) / self.step + 1e-9) * self.step
            return self.min, (int(high) if self.integer else high)
        return self.min, self.max


class OneOf(SpecSection):
    """A conditional choice: an option name, then that option's own parameters (relative dotted keys).

    Under a section with a selector (``lr_schedule``: ``type``; ``optimizer``: ``name``; ``data``: ``source``) the
    option name is the selector's value; under another section (``model``) a label only; under a single value
    (``regime``) that value. See ``sweep_spec.one_of_layout``.

    >>> OneOf(options={"constant": {}, "cosine": {"warmup_epochs": Values(values=(0, 5))}}).names
    ('constant', 'cosine')
    """

    options: Annotated[dict[NonEmpty, dict[str, Param]], Field(min_length=1), Allowed(
        "a non-empty mapping of option name -> settings")] = Field(
        alias="one_of", description="option name -> that option's settings (constants or parameter specs)")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.options)


Param = Union[Values, Constant, Distribution, OneOf]  # noqa: UP007
OneOf.model_rebuild()
PARAM_TYPES = (Values, Constant, Distribution, OneOf)


# ---------------------------------------------------------------- the file's top level


RunName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=200), Allowed(
    "a run name of letters, digits, '_', '.', '-'")]
Storage = Annotated[str, Field(pattern=r"://"), Allowed("a database URL such as sqlite:///study.db")]


class SpecFile(SpecSection):
    """A sweep spec file: a sweep to launch (``name`` required), or a partial one that others ``include``."""

    name: RunName = Field(description="the sweep's name and run directory (runs/NAME); required in a launched spec")
    description: str = Field("", description="what the sweep asks (shown by plan and in the run directory)")
    include: NonEmpty | list[NonEmpty] | None = Field(
        None, description="spec file(s), relative to this one, deep-merged under this one (this file wins)")
    method: Method = Field("tpe", description="search: grid (every point once), random, tpe (Optuna TPE), cmaes")
    metric: Metric | MetricName = Field(Metric(), description="what the search optimizes")
    trials: int = Field(1, ge=1, le=MAX_TRIALS, description="sampled configurations (grid: the first N points; "
                                                            "left out: the whole grid)")
    replicates: int = Field(1, ge=1, le=10_000, description="seeds per configuration: seed, seed + 1, ...")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="the first replicate's seed; also the search's seed")
    max_concurrent: int | None = Field(None, ge=1, le=100_000,
                                       description="trials at once (left out: as many as fill the machine)")
    scheduler: SchedulerSpec | SchedulerType = Field(SchedulerSpec(), description="early stopping of trials")
    resources: Resources = Field(Resources(), description="per-trial resources for Ray Tune")
    retries: int = Field(0, ge=0, le=1000, description="times a failed trial is retried")
    storage: Storage | None = Field(None, description="Optuna storage URL (default: a SQLite file in the run "
                                                      "directory)")
    tracking: TrackingConfig = Field(TrackingConfig(), description="Weights & Biases tracking")
    fixed: dict[str, Any] = Field({}, description="trial-config keys every trial uses (nested or dotted)")
    parameters: dict[str, Any] = Field({}, description="trial-config keys the search varies: {values: [...]}, "
                                                       "{value: x}, {distribution: ..., min, max}, {one_of: {...}}")
    watchdog: Watchdog = Field(Watchdog(), description="hung trials: stopped and retried from their last checkpoint "
                                                       "after no epoch for max(min_seconds, factor × the slowest "
                                                       "epoch) s (+ first_epoch_seconds for a first epoch); not "
                                                       "part of the spec hash")
    expect: dict[str, Any] | None = Field(
        None, description="what published results say this sweep should measure: {\"key=value,...\": {metric: "
                          "[low, high], source: text}} (export --scorecard); not part of the spec hash")

    @model_validator(mode="after")
    def _not_a_relative_directory(self) -> SpecFile:
        if self.name in (".", ".."):
            raise ConfigError("name", self.name, "a run name of letters, digits, '_', '.', '-'")
        return self
