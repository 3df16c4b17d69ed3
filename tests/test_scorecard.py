"""The reproduction scorecard: expectations marked met / missed / not run with mean ± std and n, on a
crafted table, on the real tiny run directory, and through ``bnsweep export --scorecard`` (CLI)."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from bnsweep.analysis.scorecard import expectations_of, read_expectations, render, scorecard_table

from bnsweep.spec.errors import ConfigError
from bnsweep.store.table import load_results

# What the paper-study specs will carry (docs/science.md §5), kept here as the test's own copy.
PAPER = {
    "regime=bn, model.depth=110": {"test_accuracy": [0.66, 0.73], "source": "paper §4: 69.7%"},
    "regime=bn, model.depth=56": {"test_accuracy": [0.58, 0.68], "source": "paper Fig. 2: ≈63%"},
    "regime=none": {"test_accuracy": [0.08, 0.12], "source": "paper Fig. 2: chance"},
}


def _rep(regime: str, depth: int, seed: int, acc: float, status: str = "completed") -> dict:
    cfg = {"regime": regime, "seed": seed, "model": {"depth": depth}}
    return {"run_dir": "/runs/depth", "sweep": "depth", "status": status, "seed": seed, "regime": regime,
            "test_accuracy": acc if status == "completed" else math.nan, "config_json": json.dumps(cfg)}


def test_met_missed_and_not_run_on_a_crafted_table():
    rows = [_rep("bn", 110, s, a) for s, a in enumerate([0.69, 0.70, 0.71])]
    rows += [_rep("bn", 56, s, a) for s, a in enumerate([0.50, 0.52])]  # far below the paper: missed
    rows += [_rep("bn", 56, 2, 0.0, status="diverged"), _rep("all", 110, 0, 0.93)]
    card = scorecard_table(pd.DataFrame(rows), expectations=PAPER).set_index("selector")
    met = card.loc["regime=bn, model.depth=110"]
    assert (met["verdict"], met["n"], met["n_incomplete"]) == ("met", 3, 0)
    assert met["mean"] == pytest.approx(0.70) and met["std"] == pytest.approx(0.01)
    missed = card.loc["regime=bn, model.depth=56"]
    assert (missed["verdict"], missed["n"], missed["n_incomplete"]) == ("missed", 2, 1)
    assert missed["mean"] == pytest.approx(0.51)
    none = card.loc["regime=none"]
    assert (none["verdict"], none["n"]) == ("not run", 0) and math.isnan(none["mean"])
    assert set(card["sweep"]) == {"depth"} and card.loc["regime=none", "source"] == "paper Fig. 2: chance"
    md = render(card.reset_index(), fmt="markdown")
    assert "| depth | regime=bn, model.depth=110 | Test acc. (%) | 66.0–73.0 | 70.0 ± 1.0 | 3 | met |" in md
    assert "**missed**" in md and "2 (+1 not completed)" in md and "1 met, 1 missed, 1 not run" in md
    back = pd.read_csv(io.StringIO(render(card.reset_index(), fmt="csv")))
    assert list(back["verdict"]) == ["met", "missed", "not run"]


def test_the_real_tiny_run(tiny_run_dir):
    df = load_results(tiny_run_dir.run_dir)
    bn2 = df[(df["regime"] == "bn") & (df["model.width"] == 2) & (df["status"] == "completed")]["test_accuracy"]
    mean = float(bn2.mean())
    card = scorecard_table([tiny_run_dir.run_dir], expectations={
        "regime=bn, model.width=2": {"test_accuracy": [mean - 0.01, mean + 0.01]},
        "regime=bn, model.width=2, seed=1": {"test_accuracy": [0.95, 1.0]},
        "regime=random_k_channel": {"test_accuracy": [0.0, 1.0]}})
    assert list(card["verdict"]) == ["met", "missed", "not run"]
    assert list(card["n"]) == [2, 1, 0] and card["mean"].iloc[0] == pytest.approx(mean)
    assert expectations_of(tiny_run_dir.run_dir) == []  # no saved spec.yaml, no expectations


def test_expectations_from_a_file(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nexpect:\n  \"regime=none\": {test_accuracy: [0.08, 0.12], source: chance}\n")
    assert [e.label for e in read_expectations(spec)] == ["regime=none"]
    bare = tmp_path / "bare.yaml"
    bare.write_text('"regime=bn": {test_accuracy: [0.4, 0.6]}\n')
    assert read_expectations(bare)[0].selector == {"regime": "bn"}
    bad = tmp_path / "bad.yaml"
    bad.write_text('expect:\n  "regime=bn": {test_accuracy: [0.6, 0.4]}\n')
    with pytest.raises(ConfigError, match=r'bad\.yaml: expect\."regime=bn"\.test_accuracy: expected \[low, high\]'):
        read_expectations(bad)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnsweep", "export", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_export_scorecard_through_the_cli(tiny_run_dir, tmp_path):
    exp = tmp_path / "expect.yaml"
    exp.write_text('expect:\n  "regime=all, model.width=1": {test_accuracy: [0.0, 1.0], source: anything}\n'
                   '  "regime=bn, model.width=1": {test_accuracy: [0.99, 1.0], source: impossible}\n')
    r = _cli(str(tiny_run_dir.run_dir), "--scorecard", "--expect", str(exp), "--format", "csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    card = pd.read_csv(io.StringIO(r.stdout))
    assert list(card["verdict"]) == ["met", "missed"] and list(card["n"]) == [2, 3]
    assert list(card["n_incomplete"]) == [1, 1]  # the diverged all (lr 1e8), the running bn: counted, not averaged
    r = _cli(str(tiny_run_dir.run_dir), "--scorecard", cwd=tmp_path)
    assert r.returncode == 2 and "no expectations" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    exp.write_text('expect:\n  "regime=bnn": {test_accuracy: [0.0, 1.0]}\n')
    r = _cli(str(tiny_run_dir.run_dir), "--scorecard", "--expect", str(exp), cwd=tmp_path)
    assert r.returncode == 2 and 'expect."regime=bnn": expected one of all, bn' in r.stderr, r.stderr
    r = _cli(str(tiny_run_dir.run_dir), "--scorecard", "--expect", str(exp), "--format", "parquet", cwd=tmp_path)
    assert r.returncode == 2 and "--format must be markdown, latex or csv" in r.stderr
