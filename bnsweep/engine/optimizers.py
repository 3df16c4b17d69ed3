"""The trial's optimizer and its LR schedule over optimizer steps (the schedule math is
``bnsweep.spec.schedules``, shared with ``plan``'s curves): SGD with PyTorch's momentum form and coupled
L2, Adam (coupled L2) or AdamW (decoupled).
"""

from __future__ import annotations

from typing import Any

from bnsweep.spec.schedules import Schedule, lr_at


def make_keras_schedule(schedule: Schedule, *, lr: float, epochs: int, steps_per_epoch: int):
    """A ``keras.optimizers.schedules.LearningRateSchedule`` over optimizer steps."""
    import keras
    from keras import ops

    resolved = schedule

    class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step: Any) -> Any:
            t = ops.cast(step, "float32") / float(steps_per_epoch)
            return ops.cast(lr_at(t, resolved, lr=lr, epochs=epochs, xp=ops), "float32")

        def get_config(self) -> dict[str, Any]:
            return {"schedule": resolved.model_dump(), "lr": lr, "epochs": epochs, "steps_per_epoch": steps_per_epoch}

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
    schedule = make_keras_schedule(cfg.lr_schedule, lr=cfg.effective_lr, epochs=cfg.epochs,
                                   steps_per_epoch=steps_per_epoch)
    wd = float(o.weight_decay)

    def coupled(base: type) -> type:
        class CoupledL2(base):  # type: ignore[valid-type, misc]
            # Keys as the optimizer itself identifies variables: on TensorFlow, update_step receives
            # the backing tf.Variable, not the keras.Variable (so id() of the latter never matches).
            no_decay_keys: frozenset[Any] = frozenset()

            def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
                if wd and _var_key(self, variable) not in self.no_decay_keys:
                    gradient = gradient + ops.cast(wd, variable.dtype) * variable
                super().update_step(gradient, variable, learning_rate)

        CoupledL2.__name__ = f"{base.__name__}CoupledL2"
        return CoupledL2

    if o.name in ("sgd", "adam"):
        if o.name == "sgd":
            opt = coupled(_torch_style_sgd())(learning_rate=schedule, momentum=o.momentum, nesterov=o.nesterov)
        else:
            opt = coupled(keras.optimizers.Adam)(
                learning_rate=schedule, beta_1=o.beta_1, beta_2=o.beta_2, epsilon=o.epsilon)
        opt.no_decay_keys = frozenset(_var_key(opt, v) for v in no_decay)
        return opt
    opt = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=wd, beta_1=o.beta_1, beta_2=o.beta_2, epsilon=o.epsilon)
    if no_decay:
        opt.exclude_from_weight_decay(var_list=no_decay)
    return opt


def _torch_style_sgd() -> type:
    """Keras SGD with PyTorch's (open_lth's) momentum: v ← m·v + g, w ← w − lr·v (Nesterov:
    w ← w − lr·(g + m·v)). Equal to Keras' own form at constant LR; after an LR drop Keras' velocity
    still carries steps of the old LR for a while, PyTorch's does not."""
    import keras
    from keras import ops

    class TorchStyleSGD(keras.optimizers.SGD):
        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
            lr = ops.cast(learning_rate, variable.dtype)
            g = ops.cast(gradient, variable.dtype)
            if self.momentum == 0:
                self.assign_sub(variable, ops.multiply(g, lr))
                return
            v = self.momentums[self._get_variable_index(variable)]
            m = ops.cast(self.momentum, variable.dtype)
            self.assign(v, ops.add(ops.multiply(v, m), g))
            step = ops.add(g, ops.multiply(v, m)) if self.nesterov else v
            self.assign_sub(variable, ops.multiply(step, lr))

    return TorchStyleSGD


def _var_key(optimizer: Any, variable: Any) -> Any:
    key = getattr(optimizer, "_var_key", None)  # Keras 3: the backend's stable variable identity
    return key(variable) if key is not None else id(variable)
