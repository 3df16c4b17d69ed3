"""``bnsweep compare``: paired, seed-matched differences (scipy t and bootstrap intervals, Holm), on a
crafted results table whose differences are known, across two runs, on the real tiny run directory,
and through the CLI (exit codes)."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bnsweep.analysis.compare import comparison_table, holm
from scipy import stats

from bnsweep.store.table import load_results

# bn − random_k per seed (known), at two depths; all − random_k at depth 20
D20 = [0.10, 0.12, 0.08, 0.11, 0.09]
D56 = [0.20, 0.23, 0.18, 0.21, 0.19]
DALL = [0.30, 0.29, 0.31, 0.30, 0.33]


def _rep(regime: str, seed: int, acc: float, *, depth: int = 20, lr: float = 0.1, status: str = "completed",
         run: str = "run") -> dict:
    cfg = {"regime": regime, "seed": seed, "model": {"depth": depth}, "lr": lr, "backend": "tensorflow",
           "data": {"path": f"/somewhere/{run}.npz"}}
    return {"run_dir": f"/runs/{run}", "sweep": run, "status": status, "seed": seed, "regime": regime,
            "model.depth": depth, "test_accuracy": acc if status == "completed" else math.nan,
            "config_json": json.dumps(cfg)}


def crafted() -> pd.DataFrame:
    rows = []
    base = {20: 0.40, 56: 0.45}
    for s in range(5):
        noise = 0.01 * ((s * 7) % 5)  # shared by the seed's replicates: cancels in a paired difference
        for depth, diffs in ((20, D20), (56, D56)):
            rows.append(_rep("random_k", s, base[depth] + noise, depth=depth))
            rows.append(_rep("bn", s, base[depth] + noise + diffs[s], depth=depth))
        rows.append(_rep("all", s, base[20] + noise + DALL[s]))
    rows.append(_rep("random_k", 5, 0.41))  # seed 5 has no bn / all partner: unpaired
    rows.append(_rep("bn", 6, math.nan, status="diverged"))  # never averaged, never paired
    rows.append(_rep("random_k", 0, 0.9, lr=0.05))  # another lr: another configuration, not paired with lr 0.1
    rows += [_rep("bn", s, 0.7, depth=110) for s in range(3)]  # depth 110 ran bn only
    return pd.DataFrame(rows)


def test_paired_differences_against_the_known_ones():
    c = comparison_table(crafted(), by="regime", baseline="random_k", n_boot=2_000)
    assert list(c.columns[:1]) == ["model.depth"] and c.attrs["cell_keys"] == ["model.depth"]
    rows = {(r["a"], int(r["model.depth"])): r for _, r in c.iterrows()}
    assert set(rows) == {("all", 20), ("bn", 20), ("bn", 56)}
    for (a, depth), d in ((("bn", 20), D20), (("bn", 56), D56), (("all", 20), DALL)):
        r, d = rows[(a, depth)], np.array(d)
        assert r["b"] == "random_k" and r["n_pairs"] == 5
        assert r["mean_diff"] == pytest.approx(d.mean()) and r["std_diff"] == pytest.approx(d.std(ddof=1))
        assert r["mean_a"] - r["mean_b"] == pytest.approx(d.mean())
        low, high = stats.t.interval(0.95, 4, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(5))
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((low, high))
        ref = stats.ttest_rel(d + 1.0, np.ones(5))
        assert r["t"] == pytest.approx(ref.statistic) and r["p_value"] == pytest.approx(ref.pvalue)
        assert d.min() - 1e-12 <= r["boot_low"] < d.mean() < r["boot_high"] <= d.max() + 1e-12
        assert r["significant"]
    assert rows[("bn", 20)]["n_unpaired_b"] == 1 and rows[("bn", 20)]["n_unpaired_a"] == 0  # random_k seed 5
    assert list(c["p_holm"]) == pytest.approx(holm(list(c["p_value"])))
    assert all(c["p_holm"] >= c["p_value"])
    unmatched = {(u["group"], u["cell"]["model.depth"], u["cell"]["lr"]): u["replicates"] for u in c.attrs["unmatched"]}
    assert unmatched == {("bn", 110, 0.1): 3, ("random_k", 20, 0.05): 1}
    again = comparison_table(crafted(), by="regime", baseline="random_k", n_boot=2_000)
    pd.testing.assert_frame_equal(c, again)  # the bootstrap is seeded


def test_every_two_groups_in_the_papers_order_and_the_rendered_table():
    from bnsweep.analysis.compare import render

    c = comparison_table(crafted(), by="regime", n_boot=1_000)
    assert [(r["a"], r["b"], int(r["model.depth"])) for _, r in c.iterrows()] == [
        ("all", "bn", 20), ("all", "random_k", 20), ("bn", "random_k", 20), ("bn", "random_k", 56)]
    allbn = c.iloc[0]
    assert allbn["mean_diff"] == pytest.approx(np.mean(DALL) - np.mean(D20))
    md = render(c, fmt="markdown")
    assert "| 20 | bn | random_k | 5 |" in md and "**+10.0**" in md  # Δ in points, bold when Holm p < 0.05
    assert "Holm-adjusted over 4 comparisons" in md and "Not compared: 4 completed replicates" in md
    back = pd.read_csv(io.StringIO(render(c, fmt="csv")))
    assert list(back["n_pairs"]) == [5, 5, 5, 5]


def test_across_two_runs_finds_the_cell_that_moved():
    old, new = [], []
    for s in range(5):
        jitter = 0.004 * ((s * 3) % 5 - 2)
        for depth in (20, 56):
            old.append(_rep("bn", s, 0.50 + 0.01 * s, depth=depth, run="old"))
            moved = 0.08 if depth == 56 else 0.0  # the new code changed depth 56 only
            new.append(_rep("bn", s, 0.50 + 0.01 * s + moved + jitter, depth=depth, run="new"))
    c = comparison_table(pd.DataFrame(old + new), across=True, n_boot=1_000)
    assert c.attrs["by"] == "run" and c.attrs["baseline"] == "old"
    rows = {int(r["model.depth"]): r for _, r in c.iterrows()}
    assert rows[56]["a"] == "new" and rows[56]["b"] == "old" and rows[56]["n_pairs"] == 5
    assert rows[56]["mean_diff"] == pytest.approx(0.08) and bool(rows[56]["significant"])
    assert abs(rows[20]["mean_diff"]) < 0.005 and not bool(rows[20]["significant"])
    # the data files differ between the runs (data.path): an execution setting, not a configuration
    assert "data.path" not in c.columns
    with pytest.raises(ValueError, match="two or more run directories"):
        comparison_table(pd.DataFrame(old), across=True)


def test_bad_arguments():
    df = crafted()
    with pytest.raises(ValueError, match="--by nope: not a trial-config key"):
        comparison_table(df, by="nope")
    with pytest.raises(ValueError, match="--baseline bnn: no such regime here; present: all, bn, random_k"):
        comparison_table(df, baseline="bnn")
    with pytest.raises(ValueError, match="--metric regime: not a number"):
        comparison_table(df, metric="regime")
    with pytest.raises(ValueError, match="--confidence"):
        comparison_table(df, confidence=95)


def test_holm():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([]) == [] and math.isnan(holm([math.nan])[0])


# ------------------------------------------------------------------------------------------ real run dir, CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnsweep", "compare", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_compare_the_real_tiny_run_through_the_cli(tiny_run_dir, tmp_path):
    """all vs bn of really trained replicates; their LR schedules differ (bn: cosine), so they pair only
    once the schedule is ignored — and then seed by seed."""
    r = _cli(str(tiny_run_dir.run_dir), "--by", "regime", "--format", "csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    strict = pd.read_csv(io.StringIO(r.stdout))
    assert {(a, b) for a, b in zip(strict["a"], strict["b"], strict=True)} == {("all", "bn_output")}
    r = _cli(str(tiny_run_dir.run_dir), "--ignore", "lr_schedule", "--baseline", "bn", "--format", "csv",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    c = pd.read_csv(io.StringIO(r.stdout))
    df = load_results(tiny_run_dir.run_dir)
    done = df[(df["status"] == "completed") & (df["batch_size"] == 32)]
    for width in (1, 2):
        row = c[(c["a"] == "all") & (c["model.width"] == width)].iloc[0]
        sel = done[done["model.width"] == width]
        a = sel[sel["regime"] == "all"].set_index("seed")["test_accuracy"]
        b = sel[sel["regime"] == "bn"].set_index("seed")["test_accuracy"]
        assert row["n_pairs"] == 2 and row["mean_diff"] == pytest.approx((a - b).mean())
    out = tmp_path / "cmp"
    out.mkdir()
    r = _cli(str(tiny_run_dir.run_dir), "--ignore", "lr_schedule", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0 and sorted(p.name for p in out.iterdir()) == ["tiny-compare.md",
                                                                           "tiny-compare.md.provenance.json"]
    for args, why in ((["--by", "nope"], "--by nope: not a trial-config key"),
                      (["--baseline", "bnn"], "--baseline bnn: no such regime"),
                      (["--across"], "--across: give two or more run directories"),
                      (["--metric", "status"], "--metric status: not a number")):
        r = _cli(str(tiny_run_dir.run_dir), *args, cwd=tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and why in r.stderr, (args, r.stderr)
