"""Figures from results tables and final weights: PNG + PDF, each with a provenance sidecar and the
provenance in the file's metadata. Matplotlib runs headless (no pyplot, Agg renderer) and keeps its
cache under ``$BNSWEEP_CACHE`` (default ``~/.cache/bnsweep``) unless ``MPLCONFIGDIR`` is set.

Kinds (``plot(run_dirs, kind=..., out_dir=...)``):

- ``params-vs-accuracy``: trainable parameters (log x) vs. accuracy, one line per regime, error bars =
  std over seeds (the paper's Fig. 2); several run directories are pooled.
- ``lr-curves``: the planned LR per epoch of each distinct schedule (recorded LRs as markers) and the
  validation-accuracy curves grouped by schedule type.
- ``batch-size``: per (regime, optimizer, batch size) the configuration with the best mean final
  validation accuracy (its LR: the best LR per batch size and optimizer), its test accuracy as mean ±
  std over its seeds and its throughput, vs. batch size (log2 x); one line per regime and optimizer,
  each point labelled with the chosen LR, its seeds and the cell's diverged/failed/pruned replicates.
- ``gamma``: histograms of the trained BN γ per regime, with the share |γ| < 0.01.
- ``feature-maps`` (alias ``filters``): the stem conv's filters as RGB images and its ReLU(BN(conv))
  feature maps on a few validation images, for selected replicates (default: the best ``all`` and the
  best ``bn`` by validation accuracy).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("MPLCONFIGDIR", str(Path(os.environ.get("BNSWEEP_CACHE", Path.home() / ".cache" / "bnsweep"))
                                          / "matplotlib"))

import numpy as np
import pandas as pd
from bnsweep.analysis.provenance import figure_metadata, provenance, write_sidecar
from bnsweep.analysis.tables import HEADERS, RunDirs, _as_list, best_configurations, load_runs, summarize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from bnsweep.base.atomic import atomic_write
from bnsweep.spec.config import REGIMES

KINDS = ("params-vs-accuracy", "lr-curves", "batch-size", "gamma", "feature-maps", "filters")
GAMMA_THRESHOLD = 0.01
SELECT_ON = "val_accuracy_final"  # batch-size: the configuration is chosen on validation, reported on test


def _label(metric: str) -> str:
    return HEADERS.get(metric, metric).replace("acc.", "accuracy").replace("Val.", "Validation")


def _regimes(values: Sequence[Any]) -> list[str]:
    present = {v for v in values if isinstance(v, str)}
    return [r for r in REGIMES if r in present] + sorted(present - set(REGIMES))


def _colors(names: Sequence[str]) -> dict[str, Any]:
    cycle = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
             "#bcbd22", "#17becf"]
    return {n: cycle[i % len(cycle)] for i, n in enumerate(names)}


def _net_name(depth: Any, width: Any, arch: Any = "resnet") -> str:
    """ResNet-20, WRN-14-2, or Bottleneck-20 (the notebooks' network)."""
    try:
        d, w = int(depth), int(width)
    except (TypeError, ValueError):
        return "?"
    if arch == "idiomatic_bottleneck":
        return f"Bottleneck-{d}" if w == 1 else f"Bottleneck-{d}-{w}"
    return f"ResNet-{d}" if w == 1 else f"WRN-{d}-{w}"


def _completed(df: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    out = df[df["status"] == "completed"]
    if metric is not None:
        v = pd.to_numeric(out[metric], errors="coerce").astype("float64")
        out = out[np.isfinite(v)]
    return out


def _need(df: pd.DataFrame, what: str) -> None:
    if df.empty:
        raise ValueError(f"nothing to plot: {what}")


# ------------------------------------------------------------------------------------------ kinds


def _params_vs_accuracy(dirs: list[Path], *, metric: str, **_: Any) -> tuple[Figure, str]:
    df = _completed(load_runs(dirs), metric)
    _need(df, f"no completed replicate has {metric}")
    s = summarize(df, group_by=("regime", "model.depth", "model.width"), metric=metric)  # + model.arch if mixed
    fig = Figure(figsize=(7, 4.8), layout="constrained")
    ax = fig.add_subplot()
    regimes = _regimes(s["regime"].tolist())
    colors = _colors(regimes)
    archs = list(dict.fromkeys(s["model.arch"])) if "model.arch" in s else ["resnet"]
    for regime in regimes:
        for arch in archs:  # one line per network family: the two are never joined
            sub = s[(s["regime"] == regime) & ((s["model.arch"] == arch) if "model.arch" in s else True)].copy()
            if sub.empty:
                continue
            name = regime if len(archs) == 1 else f"{regime} · {'bottleneck' if arch != 'resnet' else 'ResNet'}"
            ls = "--" if arch == "idiomatic_bottleneck" else "-"
            sub["x"] = pd.to_numeric(sub["params_trainable"], errors="coerce").astype("float64")
            sub = sub.sort_values("x")
            y = 100 * sub[f"{metric}_mean"].to_numpy(float)
            err = np.nan_to_num(100 * sub[f"{metric}_std"].to_numpy(float))
            n = int(sub["n"].sum())
            if (sub["x"] <= 0).all():  # nothing trains: no place on a log axis, a reference line instead
                ax.axhline(float(np.mean(y)), ls=":", color=colors[regime], label=f"{name} (0 trainable, n={n})")
                continue
            keep = sub["x"].to_numpy() > 0
            sub, y, err = sub[keep], y[keep], err[keep]
            ax.errorbar(sub["x"], y, yerr=err, marker="o", ls=ls, capsize=3, color=colors[regime],
                        label=f"{name} (n={n})")
            for x, yy, d, w in zip(sub["x"], y, sub["model.depth"], sub["model.width"], strict=True):
                ax.annotate(_net_name(d, w, arch), (x, yy), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=colors[regime])
    ax.set_xscale("log")
    ax.set_xlabel("Trainable parameters (count, log scale)")
    ax.set_ylabel(f"{_label(metric)}")
    title = f"Trainable parameters vs. {_label(metric).split(' (')[0].lower()} (mean ± std over seeds)"
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="Regime (completed runs)", fontsize=8)
    return fig, title


def _histories(dirs: list[Path]) -> pd.DataFrame:
    from bnsweep.store.table import load_history, read_table

    frames = []
    for d in dirs:
        root = d.parent if d.is_file() else d
        if (root / "trials").is_dir():
            h = load_history(root)
        elif (root / "history.parquet").is_file():
            h = read_table(root / "history.parquet")
        else:
            continue
        h.insert(0, "run_dir", str(root.resolve()))
        frames.append(h)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _lr_curves(dirs: list[Path], **_: Any) -> tuple[Figure, str]:
    from bnsweep.spec.schedules import parse_schedule, planned_lr

    df = load_runs(dirs)
    df = df[df["config_json"].notna()]
    _need(df, "no replicate with a recorded config")
    hist = _histories(dirs)
    types = sorted(df["lr_schedule.type"].dropna().unique())
    colors = _colors(types)
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_lr, ax_acc = fig.subplots(1, 2)
    seen: set[str] = set()
    labelled: set[str] = set()
    positive = True
    for _, row in df.iterrows():
        cfg = json.loads(row["config_json"])
        sched, lr, epochs = cfg["lr_schedule"], _effective_lr(cfg), int(cfg["epochs"])
        key = json.dumps([sched, lr, epochs], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        kind = sched["type"]
        per_epoch = 1 if epochs > 400 else max(1, 400 // epochs)  # the within-epoch shape (cosine, warm-up)
        plan = planned_lr(parse_schedule(sched), lr=lr, epochs=epochs, points_per_epoch=per_epoch)
        positive &= min(plan) > 0
        x = np.arange(len(plan) + 1) / per_epoch  # a point's LR spans [t, t + 1/per_epoch) epochs elapsed
        n_same = int((df["lr_schedule.type"] == kind).sum())
        label = None if kind in labelled else f"{kind} ({n_same} runs)"
        labelled.add(kind)
        ax_lr.step(x, [*plan, plan[-1]], where="post", color=colors.get(kind), label=label, alpha=0.8)
        if not hist.empty:  # the LR the optimizer actually had at the start of each epoch
            h = hist[(hist["trial_id"] == row["trial_id"]) & (hist["seed"] == row["seed"])
                     & (hist["run_dir"] == row["run_dir"])]
            if len(h):
                ax_lr.plot(h["epoch"] - 1, h["lr"], "x", color=colors.get(kind), ms=6,
                           label="recorded LR" if "recorded" not in labelled else None)
                labelled.add("recorded")
    if positive:
        ax_lr.set_yscale("log")
    ax_lr.set_xlabel("Training time (epochs elapsed)")
    ax_lr.set_ylabel("Learning rate (per step" + (", log scale)" if positive else ")"))
    ax_lr.set_title("Planned LR schedules (lines) and recorded LR (×)")
    ax_lr.grid(True, alpha=0.3)
    ax_lr.legend(title="Schedule", fontsize=8)

    if not hist.empty:
        h = hist.merge(df[["run_dir", "trial_id", "seed", "lr_schedule.type"]], on=["run_dir", "trial_id", "seed"])
        for kind in types:
            hk = h[h["lr_schedule.type"] == kind]
            for _, one in hk.groupby(["run_dir", "trial_id", "seed"]):
                ax_acc.plot(one["epoch"], 100 * one["val_accuracy"], color=colors[kind], alpha=0.25, lw=0.8)
            agg = hk.groupby("epoch")["val_accuracy"].agg(["mean", "std", "count"]).reset_index()
            if agg.empty:
                continue
            ax_acc.plot(agg["epoch"], 100 * agg["mean"], color=colors[kind], lw=2,
                        label=f"{kind} (mean of {hk.groupby(['run_dir', 'trial_id', 'seed']).ngroups})")
            std = np.nan_to_num(agg["std"].to_numpy(float))
            ax_acc.fill_between(agg["epoch"], 100 * (agg["mean"] - std), 100 * (agg["mean"] + std),
                                color=colors[kind], alpha=0.15)
    ax_acc.set_xlabel("Training time (epochs elapsed)")
    ax_acc.set_ylabel("Validation accuracy (%)")
    ax_acc.set_title("Validation accuracy by schedule (mean ± std)")
    ax_acc.grid(True, alpha=0.3)
    for ax in (ax_lr, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(title="Schedule", fontsize=8)
    title = "Learning-rate schedules and validation accuracy"
    fig.suptitle(title)
    return fig, title


def _batch_size(dirs: list[Path], *, metric: str, **_: Any) -> tuple[Figure, str]:
    df = load_runs(dirs)
    _need(_completed(df, metric), f"no completed replicate has {metric}")
    cells = best_configurations(df, cell=("regime", "optimizer.name", "batch_size"), select_on=SELECT_ON,
                                report=metric)
    cells = cells[cells["n"].notna()]
    _need(cells, "no configuration whose replicates all completed")
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    ax_acc, ax_ips = fig.subplots(1, 2)
    regimes = _regimes(cells["regime"].tolist())
    colors = _colors(regimes)
    optimizers = sorted(str(o) for o in cells["optimizer.name"].dropna().unique())
    styles = {o: (["-", "--", ":", "-."][i % 4], ["o", "s", "^", "D"][i % 4]) for i, o in enumerate(optimizers)}
    for regime in regimes:
        for opt in optimizers:
            sub = cells[(cells["regime"] == regime) & (cells["optimizer.name"] == opt)].sort_values("batch_size")
            if sub.empty:
                continue
            x = sub["batch_size"].to_numpy(float)
            ls, marker = styles[opt]
            label = f"{regime} · {opt} (best of {int(sub['configs_total'].max())} configs per batch size)"
            for ax, m, scale in ((ax_acc, metric, 100.0), (ax_ips, "images_per_sec", 1.0)):
                y = scale * sub[f"{m}_mean"].to_numpy(float)
                err = np.nan_to_num(scale * sub[f"{m}_std"].to_numpy(float))
                ax.errorbar(x, y, yerr=err, marker=marker, ls=ls, capsize=3, color=colors[regime], label=label)
            for _, r in sub.iterrows():  # the chosen LR, its seeds, and what did not finish in the cell
                lost = ", ".join(f"{int(r[f'n_{k}'])} {k}" for k in ("diverged", "failed", "pruned") if r[f"n_{k}"])
                text = f"lr {r['lr']:.2g}, n={int(r['n'])}" + (f"\n{lost}" if lost else "")
                ax_acc.annotate(text, (float(r["batch_size"]), 100 * float(r[f"{metric}_mean"])), fontsize=6,
                                textcoords="offset points", xytext=(4, -10 if opt == optimizers[0] else 6),
                                color=colors[regime])
    sizes = sorted(set(cells["batch_size"].dropna().astype(int)))
    for ax in (ax_acc, ax_ips):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("Batch size (images, log2 scale)")
        ax.grid(True, alpha=0.3)
        ax.legend(title="Regime · optimizer", fontsize=7)
    ax_acc.set_ylabel(_label(metric))
    ax_acc.set_title(f"{_label(metric).split(' (')[0]} of the best LR per batch size\n"
                     f"(chosen on final validation accuracy; mean ± std over its seeds)", fontsize=10)
    ax_ips.set_ylabel("Training throughput (images/s)")
    ax_ips.set_title("Throughput of the same configurations (mean ± std)", fontsize=10)
    title = "Batch size: best configuration per batch size and optimizer"
    fig.suptitle(title)
    return fig, title


def _gammas(df: pd.DataFrame) -> dict[str, list[np.ndarray]]:
    from bnsweep.store.records import WEIGHTS_FILE, load_weights

    out: dict[str, list[np.ndarray]] = {}
    for _, row in df.iterrows():
        if not isinstance(row.get("path"), str):
            continue
        f = Path(row["run_dir"]) / row["path"] / WEIGHTS_FILE
        if not f.is_file():
            continue
        w = load_weights(f)
        g = np.concatenate([w[k].ravel() for k in sorted(w) if k.endswith(":gamma")])
        if np.all(np.isfinite(g)):
            out.setdefault(row["regime"], []).append(g)
    return out


def _gamma(dirs: list[Path], **_: Any) -> tuple[Figure, str]:
    gammas = _gammas(_completed(load_runs(dirs)))
    if not gammas:
        raise ValueError("nothing to plot: no completed replicate has final_weights.npz")
    regimes = _regimes(list(gammas))
    colors = _colors(regimes)
    every = np.concatenate([g for r in regimes for g in gammas[r]])
    bins = np.linspace(min(float(every.min()), -0.05), max(float(every.max()), 0.05), 61)
    fig = Figure(figsize=(7, 1.2 + 1.9 * len(regimes)), layout="constrained")
    axes = fig.subplots(len(regimes), 1, sharex=True, squeeze=False)[:, 0]
    for ax, regime in zip(axes, regimes, strict=True):
        g = np.concatenate(gammas[regime])
        share = float(np.mean(np.abs(g) < GAMMA_THRESHOLD))
        ax.hist(g, bins=bins, density=True, color=colors[regime], alpha=0.8)
        ax.axvspan(-GAMMA_THRESHOLD, GAMMA_THRESHOLD, color="k", alpha=0.15)
        ax.set_ylabel("Density (1/unit γ)")
        ax.legend(handles=[Patch(color=colors[regime], label=f"{regime}: {len(gammas[regime])} nets, {g.size} γ"),
                           Patch(color="k", alpha=0.15, label=f"|γ| < {GAMMA_THRESHOLD}: {100 * share:.1f}%")],
                  fontsize=8, loc="upper left")
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("BN γ after training (dimensionless scale)")
    title = "Trained BatchNorm γ by regime"
    fig.suptitle(title)
    return fig, title


def _select(df: pd.DataFrame, trials: Sequence[str] | None) -> pd.DataFrame:
    done = df[(df["status"] == "completed") & df["path"].notna()]
    if trials:
        picks = []
        for t in trials:
            t = str(t).strip("/")
            m = done[(done["trial_id"] == t) | (done["path"] == t) | (done["path"] == f"trials/{t}")
                     | (done["trial_id"] + "/seed-" + done["seed"].astype(str) == t)]
            if m.empty:
                raise ValueError(f"trials: no completed replicate {t!r} (expected a trial id or trial_id/seed-N)")
            picks.append(m.sort_values("val_accuracy_best", ascending=False).iloc[:1])
        return pd.concat(picks, ignore_index=True)
    ranked = done.sort_values("val_accuracy_best", ascending=False, na_position="last")
    picks = [ranked[ranked["regime"] == r].iloc[:1] for r in ("all", "bn")]
    out = pd.concat([p for p in picks if len(p)], ignore_index=True) if any(len(p) for p in picks) else ranked.iloc[:2]
    if out.empty:
        raise ValueError("nothing to plot: no completed replicate")
    return out


def _feature_maps(dirs: list[Path], *, trials: Sequence[str] | None = None, n_images: int = 2,
                  **_: Any) -> tuple[Figure, str]:
    import keras

    from bnsweep.engine.data import load_data
    from bnsweep.spec.config import DataConfig
    from bnsweep.store.records import load_trained_net

    chosen = _select(load_runs(dirs), trials)
    n_filters = 16
    data_cache: dict[str, Any] = {}
    fig = Figure(figsize=(0.62 * (n_filters + 1) + 1.2, 0.8 * len(chosen) * (1 + n_images) + 1.2))
    per_net = 0.8 * (1 + n_images)  # inches; a header band for the title, a footer for the x label
    bands = list(np.ravel(fig.subfigures(len(chosen) + 2, 1, height_ratios=[0.6, *[per_net] * len(chosen), 0.4])))  # type: ignore[arg-type]
    head, subfigs, foot = bands[0], bands[1:-1], bands[-1]
    for sub, (_, row) in zip(subfigs, chosen.iterrows(), strict=True):
        cfg = json.loads(row["config_json"])
        key = json.dumps(cfg["data"], sort_keys=True)
        if key not in data_cache:
            data_cache[key] = load_data(DataConfig(**cfg["data"]))
        data = data_cache[key]
        net = load_trained_net(Path(row["run_dir"]) / row["path"])
        images = data.x_val[:n_images]
        x = images.astype("float32") / 255.0
        if cfg["data"].get("normalize", True):
            x = (x - np.asarray(data.mean, "float32")) / np.asarray(data.std, "float32")
        stem = keras.Model(net.input, net.get_layer("stem_relu").output)
        maps = np.asarray(keras.ops.convert_to_numpy(stem(x, training=False)))
        kernel = np.asarray(keras.ops.convert_to_numpy(net.get_layer("stem_conv").kernel))  # (3, 3, 3, C)
        c = min(n_filters, kernel.shape[-1])
        vmax = float(np.percentile(maps[..., :c], 99)) or 1.0
        rows = 1 + len(images)
        axes = sub.subplots(rows, c + 1, squeeze=False, gridspec_kw={
            "left": 0.01, "right": 0.9, "bottom": 0.03, "top": 0.84, "wspace": 0.12, "hspace": 0.3})
        for ax in axes.ravel():
            ax.axis("off")  # image grid: no ticks (and a much faster layout)
        axes[0, 0].text(0.5, 0.5, "filters\n(3×3 RGB)", ha="center", va="center", fontsize=7)
        for j in range(c):
            f = kernel[..., j]
            f = (f - f.min()) / (f.max() - f.min() + 1e-12)
            axes[0, j + 1].imshow(f, interpolation="nearest")
            axes[0, j + 1].set_title(str(j), fontsize=7)
        im = None
        for i, img in enumerate(images):
            axes[i + 1, 0].imshow(img, interpolation="nearest")
            axes[i + 1, 0].set_title(f"val image {i}", fontsize=6)
            for j in range(c):
                im = axes[i + 1, j + 1].imshow(maps[i, ..., j], cmap="viridis", vmin=0, vmax=vmax,
                                               interpolation="nearest")
        if im is not None:
            cax = sub.add_axes((0.92, 0.05, 0.012, 0.78 * len(images) / rows))
            sub.colorbar(im, cax=cax, label="ReLU(BN(conv)) (a.u.)")
        acc = row["val_accuracy_best"]
        acc_text = f"{100 * acc:.1f}%" if isinstance(acc, float) and math.isfinite(acc) else "–"
        net_name = _net_name(row["model.depth"], row["model.width"], row.get("model.arch", "resnet"))
        sub.suptitle(f"{row['regime']} · {net_name} · "
                     f"{row['trial_id']}/seed-{row['seed']} · best val. acc. {acc_text}", fontsize=9)
    foot.text(0.5, 0.5, "Stem-conv channel (filter index); first column: input image (32×32 px)",
              ha="center", va="center", fontsize=9)
    title = "Stem-conv filters and feature maps on validation images"
    head.text(0.5, 0.5, title, ha="center", va="center", fontsize=12)
    return fig, title


BUILDERS: dict[str, Callable[..., tuple[Figure, str]]] = {
    "params-vs-accuracy": _params_vs_accuracy, "lr-curves": _lr_curves, "batch-size": _batch_size,
    "gamma": _gamma, "feature-maps": _feature_maps, "filters": _feature_maps,
}


def save_figure(fig: Figure, out_dir: str | Path, stem: str, *, prov: dict[str, Any], title: str,
                formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``<out_dir>/<stem>.<fmt>`` with provenance metadata and sidecars."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        meta = figure_metadata(prov, title=title, fmt=fmt)
        atomic_write(path, functools.partial(fig.savefig, format=fmt, dpi=dpi, metadata=meta))
        write_sidecar(path, {**prov, "title": title})
        paths.append(path)
    return paths


def plot(run_dirs: RunDirs, *, kind: str, out_dir: str | Path, trials: Sequence[str] | None = None,
         metric: str = "test_accuracy", n_images: int = 2, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Render one kind of figure (``KINDS``) from one or several run directories into ``out_dir``
    as ``<kind>.png`` and ``<kind>.pdf`` (each with ``.provenance.json``); returns the image paths.
    ``trials`` (feature-maps): trial ids or ``trial_id/seed-N``; ``metric``: the accuracy column of
    params-vs-accuracy and batch-size. Reads only; raises ``ValueError`` when there is nothing to plot."""
    if kind not in BUILDERS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, received {kind!r}")
    dirs = _as_list(run_dirs)
    fig, title = BUILDERS[kind](dirs, metric=metric, trials=trials, n_images=n_images)
    prov = {**provenance([d.parent if d.is_file() else d for d in dirs]), "kind": kind}
    return save_figure(fig, out_dir, kind, prov=prov, title=title, formats=formats)


def _effective_lr(cfg: dict[str, Any]) -> float:
    """The peak LR that trained (``lr`` scaled to the batch size when ``lr_scaling`` is set)."""
    from bnsweep.spec.config import TrialConfig

    return TrialConfig.from_dict(cfg).effective_lr
