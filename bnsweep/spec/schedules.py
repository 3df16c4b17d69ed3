"""Learning-rate schedules defined in epochs (or fractions of the run), never in raw steps: one typed model per
kind, each with its formula over any array namespace (NumPy here; ``keras.ops`` in ``bnsweep.engine.optimizers``).

A schedule is a tagged model, ``Schedule`` (a discriminated union on ``type``): ``parse_schedule({"type":
"cosine", "warmup_epochs": 5})`` fills the kind's defaults and checks its fields. Every formula is written once,
over an array namespace, so the planned curve (NumPy) and the training schedule (``keras.ops``, any backend) are
the same function. Where a parameter is a time, values < 1 are fractions of the run and values ≥ 1 are epochs
(``milestones: [0.5, 0.75]`` == ``[80, 120]`` for 160 epochs). ``step``/``multistep`` and ``rampup_exp`` change
the LR only at epoch boundaries (as PyTorch's per-epoch ``scheduler.step()`` and Keras' ``LearningRateScheduler``
did): a milestone that falls inside an epoch (0.5 of 75 epochs = 37.5) takes effect at the start of the next
epoch (38), whatever the batch size or the number of steps per epoch.

>>> planned_lr(parse_schedule({"type": "multistep"}), lr=0.1, epochs=8)
[0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
>>> parse_schedule({"type": "cosine", "warmup_epochs": 200}).warnings(160)
[('warmup_epochs', 'a warm-up of 200 epochs in a run of 160 epochs: the run ends before the LR has warmed up')]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

import numpy as np
from pydantic import Field, ValidationError, model_validator

from bnsweep.spec.errors import ConfigError
from bnsweep.spec.fields import Allowed, ListOut, Number, Section, config_errors

__all__ = ["SCHEDULE_TYPES", "Schedule", "lr_at", "parse_schedule", "planned_lr"]

Time = Annotated[Number, Field(ge=0)]  # < 1: a fraction of the run; >= 1: epochs
PositiveTime = Annotated[Number, Field(gt=0)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Milestones = Annotated[tuple[PositiveTime, ...], Field(strict=False), ListOut,
                       Allowed("a list of times > 0 (fractions < 1 or epochs)")]

# Parameters several kinds share: one description each.
_MILESTONES = "times of the LR drops: fractions < 1 of the run or epochs (step: milestones or every)"
_GAMMA = "LR factor at each drop, or per epoch (exponential)"
_WARMUP = "linear warm-up to the peak LR first (epochs, or a fraction of the run)"
_FINAL = "the LR at the end, as a fraction of the peak"
_TYPE = "LR schedule type (constant, step, multistep, cosine, ...): the other parameters are its own"


def _epochs(t: float, epochs: int) -> float:
    """A time parameter: < 1 means a fraction of the run, otherwise epochs."""
    return float(t) * epochs if t < 1 else float(t)


def _half_cos(p: Any, xp: Any) -> Any:
    """(1 + cos(π·p)) / 2, written as cos²(π·p/2): in float32 the former is exactly 0 for the last
    steps of a long run (cos rounds to -1), the latter stays positive until p = 1."""
    return xp.square(xp.cos(0.5 * math.pi * p))


def _warmup(t: Any, w: float, lr: float, xp: Any) -> Any:
    """Linear warmup over ``w`` epochs, never 0 at step 0 and never above the peak ``lr``."""
    return lr * xp.minimum((t + 1.0 / 1024) / w, 1.0)


def _warmup_warning(key: str, w: float, epochs: int) -> list[tuple[str, str]]:
    if w < epochs:
        return []
    return [(key, f"a warm-up of {w:g} epochs in a run of {epochs} epochs: the run ends before the LR has warmed up")]


class _Schedule(Section):
    """One LR schedule kind; the peak LR is the trial's ``lr`` (after ``lr_scaling``)."""

    _key: ClassVar[str] = "lr_schedule"
    type: str = Field(description=_TYPE)

    @classmethod
    def unknown_key_phrase(cls) -> str:
        params = [k for k in cls.model_fields if k != "type"]
        return f"a parameter of {cls.model_fields['type'].default!r}: " + (", ".join(params) or "none")

    def lr_at(self, t: Any, *, lr: float, epochs: int, xp: Any) -> Any:  # pragma: no cover - every kind has one
        raise NotImplementedError

    def warnings(self, epochs: int) -> list[tuple[str, str]]:
        """``(parameter, message)`` for what this schedule cannot do in a run of ``epochs`` epochs."""
        return []


class ConstantSchedule(_Schedule):
    type: Literal["constant"] = Field("constant", description=_TYPE)

    def lr_at(self, t: Any, *, lr: float, epochs: int, xp: Any) -> Any:
        return lr + 0.0 * t


class _Drops(_Schedule):
    """Piecewise constant per whole epoch: × gamma at each milestone (or every ``every`` epochs)."""

    def drops(self, epochs: int) -> list[int]:
        return [math.ceil(_epochs(m, epochs)) for m in getattr(self, "milestones", None) or ()]

    def lr_at(self, t: Any, *, lr: float, epochs: int, xp: Any) -> Any:
        e = xp.floor(t)
        every = getattr(self, "every", None)
        if every is None:
            n = sum((xp.where(e >= d, 1.0, 0.0) for d in self.drops(epochs)), 0.0 * t)
        else:
            n = xp.floor(e / max(math.ceil(_epochs(every, epochs)), 1))
        return lr * xp.power(float(getattr(self, "gamma")), n)  # noqa: B009 - every drop kind has gamma

    def warnings(self, epochs: int) -> list[tuple[str, str]]:
        out = []
        late = [(m, d) for m, d in zip(getattr(self, "milestones", None) or (), self.drops(epochs), strict=True)
                if d >= epochs]
        if late:
            shown = ", ".join(f"{m:g} (epoch {d})" for m, d in late)
            never = "that LR drop never happens" if len(late) == 1 else "those drops never happen"
            out.append(("milestones", f"milestone {shown} is not before the last epoch of the {epochs}-epoch run: "
                                      f"{never}"))
        every = getattr(self, "every", None)
        if every is not None and math.ceil(_epochs(every, epochs)) >= epochs:
            out.append(("every", f"a drop every {every:g} epochs in a run of {epochs} epochs: the LR never drops"))
        return out


class StepSchedule(_Drops):
    type: Literal["step"] = Field("step", description=_TYPE)
    milestones: Milestones | None = Field(None, description=_MILESTONES)
    every: PositiveTime | None = Field(
        None, description="drop the LR every this many epochs (or this fraction of the run)")
    gamma: Positive = Field(0.1, description=_GAMMA)

    @model_validator(mode="after")
    def _one_of_milestones_every(self) -> StepSchedule:
        if (self.milestones is None) == (self.every is None):
            raise ConfigError("milestones", None if self.milestones is None else list(self.milestones),
                              "exactly one of milestones / every")
        return self


class MultiStepSchedule(_Drops):
    type: Literal["multistep"] = Field("multistep", description=_TYPE)
    milestones: Milestones = Field((0.5, 0.75), description=_MILESTONES)
    gamma: Positive = Field(0.1, description=_GAMMA)


class CosineSchedule(_Schedule):
    type: Literal["cosine"] = Field("cosine", description=_TYPE)
    warmup_epochs: Time = Field(0, description=_WARMUP)
    final_fraction: Fraction = Field(0.0, description=_FINAL)

    def lr_at(self, t: Any, *, lr: float, epochs: int, xp: Any) -> Any:
        w = _epochs(self.warmup_epochs, epochs) if self.warmup_epochs else 0.0
        floor = lr * self.final_fraction
        progress = xp.minimum(xp.maximum((t - w) / max(float(epochs) - w, 1e-9), 0.0), 1.0)
        cos = floor + (lr - floor) * _half_cos(progress, xp)
        return xp.where(t < w, _warmup(t, w, lr, xp), cos) if w else cos

    def warnings(self, epochs: int) -> list[tuple[str, str]]:
        return _warmup_warning("warmup_epochs", _epochs(self.warmup_epochs, epochs), epochs)


class OneCycleSchedule(_Schedule):
    """PyTorch's OneCycleLR with cosine annealing, in epochs (the cycle is the run)."""

    type: Literal["one_cycle"] = Field("one_cycle", description=_TYPE)
    pct_start: Annotated[float, Field(gt=0, lt=1)] = Field(0.3, description="share of the run spent rising")
    div_factor: Positive = Field(25.0, description="the starting LR is the peak / div_factor")
    final_div_factor: Positive = Field(1e4, description="the final LR is the starting LR / final_div_factor")

    def lr_at(self, t: Any, *, lr: float, epochs: int, xp: Any) -> Any:
        E = float(epochs)
        up = self.pct_start * E
        start, end = lr / self.div_factor, lr / self.div_factor / self.final_div_factor
        p_up = xp.minimum(t / up, 1.0)
        p_down = xp.minimum(xp.maximum((t - up) / max(E - up, 1e-9), 0.0), 1.0)
        rise = lr + (start - lr) * _half_cos(p_up, xp)
        fall = end + (lr - end) * _half_cos(p_down, xp)
        return xp.where(t < up, rise, fall)


class ExponentialSchedule(_Schedule):
    type: Literal["exponential"] = Field("exponential", description=_TYPE)
    gamma: Positive = Field(0.95, description=_GAMMA)
    warmup_epochs: Time = Field(0, description=_WARMUP)

    def lr_at(self, t: Any, *, lr: float, epochs: int, xp: Any) -> Any:  # LR × gamma per epoch, continuously
        w = _epochs(self.warmup_epochs, epochs) if self.warmup_epochs else 0.0
        decayed = lr * xp.power(float(self.gamma), xp.maximum(t - w, 0.0))
        return xp.where(t < w, _warmup(t, w, lr, xp), decayed) if w else decayed

    def warnings(self, epochs: int) -> list[tuple[str, str]]:
        return _warmup_warning("warmup_epochs", _epochs(self.warmup_epochs, epochs), epochs)


class CosineRestartsSchedule(_Schedule):
    """SGDR (Loshchilov & Hutter) as TF/Keras' CosineDecayRestarts (final_fraction = its alpha)."""

    type: Literal["cosine_restarts"] = Field("cosine_restarts", description=_TYPE)
    first_cycle: PositiveTime = Field(0.1, description="length of the first cosine cycle (epochs, or a fraction)")
    t_mul: Annotated[float, Field(ge=1)] = Field(2.0, description="each cycle is t_mul times longer than the last")
    m_mul: Positive = Field(1.0, description="each cycle's peak is m_mul times the last one's")
    final_fraction: Fraction = Field(0.0, description=_FINAL)

    def lr_at(self, t: Any, *, lr: float, epochs: int, xp: Any) -> Any:
        t0, t_mul = _epochs(self.first_cycle, epochs), float(self.t_mul)
        x = t / t0
        if t_mul == 1.0:
            i = xp.floor(x)
            frac = x - i
        else:  # cycle i covers x in [done(i), done(i+1)), done(i) = (t_mul^i - 1) / (t_mul - 1)
            i = xp.floor(xp.log(1.0 + x * (t_mul - 1.0)) / math.log(t_mul))
            # log() rounding can put a cycle boundary on the wrong side (float32): fix i exactly.
            i = xp.where(x < (xp.power(t_mul, i) - 1.0) / (t_mul - 1.0), i - 1.0, i)
            i = xp.where(x >= (xp.power(t_mul, i + 1.0) - 1.0) / (t_mul - 1.0), i + 1.0, i)
            done = (xp.power(t_mul, i) - 1.0) / (t_mul - 1.0)
            frac = (x - done) / xp.power(t_mul, i)
        # m_mul scales each cycle's cosine part; the floor stays lr · final_fraction.
        ff = float(self.final_fraction)
        return lr * (ff + (1.0 - ff) * xp.power(float(self.m_mul), i) * _half_cos(frac, xp))

    def warnings(self, epochs: int) -> list[tuple[str, str]]:
        first = _epochs(self.first_cycle, epochs)
        if first < epochs:
            return []
        return [("first_cycle", f"a first cycle of {first:g} epochs in a run of {epochs} epochs: no restart happens"
                                f"{' and the LR never reaches its floor' if first > epochs else ''}")]


class LinearCosineSchedule(_Schedule):
    """TF's LinearCosineDecay over the run."""

    type: Literal["linear_cosine"] = Field("linear_cosine", description=_TYPE)
    num_periods: NonNegative = Field(0.5, description="cosine periods over the run")
    alpha: NonNegative = Field(0.0, description="TF's LinearCosineDecay alpha")
    beta: NonNegative = Field(0.001, description="TF's LinearCosineDecay beta (the LR floor, as a fraction)")

    def lr_at(self, t: Any, *, lr: float, epochs: int, xp: Any) -> Any:
        p = xp.minimum(t / float(epochs), 1.0)
        cos = 0.5 * (1.0 + xp.cos(math.pi * 2.0 * self.num_periods * p))
        return lr * ((self.alpha + (1.0 - p)) * cos + self.beta)


class RampupExpSchedule(_Schedule):
    """The notebooks' callback (CIFAR10_Full_TPU_Different_LR_Schedules: start_lr = min_lr = 1e-5, max_lr =
    4e-4, rampup 5, sustain 0, exp_decay 0.8; it printed lrfn(0), lrfn(9) = 1e-05, 0.000169744): start_lr → peak
    (= lr) linearly over rampup_epochs, then (lr - min_lr) · decay^(epoch - rampup) + min_lr; per whole epoch."""

    type: Literal["rampup_exp"] = Field("rampup_exp", description=_TYPE)
    start_lr: NonNegative = Field(1e-5, description="the LR of epoch 0")
    rampup_epochs: Time = Field(5, description="epochs (or a fraction) rising linearly to the peak")
    decay: Positive = Field(0.8, description="factor per epoch after the ramp")
    min_lr: NonNegative = Field(1e-5, description="the LR the decay tends to")

    def lr_at(self, t: Any, *, lr: float, epochs: int, xp: Any) -> Any:
        e = xp.floor(t)
        ramp = math.ceil(_epochs(self.rampup_epochs, epochs)) if self.rampup_epochs else 0
        up = (lr - self.start_lr) / max(ramp, 1e-9) * e + self.start_lr
        down = (lr - self.min_lr) * xp.power(float(self.decay), xp.maximum(e - ramp, 0.0)) + self.min_lr
        return xp.where(e < ramp, up, down)

    def warnings(self, epochs: int) -> list[tuple[str, str]]:
        ramp = math.ceil(_epochs(self.rampup_epochs, epochs)) if self.rampup_epochs else 0
        return _warmup_warning("rampup_epochs", ramp, epochs)


Schedule = Annotated[
    Union[ConstantSchedule, StepSchedule, MultiStepSchedule, CosineSchedule, OneCycleSchedule,  # noqa: UP007
          ExponentialSchedule, CosineRestartsSchedule, LinearCosineSchedule, RampupExpSchedule],
    Field(discriminator="type"),
]
"""Any LR schedule: the kind is its ``type``."""

SCHEDULE_TYPES: tuple[str, ...] = tuple(get_args(m.model_fields["type"].annotation)[0]
                                        for m in get_args(get_args(Schedule)[0]))


def parse_schedule(value: Mapping[str, Any], *, key: str = "lr_schedule") -> Schedule:
    """The typed schedule of a plain mapping (defaults filled in); ``ConfigError`` naming the dotted key.

    >>> parse_schedule({"type": "step", "every": 30})
    StepSchedule(type='step', milestones=None, every=30, gamma=0.1)
    """
    if not isinstance(value, Mapping):
        raise ConfigError(key, value, "a mapping with a 'type' key")
    data = {"lr_schedule": dict(value)}
    try:
        return _Holder.model_validate(data).lr_schedule
    except ValidationError as e:
        raise config_errors(e, _Holder, data)[0].rekey("lr_schedule", key) from None


class _Holder(Section):  # lets config_errors walk a bare schedule's errors like a section's
    lr_schedule: Schedule


def lr_at(t: Any, schedule: Schedule, *, lr: float, epochs: int, xp: Any = np) -> Any:
    """LR at time ``t`` (in epochs, fractional within an epoch) for an array namespace ``xp``
    (``numpy`` or ``keras.ops``)."""
    return schedule.lr_at(t, lr=lr, epochs=epochs, xp=xp)


def planned_lr(schedule: Schedule, *, lr: float, epochs: int, points_per_epoch: int = 1) -> list[float]:
    """The LR the run will use at the start of each epoch (or ``points_per_epoch`` points per epoch)."""
    t = np.arange(epochs * points_per_epoch, dtype=np.float64) / points_per_epoch
    values = lr_at(t, schedule, lr=lr, epochs=epochs)
    return [float(f"{v:.12g}") for v in np.broadcast_to(values, t.shape)]  # 12 significant digits
