"""What every column of the results and history tables means, and its dtype: the single source of
``docs/results-table.md`` (tests/test_results.py keeps the two in sync). A trial-config column's meaning is its
field's description (``bnsweep.spec.config``), written there once.

>>> "params_trainable" in COLUMNS and COLUMNS["model.depth"][0]
'Int64'
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import pandas as pd

from bnsweep.base.atomic import atomic_write_text
from bnsweep.spec.config import TrialConfig, config_keys, selectors
from bnsweep.spec.fields import tags_of

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


def _dtype_of(hint: Any) -> str:
    """Column dtype for a config field's type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Annotated:
        return _dtype_of(args[0])
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
        if set(inner) == {int, float}:
            return "float64"  # a number kept as written (an epoch count or a fraction of the run)
        if len(inner) == 1:
            return _dtype_of(inner[0])
    return "str"  # mixed (e.g. bool | "auto") and lists (as JSON): text


def _config_columns() -> dict[str, tuple[str, str]]:
    """One column per trial-config key (the seed is an identity column), described by its field: a tagged
    section's parameters (the LR schedule's) in name order after its tag, with the kinds that use them."""
    cols: dict[str, tuple[str, str]] = {}
    for key, field in config_keys().items():
        section, _, leaf = key.partition(".")
        tag = selectors().get(section)
        if key == "seed" or (tag and leaf != tag):
            continue  # the seed is an identity column; a tagged section's parameters follow its tag
        cols[key] = (_dtype_of(field.annotation), field.description or f"trial config `{key}`")
        if tag:
            kinds = tags_of(TrialConfig.model_fields[section])
            for name in sorted({p for m in kinds.values() for p in m.model_fields} - {tag}):
                used = [k for k, m in kinds.items() if name in m.model_fields]
                f = kinds[used[0]].model_fields[name]
                listed = "; a JSON list" if _dtype_of(f.annotation) == "str" else ""
                text = f"{f.description}{listed}; defaults filled in; used by {', '.join(used)}"
                cols[f"{section}.{name}"] = (_dtype_of(f.annotation), text)
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
    "data_sha256": ("str", "content hash of the images and labels that trained, validated and tested (sha256:...)"),
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


def regenerate_docs(path: str | Path) -> bool:
    """Rewrite the column tables of ``docs/results-table.md`` (each the table after its ``## results`` /
    ``## history`` heading) from the code; True if the file changed. ``python -m bnsweep.store.columns``."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        which = next((w for w in ("results", "history") if lines[i].startswith(f"## {w} ")), None)
        i += 1
        if which:
            while i < len(lines) and not lines[i].startswith("|"):
                out.append(lines[i])
                i += 1
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            out.extend(columns_markdown(which).rstrip("\n").split("\n"))
    text = "\n".join(out)
    changed = text != path.read_text(encoding="utf-8")
    if changed:
        atomic_write_text(path, text)
    return changed


if __name__ == "__main__":  # pragma: no cover
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results-table.md")
    print(f"{target}: {'regenerated' if regenerate_docs(target) else 'up to date'}")
