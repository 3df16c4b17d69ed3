"""``bnsweep status RUN_DIR``: a progress table for a running or finished sweep (reads the run
directory only; no Ray needed). ``RUN_DIR`` may be a URI (``s3://bucket/prefix`` ...): its records and
progress are downloaded into this machine's cache first.

>>> sweep_status  # doctest: +ELLIPSIS
<function sweep_status at ...>
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnsweep.store.fs import LocationError
from bnsweep.store.rundir import RunDir, RunDirError, lock_for, read_sweep_json


def sweep_status(run_dir: str | Path | RunDir) -> dict[str, Any]:
    from bnsweep.store.table import load_results

    try:
        rd = RunDir.of(run_dir)
    except LocationError as e:
        raise RunDirError(str(e)) from None
    if rd.is_remote:
        rd.check_reachable()
        rd.pull_records()
    info = read_sweep_json(rd)
    check_sweep_json(rd, info)
    check_records(rd)
    lock = lock_for(rd)
    holder = lock.holder() if rd.is_remote or lock.path.exists() else None
    running = holder is not None and not lock.is_stale(holder)
    df = load_results(rd.local)
    metric = info.get("metric", {}).get("name", "val_accuracy")
    goal = info.get("metric", {}).get("goal", "maximize")
    col = {"val_accuracy": "val_accuracy_final", "val_loss": "val_loss_final"}.get(metric, "val_accuracy_final")
    trials: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    if len(df):
        searched = _varying_columns(df)
        for trial_id, g in df.groupby("trial_id", sort=True):
            statuses = sorted(set(g["status"]))
            status = statuses[0] if len(statuses) == 1 else "/".join(statuses)
            counts[status] = counts.get(status, 0) + 1
            row = {"trial_id": trial_id, "status": status, "seeds": len(g),
                   "epochs": int(g["epochs_run"].max()) if g["epochs_run"].notna().any() else 0,
                   metric: _mean(g[col]) if col in g else None,
                   "test_accuracy": _mean(g["test_accuracy"]) if "test_accuracy" in g else None}
            row.update({k: g[k].iloc[0] for k in searched})
            trials.append(row)
    # a failed, lost or still running configuration is never the best one
    scored = [t for t in trials if t.get(metric) is not None
              and all(s in ("completed", "pruned", "diverged") for s in t["status"].split("/"))]
    best = (max if goal == "maximize" else min)(scored, key=lambda t: t[metric]) if scored else None
    return {"name": info.get("name"), "run_dir": rd.uri if rd.is_remote else str(run_dir), "running": running,
            "holder": holder,
            "created": info.get("created"), "replicates": info.get("replicates"), "metric": metric,
            "counts": counts, "trials": trials, "best": best}


RECORD_STATUSES = ("completed", "pruned", "diverged", "failed")
_NUMBER_FIELDS = ("final_val_accuracy", "best_val_accuracy", "final_val_loss", "test_accuracy", "test_loss",
                  "wall_seconds", "images_per_sec")


def check_sweep_json(rd: RunDir, info: dict[str, Any]) -> None:
    """The fields of ``sweep.json`` that ``status`` reads must have their types: a ``RunDirError`` naming
    the file and the field otherwise (never a traceback, nothing changed)."""
    problems = []
    metric = info.get("metric")
    if metric is not None and not (isinstance(metric, dict) and isinstance(metric.get("name", ""), str)
                                   and metric.get("goal", "maximize") in ("maximize", "minimize")):
        problems.append(f"metric: expected {{name: ..., goal: maximize|minimize}}, found {_short(metric)}")
    reps = info.get("replicates")
    if reps is not None and (not isinstance(reps, int) or isinstance(reps, bool) or reps < 1):
        problems.append(f"replicates: expected an integer >= 1, found {_short(reps)}")
    for key in ("created", "spec_source", "git_commit"):
        if info.get(key) is not None and not isinstance(info[key], str):
            problems.append(f"{key}: expected a string, found {_short(info[key])}")
    if problems:
        raise RunDirError(f"{rd.shown(rd.sweep_json)}: {'; '.join(problems)}; the run directory is damaged "
                          "(nothing was changed)")


def check_records(rd: RunDir) -> None:
    """Every replicate record (``trials/*/seed-*/result.json``) must be a JSON object with the fields a
    finished replicate has, of their types: the first damaged one is named (``RunDirError``, one line:
    file, field, what was found), with how many are damaged in all. Reads only."""
    import json

    damaged: list[str] = []
    for p in sorted(rd.trials_dir.glob("*/seed-*/result.json")) if rd.trials_dir.is_dir() else []:
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            damaged.append(f"{rd.shown(p)}: unreadable ({type(e).__name__})")
            continue
        why = _record_problem(rec)
        if why:
            damaged.append(f"{rd.shown(p)}: {why}")
    if damaged:
        more = f" ({len(damaged)} damaged records in all)" if len(damaged) > 1 else ""
        raise RunDirError(f"{damaged[0]}{more}; the replicate's record is damaged (nothing was changed): restore it "
                          "from a copy, or move it away")


def _record_problem(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return f"expected a JSON object, found {type(rec).__name__}"
    status = rec.get("status")
    if status not in RECORD_STATUSES:
        return ("status missing" if status is None else f"status: expected one of {', '.join(RECORD_STATUSES)}, "
                                                          f"found {_short(status)}")
    if not isinstance(rec.get("config"), dict):
        return "config missing" if "config" not in rec else f"config: expected an object, found {_short(rec['config'])}"
    epochs = rec.get("epochs_run")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0):
        return f"epochs_run: expected an integer >= 0, found {_short(epochs)}"
    for key in _NUMBER_FIELDS:
        v = rec.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            return f"{key}: expected a number, found {_short(v)}"
    history = rec.get("history")
    if history is not None and not (isinstance(history, list) and all(isinstance(h, dict) for h in history)):
        return f"history: expected a list of per-epoch objects, found {_short(history)}"
    for key in ("seed", "replicate"):
        v = rec.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            return f"{key}: expected an integer, found {_short(v)}"
    return None


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _mean(s: Any) -> float | None:
    s = s.dropna()
    return float(s.mean()) if len(s) else None


def _varying_columns(df: Any) -> list[str]:
    """Hyperparameter columns that differ between configurations (what was searched)."""
    skip = {"seed", "replicate", "trial_id", "config_hash", "group_hash"}
    cols = [c for c in df.columns if (c in ("regime", "lr", "batch_size", "epochs") or "." in c)
            and c not in skip]
    out = []
    for c in cols:
        try:
            if df[c].astype(str).nunique() > 1:
                out.append(c)
        except TypeError:
            continue
    return out[:6]


def format_status(st: dict[str, Any]) -> str:
    head = (f"sweep {st['name']!r} in {st['run_dir']} — {'RUNNING' if st['running'] else 'not running'}; "
            f"{len(st['trials'])} configurations × {st['replicates']} seeds; "
            + ", ".join(f"{k} {v}" for k, v in sorted(st["counts"].items())))
    if not st["trials"]:
        return head + "\n(no trial has reported yet)"
    cols = list(st["trials"][0].keys())
    rows = [[_fmt(t.get(c)) for c in cols] for t in st["trials"]]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = [head, "", "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    if st["best"]:
        b = st["best"]
        lines += ["", f"best: {b['trial_id']}  {st['metric']} {_fmt(b[st['metric']])}"]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.4g}"
    return "-" if v is None else str(v)
