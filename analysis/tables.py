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
ARCH = "model.arch"  # the network family: resnet (the paper's) or idiomatic_bottleneck (the notebooks')
RunDirs = str | Path | Iterable[str | Path]

HEADERS = {
    "regime": "Regime", "model.depth": "Depth", "model.width": "Width", "depth": "Depth", "width": "Width",
    "batch_size": "Batch size", "lr": "LR", "lr_schedule.type": "LR schedule", "optimizer.name": "Optimizer",
    "epochs": "Epochs", "model.gamma_init": "γ init", "sweep": "Sweep", "model.arch": "Network",
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


def _read_results_file(path: Path) -> pd.DataFrame:
    """A results table written as Parquet or CSV; anything else (``sweep.json``, a history table, a
    picture, garbage) is a ``ValueError`` that names the file and says what was expected."""
    from bnsweep.store.table import read_table

    what = "a results table (results.parquet / results.csv) or a run directory"
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"{path}: not a results table (expected {what}, received a {path.suffix or 'suffix-less'} "
                         "file)")
    try:  # the columns as written (read_table adds every documented column, present or not)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            columns = list(pq.read_schema(path).names)
        else:
            columns = list(pd.read_csv(path, nrows=0).columns)
        df = read_table(path)
    except OSError:
        raise
    except Exception as e:  # pandas/pyarrow parse errors, UnicodeDecodeError, ...: one line naming the file
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise ValueError(f"{path}: not a results table (expected {what}; {type(e).__name__}: {reason})") from None
    missing = [c for c in ("trial_id", "status", "regime") if c not in columns]
    history = "epoch" in columns and "params_total" not in columns
    if missing or history:
        kind = "a history table (one row per epoch)" if history else "a table without the columns " + ", ".join(missing)
        raise ValueError(f"{path}: not a results table (expected {what}, received {kind})")
    return df


def load_runs(run_dirs: RunDirs) -> pd.DataFrame:
    """Results tables of one or several run directories (or ``results.parquet``/``.csv`` files),
    concatenated, with a ``run_dir`` column. Read-only: a run directory is read from its replicate
    records (current even while it runs); a directory holding only a results table is read from that.
    A file that is not a results table raises ``ValueError`` naming it."""
    from bnsweep.store.table import load_results, read_table

    frames = []
    for d in _as_list(run_dirs):
        if d.is_file():
            df, root = _read_results_file(d), d.parent
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


# Outcome columns of the results table a table or comparison reports (any numeric column works).
METRICS = ("test_accuracy", "test_loss", "val_accuracy_best", "val_accuracy_final", "val_loss_final",
           "gamma_near_zero", "images_per_sec", "wall_seconds", "epochs_run", "best_epoch")


def check_metrics(df: pd.DataFrame, metrics: Sequence[str]) -> None:
    """Each metric must be a numeric column of the results table: ``ValueError`` listing the numeric
    metrics otherwise (``--metric regime`` would tabulate text)."""
    from bnsweep.store.columns import COLUMNS

    numeric = [m for m in METRICS if COLUMNS.get(m, ("",))[0] in ("float64", "Int64")]
    for m in metrics:
        known = m in df.columns or m in COLUMNS
        dtype = COLUMNS[m][0] if m in COLUMNS else (str(df[m].dtype) if m in df.columns else "")
        if not known:
            raise ValueError(f"--metric {m}: no such column in the results table; numeric metrics: "
                             f"{', '.join(numeric)}")
        if dtype not in ("float64", "Int64") and not (m in df.columns and pd.api.types.is_numeric_dtype(df[m])
                                                      and not pd.api.types.is_bool_dtype(df[m])):
            raise ValueError(f"--metric {m}: not a number (a {dtype or 'text'} column); numeric metrics: "
                             f"{', '.join(numeric)}")


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


def with_arch(df: pd.DataFrame, group_by: Sequence[str]) -> tuple[str, ...]:
    """``group_by`` with ``model.arch`` in front when the table holds both networks and the grouping
    does not say which: a bottleneck ResNet-20 and the paper's ResNet-20 are never pooled.

    >>> import pandas as pd
    >>> with_arch(pd.DataFrame({"model.arch": ["resnet", "idiomatic_bottleneck"]}), DEFAULT_GROUP)[0]
    'model.arch'
    """
    keys = tuple(group_by)
    if ARCH in keys or ARCH not in df.columns or df[ARCH].dropna().nunique() < 2:
        return keys
    return (ARCH, *keys)


def summarize(df: pd.DataFrame | RunDirs, *, group_by: Sequence[str] = DEFAULT_GROUP,
              metric: str | Sequence[str] = "test_accuracy") -> pd.DataFrame:
    """One row per cell of ``group_by``: for each metric ``m``, ``m_mean``, ``m_std`` (ddof=1; NaN
    for a single value) and ``m_n`` over completed replicates with a finite value; ``n`` completed
    replicates, ``n_failed``, ``n_pruned``, ``n_diverged``, ``n_running``; ``params_trainable`` and
    ``params_total`` of the cell's network (the median if a cell mixes sizes). Cells are sorted
    (regimes in the paper's order). Both networks in one table: ``model.arch`` joins the keys."""
    df = _frame(df)
    metrics, keys = _metrics(metric), list(with_arch(df, group_by))
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


def best_configurations(df: pd.DataFrame | RunDirs, *,
                        cell: Sequence[str] = ("regime", "optimizer.name", "batch_size"),
                        select_on: str = "val_accuracy_final", report: str = "test_accuracy") -> pd.DataFrame:
    """Per cell of ``cell``: the configuration (``group_hash``: one sampled set of hyperparameters,
    all its seeds) with the best mean ``select_on`` — chosen on validation, never on test — and its
    ``report`` metric as mean ± std over that configuration's seeds.

    Only configurations whose replicates all completed compete (one that diverged or failed on some
    seed is not a working configuration); every replicate of the cell is still counted:
    ``n_diverged``, ``n_failed``, ``n_pruned``, ``n_running``. Columns: the cell keys, ``group_hash``,
    ``lr`` of the chosen configuration, ``configs`` (competing) / ``configs_total``, ``select_mean``,
    ``<report>_mean``, ``<report>_std``, ``n`` (its seeds), ``images_per_sec_mean``/``_std``.
    Ties go to more seeds, then to the smaller group hash."""
    df = _frame(df)
    keys = list(cell)
    _check_columns(df, [*keys, "group_hash", "status", select_on, report])
    rows = []
    for key, g in df.groupby(keys, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        for status in ("diverged", "failed", "pruned", "running"):
            row[f"n_{status}"] = int((g["status"] == status).sum())
        candidates = []
        for ghash, c in g.groupby("group_hash", dropna=False, sort=False):
            sel = pd.to_numeric(c[select_on], errors="coerce").astype("float64")
            if not (c["status"] == "completed").all() or not np.isfinite(sel).all():
                continue
            candidates.append((float(sel.mean()), len(c), str(ghash), c))
        row["configs"], row["configs_total"] = len(candidates), int(g["group_hash"].nunique(dropna=False))
        if candidates:
            best_mean, n, ghash, c = sorted(candidates, key=lambda t: (-t[0], -t[1], t[2]))[0]
            rep = pd.to_numeric(c[report], errors="coerce").astype("float64")
            ips = pd.to_numeric(c.get("images_per_sec", pd.Series(dtype=float)), errors="coerce").astype("float64")
            row.update(group_hash=ghash, lr=float(pd.to_numeric(c["lr"], errors="coerce").iloc[0])
                       if "lr" in c else math.nan, select_mean=best_mean, n=n,
                       **{f"{report}_mean": float(rep.mean()),
                          f"{report}_std": float(rep.std(ddof=1)) if n > 1 else math.nan},
                       images_per_sec_mean=float(ips.mean()) if ips.notna().any() else math.nan,
                       images_per_sec_std=float(ips.std(ddof=1)) if ips.notna().sum() > 1 else math.nan)
        rows.append(row)
    cols = [*keys, "group_hash", "lr", "configs", "configs_total", "select_mean", f"{report}_mean", f"{report}_std",
            "n", "n_diverged", "n_failed", "n_pruned", "n_running", "images_per_sec_mean", "images_per_sec_std"]
    out = pd.DataFrame(rows, columns=cols)
    for c in ("configs", "configs_total", "n", "n_diverged", "n_failed", "n_pruned", "n_running"):
        out[c] = pd.array([None if pd.isna(v) else int(v) for v in out[c]], dtype="Int64")
    out.attrs.update(select_on=select_on, report=report)
    return _sort_cells(out, keys)


# ------------------------------------------------------------------------------------------ statistics


def t_interval(d: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Student-t interval of the mean of paired differences ``d`` (≥ 2 values), its t statistic and
    two-sided p-value (H0: mean 0), from ``scipy.stats``. All differences equal: a zero-width interval,
    p 0 (or 1 when they are all 0).

    >>> low, high, t, p = t_interval([1.0, 2.0, 3.0])
    >>> round(low, 3), round(high, 3), round(t, 3), round(p, 4)
    (-0.484, 4.484, 3.464, 0.0742)
    """
    from scipy import stats

    x = np.asarray(d, dtype=float)
    n, mean = len(x), float(np.mean(x))
    sem = float(np.std(x, ddof=1)) / math.sqrt(n)
    if sem == 0:
        return mean, mean, (math.copysign(math.inf, mean) if mean else math.nan), (0.0 if mean else 1.0)
    crit = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1))
    t = mean / sem
    return mean - crit * sem, mean + crit * sem, t, float(min(1.0, 2.0 * stats.t.sf(abs(t), n - 1)))


def paired_difference(df: pd.DataFrame | RunDirs, *, a: str, b: str, by: str = "regime",
                      pair_on: Sequence[str] | None = None, metric: str = "test_accuracy",
                      confidence: float = 0.95) -> pd.DataFrame:
    """Mean difference ``a − b`` of ``metric`` between two values of column ``by`` (e.g. regimes
    ``all`` and ``bn``), with replicates paired on ``pair_on`` (default: seed plus the other default
    group keys, depth and width). Each non-seed ``pair_on`` key defines a cell; within a cell, a
    pair is one seed present (completed, finite metric) on both sides — repeated replicates of one
    seed on a side are averaged first. Per cell: ``n_pairs``, ``mean_a``, ``mean_b``, ``mean_diff``,
    ``std_diff``, ``ci_low``/``ci_high`` (Student-t interval at ``confidence``; NaN with < 2 pairs),
    ``t``, ``p_value`` (two-sided, H0: no difference; ``scipy.stats``). ``bnsweep.analysis.compare``
    does this for every pair of groups at once, with bootstrap intervals and Holm's correction."""
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
            row.update(zip(("ci_low", "ci_high", "t", "p_value"), t_interval(d, confidence), strict=True))
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


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\ensuremath{\$}", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\ensuremath{<}", ">": r"\ensuremath{>}", "|": r"\ensuremath{|}",
                  "±": r"\ensuremath{\pm}", "–": "--", "—": "---", "−": r"\ensuremath{-}", "×": r"\ensuremath{\times}",
                  "·": r"\ensuremath{\cdot}", "≤": r"\ensuremath{\leq}", "≥": r"\ensuremath{\geq}",
                  "≈": r"\ensuremath{\approx}", "→": r"\ensuremath{\rightarrow}", "…": r"\ldots{}",
                  "√": r"\ensuremath{\surd}", "∞": r"\ensuremath{\infty}", "°": r"\ensuremath{^\circ}",
                  "§": r"\S{}", "’": "'", "‘": "`", "“": "``", "”": "''", "\n": " ", "\t": " "}
_GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "θ": "theta", "λ": "lambda",
          "μ": "mu", "π": "pi", "ρ": "rho", "σ": "sigma", "τ": "tau", "φ": "phi", "ω": "omega", "Δ": "Delta",
          "Σ": "Sigma", "Ω": "Omega"}


def latex_escape(text: Any) -> str:
    r"""Plain text made safe anywhere in a LaTeX document (table cells, captions): the ten special
    characters escaped, the Unicode signs bnsweep writes (±, γ, –, ×, ≤, …) as LaTeX, Latin-1 letters
    kept (pdflatex reads UTF-8), any other character as ``?`` rather than a file pdflatex rejects.

    >>> print(latex_escape("Test accuracy (%) & 5_000 #1, |γ| < 0.01"))
    Test accuracy (\%) \& 5\_000 \#1, \ensuremath{|}\ensuremath{\gamma}\ensuremath{|} \ensuremath{<} 0.01
    """
    out = []
    for ch in str(text):
        if ch in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[ch])
        elif ch in _GREEK:
            out.append(rf"\ensuremath{{\{_GREEK[ch]}}}")
        elif ord(ch) < 128 and (ch.isprintable()):
            out.append(ch)
        elif 160 <= ord(ch) < 256 and ch.isalpha():
            out.append(ch)  # é, ü, ß: defined for pdflatex's UTF-8 input
        else:
            out.append("?")
    return "".join(out)


def latex_label(text: Any) -> str:
    """A valid ``\\label`` key: letters, digits and ``:._-`` kept, anything else a hyphen.

    >>> latex_label("tab: BN & all #1 (%)")
    'tab:-BN-all-1-'
    """
    return re.sub(r"[^A-Za-z0-9:._-]+", "-", str(text)) or "tab:results"


def _provenance_comment(prov: dict[str, Any], prefix: str) -> list[str]:
    runs = ", ".join(f"{r.get('name') or Path(r['path']).name} (spec {r.get('spec_hash')})" for r in prov["runs"])
    lines = [f"{prefix} generated by bnsweep analysis on {prov['created']} from {runs};",
             f"{prefix} project commit {prov.get('git_commit')}"]
    return [" ".join(line.split()) for line in lines]  # one line each, whatever a sweep name holds


def _run_names(prov: dict[str, Any] | None) -> list[str]:
    return [r.get("name") or Path(r["path"]).name for r in (prov or {}).get("runs", [])]


def render_latex(headers: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[bool], caption: str,
                 label: str, bold: Sequence[Sequence[bool]] | None = None, prov: dict[str, Any] | None = None,
                 group_rule: bool = True, notes: Sequence[str] = ()) -> str:
    """A booktabs table (``\\usepackage{booktabs}``) from plain-text cells: every cell, the caption and
    the notes are escaped (``latex_escape``), the label made a valid label (``latex_label``). A rule
    separates groups of rows whose first cell differs (``group_rule``)."""
    lines = [line.replace("\n", " ") for line in _provenance_comment(prov, "%")] if prov else []
    lines += [r"\begin{table}[t]", r"  \centering", f"  \\caption{{{latex_escape(caption)}}}",
              f"  \\label{{{latex_label(label)}}}",
              f"  \\begin{{tabular}}{{{''.join('r' if n else 'l' for n in numeric)}}}", r"    \toprule",
              "    " + " & ".join(latex_escape(h) for h in headers) + r" \\", r"    \midrule"]
    previous = None
    for i, cells in enumerate(rows):
        if group_rule and previous is not None and cells and cells[0] != previous:
            lines.append(r"    \midrule")
        previous = cells[0] if cells else None
        flags = bold[i] if bold is not None else [False] * len(cells)
        out = [f"\\textbf{{{latex_escape(c)}}}" if f else latex_escape(c) for c, f in zip(cells, flags, strict=True)]
        lines.append("    " + " & ".join(out) + r" \\")
    lines += [r"    \bottomrule", r"  \end{tabular}"]
    if notes:
        lines.append(r"  \par\smallskip\footnotesize " + r" \\ ".join(latex_escape(n) for n in notes))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def render_markdown(headers: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[bool],
                    bold: Sequence[Sequence[bool]] | None = None, prov: dict[str, Any] | None = None,
                    notes: Sequence[str] = ()) -> str:
    """A pipe table from plain-text cells (``|`` escaped), bold where ``bold`` says, notes below it."""

    def cell(text: str, b: bool) -> str:
        text = " ".join(str(text).split()).replace("|", "\\|")
        return f"**{text}**" if b else text

    lines = ["<!-- " + " ".join(s.strip() for s in _provenance_comment(prov, "")) + " -->"] if prov else []
    lines += ["| " + " | ".join(cell(h, False) for h in headers) + " |",
              "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    for i, cells in enumerate(rows):
        flags = bold[i] if bold is not None else [False] * len(cells)
        lines.append("| " + " | ".join(cell(c, f) for c, f in zip(cells, flags, strict=True)) + " |")
    if notes:
        lines += [""] + [f"{n}" for n in notes]
    return "\n".join(lines) + "\n"


def to_latex(summary: pd.DataFrame, *, group_by: Sequence[str], metric: str | Sequence[str],
             caption: str | None = None, label: str | None = None, prov: dict[str, Any] | None = None) -> str:
    """A booktabs table (``\\usepackage{booktabs}``); the best mean of each metric in bold.
    ``caption`` is plain text, escaped (``--caption "Test accuracy (%)"`` compiles); ``label`` is made
    a valid label."""
    metrics, keys = _metrics(metric), list(group_by)
    headers, rows, bold, numeric = _display(summary, keys, metrics, pm="±")
    names = _run_names(prov)
    if caption is None:
        what = ", ".join(HEADERS.get(m, m) for m in metrics)
        caption = (f"{what}: mean ± standard deviation over n completed replicates (seeds)"
                   + (f"; sweeps: {', '.join(names)}." if names else "."))
    if label is None:
        label = "tab:" + ("-".join(names) or "results")
    return render_latex(headers, rows, numeric=numeric, caption=caption, label=label, bold=bold, prov=prov,
                        group_rule=bool(keys))


def to_markdown(summary: pd.DataFrame, *, group_by: Sequence[str], metric: str | Sequence[str],
                prov: dict[str, Any] | None = None) -> str:
    """A pipe table; the best mean of each metric in bold."""
    metrics, keys = _metrics(metric), list(group_by)
    headers, rows, bold, numeric = _display(summary, keys, metrics, pm="±")
    return render_markdown(headers, rows, numeric=numeric, bold=bold, prov=prov)


SUFFIX = {"latex": ".tex", "markdown": ".md", "csv": ".csv", "parquet": ".parquet"}
_RUN_FILES = ("results.parquet", "results.csv", "history.parquet", "history.csv", "sweep.json", "spec.yaml")


def output_path(out: str | Path, *, stem: str, fmt: str) -> Path:
    """Where an output goes: ``out`` itself, or ``out/<stem><suffix>`` when ``out`` is an existing
    directory. Refuses to overwrite a run directory's own files (its results table, spec, ...).

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> output_path(d, stem="tiny-table", fmt="markdown").name
    'tiny-table.md'
    """
    path = Path(out)
    if path.is_dir():
        path = path / (re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") + SUFFIX[fmt])
    if path.name in _RUN_FILES and (path.parent / "sweep.json").is_file():
        raise ValueError(f"--out {out}: {path} is a file of the run directory {path.parent}; "
                         "write the table elsewhere (e.g. --out tables/)")
    return path


def write_output(out: Path, *, text: str | None, frame: pd.DataFrame, prov: dict[str, Any]) -> Path:
    """Write ``text`` (or ``frame`` as Parquet when ``text`` is None) to ``out`` atomically (no
    temporary file survives a failure) with its ``.provenance.json`` sidecar."""
    if text is None:
        atomic_write(out, lambda f: frame.to_parquet(f, index=False))
    else:
        atomic_write_text(out, text)
    write_sidecar(out, prov)
    return out


def export(run_dirs: RunDirs, *, fmt: Literal["latex", "markdown", "csv", "parquet"], out: str | Path | None = None,
           group_by: Sequence[str] = DEFAULT_GROUP, metric: str | Sequence[str] = "test_accuracy",
           caption: str | None = None, label: str | None = None) -> str | Path:
    """Summarize one or several run directories (cells pooled across them) and render the table.

    ``latex``/``markdown``: the human-readable table (accuracies in %, ``mean ± std``, n, parameter
    counts as 1.6K/272K/1.7M, best mean in bold); ``csv``/``parquet``: the numeric ``summarize``
    frame. With ``out`` the table is written there (an existing directory: ``out/<sweep>-table.<ext>``)
    plus ``<out>.provenance.json``, and the path is returned; without, the text is returned
    (``parquet`` needs ``out``). Never writes into the run directories' own files. Metrics must be
    numeric columns (``ValueError`` listing them)."""
    if fmt not in SUFFIX:
        raise ValueError(f"fmt: expected one of latex, markdown, csv, parquet, received {fmt!r}")
    if fmt == "parquet" and out is None:
        raise ValueError("fmt 'parquet' needs out= (a file path)")
    dirs = _as_list(run_dirs)
    df = load_runs(dirs)
    check_metrics(df, _metrics(metric))
    group_by = with_arch(df, group_by)
    summary = summarize(df, group_by=group_by, metric=metric)
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
    path = output_path(out, stem="-".join(_run_names(prov)) + "-table", fmt=fmt)
    return write_output(path, text=text, frame=summary,
                        prov={**prov, "format": fmt, "group_by": list(group_by), "metric": _metrics(metric)})


def read_summary(path: str | Path) -> pd.DataFrame:
    """Read back an exported CSV/Parquet summary with the dtypes ``summarize`` produces."""
    path = Path(path)
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    for c in df.columns:
        if c == "n" or c.startswith("n_") or c.endswith("_n") or c.startswith("params_"):
            df[c] = df[c].astype("Int64")
    return df
