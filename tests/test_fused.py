"""Fused replicates (bnsweep/engine/fused_replicates.py): N seeds of one configuration in one model and one
training step give the per-seed results of N separate TrialRuns (same init, data order and augmentation per
seed) — bit for bit in the separate layout, across a checkpoint/restore, across a switch between N TrialRuns
and a fused run, and when one replica diverges; the grouped layout up to float rounding."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bnsweep.engine.data import load_data
from bnsweep.engine.fused_replicates import FusedTrialRun, SeparateReplicates, start_replicates
from bnsweep.engine.trial import Diverged, TrialRun
from bnsweep.spec.config import TrialConfig

CFG = {"model": {"depth": 8}, "regime": "all", "epochs": 3, "batch_size": 16, "steps_per_epoch": 2, "lr": 0.1,
       "data": {"source": "synthetic", "synthetic_size": 32, "val_size": 16, "test_size": 16}}
SEEDS = [3, 7, 11]
TIMING = ("wall_seconds", "images_per_sec", "accelerator")


@pytest.fixture(scope="module")
def data():
    return load_data(TrialConfig.from_dict(CFG).data)


@pytest.fixture(scope="module")
def reference(data):
    """One TrialRun per seed, 3 epochs, finished: seed -> (result, weights)."""
    out = {}
    for s in SEEDS:
        run = TrialRun({**CFG, "seed": s}, data=data)
        for _ in range(3):
            run.train_epoch()
        out[s] = (run.finish("completed"), _weights(run.net))
    return out


def _weights(net) -> list[np.ndarray]:
    return [np.array(v.numpy(), copy=True) for v in net.weights]


def _science(result) -> dict:
    """A TrialResult without what depends on the clock or the device description."""
    d = {k: v for k, v in result.as_dict().items() if k not in TIMING}
    d["config"] = {k: v for k, v in d["config"].items() if k != "replicates_layout"}  # config_hash ignores it
    d["history"] = [{k: v for k, v in m.items() if k not in ("images_per_sec", "seconds")} for m in d["history"]]
    return d


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def _train_to_the_end(reps) -> dict:
    """What the sweep's trainable does with a configuration's replicates; seed -> (result, weights)."""
    done = {}
    while reps.active:
        for seed, outcome in reps.train_epoch().items():
            if isinstance(outcome, Diverged):
                done[seed] = (reps.finish(seed, "diverged", str(outcome)), _weights(reps.replicas[seed].net))
            elif reps.replicas[seed].epoch >= CFG["epochs"]:
                done[seed] = (reps.finish(seed, "completed"), _weights(reps.replicas[seed].net))
    return done


def test_separate_layout_is_bit_identical_to_separate_trial_runs(data, reference):
    reps = start_replicates({**CFG, "replicates_layout": "fused"}, SEEDS, data=data)
    assert isinstance(reps, FusedTrialRun) and reps.layout == "separate"  # auto model layout on a CPU
    assert reps.layout_choice == ("fused-separate", "asked for")
    got = _train_to_the_end(reps)
    for s in SEEDS:
        assert _science(got[s][0]) == _science(reference[s][0])  # losses, accuracies, test, γ, accounting
        assert _max_diff(got[s][1], reference[s][1]) == 0.0
    assert got[3][0].accelerator["replicates"] == "fused-separate:3"
    assert got[3][0].accelerator["precision"] == "float32"


def test_start_replicates_gives_trial_runs_the_same_interface(data, reference):
    reps = start_replicates({**CFG, "replicates_layout": "auto"}, SEEDS[:1], data=data)
    assert isinstance(reps, SeparateReplicates)  # auto on a CPU: one TrialRun per seed
    assert reps.layout_choice[0] == "separate" and "cpu" in reps.layout_choice[1]
    got = _train_to_the_end(reps)
    assert _science(got[3][0]) == _science(reference[3][0])


def test_grouped_layout_matches_separate_trial_runs_up_to_float_rounding(data, reference):
    fused = FusedTrialRun(CFG, seeds=SEEDS, data=data, layout="grouped")
    assert fused.net is not None and fused.net.get_layer("stem_conv").groups == len(SEEDS)
    got = _train_to_the_end(fused)
    for s in SEEDS:
        a, b = got[s][0], reference[s][0]
        np.testing.assert_allclose([m.train_loss for m in a.history], [m.train_loss for m in b.history], rtol=1e-4)
        np.testing.assert_allclose([m.val_loss for m in a.history], [m.val_loss for m in b.history], rtol=1e-4)
        assert abs(a.test_accuracy - b.test_accuracy) <= 1 / 16 + 1e-9
        assert _max_diff(got[s][1], reference[s][1]) < 1e-3


def test_a_fused_run_resumes_from_its_checkpoints_bit_identically(data, reference, tmp_path):
    dirs = [tmp_path / f"seed-{s}" / "checkpoint" for s in SEEDS]
    first = FusedTrialRun(CFG, seeds=SEEDS, data=data, layout="separate", checkpoint_dirs=dirs)
    first.train_epoch()
    del first  # "crash" after epoch 1
    assert all((d / "state.json").is_file() and (d / "variables.npz").is_file() for d in dirs)
    second = FusedTrialRun(CFG, seeds=SEEDS, data=data, layout="separate", checkpoint_dirs=dirs)
    assert second.epoch == 1 and all(len(r.history) == 1 for r in second.replicas.values())
    got = _train_to_the_end(second)
    for s in SEEDS:
        assert _science(got[s][0]) == _science(reference[s][0])
        assert _max_diff(got[s][1], reference[s][1]) == 0.0


def test_checkpoints_are_trial_run_checkpoints_both_ways_even_when_uneven(data, reference, tmp_path):
    """Seeds 3 and 7 stopped unevenly as TrialRuns (epochs 1 and 2); a fused run resumes them (3 catches up
    first, alone) and checkpoints, and a TrialRun takes seed 3 over from the fused checkpoint of epoch 2."""
    dirs = {s: tmp_path / f"seed-{s}" / "checkpoint" for s in (3, 7)}
    for s, epochs in ((3, 1), (7, 2)):
        run = TrialRun({**CFG, "seed": s}, data=data, checkpoint_dir=dirs[s])
        for _ in range(epochs):
            run.train_epoch()
    fused = FusedTrialRun(CFG, seeds=[3, 7], data=data, layout="separate", checkpoint_dirs=[dirs[3], dirs[7]])
    assert fused.epoch == 1 and sorted(fused.train_epoch()) == [3]  # only the laggard trains
    assert fused.replicas[3].epoch == fused.replicas[7].epoch == 2
    takeover = TrialRun({**CFG, "seed": 3}, data=data, checkpoint_dir=dirs[3])  # the fused run's checkpoint
    assert takeover.epoch == 2
    takeover.train_epoch()
    assert _science(takeover.finish("completed")) == _science(reference[3][0])
    assert _max_diff(_weights(takeover.net), reference[3][1]) == 0.0
    assert sorted(fused.train_epoch()) == [3, 7]
    for s in (3, 7):
        assert _science(fused.finish(s)) == _science(reference[s][0])


def test_a_grouped_run_resumes_from_trial_run_checkpoints(data, reference, tmp_path):
    dirs = [tmp_path / f"seed-{s}" / "checkpoint" for s in SEEDS[:2]]
    for s, d in zip(SEEDS[:2], dirs, strict=True):
        TrialRun({**CFG, "seed": s}, data=data, checkpoint_dir=d).train_epoch()
    got = _train_to_the_end(FusedTrialRun(CFG, seeds=SEEDS[:2], data=data, layout="grouped", checkpoint_dirs=dirs))
    for s in SEEDS[:2]:
        a, b = got[s][0], reference[s][0]
        assert a.history[0] == b.history[0] or a.history[0].train_loss == b.history[0].train_loss  # epoch 1: restored
        np.testing.assert_allclose([m.val_loss for m in a.history], [m.val_loss for m in b.history], rtol=1e-4)
        assert _max_diff(got[s][1], reference[s][1]) < 1e-3


def test_adam_state_survives_a_switch_from_trial_runs_to_a_fused_run(data, tmp_path):
    cfg = {**CFG, "optimizer": {"name": "adam"}, "lr": 1e-3, "epochs": 2}
    straight = TrialRun({**cfg, "seed": 3}, data=data)
    straight.train_epoch()
    straight.train_epoch()
    TrialRun({**cfg, "seed": 3}, data=data, checkpoint_dir=tmp_path).train_epoch()
    fused = FusedTrialRun(cfg, seeds=[3], data=data, layout="separate", checkpoint_dirs=[tmp_path])
    fused.train_epoch()
    assert fused.history[0] == straight.history or \
        [m.train_loss for m in fused.history[0]] == [m.train_loss for m in straight.history]
    assert _max_diff(_weights(fused.replica_net(0)), _weights(straight.net)) == 0.0


@pytest.mark.parametrize("layout", ["separate", "grouped"])
def test_a_diverging_replica_is_recorded_and_the_others_train_on_unchanged(data, reference, layout):
    fused = FusedTrialRun(CFG, seeds=SEEDS, data=data, layout=layout)
    fused.train_epoch()
    fused.break_replica_for_tests(7)  # its next step's loss is NaN
    got = _train_to_the_end(fused)
    broken, weights = got[7]
    assert broken.status == "diverged" and broken.epochs_run == 1 and len(broken.history) == 1
    assert broken.reason == "training loss became nan in epoch 2 (lr 0.1)"
    assert broken.test_accuracy is None
    assert fused.diverged == {1: broken.reason} and fused.active == []
    # A TrialRun broken the same way keeps the same record and the same weights (after the NaN step)
    run = TrialRun({**CFG, "seed": 7}, data=data)
    run.train_epoch()
    kernel = run.net.get_layer("output").kernel
    kernel.assign(np.full(kernel.shape, np.inf, "float32"))
    with pytest.raises(Diverged) as e:
        run.train_epoch()
    assert str(e.value) == broken.reason and re.search(r"epoch 2 \(lr 0\.1\)", str(e.value))
    alone = run.finish("diverged", str(e.value))
    if layout == "separate":
        assert _science(alone) == _science(broken)
    else:  # the grouped layout's float rounding in epoch 1
        assert (alone.status, alone.reason, alone.epochs_run) == (broken.status, broken.reason, broken.epochs_run)
        np.testing.assert_allclose(alone.history[0].val_loss, broken.history[0].val_loss, rtol=1e-4)
    np.testing.assert_array_equal(np.isnan(np.concatenate([w.ravel() for w in weights])),
                                  np.isnan(np.concatenate([w.ravel() for w in _weights(run.net)])))
    for s in (3, 11):  # the others: the numbers of a run where nothing diverged
        if layout == "separate":
            assert _science(got[s][0]) == _science(reference[s][0])
            assert _max_diff(got[s][1], reference[s][1]) == 0.0
        else:
            a, b = got[s][0], reference[s][0]
            np.testing.assert_allclose([m.val_loss for m in a.history], [m.val_loss for m in b.history], rtol=1e-4)
            assert _max_diff(got[s][1], reference[s][1]) < 1e-3


def test_grouped_weights_round_trip_and_replicas_stay_independent(data):
    fused = FusedTrialRun({**CFG, "regime": "bn"}, seeds=SEEDS[:2], data=data, layout="grouped")
    before = [np.asarray(v.numpy()).copy() for v in fused.replica_net(1).weights]
    kernel = fused.net.get_layer("stem_conv").kernel
    k = np.asarray(kernel.numpy())
    k[..., : k.shape[-1] // 2] += 1.0  # perturb replica 0 only
    kernel.assign(k)
    after = [np.asarray(v.numpy()) for v in fused.replica_net(1).weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert not fused.net.get_layer("stem_conv").kernel.trainable  # bn regime froze the grouped convs
    assert fused.net.get_layer("stem_bn").gamma.trainable


def test_bad_arguments_are_refused(data, tmp_path):
    with pytest.raises(ValueError, match="distinct seeds"):
        FusedTrialRun(CFG, seeds=[1, 1], data=data)
    with pytest.raises(ValueError, match="random_k"):
        FusedTrialRun({**CFG, "regime": "random_k"}, seeds=SEEDS, data=data, layout="grouped")
    with pytest.raises(ValueError, match="layout"):
        FusedTrialRun(CFG, seeds=SEEDS, data=data, layout="diagonal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one per seed"):
        FusedTrialRun(CFG, seeds=SEEDS, data=data, checkpoint_dirs=[tmp_path])
    TrialRun({**CFG, "seed": 3, "lr": 0.05}, data=data, checkpoint_dir=tmp_path / "other").train_epoch()
    with pytest.raises(ValueError, match="another configuration"):
        FusedTrialRun(CFG, seeds=[3], data=data, checkpoint_dirs=[tmp_path / "other"])
