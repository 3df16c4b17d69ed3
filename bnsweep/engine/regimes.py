"""Freezing regimes (which parameters learn) and parameter/FLOP accounting, for either architecture.

Freezing acts on *variables* (``variable.trainable = False``), never on layers: a BatchNormalization
layer stays trainable, so in training it always normalizes with batch statistics, whatever the
regime (Keras switches a BN layer to inference mode when the *layer* is frozen; the paper's frozen
γ/β still normalize with batch statistics).

Regimes: ``all``; ``bn`` (only γ/β; output frozen); ``bn_output``; ``bn_shortcut_output`` (the paper's
BN/S/O); ``shortcut_output`` (S/O: the projection shortcuts — their conv and, in the paper's ResNet,
their BN's γ/β — and the output layer); ``output`` (a linear probe); ``none``; and the two random-
parameter controls, each training k = (number of BN γ/β) randomly chosen conv scalars with BN and the
output layer otherwise frozen:

* ``random_k`` — k scalars drawn uniformly without replacement from every conv/dense kernel and bias
  of the network (most land in the wide last stage, where most weights are);
* ``random_k_channel`` — two random kernel scalars in each output channel of the conv whose channels
  each BN layer normalizes (``LayerSpec.channels_of``): exactly BN's two per channel, spread over the
  layers as BN's γ/β are (the paper's per-channel control).

Both are enforced element-wise by a constraint that restores the frozen elements after every
optimizer step (so momentum and weight decay act only on the chosen scalars).

>>> from bnsweep.spec.config import ModelConfig
>>> a = account(ModelConfig(depth=20), "bn")
>>> a.trainable, a.bn, a.output, a.total
(1568, 1568, 650, 274042)
>>> account(ModelConfig(depth=20), "random_k_channel").trainable
1568
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bnsweep.engine.models import LayerSpec, layer_specs
from bnsweep.spec.config import REGIMES, ModelConfig

RANDOM_CONTROLS = ("random_k", "random_k_channel")  # element-wise regimes: a mask per variable

# What trains in each regime, as predicates over (layer spec, variable part).
# part: "kernel" / "bias" (conv, dense) or "gamma" / "beta" (BN).


def _trains(regime: str, spec: LayerSpec) -> bool:
    """Whether a layer's parameters train under ``regime`` (the random controls are element-wise)."""
    is_bn = spec.kind == "bn"
    if regime == "all":
        return True
    if regime == "none" or regime in RANDOM_CONTROLS:
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
    shortcut: int  # 1×1 projection-shortcut convs (+ bias) and their BN γ/β where they have one
    output: int  # dense kernel + bias
    forward_flops: int  # per image: 2 × multiply-adds of convs and dense (BN/ReLU/pool ignored, <1%)
    train_flops: int  # per image: forward + input gradients + weight gradients of training layers

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def account(cfg: ModelConfig, regime: str) -> Accounting:
    """Pure accounting from the architecture description; no model is built.

    Training cost = forward + the backward input-gradient of every layer above the lowest layer
    with trainable parameters (backpropagation stops there; the stem conv's input gradient is
    never needed) + the weight gradient of each layer with trainable weights. BN-only therefore
    skips all conv/dense weight gradients: ≈ 2× forward instead of 3×; ``output`` (a linear probe)
    backpropagates through the output layer only: ≈ 1× forward.
    """
    specs = layer_specs(cfg)
    bn = sum(s.params for s in specs if s.kind == "bn")
    params = sum(s.params for s in specs)
    if regime == "random_k":
        trainable = min(bn, params - bn)  # same budget as `bn`, spread over conv/dense scalars
        # nearly every kernel holds a chosen element: count every conv/dense weight gradient
        grads = [s.kind != "bn" for s in specs]
    elif regime == "random_k_channel":
        trainable = bn  # two per BN channel, in the conv that BN normalizes
        hosts = channel_hosts(specs)
        grads = [s.name in hosts for s in specs]
    else:
        if regime not in REGIMES:
            raise ValueError(f"regime: expected one of {', '.join(REGIMES)}, received {regime!r}")
        grads = [_trains(regime, s) for s in specs]
        trainable = sum(s.params for s, g in zip(specs, grads, strict=True) if g)
    forward = sum(2 * s.macs for s in specs)
    # Backpropagation stops at the first (lowest) layer with trainable parameters: every layer
    # after it in forward order needs its input gradient, no layer up to it does (layer_specs
    # lists a block's projection shortcut after its residual branch, so the layers after the
    # first trainable one are exactly those downstream of it).
    first = next((i for i, g in enumerate(grads) if g), len(specs))
    input_grads = sum(2 * s.macs for s in specs[first + 1:])
    weight_grads = sum(2 * s.macs for s, g in zip(specs, grads, strict=True) if g)
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


def channel_hosts(specs: list[LayerSpec]) -> dict[str, int]:
    """For ``random_k_channel``: conv name -> scalars to train per output channel, two for each BN
    layer whose channels are that conv's (``LayerSpec.channels_of``).

    >>> from bnsweep.spec.config import ModelConfig
    >>> hosts = channel_hosts(layer_specs(ModelConfig(depth=20, arch="idiomatic_bottleneck")))
    >>> len(hosts), hosts["stage3_block2_conv3"]  # 19 convs feed a BN; the head BN shares conv3's channels
    (19, 4)
    """
    by_name = {s.name: s for s in specs}
    hosts: dict[str, int] = {}
    for s in specs:
        if s.kind != "bn":
            continue
        conv = by_name.get(s.channels_of or "")
        if conv is None or conv.kind != "conv" or conv.out_channels != s.out_channels:
            raise ValueError(f"BN layer {s.name}: channels_of must name a conv with {s.out_channels} output "
                             f"channels, received {s.channels_of!r}")
        hosts[conv.name] = hosts.get(conv.name, 0) + 2
    return hosts


class KeepFrozenElements:
    """Keras constraint: after each update, elements outside ``mask`` return to their initial values.

    Backend-agnostic (``keras.ops.where`` on the variable's value: JAX refuses a Keras variable
    there); the frozen elements stay bit-identical.
    """

    def __init__(self, mask: np.ndarray, initial: np.ndarray) -> None:
        self.mask = mask.astype(bool)
        self.initial = initial.astype(np.float32)

    def __call__(self, w: Any) -> Any:
        from keras import ops

        value = ops.convert_to_tensor(w)  # the (traced, in a JAX step) value, not the KerasVariable
        return ops.where(ops.convert_to_tensor(self.mask), value, ops.convert_to_tensor(self.initial, value.dtype))


@dataclass(frozen=True)
class AppliedRegime:
    regime: str
    trainable_scalars: int  # counted from the model after freezing (element-wise for the random controls)
    trainable_variables: tuple[str, ...]
    masks: dict[str, np.ndarray] | None = None  # random controls: variable path -> chosen elements


def apply_regime(model: Any, cfg: ModelConfig, regime: str, *, seed: int) -> AppliedRegime:
    """Freeze ``model``'s variables for ``regime`` in place; BN layers stay in training mode.

    For the random controls the k chosen scalars (k = BN γ/β count) depend on ``seed`` and the
    architecture only (not on the weights): ``random_k`` draws them uniformly without replacement
    from every conv/dense kernel and bias; ``random_k_channel`` draws two (per BN layer normalizing
    the channel) distinct kernel scalars in each output channel of the convs ``channel_hosts`` names.

    Layers are made trainable *before* any variable is frozen: Keras' ``Layer.trainable`` setter
    overwrites the flag of every variable of the layer (and a BN layer with ``trainable=False``
    normalizes with its moving statistics). The returned counts are read back from the model.
    """
    if regime not in REGIMES:
        raise ValueError(f"regime: expected one of {', '.join(REGIMES)}, received {regime!r}")
    spec_list = layer_specs(cfg)
    specs = {s.name: s for s in spec_list}
    model.trainable = True
    for layer in model.layers:
        layer.trainable = True  # a BN layer must never fall into inference mode in training
    masks: dict[str, np.ndarray] | None = None
    if regime == "random_k":
        masks = _random_k_masks(model, specs, k=account(cfg, "bn").bn, seed=seed)
    elif regime == "random_k_channel":
        masks = _random_k_channel_masks(model, channel_hosts(spec_list), seed=seed)
    for layer in model.layers:
        spec = specs.get(layer.name)
        for v in layer.weights:
            part = _part(v.path)
            if part in ("moving_mean", "moving_variance"):
                v.trainable = False  # never trainable; BN updates them in training mode
                continue
            if spec is None:
                raise ValueError(f"variable {v.path} belongs to no known layer of the network")
            if isinstance(v.constraint, KeepFrozenElements):
                v.constraint = None  # left by an earlier random control on this model
            if masks is not None:
                mask = masks.get(v.path)
                train = False
                if mask is not None and mask.any():
                    v.constraint = KeepFrozenElements(mask, np.asarray(v.numpy()))
                    train = True
            else:
                train = _trains(regime, spec)
            v.trainable = train
    trainable = model.trainable_weights
    if masks is not None:
        count = sum(int(masks[v.path].sum()) for v in trainable)
    else:
        count = sum(int(np.prod(v.shape)) for v in trainable)
    return AppliedRegime(regime, count, tuple(v.path for v in trainable), masks)


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


def _random_k_channel_masks(model: Any, hosts: dict[str, int], *, seed: int) -> dict[str, np.ndarray]:
    """Kernel masks with exactly ``hosts[conv]`` chosen elements in every output channel (last axis)."""
    rng = np.random.default_rng([seed, 0xC4A7])
    masks: dict[str, np.ndarray] = {}
    for layer in model.layers:  # forward order: the draw is fixed by the seed and the architecture
        per_channel = hosts.get(layer.name)
        if per_channel is None:
            continue
        kernel = layer.kernel
        shape = tuple(kernel.shape)
        fan, channels = int(np.prod(shape[:-1])), shape[-1]
        if per_channel > fan:
            raise ValueError(f"{layer.name}: {per_channel} scalars per channel asked, a channel has {fan}")
        picks = np.argsort(rng.random((fan, channels)), axis=0)[:per_channel]  # distinct rows per column
        mask = np.zeros((fan, channels), dtype=bool)
        mask[picks, np.arange(channels)[None, :]] = True
        masks[kernel.path] = mask.reshape(shape)
    return masks
