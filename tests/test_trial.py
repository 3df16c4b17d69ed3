"""One trial end to end: reporting, determinism, divergence, checkpoint/resume, JAX, and learning on
real CIFAR-10 pixels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnsweep.engine.trial import EpochMetrics, TrialRun, run

SUBSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-subset-train.npz"
TINY = {"model": {"depth": 8}, "epochs": 2, "batch_size": 32, "steps_per_epoch": 2,
        "data": {"source": "synthetic", "synthetic_size": 64, "val_size": 32, "test_size": 32}}


def _cfg(**changes):
    cfg = json.loads(json.dumps(TINY))
    cfg.update(changes)
    return cfg


def test_run_reports_every_epoch_and_returns_a_complete_result():
    seen: list[EpochMetrics] = []
    r = run(_cfg(regime="bn", epochs=3), report=seen.append)
    assert r.status == "completed" and r.epochs_run == 3
    assert [m.epoch for m in seen] == [1, 2, 3] and seen == r.history
    assert r.accounting["trainable"] == 672 and r.accounting["total"] == 78714
    assert r.test_accuracy is not None and 0 <= r.test_accuracy <= 1 and r.test_loss > 0
    assert r.best_val_accuracy == max(m.val_accuracy for m in seen)
    assert r.final_val_accuracy == seen[-1].val_accuracy
    assert all(m.images_per_sec > 0 and m.seconds > 0 for m in seen)
    assert 0 <= r.gamma_near_zero <= 1
    assert r.config["regime"] == "bn" and r.config["seed"] == 0  # the config that trained
    assert r.accelerator["kind"] == "cpu" and r.accelerator["backend"] == "tensorflow"
    assert r.data == {"train": 64, "val": 32, "test": 32, "source": "synthetic(64)", "test_is_holdout": True,
                      "sha256": r.data["sha256"]}
    from bnsweep.engine.data import data_fingerprint, load_data
    from bnsweep.spec.config import TrialConfig

    # the content hash of the splits that trained
    assert r.data["sha256"] == data_fingerprint(load_data(TrialConfig.from_dict(_cfg(regime="bn", epochs=3)).data))


def test_same_config_and_seed_give_the_same_result_and_another_seed_does_not():
    a, b = run(_cfg(seed=3)), run(_cfg(seed=3))
    c = run(_cfg(seed=4))
    assert [m.train_loss for m in a.history] == [m.train_loss for m in b.history]
    assert [m.val_loss for m in a.history] == [m.val_loss for m in b.history]
    assert a.test_loss == b.test_loss
    assert [m.train_loss for m in a.history] != [m.train_loss for m in c.history]


def test_nan_loss_ends_the_trial_as_diverged_instead_of_crashing():
    r = run(_cfg(lr=1e9, epochs=3))
    assert r.status == "diverged"
    assert "loss became" in r.reason and r.epochs_run < 3
    assert r.test_accuracy is None  # only completed trials are tested


def test_should_stop_prunes_the_trial():
    r = run(_cfg(epochs=3), should_stop=lambda m: m.epoch >= 1)
    assert r.status == "pruned" and r.epochs_run == 1 and r.test_accuracy is None


def test_resume_from_checkpoint_continues_exactly_where_it_stopped(tmp_path):
    cfg = _cfg(epochs=3, regime="all")
    straight = TrialRun(cfg)
    for _ in range(3):
        straight.train_epoch()
    first = TrialRun(cfg, checkpoint_dir=tmp_path)
    first.train_epoch()
    del first  # "crash" after epoch 1
    second = TrialRun(cfg, checkpoint_dir=tmp_path)
    assert second.epoch == 1 and len(second.history) == 1
    assert second.model.optimizer.iterations.numpy() == 2  # the step counter (LR schedule) came back
    second.train_epoch()
    second.train_epoch()
    for a, b in zip(straight.model.variables, second.model.variables, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert [m.val_loss for m in second.history] == pytest.approx([m.val_loss for m in straight.history], rel=1e-4)


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    TrialRun(_cfg(epochs=1), checkpoint_dir=tmp_path).train_epoch()
    with pytest.raises(ValueError, match="another configuration"):
        TrialRun(_cfg(epochs=1, lr=0.05), checkpoint_dir=tmp_path)


@pytest.mark.jax
def test_the_same_trial_runs_under_the_jax_backend(tmp_path):
    pytest.importorskip("jax")
    code = (
        "import json, sys; from bnsweep.engine.trial import run; "
        f"r = run({json.dumps(_cfg(regime='bn', epochs=2))}); "
        "print(json.dumps({'status': r.status, 'backend': r.accelerator['backend'], "
        "'trainable': r.accounting['trainable'], 'val': [m.val_accuracy for m in r.history], "
        "'lr': [m.lr for m in r.history]}))"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["status"] == "completed" and r["backend"] == "jax" and r["trainable"] == 672
    assert r["lr"] == pytest.approx([0.1, 0.01])  # multistep ×0.1 at 50% of 2 epochs
    assert all(0 <= v <= 1 for v in r["val"])


@pytest.mark.skipif(not SUBSET.exists(), reason=f"the real CIFAR-10 subset is not at {SUBSET} (../shared/data)")
def test_learning_on_real_cifar10_all_beats_bn_beats_none():
    """ResNet-8, 6 epochs (cosine), 4,085 real training images; 500 held-out test images.

    Calibrated here (seed 0, TF, 2-core CPU, 5 epochs): all 39%, bn 20%, none 9% test accuracy.
    Margins: all ≥ 28%, bn ≥ 15% (1.5× chance), bn ≥ 8 points below all, none within chance ± 5.
    """
    from bnsweep.engine.data import load_data
    from bnsweep.spec.config import DataConfig

    data_cfg = {"source": "npz", "path": str(SUBSET), "val_size": 500, "test_size": 500}
    data = load_data(DataConfig(**data_cfg))
    acc = {}
    for regime in ("all", "bn", "none"):
        r = run({"model": {"depth": 8}, "regime": regime, "epochs": 6, "batch_size": 128, "lr": 0.1,
                 "lr_schedule": {"type": "cosine"}, "data": data_cfg, "seed": 0}, data=data)
        assert r.status == "completed"
        acc[regime] = r.test_accuracy
    assert acc["all"] >= 0.28, acc
    assert acc["bn"] >= 0.15, acc
    assert acc["all"] - acc["bn"] >= 0.08, acc
    assert abs(acc["none"] - 0.10) <= 0.05, acc


def test_the_distribution_strategy_path_trains_under_a_real_mirrored_strategy():
    """The TPU path builds and compiles inside a tf.distribute scope; MirroredStrategy over this
    machine's one CPU device exercises the same code for real (no TPU exists here)."""
    r = run(_cfg(strategy="mirrored", regime="bn"))
    assert r.status == "completed" and r.accounting["trainable"] == 672
    assert r.test_accuracy is not None


def test_strategy_tpu_without_a_tpu_fails_with_a_clear_message_no_tpu_hardware():
    with pytest.raises(RuntimeError, match="no TPU was found"):
        TrialRun(_cfg(strategy="tpu"))


def test_strategy_needs_the_tensorflow_backend():
    from bnsweep.spec.config import TrialConfig
    from bnsweep.spec.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy"):
        TrialConfig.from_dict(_cfg(strategy="tpu", backend="jax"))
