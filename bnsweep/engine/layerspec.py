"""``LayerSpec``: one parameterized layer of a network, the unit every architecture is described in.

Each architecture (``models.py``: the paper's CIFAR ResNet; ``bottleneck.py``: the notebooks'
bottleneck ResNet) lists its layers as ``LayerSpec``s in forward order; the Keras builders, the
freezing regimes and the parameter/FLOP accounting all read that one list.

>>> LayerSpec("stem_conv", "conv", "stem", 3, 16, kernel=3, bias=True).params  # 3·3·3·16 + 16
448
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LayerKind = Literal["conv", "bn", "dense"]
Role = Literal["stem", "body", "shortcut", "output"]


@dataclass(frozen=True)
class LayerSpec:
    """One parameterized layer. ``role`` groups layers for freezing regimes."""

    name: str
    kind: LayerKind
    role: Role
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    out_hw: int = 32  # spatial size of the output feature map (square)
    bias: bool = False  # conv only (dense always has one): the notebooks' convs have biases, the paper's not
    channels_of: str | None = None  # BN only: the conv whose output channels this BN's γ/β scale and shift

    @property
    def params(self) -> int:
        """Trainable-capable parameters: conv kernel (+ bias), BN γ+β, dense kernel+bias."""
        if self.kind == "conv":
            return self.kernel * self.kernel * self.in_channels * self.out_channels + (
                self.out_channels if self.bias else 0)
        if self.kind == "bn":
            return 2 * self.out_channels
        return self.in_channels * self.out_channels + self.out_channels

    @property
    def macs(self) -> int:
        """Multiply-adds per image of the forward pass (BN and bias additions counted as 0)."""
        if self.kind == "conv":
            return self.kernel**2 * self.in_channels * self.out_channels * self.out_hw**2
        if self.kind == "dense":
            return self.in_channels * self.out_channels
        return 0
