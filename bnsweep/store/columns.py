"""What every column of the results and history tables means, and its dtype: the single source of
``docs/results-table.md`` (tests/test_results.py keeps the two in sync).

>>> "params_trainable" in COLUMNS and COLUMNS["model.depth"][0]
'Int64'
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import pandas as pd

from bnsweep.spec.config import DataConfig, ModelConfig, OptimizerConfig, TrialConfig

# pandas >= 3 has a real string dtype ("str", NaN for missing); pandas 2 keeps Python strings in object.
STR = "str" if int(pd.__version__.split(".")[0]) >= 3 else "object"


_HEAD: dict[str, tuple[str, str]] = {
    "sweep": ("str", "sweep name (`sweep.json` name)"),
    "trial_id": ("str", "Ray Tune trial id: one sampled configuration"),
    "replicate": ("Int64", "replicate index within the configuration (0 … replicates−1)"),
    "seed": ("Int64", "the replicate's seed (model init, data order, augmentation)"),
    "config_hash": ("str", "12-hex hash of the full trial config (seed included)"),
    "group_hash": ("str", "config hash ignoring the seed: replicates of one configuration share it"),
    "status": ("str", "completed / pruned / diverged / failed / lost / running"),
    "reason": ("str", "why it ended that way (missing when completed)"),
}


_CONFIG_DESCRIPTIONS: dict[str, str] = {
    "model.depth": "network depth (resnet: 6·D+2; idiomatic_bottleneck: 9·n+2)",
    "model.width": "width multiplier W (16·W, 32·W, 64·W filters)",
    "model.gamma_init": "BN γ initialization (uniform: U[0,1), ones)",
    "model.num_classes": "output classes",
    "model.arch": "network (resnet: the paper's; idiomatic_bottleneck: the notebooks')",
    "regime": "freezing regime: which parameters train",
    "data.source": "data source kind (cifar10, npz, dir, synthetic)",
    "data.path": "data file or directory (source npz/dir)",
    "data.test_path": "separate test npz, if any",
    "data.train_size": "first N training images used (empty: all)",
    "data.val_size": "validation images carved from the training data",
    "data.test_size": "cap on test images",
    "data.split_seed": "seed of the train/val(/test) split",
    "data.augment": "augmentation (paper: pad-crop + flip; notebook; none)",
    "data.normalize": "per-channel mean/std normalization",
    "data.synthetic_size": "images per split for the synthetic source",
    "optimizer.name": "optimizer (sgd, adam, adamw)",
    "optimizer.momentum": "SGD momentum",
    "optimizer.nesterov": "Nesterov momentum",
    "optimizer.weight_decay": "weight decay (L2 for sgd/adam, decoupled for adamw)",
    "optimizer.decay_bn": "weight decay applied to BN γ/β too",
    "optimizer.beta_1": "Adam β1",
    "optimizer.beta_2": "Adam β2",
    "optimizer.epsilon": "Adam ε",
    "lr": "peak learning rate (per lr_reference_batch images when lr_scaling is set)",
    "lr_scaling": "LR scaling with batch size (none, linear, sqrt)",
    "lr_reference_batch": "the batch size lr is quoted for when lr_scaling is set",
    "batch_size": "training batch size",
    "epochs": "planned epochs",
    "backend": "Keras backend the trial asked for (tensorflow, jax)",
    "jit_compile": "XLA compilation (true, false, auto)",
    "threads": "TensorFlow intra-op threads (empty: the trial's CPUs)",
    "steps_per_epoch": "cap on steps per epoch (empty: a full pass)",
    "strategy": "TensorFlow distribution strategy (none, mirrored, tpu)",
}


def _dtype_of(hint: Any) -> str:
    """Column dtype for a config field's type hint."""
    args = typing.get_args(hint)
    if hint is bool:
        return "boolean"
    if hint is int:
        return "Int64"
    if hint is float:
        return "float64"
    if hint is str or typing.get_origin(hint) is typing.Literal:
        return "str"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _dtype_of(inner[0])
    return "str"  # mixed (e.g. bool | "auto"): text


def _config_columns() -> dict[str, tuple[str, str]]:
    from bnsweep.spec.schedules import SCHEDULE_PARAMS

    cols: dict[str, tuple[str, str]] = {}
    subs = {"model": ModelConfig, "data": DataConfig, "optimizer": OptimizerConfig}
    hints = typing.get_type_hints(TrialConfig)
    for f in dataclasses.fields(TrialConfig):
        if f.name in subs:
            sub_hints = typing.get_type_hints(subs[f.name])
            for g in dataclasses.fields(subs[f.name]):
                key = f"{f.name}.{g.name}"
                cols[key] = (_dtype_of(sub_hints[g.name]), _CONFIG_DESCRIPTIONS.get(key, f"trial config `{key}`"))
        elif f.name == "lr_schedule":
            cols["lr_schedule.type"] = ("str", "LR schedule type (see spec/schedules.py)")
            params = sorted({p for ps in SCHEDULE_PARAMS.values() for p in ps})
            for p in params:
                used = ", ".join(t for t, ps in SCHEDULE_PARAMS.items() if p in ps)
                dtype = "str" if p == "milestones" else "float64"
                what = "JSON list of times (fractions < 1 or epochs)" if p == "milestones" else "schedule parameter"
                cols[f"lr_schedule.{p}"] = (dtype, f"{what}; defaults filled in; used by {used}")
        elif f.name != "seed":  # seed is an identity column
            cols[f.name] = (_dtype_of(hints[f.name]), _CONFIG_DESCRIPTIONS.get(f.name, f"trial config `{f.name}`"))
    return cols


_TAIL: dict[str, tuple[str, str]] = {
    "depth": ("Int64", "copy of model.depth"),
    "width": ("Int64", "copy of model.width"),
    "params_total": ("Int64", "every weight, BN moving statistics included"),
    "params_trainable": ("Int64", "scalars the optimizer updates under the regime"),
    "params_bn": ("Int64", "BN γ + β"),
    "params_bn_moving": ("Int64", "BN moving mean + variance (never trained)"),
    "params_shortcut": ("Int64", "1×1 shortcut convs + their BN γ/β"),
    "params_output": ("Int64", "output layer kernel + bias"),
    "flops_forward": ("Int64", "forward FLOPs per image (2 × multiply-adds)"),
    "flops_train": ("Int64", "training FLOPs per image (forward + needed gradients)"),
    "val_accuracy_final": ("float64", "validation accuracy after the last epoch (0–1)"),
    "val_accuracy_best": ("float64", "best validation accuracy over epochs (0–1)"),
    "best_epoch": ("Int64", "epoch (1-based) of the best validation accuracy"),
    "val_loss_final": ("float64", "validation loss after the last epoch"),
    "test_accuracy": ("float64", "test accuracy, evaluated once at the end of a completed run (0–1)"),
    "test_loss": ("float64", "test loss, evaluated once at the end of a completed run"),
    "gamma_near_zero": ("float64", "share of BN γ with |γ| < 0.01 at the end"),
    "epochs_run": ("Int64", "epochs trained"),
    "wall_seconds": ("float64", "wall time of the replicate, build and test included (s)"),
    "images_per_sec": ("float64", "mean training throughput over epochs (images/s)"),
    "accelerator": ("str", "kind:name of the device that trained (e.g. gpu:NVIDIA H100)"),
    "accelerator_count": ("Int64", "devices of that kind visible to the trial"),
    "accelerator_backend": ("str", "Keras backend that actually ran"),
    "accelerator_threads": ("Int64", "CPU threads the trial trained with, as set (TensorFlow's intra-op pool; "
                                     "empty where unknown)"),
    "data_source": ("str", "where the images came from (e.g. npz:cifar10-subset-train.npz)"),
    "data_train": ("Int64", "training images"),
    "data_val": ("Int64", "validation images"),
    "data_test": ("Int64", "test images"),
    "test_is_holdout": ("boolean", "the test split was carved from training images (no official test set)"),
    "spec_hash": ("str", "hash of the sweep spec"),
    "git_commit": ("str", "the project's git commit when the replicate ran"),
    "versions": ("str", "library versions, e.g. 'keras=3.15.1 tensorflow=2.21.0'"),
    "started_at": ("str", "ISO 8601 start time (UTC)"),
    "finished_at": ("str", "ISO 8601 end time (UTC); empty while running"),
    "path": ("str", "the replicate's directory relative to the run directory"),
    "config_json": ("str", "the full trial config as JSON (TrialConfig.from_dict(json.loads(...)))"),
}


COLUMNS: dict[str, tuple[str, str]] = {**_HEAD, **_config_columns(), **_TAIL}
"""Results-table column -> (dtype, description), in table order."""


HISTORY_COLUMNS: dict[str, tuple[str, str]] = {
    "sweep": ("str", "sweep name"),
    "trial_id": ("str", "Ray Tune trial id"),
    "replicate": ("Int64", "replicate index"),
    "seed": ("Int64", "replicate seed"),
    "epoch": ("Int64", "epochs trained so far (1-based)"),
    "train_loss": ("float64", "training loss of the epoch"),
    "train_accuracy": ("float64", "training accuracy of the epoch (0–1)"),
    "val_loss": ("float64", "validation loss after the epoch"),
    "val_accuracy": ("float64", "validation accuracy after the epoch (0–1)"),
    "lr": ("float64", "learning rate at the start of the epoch"),
    "images_per_sec": ("float64", "training throughput of the epoch (images/s)"),
    "seconds": ("float64", "wall time of the epoch, validation included (s)"),
    "regime": ("str", "freezing regime"),
    "config_hash": ("str", "trial config hash"),
    "group_hash": ("str", "config hash ignoring the seed"),
    "status": ("str", "status of the replicate (as in the results table)"),
}


def columns_markdown(which: str = "results") -> str:
    """The column documentation as a Markdown table (``which``: "results" or "history")."""
    cols = {"results": COLUMNS, "history": HISTORY_COLUMNS}[which]
    lines = ["| column | dtype | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{k}` | {dtype} | {desc.replace('|', '/')} |" for k, (dtype, desc) in cols.items()]
    return "\n".join(lines) + "\n"
