"""The seed notebooks' "ResNet20": keras-idiomatic-programmer's bottleneck ResNet v1 for CIFAR-10.

``model.arch: idiomatic_bottleneck``. Not the paper's network (``models.py``); bnsweep builds it so
the notebooks' numbers can be reproduced with the notebooks' network before the paper's.

* stem: 3×3 conv, 16·W filters, *with* bias → BN → ReLU;
* three stages, each one projection block followed by n − 1 identity blocks; a block is
  1×1 conv → BN → ReLU → 3×3 conv → BN → ReLU → 1×1 conv → BN, added to the shortcut, → ReLU.
  Bottleneck → output widths: 16→64, 64→128, 128→256 (× W). Stages 2 and 3 downsample with
  stride 2 on the 3×3 conv (and on the shortcut); the projection shortcut is a 1×1 conv with bias
  and *no* BN. Every conv has a bias;
* classifier: BN → ReLU → 8×8 average pooling → dense 10 (the notebooks' softmax is folded into the
  loss: bnsweep's networks output logits).

Depth counts the weighted layers on the main path: 1 + 9·n + 1 = 9·n + 2. The original file lists
ResNet20 (n = 2), ResNet56 (6), ResNet110 (12), ResNet164 (18) and ResNet1001 (111) and builds
``n_blocks = (depth − 2) // 9 − 1`` identity blocks per stage; any 9·n + 2 ≥ 11 is accepted here.
BN uses Keras' defaults (momentum 0.99, ε = 1e-3; γ from ``model.gamma_init``, the notebooks' γ = 1
is ``ones``); convs and the dense layer use Keras' ``he_normal`` (truncated normal, fan-in), biases 0.

ResNet-20 here: 571,114 trainable parameters when everything trains, 575,114 weights with the 4,000
BN moving statistics; 20 BN layers with 2,000 channels, 4,000 γ/β.

>>> from bnsweep.spec.config import ModelConfig
>>> specs = bottleneck_specs(ModelConfig(arch="idiomatic_bottleneck", depth=20))
>>> sum(s.params for s in specs), sum(s.params for s in specs if s.kind == "bn")
(571114, 4000)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnsweep.engine.layerspec import LayerSpec
from bnsweep.spec.config import ModelConfig

KERAS_BN_MOMENTUM = 0.99  # tf.keras BatchNormalization defaults, as the notebooks built it
KERAS_BN_EPSILON = 1e-3
# (bottleneck width, output width) per stage at W = 1; the output is 4× (stage 1) or 2× the bottleneck.
STAGES = ((16, 64), (64, 128), (128, 256))
LISTED_DEPTHS = (20, 56, 110, 164, 1001)  # the depths keras-idiomatic-programmer's file lists


def bottleneck_specs(cfg: ModelConfig) -> list[LayerSpec]:
    """Every parameterized layer of the bottleneck network, in forward order (a projection block's
    shortcut conv after its residual branch, so the layers after any layer are downstream of it)."""
    w, n = cfg.width, cfg.blocks_per_stage
    specs = [LayerSpec("stem_conv", "conv", "stem", 3, 16 * w, 3, 1, 32, bias=True),
             LayerSpec("stem_bn", "bn", "stem", 16 * w, 16 * w, out_hw=32, channels_of="stem_conv")]
    c_in, hw, last = 16 * w, 32, "stem_conv"
    for stage, (f, out) in enumerate(STAGES, start=1):
        f, out = f * w, out * w
        for block in range(1, n + 1):
            stride = 2 if (stage > 1 and block == 1) else 1
            hw_out = hw // stride
            p = f"stage{stage}_block{block}"
            specs += [
                LayerSpec(f"{p}_conv1", "conv", "body", c_in, f, 1, 1, hw, bias=True),
                LayerSpec(f"{p}_bn1", "bn", "body", f, f, out_hw=hw, channels_of=f"{p}_conv1"),
                LayerSpec(f"{p}_conv2", "conv", "body", f, f, 3, stride, hw_out, bias=True),
                LayerSpec(f"{p}_bn2", "bn", "body", f, f, out_hw=hw_out, channels_of=f"{p}_conv2"),
                LayerSpec(f"{p}_conv3", "conv", "body", f, out, 1, 1, hw_out, bias=True),
                LayerSpec(f"{p}_bn3", "bn", "body", out, out, out_hw=hw_out, channels_of=f"{p}_conv3"),
            ]
            if block == 1:  # the projection block: 1×1 conv shortcut with bias, no BN
                specs.append(LayerSpec(f"{p}_shortcut_conv", "conv", "shortcut", c_in, out, 1, stride, hw_out,
                                       bias=True))
            c_in, hw, last = out, hw_out, f"{p}_conv3"
    # The classifier's BN normalizes the last block's sum; its channels are that block's conv3 channels.
    specs.append(LayerSpec("head_bn", "bn", "body", c_in, c_in, out_hw=hw, channels_of=last))
    specs.append(LayerSpec("output", "dense", "output", c_in, cfg.num_classes, out_hw=1))
    return specs


def bottleneck_trunk(inputs: Any, cfg: ModelConfig, *, conv: Callable[[Any, str], Any],
                     bn: Callable[[Any, str], Any]) -> Any:
    """The bottleneck topology up to the classifier's pooled features (B, 256·W). ``conv``/``bn`` make
    the layer named by a ``bottleneck_specs`` name (how: initializers, grouping)."""
    from keras import layers

    x = layers.ReLU(name="stem_relu")(bn(conv(inputs, "stem_conv"), "stem_bn"))
    for stage in (1, 2, 3):
        for block in range(1, cfg.blocks_per_stage + 1):
            p = f"stage{stage}_block{block}"
            y = layers.ReLU(name=f"{p}_relu1")(bn(conv(x, f"{p}_conv1"), f"{p}_bn1"))
            y = layers.ReLU(name=f"{p}_relu2")(bn(conv(y, f"{p}_conv2"), f"{p}_bn2"))
            y = bn(conv(y, f"{p}_conv3"), f"{p}_bn3")
            shortcut = conv(x, f"{p}_shortcut_conv") if block == 1 else x
            x = layers.ReLU(name=f"{p}_relu3")(layers.Add(name=f"{p}_add")([shortcut, y]))
    x = layers.ReLU(name="head_relu")(bn(x, "head_bn"))
    x = layers.AveragePooling2D(pool_size=8, name="pool")(x)
    return layers.Flatten(name="flatten")(x)
