"""Fused replicates (bnsweep/engine/fused_replicates.py): N seeds of one configuration in one model and one
training step give the per-seed results of N separate TrialRuns (same init, data order and augmentation per seed)."""

from __future__ import annotations

import numpy as np
import pytest

from bnsweep.engine.data import load_data
from bnsweep.engine.fused_replicates import FusedTrialRun
from bnsweep.engine.trial import TrialRun
from bnsweep.spec.config import TrialConfig

CFG = {"model": {"depth": 8}, "regime": "all", "epochs": 2, "batch_size": 16, "steps_per_epoch": 2, "lr": 0.1,
       "data": {"source": "synthetic", "synthetic_size": 32, "val_size": 16, "test_size": 16}}
SEEDS = [3, 7]


@pytest.fixture(scope="module")
def data():
    return load_data(TrialConfig.from_dict(CFG).data)


@pytest.fixture(scope="module")
def separate_runs(data):
    """The reference: one TrialRun per seed, two epochs each."""
    runs = [TrialRun({**CFG, "seed": s}, data=data) for s in SEEDS]
    history = [[run.train_epoch() for _ in range(2)] for run in runs]
    return runs, history


def _max_weight_diff(a, b) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a.weights, b.weights, strict=True))


def test_separate_layout_is_bit_identical_to_separate_trial_runs(data, separate_runs):
    runs, history = separate_runs
    fused = FusedTrialRun(CFG, seeds=SEEDS, data=data, layout="separate")
    got = [fused.train_epoch() for _ in range(2)]
    for i in range(len(SEEDS)):
        assert [m.train_loss for m in (got[0][i], got[1][i])] == [m.train_loss for m in history[i]]
        assert [m.val_loss for m in (got[0][i], got[1][i])] == [m.val_loss for m in history[i]]
        assert _max_weight_diff(fused.replica_net(i), runs[i].net) == 0.0
    assert fused.history[1] == [got[0][1], got[1][1]] and not fused.diverged


def test_grouped_layout_matches_separate_trial_runs_up_to_float_rounding(data, separate_runs):
    runs, history = separate_runs
    fused = FusedTrialRun(CFG, seeds=SEEDS, data=data, layout="grouped")
    assert fused.net is not None and fused.net.get_layer("stem_conv").groups == len(SEEDS)
    got = [fused.train_epoch() for _ in range(2)]
    for i in range(len(SEEDS)):
        np.testing.assert_allclose([m.train_loss for m in (got[0][i], got[1][i])],
                                   [m.train_loss for m in history[i]], rtol=1e-4)
        np.testing.assert_allclose([m.val_accuracy for m in (got[0][i], got[1][i])],
                                   [m.val_accuracy for m in history[i]], atol=1 / 16 + 1e-9)
        assert _max_weight_diff(fused.replica_net(i), runs[i].net) < 1e-3


def test_grouped_weights_round_trip_and_replicas_stay_independent(data):
    fused = FusedTrialRun({**CFG, "regime": "bn"}, seeds=SEEDS, data=data, layout="grouped")
    before = [np.asarray(v.numpy()).copy() for v in fused.replica_net(1).weights]
    kernel = fused.net.get_layer("stem_conv").kernel
    k = np.asarray(kernel.numpy())
    k[..., : k.shape[-1] // 2] += 1.0  # perturb replica 0 only
    kernel.assign(k)
    after = [np.asarray(v.numpy()) for v in fused.replica_net(1).weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert not fused.net.get_layer("stem_conv").kernel.trainable  # bn regime froze the grouped convs
    assert fused.net.get_layer("stem_bn").gamma.trainable


def test_bad_arguments_are_refused(data):
    with pytest.raises(ValueError, match="distinct seeds"):
        FusedTrialRun(CFG, seeds=[1, 1], data=data)
    with pytest.raises(ValueError, match="random_k"):
        FusedTrialRun({**CFG, "regime": "random_k"}, seeds=SEEDS, data=data, layout="grouped")
    with pytest.raises(ValueError, match="layout"):
        FusedTrialRun(CFG, seeds=SEEDS, data=data, layout="diagonal")  # type: ignore[arg-type]
