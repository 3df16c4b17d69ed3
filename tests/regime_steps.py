"""Real optimizer steps under every regime, checked tensor by tensor; shared by the in-process
(TensorFlow) tests of ``test_regimes.py`` and their one-subprocess JAX counterpart, which runs
``python tests/regime_steps.py`` under ``KERAS_BACKEND=jax`` and reads one JSON line per case.

A case is a (regime, architecture) pair: a real ``TrialRun`` (3 SGD steps at a large LR with weight
decay on every trainable tensor), every tensor compared before and after.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

MOVING = ("moving_mean", "moving_variance")
RANDOM = ("random_k", "random_k_channel")
# Which variable categories train in each regime (the paper's BN, BN/S/O, S/O, ...). The notebooks'
# bottleneck has no shortcut BN, so the same table holds for it.
EXPECTED: dict[str, set[str]] = {
    "all": {"conv", "shortcut_conv", "bn", "shortcut_bn", "output"},
    "bn": {"bn", "shortcut_bn"},
    "bn_output": {"bn", "shortcut_bn", "output"},
    "bn_shortcut_output": {"bn", "shortcut_bn", "shortcut_conv", "output"},
    "shortcut_output": {"shortcut_conv", "shortcut_bn", "output"},
    "output": {"output"},
    "none": set(),
}
# XLA-compiled (the JAX default) where the regime has traced code of its own (the random controls'
# constraint) or compiles every weight gradient anyway (all); the others run eagerly on JAX, which
# checks the same freezing in a fraction of the compile time. On TensorFlow "auto" means no XLA.
COMPILED = ("all", "random_k", "random_k_channel")
MODELS = {"resnet": {"depth": 8}, "idiomatic_bottleneck": {"depth": 11, "arch": "idiomatic_bottleneck"}}


def trial_config(regime: str, arch: str) -> dict[str, Any]:
    return {"model": MODELS[arch], "regime": regime, "epochs": 1, "batch_size": 16, "steps_per_epoch": 3,
            "lr": 0.5, "optimizer": {"weight_decay": 0.01}, "jit_compile": "auto" if regime in COMPILED else False,
            "data": {"source": "synthetic", "synthetic_size": 48, "val_size": 16}}


def category(path: str) -> str:
    layer, part = path.split("/")
    if part in MOVING:
        return "moving"
    if layer == "output":
        return "output"
    if part in ("gamma", "beta"):
        return "shortcut_bn" if layer.endswith("_shortcut_bn") else "bn"
    return "shortcut_conv" if layer.endswith("_shortcut_conv") else "conv"


def snapshot(model: Any) -> dict[str, np.ndarray]:
    from keras import ops

    return {v.path: np.asarray(ops.convert_to_numpy(v)).copy() for v in model.weights}


def check(regime: str, arch: str) -> dict[str, Any]:
    """Train 3 steps; return what moved and every problem found (empty ``problems``: all is well)."""
    from keras import ops

    from bnsweep.engine.regimes import account
    from bnsweep.engine.trial import TrialRun

    trial = TrialRun(trial_config(regime, arch))
    before = snapshot(trial.net)
    m = trial.train_epoch()
    after = snapshot(trial.net)
    problems: list[str] = []
    if not np.isfinite(m.train_loss):
        problems.append(f"loss {m.train_loss}")
    steps = int(ops.convert_to_numpy(trial.model.optimizer.iterations))
    masks = trial.applied.masks or {}
    moved_in_mask = 0
    for p in before:
        cat = category(p)
        diff = before[p] != after[p]
        if before[p].dtype != after[p].dtype:
            problems.append(f"{p}: dtype changed")
        if cat == "moving":
            if not diff.any():  # BN ran in training mode: its running statistics moved
                problems.append(f"{p}: moving statistic unchanged")
        elif regime in RANDOM:
            mask = masks.get(p)
            if mask is None:
                if diff.any():
                    problems.append(f"{p}: outside every mask but changed")
                continue
            if (diff & ~mask).any():
                problems.append(f"{p}: {int((diff & ~mask).sum())} frozen elements moved")
            if (~diff & mask).any():  # weight decay alone moves every chosen scalar
                problems.append(f"{p}: {int((~diff & mask).sum())} chosen elements did not move")
            moved_in_mask += int((diff & mask).sum())
        elif cat in EXPECTED[regime]:
            # a conv bias just before a BN gets (almost) no gradient: BN subtracts it again
            if diff.mean() < (0.0 if p.endswith("/bias") else 0.99) or not diff.any():
                problems.append(f"{p}: trainable but {int((~diff).sum())} of {diff.size} elements unchanged")
        elif diff.any():
            problems.append(f"{p}: frozen but changed")
    accounting = account(trial.config.model, regime)
    return {"regime": regime, "arch": arch, "steps": steps, "tensors": len(before),
            "trainable": trial.applied.trainable_scalars, "accounted": accounting.trainable,
            "moved_in_mask": moved_in_mask, "problems": problems, "lr": m.lr}


if __name__ == "__main__":  # python tests/regime_steps.py ARCH[,ARCH] REGIME[,REGIME...]: one JSON line per case
    import warnings

    warnings.filterwarnings("ignore", message="The model does not have any trainable weights")
    archs, regimes = sys.argv[1].split(","), sys.argv[2].split(",")
    for a in archs:
        for r in regimes:
            print("CASE " + json.dumps(check(r, a)), flush=True)
