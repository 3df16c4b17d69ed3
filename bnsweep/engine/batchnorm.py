"""Batch normalization that trains faster: the same layer, one fused kernel (TensorFlow) or a
closed-form backward pass (any backend) instead of autodiff through a dozen generic ops.

Keras 3's ``BatchNormalization`` computes training-mode BN from generic ops (``moments`` +
``batch_normalization``) and lets autodiff differentiate them: on TensorFlow/CPU (no XLA) that is
~15 separate element-wise kernels per layer (Mul, Tile, AddN, Sub, Mean, ...), each a full pass over
the activation. For a CIFAR ResNet these memory-bound passes cost about as much as the convolutions,
and they do not shrink when the convolutions are frozen, so they also capped what BN-only training
gained from skipping weight gradients (``bench/README.md``, item 2).

``FastBatchNormalization`` is a drop-in subclass — same variables, config and semantics (batch
statistics in training mode, the same moving-average updates with the biased batch variance) — whose
training-mode ``call``:

* on TensorFlow uses TensorFlow's fused kernels (``FusedBatchNormV3`` forward, ``FusedBatchNormGradV3``
  backward; oneDNN on CPU, cuDNN on GPU), obtained from ``backend.fused_batch_norm_kernel`` —
  the module that holds every backend-specific call — ~1.5× faster training steps on the 2-core CPU;
* elsewhere (JAX; or ``BNSWEEP_TF_FUSED_BN=0``; or ``KerasOpsBatchNormalization``) computes
  ``y = x·a + b`` with per-channel ``a = γ/√(σ²+ε)``, ``b = β - μ·a``, and the closed-form backward
  used by cuDNN/oneDNN::

    dβ = Σ dy,   dγ = Σ dy·x̂,   dx = a·(dy - dβ/n - x̂·dγ/n),   x̂ = (x - μ)/√(σ²+ε)

  written with ``keras.ops`` and ``keras.ops.custom_gradient`` only. The batch statistics (two-pass
  mean/variance) are computed on a ``stop_gradient`` view of ``x``; their gradient is in the closed form.

Inference mode, masks, renorm, synchronized BN and axes other than the last fall back to the parent
class. Frozen γ/β (``variable.trainable = False``) keep the layer in training mode, exactly as with
the parent: only ``layer.trainable`` switches a BN layer to inference, and ``regimes.apply_regime``
never sets it to False.

>>> import numpy as np, keras
>>> x = np.random.default_rng(0).normal(2.0, 3.0, (8, 4, 4, 3)).astype("float32")
>>> a, b = keras.layers.BatchNormalization(epsilon=1e-5), FastBatchNormalization(epsilon=1e-5)
>>> bool(np.allclose(a(x, training=True), b(x, training=True), atol=1e-5))
True
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bnsweep")
class FastBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` with a fused (TensorFlow) or closed-form backward in training."""

    backend_kernel = True  # use the backend's own fused kernel where there is one (TensorFlow)

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if (mask is not None or not (training and self.trainable) or self.renorm or self.synchronized
                or not (self.scale and self.center) or self.axis not in (-1, len(inputs.shape) - 1)):
            return super().call(inputs, training=training, mask=mask)
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, compute_dtype)
        gamma, beta = ops.cast(self.gamma, compute_dtype), ops.cast(self.beta, compute_dtype)
        kernel = _fused_kernel() if self.backend_kernel and len(x.shape) == 4 else None
        if kernel is not None:  # TensorFlow: its fused BN kernels (backend.fused_batch_norm_kernel)
            y, mean, variance = kernel(x, gamma, beta, self.epsilon)
        else:
            axes = tuple(self._reduction_axes)
            xs = ops.stop_gradient(x)
            mean = ops.mean(xs, axis=axes)
            variance = ops.mean(ops.square(xs - mean), axis=axes)
            y = batch_norm_train(x, mean, variance, gamma, beta, epsilon=self.epsilon)
        self.moving_mean.assign(
            ops.cast(self.moving_mean, compute_dtype) * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            ops.cast(self.moving_variance, compute_dtype) * self.momentum + variance * (1.0 - self.momentum))
        return ops.cast(y, self.compute_dtype)


_KERNEL: dict[str, Any] = {}


def _fused_kernel() -> Any:
    if "kernel" not in _KERNEL:
        from bnsweep.engine.backend import fused_batch_norm_kernel

        _KERNEL["kernel"] = fused_batch_norm_kernel()
    return _KERNEL["kernel"]


def batch_norm_train(x: Any, mean: Any, variance: Any, gamma: Any, beta: Any, *, epsilon: float) -> Any:
    """Training-mode BN over all axes but the last, with the closed-form backward pass.

    ``mean``/``variance`` must be the batch statistics of ``x`` (computed without gradient): their
    contribution to ``dx`` is included in the closed form, and their own gradient is zero.
    """
    eps = float(epsilon)

    @ops.custom_gradient
    def _bn(x: Any, mean: Any, variance: Any, gamma: Any, beta: Any) -> Any:
        inv = ops.rsqrt(variance + eps)
        a = gamma * inv
        y = x * a + (beta - mean * a)

        def grad(*args: Any, upstream: Any = None) -> tuple[Any, ...]:
            dy = upstream if upstream is not None else args[0]
            axes = tuple(range(len(dy.shape) - 1))
            n = ops.cast(ops.size(dy) // ops.shape(dy)[-1], dy.dtype)
            d_beta = ops.sum(dy, axis=axes)
            d_gamma = inv * (ops.sum(dy * x, axis=axes) - mean * d_beta)  # Σ dy·x̂
            c = a * inv * d_gamma / n  # dx = dy·a - x·c + (μ·c - a·dβ/n)
            dx = dy * a - x * c + (mean * c - a * d_beta / n)
            return dx, ops.zeros_like(mean), ops.zeros_like(variance), d_gamma, d_beta

        return y, grad

    return _bn(x, mean, variance, gamma, beta)


class KerasOpsBatchNormalization(FastBatchNormalization):
    """``FastBatchNormalization`` that never uses a backend kernel: the keras.ops closed form on every
    backend (tests and benchmarks compare the two paths on TensorFlow)."""

    backend_kernel = False


def use_fast_batchnorm(model: Any, *, backend_kernel: bool = True) -> int:
    """Switch every ``BatchNormalization`` layer of ``model`` to ``FastBatchNormalization`` (or, with
    ``backend_kernel=False``, ``KerasOpsBatchNormalization``) in place: same object, variables and
    config; only ``call`` changes. Returns how many were switched.

    For models built elsewhere (``models.build_resnet``), before their first training step.
    """
    cls = FastBatchNormalization if backend_kernel else KerasOpsBatchNormalization
    n = 0
    for layer in _layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and type(layer) is not cls:
            layer.__class__ = cls
            n += 1
    return n


def use_stock_batchnorm(model: Any) -> int:
    """The inverse of ``use_fast_batchnorm`` (benchmarks compare the two). Before the first training step."""
    n = 0
    for layer in _layers(model):
        if isinstance(layer, FastBatchNormalization):
            layer.__class__ = keras.layers.BatchNormalization
            n += 1
    return n


def _layers(model: Any) -> list[Any]:
    out = []
    for layer in getattr(model, "layers", []):
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(_layers(layer))
    return out
