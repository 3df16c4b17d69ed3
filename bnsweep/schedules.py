"""Learning-rate schedules defined in epochs (or fractions of the run), never in raw steps, and the
optimizers that use them.

A schedule is a dict: ``{"type": "cosine", "warmup_epochs": 5}``. Every formula is written once,
over an array namespace, so the planned curve (NumPy) and the training schedule (``keras.ops``,
any backend) are the same function. Where a parameter is a time, values < 1 are fractions of the
run and values ≥ 1 are epochs (``milestones: [0.5, 0.75]`` == ``[80, 120]`` for 160 epochs).

>>> planned_lr({"type": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1}, lr=0.1, epochs=8)
[0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bnsweep.config import SCHEDULE_TYPES, ConfigError

# type -> {parameter: default}; the accepted keys of each schedule.
SCHEDULE_PARAMS: dict[str, dict[str, Any]] = {
    "constant": {},
    "step": {"milestones": None, "every": None, "gamma": 0.1},
    "multistep": {"milestones": [0.5, 0.75], "gamma": 0.1},
    "cosine": {"warmup_epochs": 0, "final_fraction": 0.0},
    "one_cycle": {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4},
    "exponential": {"gamma": 0.95, "warmup_epochs": 0},  # LR × gamma per epoch, continuously
    "cosine_restarts": {"first_cycle": 0.1, "t_mul": 2.0, "m_mul": 1.0, "final_fraction": 0.0},
    "linear_cosine": {"num_periods": 0.5, "alpha": 0.0, "beta": 0.001},  # TF's LinearCosineDecay
    # The notebooks' callback: start_lr → peak (= lr) linearly over rampup_epochs, then × decay per
    # epoch towards min_lr; evaluated per whole epoch, as Keras' LearningRateScheduler did.
    "rampup_exp": {"start_lr": 1e-5, "rampup_epochs": 5, "decay": 0.8, "min_lr": 0.0},
}


def resolve_schedule(schedule: dict[str, Any], *, key: str = "lr_schedule") -> dict[str, Any]:
    """Fill defaults and validate keys/values; raises ``ConfigError`` naming the dotted key."""
    kind = schedule.get("type")
    if kind not in SCHEDULE_TYPES:
        raise ConfigError(f"{key}.type", kind, "one of " + ", ".join(SCHEDULE_TYPES))
    allowed = SCHEDULE_PARAMS[kind]
    out: dict[str, Any] = {"type": kind, **allowed}
    for k, v in schedule.items():
        if k == "type":
            continue
        if k not in allowed:
            raise ConfigError(f"{key}.{k}", v, f"a parameter of {kind!r}: " + (", ".join(allowed) or "none"))
        out[k] = v
    if kind == "step":
        if (out["milestones"] is None) == (out["every"] is None):
            raise ConfigError(f"{key}.milestones", out["milestones"], "exactly one of milestones / every")
    if kind in ("step", "multistep") and out.get("milestones") is not None:
        ms = out["milestones"]
        if not isinstance(ms, (list, tuple)) or not all(_is_num(m) and m > 0 for m in ms):
            raise ConfigError(f"{key}.milestones", ms, "a list of times > 0 (fractions < 1 or epochs)")
    for k, v in out.items():
        if k not in ("type", "milestones") and v is not None and not _is_num(v):
            raise ConfigError(f"{key}.{k}", v, "a number")
    if kind == "one_cycle" and not 0 < out["pct_start"] < 1:
        raise ConfigError(f"{key}.pct_start", out["pct_start"], "a number in (0, 1)")
    if kind == "cosine_restarts" and (out["first_cycle"] <= 0 or out["t_mul"] < 1):
        raise ConfigError(f"{key}.first_cycle", out["first_cycle"], "first_cycle > 0 and t_mul >= 1")
    return out


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
    if kind in ("step", "multistep"):
        if s.get("milestones") is not None:
            n = sum(xp.where(t >= _epochs(m, epochs), 1.0, 0.0) for m in s["milestones"])
        else:
            n = xp.floor(t / _epochs(s["every"], epochs))
        return lr * xp.power(float(s["gamma"]), n)
    if kind == "cosine":
        w = _epochs(s["warmup_epochs"], epochs) if s["warmup_epochs"] else 0.0
        floor = lr * s["final_fraction"]
        progress = xp.minimum(xp.maximum((t - w) / max(E - w, 1e-9), 0.0), 1.0)
        cos = floor + (lr - floor) * 0.5 * (1.0 + xp.cos(math.pi * progress))
        return xp.where(t < w, lr * (t + 1.0 / 1024) / max(w, 1e-9), cos) if w else cos
    if kind == "one_cycle":  # PyTorch OneCycleLR with cosine annealing, in epochs
        up = s["pct_start"] * E
        start, end = lr / s["div_factor"], lr / s["div_factor"] / s["final_div_factor"]
        p_up = xp.minimum(t / up, 1.0)
        p_down = xp.minimum(xp.maximum((t - up) / max(E - up, 1e-9), 0.0), 1.0)
        rise = lr + (start - lr) * 0.5 * (1.0 + xp.cos(math.pi * p_up))
        fall = end + (lr - end) * 0.5 * (1.0 + xp.cos(math.pi * p_down))
        return xp.where(t < up, rise, fall)
    if kind == "exponential":
        w = _epochs(s["warmup_epochs"], epochs) if s["warmup_epochs"] else 0.0
        decayed = lr * xp.power(float(s["gamma"]), xp.maximum(t - w, 0.0))
        return xp.where(t < w, lr * (t + 1.0 / 1024) / max(w, 1e-9), decayed) if w else decayed
    if kind == "cosine_restarts":  # SGDR (Loshchilov & Hutter), cycles in epochs
        t0, t_mul = _epochs(s["first_cycle"], epochs), float(s["t_mul"])
        x = t / t0
        if t_mul == 1.0:
            i = xp.floor(x)
            frac = x - i
        else:
            i = xp.floor(xp.log(1.0 - x * (1.0 - t_mul)) / math.log(t_mul))
            done = (1.0 - xp.power(t_mul, i)) / (1.0 - t_mul)
            frac = (x - done) / xp.power(t_mul, i)
        peak = lr * xp.power(float(s["m_mul"]), i)
        floor = peak * s["final_fraction"]
        return floor + (peak - floor) * 0.5 * (1.0 + xp.cos(math.pi * frac))
    if kind == "linear_cosine":
        p = xp.minimum(t / E, 1.0)
        cos = 0.5 * (1.0 + xp.cos(math.pi * 2.0 * s["num_periods"] * p))
        return lr * ((s["alpha"] + (1.0 - p)) * cos + s["beta"])
    if kind == "rampup_exp":
        e = xp.floor(t)
        ramp = s["rampup_epochs"]
        up = (lr - s["start_lr"]) / max(ramp, 1e-9) * e + s["start_lr"]
        down = (lr - s["min_lr"]) * xp.power(float(s["decay"]), xp.maximum(e - ramp, 0.0)) + s["min_lr"]
        return xp.where(e < ramp, up, down)
    raise AssertionError(kind)  # resolve_schedule rejects unknown types


def planned_lr(schedule: dict[str, Any], *, lr: float, epochs: int, points_per_epoch: int = 1) -> list[float]:
    """The LR the run will use at the start of each epoch (or ``points_per_epoch`` points per epoch)."""
    t = np.arange(epochs * points_per_epoch, dtype=np.float64) / points_per_epoch
    values = lr_at(t, schedule, lr=lr, epochs=epochs)
    return [float(round(v, 12)) for v in np.broadcast_to(values, t.shape)]


def make_keras_schedule(schedule: dict[str, Any], *, lr: float, epochs: int, steps_per_epoch: int):
    """A ``keras.optimizers.schedules.LearningRateSchedule`` over optimizer steps."""
    import keras
    from keras import ops

    resolved = resolve_schedule(schedule)

    class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step: Any) -> Any:
            t = ops.cast(step, "float32") / float(steps_per_epoch)
            return ops.cast(lr_at(t, resolved, lr=lr, epochs=epochs, xp=ops), "float32")

        def get_config(self) -> dict[str, Any]:
            return {"schedule": resolved, "lr": lr, "epochs": epochs, "steps_per_epoch": steps_per_epoch}

    return EpochSchedule()


def make_optimizer(cfg: Any, *, steps_per_epoch: int, no_decay: list[Any]):
    """The trial's optimizer. ``cfg`` is a ``TrialConfig``; ``no_decay`` lists variables that get no
    weight decay (BN γ/β when ``optimizer.decay_bn`` is false).

    sgd/adam: weight decay is an L2 term added to the gradient (PyTorch's ``weight_decay``, as
    open_lth used it); adamw: decoupled (Loshchilov & Hutter).
    """
    import keras
    from keras import ops

    o = cfg.optimizer
    schedule = make_keras_schedule(cfg.lr_schedule, lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch)
    skip = {id(v) for v in no_decay}
    wd = float(o.weight_decay)

    def coupled(base: type) -> type:
        class CoupledL2(base):  # type: ignore[valid-type, misc]
            def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
                if wd and id(variable) not in skip:
                    gradient = gradient + ops.cast(wd, variable.dtype) * variable
                super().update_step(gradient, variable, learning_rate)

        CoupledL2.__name__ = f"{base.__name__}CoupledL2"
        return CoupledL2

    if o.name == "sgd":
        return coupled(keras.optimizers.SGD)(learning_rate=schedule, momentum=o.momentum, nesterov=o.nesterov)
    if o.name == "adam":
        return coupled(keras.optimizers.Adam)(
            learning_rate=schedule, beta_1=o.beta_1, beta_2=o.beta_2, epsilon=o.epsilon)
    opt = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=wd, beta_1=o.beta_1, beta_2=o.beta_2, epsilon=o.epsilon)
    if no_decay:
        opt.exclude_from_weight_decay(var_list=no_decay)
    return opt
