"""Paired, seed-matched comparisons between groups of replicates (``bnsweep compare``).

Two replicates are a *pair* when they share the seed and every other hyperparameter — they differ only
in the compared key (``by``: a regime, an optimizer, …) — so the seed's shared randomness (the data
order, and for the same network the initial weights) cancels in the difference. Within each *cell*
(one setting of all other hyperparameters, e.g. one depth) and for each two values A, B of ``by``:
``n`` pairs, mean Δ = A − B with a 95% Student-t interval and a percentile-bootstrap interval
(``scipy.stats``), the two-sided paired t-test's p-value, and Holm's correction over every comparison
in the table; replicates without a partner are counted per side (``unpaired``), and whole cells where
only one group ran are listed in ``attrs["unmatched"]``.

``across=True`` compares run directories instead (``compare OLD_RUN NEW_RUN --across``): the same
configurations run twice (another code version, other data), paired on seed; the rows whose Holm-
adjusted p is below ``1 − confidence`` are the cells that moved beyond seed-to-seed noise.

Execution settings (backend, XLA, threads, strategy, where the data file lies) never define a
configuration; ``ignore`` adds keys to that list.

>>> import pandas as pd, json
>>> accs = [(0.60, 0.50), (0.62, 0.55), (0.64, 0.52)]  # (bn, random_k) per seed
>>> rows = [{"status": "completed", "seed": s, "regime": r, "test_accuracy": acc, "run_dir": "r",
...          "config_json": json.dumps({"regime": r, "seed": s, "model": {"depth": 20}})}
...         for s, (a, b) in enumerate(accs) for r, acc in (("bn", a), ("random_k", b))]
>>> c = comparison_table(pd.DataFrame(rows), by="regime", n_boot=1000)
>>> r = c.iloc[0]
>>> r["a"], r["b"], int(r["n_pairs"]), round(float(r["mean_diff"]), 3)
('bn', 'random_k', 3, 0.097)
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from bnsweep.analysis.provenance import provenance
from bnsweep.analysis.tables import (
    HEADERS,
    RunDirs,
    _as_list,
    _fmt_key,
    _is_share,
    _run_names,
    check_metrics,
    load_runs,
    output_path,
    render_latex,
    render_markdown,
    t_interval,
    write_output,
)

from bnsweep.spec.config import REGIMES, flatten, selectors

EXECUTION_KEYS = ("backend", "jit_compile", "threads", "strategy", "replicates_layout", "data.path", "data.test_path")
Format = Literal["markdown", "latex", "csv"]
COLUMNS = ["a", "b", "n_pairs", "mean_a", "mean_b", "mean_diff", "std_diff", "ci_low", "ci_high", "boot_low",
           "boot_high", "t", "p_value", "p_holm", "significant", "n_unpaired_a", "n_unpaired_b"]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (NaN stays NaN and does not count as a test).

    >>> holm([0.01, 0.04, 0.03, float("nan")])
    [0.03, 0.06, 0.06, nan]
    """
    idx = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    m = len(idx)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def bootstrap_interval(d: np.ndarray, *, confidence: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``d`` (``scipy.stats.bootstrap``, resampling pairs)."""
    from scipy import stats

    if len(d) < 2 or float(np.ptp(d)) == 0.0:
        m = float(np.mean(d)) if len(d) else math.nan
        return (m, m) if len(d) >= 2 else (math.nan, math.nan)
    res = stats.bootstrap((d,), np.mean, n_resamples=n_boot, confidence_level=confidence, method="percentile",
                          vectorized=True, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _order(values: Sequence[Any]) -> list[Any]:
    """Regimes in the paper's order, numbers by value, anything else by its text."""
    rank = {r: i for i, r in enumerate(REGIMES)}

    def key(v: Any) -> tuple[int, float, str]:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        return (rank.get(v, len(rank)) if isinstance(v, str) else len(rank), float(v) if number else 0.0, str(v))

    return sorted(set(values), key=key)


def _prepare(df: pd.DataFrame, *, by: str, metric: str, ignore: Sequence[str], across: bool) -> pd.DataFrame:
    """Completed replicates with a finite metric: their group (``by``), cell (the other
    hyperparameters as JSON) and cell fields."""
    rows = []
    labels = _run_labels(df) if across else {}
    keys_seen: set[str] = set()
    for _, r in df.iterrows():
        if not isinstance(r.get("config_json"), str):
            continue
        flat = _cell_keys(json.loads(r["config_json"]))
        keys_seen |= set(flat)
        group = labels[r["run_dir"]] if across else flat.get(by, _MISSING)
        if group is _MISSING:
            continue
        if isinstance(group, dict):
            group = json.dumps(group, sort_keys=True)
        drop = {"seed", *ignore} | (set() if across else {by})
        cell = {k: v for k, v in flat.items() if k not in drop}
        value = pd.to_numeric(pd.Series([r.get(metric)]), errors="coerce").astype("float64").iloc[0]
        ok = r.get("status") == "completed" and math.isfinite(value)
        rows.append({"group": group, "seed": flat.get("seed", r.get("seed")), "cell": json.dumps(cell, sort_keys=True,
                     default=str), "fields": cell, "value": value if ok else math.nan})
    if not across and by not in keys_seen and keys_seen:
        raise ValueError(f"--by {by}: not a trial-config key of these runs; e.g. regime, model.depth, batch_size, "
                         "optimizer.name, lr_schedule.type (or --across to compare run directories)")
    return pd.DataFrame(rows, columns=["group", "seed", "cell", "fields", "value"])


_MISSING = object()


def _cell_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A trial config as compare's keys: sections dotted (``model.width``), a tagged section whole
    (``lr_schedule``: its keys depend on its type, so ``--ignore lr_schedule`` / ``--by lr_schedule``
    name it as one).

    >>> _cell_keys({"model": {"width": 2}, "lr_schedule": {"type": "constant"}, "lr": 0.1})
    {'model.width': 2, 'lr_schedule': {'type': 'constant'}, 'lr': 0.1}
    """
    tagged = selectors()
    out: dict[str, Any] = {}
    for name, value in config.items():
        if name in tagged or not isinstance(value, dict):
            out[name] = value
        else:
            out.update(flatten(value, name + "."))
    return out


def _run_labels(df: pd.DataFrame) -> dict[str, str]:
    """run_dir -> a short unique label (the directory name; ``#i`` appended where names repeat)."""
    dirs = list(dict.fromkeys(df["run_dir"]))
    names = [Path(d).name for d in dirs]
    return {d: (n if names.count(n) == 1 else f"{n}#{i + 1}") for i, (d, n) in enumerate(zip(dirs, names, strict=True))}


def comparison_table(data: pd.DataFrame | RunDirs, *, by: str = "regime", baseline: Any = None,
                     metric: str = "test_accuracy", confidence: float = 0.95, n_boot: int = 10_000,
                     boot_seed: int = 0, ignore: Sequence[str] = (), across: bool = False) -> pd.DataFrame:
    """One row per (cell, A, B): ``COLUMNS`` plus the cell's varying hyperparameters first. With
    ``baseline`` every other group is compared with it (Δ = other − baseline); without, every two
    groups (Δ = earlier − later, regimes in the paper's order). ``across``: groups are the run
    directories, in the order given, the first the baseline unless ``baseline`` names another."""
    if not 0 < confidence < 1:
        raise ValueError(f"--confidence: expected a number in (0, 1), received {confidence}")
    if n_boot < 100:
        raise ValueError(f"--bootstrap: expected at least 100 resamples, received {n_boot}")
    df = data if isinstance(data, pd.DataFrame) else load_runs(data)
    check_metrics(df, [metric])
    if across:
        labels = _run_labels(df)
        if len(labels) < 2:
            raise ValueError("--across: give two or more run directories (OLD_RUN NEW_RUN ...)")
        baseline = baseline if baseline is not None else next(iter(labels.values()))
    rep = _prepare(df, by=by, metric=metric, ignore=[*EXECUTION_KEYS, *ignore], across=across)
    groups = _order(rep["group"].tolist()) if not across else list(dict.fromkeys(_run_labels(df).values()))
    if baseline is not None:
        match = [g for g in groups if str(g) == str(baseline)]
        if not match:
            raise ValueError(f"--baseline {baseline}: no such {'run' if across else by} here; present: "
                             + ", ".join(map(str, groups)))
        baseline = match[0]
        pairs = [(g, baseline) for g in groups if g != baseline]
    else:
        pairs = list(itertools.combinations(groups, 2))
    rows, unmatched, cells_of_rows = [], [], []
    valid = rep[np.isfinite(rep["value"].astype(float))]
    for _, c in valid.groupby("cell", sort=True):
        present = set(c["group"])
        per_seed = {g: c[c["group"] == g].groupby("seed")["value"].mean() for g in present}
        used: set[Any] = set()
        for a, b in pairs:
            if a not in present or b not in present:
                continue
            used |= {a, b}
            sa, sb = per_seed[a], per_seed[b]
            common = sorted(set(sa.index) & set(sb.index), key=str)
            d = np.array([sa[s] - sb[s] for s in common], dtype=float)
            n = len(d)
            row: dict[str, Any] = {"a": a, "b": b, "n_pairs": n,
                                   "mean_a": float(sa[common].mean()) if n else math.nan,
                                   "mean_b": float(sb[common].mean()) if n else math.nan,
                                   "mean_diff": float(d.mean()) if n else math.nan,
                                   "std_diff": float(d.std(ddof=1)) if n > 1 else math.nan,
                                   "n_unpaired_a": len(sa) - n, "n_unpaired_b": len(sb) - n}
            if n > 1:
                row.update(zip(("ci_low", "ci_high", "t", "p_value"), t_interval(d, confidence), strict=True))
                row["boot_low"], row["boot_high"] = bootstrap_interval(d, confidence=confidence, n_boot=n_boot,
                                                                       seed=boot_seed)
            rows.append(row)
            cells_of_rows.append(c["fields"].iloc[0])
        for g in sorted(present - used, key=str):
            unmatched.append({"group": g, "replicates": int((c["group"] == g).sum()), "cell": c["fields"].iloc[0]})
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["p_holm"] = holm(out["p_value"].astype(float).tolist()) if len(out) else []
    out["significant"] = out["p_holm"].astype(float) < (1 - confidence)
    varying = _varying(cells_of_rows)
    for i, k in enumerate(varying):
        out.insert(i, k, [cell.get(k) for cell in cells_of_rows])
    for col in ("n_pairs", "n_unpaired_a", "n_unpaired_b"):
        out[col] = out[col].astype("Int64")
    out.attrs.update(by="run" if across else by, baseline=baseline, metric=metric, confidence=confidence,
                     n_boot=n_boot, across=across, unmatched=unmatched, cell_keys=varying,
                     groups=[str(g) for g in groups])
    return out


def _varying(cells: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for c in cells for k in c})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in cells}) > 1]


# ------------------------------------------------------------------------------------------ rendering


def _points(v: float, metric: str, *, signed: bool = False) -> str:
    if not math.isfinite(v):
        return "–"
    if _is_share(metric):
        return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"
    return f"{v:+.3g}" if signed else f"{v:.3g}"


def _interval(low: float, high: float, metric: str) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "–"
    return f"[{_points(low, metric, signed=True)}, {_points(high, metric, signed=True)}]"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _display(table: pd.DataFrame) -> tuple[list[str], list[list[str]], list[list[bool]], list[bool], list[str]]:
    metric, conf = table.attrs["metric"], table.attrs["confidence"]
    keys = table.attrs["cell_keys"]
    pct = f"{round(100 * conf)}%"
    unit = " (points)" if _is_share(metric) else ""
    headers = [HEADERS.get(k, k) for k in keys] + [
        "A", "B", "n pairs", f"A: {HEADERS.get(metric, metric)}", "B", f"Δ = A − B{unit}", f"{pct} CI (t)",
        f"{pct} CI (bootstrap)", "p (Holm)", "Unpaired A/B"]
    numeric = [pd.api.types.is_numeric_dtype(table[k]) for k in keys] + [False, False] + [True] * 8
    rows, bold = [], []
    for _, r in table.iterrows():
        cells = [_fmt_key(r[k]) for k in keys] + [
            str(r["a"]), str(r["b"]), str(int(r["n_pairs"])), _points(r["mean_a"], metric),
            _points(r["mean_b"], metric), _points(r["mean_diff"], metric, signed=True),
            _interval(r["ci_low"], r["ci_high"], metric), _interval(r["boot_low"], r["boot_high"], metric),
            _p(r["p_holm"]), f"{int(r['n_unpaired_a'])}/{int(r['n_unpaired_b'])}"]
        flags = [False] * len(cells)
        flags[len(keys) + 5] = bool(r["significant"])
        rows.append(cells)
        bold.append(flags)
    return headers, rows, bold, numeric, _notes(table)


def _notes(table: pd.DataFrame) -> list[str]:
    a = table.attrs
    pct = f"{round(100 * a['confidence'])}%"
    what = ("the same configurations in different run directories" if a["across"]
            else f"replicates that differ only in {a['by']}")
    name = HEADERS.get(a["metric"], a["metric"]).replace(" (%)", "").lower()
    notes = [f"Pairs: {what}, matched on seed. Δ = A − B of {name}"
             + (" in percentage points" if _is_share(a["metric"]) else "")
             + f"; {pct} intervals: Student t and percentile bootstrap ({a['n_boot']:,} resamples), scipy.stats; "
             f"p: two-sided paired t-test, Holm-adjusted over {int(table['p_value'].notna().sum())} comparisons; "
             f"bold: adjusted p < {1 - a['confidence']:.2g}."]
    if a["unmatched"]:
        n = sum(u["replicates"] for u in a["unmatched"])
        groups = ", ".join(sorted({str(u["group"]) for u in a["unmatched"]}))
        notes.append(f"Not compared: {n} completed replicates ({groups}) had no counterpart with the same other "
                     "hyperparameters.")
    return notes


def render(table: pd.DataFrame, *, fmt: Format, caption: str | None = None, label: str | None = None,
           prov: dict[str, Any] | None = None) -> str:
    """The comparison as Markdown, LaTeX (booktabs) or CSV (the numeric frame)."""
    if fmt == "csv":
        return table.to_csv(index=False)
    headers, rows, bold, numeric, notes = _display(table)
    if fmt == "markdown":
        return render_markdown(headers, rows, numeric=numeric, bold=bold, prov=prov, notes=notes)
    names = _run_names(prov)
    if caption is None:
        a = table.attrs
        caption = (f"Paired differences by {a['by']} ({HEADERS.get(a['metric'], a['metric'])})"
                   + (f"; sweeps: {', '.join(names)}." if names else "."))
    return render_latex(headers, rows, numeric=numeric, caption=caption,
                        label=label or "tab:compare-" + ("-".join(names) or "runs"), bold=bold, prov=prov,
                        group_rule=bool(table.attrs["cell_keys"]), notes=notes)


def compare(run_dirs: RunDirs, *, by: str = "regime", baseline: Any = None, metric: str = "test_accuracy",
            fmt: Format = "markdown", out: str | Path | None = None, caption: str | None = None,
            label: str | None = None, confidence: float = 0.95, n_boot: int = 10_000, ignore: Sequence[str] = (),
            across: bool = False) -> str | Path:
    """``comparison_table`` of the run directories, rendered; written to ``out`` (a file, or an
    existing directory: ``out/<sweep>-compare.<ext>``, with a provenance sidecar) or returned as text."""
    if fmt not in ("markdown", "latex", "csv"):
        raise ValueError(f"--format: expected one of markdown, latex, csv, received {fmt!r}")
    dirs = _as_list(run_dirs)
    table = comparison_table(dirs, by=by, baseline=baseline, metric=metric, confidence=confidence, n_boot=n_boot,
                             ignore=ignore, across=across)
    prov = provenance([d.parent if d.is_file() else d for d in dirs])
    text = render(table, fmt=fmt, caption=caption, label=label, prov=prov)
    if out is None:
        return text
    path = output_path(out, stem="-".join(_run_names(prov)) + "-compare", fmt=fmt)
    meta = {"format": fmt, "by": table.attrs["by"], "baseline": str(baseline) if baseline is not None else None,
            "metric": metric, "confidence": confidence, "across": across}
    return write_output(path, text=text, frame=table, prov={**prov, **meta})
