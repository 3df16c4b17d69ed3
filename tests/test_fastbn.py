"""The fast BatchNormalization (bnsweep/engine/batchnorm.py) is Keras' BatchNormalization with a cheaper backward
pass — same outputs, gradients and moving statistics — and frozen layers do no weight-gradient work
(TensorFlow prunes it, JAX never computes it)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from bnsweep.engine.batchnorm import (
    FastBatchNormalization,
    KerasOpsBatchNormalization,
    use_fast_batchnorm,
    use_stock_batchnorm,
)

ROOT = Path(__file__).resolve().parents[1]


def _pair(cls):
    x = np.random.default_rng(0).normal(1.5, 2.0, (16, 6, 6, 5)).astype("float32")
    stock = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, gamma_initializer="uniform")
    fast = cls(momentum=0.9, epsilon=1e-5)
    stock.build(x.shape)
    fast.build(x.shape)
    stock.gamma.assign(np.linspace(0.2, 1.4, x.shape[-1]).astype("float32"))
    stock.beta.assign(np.linspace(-0.3, 0.3, x.shape[-1]).astype("float32"))
    for a, b in zip(stock.weights, fast.weights, strict=True):
        b.assign(a)
    return x, stock, fast


def _value_and_grads(layer, x, upstream):
    import tensorflow as tf

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
        loss = tf.reduce_sum(y * upstream)
    return [np.asarray(t) for t in (y, *tape.gradient(loss, [xt, layer.gamma.value, layer.beta.value]))]


@pytest.mark.parametrize("cls", [FastBatchNormalization, KerasOpsBatchNormalization])
def test_training_outputs_gradients_and_moving_statistics_match_keras(cls):
    x, stock, fast = _pair(cls)
    upstream = np.random.default_rng(1).normal(size=x.shape).astype("float32")
    ref, got = _value_and_grads(stock, x, upstream), _value_and_grads(fast, x, upstream)
    for name, a, b in zip(("y", "dx", "dgamma", "dbeta"), ref, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5, err_msg=name)
    np.testing.assert_allclose(fast.moving_mean.numpy(), stock.moving_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(fast.moving_variance.numpy(), stock.moving_variance.numpy(), rtol=1e-5)
    # inference: the parent's computation on (equal up to rounding) moving statistics
    np.testing.assert_allclose(np.asarray(fast(x, training=False)), np.asarray(stock(x, training=False)),
                               rtol=1e-5, atol=1e-5)


def test_frozen_gamma_beta_still_normalize_with_batch_statistics():
    x, _, fast = _pair(FastBatchNormalization)
    fast.gamma.trainable = fast.beta.trainable = False  # as regimes.apply_regime freezes them
    y = np.asarray(fast(x, training=True))
    mean, std = y.mean(axis=(0, 1, 2)), y.std(axis=(0, 1, 2))
    gamma, beta = fast.gamma.numpy(), fast.beta.numpy()
    np.testing.assert_allclose(mean, beta, atol=1e-5)
    np.testing.assert_allclose(std, np.abs(gamma), rtol=1e-3)


def test_switching_a_built_resnet_keeps_its_layers_and_variables():
    from bnsweep.engine.models import build_resnet
    from bnsweep.spec.config import ModelConfig

    net = build_resnet(ModelConfig(depth=8), seed=0)
    ids = [id(v) for v in net.weights]
    assert use_fast_batchnorm(net) == 9 and use_fast_batchnorm(net) == 0
    assert all(type(layer) is FastBatchNormalization for layer in net.layers
               if isinstance(layer, keras.layers.BatchNormalization))
    assert [id(v) for v in net.weights] == ids
    assert use_fast_batchnorm(net, backend_kernel=False) == 9 and use_stock_batchnorm(net) == 9


def _backprop_filter_kernels(regime: str, tmp_path: Path) -> int:
    """Conv2DBackpropFilter kernel executions in one traced training step of a real TrialRun."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from bnsweep.engine.trial import TrialRun

    run = TrialRun({"model": {"depth": 8}, "regime": regime, "epochs": 3, "batch_size": 8, "steps_per_epoch": 1,
                    "data": {"source": "synthetic", "synthetic_size": 8, "val_size": 0, "test_size": 8}})
    run.train_epoch()  # trace first
    tf.profiler.experimental.start(str(tmp_path / regime))
    run.train_epoch()
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    trace = glob.glob(str(tmp_path / regime / "**" / "*.xplane.pb"), recursive=True)[0]
    space.ParseFromString(Path(trace).read_bytes())
    count = 0
    for plane in space.planes:
        names = {k: m.name for k, m in plane.event_metadata.items()}
        count += sum("Conv2DBackpropFilter" in names.get(e.metadata_id, "")
                     for line in plane.lines for e in line.events)
    return count


def test_tensorflow_runs_no_weight_gradient_for_frozen_convolutions(tmp_path):
    assert _backprop_filter_kernels("all", tmp_path) >= 9  # every conv of ResNet-8 (9)
    assert _backprop_filter_kernels("bn", tmp_path) == 0


JAX_HLO = """
import json, re, jax
from bnsweep.engine.trial import TrialRun
out = {}
for regime in ("all", "bn", "output"):
    r = TrialRun({"model": {"depth": 8}, "regime": regime, "epochs": 1, "batch_size": 4, "steps_per_epoch": 1,
                  "data": {"source": "synthetic", "synthetic_size": 8, "val_size": 0, "test_size": 4}})
    m = r.model
    m.make_train_function()
    m.optimizer.build(m.trainable_variables)
    state = tuple([v.value for v in vs] for vs in (m.trainable_variables, m.non_trainable_variables,
                                                   m.optimizer.variables, m.metrics_variables))
    import numpy as np
    batch = (np.zeros((4, 32, 32, 3), "uint8"), np.zeros(4, "int32"))
    text = jax.jit(m.train_step).lower(state, batch).compile().as_text()
    out[regime] = text.count(" convolution(")
print(json.dumps(out))
"""


@pytest.mark.jax
def test_jax_compiles_no_weight_gradient_for_frozen_convolutions():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-c", JAX_HLO], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    counts = json.loads(p.stdout.strip().splitlines()[-1])
    # ResNet-8: 9 convolutions forward; all: + 8 input gradients (not the stem's) + 9 weight gradients
    assert counts == {"all": 26, "bn": 17, "output": 9}


def test_fast_batchnorm_docstring_example_runs():
    import doctest

    import bnsweep.engine.batchnorm

    result = doctest.testmod(bnsweep.engine.batchnorm)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("cls", [FastBatchNormalization, KerasOpsBatchNormalization])
def test_bfloat16_inputs_normalize_with_float32_statistics_like_keras(cls):
    """Under mixed_bfloat16 the layer takes and returns bfloat16; the batch statistics, the moving averages
    and γ/β stay float32 (as in Keras' BN): same outputs (to bfloat16 rounding), gradients, statistics."""
    import tensorflow as tf

    x32 = np.random.default_rng(0).normal(1.5, 2.0, (16, 6, 6, 5)).astype("float32")
    x = tf.cast(tf.constant(x32), tf.bfloat16)
    upstream = tf.cast(np.random.default_rng(1).normal(size=x32.shape).astype("float32"), tf.bfloat16)
    stock = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype="mixed_bfloat16")
    fast = cls(momentum=0.9, epsilon=1e-5, dtype="mixed_bfloat16")
    stock.build(x.shape)
    fast.build(x.shape)
    stock.gamma.assign(np.linspace(0.2, 1.4, 5).astype("float32"))
    for a, b in zip(stock.weights, fast.weights, strict=True):
        b.assign(a)
    results = []
    for layer in (stock, fast):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y * upstream, tf.float32))
        results.append((y, *tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])))
        assert y.dtype == tf.bfloat16 and results[-1][1].dtype == tf.bfloat16  # activations and dx: bfloat16
        assert all(v.dtype == "float32" for v in layer.weights)  # γ, β, moving statistics: float32
    for name, a, b, tol in zip(("y", "dx", "dgamma", "dbeta"), *results, (2e-2, 3e-2, 2e-3, 1e-4), strict=True):
        np.testing.assert_allclose(np.asarray(tf.cast(b, tf.float32)), np.asarray(tf.cast(a, tf.float32)),
                                   rtol=tol, atol=tol, err_msg=name)
    # the moving statistics are the float32 statistics of the bfloat16 input, not bfloat16-rounded ones
    xb = np.asarray(tf.cast(x, tf.float32))
    np.testing.assert_allclose(fast.moving_mean.numpy(), 0.1 * xb.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(fast.moving_variance.numpy(), 0.9 + 0.1 * xb.var(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(fast.moving_variance.numpy(), stock.moving_variance.numpy(), rtol=1e-5)
