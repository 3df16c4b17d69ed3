"""Learning-rate schedules defined in epochs (or fractions of the run), never in raw steps: the math,
over any array namespace (NumPy here; ``keras.ops`` in ``bnsweep.engine.optimizers``).

A schedule is a dict: ``{"type": "cosine", "warmup_epochs": 5}``. Every formula is written once,
over an array namespace, so the planned curve (NumPy) and the training schedule (``keras.ops``,
any backend) are the same function. Where a parameter is a time, values < 1 are fractions of the
run and values ≥ 1 are epochs (``milestones: [0.5, 0.75]`` == ``[80, 120]`` for 160 epochs).
``step``/``multistep`` and ``rampup_exp`` change the LR only at epoch boundaries (as PyTorch's
per-epoch ``scheduler.step()`` and Keras' ``LearningRateScheduler`` did): a milestone that falls inside
an epoch (0.5 of 75 epochs = 37.5) takes effect at the start of the next epoch (38), whatever the batch
size or the number of steps per epoch.

>>> planned_lr({"type": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1}, lr=0.1, epochs=8)
[0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, get_args

import numpy as np

from bnsweep.spec.errors import ConfigError

ScheduleType = Literal[
    "constant", "step", "multistep", "cosine", "one_cycle", "exponential",
    "cosine_restarts", "linear_cosine", "rampup_exp",
]
SCHEDULE_TYPES: tuple[str, ...] = get_args(ScheduleType)

# type -> {parameter: default}; the accepted keys of each schedule.
SCHEDULE_PARAMS: dict[str, dict[str, Any]] = {
    "constant": {},
    "step": {"milestones": None, "every": None, "gamma": 0.1},
    "multistep": {"milestones": [0.5, 0.75], "gamma": 0.1},
    "cosine": {"warmup_epochs": 0, "final_fraction": 0.0},
    "one_cycle": {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4},
    "exponential": {"gamma": 0.95, "warmup_epochs": 0},  # LR × gamma per epoch, continuously
    # SGDR as TF's CosineDecayRestarts (final_fraction = its alpha); first_cycle is a time.
    "cosine_restarts": {"first_cycle": 0.1, "t_mul": 2.0, "m_mul": 1.0, "final_fraction": 0.0},
    "linear_cosine": {"num_periods": 0.5, "alpha": 0.0, "beta": 0.001},  # TF's LinearCosineDecay
    # The notebooks' callback (CIFAR10_Full_TPU_Different_LR_Schedules: start_lr = min_lr = 1e-5,
    # max_lr = 4e-4, rampup 5, sustain 0, exp_decay 0.8; it printed lrfn(0), lrfn(9) = 1e-05,
    # 0.000169744): start_lr → peak (= lr) linearly over rampup_epochs, then
    # (lr - min_lr) · decay^(epoch - rampup) + min_lr; per whole epoch, as LearningRateScheduler did.
    "rampup_exp": {"start_lr": 1e-5, "rampup_epochs": 5, "decay": 0.8, "min_lr": 1e-5},
}


def resolve_schedule(schedule: dict[str, Any], *, key: str = "lr_schedule") -> dict[str, Any]:
    """Fill defaults and validate keys/values; raises ``ConfigError`` naming the dotted key."""
    if not isinstance(schedule, Mapping):
        raise ConfigError(key, schedule, "a mapping with a 'type' key")
    kind = schedule.get("type")
    if kind not in SCHEDULE_TYPES:
        raise ConfigError(f"{key}.type", kind, "one of " + ", ".join(SCHEDULE_TYPES))
    allowed = SCHEDULE_PARAMS[kind]
    out: dict[str, Any] = {"type": kind, **{k: list(v) if isinstance(v, list) else v for k, v in allowed.items()}}
    for k, v in schedule.items():
        if k == "type":
            continue
        if k not in allowed:
            raise ConfigError(f"{key}.{k}", v, f"a parameter of {kind!r}: " + (", ".join(allowed) or "none"))
        out[k] = list(v) if isinstance(v, tuple) else v
    if kind == "step" and (out["milestones"] is None) == (out["every"] is None):
        raise ConfigError(f"{key}.milestones", out["milestones"], "exactly one of milestones / every")
    if kind in ("step", "multistep") and out.get("milestones") is not None:
        ms = out["milestones"]
        if not isinstance(ms, list) or not all(_is_num(m) and m > 0 for m in ms):
            raise ConfigError(f"{key}.milestones", ms, "a list of times > 0 (fractions < 1 or epochs)")
    for k, v in out.items():
        if k in ("type", "milestones") or v is None:
            continue
        if not _is_num(v):
            raise ConfigError(f"{key}.{k}", v, "a number")
        if k in _POSITIVE and v <= 0:
            raise ConfigError(f"{key}.{k}", v, "a number > 0")
        if v < 0:
            raise ConfigError(f"{key}.{k}", v, "a number >= 0")
    if "final_fraction" in out and out["final_fraction"] > 1:
        raise ConfigError(f"{key}.final_fraction", out["final_fraction"], "a number in [0, 1]")
    if kind == "one_cycle" and not 0 < out["pct_start"] < 1:
        raise ConfigError(f"{key}.pct_start", out["pct_start"], "a number in (0, 1)")
    if kind == "cosine_restarts" and out["t_mul"] < 1:
        raise ConfigError(f"{key}.t_mul", out["t_mul"], "a number >= 1")
    return out


# Parameters that must be > 0 (every other numeric parameter must be >= 0).
_POSITIVE = frozenset({"gamma", "every", "div_factor", "final_div_factor", "first_cycle", "t_mul", "m_mul",
                       "decay"})


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _epochs(t: float, epochs: int) -> float:
    """A time parameter: < 1 means a fraction of the run, otherwise epochs."""
    return float(t) * epochs if t < 1 else float(t)


def lr_at(t: Any, schedule: dict[str, Any], *, lr: float, epochs: int, xp: Any = np) -> Any:
    """LR at time ``t`` (in epochs, fractional within an epoch) for an array namespace ``xp``
    (``numpy`` or ``keras.ops``)."""
    s = resolve_schedule(schedule)
    kind, E = s["type"], float(epochs)
    if kind == "constant":
        return lr + 0.0 * t
    if kind in ("step", "multistep"):  # piecewise constant per whole epoch
        e = xp.floor(t)
        if s.get("milestones") is not None:
            n = sum((xp.where(e >= math.ceil(_epochs(m, epochs)), 1.0, 0.0) for m in s["milestones"]), 0.0 * t)
        else:
            n = xp.floor(e / max(math.ceil(_epochs(s["every"], epochs)), 1))
        return lr * xp.power(float(s["gamma"]), n)
    if kind == "cosine":
        w = _epochs(s["warmup_epochs"], epochs) if s["warmup_epochs"] else 0.0
        floor = lr * s["final_fraction"]
        progress = xp.minimum(xp.maximum((t - w) / max(E - w, 1e-9), 0.0), 1.0)
        cos = floor + (lr - floor) * _half_cos(progress, xp)
        return xp.where(t < w, _warmup(t, w, lr, xp), cos) if w else cos
    if kind == "one_cycle":  # PyTorch OneCycleLR with cosine annealing, in epochs
        up = s["pct_start"] * E
        start, end = lr / s["div_factor"], lr / s["div_factor"] / s["final_div_factor"]
        p_up = xp.minimum(t / up, 1.0)
        p_down = xp.minimum(xp.maximum((t - up) / max(E - up, 1e-9), 0.0), 1.0)
        rise = lr + (start - lr) * _half_cos(p_up, xp)
        fall = end + (lr - end) * _half_cos(p_down, xp)
        return xp.where(t < up, rise, fall)
    if kind == "exponential":
        w = _epochs(s["warmup_epochs"], epochs) if s["warmup_epochs"] else 0.0
        decayed = lr * xp.power(float(s["gamma"]), xp.maximum(t - w, 0.0))
        return xp.where(t < w, _warmup(t, w, lr, xp), decayed) if w else decayed
    if kind == "cosine_restarts":  # SGDR (Loshchilov & Hutter), cycles in epochs
        t0, t_mul = _epochs(s["first_cycle"], epochs), float(s["t_mul"])
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
        # As TF/Keras CosineDecayRestarts (alpha = final_fraction): m_mul scales each cycle's cosine
        # part; the floor stays lr · final_fraction.
        ff = float(s["final_fraction"])
        return lr * (ff + (1.0 - ff) * xp.power(float(s["m_mul"]), i) * _half_cos(frac, xp))
    if kind == "linear_cosine":
        p = xp.minimum(t / E, 1.0)
        cos = 0.5 * (1.0 + xp.cos(math.pi * 2.0 * s["num_periods"] * p))
        return lr * ((s["alpha"] + (1.0 - p)) * cos + s["beta"])
    if kind == "rampup_exp":
        e = xp.floor(t)
        ramp = math.ceil(_epochs(s["rampup_epochs"], epochs)) if s["rampup_epochs"] else 0
        up = (lr - s["start_lr"]) / max(ramp, 1e-9) * e + s["start_lr"]
        down = (lr - s["min_lr"]) * xp.power(float(s["decay"]), xp.maximum(e - ramp, 0.0)) + s["min_lr"]
        return xp.where(e < ramp, up, down)
    raise AssertionError(kind)  # resolve_schedule rejects unknown types


def _half_cos(p: Any, xp: Any) -> Any:
    """(1 + cos(π·p)) / 2, written as cos²(π·p/2): in float32 the former is exactly 0 for the last
    steps of a long run (cos rounds to -1), the latter stays positive until p = 1."""
    return xp.square(xp.cos(0.5 * math.pi * p))


def _warmup(t: Any, w: float, lr: float, xp: Any) -> Any:
    """Linear warmup over ``w`` epochs, never 0 at step 0 and never above the peak ``lr``."""
    return lr * xp.minimum((t + 1.0 / 1024) / w, 1.0)


def planned_lr(schedule: dict[str, Any], *, lr: float, epochs: int, points_per_epoch: int = 1) -> list[float]:
    """The LR the run will use at the start of each epoch (or ``points_per_epoch`` points per epoch)."""
    t = np.arange(epochs * points_per_epoch, dtype=np.float64) / points_per_epoch
    values = lr_at(t, schedule, lr=lr, epochs=epochs)
    return [float(f"{v:.12g}") for v in np.broadcast_to(values, t.shape)]  # 12 significant digits


