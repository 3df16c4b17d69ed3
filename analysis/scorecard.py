"""The reproduction scorecard (``bnsweep export RUN_DIR --scorecard``): each expectation of a sweep
(``bnsweep.spec.expect``) marked *met*, *missed* or *not run*, with the measured mean ± std and n.

An expectation selects the run's replicates whose trial config matches its selector; the mean of
its metric over the selected *completed* replicates is compared with the expected range (selected
replicates that did not complete are counted, never averaged). Expectations come from the run
directory's saved spec (``RUN_DIR/spec.yaml``, its ``expect:`` section) or are given explicitly (a
mapping in the ``expect:`` format, e.g. read from a spec file with ``--expect``).

>>> import pandas as pd, json
>>> rows = [{"status": "completed", "seed": s, "regime": "bn", "test_accuracy": a, "run_dir": "r", "sweep": "x",
...          "config_json": json.dumps({"regime": "bn", "seed": s, "model": {"depth": 110}})}
...         for s, a in enumerate([0.69, 0.70, 0.71])]
>>> card = scorecard_table(pd.DataFrame(rows), expectations={
...     "regime=bn, model.depth=110": {"test_accuracy": [0.66, 0.73], "source": "paper: 69.7%"},
...     "regime=all": {"test_accuracy": [0.9, 0.95]}})
>>> card[["verdict", "n"]].values.tolist()
[['met', 3], ['not run', 0]]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from bnsweep.analysis.provenance import provenance
from bnsweep.analysis.tables import (
    HEADERS,
    RunDirs,
    _as_list,
    _is_share,
    _run_names,
    load_runs,
    output_path,
    render_latex,
    render_markdown,
    write_output,
)

from bnsweep.spec.config import flatten
from bnsweep.spec.expect import Expectation, parse_expectations

Format = Literal["markdown", "latex", "csv"]
Expectations = Mapping[str, Any] | Sequence[Expectation]
COLUMNS = ["sweep", "selector", "metric", "low", "high", "source", "n", "mean", "std", "verdict", "n_incomplete"]


def expectations_of(run_dir: str | Path) -> list[Expectation]:
    """The ``expect:`` section of a run directory's saved spec (``spec.yaml``); none without one."""
    from bnsweep.spec.sweep_spec import load_spec

    path = Path(run_dir) / "spec.yaml"
    if not path.is_file():
        return []
    return parse_expectations(load_spec(path).raw.get("expect"), where=f"{path}: expect")


def read_expectations(path: str | Path) -> list[Expectation]:
    """Expectations from a YAML file: its ``expect:`` section (a spec file), else the whole mapping."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"--expect {p}: not valid YAML ({' '.join(str(e).split())[:200]})") from None
    except UnicodeDecodeError:
        raise ValueError(f"--expect {p}: not a text (YAML) file") from None
    if isinstance(data, Mapping) and "expect" in data:
        data = data["expect"]
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"--expect {p}: expected an 'expect:' mapping of selector -> {{metric: [low, high]}}")
    return parse_expectations(data, where=f"{p}: expect")


def _as_expectations(e: Expectations) -> list[Expectation]:
    return parse_expectations(e) if isinstance(e, Mapping) else list(e)


def scorecard_table(data: pd.DataFrame | RunDirs, *, expectations: Expectations | None = None) -> pd.DataFrame:
    """One row per (run directory, expectation): ``COLUMNS``. ``expectations`` (a mapping in the
    ``expect:`` format, or parsed ``Expectation``s) apply to every run; without, each run directory's
    own saved spec says what it expects."""
    df = data if isinstance(data, pd.DataFrame) else load_runs(data)
    given = _as_expectations(expectations) if expectations is not None else None
    rows = []
    for run_dir, g in df.groupby("run_dir", sort=False):
        expected = given if given is not None else expectations_of(run_dir)
        sweep = next((str(v) for v in g.get("sweep", pd.Series(dtype=str)).dropna()), Path(str(run_dir)).name)
        configs = [flatten(json.loads(c)) if isinstance(c, str) else {} for c in g.get("config_json", [None] * len(g))]
        status = g["status"].tolist()
        for e in expected:
            picked = [i for i, c in enumerate(configs) if e.matches(c)]
            values = pd.to_numeric(g[e.metric].iloc[picked], errors="coerce").astype("float64") if picked \
                else pd.Series(dtype="float64")
            done = np.array([status[i] == "completed" for i in picked], dtype=bool)
            v = values.to_numpy(float)[done] if picked else np.array([])
            v = v[np.isfinite(v)]
            mean = float(v.mean()) if len(v) else math.nan
            rows.append({"sweep": sweep, "selector": e.label, "metric": e.metric, "low": e.low, "high": e.high,
                         "source": e.source, "n": len(v), "mean": mean,
                         "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                         "verdict": e.verdict(mean if len(v) else None), "n_incomplete": len(picked) - len(v)})
    out = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("n", "n_incomplete"):
        out[c] = out[c].astype("Int64")
    return out


def _value(v: float, metric: str) -> str:
    if not math.isfinite(v):
        return "–"
    return f"{100 * v:.1f}" if _is_share(metric) else f"{v:.3g}"


def _display(card: pd.DataFrame) -> tuple[list[str], list[list[str]], list[bool], list[str]]:
    headers = ["Sweep", "Selection", "Metric", "Expected", "Measured (mean ± std)", "n", "Verdict", "Source"]
    rows = []
    for _, r in card.iterrows():
        m = r["metric"]
        unit = " (%)" if _is_share(m) else ""
        measured = _value(r["mean"], m) + (f" ± {_value(r['std'], m)}" if math.isfinite(r["std"]) else "")
        n = str(int(r["n"])) + (f" (+{int(r['n_incomplete'])} not completed)" if r["n_incomplete"] else "")
        rows.append([str(r["sweep"]), str(r["selector"]), HEADERS.get(m, m).replace(" (%)", "") + unit,
                     f"{_value(r['low'], m)}–{_value(r['high'], m)}", measured, n, str(r["verdict"]),
                     str(r["source"] or "")])
    counts = card["verdict"].value_counts()
    notes = [f"{int(counts.get('met', 0))} met, {int(counts.get('missed', 0))} missed, "
             f"{int(counts.get('not run', 0))} not run. Met: the mean over the selected completed replicates lies in "
             "the expected range (accuracies in %); not run: no completed replicate matches the selection."]
    return headers, rows, [False, False, False, True, True, True, False, False], notes


def render(card: pd.DataFrame, *, fmt: Format, caption: str | None = None, label: str | None = None,
           prov: dict[str, Any] | None = None) -> str:
    """The scorecard as Markdown, LaTeX (booktabs) or CSV (the numeric frame)."""
    if fmt == "csv":
        return card.to_csv(index=False)
    headers, rows, numeric, notes = _display(card)
    bold = [[c == "missed" for c in row] for row in rows]
    if fmt == "markdown":
        return render_markdown(headers, rows, numeric=numeric, bold=bold, prov=prov, notes=notes)
    names = _run_names(prov)
    return render_latex(headers, rows, numeric=numeric, bold=bold, prov=prov, notes=notes, group_rule=True,
                        caption=caption or ("Reproduction scorecard" + (f": {', '.join(names)}." if names else ".")),
                        label=label or "tab:scorecard-" + ("-".join(names) or "runs"))


def scorecard(run_dirs: RunDirs, *, fmt: Format = "markdown", out: str | Path | None = None,
              expectations: Expectations | None = None, caption: str | None = None,
              label: str | None = None) -> str | Path:
    """``scorecard_table`` rendered; written to ``out`` (a file, or an existing directory:
    ``out/<sweep>-scorecard.<ext>``, with a provenance sidecar) or returned as text."""
    if fmt not in ("markdown", "latex", "csv"):
        raise ValueError(f"--format: expected one of markdown, latex, csv for a scorecard, received {fmt!r}")
    dirs = _as_list(run_dirs)
    card = scorecard_table(dirs, expectations=expectations)
    if card.empty:
        where = ", ".join(str(d) for d in dirs)
        raise ValueError(f"{where}: no expectations (the saved spec.yaml has no 'expect:' section; "
                         "give them with --expect FILE.yaml)")
    prov = provenance([d.parent if d.is_file() else d for d in dirs])
    text = render(card, fmt=fmt, caption=caption, label=label, prov=prov)
    if out is None:
        return text
    path = output_path(out, stem="-".join(_run_names(prov)) + "-scorecard", fmt=fmt)
    return write_output(path, text=text, frame=card, prov={**prov, "format": fmt, "scorecard": True})
