"""The paper's CIFAR ResNet family (He et al. 2016): depth 6·D+2, width multiplier W.

Stem conv3×3 (16·W) → BN → ReLU; three stages of D basic blocks (conv3×3 → BN → ReLU → conv3×3 → BN,
plus shortcut, → ReLU) with 16·W, 32·W, 64·W filters; the first block of stages 2 and 3 has stride 2
and a 1×1 conv + BN projection shortcut; global average pooling; dense 10. Convs have no bias (BN
follows each). Init as open_lth: Kaiming-normal (fan-in, untruncated) for convs and the output layer,
BN γ ~ U[0, 1) ("uniform", the paper) or 1 ("ones", Keras default), β = 0. BN uses PyTorch's
momentum 0.1 (Keras 0.9) and ε = 1e-5 so running statistics match open_lth.

``layer_specs`` is the single description of the architecture: the Keras builder and the
parameter/FLOP accounting in ``regimes.py`` both read it.

>>> from bnsweep.spec.config import ModelConfig
>>> sum(s.params for s in layer_specs(ModelConfig(depth=20)))  # trainable when everything trains
272474
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bnsweep.spec.config import ModelConfig

LayerKind = Literal["conv", "bn", "dense"]
BN_MOMENTUM = 0.9  # Keras convention: moving = 0.9·moving + 0.1·batch (PyTorch momentum 0.1)
BN_EPSILON = 1e-5  # PyTorch default, as in open_lth


@dataclass(frozen=True)
class LayerSpec:
    """One parameterized layer. ``role`` groups layers for freezing regimes."""

    name: str
    kind: LayerKind
    role: Literal["stem", "body", "shortcut", "output"]
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    out_hw: int = 32  # spatial size of the output feature map (square)

    @property
    def params(self) -> int:
        """Trainable-capable parameters: conv kernel, BN γ+β, dense kernel+bias."""
        if self.kind == "conv":
            return self.kernel * self.kernel * self.in_channels * self.out_channels
        if self.kind == "bn":
            return 2 * self.out_channels
        return self.in_channels * self.out_channels + self.out_channels

    @property
    def macs(self) -> int:
        """Multiply-adds per image of the forward pass (BN counted as 0)."""
        if self.kind == "conv":
            return self.kernel**2 * self.in_channels * self.out_channels * self.out_hw**2
        if self.kind == "dense":
            return self.in_channels * self.out_channels
        return 0


def layer_specs(cfg: ModelConfig) -> list[LayerSpec]:
    """Every parameterized layer of the network, in forward order."""
    w, d = cfg.width, cfg.blocks_per_stage
    specs = [
        LayerSpec("stem_conv", "conv", "stem", 3, 16 * w, 3, 1, 32),
        LayerSpec("stem_bn", "bn", "stem", 16 * w, 16 * w, out_hw=32),
    ]
    c_in, hw = 16 * w, 32
    for stage, c_out in enumerate((16 * w, 32 * w, 64 * w), start=1):
        for block in range(1, d + 1):
            stride = 2 if (stage > 1 and block == 1) else 1
            hw_out = hw // stride
            p = f"stage{stage}_block{block}"
            specs += [
                LayerSpec(f"{p}_conv1", "conv", "body", c_in, c_out, 3, stride, hw_out),
                LayerSpec(f"{p}_bn1", "bn", "body", c_out, c_out, out_hw=hw_out),
                LayerSpec(f"{p}_conv2", "conv", "body", c_out, c_out, 3, 1, hw_out),
                LayerSpec(f"{p}_bn2", "bn", "body", c_out, c_out, out_hw=hw_out),
            ]
            if stride != 1 or c_in != c_out:
                specs += [
                    LayerSpec(f"{p}_shortcut_conv", "conv", "shortcut", c_in, c_out, 1, stride, hw_out),
                    LayerSpec(f"{p}_shortcut_bn", "bn", "shortcut", c_out, c_out, out_hw=hw_out),
                ]
            c_in, hw = c_out, hw_out
    specs.append(LayerSpec("output", "dense", "output", c_in, cfg.num_classes, out_hw=1))
    return specs


def resnet_trunk(inputs: Any, cfg: ModelConfig, *, conv: Callable[[Any, str], Any],
                 bn: Callable[[Any, str], Any]) -> Any:
    """The CIFAR ResNet's topology, once for every builder: stem, 3 stages of ``cfg.blocks_per_stage``
    basic blocks (a projection shortcut where ``layer_specs`` has one), global average pooling. ``conv``
    and ``bn`` make the layer named by a ``layer_specs`` name (how: initializers, grouping)."""
    from keras import layers

    specs = {s.name for s in layer_specs(cfg)}
    x = layers.ReLU(name="stem_relu")(bn(conv(inputs, "stem_conv"), "stem_bn"))
    for stage in (1, 2, 3):
        for block in range(1, cfg.blocks_per_stage + 1):
            p = f"stage{stage}_block{block}"
            y = layers.ReLU(name=f"{p}_relu1")(bn(conv(x, f"{p}_conv1"), f"{p}_bn1"))
            y = bn(conv(y, f"{p}_conv2"), f"{p}_bn2")
            if f"{p}_shortcut_conv" in specs:
                x = bn(conv(x, f"{p}_shortcut_conv"), f"{p}_shortcut_bn")
            x = layers.ReLU(name=f"{p}_relu2")(layers.Add(name=f"{p}_add")([x, y]))
    return layers.GlobalAveragePooling2D(name="pool")(x)


def build_resnet(cfg: ModelConfig, *, seed: int, name: str | None = None):  # -> keras.Model
    """The network on normalized float32 images (N, 32, 32, 3). Deterministic given ``seed``.

    >>> from bnsweep.spec.config import ModelConfig
    >>> build_resnet(ModelConfig(depth=8), seed=0).count_params()  # incl. BN moving statistics
    78714
    """
    import keras
    from keras import layers

    specs = {s.name: s for s in layer_specs(cfg)}
    counter = iter(range(1_000_000))

    def init_seed() -> int:  # an independent, reproducible stream per initializer
        return seed * 100_003 + next(counter)

    def conv(x, spec_name: str):
        s = specs[spec_name]
        return layers.Conv2D(
            s.out_channels, s.kernel, strides=s.stride, padding="same", use_bias=False,
            kernel_initializer=keras.initializers.VarianceScaling(
                2.0, "fan_in", "untruncated_normal", seed=init_seed()),
            name=spec_name,
        )(x)

    def bn(x, spec_name: str):
        gamma = (keras.initializers.RandomUniform(0.0, 1.0, seed=init_seed())
                 if cfg.gamma_init == "uniform" else "ones")
        return layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, gamma_initializer=gamma, name=spec_name)(x)

    inputs = keras.Input((32, 32, 3), name="images")
    x = resnet_trunk(inputs, cfg, conv=conv, bn=bn)
    outputs = layers.Dense(
        cfg.num_classes, name="output",
        kernel_initializer=keras.initializers.VarianceScaling(
            2.0, "fan_in", "untruncated_normal", seed=init_seed()),
    )(x)
    return keras.Model(inputs, outputs, name=name or f"resnet{cfg.depth}_w{cfg.width}")
