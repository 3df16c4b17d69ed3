"""The run directory -> one tidy results table (one row per replicate) and a per-epoch history.

``load_results`` / ``load_history`` read only the replicate records (``bnsweep.store.records``), so they
work on a finished, running or crashed sweep, and never touch Ray's own directory.
``write_results_table`` materializes them as ``results.{parquet,csv}`` and ``history.{parquet,csv}``
(each written to a temporary file and renamed, so a reader never sees half a table); the columns and
their dtypes are ``bnsweep.store.columns``. Non-finite floats are ``NaN`` in the tables.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bnsweep.base.atomic import atomic_write as _atomic_write
from bnsweep.spec.config import ModelConfig, TrialConfig, config_hash, flatten
from bnsweep.store.columns import COLUMNS, HISTORY_COLUMNS, STR
from bnsweep.store.records import FAILURE_FILE, LOST_FILE, RESULT_FILE, START_FILE, STATE_FILE, read_json

TABLE_FILES = ("results.parquet", "results.csv", "history.parquet", "history.csv")
STATUSES = ("completed", "pruned", "diverged", "failed", "lost", "running")


# ------------------------------------------------------------------------------------------------
# Column documentation: column -> (dtype, description). Dtypes: "Int64" (nullable integer),
# "float64", "boolean" (nullable), "str" (text; NaN when missing; lists/dicts as JSON text).


# ------------------------------------------------------------------------------------------------
# Writing records (the worker)


# ------------------------------------------------------------------------------------------------
# Reading


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
    """Dotted hyperparameter columns (``cfg`` normalized: the LR schedule's defaults are filled in)."""
    return flatten(dict(cfg))


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
        "data_sha256": data.get("sha256"),
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
    return read_json(run_dir / "sweep.json") or {}


def _replicates(run_dir: Path) -> list[_Replicate]:
    run_dir = Path(run_dir)
    sweep = _sweep_meta(run_dir)
    finished: dict[tuple[str, int], dict[str, Any]] = {}
    pending: list[tuple[str, int, Path]] = []
    out: list[_Replicate] = []
    for trial_id, seed, sdir in _seed_dirs(run_dir):
        sig = _file_sig(sdir / RESULT_FILE)
        done = read_json(sdir / RESULT_FILE) if sig is not None else None
        if done is not None:
            finished[(trial_id, seed)] = done
            hist = [dict(h) if isinstance(h, Mapping) else {} for h in done.get("history") or []]
            out.append(_Replicate(trial_id, seed, sdir, done, hist, sig))
        else:
            pending.append((trial_id, seed, sdir))
    for trial_id, seed, sdir in pending:
        state = read_json(sdir / STATE_FILE)
        failure = read_json(sdir / FAILURE_FILE)
        lost = read_json(sdir / LOST_FILE)
        if state is None and failure is None and lost is None:
            continue  # not started (or started and not through one epoch): absent
        start = read_json(sdir / START_FILE) or {}
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
        if lost is not None:  # the driver found neither its record nor a checkpoint: never invented
            rec["status"], rec["reason"] = "lost", str(lost.get("reason", ""))
            rec["finished_at"] = lost.get("at")
        elif failure is not None and _mtime(sdir / FAILURE_FILE) >= _mtime(sdir / STATE_FILE):
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
    from bnsweep.engine.regimes import account

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
    accuracy; replicates whose worker raised from ``failure.json`` (status ``failed``, older run
    directories); replicates the driver could not find any record or checkpoint of from ``lost.json``
    (status ``lost``: nothing about their results is invented). A replicate with none of these files is
    absent. Reads only; sorted by trial_id, seed.
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


TEXT_DTYPES: dict[str, type] = {c: str for cols in (COLUMNS, HISTORY_COLUMNS)
                                for c, (dtype, _) in cols.items() if dtype == "str"}
"""``pd.read_csv(path, dtype=TEXT_DTYPES)``: the text columns of a written table read back as text,
so that a trial id or hash made only of digits (``00123456``, ``1e5``) is not turned into a number."""


def read_table(path: str | Path) -> pd.DataFrame:
    """A written ``results``/``history`` table (Parquet or CSV) with the documented dtypes."""
    path = Path(path)
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:  # text columns read as text: a trial id or hash of digits only ("00123456", "1e5") stays as written
        df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=TEXT_DTYPES)
    return _typed(df, _documented_for(list(df.columns)))


def _documented_for(columns: list[str]) -> Mapping[str, tuple[str, str]]:
    """The documented columns of a ``history`` table (it has ``epoch``) or a ``results`` table."""
    return HISTORY_COLUMNS if "epoch" in columns and "params_total" not in columns else COLUMNS


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
