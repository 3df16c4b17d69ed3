"""Freezing regimes: which variables train, BN semantics (docs/science.md §3), the random controls,
accounting — for the paper's ResNet and the notebooks' bottleneck ResNet, on both backends.

Expectations are an explicit table per variable category (not ``regimes._trains``), checked on real
Keras models and, for "frozen stays frozen", after real optimizer steps of a ``TrialRun``
(``regime_steps.py``: the same check in-process on TensorFlow and in one JAX subprocess).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops
from regime_steps import EXPECTED, RANDOM, category, check

from bnsweep.engine.models import build_resnet, layer_specs
from bnsweep.engine.regimes import KeepFrozenElements, account, apply_regime, channel_hosts
from bnsweep.spec.config import REGIMES, ModelConfig

MOVING = ("moving_mean", "moving_variance")
BOTTLENECK = ModelConfig(depth=20, arch="idiomatic_bottleneck", gamma_init="ones")

# Trainable scalars of ResNet-20 per regime, from docs/science.md §1's counts: BN 1,568; output 650;
# shortcut 1×1 convs 16·32 + 32·64 = 2,560 and their BN γ/β 2·(32 + 64) = 192.
EXPECTED_COUNT_R20 = {
    "all": 272_474, "bn": 1_568, "bn_output": 1_568 + 650, "bn_shortcut_output": 1_568 + 2_560 + 650,
    "shortcut_output": 2_560 + 192 + 650, "output": 650, "none": 0, "random_k": 1_568, "random_k_channel": 1_568,
}
# The notebooks' bottleneck "ResNet20": 571,114 trainable when all train; BN γ/β 4,000; output
# 256·10 + 10 = 2,570; projection shortcuts (1×1 conv + bias, no BN) 16·64+64 + 64·128+128 + 128·256+256.
SHORTCUT_B20 = 1_088 + 8_320 + 33_024
EXPECTED_COUNT_B20 = {
    "all": 571_114, "bn": 4_000, "bn_output": 4_000 + 2_570, "bn_shortcut_output": 4_000 + SHORTCUT_B20 + 2_570,
    "shortcut_output": SHORTCUT_B20 + 2_570, "output": 2_570, "none": 0, "random_k": 4_000,
    "random_k_channel": 4_000,
}
# Every variable of ResNet-8, by path (pins the naming the table and the masks rely on).
R8_LAYERS = (["stem_conv", "stem_bn"]
             + [f"stage{s}_block1_{n}" for s in (1, 2, 3) for n in ("conv1", "bn1", "conv2", "bn2")]
             + [f"stage{s}_block1_shortcut_{n}" for s in (2, 3) for n in ("conv", "bn")] + ["output"])


def numpy_of(v) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(v))


def snapshot(model) -> dict[str, np.ndarray]:
    return {v.path: numpy_of(v).copy() for v in model.weights}


def scalars(variables) -> int:
    return sum(int(np.prod(v.shape)) for v in variables)


def bn_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def test_table_covers_every_regime():
    assert set(EXPECTED) | set(RANDOM) == set(REGIMES)
    assert set(EXPECTED_COUNT_R20) == set(EXPECTED_COUNT_B20) == set(REGIMES)


def test_variable_paths_of_resnet8():
    model = build_resnet(ModelConfig(depth=8), seed=0)
    want = []
    for layer in R8_LAYERS:
        if layer == "output":
            want += ["output/kernel", "output/bias"]
        elif layer.endswith("conv") or layer.endswith(("conv1", "conv2")):
            want.append(f"{layer}/kernel")
        else:
            want += [f"{layer}/{p}" for p in ("gamma", "beta", *MOVING)]
    assert sorted(v.path for v in model.weights) == sorted(want)


# ------------------------------------------------------------------ which variables train


def _probe_model(cfg: ModelConfig):
    """A network, re-frozen by each test (apply_regime must not depend on earlier regimes), with a
    probe model that returns every BN layer's input and output."""
    model = build_resnet(cfg, seed=0)
    rng = np.random.default_rng(0)
    for layer in bn_layers(model):  # β ≠ 0, so "output mean = β" is a real check
        layer.beta.assign(rng.uniform(-1, 1, layer.beta.shape[0]).astype("float32"))
    bns = bn_layers(model)
    probe = keras.Model(model.input, [t for b in bns for t in (b.input, b.output)])
    return model, probe, bns


@pytest.fixture(scope="module")
def r20():
    return _probe_model(ModelConfig(depth=20))


@pytest.fixture(scope="module")
def b20():
    return _probe_model(BOTTLENECK)


def _check_flags(model, cfg, regime, counts, n_bn):
    applied = apply_regime(model, cfg, regime, seed=0)
    wrong = []
    for v in model.weights:
        cat = category(v.path)
        if cat == "moving":
            want = False
        elif regime in RANDOM:  # element-wise: only conv/dense tensors that hold a chosen scalar
            mask = applied.masks.get(v.path)
            want = mask is not None and bool(mask.any())
            if cat in ("bn", "shortcut_bn"):
                assert mask is None, v.path
        else:
            want = cat in EXPECTED[regime]
        if v.trainable != want:
            wrong.append((v.path, v.trainable))
    assert wrong == [], f"{regime}: variables with the wrong trainable flag: {wrong}"
    trainable = model.trainable_weights
    n = scalars(trainable)
    if regime in RANDOM:
        n = sum(int(applied.masks[v.path].sum()) for v in trainable)
    assert n == counts[regime] == account(cfg, regime).trainable == applied.trainable_scalars
    assert applied.trainable_variables == tuple(v.path for v in trainable)
    # freezing never touches layers: every BN layer (every layer) stays trainable
    assert model.trainable
    assert all(layer.trainable for layer in model.layers)
    assert len(bn_layers(model)) == n_bn and all(b.trainable for b in bn_layers(model))
    assert all(not v.trainable for b in bn_layers(model) for v in (b.moving_mean, b.moving_variance))


@pytest.mark.parametrize("regime", REGIMES)
def test_regime_trains_exactly_the_expected_variables(r20, regime):
    _check_flags(r20[0], ModelConfig(depth=20), regime, EXPECTED_COUNT_R20, n_bn=21)


@pytest.mark.parametrize("regime", REGIMES)
def test_regime_trains_exactly_the_expected_variables_of_the_bottleneck(b20, regime):
    _check_flags(b20[0], BOTTLENECK, regime, EXPECTED_COUNT_B20, n_bn=20)


def _check_batch_statistics(model, probe, bns, cfg, regime, epsilon):
    apply_regime(model, cfg, regime, seed=0)
    x = 0.5 + np.random.default_rng(1).normal(size=(8, 32, 32, 3)).astype("float32")
    outs = [numpy_of(t) for t in probe(x, training=True)]
    for i, b in enumerate(bns):
        h, y = outs[2 * i].astype(np.float64), outs[2 * i + 1].astype(np.float64)
        gamma, beta = numpy_of(b.gamma), numpy_of(b.beta)
        mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
        want = (h - mean) / np.sqrt(var + epsilon) * gamma + beta
        np.testing.assert_allclose(y, want, atol=2e-4 * (1 + np.abs(want).max()), err_msg=b.name)
        np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), beta, atol=1e-3, err_msg=b.name)
        np.testing.assert_allclose(y.std(axis=(0, 1, 2)), np.abs(gamma) * np.sqrt(var / (var + epsilon)),
                                   rtol=0.02, atol=1e-3, err_msg=b.name)


@pytest.mark.parametrize("regime", REGIMES)
def test_bn_normalizes_with_batch_statistics_in_every_regime(r20, regime):
    """In training every BN layer uses the batch's statistics, frozen γ/β or not."""
    _check_batch_statistics(*r20, ModelConfig(depth=20), regime, epsilon=1e-5)


@pytest.mark.parametrize("regime", ["bn", "none", "random_k_channel"])
def test_bottleneck_bn_normalizes_with_batch_statistics(b20, regime):
    """The same for the notebooks' network (Keras' ε = 1e-3), where their layer-level freeze broke it."""
    _check_batch_statistics(*b20, BOTTLENECK, regime, epsilon=1e-3)


def test_batch_statistics_check_detects_a_frozen_bn_layer():
    """Control: Keras' layer-level freeze (the notebooks' mistake) fails the check above."""
    model = build_resnet(ModelConfig(depth=8), seed=0)
    b = model.get_layer("stage2_block1_bn1")
    b.moving_variance.assign(np.full(b.moving_variance.shape, 4.0, "float32"))
    probe = keras.Model(model.input, [b.input, b.output])
    x = 0.5 + np.random.default_rng(1).normal(size=(8, 32, 32, 3)).astype("float32")
    b.trainable = False  # inference mode, even with training=True
    h, y = (numpy_of(t).astype(np.float64) for t in probe(x, training=True))
    gamma, beta = numpy_of(b.gamma), numpy_of(b.beta)
    batch = (h - h.mean(axis=(0, 1, 2))) / np.sqrt(h.var(axis=(0, 1, 2)) + 1e-5) * gamma + beta
    moving = h / np.sqrt(4.0 + 1e-5) * gamma + beta
    assert not np.allclose(y, batch, atol=1e-2)
    np.testing.assert_allclose(y, moving, atol=1e-4)


def test_apply_regime_unfreezes_frozen_layers_before_freezing_variables():
    """A model whose layers were frozen (Keras' way, as the notebooks did) gets BN layers back in
    training mode without the layer flag overriding the variables' flags."""
    model = build_resnet(ModelConfig(depth=8), seed=0)
    model.trainable = False
    applied = apply_regime(model, ModelConfig(depth=8), "bn", seed=0)
    assert model.trainable and all(layer.trainable for layer in model.layers)
    assert scalars(model.trainable_weights) == applied.trainable_scalars == 672
    assert {category(v.path) for v in model.trainable_weights} == {"bn", "shortcut_bn"}
    model.get_layer("stage1_block1_bn1").trainable = False
    apply_regime(model, ModelConfig(depth=8), "output", seed=0)
    assert model.get_layer("stage1_block1_bn1").trainable
    assert [v.path for v in model.trainable_weights] == ["output/kernel", "output/bias"]


def test_reapplying_a_regime_drops_random_k_constraints():
    model = build_resnet(ModelConfig(depth=8), seed=0)
    for control in RANDOM:
        apply_regime(model, ModelConfig(depth=8), control, seed=0)
        assert any(isinstance(v.constraint, KeepFrozenElements) for v in model.weights)
        applied = apply_regime(model, ModelConfig(depth=8), "all", seed=0)
        assert all(v.constraint is None for v in model.weights)
        assert applied.trainable_scalars == scalars(model.trainable_weights) == 78_042


def test_unknown_regime_is_rejected():
    model = build_resnet(ModelConfig(depth=8), seed=0)
    with pytest.raises(ValueError, match="regime"):
        apply_regime(model, ModelConfig(depth=8), "bn_only", seed=0)
    with pytest.raises(ValueError, match="regime"):
        account(ModelConfig(depth=8), "bn_only")


# ------------------------------------------------------------------ the random controls


def test_random_k_resnet20_budget_and_spread(r20):
    """random_k: k = #γβ scalars uniformly over every conv/dense scalar (most land in stage 3)."""
    model, _, _ = r20
    applied = apply_regime(model, ModelConfig(depth=20), "random_k", seed=0)
    masks = applied.masks
    assert masks is not None
    variables = {v.path: v for v in model.weights}
    assert sum(int(m.sum()) for m in masks.values()) == 1_568 == account(ModelConfig(depth=20), "bn").bn
    assert all(category(p) in ("conv", "shortcut_conv", "output") for p in masks)
    assert len(masks) == 23  # 21 conv kernels + output kernel + bias: every candidate tensor
    for p, m in masks.items():
        assert m.dtype == bool and m.shape == tuple(variables[p].shape), p
    counts = {p: int(m.sum()) for p, m in masks.items()}
    total = sum(m.size for m in masks.values())
    assert max(counts.values()) < 0.25 * 1_568  # not all in one tensor
    assert sum(c > 0 for c in counts.values()) >= 18
    for p, m in masks.items():
        if m.size >= 2_304:  # every sizeable kernel holds chosen scalars, about in proportion
            expected = 1_568 * m.size / total
            assert 0.4 * expected < counts[p] < 1.8 * expected, (p, counts[p], expected)
    stage3 = sum(c for p, c in counts.items() if p.startswith("stage3"))
    assert 0.65 < stage3 / 1_568 < 0.83  # ≈ 74%: uniform over scalars is not spread like BN
    trainable = {v.path for v in model.trainable_weights}
    assert trainable == {p for p, c in counts.items() if c > 0}
    assert all(not variables[p].trainable for p in variables if category(p) in ("bn", "shortcut_bn"))


def _bn_channels_per_layer(cfg: ModelConfig) -> dict[str, int]:
    """Independently of channel_hosts: conv name -> channels of the BN layers that normalize it, from
    the naming (stem_bn → stem_conv, …_bnK → …_convK, …_shortcut_bn → …_shortcut_conv; the
    bottleneck's head_bn normalizes the last block's sum: conv3's channels)."""
    out: dict[str, int] = {}
    for s in layer_specs(cfg):
        if s.kind != "bn":
            continue
        if s.name == "head_bn":
            conv = f"stage3_block{cfg.blocks_per_stage}_conv3"
        elif s.name.endswith("_bn"):
            conv = s.name[:-3] + "_conv"
        else:
            conv = s.name[:-4] + "_conv" + s.name[-1]
        out[conv] = out.get(conv, 0) + s.out_channels
    return out


@pytest.mark.parametrize("fixture", ["r20", "b20"])
def test_random_k_channel_two_per_channel_spread_like_bn(fixture, request):
    """random_k_channel: exactly two random kernel scalars in each output channel of the conv each
    BN normalizes — the γ/β count, layer by layer — and nothing in BN, biases or the output layer."""
    model, _, _ = request.getfixturevalue(fixture)
    cfg = ModelConfig(depth=20) if fixture == "r20" else BOTTLENECK
    applied = apply_regime(model, cfg, "random_k_channel", seed=0)
    masks = applied.masks
    bn = account(cfg, "bn").bn
    assert sum(int(m.sum()) for m in masks.values()) == bn == applied.trainable_scalars
    assert bn == (1_568 if fixture == "r20" else 4_000)
    per_layer = _bn_channels_per_layer(cfg)
    assert {p.split("/")[0] for p in masks} == set(per_layer)
    for p, m in masks.items():
        layer = p.split("/")[0]
        assert p.endswith("/kernel") and m.shape == tuple(model.get_layer(layer).kernel.shape)
        per_channel = m.reshape(-1, m.shape[-1]).sum(axis=0)
        assert set(per_channel.tolist()) == {2 * per_layer[layer] // m.shape[-1]}, layer  # 2 (4: head BN's too)
        assert int(m.sum()) == 2 * per_layer[layer]
    if fixture == "b20":  # the projection shortcuts have no BN: they get none; the head BN's go to conv3
        assert not any("shortcut" in p for p in masks)
        assert int(masks["stage3_block2_conv3/kernel"].sum()) == 4 * 256
    trainable = {v.path for v in model.trainable_weights}
    assert trainable == set(masks)
    assert channel_hosts(layer_specs(cfg)) == {c: 2 * n // next(
        s.out_channels for s in layer_specs(cfg) if s.name == c) for c, n in per_layer.items()}


@pytest.mark.parametrize("control", RANDOM)
def test_random_masks_depend_on_seed_only(control):
    cfg = ModelConfig(depth=8)
    m0 = apply_regime(build_resnet(cfg, seed=0), cfg, control, seed=0).masks
    m0b = apply_regime(build_resnet(cfg, seed=7), cfg, control, seed=0).masks
    m1 = apply_regime(build_resnet(cfg, seed=0), cfg, control, seed=1).masks
    assert m0.keys() == m0b.keys() == m1.keys()
    assert all(np.array_equal(m0[p], m0b[p]) for p in m0)
    assert sum(int(m.sum()) for m in m1.values()) == 672
    assert not all(np.array_equal(m0[p], m1[p]) for p in m0)
    overlap = sum(int((m0[p] & m1[p]).sum()) for p in m0)
    # two independent draws of 672 share few scalars: ~6 of ~77k (uniform), ~70 of ~11k (per channel)
    assert overlap < (100 if control == "random_k" else 160)


def test_random_controls_reach_far_apart_layers_differently():
    """Where the budget lands, per stage: uniform follows the weights, per-channel follows BN."""
    cfg = ModelConfig(depth=20)
    model = build_resnet(cfg, seed=0)
    share = {}
    for control in RANDOM:
        masks = apply_regime(model, cfg, control, seed=0).masks
        share[control] = sum(int(m.sum()) for p, m in masks.items() if p.startswith("stage3")) / 1_568
    bn_share = sum(s.params for s in layer_specs(cfg) if s.kind == "bn" and s.name.startswith("stage3")) / 1_568
    # stage 3: 3 blocks × 2 BN + the shortcut BN, 64 channels each
    assert share["random_k_channel"] == pytest.approx(bn_share) == pytest.approx(2 * 7 * 64 / 1_568)
    assert share["random_k"] > 0.65


# ------------------------------------------------------------------ real training steps (both backends)

NO_TRAINABLE_WARNING = "ignore:The model does not have any trainable weights"
ARCHS = ("resnet", "idiomatic_bottleneck")


@pytest.mark.filterwarnings(NO_TRAINABLE_WARNING)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("regime", REGIMES)
def test_every_tensor_after_training_steps(regime, arch):
    """3 real SGD steps (weight decay on): frozen tensors bit-identical, trainable ones moved, BN
    statistics moved (training mode), and for the random controls exactly the masked elements moved."""
    c = check(regime, arch)
    assert c["problems"] == [], c
    assert c["steps"] == (0 if regime == "none" else 3)  # Keras skips the optimizer when nothing trains
    assert c["trainable"] == c["accounted"]
    assert c["tensors"] == (47 if arch == "resnet" else 72)
    if regime in RANDOM:
        assert c["moved_in_mask"] == c["trainable"] == (672 if arch == "resnet" else 2_272)


JAX_CASES = [(a, r) for a in ARCHS for r in REGIMES if a == "resnet" or r in ("bn", *RANDOM)]


@pytest.mark.jax
def test_every_regime_under_the_jax_backend(tmp_path):
    """The same checks in one JAX subprocess (~1 min): every regime on the paper's ResNet, the new code
    paths (bn and both random controls) on the bottleneck. The random controls' constraint used to
    crash JAX's first step (``ops.where`` handed a KerasVariable)."""
    pytest.importorskip("jax")
    import bnsweep

    src = str(Path(bnsweep.__file__).resolve().parents[1])  # the bnsweep this test process imported
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([src, str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    code = ("import json, warnings; import regime_steps as r\n"
            "warnings.filterwarnings('ignore', message='The model does not have any trainable weights')\n"
            f"for a, g in {JAX_CASES!r}:\n    print('CASE ' + json.dumps(r.check(g, a)), flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    cases = {}
    for line in out.stdout.splitlines():
        if line.startswith("CASE "):
            c = json.loads(line[5:])
            cases[(c["arch"], c["regime"])] = c
    assert set(cases) == set(JAX_CASES)
    for (arch, regime), c in cases.items():
        assert c["problems"] == [], c
        assert c["steps"] == (0 if regime == "none" else 3), c
        assert c["trainable"] == c["accounted"], c
        if arch == "resnet":
            assert c["trainable"] == EXPECTED_COUNT_R8[regime], c
        if regime in RANDOM:
            assert c["moved_in_mask"] == c["trainable"] == (672 if arch == "resnet" else 2_272), c


EXPECTED_COUNT_R8 = {"all": 78_042, "bn": 672, "bn_output": 1_322, "bn_shortcut_output": 3_882,
                     "shortcut_output": 3_402, "output": 650, "none": 0, "random_k": 672, "random_k_channel": 672}


@pytest.mark.filterwarnings(NO_TRAINABLE_WARNING)
def test_none_updates_only_bn_statistics_and_records_the_scheduled_lr():
    """Nothing trains (the optimizer never steps), yet BN runs in training mode, and the recorded LR
    follows the schedule (not schedule(step 0) forever)."""
    from bnsweep.engine.trial import TrialRun

    trial = TrialRun({"model": {"depth": 8}, "regime": "none", "epochs": 4, "batch_size": 16, "steps_per_epoch": 2,
                      "lr": 0.4, "data": {"source": "synthetic", "synthetic_size": 32, "val_size": 16}})
    before = {v.path: numpy_of(v).copy() for v in trial.net.weights}
    lrs = [trial.train_epoch().lr for _ in range(4)]
    after = {v.path: numpy_of(v) for v in trial.net.weights}
    assert trial.model.trainable_weights == [] and trial.accounting["trainable"] == 0
    assert int(ops.convert_to_numpy(trial.model.optimizer.iterations)) == 0
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed == {p for p in before if category(p) == "moving"} and len(changed) == 18  # 9 BN × (mean, var)
    assert all(b.trainable for b in bn_layers(trial.net))
    assert lrs == pytest.approx([0.4, 0.4, 0.04, 0.004])  # multistep ×0.1 at 50% and 75% of 4 epochs


# ------------------------------------------------------------------ accounting


def test_training_flops():
    cfg = ModelConfig(depth=20)
    F = account(cfg, "none").forward_flops
    stem = 2 * 3 * 3 * 3 * 16 * 32 * 32  # the stem conv: its input gradient is never computed
    dense = 2 * 64 * 10
    train = {r: account(cfg, r).train_flops for r in REGIMES}
    assert F == 81_626_368
    assert all(account(cfg, r).forward_flops == F for r in REGIMES)
    assert train["none"] == F
    assert train["bn"] == 2 * F - stem and 1.98 < train["bn"] / F <= 2.0
    assert train["all"] == 3 * F - stem and 2.98 < train["all"] / F <= 3.0
    assert train["random_k"] == train["all"]  # (almost) every kernel holds a chosen scalar
    assert train["bn_output"] == train["bn"] + dense
    assert train["output"] == F + dense  # a linear probe backpropagates through the output layer only
    assert F < train["shortcut_output"] < train["bn_shortcut_output"] < train["all"]
    assert train["bn"] < train["bn_output"] < train["bn_shortcut_output"]
    assert train["bn"] == pytest.approx(162e6, rel=0.01) and train["all"] == pytest.approx(244e6, rel=0.01)


def test_accounting_of_random_k_matches_bn():
    for depth in (8, 20, 56):
        cfg = ModelConfig(depth=depth)
        rk, bn = account(cfg, "random_k"), account(cfg, "bn")
        assert rk.trainable == bn.trainable == bn.bn == 224 + 448 * ((depth - 2) // 6)
        assert rk.total == bn.total
    for depth in (11, 20, 56):
        cfg = ModelConfig(depth=depth, arch="idiomatic_bottleneck")
        for control in ("random_k", "random_k_channel"):
            assert account(cfg, control).trainable == account(cfg, "bn").trainable == account(cfg, "bn").bn


def test_random_k_channel_flops_count_only_the_hosting_convs():
    cfg = ModelConfig(depth=20)
    # every conv of the paper's ResNet feeds a BN: the same weight gradients as all, none for the dense layer
    assert account(cfg, "random_k_channel").train_flops == account(cfg, "all").train_flops - 2 * 64 * 10
    b = ModelConfig(depth=20, arch="idiomatic_bottleneck")
    shortcuts = sum(2 * s.macs for s in layer_specs(b) if s.role == "shortcut")
    dense = 2 * 256 * 10
    assert account(b, "random_k_channel").train_flops == account(b, "all").train_flops - shortcuts - dense


def test_bottleneck_accounting_of_every_regime():
    """account() of the notebooks' network: counts above, FLOPs consistent with the regimes."""
    a = {r: account(BOTTLENECK, r) for r in REGIMES}
    for r in REGIMES:
        assert a[r].trainable == EXPECTED_COUNT_B20[r]
        assert (a[r].total, a[r].bn, a[r].bn_moving, a[r].shortcut, a[r].output) == (
            575_114, 4_000, 4_000, SHORTCUT_B20, 2_570)
    F = a["none"].forward_flops
    stem = 2 * 3 * 3 * 3 * 16 * 32 * 32
    assert all(a[r].forward_flops == F for r in REGIMES) and a["none"].train_flops == F
    assert a["bn"].train_flops == 2 * F - stem and a["all"].train_flops == 3 * F - stem
    assert a["output"].train_flops == F + 2 * 2_560
