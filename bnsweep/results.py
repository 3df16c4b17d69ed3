"""The run directory -> one tidy results table (one row per replicate) and a per-epoch history.

Every replicate (one trial configuration × one seed) writes its own record when it ends::

    trials/<trial_id>/seed-<seed>/result.json        the final record (``save_trial_record``)
    trials/<trial_id>/seed-<seed>/final_weights.npz  the trained network (keys: variable path, "/" -> ":")
    trials/<trial_id>/seed-<seed>/started.json       config + provenance at start (``save_trial_start``)
    trials/<trial_id>/seed-<seed>/checkpoint/state.json   per-epoch progress while it runs (trial.py)
    trials/<trial_id>/seed-<seed>/failure.json       an exception that ended it (the worker)

``load_results`` / ``load_history`` read only those files, so they work on a finished, running or
crashed sweep, and never touch Ray's own directory. ``write_results_table`` materializes them as
``results.{parquet,csv}`` and ``history.{parquet,csv}`` (each written to a temporary file and renamed,
so a reader never sees half a table). ``COLUMNS`` documents every column and its dtype;
``columns_markdown()`` renders that as the README's table.

Non-finite floats (a diverged run's NaN loss) are kept as JSON ``NaN`` in ``result.json`` (Python's
``json`` reads them back); in the tables they are ``NaN``.

>>> "params_trainable" in COLUMNS and COLUMNS["model.depth"][0]
'Int64'
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import math
import os
import re
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bnsweep.config import DataConfig, ModelConfig, OptimizerConfig, TrialConfig, config_hash, flatten
from bnsweep.rundir import atomic_write as _atomic_write

RESULT_FILE = "result.json"
WEIGHTS_FILE = "final_weights.npz"
START_FILE = "started.json"
FAILURE_FILE = "failure.json"
STATE_FILE = Path("checkpoint") / "state.json"
TABLE_FILES = ("results.parquet", "results.csv", "history.parquet", "history.csv")
STATUSES = ("completed", "pruned", "diverged", "failed", "running")

# pandas >= 3 has a real string dtype ("str", NaN for missing); pandas 2 keeps Python strings in object.
STR = "str" if int(pd.__version__.split(".")[0]) >= 3 else "object"

# ------------------------------------------------------------------------------------------------
# Column documentation: column -> (dtype, description). Dtypes: "Int64" (nullable integer),
# "float64", "boolean" (nullable), "str" (text; NaN when missing; lists/dicts as JSON text).

_HEAD: dict[str, tuple[str, str]] = {
    "sweep": ("str", "sweep name (`sweep.json` name)"),
    "trial_id": ("str", "Ray Tune trial id: one sampled configuration"),
    "replicate": ("Int64", "replicate index within the configuration (0 … replicates−1)"),
    "seed": ("Int64", "the replicate's seed (model init, data order, augmentation)"),
    "config_hash": ("str", "12-hex hash of the full trial config (seed included)"),
    "group_hash": ("str", "config hash ignoring the seed: replicates of one configuration share it"),
    "status": ("str", "completed / pruned / diverged / failed / running"),
    "reason": ("str", "why it ended that way (missing when completed)"),
}

_CONFIG_DESCRIPTIONS: dict[str, str] = {
    "model.depth": "ResNet depth 6·D+2",
    "model.width": "width multiplier W (16·W, 32·W, 64·W filters)",
    "model.gamma_init": "BN γ initialization (uniform: U[0,1), ones)",
    "model.num_classes": "output classes",
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
    from bnsweep.schedules import SCHEDULE_PARAMS

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
            cols["lr_schedule.type"] = ("str", "LR schedule type (see schedules.py)")
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


# ------------------------------------------------------------------------------------------------
# Writing records (the worker)


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _atomic_json(path: Path, obj: Any) -> None:
    blob = json.dumps(obj, indent=1, default=_json_default).encode()
    _atomic_write(path, lambda f: f.write(blob))


def _seed_dir(run_dir: str | Path, trial_id: str, seed: int) -> Path:
    return Path(run_dir) / "trials" / str(trial_id) / f"seed-{int(seed)}"


def save_trial_start(run_dir: str | Path, *, trial_id: str, seed: int, replicate: int,
                     config: Mapping[str, Any] | TrialConfig, meta: Mapping[str, Any]) -> Path:
    """Record a replicate's config when it starts (``started.json``), so a running or crashed
    replicate shows its hyperparameters in the table. Optional: without it the config of a running
    replicate is taken from a finished sibling seed of the same trial."""
    d = _seed_dir(run_dir, trial_id, seed)
    cfg = (config if isinstance(config, TrialConfig) else TrialConfig.from_dict(dict(config))).to_dict()
    record = {"sweep": meta.get("sweep"), "trial_id": str(trial_id), "replicate": int(replicate),
              "seed": int(seed), "spec_hash": meta.get("spec_hash"), "git_commit": meta.get("git_commit"),
              "versions": dict(meta.get("versions") or {}), "started_at": meta.get("started_at") or _now_iso(),
              "config": cfg, "config_hash": config_hash(TrialConfig.from_dict(cfg))}
    _atomic_json(d / START_FILE, record)
    return d / START_FILE


def save_trial_record(run_dir: str | Path, *, trial_id: str, seed: int, replicate: int, result: Any,
                      net: Any = None, meta: Mapping[str, Any]) -> Path:
    """Write one replicate's final ``result.json`` (and ``final_weights.npz`` when ``net`` is given).

    ``result`` is a ``TrialResult`` (or its ``as_dict()``); ``meta`` holds sweep, spec_hash,
    git_commit, versions, started_at. The weights are written first, so a ``result.json`` always
    comes with its weights; both are written to a temporary file, fsynced and renamed.
    Returns the path of ``result.json``.
    """
    d = _seed_dir(run_dir, trial_id, seed)
    d.mkdir(parents=True, exist_ok=True)
    body = result.as_dict() if hasattr(result, "as_dict") else dict(result)
    weights = None
    if net is not None:
        save_weights(net, d / WEIGHTS_FILE)
        weights = WEIGHTS_FILE
    versions = meta.get("versions")
    if versions is None:
        from bnsweep.accelerators import library_versions

        versions = library_versions()
    record = {"sweep": meta.get("sweep"), "trial_id": str(trial_id), "replicate": int(replicate),
              "seed": int(seed), "spec_hash": meta.get("spec_hash"), "git_commit": meta.get("git_commit"),
              "versions": dict(versions), "started_at": meta.get("started_at"), "finished_at": _now_iso(),
              **body, "final_weights": weights}
    _atomic_json(d / RESULT_FILE, record)
    return d / RESULT_FILE


def weight_key(variable_path: str) -> str:
    """npz key of a Keras variable: ``stem_bn/gamma`` -> ``stem_bn:gamma``."""
    return variable_path.replace("/", ":")


def save_weights(net: Any, path: str | Path) -> Path:
    """Every variable of a Keras model (BN moving statistics included) to an npz, atomically."""
    import keras

    arrays: dict[str, np.ndarray] = {}
    for v in net.variables:
        key = weight_key(v.path)
        if key in arrays:
            raise ValueError(f"two variables share the path {v.path!r}; cannot save weights by path")
        arrays[key] = np.asarray(keras.ops.convert_to_numpy(v))
    path = Path(path)
    _atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
    return path


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a ``final_weights.npz`` (no pickle)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def load_trained_net(trial_seed_dir: str | Path) -> Any:
    """Rebuild a replicate's trained network from ``result.json`` + ``final_weights.npz``.

    The architecture comes from the recorded config (``build_resnet(ModelConfig(**config["model"]))``);
    every variable is then assigned by path. The network takes normalized float images (the trial's
    ``Preprocess`` is not part of it).
    """
    d = Path(trial_seed_dir)
    rec = _read_json(d / RESULT_FILE)
    if rec is None:
        raise FileNotFoundError(f"{d / RESULT_FILE}: missing or unreadable")
    wpath = d / WEIGHTS_FILE
    if not wpath.is_file():
        raise FileNotFoundError(f"{wpath}: no final weights for this replicate")
    from bnsweep.models import build_resnet

    net = build_resnet(ModelConfig(**rec["config"]["model"]), seed=0)
    arrays = load_weights(wpath)
    wanted = {weight_key(v.path): v for v in net.variables}
    missing, extra = sorted(set(wanted) - set(arrays)), sorted(set(arrays) - set(wanted))
    if missing or extra:
        raise ValueError(f"{wpath}: does not match the recorded architecture "
                         f"(missing {missing[:5]}, unexpected {extra[:5]})")
    for key, v in wanted.items():
        if tuple(arrays[key].shape) != tuple(v.shape):
            raise ValueError(f"{wpath}: does not match the recorded architecture ({key} has shape "
                             f"{arrays[key].shape}, the network expects {tuple(v.shape)})")
        v.assign(arrays[key])
    return net


# ------------------------------------------------------------------------------------------------
# Reading


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        out = json.loads(text)
    except ValueError as e:
        warnings.warn(f"{path}: unreadable JSON ({e}); ignored", RuntimeWarning, stacklevel=3)
        return None
    return out if isinstance(out, dict) else None


def _seed_dirs(run_dir: Path) -> Iterable[tuple[str, int, Path]]:
    trials = run_dir / "trials"
    if not trials.is_dir():
        return
    for tdir in sorted(p for p in trials.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for sdir in sorted(tdir.glob("seed-*")):
            m = re.fullmatch(r"seed-(-?\d+)", sdir.name)
            if m and sdir.is_dir():
                yield tdir.name, int(m.group(1)), sdir


def _flat_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted hyperparameter columns; the LR schedule with its defaults filled in."""
    from bnsweep.schedules import resolve_schedule

    flat = flatten(dict(cfg))
    sched = flat.pop("lr_schedule", None)
    if isinstance(sched, Mapping):
        try:
            sched = resolve_schedule(dict(sched))
        except ValueError:
            sched = dict(sched)
        for k, v in sched.items():
            flat[f"lr_schedule.{k}"] = v
    return flat


def _normalized(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config with every default filled in (as ``TrialConfig.to_dict()``), if it parses."""
    try:
        return TrialConfig.from_dict(dict(cfg)).to_dict() if cfg else {}
    except (ValueError, TypeError):
        return dict(cfg)


def _hashes(cfg: Mapping[str, Any]) -> tuple[str | None, str | None]:
    try:
        tc = TrialConfig.from_dict(dict(cfg))
    except (ValueError, TypeError):
        return None, None
    return config_hash(tc), config_hash(tc, ignore=("seed",))


def _fmt_versions(versions: Any) -> str | None:
    if isinstance(versions, Mapping):
        return " ".join(f"{k}={v}" for k, v in versions.items()) or None
    return None if versions is None else str(versions)


def _row(rec: Mapping[str, Any], *, trial_id: str, seed: int, rel: str) -> dict[str, Any]:
    """One table row from a result.json-shaped record (missing fields become NA)."""
    cfg = _normalized(rec.get("config") or {})
    acc = rec.get("accounting") or {}
    accel = rec.get("accelerator") or {}
    data = rec.get("data") or {}
    chash, ghash = _hashes(cfg) if cfg else (None, None)
    row: dict[str, Any] = {
        "sweep": rec.get("sweep"), "trial_id": trial_id, "replicate": rec.get("replicate"), "seed": seed,
        "config_hash": rec.get("config_hash") or chash, "group_hash": ghash,
        "status": rec.get("status"), "reason": rec.get("reason", ""),
    }
    flat = _flat_config(cfg) if cfg else {}
    flat.pop("seed", None)
    row.update(flat)
    row.update({
        "depth": flat.get("model.depth"), "width": flat.get("model.width"),
        "params_total": acc.get("total"), "params_trainable": acc.get("trainable"), "params_bn": acc.get("bn"),
        "params_bn_moving": acc.get("bn_moving"), "params_shortcut": acc.get("shortcut"),
        "params_output": acc.get("output"), "flops_forward": acc.get("forward_flops"),
        "flops_train": acc.get("train_flops"),
        "val_accuracy_final": rec.get("final_val_accuracy"), "val_accuracy_best": rec.get("best_val_accuracy"),
        "best_epoch": rec.get("best_epoch"), "val_loss_final": rec.get("final_val_loss"),
        "test_accuracy": rec.get("test_accuracy"), "test_loss": rec.get("test_loss"),
        "gamma_near_zero": rec.get("gamma_near_zero"), "epochs_run": rec.get("epochs_run"),
        "wall_seconds": rec.get("wall_seconds"), "images_per_sec": rec.get("images_per_sec"),
        "accelerator": f"{accel.get('kind')}:{accel.get('name')}" if accel else None,
        "accelerator_count": accel.get("count"), "accelerator_backend": accel.get("backend"),
        "accelerator_threads": accel.get("threads"),
        "data_source": data.get("source"), "data_train": data.get("train"), "data_val": data.get("val"),
        "data_test": data.get("test"), "test_is_holdout": data.get("test_is_holdout"),
        "spec_hash": rec.get("spec_hash"), "git_commit": rec.get("git_commit"),
        "versions": _fmt_versions(rec.get("versions")), "started_at": rec.get("started_at"),
        "finished_at": rec.get("finished_at"), "path": rel,
        "config_json": json.dumps(cfg, sort_keys=True, default=str) if cfg else None,
    })
    return row


def _progress(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Result-like metrics of a replicate that has not finished, from its epoch history."""
    if not history:
        return {"epochs_run": 0}
    finite = [h for h in history if _finite(h.get("val_accuracy"))]
    best = max(finite, key=lambda h: h["val_accuracy"], default=None)
    last = history[-1]
    ips = [h["images_per_sec"] for h in history if _finite(h.get("images_per_sec"))]
    return {"epochs_run": last.get("epoch", len(history)), "final_val_accuracy": last.get("val_accuracy"),
            "final_val_loss": last.get("val_loss"), "best_val_accuracy": best["val_accuracy"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "images_per_sec": float(np.mean(ips)) if ips else None,
            "wall_seconds": float(sum(h.get("seconds", 0.0) or 0.0 for h in history))}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return -math.inf


class _Replicate(typing.NamedTuple):
    trial_id: str
    seed: int
    path: Path
    record: dict[str, Any]  # result.json-shaped
    history: list[dict[str, Any]]
    sig: tuple[int, int, int] | None = None  # result.json's (inode, size, mtime): finished replicates only


# A finished replicate's record does not change once written (a rewrite changes its result.json's
# inode/size/mtime), so its table row and hashes are kept between calls: the driver rewrites the table
# as trials end without re-deriving every earlier row each time. Bounded (oldest entries dropped).
_ROW_CACHE: dict[tuple[str, tuple[int, int, int], str], tuple[dict[str, Any], tuple[str | None, str | None]]] = {}
_ROW_CACHE_MAX = 20_000


def _file_sig(p: Path) -> tuple[int, int, int] | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _cached_row(r: _Replicate, run_dir: Path) -> tuple[dict[str, Any], tuple[str | None, str | None]]:
    rel = r.path.relative_to(run_dir).as_posix()
    key = (str(r.path), r.sig, rel) if r.sig is not None else None
    if key is not None and key in _ROW_CACHE:
        return _ROW_CACHE[key]
    row = _row(r.record, trial_id=r.trial_id, seed=r.seed, rel=rel)
    cfg = r.record.get("config") or {}
    hashes = (row["config_hash"], row["group_hash"]) if cfg else (r.record.get("config_hash"), None)
    if key is not None:
        if len(_ROW_CACHE) >= _ROW_CACHE_MAX:
            for old in list(_ROW_CACHE)[: _ROW_CACHE_MAX // 4]:
                del _ROW_CACHE[old]
        _ROW_CACHE[key] = (row, hashes)
    return row, hashes


def _sweep_meta(run_dir: Path) -> dict[str, Any]:
    return _read_json(run_dir / "sweep.json") or {}


def _replicates(run_dir: Path) -> list[_Replicate]:
    run_dir = Path(run_dir)
    sweep = _sweep_meta(run_dir)
    finished: dict[tuple[str, int], dict[str, Any]] = {}
    pending: list[tuple[str, int, Path]] = []
    out: list[_Replicate] = []
    for trial_id, seed, sdir in _seed_dirs(run_dir):
        sig = _file_sig(sdir / RESULT_FILE)
        done = _read_json(sdir / RESULT_FILE) if sig is not None else None
        if done is not None:
            finished[(trial_id, seed)] = done
            hist = [dict(h) if isinstance(h, Mapping) else {} for h in done.get("history") or []]
            out.append(_Replicate(trial_id, seed, sdir, done, hist, sig))
        else:
            pending.append((trial_id, seed, sdir))
    for trial_id, seed, sdir in pending:
        state = _read_json(sdir / STATE_FILE)
        failure = _read_json(sdir / FAILURE_FILE)
        if state is None and failure is None:
            continue  # not started (or started and not through one epoch): absent
        start = _read_json(sdir / START_FILE) or {}
        rec: dict[str, Any] = {k: start.get(k) for k in
                               ("sweep", "replicate", "spec_hash", "git_commit", "versions", "started_at")}
        rec["sweep"] = rec["sweep"] or sweep.get("name")
        for k in ("spec_hash", "git_commit", "versions"):
            if rec[k] is None:
                rec[k] = sweep.get(k)
        if rec["replicate"] is None and "seed_base" in sweep:
            rec["replicate"] = seed - int(sweep["seed_base"])
        cfg = start.get("config") or _sibling_config(finished, trial_id, seed)
        rec["config"] = cfg
        history = [dict(h) for h in (state or {}).get("history") or []]
        rec.update(_progress(history))
        rec["config_hash"] = (state or {}).get("config_hash") or start.get("config_hash")
        if failure is not None and _mtime(sdir / FAILURE_FILE) >= _mtime(sdir / STATE_FILE):
            rec["status"], rec["reason"] = "failed", str(failure.get("reason", ""))
            rec["finished_at"] = failure.get("at")
        else:
            rec["status"], rec["reason"] = "running", f"epoch {rec['epochs_run']} done"
        if cfg:
            rec["accounting"] = _accounting(cfg)
        out.append(_Replicate(trial_id, seed, sdir, rec, history))
    out.sort(key=lambda r: (r.trial_id, r.seed))
    return out


def _accounting(cfg: Mapping[str, Any]) -> dict[str, int]:
    from bnsweep.regimes import account

    try:
        return account(ModelConfig(**cfg.get("model", {})), cfg.get("regime", "all")).as_dict()
    except (ValueError, TypeError):
        return {}


def _sibling_config(finished: Mapping[tuple[str, int], dict[str, Any]], trial_id: str,
                    seed: int) -> dict[str, Any] | None:
    """The config of a finished replicate of the same trial, with this replicate's seed."""
    for (tid, _), rec in sorted(finished.items()):
        if tid == trial_id and isinstance(rec.get("config"), Mapping):
            return {**rec["config"], "seed": seed}
    return None


def _typed(df: pd.DataFrame, columns: Mapping[str, tuple[str, str]]) -> pd.DataFrame:
    """Every documented column present, in documented order, with its documented dtype;
    undocumented columns (future config keys) follow, with inferred dtypes."""
    out = {}
    n = len(df)
    for col, (dtype, _) in columns.items():
        s = df[col] if col in df else pd.Series([None] * n, index=df.index, dtype=object)
        out[col] = _cast(s, dtype)
    for col in df.columns:
        if col not in columns:
            out[col] = _cast(df[col], _infer(df[col]))
    return pd.DataFrame(out, index=df.index)


def _infer(s: pd.Series) -> str:
    vals = [v for v in s if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if vals and all(isinstance(v, bool) for v in vals):
        return "boolean"
    if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return "Int64"
    if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return "float64"
    return "str"


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _bool(v: Any) -> bool | None:
    if _missing(v):
        return None
    if isinstance(v, str):
        return {"true": True, "1": True, "false": False, "0": False}.get(v.strip().lower())
    return bool(v)


def _text(v: Any) -> Any:
    if _missing(v) or v == "":  # CSV cannot tell "" from missing: both are NaN
        return None
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, default=str)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _int(v: Any) -> int | None:
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    if _missing(v) or isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
        return None
    if isinstance(v, (float, np.floating)):
        return round(float(v)) if math.isfinite(v) else None
    return int(v)


def _cast(s: pd.Series, dtype: str) -> pd.Series:
    if dtype == "str":
        return pd.Series([_text(v) for v in s], index=s.index, dtype=STR)
    if dtype == "boolean":
        return pd.Series([_bool(v) for v in s], index=s.index, dtype="boolean")
    if dtype == "Int64":
        return pd.Series(pd.array([_int(v) for v in s], dtype="Int64"), index=s.index)
    if dtype == "float64":
        return pd.to_numeric(pd.Series([None if isinstance(v, (bool, str)) else v for v in s],
                                       index=s.index, dtype=object), errors="coerce").astype("float64")
    return s.astype(dtype)


def load_results(run_dir: str | Path) -> pd.DataFrame:
    """One row per replicate of the sweep in ``run_dir`` (columns and dtypes: ``COLUMNS``).

    Finished replicates come from ``result.json``; replicates still running (or left behind by a
    crash) from ``checkpoint/state.json`` with status ``running``, their epochs and last validation
    accuracy; replicates whose worker raised from ``failure.json`` (status ``failed``). A replicate
    with none of these files is absent. Reads only; sorted by trial_id, seed.
    """
    run_dir = Path(run_dir)
    return _results_frame(_replicates(run_dir), run_dir)


def _results_frame(reps: list[_Replicate], run_dir: Path) -> pd.DataFrame:
    rows = [_cached_row(r, run_dir)[0] for r in reps]
    df = _typed(pd.DataFrame(rows), COLUMNS)
    return df.sort_values(["trial_id", "seed"], kind="stable", ignore_index=True)


def load_history(run_dir: str | Path) -> pd.DataFrame:
    """One row per (trial_id, seed, epoch), finished and running replicates alike
    (columns and dtypes: ``HISTORY_COLUMNS``)."""
    run_dir = Path(run_dir)
    return _history_frame(_replicates(run_dir), run_dir)


def _history_frame(reps: list[_Replicate], run_dir: Path) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for r in reps:
        cfg = r.record.get("config") or {}
        chash, ghash = _cached_row(r, run_dir)[1]
        chash = r.record.get("config_hash") or chash
        base = {"sweep": r.record.get("sweep"), "trial_id": r.trial_id, "replicate": r.record.get("replicate"),
                "seed": r.seed, "regime": cfg.get("regime"), "config_hash": chash, "group_hash": ghash,
                "status": r.record.get("status")}
        for h in r.history:
            rows.append({**base, **h})
    df = _typed(pd.DataFrame(rows), HISTORY_COLUMNS)
    return df.sort_values(["trial_id", "seed", "epoch"], kind="stable", ignore_index=True)


def read_table(path: str | Path) -> pd.DataFrame:
    """A written ``results``/``history`` table (Parquet or CSV) with the documented dtypes."""
    path = Path(path)
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False,
                                                                          na_values=[""])
    cols = HISTORY_COLUMNS if "epoch" in df.columns and "params_total" not in df.columns else COLUMNS
    return _typed(df, cols)


def _clean_stale_tmp(run_dir: Path) -> None:
    """Remove temporary table files left by a writer that died mid-write (its pid is gone)."""
    for p in run_dir.glob(".*.tmp"):
        m = re.fullmatch(r"\.(results|history)\.(parquet|csv)\.(\d+)\.tmp", p.name)
        if not m:
            continue
        pid = int(m.group(3))
        alive = pid != os.getpid()
        if alive:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive = False
            except PermissionError:
                pass
        if not alive:
            p.unlink(missing_ok=True)


def write_results_table(run_dir: str | Path) -> pd.DataFrame:
    """(Re)write ``results.{parquet,csv}`` and ``history.{parquet,csv}`` in ``run_dir`` from the
    replicate records; each file goes to a temporary sibling first and is renamed into place.
    Returns the results table. Call it whenever a replicate ends (cheap: JSON files only)."""
    run_dir = Path(run_dir)
    _clean_stale_tmp(run_dir)
    reps = _replicates(run_dir)  # read once for both tables
    results, history = _results_frame(reps, run_dir), _history_frame(reps, run_dir)
    for name, df in (("results", results), ("history", history)):
        _atomic_write(run_dir / f"{name}.parquet", functools.partial(df.to_parquet, index=False),
                      pause_point="table-write")
        _atomic_write(run_dir / f"{name}.csv", functools.partial(df.to_csv, index=False))
    return results
