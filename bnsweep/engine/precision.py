"""A trial's numeric precision: ``float32`` or Keras' ``mixed_bfloat16`` policy, with float32 where it matters.

Under ``mixed_bfloat16`` every layer built inside ``precision_policy`` computes in bfloat16 and keeps
float32 variables (Keras' mixed precision), except:

* BatchNormalization: statistics, moving averages, γ/β in float32 (Keras' BN and
  ``batchnorm.FastBatchNormalization`` upcast their bfloat16 input; only their output is bfloat16);
* the output layer: ``float32_logits`` makes it compute in float32 (its bfloat16 input is cast up), so
  the logits, the cross-entropy and the loss are float32;
* the optimizer: its slots are built from the float32 variables, the update is float32.

No loss scaling: bfloat16 has float32's exponent range (only ``mixed_float16`` needs it).

>>> import keras
>>> with precision_policy("mixed_bfloat16"):
...     layer = keras.layers.Dense(2)
>>> layer.compute_dtype, layer.variable_dtype, keras.config.dtype_policy().name
('bfloat16', 'float32', 'float32')
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

PRECISIONS = ("float32", "mixed_bfloat16")


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[None]:
    """Build layers under Keras' global dtype policy ``precision``; the previous policy is restored after."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, received {precision!r}")
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def float32_logits(net: Any, layer: str = "output") -> None:
    """Make ``net``'s output layer compute in float32 (its variables are float32 under every policy)."""
    net.get_layer(layer).dtype_policy = "float32"
