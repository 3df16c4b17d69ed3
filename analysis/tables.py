"""Results table(s) -> per-cell summaries, paired comparisons, and paper tables.

A *cell* is one combination of the ``group_by`` columns (by default regime × depth × width); its
replicates (seeds, and any repeated configurations, across every run directory given) are pooled.
Only ``completed`` replicates enter means and standard deviations; the others are counted.

>>> format_count(1568), format_count(272474), format_count(1.7e6)
('1.6K', '272K', '1.7M')
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from bnsweep.analysis.provenance import provenance, write_sidecar

from bnsweep.base.atomic import atomic_write, atomic_write_text
from bnsweep.base.text import format_count
from bnsweep.spec.config import REGIMES

DEFAULT_GROUP: tuple[str, ...] = ("regime", "model.depth", "model.width")
RunDirs = str | Path | Iterable[str | Path]

HEADERS = {
    "regime": "Regime", "model.depth": "Depth", "model.width": "Width", "depth": "Depth", "width": "Width",
    "batch_size": "Batch size", "lr": "LR", "lr_schedule.type": "LR schedule", "optimizer.name": "Optimizer",
    "epochs": "Epochs", "model.gamma_init": "γ init", "sweep": "Sweep",
    "test_accuracy": "Test acc. (%)", "val_accuracy_best": "Best val. acc. (%)",
    "val_accuracy_final": "Val. acc. (%)", "test_loss": "Test loss", "val_loss_final": "Val. loss",
    "gamma_near_zero": "|γ| < 0.01 (%)", "images_per_sec": "Images/s", "wall_seconds": "Wall time (s)",
    "params_trainable": "Trainable params", "params_total": "Total params",
}


# ------------------------------------------------------------------------------------------ loading


def _as_list(run_dirs: RunDirs) -> list[Path]:
    if isinstance(run_dirs, (str, Path)):
        return [Path(run_dirs)]
    return [Path(d) for d in run_dirs]


def load_runs(run_dirs: RunDirs) -> pd.DataFrame:
    """Results tables of one or several run directories (or ``results.parquet``/``.csv`` files),
    concatenated, with a ``run_dir`` column. Read-only: a run directory is read from its replicate
    records (current even while it runs); a directory holding only a results table is read from that."""
    from bnsweep.store.table import load_results, read_table

    frames = []
    for d in _as_list(run_dirs):
        if d.is_file():
            df, root = read_table(d), d.parent
        elif (d / "trials").is_dir():
            df, root = load_results(d), d
        elif (d / "results.parquet").is_file():
            df, root = read_table(d / "results.parquet"), d
        elif d.is_dir():
            df, root = load_results(d), d  # empty run: the schema without rows
        else:
            raise FileNotFoundError(f"{d}: no such run directory or results table")
        df.insert(0, "run_dir", str(root.resolve()))
        frames.append(df)
    if not frames:
        raise ValueError("no run directories given")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _frame(data: pd.DataFrame | RunDirs) -> pd.DataFrame:
    return data if isinstance(data, pd.DataFrame) else load_runs(data)


# ------------------------------------------------------------------------------------------ summaries


def _check_columns(df: pd.DataFrame, cols: Iterable[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"no column {', '.join(map(repr, missing))} in the results table "
                       "(see bnsweep.store.COLUMNS)")


def _sort_cells(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    order = {r: i for i, r in enumerate(REGIMES)}

    def key(s: pd.Series) -> pd.Series:
        if s.name == "regime":
            return s.map(lambda v: order.get(v, len(order)))
        return s

    return df.sort_values(list(keys), key=key, kind="stable", na_position="last", ignore_index=True)


def _representative(s: pd.Series) -> Any:
    vals = pd.to_numeric(s, errors="coerce").dropna()
    if vals.empty:
        return pd.NA
    uniq = vals.unique()
    return int(uniq[0]) if len(uniq) == 1 else round(float(vals.median()))


def _metrics(metric: str | Sequence[str]) -> list[str]:
    return [metric] if isinstance(metric, str) else list(metric)


def summarize(df: pd.DataFrame | RunDirs, *, group_by: Sequence[str] = DEFAULT_GROUP,
              metric: str | Sequence[str] = "test_accuracy") -> pd.DataFrame:
    """One row per cell of ``group_by``: for each metric ``m``, ``m_mean``, ``m_std`` (ddof=1; NaN
    for a single value) and ``m_n`` over completed replicates with a finite value; ``n`` completed
    replicates, ``n_failed``, ``n_pruned``, ``n_diverged``, ``n_running``; ``params_trainable`` and
    ``params_total`` of the cell's network (the median if a cell mixes sizes). Cells are sorted
    (regimes in the paper's order)."""
    df = _frame(df)
    metrics, keys = _metrics(metric), list(group_by)
    _check_columns(df, [*keys, *metrics, "status"])
    rows = []
    if len(df):
        for key, g in df.groupby(keys, dropna=False, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            done = g[g["status"] == "completed"]
            row: dict[str, Any] = dict(zip(keys, key, strict=True))
            row["n"] = len(done)
            for m in metrics:
                v = pd.to_numeric(done[m], errors="coerce").astype("float64")
                v = v[np.isfinite(v)]
                row[f"{m}_mean"] = float(v.mean()) if len(v) else math.nan
                row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
                row[f"{m}_n"] = len(v)
            for status in ("failed", "pruned", "diverged", "running"):
                row[f"n_{status}"] = int((g["status"] == status).sum())
            row["params_trainable"] = _representative(g.get("params_trainable", pd.Series(dtype=float)))
            row["params_total"] = _representative(g.get("params_total", pd.Series(dtype=float)))
            rows.append(row)
    cols = [*keys, "n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std", "n")] + \
        ["n_failed", "n_pruned", "n_diverged", "n_running", "params_trainable", "params_total"]
    out = pd.DataFrame(rows, columns=cols)
    for c in cols:
        if c == "n" or c.startswith("n_") or c.endswith("_n") or c.startswith("params_"):
            out[c] = pd.array([None if pd.isna(v) else int(v) for v in out[c]], dtype="Int64")
        elif c.endswith(("_mean", "_std")):
            out[c] = out[c].astype("float64")
    for k in keys:  # keep the results table's dtypes for the keys
        if k in df.columns:
            out[k] = out[k].astype(df[k].dtype)
    return _sort_cells(out, keys)


# ------------------------------------------------------------------------------------------ statistics


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """Upper tail P(T > t) of Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t (bisection on the exact CDF; ~1e-12 relative)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), received {q}")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    if q == 0.5:
        return 0.0
    target = 1.0 - q
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > target:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, df) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def paired_difference(df: pd.DataFrame | RunDirs, *, a: str, b: str, by: str = "regime",
                      pair_on: Sequence[str] | None = None, metric: str = "test_accuracy",
                      confidence: float = 0.95) -> pd.DataFrame:
    """Mean difference ``a − b`` of ``metric`` between two values of column ``by`` (e.g. regimes
    ``all`` and ``bn``), with replicates paired on ``pair_on`` (default: seed plus the other default
    group keys, depth and width). Each non-seed ``pair_on`` key defines a cell; within a cell, a
    pair is one seed present (completed, finite metric) on both sides — repeated replicates of one
    seed on a side are averaged first. Per cell: ``n_pairs``, ``mean_a``, ``mean_b``, ``mean_diff``,
    ``std_diff``, ``ci_low``/``ci_high`` (Student-t interval at ``confidence``; NaN with < 2 pairs),
    ``t``, ``p_value`` (two-sided, H0: no difference)."""
    df = _frame(df)
    if pair_on is None:
        pair_on = ("seed", *[k for k in DEFAULT_GROUP if k != by])
    pair_on = list(pair_on)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), received {confidence}")
    _check_columns(df, [by, metric, "status", *pair_on])
    cells = [k for k in pair_on if k != "seed"]
    seed_keys = [k for k in pair_on if k == "seed"]
    sub = df[(df["status"] == "completed") & df[by].isin([a, b])].copy()
    sub["_v"] = pd.to_numeric(sub[metric], errors="coerce").astype("float64")
    sub = sub[np.isfinite(sub["_v"])]
    means = sub.groupby([*cells, *seed_keys, by], dropna=False)["_v"].mean().unstack(by)
    for side in (a, b):
        if side not in means.columns:
            means[side] = np.nan
    pairs = means[[a, b]].dropna()
    rows = []
    groups = pairs.groupby(level=cells, dropna=False) if cells else [((), pairs)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        d = (g[a] - g[b]).to_numpy(dtype=float)
        n = len(d)
        mean = float(d.mean()) if n else math.nan
        std = float(d.std(ddof=1)) if n > 1 else math.nan
        row: dict[str, Any] = dict(zip(cells, key, strict=True))
        row.update(n_pairs=n, mean_a=float(g[a].mean()) if n else math.nan,
                   mean_b=float(g[b].mean()) if n else math.nan, mean_diff=mean, std_diff=std)
        if n > 1:
            sem = std / math.sqrt(n)
            crit = t_ppf(0.5 + confidence / 2.0, n - 1)
            row.update(ci_low=mean - crit * sem, ci_high=mean + crit * sem)
            if sem > 0:
                t = mean / sem
                row.update(t=t, p_value=min(1.0, 2.0 * t_sf(abs(t), n - 1)))
            else:
                row.update(t=math.copysign(math.inf, mean) if mean else math.nan,
                           p_value=0.0 if mean else 1.0)
        rows.append(row)
    cols = [*cells, "n_pairs", "mean_a", "mean_b", "mean_diff", "std_diff", "ci_low", "ci_high", "t", "p_value"]
    out = pd.DataFrame(rows, columns=cols)
    out["n_pairs"] = out["n_pairs"].astype("Int64")
    for c in cols[len(cells) + 1:]:
        out[c] = out[c].astype("float64")
    out.attrs.update(a=a, b=b, by=by, metric=metric, confidence=confidence)
    return _sort_cells(out, cells) if cells else out


# ------------------------------------------------------------------------------------------ formatting


def _is_share(metric: str) -> bool:
    return "accuracy" in metric or metric == "gamma_near_zero"


def _lower_is_better(metric: str) -> bool:
    return "loss" in metric or metric in ("wall_seconds",)


def _fmt_number(v: float, metric: str) -> str:
    if _is_share(metric):
        return f"{100 * v:.1f}"
    if "loss" in metric:
        return f"{v:.3f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def _fmt_value(mean: float, std: float, metric: str, pm: str) -> str:
    if not math.isfinite(mean):
        return "–"
    text = _fmt_number(mean, metric)
    if math.isfinite(std):
        text += f" {pm} {_fmt_number(std, metric)}"
    return text


def _fmt_key(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _display(summary: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str], pm: str):
    """Headers, cell texts, bold mask and numeric-alignment flags of the human-readable table."""
    headers = [HEADERS.get(k, k) for k in keys] + [HEADERS["params_trainable"], HEADERS["params_total"]]
    headers += [HEADERS.get(m, m) for m in metrics] + ["n"]
    numeric = [pd.api.types.is_numeric_dtype(summary[k]) for k in keys] + [True] * (3 + len(metrics))
    best: dict[str, float] = {}
    for m in metrics:
        means = summary[f"{m}_mean"].to_numpy(dtype=float)
        finite = means[np.isfinite(means)]
        if len(finite):
            best[m] = float(finite.min() if _lower_is_better(m) else finite.max())
    rows, bold = [], []
    for _, r in summary.iterrows():
        cells = [_fmt_key(r[k]) for k in keys]
        cells += [format_count(r["params_trainable"]), format_count(r["params_total"])]
        flags = [False] * len(cells)
        for m in metrics:
            mean, std = float(r[f"{m}_mean"]), float(r[f"{m}_std"])
            cells.append(_fmt_value(mean, std, m, pm))
            flags.append(m in best and math.isfinite(mean) and
                         _fmt_number(mean, m) == _fmt_number(best[m], m))
        cells.append(str(int(r["n"])))
        flags.append(False)
        rows.append(cells)
        bold.append(flags)
    return headers, rows, bold, numeric


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "γ": r"\ensuremath{\gamma}", "±": r"\ensuremath{\pm}", "–": "--", "<": r"\ensuremath{<}",
                  ">": r"\ensuremath{>}", "|": r"\ensuremath{|}"}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX table cell or caption."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _provenance_comment(prov: dict[str, Any], prefix: str) -> list[str]:
    runs = ", ".join(f"{r.get('name') or Path(r['path']).name} (spec {r.get('spec_hash')})" for r in prov["runs"])
    return [f"{prefix} generated by bnsweep analysis on {prov['created']} from {runs};",
            f"{prefix} project commit {prov.get('git_commit')}"]


def to_latex(summary: pd.DataFrame, *, group_by: Sequence[str], metric: str | Sequence[str],
             caption: str | None = None, label: str | None = None, prov: dict[str, Any] | None = None) -> str:
    """A booktabs table (``\\usepackage{booktabs}``); the best mean of each metric in bold.
    ``caption`` is LaTeX (not escaped); the default caption is generated and escaped."""
    metrics, keys = _metrics(metric), list(group_by)
    headers, rows, bold, numeric = _display(summary, keys, metrics, pm="±")
    names = [r.get("name") or Path(r["path"]).name for r in (prov or {}).get("runs", [])]
    if caption is None:
        what = ", ".join(HEADERS.get(m, m) for m in metrics)
        caption = latex_escape(f"{what}: mean ± standard deviation over n completed replicates (seeds)"
                               + (f"; sweeps: {', '.join(names)}." if names else "."))
    if label is None:
        label = "tab:" + (re.sub(r"[^A-Za-z0-9:-]+", "-", "-".join(names)) or "results")
    lines = _provenance_comment(prov, "%") if prov else []
    lines += [r"\begin{table}[t]", r"  \centering", f"  \\caption{{{caption}}}", f"  \\label{{{label}}}",
              f"  \\begin{{tabular}}{{{''.join('r' if n else 'l' for n in numeric)}}}", r"    \toprule",
              "    " + " & ".join(latex_escape(h) for h in headers) + r" \\", r"    \midrule"]
    previous = None
    for cells, flags in zip(rows, bold, strict=True):
        if previous is not None and keys and cells[0] != previous:
            lines.append(r"    \midrule")
        previous = cells[0] if keys else None
        out = [f"\\textbf{{{latex_escape(c)}}}" if f else latex_escape(c) for c, f in zip(cells, flags, strict=True)]
        lines.append("    " + " & ".join(out) + r" \\")
    lines += [r"    \bottomrule", r"  \end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_markdown(summary: pd.DataFrame, *, group_by: Sequence[str], metric: str | Sequence[str],
                prov: dict[str, Any] | None = None) -> str:
    """A pipe table; the best mean of each metric in bold."""
    metrics, keys = _metrics(metric), list(group_by)
    headers, rows, bold, numeric = _display(summary, keys, metrics, pm="±")

    def cell(text: str, b: bool) -> str:
        text = text.replace("|", "\\|")
        return f"**{text}**" if b else text

    lines = ["<!-- " + " ".join(s.strip() for s in _provenance_comment(prov, "")) + " -->"] if prov else []
    lines += ["| " + " | ".join(cell(h, False) for h in headers) + " |",
              "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    lines += ["| " + " | ".join(cell(c, f) for c, f in zip(cells, flags, strict=True)) + " |"
              for cells, flags in zip(rows, bold, strict=True)]
    return "\n".join(lines) + "\n"


def export(run_dirs: RunDirs, *, fmt: Literal["latex", "markdown", "csv", "parquet"], out: str | Path | None = None,
           group_by: Sequence[str] = DEFAULT_GROUP, metric: str | Sequence[str] = "test_accuracy",
           caption: str | None = None, label: str | None = None) -> str | Path:
    """Summarize one or several run directories (cells pooled across them) and render the table.

    ``latex``/``markdown``: the human-readable table (accuracies in %, ``mean ± std``, n, parameter
    counts as 1.6K/272K/1.7M, best mean in bold); ``csv``/``parquet``: the numeric ``summarize``
    frame. With ``out`` the table is written there (plus ``<out>.provenance.json``) and the path is
    returned; without, the text is returned (``parquet`` needs ``out``). Never writes into the run
    directories (unless ``out`` points there)."""
    if fmt not in ("latex", "markdown", "csv", "parquet"):
        raise ValueError(f"fmt: expected one of latex, markdown, csv, parquet, received {fmt!r}")
    if fmt == "parquet" and out is None:
        raise ValueError("fmt 'parquet' needs out= (a file path)")
    dirs = _as_list(run_dirs)
    summary = summarize(load_runs(dirs), group_by=group_by, metric=metric)
    prov = provenance([d.parent if d.is_file() else d for d in dirs])
    if fmt == "latex":
        text: str | None = to_latex(summary, group_by=group_by, metric=metric, caption=caption, label=label,
                                    prov=prov)
    elif fmt == "markdown":
        text = to_markdown(summary, group_by=group_by, metric=metric, prov=prov)
    elif fmt == "csv":
        text = summary.to_csv(index=False)
    else:
        text = None
    if out is None:
        assert text is not None
        return text
    out = Path(out)
    if text is None:
        atomic_write(out, lambda f: summary.to_parquet(f, index=False))
    else:
        atomic_write_text(out, text)
    write_sidecar(out, {**prov, "format": fmt, "group_by": list(group_by), "metric": _metrics(metric)})
    return out


def read_summary(path: str | Path) -> pd.DataFrame:
    """Read back an exported CSV/Parquet summary with the dtypes ``summarize`` produces."""
    path = Path(path)
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    for c in df.columns:
        if c == "n" or c.startswith("n_") or c.endswith("_n") or c.startswith("params_"):
            df[c] = df[c].astype("Int64")
    return df
