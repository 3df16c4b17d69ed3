"""The experiment catalogue: one Markdown row per sweep spec under ``sweeps/`` (``base/`` excluded).

For every spec it runs ``bnsweep plan`` (no probe: nothing trains) and prints: the experiment, what it
asks, its file, the planned size (configurations × seeds = trainings × epochs) and the estimated
wall time of the whole sweep, one training at a time, on a 2-core CPU and on one GPU.

CPU time is FLOP-scaled from a measured ResNet-20 speed: the planned training FLOPs of each network
(``plan``'s per-image accounting × images × epochs) divided by the sustained FLOP rate that ResNet-20
reached on this project's 2-core x86-64 machines — about 400 images/s when everything trains (≈ 98
GFLOP/s) and 490 images/s when the convs are frozen (≈ 80 GFLOP/s; BN-only does a third less arithmetic
but runs it less efficiently): an independent plain-Keras ResNet-20 trained at 373 and 490 images/s
there, 350–500 images/s in all. ``--measure`` replaces both with a probe here (a few
real training steps of ResNet-20, TensorFlow; ~30 s). GPU time is ``plan``'s ``gpu_hours``: planned FLOPs
at an *assumed* sustained 20 TFLOP/s, not a measurement. Both are upper bounds where a spec stops
trials early (ASHA).

    .venv/bin/python scripts/catalogue_table.py                  # the README table, printed
    .venv/bin/python scripts/catalogue_table.py --doc            # docs/catalogue.md, printed
    .venv/bin/python scripts/catalogue_table.py --write          # update README.md (between the
                                                                 # markers) and docs/catalogue.md
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bnsweep.report.plan import ASSUMED_GPU_TFLOPS, make_plan  # noqa: E402
from bnsweep.spec.sweep_spec import load_spec  # noqa: E402

SWEEPS = ROOT / "sweeps"
START, END = "<!-- experiments:start -->", "<!-- experiments:end -->"
# The order of the table: the README's run command, the notebooks, then the paper's studies.
ORDER = ("quickstart", "cifar10_subset", "cifar10_full", "cifar10_full_tpu", "notebook_recipe", "lr_schedules",
         "lr_schedules_all", "batch_sizes", "all_frozen", "visualization", "regimes", "depth", "width")
# ResNet-20 on this project's 2-core CPUs (plain Keras, TF): images/s when conv weights train / are frozen.
RESNET20_IMAGES_PER_SEC = {"all": 400.0, "frozen": 490.0}
RESNET20_TRAIN_GFLOP = {"all": 0.2440, "frozen": 0.1624}  # plan's per-image accounting (regimes.account)


def spec_paths() -> list[Path]:
    paths = [p for p in SWEEPS.glob("*.yaml")]
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(paths, key=lambda p: (rank.get(p.stem, len(ORDER)), p.stem))


def cpu_rates(measure: bool) -> tuple[dict[str, float], str]:
    """Sustained training FLOP/s on this CPU for networks whose conv weights train ("all") or not."""
    speeds = dict(RESNET20_IMAGES_PER_SEC)
    note = "ResNet-20 (plain Keras, TensorFlow) on these 2-core CPUs: 400 images/s (all), 490 images/s (frozen convs)"
    if measure:
        from bnsweep.spec.sweep_spec import parse_spec_text

        measured = {}
        for cls, regime in (("all", "all"), ("frozen", "bn")):
            spec = parse_spec_text(f"name: probe\nmethod: grid\nfixed: {{model: {{depth: 20}}, regime: {regime}}}\n")
            ips = make_plan(spec, probe=True, probe_steps=10).probe_images_per_sec
            if ips:
                speeds[cls] = measured[cls] = ips
        if measured:
            note = "ResNet-20 measured here: " + ", ".join(f"{v:.0f} images/s ({k})" for k, v in measured.items())
    return {k: speeds[k] * RESNET20_TRAIN_GFLOP[k] * 1e9 for k in speeds}, note


def cpu_hours(plan: dict[str, Any], rates: dict[str, float]) -> float:
    """Each network's planned FLOPs at the rate of its class (conv weight gradients or not), averaged
    over the networks the sweep trains, times the number of trainings."""
    seconds = []
    for m in plan["models"]:
        flops = plan["epochs"] * (m["train_flops"] * plan["train_images"] + m["forward_flops"] * plan["val_images"])
        cls = "all" if m["train_flops"] > 2.5 * m["forward_flops"] else "frozen"
        seconds.append(flops / rates[cls])
    return sum(seconds) / len(seconds) * plan["trainings"] / 3600


def hours(h: float) -> str:
    if h < 1 / 3600:
        return "< 1 s"
    if h < 1 / 60:
        return f"{h * 3600:.0f} s"
    if h < 1:
        return f"{h * 60:.0f} min"
    if h < 48:
        return f"{h:.1f} h"
    return f"{h / 24:.0f} days" if h < 24 * 365 else f"{h / 24 / 365:.1f} years"


def collect(measure: bool = False) -> tuple[list[dict[str, Any]], str]:
    rates, note = cpu_rates(measure)
    rows = []
    for path in spec_paths():
        spec = load_spec(path)
        plan = make_plan(spec, probe=False, check_here=False).as_dict()  # the spec's cost, not this machine's fit
        rows.append({
            "name": spec.name, "file": f"sweeps/{path.name}", "description": spec.description, "spec": spec,
            "plan": plan, "cpu_hours": cpu_hours(plan, rates), "gpu_hours": plan["gpu_hours"],
        })
    return rows, note


def size(plan: dict[str, Any]) -> str:
    return (f"{plan['configurations']} × {plan['replicates']} = {plan['trainings']} trainings "
            f"× {plan['epochs']} epochs")


def readme_table(rows: list[dict[str, Any]], note: str) -> str:
    lines = ["| Experiment | What it asks | Planned size | 2-core CPU | 1 GPU† |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        stop = " (ASHA: ≤)" if r["plan"]["early_stopping"] != "none" else ""
        lines.append(f"| [`{r['name']}`]({r['file']}) | {r['description']} | {size(r['plan'])}{stop} | "
                     f"{hours(r['cpu_hours'])} | {hours(r['gpu_hours'])} |")
    lines += [
        "",
        f"Times are for the whole sweep, one training at a time, all epochs (upper bounds with ASHA), compute "
        f"only (each trial adds some seconds of start-up and compilation). "
        f"CPU: planned FLOPs at the rate measured for {note}. †GPU: planned FLOPs at an *assumed* sustained "
        f"{ASSUMED_GPU_TFLOPS:g} TFLOP/s (`bnsweep plan`'s estimate, not a measurement). `bnsweep plan SPEC` "
        "shows the networks, parameter counts and LR curves of each; `scripts/catalogue_table.py` regenerates "
        "this table; what each spec changes from the original notebooks is in `docs/notebooks.md`, the "
        "details in `docs/catalogue.md`.",
    ]
    return "\n".join(lines)


def _param_text(p: Any) -> str:
    from bnsweep.spec.sweep_spec import Constant, Distribution, OneOf, Values

    if isinstance(p, Values):
        return "{" + ", ".join(str(v) for v in p.values) + "}"
    if isinstance(p, Constant):
        return str(p.value)
    if isinstance(p, Distribution):
        return f"{p.kind}[{p.min:g}, {p.max:g}]"
    if isinstance(p, OneOf):
        parts = []
        for name, opt in p.options.items():
            inner = ", ".join(f"{k}={_param_text(v)}" for k, v in opt.items())
            parts.append(f"{name}({inner})" if inner else name)
        return "one of " + " · ".join(parts)
    return str(p)


def doc(rows: list[dict[str, Any]], note: str) -> str:
    out = [
        "# Experiment catalogue",
        "",
        "Every sweep spec under `sweeps/`, what it asks, and what it will cost. Generated by "
        "`scripts/catalogue_table.py --write` from `bnsweep plan` (nothing trains); the same table is in the "
        "README. Specs share their settings through `include:` — `sweeps/base/paper_recipe.yaml` (the "
        "paper's open_lth recipe), `sweeps/base/notebook_recipe.yaml` (the notebooks' settings, as "
        "differences from the paper's), `sweeps/base/cifar10_subset.yaml` (the notebooks' 10,000-image "
        "subset) and `sweeps/base/depth_width.yaml` (the regimes and seeds of the paper's Fig. 2 study). "
        "How each original notebook maps onto these specs, and which of its flaws they avoid: "
        "[notebooks.md](notebooks.md).",
        "",
        readme_table(rows, note).replace("](sweeps/", "](../sweeps/").replace("`docs/notebooks.md`", "[notebooks.md]"
                                                                                 "(notebooks.md)"),
        "",
        "## Per experiment",
    ]
    for r in rows:
        spec, plan = r["spec"], r["plan"]
        fixed = spec.fixed
        out += ["", f"### `{r['name']}` — [{r['file']}](../{r['file']})", "", r["description"], ""]
        header = header_comment(ROOT / r["file"])
        if header:
            out += ["```text", header, "```", ""]
        out.append(f"- search: {spec.method}, {plan['configurations']} configurations × {spec.replicates} seeds "
                   f"= {plan['trainings']} trainings × ≤{plan['epochs']} epochs; early stopping: "
                   f"{plan['early_stopping']}; resources per trial: cpu "
                   + (f"{spec.resources.cpu:g}" if spec.resources.cpu is not None else "auto (all CPUs shared out)")
                   + (f", gpu {spec.resources.gpu:g}" if spec.resources.gpu else "")
                   + (f", TPU chips {spec.resources.tpu}" if spec.resources.tpu else ""))
        out.append(f"- data: {plan['train_images']:,} training + {plan['val_images']:,} validation images per epoch "
                   f"({fixed.get('data.source', 'cifar10')}"
                   + (f", augment {fixed['data.augment']}" if "data.augment" in fixed else "")
                   + (", per-channel normalization" if fixed.get("data.normalize", True) else ", no normalization")
                   + ")")
        opt = {k.split(".", 1)[1]: v for k, v in fixed.items() if k.startswith("optimizer.")}
        sched = {k.split(".", 1)[1]: v for k, v in fixed.items() if k.startswith("lr_schedule.")}
        recipe = [f"batch {fixed.get('batch_size', 128)}" if "batch_size" in fixed else None,
                  f"lr {fixed['lr']:g}" if "lr" in fixed else None,
                  f"schedule {sched}" if sched else None,
                  f"optimizer {opt}" if opt else None,
                  f"γ init {fixed['model.gamma_init']}" if "model.gamma_init" in fixed else None]
        out.append("- fixed: " + "; ".join(x for x in recipe if x))
        if spec.parameters:
            out.append("- searched: " + "; ".join(f"`{k}` {_param_text(p)}" for k, p in spec.parameters.items()))
        nets = []
        for m in plan["models"]:
            nets.append(f"ResNet-{m['depth']}" + (f"-W{m['width']}" if m["width"] != 1 else "")
                        + f" {m['regime']} ({m['trainable']:,} of {m['total']:,} trainable)")
        out.append("- networks: " + ", ".join(nets))
        out.append(f"- compute: {plan['total_train_flops'] / 1e15:.3g} PFLOP; 2-core CPU ≈ {hours(r['cpu_hours'])}; "
                   f"one GPU ≈ {hours(r['gpu_hours'])} (assumed {ASSUMED_GPU_TFLOPS:g} TFLOP/s)")
        out.append(f"- run: `bnsweep plan {r['file']}` · `bnsweep launch {r['file']}`")
    out += ["", "Regenerate: `.venv/bin/python scripts/catalogue_table.py --write` "
                "(`--measure` to time ResNet-20 on this machine instead of the documented rates)."]
    return "\n".join(out) + "\n"


def header_comment(path: Path) -> str:
    """The spec's leading comment block (what it asks, its notebook/figure, how to run it)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# yaml-language-server:"):
            continue  # the editor's schema line, not the spec's description
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines)


def write_readme(table: str, readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme}: markers {START} … {END} not found")
    readme.write_text(pattern.sub(lambda _: f"{START}\n{table}\n{END}", text, count=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--doc", action="store_true", help="print docs/catalogue.md instead of the README table")
    ap.add_argument("--write", action="store_true", help="write README.md (between the markers) and docs/catalogue.md")
    ap.add_argument("--measure", action="store_true", help="probe ResNet-20 here for the CPU rate (~30 s)")
    args = ap.parse_args(argv)
    rows, note = collect(measure=args.measure)
    table = readme_table(rows, note)
    if args.write:
        write_readme(table)
        (ROOT / "docs").mkdir(exist_ok=True)
        (ROOT / "docs" / "catalogue.md").write_text(doc(rows, note))
        print("wrote README.md (experiments section) and docs/catalogue.md")
    else:
        print(doc(rows, note) if args.doc else table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
