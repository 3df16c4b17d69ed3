"""The CIFAR ResNet family: exact parameter counts (docs/science.md §1), FLOPs, init, architecture.

Counts are checked twice: on real Keras models (by iterating named variables) and on the analytic
``layer_specs``/``account`` that plan and report trials. ``expected_counts`` below is an independent
closed form of the He et al. architecture, written from the description, not from ``layer_specs``.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from keras import ops

from bnsweep.engine.models import BN_EPSILON, build_resnet, layer_specs
from bnsweep.engine.regimes import account
from bnsweep.spec.config import ModelConfig, TrialConfig
from bnsweep.spec.errors import ConfigError

MOVING = ("moving_mean", "moving_variance")


def expected_counts(D: int, W: int = 1) -> dict[str, int]:
    """Closed-form parameter counts of CIFAR ResNet-(6D+2) at width W."""
    c1, c2, c3 = 16 * W, 32 * W, 64 * W
    stem = 3 * 3 * 3 * c1
    stage1 = D * 2 * 9 * c1 * c1
    stage2 = 9 * c1 * c2 + 9 * c2 * c2 + (D - 1) * 2 * 9 * c2 * c2
    stage3 = 9 * c2 * c3 + 9 * c3 * c3 + (D - 1) * 2 * 9 * c3 * c3
    shortcut_convs = c1 * c2 + c2 * c3
    bn = 2 * (c1 + 2 * D * (c1 + c2 + c3) + c2 + c3)  # stem, two per block, two shortcut BNs
    output = c3 * 10 + 10
    trainable = stem + stage1 + stage2 + stage3 + shortcut_convs + bn + output
    return {"trainable": trainable, "total": trainable + bn, "bn": bn, "output": output,
            "shortcut": shortcut_convs + 2 * (c2 + c3), "convs": trainable - bn - output}


def numpy_of(v) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(v))


def counts_of_model(model) -> dict[str, int]:
    """Scalars per kind, by iterating the model's named variables."""
    out = {"bn": 0, "moving": 0, "output": 0, "shortcut": 0, "convs": 0, "all_params": 0}
    for v in model.weights:
        layer, part = v.path.split("/")
        n = int(np.prod(v.shape))
        if part in MOVING:
            out["moving"] += n
            continue
        out["all_params"] += n
        if part in ("gamma", "beta"):
            out["bn"] += n
        elif layer == "output":
            out["output"] += n
        else:
            assert part == "kernel", v.path
            out["convs"] += n
        if "_shortcut_" in layer:
            out["shortcut"] += n
    return out


@pytest.fixture(scope="module")
def resnet20():
    return build_resnet(ModelConfig(depth=20), seed=0)


# ------------------------------------------------------------------ exact counts


def test_closed_form_matches_science_md():
    c = expected_counts(3)
    assert (c["trainable"], c["total"], c["bn"], c["output"]) == (272_474, 274_042, 1_568, 650)


def test_resnet20_counts_on_built_model(resnet20):
    c = counts_of_model(resnet20)
    assert c["all_params"] == 272_474
    assert c["bn"] == 1_568 == 224 + 448 * 3
    assert c["moving"] == 1_568
    assert c["output"] == 650
    assert c["shortcut"] == 2_752
    assert resnet20.count_params() == 274_042
    # a fresh model trains everything
    assert sum(int(np.prod(v.shape)) for v in resnet20.trainable_weights) == 272_474
    assert all(v.path.split("/")[1] in MOVING for v in resnet20.non_trainable_weights)


def test_resnet20_counts_analytic():
    cfg = ModelConfig(depth=20)
    specs = layer_specs(cfg)
    assert sum(s.params for s in specs) == 272_474
    assert sum(s.params for s in specs if s.kind == "bn") == 1_568
    assert sum(s.params for s in specs if s.role == "output") == 650
    a = account(cfg, "all")
    assert (a.total, a.trainable, a.bn, a.bn_moving, a.output, a.shortcut) == (
        274_042, 272_474, 1_568, 1_568, 650, 2_752)


@pytest.mark.parametrize(("D", "bn"), [(1, 672), (2, 1_120), (3, 1_568), (5, 2_464), (9, 4_256),
                                       (18, 8_288), (36, 16_352), (72, 32_480), (144, 64_736)])
def test_bn_parameter_count_analytic(D, bn):
    cfg = ModelConfig(depth=6 * D + 2)
    assert bn == 224 + 448 * D == expected_counts(D)["bn"]
    assert sum(s.params for s in layer_specs(cfg) if s.kind == "bn") == bn
    a = account(cfg, "bn")
    assert a.bn == a.trainable == a.bn_moving == bn
    assert a.trainable == expected_counts(D)["bn"]
    assert account(cfg, "all").trainable == expected_counts(D)["trainable"]
    assert account(cfg, "all").total == expected_counts(D)["total"]


@pytest.mark.parametrize(("depth", "bn", "trainable"), [(14, 1_120, 175_258), (32, 2_464, 466_906)])
def test_bn_parameter_count_on_built_model(depth, bn, trainable):
    model = build_resnet(ModelConfig(depth=depth), seed=0)
    c = counts_of_model(model)
    assert c["bn"] == c["moving"] == bn
    assert c["all_params"] == trainable == expected_counts((depth - 2) // 6)["trainable"]
    assert model.count_params() == trainable + bn


def test_paper_table1_rounded():
    shortcut = account(ModelConfig(depth=20), "all").shortcut
    assert shortcut == 2_752 and abs(shortcut - 2_700) < 100  # "2.7K"
    for depth in (14, 20, 32, 56, 110):  # the shortcut part does not grow with depth
        assert account(ModelConfig(depth=depth), "all").shortcut == 2_752
    totals = {d: account(ModelConfig(depth=d), "all").trainable for d in (14, 32, 56, 110)}
    assert round(totals[14] / 1e3) == 175
    assert round(totals[32] / 1e3) == 467
    assert round(totals[56] / 1e3) == 856
    assert round(totals[110] / 1e5) / 10 == 1.7


def test_every_spec_matches_its_keras_layer(resnet20):
    """layer_specs (accounting) and the built network describe the same layers."""
    specs = layer_specs(ModelConfig(depth=20))
    with_weights = [layer.name for layer in resnet20.layers if layer.weights]
    assert sorted(with_weights) == sorted(s.name for s in specs) and len(specs) == 43  # 21 conv, 21 BN, dense
    for s in specs:
        layer = resnet20.get_layer(s.name)
        n = sum(int(np.prod(v.shape)) for v in layer.weights if v.path.split("/")[1] not in MOVING)
        assert n == s.params, s.name
        assert tuple(layer.output.shape[1:]) == ((s.out_hw, s.out_hw, s.out_channels) if s.kind != "dense"
                                                 else (s.out_channels,)), s.name
        if s.kind == "conv":
            assert isinstance(layer, keras.layers.Conv2D)
            assert layer.kernel_size == (s.kernel, s.kernel) and layer.strides == (s.stride, s.stride)
            assert layer.input.shape[-1] == s.in_channels and not layer.use_bias
        elif s.kind == "bn":
            assert isinstance(layer, keras.layers.BatchNormalization)
        else:
            assert isinstance(layer, keras.layers.Dense)


# ------------------------------------------------------------------ FLOPs


def test_forward_flops_resnet20(resnet20):
    a = account(ModelConfig(depth=20), "all")
    macs = a.forward_flops // 2
    assert a.forward_flops == 2 * macs
    assert round(macs / 1e6, 2) == 40.81
    # the same multiply-adds counted from the built Keras layers' real output shapes
    from_model = 0
    for layer in resnet20.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            from_model += kh * kw * cin * cout * h * w
        elif isinstance(layer, keras.layers.Dense):
            from_model += int(np.prod(layer.kernel.shape))
    assert from_model == macs == 40_813_184


# ------------------------------------------------------------------ width


@pytest.mark.parametrize("W", [2, 4])
def test_width_multiplier_analytic(W):
    base, wide = account(ModelConfig(depth=20), "all"), account(ModelConfig(depth=20, width=W), "all")
    e = expected_counts(3, W)
    assert (wide.trainable, wide.total, wide.bn, wide.output, wide.shortcut) == (
        e["trainable"], e["total"], e["bn"], e["output"], e["shortcut"])
    assert wide.bn == W * base.bn  # BN scales with the channels
    assert wide.output == W * 640 + 10
    assert wide.shortcut == W * W * 2_560 + W * 192  # 1×1 convs ×W², their BN ×W
    stem = 3 * 3 * 3 * 16
    assert wide.trainable - wide.bn - wide.output - W * stem == W * W * (
        base.trainable - base.bn - base.output - stem)  # every conv but the stem ×W²
    assert W * W * 0.99 < wide.forward_flops / base.forward_flops <= W * W


def test_width_2_on_built_model():
    model = build_resnet(ModelConfig(depth=8, width=2), seed=0)
    c = counts_of_model(model)
    e = expected_counts(1, 2)
    assert c["all_params"] == e["trainable"] and c["bn"] == e["bn"] == 1_344
    assert c["output"] == 1_290 and model.count_params() == e["total"]
    assert model.get_layer("stage1_block1_conv2").output.shape[1:] == (32, 32, 32)
    assert model.get_layer("stage2_block1_conv2").output.shape[1:] == (16, 16, 64)
    assert model.get_layer("stage3_block1_conv2").output.shape[1:] == (8, 8, 128)
    assert model.get_layer("pool").output.shape[1:] == (128,)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("depth", [21, 5, 2, 0, -4, 19, 9, 20.0, "20", None])
def test_invalid_depth_is_a_config_error(depth):
    with pytest.raises(ConfigError) as e:
        ModelConfig(depth=depth)
    assert e.value.key == "model.depth" and e.value.received == depth
    msg = str(e.value)
    assert msg.startswith("model.depth:") and "6·D+2" in msg and repr(depth) in msg
    with pytest.raises(ConfigError, match=r"^model\.depth:"):
        TrialConfig.from_dict({"model": {"depth": depth}})


@pytest.mark.parametrize("depth", [8, 14, 20, 32, 56, 110, 218, 434, 866])
def test_valid_depths(depth):
    D = (depth - 2) // 6
    assert ModelConfig(depth=depth).blocks_per_stage == D
    specs = layer_specs(ModelConfig(depth=depth))
    main_path = [s for s in specs if s.kind in ("conv", "dense") and s.role != "shortcut"]
    assert len(main_path) == depth  # the depth counts the weighted layers on the main path


@pytest.mark.parametrize(("key", "value"), [("width", 0), ("width", 1.5), ("gamma_init", "normal")])
def test_invalid_model_values(key, value):
    with pytest.raises(ConfigError, match=rf"^model\.{key}:"):
        ModelConfig(**{key: value})


# ------------------------------------------------------------------ initialization


def test_gamma_uniform_beta_zero(resnet20):
    bns = [layer for layer in resnet20.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 21
    gammas = np.concatenate([numpy_of(b.gamma) for b in bns])
    assert gammas.size == 784
    assert gammas.min() >= 0.0 and gammas.max() < 1.0
    assert len(np.unique(gammas)) > 700  # not all equal
    assert 0.45 < gammas.mean() < 0.55 and 0.26 < gammas.std() < 0.32  # U[0,1): 0.5, 0.289
    same_size = [numpy_of(b.gamma) for b in bns if b.gamma.shape == (16,)]
    assert len({g.tobytes() for g in same_size}) == len(same_size)  # no seed reused between layers
    for b in bns:
        assert np.all(numpy_of(b.beta) == 0.0)
        assert np.all(numpy_of(b.moving_mean) == 0.0) and np.all(numpy_of(b.moving_variance) == 1.0)
        assert b.epsilon == BN_EPSILON == 1e-5
        assert b.momentum == pytest.approx(0.9)  # Keras convention for PyTorch's momentum 0.1


def test_gamma_ones():
    model = build_resnet(ModelConfig(depth=8, gamma_init="ones"), seed=0)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 9
    for b in bns:
        assert np.all(numpy_of(b.gamma) == 1.0) and np.all(numpy_of(b.beta) == 0.0)


def test_kaiming_normal_init(resnet20):
    zs = []
    kernels = [layer for layer in resnet20.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert len(kernels) == 22
    for layer in kernels:
        k = numpy_of(layer.kernel)
        fan_in = int(np.prod(k.shape[:-1]))
        z = k / np.sqrt(2.0 / fan_in)
        tol = 0.15 if k.size < 2_000 else 0.06
        assert abs(z.std() - 1.0) < tol, (layer.name, z.std())
        assert abs(z.mean()) < 4 / np.sqrt(k.size), layer.name
        zs.append(z.ravel())
    z = np.concatenate(zs)
    assert z.size == 270_896
    assert abs(z.std() - 1.0) < 0.01  # He et al.: std = sqrt(2 / fan_in)
    assert np.abs(z).max() > 3.5  # untruncated (Keras' truncated normal stops at 2 std)
    assert np.all(numpy_of(resnet20.get_layer("output").bias) == 0.0)
    a, b = (numpy_of(resnet20.get_layer(f"stage1_block{i}_conv1").kernel) for i in (1, 2))
    assert not np.array_equal(a, b)  # same shape, independent draws


def _weights(model) -> dict[str, np.ndarray]:
    return {v.path: numpy_of(v) for v in model.weights}


def test_same_seed_same_weights_different_seed_different():
    cfg = ModelConfig(depth=8)
    keras.utils.set_random_seed(1)
    a = _weights(build_resnet(cfg, seed=3))
    keras.utils.set_random_seed(2)  # the global seed must not matter
    b = _weights(build_resnet(cfg, seed=3))
    c = _weights(build_resnet(cfg, seed=4))
    assert a.keys() == b.keys() == c.keys() and len(a) == 47
    for p in a:
        assert a[p].dtype == b[p].dtype and np.array_equal(a[p], b[p]), p
    for p in a:
        if p.endswith(("/kernel", "/gamma")):
            assert not np.array_equal(a[p], c[p]), p
        else:  # β, bias, moving statistics: constant initializers
            assert np.array_equal(a[p], c[p]), p


# ------------------------------------------------------------------ architecture


def test_projection_shortcuts_and_strides(resnet20):
    names = [layer.name for layer in resnet20.layers]
    assert [n for n in names if "shortcut" in n] == [
        "stage2_block1_shortcut_conv", "stage2_block1_shortcut_bn",
        "stage3_block1_shortcut_conv", "stage3_block1_shortcut_bn"]
    convs = [layer for layer in resnet20.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 21
    stride2 = {c.name for c in convs if c.strides == (2, 2)}
    assert stride2 == {"stage2_block1_conv1", "stage2_block1_shortcut_conv",
                       "stage3_block1_conv1", "stage3_block1_shortcut_conv"}
    assert all(c.strides == (1, 1) for c in convs if c.name not in stride2)
    for stage in (2, 3):
        sc = resnet20.get_layer(f"stage{stage}_block1_shortcut_conv")
        assert sc.kernel_size == (1, 1)
    assert all(c.kernel_size == (3, 3) for c in convs if "shortcut" not in c.name)
    assert sum(isinstance(layer, keras.layers.Add) for layer in resnet20.layers) == 9


def test_output_and_spatial_sizes(resnet20):
    probe = keras.Model(resnet20.input, [resnet20.get_layer("stem_relu").output,
                                         resnet20.get_layer("stage1_block3_relu2").output,
                                         resnet20.get_layer("stage2_block3_relu2").output,
                                         resnet20.get_layer("stage3_block3_relu2").output,
                                         resnet20.get_layer("pool").output,
                                         resnet20.output])
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype("float32")
    outs = [numpy_of(o) for o in probe(x, training=False)]
    assert [o.shape for o in outs] == [(3, 32, 32, 16), (3, 32, 32, 16), (3, 16, 16, 32), (3, 8, 8, 64),
                                       (3, 64), (3, 10)]
    assert np.all(np.isfinite(outs[-1]))
    assert resnet20.input.shape[1:] == (32, 32, 3)


def reference_forward(model, x: np.ndarray, D: int) -> np.ndarray:
    """He et al.'s CIFAR ResNet, inference mode, written out by hand from docs/science.md §1."""
    w = _weights(model)

    def conv(h, name, stride):
        return numpy_of(ops.conv(h, w[f"{name}/kernel"], strides=stride, padding="same"))

    def bn(h, name):
        g, b, m, v = (w[f"{name}/{p}"] for p in ("gamma", "beta", "moving_mean", "moving_variance"))
        return (h - m) / np.sqrt(v + 1e-5) * g + b

    def relu(h):
        return np.maximum(h, 0.0)

    h = relu(bn(conv(x, "stem_conv", 1), "stem_bn"))
    for stage in (1, 2, 3):
        for block in range(1, D + 1):
            p = f"stage{stage}_block{block}"
            stride = 2 if stage > 1 and block == 1 else 1
            y = relu(bn(conv(h, f"{p}_conv1", stride), f"{p}_bn1"))
            y = bn(conv(y, f"{p}_conv2", 1), f"{p}_bn2")  # no ReLU before the addition
            shortcut = bn(conv(h, f"{p}_shortcut_conv", stride), f"{p}_shortcut_bn") if stride == 2 else h
            h = relu(shortcut + y)
    return h.mean(axis=(1, 2)) @ w["output/kernel"] + w["output/bias"]


def test_wiring_matches_hand_written_resnet():
    model = build_resnet(ModelConfig(depth=14), seed=5)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # non-trivial BN state so that every BN matters
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.beta.assign(rng.uniform(-0.5, 0.5, c).astype("float32"))
            layer.moving_mean.assign(rng.uniform(-0.5, 0.5, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
    x = rng.normal(size=(4, 32, 32, 3)).astype("float32")
    got = numpy_of(model(x, training=False))
    want = reference_forward(model, x, D=2)
    assert got.shape == (4, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# ------------------------------------------------------------------ the notebooks' bottleneck network

BOTTLENECK = ModelConfig(depth=20, arch="idiomatic_bottleneck", gamma_init="ones")


def bottleneck_counts(n: int, W: int = 1) -> dict[str, int]:
    """Closed form of keras-idiomatic-programmer's bottleneck ResNet v1, depth 9n+2 (every conv with a
    bias; projection shortcuts a 1×1 conv without BN; a BN before the classifier)."""

    def conv(k: int, cin: int, cout: int) -> int:
        return k * k * cin * cout + cout

    total_conv, bn_channels, shortcut, c_in = conv(3, 3, 16 * W), 16 * W, 0, 16 * W
    for f, out in ((16 * W, 64 * W), (64 * W, 128 * W), (128 * W, 256 * W)):
        for block in range(n):
            cin = c_in if block == 0 else out
            total_conv += conv(1, cin, f) + conv(3, f, f) + conv(1, f, out)
            bn_channels += f + f + out
        shortcut += conv(1, c_in, out)
        c_in = out
    bn_channels += c_in  # the classifier's BN
    output = c_in * 10 + 10
    trainable = total_conv + shortcut + 2 * bn_channels + output
    return {"trainable": trainable, "total": trainable + 2 * bn_channels, "bn": 2 * bn_channels,
            "bn_channels": bn_channels, "shortcut": shortcut, "output": output}


@pytest.fixture(scope="module")
def bottleneck20():
    return build_resnet(BOTTLENECK, seed=0)


def test_bottleneck20_counts_are_the_notebooks():
    """575,114 weights, 571,114 trainable, 4,000 BN statistics; 20 BN layers with 2,000 channels."""
    c = bottleneck_counts(2)
    assert (c["total"], c["trainable"], c["bn"], c["bn_channels"]) == (575_114, 571_114, 4_000, 2_000)
    a = account(BOTTLENECK, "all")
    assert (a.total, a.trainable, a.bn, a.bn_moving, a.output, a.shortcut) == (
        575_114, 571_114, 4_000, 4_000, 2_570, c["shortcut"])
    bn = account(BOTTLENECK, "bn")
    assert (bn.trainable, bn.total) == (4_000, 575_114)  # the notebooks' BN-only froze the dense layer too


def test_bottleneck20_counts_on_built_model(bottleneck20):
    m = bottleneck20
    assert m.count_params() == 575_114
    assert sum(int(np.prod(v.shape)) for v in m.trainable_weights) == 571_114
    bns = [layer for layer in m.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 20 and sum(b.gamma.shape[0] for b in bns) == 2_000
    assert sum(int(np.prod(v.shape)) for v in m.non_trainable_weights) == 4_000  # moving mean + variance
    for b in bns:  # Keras defaults, γ = 1 as the notebooks built it
        assert b.momentum == pytest.approx(0.99) and b.epsilon == pytest.approx(1e-3)
        assert np.all(numpy_of(b.gamma) == 1.0) and np.all(numpy_of(b.beta) == 0.0)


@pytest.mark.parametrize(("depth", "n"), [(11, 1), (20, 2), (56, 6), (110, 12), (164, 18), (1001, 111)])
def test_bottleneck_depths_of_the_original_file(depth, n):
    """The file's table: ResNet20 n=2, 56 n=6, 110 n=12, 164 n=18, 1001 n=111; n_blocks = n − 1 identity
    blocks after each stage's projection block."""
    cfg = ModelConfig(depth=depth, arch="idiomatic_bottleneck")
    assert cfg.blocks_per_stage == n
    specs = layer_specs(cfg)
    main = [s for s in specs if s.kind in ("conv", "dense") and s.role != "shortcut"]
    assert len(main) == depth == 9 * n + 2
    assert sum(s.name.endswith("_shortcut_conv") for s in specs) == 3
    e = bottleneck_counts(n)
    a = account(cfg, "all")
    assert (a.trainable, a.total, a.bn, a.shortcut, a.output) == (
        e["trainable"], e["total"], e["bn"], e["shortcut"], e["output"])


@pytest.mark.parametrize("depth", [8, 14, 21, 26, 1000, 19])
def test_bottleneck_depth_must_be_9n_plus_2(depth):
    with pytest.raises(ConfigError, match=r"^model\.depth: expected 9·n\+2") as e:
        ModelConfig(depth=depth, arch="idiomatic_bottleneck")
    assert "idiomatic_bottleneck" in str(e.value)
    with pytest.raises(ConfigError, match=r"^model\.arch:"):
        ModelConfig(arch="bottleneck")  # type: ignore[arg-type]


def test_bottleneck_specs_match_the_built_layers(bottleneck20):
    specs = layer_specs(BOTTLENECK)
    with_weights = [layer.name for layer in bottleneck20.layers if layer.weights]
    assert sorted(with_weights) == sorted(s.name for s in specs) and len(specs) == 43  # 22 conv, 20 BN, dense
    for s in specs:
        layer = bottleneck20.get_layer(s.name)
        n = sum(int(np.prod(v.shape)) for v in layer.weights if v.path.split("/")[1] not in MOVING)
        assert n == s.params, s.name
        if s.kind == "conv":
            assert layer.use_bias and layer.kernel_size == (s.kernel, s.kernel) and layer.strides == (s.stride,) * 2
            assert tuple(layer.output.shape[1:]) == (s.out_hw, s.out_hw, s.out_channels), s.name
    convs = [layer for layer in bottleneck20.layers if isinstance(layer, keras.layers.Conv2D)]
    stride2 = {c.name for c in convs if c.strides == (2, 2)}
    assert stride2 == {f"stage{s}_block1_{c}" for s in (2, 3) for c in ("conv2", "shortcut_conv")}
    assert [c.kernel.shape[-1] for c in convs if c.name.endswith("conv3")] == [64, 64, 128, 128, 256, 256]
    # no BN on the projection shortcuts: the shortcut conv feeds the addition directly
    for stage in (1, 2, 3):
        add = bottleneck20.get_layer(f"stage{stage}_block1_add")
        assert add.input[0] is bottleneck20.get_layer(f"stage{stage}_block1_shortcut_conv").output
    assert isinstance(bottleneck20.get_layer("pool"), keras.layers.AveragePooling2D)
    assert bottleneck20.get_layer("pool").pool_size == (8, 8)
    assert bottleneck20.get_layer("head_bn").output.shape[1:] == (8, 8, 256)


def test_bottleneck_init_is_keras_he_normal(bottleneck20):
    zs = []
    for layer in bottleneck20.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            k = numpy_of(layer.kernel)
            zs.append((k / np.sqrt(2.0 / int(np.prod(k.shape[:-1])))).ravel())
            assert np.all(numpy_of(layer.bias) == 0.0), layer.name
    z = np.concatenate(zs)
    assert np.abs(z).max() <= 2.0 * 1.14 + 1e-6  # Keras' truncated normal: |x| ≤ 2 std of the untruncated
    assert 0.97 < z.std() < 1.03  # he_normal rescales the truncated normal to std sqrt(2 / fan_in)


def reference_bottleneck_forward(model, x: np.ndarray, n: int) -> np.ndarray:
    """keras-idiomatic-programmer's bottleneck ResNet v1, inference mode, written out by hand."""
    w = _weights(model)

    def conv(h, name, stride=1):
        return numpy_of(ops.conv(h, w[f"{name}/kernel"], strides=stride, padding="same")) + w[f"{name}/bias"]

    def bn(h, name):
        g, b, m, v = (w[f"{name}/{p}"] for p in ("gamma", "beta", "moving_mean", "moving_variance"))
        return (h - m) / np.sqrt(v + 1e-3) * g + b

    def relu(h):
        return np.maximum(h, 0.0)

    h = relu(bn(conv(x, "stem_conv"), "stem_bn"))
    for stage in (1, 2, 3):
        for block in range(1, n + 1):
            p = f"stage{stage}_block{block}"
            stride = 2 if stage > 1 and block == 1 else 1
            y = relu(bn(conv(h, f"{p}_conv1"), f"{p}_bn1"))
            y = relu(bn(conv(y, f"{p}_conv2", stride), f"{p}_bn2"))
            y = bn(conv(y, f"{p}_conv3"), f"{p}_bn3")
            shortcut = conv(h, f"{p}_shortcut_conv", stride) if block == 1 else h
            h = relu(shortcut + y)
    h = relu(bn(h, "head_bn"))
    return h.mean(axis=(1, 2)) @ w["output/kernel"] + w["output/bias"]  # 8×8 average pool of an 8×8 map


def test_bottleneck_wiring_matches_hand_written_network():
    cfg = ModelConfig(depth=20, arch="idiomatic_bottleneck")
    model = build_resnet(cfg, seed=5)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.beta.assign(rng.uniform(-0.5, 0.5, c).astype("float32"))
            layer.moving_mean.assign(rng.uniform(-0.5, 0.5, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
        elif isinstance(layer, keras.layers.Conv2D):
            layer.bias.assign(rng.uniform(-0.1, 0.1, layer.bias.shape[0]).astype("float32"))
    x = rng.normal(size=(3, 32, 32, 3)).astype("float32")
    got = numpy_of(model(x, training=False))
    want = reference_bottleneck_forward(model, x, n=2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_bottleneck_grouped_replicas_match_separate_networks():
    """fused_replicates' grouped builder reads the same topology: N stacked bottlenecks = N networks."""
    from bnsweep.engine.fused_replicates import build_grouped_resnet, copy_into_grouped

    cfg = ModelConfig(depth=11, arch="idiomatic_bottleneck")
    nets = [build_resnet(cfg, seed=s) for s in (1, 2)]
    grouped = build_grouped_resnet(cfg, 2)
    copy_into_grouped(nets, grouped)
    assert grouped.count_params() == sum(n.count_params() for n in nets)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(2, 32, 32, 3)).astype("float32") for _ in nets]
    out = numpy_of(grouped(np.concatenate(xs, axis=-1), training=False))
    for i, (net, x) in enumerate(zip(nets, xs, strict=True)):
        np.testing.assert_allclose(out[:, i], numpy_of(net(x, training=False)), rtol=1e-4, atol=1e-4)


SUBSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-subset-train.npz"


@pytest.mark.skipif(not SUBSET.exists(), reason=f"the real CIFAR-10 subset is not at {SUBSET} (../shared/data)")
def test_bottleneck20_learns_real_cifar10_in_both_notebook_modes():
    """The notebooks' network in their two modes (all, BN-only with the output layer frozen, γ = 1,
    pixels x/255) on 3,000 real training images, 2 epochs, one thread; 1,000 held-out images.

    Short runs need SGD with momentum (the notebooks' momentum-free SGD 0.01 moves too little in 190
    steps) and BN-only a larger LR. Calibrated here (seed 0, TF, one thread): all 26.6%, bn 15.8%.
    Margins: all ≥ 20%, bn ≥ 13% (chance + 2.5 standard errors), all ≥ bn + 5 points.
    """
    from bnsweep.engine.data import load_data
    from bnsweep.engine.trial import run
    from bnsweep.spec.config import DataConfig

    data_cfg = {"source": "npz", "path": str(SUBSET), "train_size": 4_500, "val_size": 500, "test_size": 1_000,
                "augment": "none", "normalize": False}
    data = load_data(DataConfig(**data_cfg))
    assert data.sizes == {"train": 3_000, "val": 500, "test": 1_000}
    acc = {}
    for regime, lr in (("all", 0.02), ("bn", 0.1)):
        r = run({"model": {"depth": 20, "arch": "idiomatic_bottleneck", "gamma_init": "ones"}, "regime": regime,
                 "epochs": 2, "batch_size": 32, "lr": lr, "lr_schedule": {"type": "constant"},
                 "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 0.0}, "data": data_cfg,
                 "threads": 1, "seed": 0}, data=data)
        assert r.status == "completed" and r.accounting["trainable"] == {"all": 571_114, "bn": 4_000}[regime]
        acc[regime] = r.test_accuracy
    assert acc["all"] >= 0.20, acc
    assert acc["bn"] >= 0.13, acc
    assert acc["all"] - acc["bn"] >= 0.05, acc
