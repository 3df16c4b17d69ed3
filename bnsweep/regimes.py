"""Freezing regimes (which parameters learn) and parameter/FLOP accounting.

Freezing acts on *variables* (``variable.trainable = False``), never on layers: a BatchNormalization
layer stays trainable, so in training it always normalizes with batch statistics, whatever the
regime (Keras switches a BN layer to inference mode when the *layer* is frozen; the paper's frozen
γ/β still normalize with batch statistics). ``random_k`` trains k randomly chosen scalars outside BN,
k = the number of BN γ/β parameters, enforced element-wise by a constraint that restores the frozen
elements after every optimizer step.

>>> from bnsweep.config import ModelConfig
>>> a = account(ModelConfig(depth=20), "bn")
>>> a.trainable, a.bn, a.output, a.total
(1568, 1568, 650, 274042)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bnsweep.config import REGIMES, ModelConfig
from bnsweep.models import LayerSpec, layer_specs

# What trains in each regime, as predicates over (layer spec, variable part).
# part: "kernel" / "bias" (conv, dense) or "gamma" / "beta" (BN).


def _trains(regime: str, spec: LayerSpec) -> bool:
    """Whether a layer's parameters train under ``regime`` (random_k is element-wise, see below)."""
    is_bn = spec.kind == "bn"
    if regime == "all":
        return True
    if regime == "none" or regime == "random_k":
        return False
    if regime == "bn":
        return is_bn
    if regime == "bn_output":
        return is_bn or spec.role == "output"
    if regime == "bn_shortcut_output":
        return is_bn or spec.role in ("shortcut", "output")
    if regime == "shortcut_output":
        return spec.role in ("shortcut", "output")
    if regime == "output":
        return spec.role == "output"
    raise ValueError(f"regime: expected one of {', '.join(REGIMES)}, received {regime!r}")


@dataclass(frozen=True)
class Accounting:
    """Parameter counts and arithmetic per image of one network under one regime."""

    total: int  # every weight, BN moving statistics included
    trainable: int  # scalars the optimizer updates
    bn: int  # BN γ + β
    bn_moving: int  # BN moving mean + variance (never trained)
    shortcut: int  # 1×1 shortcut convs + their BN γ/β
    output: int  # dense kernel + bias
    forward_flops: int  # per image: 2 × multiply-adds of convs and dense (BN/ReLU/pool ignored, <1%)
    train_flops: int  # per image: forward + input gradients + weight gradients of training layers

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def account(cfg: ModelConfig, regime: str) -> Accounting:
    """Pure accounting from the architecture description; no model is built.

    Training cost = forward + the backward input-gradient of every layer above the stem conv
    (its input gradient is never needed) + the weight gradient of each layer with trainable
    weights. BN-only therefore skips all conv/dense weight gradients: ≈ 2× forward instead of 3×.
    """
    specs = layer_specs(cfg)
    bn = sum(s.params for s in specs if s.kind == "bn")
    params = sum(s.params for s in specs)
    if regime == "random_k":
        trainable = bn  # same budget as `bn`, spread over conv/dense scalars
    else:
        trainable = sum(s.params for s in specs if _trains(regime, s))
    forward = sum(2 * s.macs for s in specs)
    input_grads = sum(2 * s.macs for s in specs if s.name != "stem_conv")
    if regime == "random_k":  # nearly every kernel holds a chosen element: all weight grads needed
        weight_grads = sum(2 * s.macs for s in specs)
    else:
        weight_grads = sum(2 * s.macs for s in specs if _trains(regime, s))
    if trainable == 0:  # nothing learns: a training step is just the forward pass (BN statistics)
        input_grads = weight_grads = 0
    return Accounting(
        total=params + bn,  # + moving mean/var: one pair per γ/β pair
        trainable=trainable,
        bn=bn,
        bn_moving=bn,
        shortcut=sum(s.params for s in specs if s.role == "shortcut"),
        output=sum(s.params for s in specs if s.role == "output"),
        forward_flops=forward,
        train_flops=forward + input_grads + weight_grads,
    )


def _part(path: str) -> str:
    return path.rsplit("/", 1)[-1]


class KeepFrozenElements:
    """Keras constraint: after each update, elements outside ``mask`` return to their initial values.

    Backend-agnostic (``keras.ops.where``); the frozen elements stay bit-identical.
    """

    def __init__(self, mask: np.ndarray, initial: np.ndarray) -> None:
        self.mask = mask.astype(bool)
        self.initial = initial.astype(np.float32)

    def __call__(self, w: Any) -> Any:
        from keras import ops

        return ops.where(ops.convert_to_tensor(self.mask), w, ops.convert_to_tensor(self.initial))


@dataclass(frozen=True)
class AppliedRegime:
    regime: str
    trainable_scalars: int  # counted from the model after freezing (element-wise for random_k)
    trainable_variables: tuple[str, ...]
    random_k_masks: dict[str, np.ndarray] | None = None


def apply_regime(model: Any, cfg: ModelConfig, regime: str, *, seed: int) -> AppliedRegime:
    """Freeze ``model``'s variables for ``regime`` in place; BN layers stay in training mode.

    For ``random_k`` the k chosen scalars (k = BN γ/β count) are drawn uniformly without
    replacement from every conv/dense kernel and bias, seeded by ``seed``.
    """
    specs = {s.name: s for s in layer_specs(cfg)}
    masks: dict[str, np.ndarray] | None = None
    if regime == "random_k":
        masks = _random_k_masks(model, specs, k=account(cfg, "bn").bn, seed=seed)
    trainable_names: list[str] = []
    count = 0
    for layer in model.layers:
        spec = specs.get(layer.name)
        for v in layer.weights:
            part = _part(v.path)
            if part in ("moving_mean", "moving_variance"):
                continue  # never trainable; BN updates them in training mode
            if spec is None:
                raise ValueError(f"variable {v.path} belongs to no known layer of the network")
            if masks is not None:
                mask = masks.get(v.path)
                train = mask is not None and bool(mask.any())
                if train:
                    v.constraint = KeepFrozenElements(mask, np.asarray(v.numpy()))
                    count += int(mask.sum())
            else:
                train = _trains(regime, spec)
                if train:
                    count += int(np.prod(v.shape))
            v.trainable = train
            if train:
                trainable_names.append(v.path)
        layer.trainable = True  # a BN layer must never fall into inference mode in training
    return AppliedRegime(regime, count, tuple(trainable_names), masks)


def _random_k_masks(model: Any, specs: dict[str, LayerSpec], *, k: int, seed: int) -> dict[str, np.ndarray]:
    candidates = [v for layer in model.layers if layer.name in specs and specs[layer.name].kind != "bn"
                  for v in layer.weights]
    sizes = [int(np.prod(v.shape)) for v in candidates]
    total = sum(sizes)
    rng = np.random.default_rng([seed, 0x5EED])
    chosen = rng.choice(total, size=min(k, total), replace=False)
    flat = np.zeros(total, dtype=bool)
    flat[chosen] = True
    masks, start = {}, 0
    for v, n in zip(candidates, sizes, strict=True):
        masks[v.path] = flat[start:start + n].reshape(tuple(v.shape))
        start += n
    return masks
