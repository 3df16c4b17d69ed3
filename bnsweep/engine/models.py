"""The networks: the paper's CIFAR ResNet family (He et al. 2016; ``model.arch: resnet``, the default)
and the seed notebooks' bottleneck ResNet (``model.arch: idiomatic_bottleneck``, ``bottleneck.py``).

The paper's ResNet, depth 6·D+2, width multiplier W: stem conv3×3 (16·W) → BN → ReLU; three stages of
D basic blocks (conv3×3 → BN → ReLU → conv3×3 → BN, plus shortcut, → ReLU) with 16·W, 32·W, 64·W
filters; the first block of stages 2 and 3 has stride 2 and a 1×1 conv + BN projection shortcut;
global average pooling; dense 10. Convs have no bias (BN follows each). Init as open_lth:
Kaiming-normal (fan-in, untruncated) for convs and the output layer, BN γ ~ U[0, 1) ("uniform", the
paper) or 1 ("ones", Keras default), β = 0. BN uses PyTorch's momentum 0.1 (Keras 0.9) and ε = 1e-5
so running statistics match open_lth.

``layer_specs`` is the single description of each architecture and ``network_trunk`` its single
topology: the Keras builder here, the grouped builder of ``fused_replicates.py`` and the
parameter/FLOP accounting in ``regimes.py`` all read them.

>>> from bnsweep.spec.config import ModelConfig
>>> sum(s.params for s in layer_specs(ModelConfig(depth=20)))  # trainable when everything trains
272474
>>> sum(s.params for s in layer_specs(ModelConfig(depth=20, arch="idiomatic_bottleneck")))
571114
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnsweep.engine.bottleneck import KERAS_BN_EPSILON, KERAS_BN_MOMENTUM, bottleneck_specs, bottleneck_trunk
from bnsweep.engine.layerspec import LayerKind, LayerSpec
from bnsweep.spec.config import ModelConfig

__all__ = ["BN_EPSILON", "BN_MOMENTUM", "LayerKind", "LayerSpec", "bn_settings", "build_resnet", "layer_specs",
           "network_trunk", "resnet_trunk"]

BN_MOMENTUM = 0.9  # Keras convention: moving = 0.9·moving + 0.1·batch (PyTorch momentum 0.1)
BN_EPSILON = 1e-5  # PyTorch default, as in open_lth


def layer_specs(cfg: ModelConfig) -> list[LayerSpec]:
    """Every parameterized layer of the network ``cfg.arch`` names, in forward order."""
    if cfg.arch == "idiomatic_bottleneck":
        return bottleneck_specs(cfg)
    w, d = cfg.width, cfg.blocks_per_stage
    specs = [
        LayerSpec("stem_conv", "conv", "stem", 3, 16 * w, 3, 1, 32),
        LayerSpec("stem_bn", "bn", "stem", 16 * w, 16 * w, out_hw=32, channels_of="stem_conv"),
    ]
    c_in, hw = 16 * w, 32
    for stage, c_out in enumerate((16 * w, 32 * w, 64 * w), start=1):
        for block in range(1, d + 1):
            stride = 2 if (stage > 1 and block == 1) else 1
            hw_out = hw // stride
            p = f"stage{stage}_block{block}"
            specs += [
                LayerSpec(f"{p}_conv1", "conv", "body", c_in, c_out, 3, stride, hw_out),
                LayerSpec(f"{p}_bn1", "bn", "body", c_out, c_out, out_hw=hw_out, channels_of=f"{p}_conv1"),
                LayerSpec(f"{p}_conv2", "conv", "body", c_out, c_out, 3, 1, hw_out),
                LayerSpec(f"{p}_bn2", "bn", "body", c_out, c_out, out_hw=hw_out, channels_of=f"{p}_conv2"),
            ]
            if stride != 1 or c_in != c_out:
                specs += [
                    LayerSpec(f"{p}_shortcut_conv", "conv", "shortcut", c_in, c_out, 1, stride, hw_out),
                    LayerSpec(f"{p}_shortcut_bn", "bn", "shortcut", c_out, c_out, out_hw=hw_out,
                              channels_of=f"{p}_shortcut_conv"),
                ]
            c_in, hw = c_out, hw_out
    specs.append(LayerSpec("output", "dense", "output", c_in, cfg.num_classes, out_hw=1))
    return specs


def bn_settings(cfg: ModelConfig) -> tuple[float, float]:
    """(momentum, epsilon) of every BN layer: PyTorch's for the paper's ResNet, Keras' for the notebooks'.

    >>> from bnsweep.spec.config import ModelConfig
    >>> bn_settings(ModelConfig()), bn_settings(ModelConfig(arch="idiomatic_bottleneck"))
    ((0.9, 1e-05), (0.99, 0.001))
    """
    if cfg.arch == "idiomatic_bottleneck":
        return KERAS_BN_MOMENTUM, KERAS_BN_EPSILON
    return BN_MOMENTUM, BN_EPSILON


def network_trunk(inputs: Any, cfg: ModelConfig, *, conv: Callable[[Any, str], Any],
                  bn: Callable[[Any, str], Any]) -> Any:
    """The topology of ``cfg.arch`` from the images to the pooled features the output layer reads."""
    if cfg.arch == "idiomatic_bottleneck":
        return bottleneck_trunk(inputs, cfg, conv=conv, bn=bn)
    return resnet_trunk(inputs, cfg, conv=conv, bn=bn)


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
    """The network ``cfg`` describes (either architecture) on normalized float32 images (N, 32, 32, 3),
    returning logits. Deterministic given ``seed``.

    >>> from bnsweep.spec.config import ModelConfig
    >>> build_resnet(ModelConfig(depth=8), seed=0).count_params()  # incl. BN moving statistics
    78714
    """
    import keras
    from keras import layers

    specs = {s.name: s for s in layer_specs(cfg)}
    counter = iter(range(1_000_000))
    momentum, epsilon = bn_settings(cfg)
    # open_lth: Kaiming normal, untruncated; the notebooks: Keras' he_normal (truncated at 2 std)
    distribution = "truncated_normal" if cfg.arch == "idiomatic_bottleneck" else "untruncated_normal"

    def init_seed() -> int:  # an independent, reproducible stream per initializer
        return seed * 100_003 + next(counter)

    def kaiming() -> Any:
        return keras.initializers.VarianceScaling(2.0, "fan_in", distribution, seed=init_seed())

    def conv(x, spec_name: str):
        s = specs[spec_name]
        return layers.Conv2D(s.out_channels, s.kernel, strides=s.stride, padding="same", use_bias=s.bias,
                             kernel_initializer=kaiming(), name=spec_name)(x)

    def bn(x, spec_name: str):
        gamma = (keras.initializers.RandomUniform(0.0, 1.0, seed=init_seed())
                 if cfg.gamma_init == "uniform" else "ones")
        return layers.BatchNormalization(momentum=momentum, epsilon=epsilon, gamma_initializer=gamma,
                                         name=spec_name)(x)

    inputs = keras.Input((32, 32, 3), name="images")
    x = network_trunk(inputs, cfg, conv=conv, bn=bn)
    outputs = layers.Dense(cfg.num_classes, name="output", kernel_initializer=kaiming())(x)
    family = "bottleneck" if cfg.arch == "idiomatic_bottleneck" else "resnet"
    return keras.Model(inputs, outputs, name=name or f"{family}{cfg.depth}_w{cfg.width}")
