"""analysis.tables / plots / provenance on the session's real ``tiny_run_dir``."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bnsweep.analysis.plots import KINDS, _gammas, plot
from bnsweep.analysis.provenance import provenance, sidecar_path, write_sidecar
from bnsweep.analysis.tables import (
    best_configurations,
    export,
    latex_escape,
    latex_label,
    load_runs,
    paired_difference,
    read_summary,
    summarize,
    t_interval,
)
from scipy import stats

from bnsweep.base.text import format_count
from bnsweep.store.records import load_weights
from bnsweep.store.table import load_results

GROUP = ["regime", "model.depth", "model.width"]


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def second_run(tiny_run_dir, tmp_path) -> Path:
    """Another sweep: a copy of the tiny one under another name."""
    d = Path(shutil.copytree(tiny_run_dir.run_dir, tmp_path / "tiny2"))
    sweep = json.loads((d / "sweep.json").read_text())
    (d / "sweep.json").write_text(json.dumps({**sweep, "name": "tiny2", "spec_hash": "ba9876543210"}))
    return d


# ------------------------------------------------------------------------------------------ summaries


def test_summarize_matches_numpy(tiny_run_dir):
    df = load_results(tiny_run_dir.run_dir)
    s = summarize(df, metric=["test_accuracy", "val_accuracy_best"])
    assert list(s["regime"]) == ["all", "all", "bn", "bn", "bn_output"]  # paper order, then depth/width
    for _, cell in s.iterrows():
        rows = df[(df["regime"] == cell["regime"]) & (df["model.depth"] == cell["model.depth"])
                  & (df["model.width"] == cell["model.width"])]
        done = rows[rows["status"] == "completed"]
        for m in ("test_accuracy", "val_accuracy_best"):
            v = done[m].to_numpy(dtype=float)
            assert cell[f"{m}_mean"] == pytest.approx(np.mean(v))
            if len(v) > 1:
                assert cell[f"{m}_std"] == pytest.approx(np.std(v, ddof=1))
            else:
                assert math.isnan(cell[f"{m}_std"])
            assert cell[f"{m}_n"] == len(v)
        assert cell["n"] == len(done)
        for status in ("failed", "pruned", "diverged", "running"):
            assert cell[f"n_{status}"] == (rows["status"] == status).sum()
        assert cell["params_trainable"] == rows["params_trainable"].iloc[0]
        assert cell["params_total"] == rows["params_total"].iloc[0]
    bn1 = s[(s["regime"] == "bn") & (s["model.width"] == 1)].iloc[0]
    assert (bn1["n"], bn1["n_running"]) == (3, 1)  # two seeds + the batch-64 run; the running one only counted
    all1 = s[(s["regime"] == "all") & (s["model.width"] == 1)].iloc[0]
    assert (all1["n"], all1["n_diverged"]) == (2, 1)
    assert str(s["n"].dtype) == "Int64" and str(s["test_accuracy_mean"].dtype) == "float64"


def test_summarize_other_groupings_and_errors(tiny_run_dir):
    s = summarize(tiny_run_dir.run_dir, group_by=("regime", "batch_size"))
    assert set(zip(s["regime"], s["batch_size"], strict=True)) == {("all", 32), ("bn", 32), ("bn", 64),
                                                                    ("bn_output", 32)}
    with pytest.raises(KeyError, match="no column 'nope'"):
        summarize(tiny_run_dir.run_dir, group_by=("nope",))


def test_t_interval_against_tables_and_scipy():
    """Student-t critical values from standard tables, through scipy.stats (no hand-written t)."""
    d = np.array([0.02, 0.05, 0.01, 0.04, 0.03])
    low, high, t, p = t_interval(d, 0.95)
    half = 2.7764451 * d.std(ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert (low, high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-7)
    ref = stats.ttest_rel(d, np.zeros(5))
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert t_interval([1.0, 3.0], 0.95)[:2] == pytest.approx((2 - 12.7062047, 2 + 12.7062047), rel=1e-7)
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, math.inf, 0.0)  # no spread: a point, p 0
    assert t_interval([0.0, 0.0])[3] == 1.0


def test_paired_difference_ci(tiny_run_dir):
    df = load_results(tiny_run_dir.run_dir)
    out = paired_difference(df, a="all", b="bn", metric="val_accuracy_best", confidence=0.9)
    assert list(out.columns[:2]) == ["model.depth", "model.width"] and len(out) == 2
    done = df[df["status"] == "completed"]
    for _, cell in out.iterrows():
        sel = done[(done["model.depth"] == cell["model.depth"]) & (done["model.width"] == cell["model.width"])]
        a = sel[sel["regime"] == "all"].groupby("seed")["val_accuracy_best"].mean()
        b = sel[sel["regime"] == "bn"].groupby("seed")["val_accuracy_best"].mean()
        seeds = sorted(set(a.index) & set(b.index))
        d = np.array([a[s] - b[s] for s in seeds])
        assert cell["n_pairs"] == len(d) == 2
        half = stats.t.ppf(0.95, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d))
        assert cell["mean_diff"] == pytest.approx(d.mean())
        assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
        assert cell["mean_a"] - cell["mean_b"] == pytest.approx(cell["mean_diff"])
        assert 0 <= cell["p_value"] <= 1
    # the batch-64 bn replicate (seed 0) is averaged with the batch-32 seed-0 one (groupby above)
    assert out.attrs["confidence"] == 0.9
    only_one = paired_difference(df, a="all", b="bn_output", metric="test_accuracy")
    assert only_one["n_pairs"].tolist() == [1]  # ResNet-8 only; WRN-8-2 has no bn_output replicate
    assert only_one["ci_low"].isna().all()


# ------------------------------------------------------------------------------------------ exports


def test_format_count():
    cases = {0: "0", 650: "650", 999: "999", 999.6: "1K", 1120: "1.1K", 1568: "1.6K", 2752: "2.8K", 9960: "10K",
             16352: "16K", 175_000: "175K", 272_474: "272K", 999_999: "1M", 1.7e6: "1.7M", 856_000: "856K",
             12_345_678: "12M", 2.1e9: "2.1B"}
    for n, text in cases.items():
        assert format_count(n) == text, n
    assert format_count(None) == "–" and format_count(float("nan")) == "–"


def test_latex_export(tiny_run_dir, tmp_path):
    tex = export(tiny_run_dir.run_dir, fmt="latex", metric=["test_accuracy", "test_loss"])
    assert isinstance(tex, str)
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\caption{", r"\label{tab:tiny}"):
        assert token in tex
    assert r"bn\_output" in tex and "bn_output" not in tex.replace(r"bn\_output", "")
    body = tex[tex.index(r"\midrule"):tex.index(r"\bottomrule")]
    assert body.count(r"\textbf{") >= 2  # one best per metric column (ties all bold)
    s = summarize(tiny_run_dir.run_dir, metric=["test_accuracy", "test_loss"])
    best_acc = s.loc[s["test_accuracy_mean"].idxmax()]
    assert f"\\textbf{{{100 * best_acc['test_accuracy_mean']:.1f}" in tex
    best_loss = s["test_loss_mean"].min()
    assert f"\\textbf{{{best_loss:.3f}" in tex  # lower is better for losses
    assert r"\ensuremath{\pm}" in tex and "Test acc. (\\%)" in tex
    assert "78K" in tex and "672" in tex  # parameter counts the paper way
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed: LaTeX compiled only where it exists")
    doc = tmp_path / "t.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[utf8]{inputenc}\n"
                   "\\begin{document}\n" + tex + "\\end{document}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000


def test_latex_escape():
    assert latex_escape("bn_shortcut_output 50% & #1 {x} ~ ^ \\") == (
        r"bn\_shortcut\_output 50\% \& \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{}")


def test_markdown_export_round_trip(tiny_run_dir):
    md = export(tiny_run_dir.run_dir, fmt="markdown")
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Regime", "Depth", "Width", "Trainable params", "Total params", "Test acc. (%)", "n"]
    assert set(lines[1].replace("|", "").split()) <= {"---", "---:"}
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    s = summarize(tiny_run_dir.run_dir)
    assert len(rows) == len(s)
    for cells, (_, cell) in zip(rows, s.iterrows(), strict=True):
        assert cells[0] == cell["regime"] and int(cells[1]) == cell["model.depth"]
        assert cells[3] == format_count(cell["params_trainable"]) and int(cells[6]) == cell["n"]
        value = cells[5].strip("*")
        assert value.startswith(f"{100 * cell['test_accuracy_mean']:.1f}")
        if cell["n"] > 1:
            assert value.endswith(f"± {100 * cell['test_accuracy_std']:.1f}")
    assert sum("**" in ln for ln in lines[2:]) >= 1
    assert md.startswith("<!-- generated by bnsweep")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_parquet_round_trip(tiny_run_dir, tmp_path, fmt):
    out = export(tiny_run_dir.run_dir, fmt=fmt, out=tmp_path / f"table.{fmt}",
                 metric=["test_accuracy", "val_accuracy_best"])
    assert out == tmp_path / f"table.{fmt}" and out.is_file()
    back = read_summary(out)
    expected = summarize(tiny_run_dir.run_dir, metric=["test_accuracy", "val_accuracy_best"])
    pd.testing.assert_frame_equal(back, expected, check_dtype=False, check_exact=False)
    assert str(back["n"].dtype) == "Int64"
    prov = json.loads(sidecar_path(out).read_text())
    assert prov["format"] == fmt and prov["spec_hashes"] == ["0123456789ab"]
    if fmt == "csv":
        assert export(tiny_run_dir.run_dir, fmt="csv").splitlines()[0].startswith("regime,model.depth,model.width,n")


def test_export_errors(tiny_run_dir):
    with pytest.raises(ValueError, match="needs out"):
        export(tiny_run_dir.run_dir, fmt="parquet")
    with pytest.raises(ValueError, match="fmt"):
        export(tiny_run_dir.run_dir, fmt="xlsx")  # type: ignore[arg-type]


def test_several_run_dirs_combine(tiny_run_dir, second_run):
    both = load_runs([tiny_run_dir.run_dir, second_run])
    assert both["run_dir"].nunique() == 2  # (the copied records still name their sweep "tiny")
    one = summarize(tiny_run_dir.run_dir)
    two = summarize(both)
    assert (two["n"] == 2 * one["n"]).all()
    assert two["test_accuracy_mean"].to_numpy() == pytest.approx(one["test_accuracy_mean"].to_numpy())
    tex = export([tiny_run_dir.run_dir, second_run], fmt="latex")
    assert "tiny2" in tex and "ba9876543210" in tex
    prov = provenance([tiny_run_dir.run_dir, second_run])
    assert prov["spec_hashes"] == ["0123456789ab", "ba9876543210"] and len(prov["run_dirs"]) == 2
    # a results table on its own (no trials/) is read as well
    table_only = second_run.parent / "table-only"
    table_only.mkdir()
    shutil.copy(second_run / "results.parquet", table_only / "results.parquet")
    assert len(load_runs(table_only)) == len(load_results(second_run))


def test_exporting_and_plotting_never_modify_the_run_dir(tiny_run_dir, tmp_path):
    before = _tree_hashes(tiny_run_dir.run_dir)
    for fmt in ("latex", "markdown", "csv", "parquet"):
        export(tiny_run_dir.run_dir, fmt=fmt, out=tmp_path / f"t.{fmt}")
    export(tiny_run_dir.run_dir, fmt="markdown")
    for kind in ("params-vs-accuracy", "gamma", "lr-curves"):
        plot(tiny_run_dir.run_dir, kind=kind, out_dir=tmp_path / "plots", formats=("png",))
    assert _tree_hashes(tiny_run_dir.run_dir) == before


# ------------------------------------------------------------------------------------------ plots


def _check_image(path: Path, *, min_kb: float) -> None:
    import matplotlib.image as mpimg

    assert path.stat().st_size > min_kb * 1024, (path, path.stat().st_size)
    if path.suffix == ".png":
        img = mpimg.imread(path)
        h, w = img.shape[:2]
        assert h >= 400 and w >= 600, img.shape
        gray = img[..., :3].mean(axis=2)
        assert gray.std() > 0.05  # not blank
        assert (gray < 0.5).mean() > 0.005  # some ink on the white background
        from PIL import Image

        meta = Image.open(path).text
        assert json.loads(meta["Provenance"])["spec_hashes"] == ["0123456789ab"]
        assert meta["Title"]
    else:
        data = path.read_bytes()
        assert data.startswith(b"%PDF") and b"0123456789ab" in data  # provenance in the info dict
    side = json.loads(sidecar_path(path).read_text())
    assert side["file"] == path.name and side["spec_hashes"] == ["0123456789ab"]
    assert side["versions"]["matplotlib"] and "git_commit" in side and side["title"]


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "filters"])
def test_every_plot_kind_renders(tiny_run_dir, tmp_path, kind):
    paths = plot(tiny_run_dir.run_dir, kind=kind, out_dir=tmp_path)
    assert [p.name for p in paths] == [f"{kind}.png", f"{kind}.pdf"]
    for p in paths:
        _check_image(p, min_kb=20 if p.suffix == ".png" else 8)


def test_filters_alias_with_chosen_trials(tiny_run_dir, tmp_path):
    paths = plot(tiny_run_dir.run_dir, kind="filters", out_dir=tmp_path, trials=["t01_bn_w1/seed-1"],
                 formats=("png",), n_images=1)
    _check_image(paths[0], min_kb=20)
    with pytest.raises(ValueError, match="no completed replicate 't99'"):
        plot(tiny_run_dir.run_dir, kind="filters", out_dir=tmp_path, trials=["t99"])
    with pytest.raises(ValueError, match="kind"):
        plot(tiny_run_dir.run_dir, kind="pie", out_dir=tmp_path)


def test_params_vs_accuracy_across_run_dirs(tiny_run_dir, second_run, tmp_path):
    paths = plot([tiny_run_dir.run_dir, second_run], kind="params-vs-accuracy", out_dir=tmp_path,
                 formats=("png",))
    side = json.loads(sidecar_path(paths[0]).read_text())
    assert len(side["run_dirs"]) == 2 and side["kind"] == "params-vs-accuracy"


def test_gamma_plot_reads_the_final_weights(tiny_run_dir, run_copy_without_weights):
    df = load_runs(tiny_run_dir.run_dir)
    got = _gammas(df[df["status"] == "completed"])
    assert set(got) == {"all", "bn", "bn_output"}
    row = df[(df["trial_id"] == "t01_bn_w1") & (df["seed"] == 0)].iloc[0]
    w = load_weights(tiny_run_dir.run_dir / row["path"] / "final_weights.npz")
    expected = np.concatenate([w[k].ravel() for k in sorted(w) if k.endswith(":gamma")])
    assert any(np.array_equal(g, expected) for g in got["bn"])
    assert np.mean(np.abs(expected) < 0.01) == pytest.approx(row["gamma_near_zero"])
    with pytest.raises(ValueError, match="final_weights"):
        plot(run_copy_without_weights, kind="gamma", out_dir=run_copy_without_weights.parent / "out")


@pytest.fixture
def run_copy_without_weights(tiny_run_dir, tmp_path) -> Path:
    d = Path(shutil.copytree(tiny_run_dir.run_dir, tmp_path / "noweights"))
    for f in d.rglob("final_weights.npz"):
        f.unlink()
    return d


def test_write_sidecar(tmp_path, tiny_run_dir):
    target = tmp_path / "fig.png"
    target.write_bytes(b"x")
    prov = provenance(tiny_run_dir.run_dir)
    side = write_sidecar(target, prov)
    assert side.name == "fig.png.provenance.json"
    data = json.loads(side.read_text())
    assert data["runs"][0]["name"] == "tiny" and data["created"] and "python" in data["versions"]


# ------------------------------------------------------------------------------------------ batch-size figure


def _bs_row(group: str, seed: int, status: str, val: float, test: float, *, lr: float, bs: int, opt: str,
            ips: float = 400.0) -> dict:
    done = status == "completed"
    return {"sweep": "crafted", "trial_id": f"{group}", "seed": seed, "group_hash": group, "status": status,
            "regime": "bn", "batch_size": bs, "optimizer.name": opt, "lr": lr, "model.depth": 20,
            "model.width": 1, "val_accuracy_final": val if done else math.nan,
            "val_accuracy_best": val if done else math.nan, "test_accuracy": test if done else math.nan,
            "images_per_sec": ips if done else math.nan}


def _batch_table() -> pd.DataFrame:
    rows: list[dict] = []
    add = rows.append
    for s, (v, t) in enumerate([(0.50, 0.49), (0.52, 0.51), (0.54, 0.53)]):  # sgd 128, lr 0.1: the right choice
        add(_bs_row("g1", s, "completed", v, t, lr=0.1, bs=128, opt="sgd", ips=500 + s))
    for s, v in enumerate([0.60, 0.61]):  # best validation, but its third seed diverged: not a working config
        add(_bs_row("g2", s, "completed", v, 0.6, lr=0.4, bs=128, opt="sgd"))
    add(_bs_row("g2", 2, "diverged", 0, 0, lr=0.4, bs=128, opt="sgd"))
    for s, (v, t) in enumerate([(0.45, 0.60), (0.46, 0.61), (0.47, 0.62)]):  # best *test*: chosen on test it would win
        add(_bs_row("g3", s, "completed", v, t, lr=0.02, bs=128, opt="sgd"))
    for s in range(3):
        add(_bs_row("g4", s, "diverged", 0, 0, lr=1.0, bs=128, opt="sgd"))
    for s, (v, t) in enumerate([(0.40, 0.41), (0.42, 0.43)]):  # adam 128
        add(_bs_row("g5", s, "completed", v, t, lr=1e-3, bs=128, opt="adam"))
    add(_bs_row("g6", 0, "completed", 0.9, 0.9, lr=3e-3, bs=128, opt="adam"))
    add(_bs_row("g6", 1, "failed", 0, 0, lr=3e-3, bs=128, opt="adam"))
    for s, (v, t) in enumerate([(0.55, 0.50), (0.57, 0.52)]):  # sgd 256
        add(_bs_row("g7", s, "completed", v, t, lr=0.2, bs=256, opt="sgd", ips=800))
    for s in range(2):  # adam 256: every replicate pruned, nothing to show
        add(_bs_row("g8", s, "pruned", 0, 0, lr=1e-3, bs=256, opt="adam"))
    return pd.DataFrame(rows)


def test_best_configuration_per_cell_is_chosen_on_validation_and_reported_on_test():
    cells = best_configurations(_batch_table()).set_index(["optimizer.name", "batch_size"])
    sgd = cells.loc[("sgd", 128)]
    assert sgd["group_hash"] == "g1" and sgd["lr"] == 0.1  # not g3 (best test), not g2 (a seed diverged)
    assert sgd["test_accuracy_mean"] == pytest.approx(0.51) and sgd["test_accuracy_std"] == pytest.approx(0.02)
    assert sgd["select_mean"] == pytest.approx(0.52) and sgd["n"] == 3
    assert (sgd["configs"], sgd["configs_total"], sgd["n_diverged"], sgd["n_failed"]) == (2, 4, 4, 0)
    assert sgd["images_per_sec_mean"] == pytest.approx(501)
    adam = cells.loc[("adam", 128)]
    assert adam["group_hash"] == "g5" and adam["n_failed"] == 1 and adam["test_accuracy_mean"] == pytest.approx(0.42)
    assert cells.loc[("sgd", 256)]["test_accuracy_mean"] == pytest.approx(0.51)
    assert math.isnan(cells.loc[("sgd", 256)]["test_accuracy_std"]) is False  # two seeds: a std
    none = cells.loc[("adam", 256)]
    assert pd.isna(none["n"]) and none["n_pruned"] == 2 and none["configs"] == 0
    # optimizers are separate cells, never pooled; every sampled LR is not pooled either
    assert len(cells) == 4


def test_batch_size_figure_draws_the_chosen_configurations(tmp_path):
    from bnsweep.analysis.plots import _batch_size

    path = tmp_path / "results.csv"
    _batch_table().to_csv(path, index=False)
    fig, _ = _batch_size([path], metric="test_accuracy")
    ax_acc = fig.axes[0]
    lines = {c.get_label(): c.lines[0].get_data() for c in ax_acc.containers}
    sgd = next(v for k, v in lines.items() if k.startswith("bn · sgd"))
    adam = next(v for k, v in lines.items() if k.startswith("bn · adam"))
    assert list(sgd[0]) == [128, 256] and list(sgd[1]) == pytest.approx([51.0, 51.0])
    assert list(adam[0]) == [128] and list(adam[1]) == pytest.approx([42.0])  # adam 256: all pruned, no point
    texts = [t.get_text() for t in ax_acc.texts]
    assert any("lr 0.1, n=3" in t and "4 diverged" in t for t in texts)
    assert any("lr 0.001, n=2" in t and "1 failed" in t for t in texts)
    assert "validation" in ax_acc.get_title() and "best LR" in ax_acc.get_title()
    paths = plot(path, kind="batch-size", out_dir=tmp_path / "plots", formats=("png",))
    assert paths[0].stat().st_size > 20_000


# ------------------------------------------------------------------------------------------ LaTeX that compiles

NASTY = "Test accuracy (%) & 50_000 #1 $x$ ~^ \\ γ ± Δ"


def compile_latex(tex: str, tmp_path: Path, name: str) -> None:
    """Compile ``tex`` (a table) in a minimal article with booktabs; the test fails with pdflatex's log."""
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (.ci/run installs texlive-latex-base + -recommended)")
    doc = tmp_path / f"{name}.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + tex
                   + "\\ref{" + tex.split("\\label{")[1].split("}")[0] + "}\n\\end{document}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]
    assert (tmp_path / f"{name}.pdf").stat().st_size > 1000


def test_every_latex_output_compiles_with_special_characters(tiny_run_dir, tmp_path):
    from bnsweep.analysis.compare import compare
    from bnsweep.analysis.scorecard import scorecard

    expect = {"regime=all, model.width=1": {"test_accuracy": [0.0, 1.0], "source": "§3: 50% & more_#1"}}
    outputs = {
        "export": export(tiny_run_dir.run_dir, fmt="latex", caption=NASTY, label="tab:a & b%#_1"),
        "export_default": export(tiny_run_dir.run_dir, fmt="latex", metric=["test_accuracy", "gamma_near_zero"]),
        "compare": compare(tiny_run_dir.run_dir, fmt="latex", caption=NASTY, label="tab:c d", ignore=["lr_schedule"]),
        "compare_default": compare(tiny_run_dir.run_dir, fmt="latex"),
        "scorecard": scorecard(tiny_run_dir.run_dir, fmt="latex", expectations=expect, caption=NASTY, label="x y"),
    }
    for name, tex in outputs.items():
        assert isinstance(tex, str) and "\\caption{" in tex
        compile_latex(tex, tmp_path, name)
    assert "\\label{tab:a-b-_1}" in outputs["export"] and "(\\%) \\&" in outputs["export"]
    assert latex_label("tab:ok_1.2-x") == "tab:ok_1.2-x"


# ------------------------------------------------------------------------------------------ export: bad input (CLI)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run([sys.executable, "-m", "bnsweep", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_export_of_a_file_that_is_not_a_results_table_is_one_line_exit_2(tiny_run_dir, tmp_path):
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("just,some\n1,2\n")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe" * 1000)  # not UTF-8 (pandas' message alone named no file)
    cases = {tiny_run_dir.run_dir / "sweep.json": "received a .json file",
             tiny_run_dir.run_dir / "history.parquet": "history table",
             garbage: "without the columns trial_id, status, regime",
             binary: "UnicodeDecodeError"}
    for path, why in cases.items():
        r = _cli("export", str(path), cwd=tmp_path)
        assert r.returncode == 2, (path, r.stdout, r.stderr)
        assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert str(path) in r.stderr and "not a results table" in r.stderr and why in r.stderr, r.stderr
    ok = _cli("export", str(tiny_run_dir.run_dir / "results.csv"), cwd=tmp_path)
    assert ok.returncode == 0 and "| bn |" in ok.stdout


def test_export_out_directory_writes_a_named_file_and_leaves_no_temporaries(tiny_run_dir, tmp_path):
    out = tmp_path / "tables"
    out.mkdir()
    before = _tree_hashes(tiny_run_dir.run_dir)
    r = _cli("export", str(tiny_run_dir.run_dir), "--format", "latex", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {out / 'tiny-table.tex'}"
    assert sorted(p.name for p in out.iterdir()) == ["tiny-table.tex", "tiny-table.tex.provenance.json"]
    assert not list(tmp_path.rglob("*.tmp"))
    r = _cli("export", str(tiny_run_dir.run_dir), "--format", "csv", "--out", str(tiny_run_dir.run_dir / "results.csv"),
             cwd=tmp_path)
    assert r.returncode == 2 and "is a file of the run directory" in r.stderr
    assert _tree_hashes(tiny_run_dir.run_dir) == before and not list(tiny_run_dir.run_dir.rglob("*.tmp"))


def test_export_of_a_non_numeric_metric_is_refused_listing_the_numeric_ones(tiny_run_dir, tmp_path):
    for metric, why in (("regime", "not a number"), ("nope", "no such column")):
        r = _cli("export", str(tiny_run_dir.run_dir), "--metric", metric, cwd=tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"--metric {metric}: {why}" in r.stderr and "numeric metrics: test_accuracy, test_loss" in r.stderr


# ------------------------------------------------------------------------------------------ both networks


def test_the_two_networks_are_never_pooled(tmp_path):
    """A bottleneck ResNet-20 and the paper's ResNet-20 share depth and width: tables and the
    params-vs-accuracy figure keep them apart (model.arch joins the keys when both are present)."""
    rows = []
    for arch, acc, params in (("resnet", 0.5, 1_568), ("idiomatic_bottleneck", 0.2, 4_000)):
        for seed in (0, 1):
            rows.append({"sweep": "mixed", "trial_id": f"t_{arch}", "seed": seed, "status": "completed",
                         "regime": "bn", "model.depth": 20, "model.width": 1, "model.arch": arch,
                         "test_accuracy": acc + 0.01 * seed, "params_trainable": params, "params_total": 99})
    path = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    s = summarize(load_runs(path))
    assert list(s.columns[:4]) == ["model.arch", "regime", "model.depth", "model.width"] and len(s) == 2
    assert sorted(s["test_accuracy_mean"].round(3)) == [0.205, 0.505]
    md = export(path, fmt="markdown")
    assert "| Network | Regime |" in md and "| idiomatic_bottleneck | bn | 20 |" in md
    single = summarize(load_runs(path).query("`model.arch` == 'resnet'"))
    assert "model.arch" not in single.columns  # one network: the default keys
    from bnsweep.analysis.plots import _params_vs_accuracy

    fig, _ = _params_vs_accuracy([path], metric="test_accuracy")
    labels = sorted(c.get_label() for c in fig.axes[0].containers)
    assert labels == ["bn · ResNet (n=2)", "bn · bottleneck (n=2)"]
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["Bottleneck-20", "ResNet-20"]
