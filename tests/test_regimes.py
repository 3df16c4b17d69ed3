"""Freezing regimes: which variables train, BN semantics (SCIENCE.md §2), random_k, accounting.

Expectations are an explicit table per variable category (not ``regimes._trains``), checked on real
Keras models and, for "frozen stays frozen", after real optimizer steps of a ``TrialRun``.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from bnsweep.engine.models import build_resnet
from bnsweep.engine.regimes import KeepFrozenElements, account, apply_regime
from bnsweep.spec.config import REGIMES, ModelConfig

MOVING = ("moving_mean", "moving_variance")

# Which variable categories train in each regime (SCIENCE.md §2; the paper's BN, BN/S/O, S/O, ...).
EXPECTED: dict[str, set[str]] = {
    "all": {"conv", "shortcut_conv", "bn", "shortcut_bn", "output"},
    "bn": {"bn", "shortcut_bn"},
    "bn_output": {"bn", "shortcut_bn", "output"},
    "bn_shortcut_output": {"bn", "shortcut_bn", "shortcut_conv", "output"},
    "shortcut_output": {"shortcut_conv", "shortcut_bn", "output"},
    "output": {"output"},
    "none": set(),
}
# Trainable scalars of ResNet-20 per regime, from SCIENCE.md's counts: BN 1,568; output 650;
# shortcut 1×1 convs 16·32 + 32·64 = 2,560 and their BN γ/β 2·(32 + 64) = 192.
EXPECTED_COUNT_R20 = {
    "all": 272_474, "bn": 1_568, "bn_output": 1_568 + 650, "bn_shortcut_output": 1_568 + 2_560 + 650,
    "shortcut_output": 2_560 + 192 + 650, "output": 650, "none": 0, "random_k": 1_568,
}
# Every variable of ResNet-8, by path (pins the naming the table and the masks rely on).
R8_LAYERS = (["stem_conv", "stem_bn"]
             + [f"stage{s}_block1_{n}" for s in (1, 2, 3) for n in ("conv1", "bn1", "conv2", "bn2")]
             + [f"stage{s}_block1_shortcut_{n}" for s in (2, 3) for n in ("conv", "bn")] + ["output"])

TRIAL = {"model": {"depth": 8}, "epochs": 1, "batch_size": 32, "steps_per_epoch": 3, "lr": 0.5,
         "data": {"source": "synthetic", "synthetic_size": 96, "val_size": 32}}


def category(path: str) -> str:
    layer, part = path.split("/")
    if part in MOVING:
        return "moving"
    if layer == "output":
        assert part in ("kernel", "bias"), path
        return "output"
    if part in ("gamma", "beta"):
        return "shortcut_bn" if layer.endswith("_shortcut_bn") else "bn"
    assert part == "kernel", path
    return "shortcut_conv" if layer.endswith("_shortcut_conv") else "conv"


def numpy_of(v) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(v))


def snapshot(model) -> dict[str, np.ndarray]:
    return {v.path: numpy_of(v).copy() for v in model.weights}


def scalars(variables) -> int:
    return sum(int(np.prod(v.shape)) for v in variables)


def bn_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def test_table_covers_every_regime():
    assert set(EXPECTED) | {"random_k"} == set(REGIMES)
    assert set(EXPECTED_COUNT_R20) == set(REGIMES)


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


@pytest.fixture(scope="module")
def r20():
    """One ResNet-20, re-frozen by each test (apply_regime must not depend on earlier regimes), with
    a probe model that returns every BN layer's input and output."""
    model = build_resnet(ModelConfig(depth=20), seed=0)
    rng = np.random.default_rng(0)
    for layer in bn_layers(model):  # β ≠ 0, so "output mean = β" is a real check
        layer.beta.assign(rng.uniform(-1, 1, layer.beta.shape[0]).astype("float32"))
    bns = bn_layers(model)
    probe = keras.Model(model.input, [t for b in bns for t in (b.input, b.output)])
    return model, probe, bns


@pytest.mark.parametrize("regime", REGIMES)
def test_regime_trains_exactly_the_expected_variables(r20, regime):
    model, _, _ = r20
    cfg = ModelConfig(depth=20)
    applied = apply_regime(model, cfg, regime, seed=0)
    wrong = []
    for v in model.weights:
        cat = category(v.path)
        if cat == "moving":
            want = False
        elif regime == "random_k":  # element-wise: only conv/dense tensors that hold a chosen scalar
            mask = applied.random_k_masks.get(v.path)
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
    if regime == "random_k":
        n = sum(int(applied.random_k_masks[v.path].sum()) for v in trainable)
    assert n == EXPECTED_COUNT_R20[regime] == account(cfg, regime).trainable == applied.trainable_scalars
    assert applied.trainable_variables == tuple(v.path for v in trainable)
    # freezing never touches layers: every BN layer (every layer) stays trainable
    assert model.trainable
    assert all(layer.trainable for layer in model.layers)
    assert len(bn_layers(model)) == 21 and all(b.trainable for b in bn_layers(model))
    assert all(not v.trainable for b in bn_layers(model) for v in (b.moving_mean, b.moving_variance))


@pytest.mark.parametrize("regime", REGIMES)
def test_bn_normalizes_with_batch_statistics_in_every_regime(r20, regime):
    """In training every BN layer uses the batch's statistics, frozen γ/β or not."""
    model, probe, bns = r20
    apply_regime(model, ModelConfig(depth=20), regime, seed=0)
    x = 0.5 + np.random.default_rng(1).normal(size=(8, 32, 32, 3)).astype("float32")
    outs = [numpy_of(t) for t in probe(x, training=True)]
    for i, b in enumerate(bns):
        h, y = outs[2 * i].astype(np.float64), outs[2 * i + 1].astype(np.float64)
        gamma, beta = numpy_of(b.gamma), numpy_of(b.beta)
        mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
        want = (h - mean) / np.sqrt(var + 1e-5) * gamma + beta
        np.testing.assert_allclose(y, want, atol=2e-4 * (1 + np.abs(want).max()), err_msg=b.name)
        np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), beta, atol=1e-3, err_msg=b.name)
        np.testing.assert_allclose(y.std(axis=(0, 1, 2)), np.abs(gamma), rtol=0.02, atol=1e-3, err_msg=b.name)


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
    apply_regime(model, ModelConfig(depth=8), "random_k", seed=0)
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


@pytest.mark.jax
def test_regimes_under_jax_backend(tmp_path):
    """The JAX backend has no "same value" short cut in ``Layer.trainable``: re-enabling a layer
    there re-enables all its variables, so the order of operations in apply_regime matters."""
    code = textwrap.dedent("""
        import numpy as np
        from bnsweep.spec.config import ModelConfig
        from bnsweep.engine.models import build_resnet
        from bnsweep.engine.regimes import apply_regime
        for regime in ("bn", "output", "none"):
            m = build_resnet(ModelConfig(depth=8), seed=0)
            a = apply_regime(m, ModelConfig(depth=8), regime, seed=0)
            print(regime, a.trainable_scalars, sum(int(np.prod(v.shape)) for v in m.trainable_weights))
    """)
    import bnsweep

    src = str(Path(bnsweep.__file__).resolve().parents[1])  # the bnsweep this test process imported
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.split(" ")[0] in ("bn", "output", "none")]
    assert lines == ["bn 672 672", "output 650 650", "none 0 0"]


# ------------------------------------------------------------------ random_k


def test_random_k_resnet20_budget_and_spread(r20):
    model, _, _ = r20
    applied = apply_regime(model, ModelConfig(depth=20), "random_k", seed=0)
    masks = applied.random_k_masks
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
    trainable = {v.path for v in model.trainable_weights}
    assert trainable == {p for p, c in counts.items() if c > 0}
    assert all(not variables[p].trainable for p in variables if category(p) in ("bn", "shortcut_bn"))


def test_random_k_mask_depends_on_seed_only():
    cfg = ModelConfig(depth=8)
    m0 = apply_regime(build_resnet(cfg, seed=0), cfg, "random_k", seed=0).random_k_masks
    m0b = apply_regime(build_resnet(cfg, seed=7), cfg, "random_k", seed=0).random_k_masks
    m1 = apply_regime(build_resnet(cfg, seed=0), cfg, "random_k", seed=1).random_k_masks
    assert m0.keys() == m0b.keys() == m1.keys()
    assert all(np.array_equal(m0[p], m0b[p]) for p in m0)
    assert sum(int(m.sum()) for m in m1.values()) == 672
    assert not all(np.array_equal(m0[p], m1[p]) for p in m0)
    overlap = sum(int((m0[p] & m1[p]).sum()) for p in m0)
    assert overlap < 100  # two independent draws of 672 out of ~77k share ~6 scalars


# ------------------------------------------------------------------ real training steps


@pytest.fixture(scope="module")
def trained():
    """``trained(regime)`` -> (TrialRun, weights before, weights after one 3-step epoch)."""
    from bnsweep.engine.trial import TrialRun

    cache: dict[str, tuple] = {}

    def get(regime: str):
        if regime not in cache:
            trial = TrialRun({**TRIAL, "regime": regime})
            before = snapshot(trial.net)
            m = trial.train_epoch()
            assert np.isfinite(m.train_loss)
            cache[regime] = (trial, before, snapshot(trial.net))
        return cache[regime]

    return get


NO_TRAINABLE_WARNING = "ignore:The model does not have any trainable weights"


@pytest.mark.filterwarnings(NO_TRAINABLE_WARNING)
@pytest.mark.parametrize("regime", [r for r in REGIMES if r != "random_k"])
def test_frozen_variables_are_bit_identical_after_training(trained, regime):
    trial, before, after = trained(regime)
    # three real optimizer steps (Keras skips the optimizer when nothing is trainable)
    assert int(ops.convert_to_numpy(trial.model.optimizer.iterations)) == (0 if regime == "none" else 3)
    assert trial.applied.trainable_scalars == trial.accounting["trainable"] == account(
        ModelConfig(depth=8), regime).trainable
    assert before.keys() == after.keys() and len(before) == 47
    problems = []
    for p in before:
        cat = category(p)
        changed = not np.array_equal(before[p], after[p])
        if cat == "moving":
            if not changed:  # BN ran in training mode: its running statistics moved
                problems.append(f"{p}: moving statistic unchanged")
        elif cat in EXPECTED[regime]:
            if not changed:
                problems.append(f"{p}: trainable but unchanged")
        elif changed or before[p].dtype != after[p].dtype:
            problems.append(f"{p}: frozen but changed")
    assert problems == [], f"{regime}: {problems}"


@pytest.mark.filterwarnings(NO_TRAINABLE_WARNING)
def test_none_updates_only_bn_statistics(trained):
    trial, before, after = trained("none")
    assert trial.model.trainable_weights == [] and trial.accounting["trainable"] == 0
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed == {p for p in before if category(p) == "moving"}
    assert len(changed) == 18  # 9 BN layers × (mean, variance)
    for b in bn_layers(trial.net):
        assert b.trainable  # BN layers in training mode: the notebooks' All_Layers_Frozen were not


def test_random_k_trains_exactly_the_masked_elements(trained):
    trial, before, after = trained("random_k")
    masks = trial.applied.random_k_masks
    assert sum(int(m.sum()) for m in masks.values()) == 672 == trial.accounting["trainable"]
    changed_in_mask = 0
    for p in before:
        diff = before[p] != after[p]
        cat = category(p)
        if cat == "moving":
            assert diff.any(), p
        elif p in masks:
            assert not (diff & ~masks[p]).any(), f"{p}: {int((diff & ~masks[p]).sum())} frozen elements moved"
            assert np.array_equal(before[p][~masks[p]], after[p][~masks[p]])
            changed_in_mask += int((diff & masks[p]).sum())
        else:  # BN γ/β
            assert cat in ("bn", "shortcut_bn") and not diff.any(), p
    assert changed_in_mask == 672  # every chosen scalar learned (weight decay alone moves it)


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
