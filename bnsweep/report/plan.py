"""``bnsweep plan``: what a spec will run and what it will cost, before anything trains.

Expands the search (configurations × replicates × epochs), shows each distinct network's parameter
accounting, the planned LR curve of each schedule (the notebooks' CosineDecay-reaches-zero-after-
1,000-steps bug is visible here before launch), and estimates compute from FLOPs and wall time from a
short measured probe (a few real training steps of the spec's network on this machine).

>>> from bnsweep.spec.sweep_spec import parse_spec_text
>>> text = "name: t\\nmethod: random\\ntrials: 4\\nreplicates: 2\\nfixed: {epochs: 3, model: {depth: 8}}"
>>> spec = parse_spec_text(text)
>>> make_plan(spec, probe=False).trainings
8
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from bnsweep.base import interrupts

# Sustained fp32 training throughput assumed for "one GPU" estimates when no GPU probe exists
# (a ResNet-20-sized convnet reaches a small fraction of an H100/H200's peak at batch 128).
ASSUMED_GPU_TFLOPS = 20.0


@dataclass
class PlanReport:
    name: str
    method: str
    configurations: int
    replicates: int
    trainings: int
    epochs: int
    train_images: int
    val_images: int
    models: list[dict[str, Any]] = field(default_factory=list)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    total_train_flops: float = 0.0
    probe_images_per_sec: float | None = None
    probe_note: str = ""
    cpu_hours: float | None = None
    gpu_hours: float | None = None
    early_stopping: str = "none"
    packing: tuple[int, float] | None = None  # (trials at once, CPUs each) launch would use on this machine
    data_note: str = ""  # where the image counts come from (the opened data, or the official set assumed)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _values(spec: Any, key: str, default: Any) -> list[Any]:
    """Every value ``key`` can take in the sweep (a one_of over ``key`` or its section included)."""
    from bnsweep.spec.sweep_spec import Constant, OneOf, Values

    def plain(p: Any) -> list[Any] | None:
        if isinstance(p, Values):
            return list(p.values)
        if isinstance(p, Constant):
            return [p.value]
        return None

    p = spec.parameters.get(key)
    if plain(p) is not None:
        return plain(p)  # type: ignore[return-value]
    if isinstance(p, OneOf):  # a one_of over a single value (e.g. regime): its option names
        return list(p.names)
    section, _, leaf = key.rpartition(".")
    q = spec.parameters.get(section) if section else None
    if isinstance(q, OneOf):  # e.g. model: {one_of: {small: {depth: 14}, large: {depth: 56}}}
        out: list[Any] = []
        for opts in q.options.values():
            vals = plain(opts.get(leaf)) if leaf in opts else [spec.fixed.get(key, default)]
            out += vals if vals is not None else [spec.fixed.get(key, default)]
        return list(dict.fromkeys(out))
    return [spec.fixed.get(key, default)]


def _model_combos(spec: Any, base: Any) -> list[tuple[Any, Any]]:
    """(depth, width) pairs the sweep can train; a one_of over ``model`` keeps each option's own."""
    from bnsweep.spec.sweep_spec import OneOf

    q = spec.parameters.get("model")
    if not isinstance(q, OneOf):
        return list(itertools.product(_values(spec, "model.depth", base.model.depth),
                                      _values(spec, "model.width", base.model.width)))
    out: list[tuple[Any, Any]] = []
    for name in q.names:
        single = dataclasses.replace(spec, parameters={
            **{k: v for k, v in spec.parameters.items() if k != "model"},
            **{f"model.{k}": v for k, v in q.options[name].items()}})
        out += _model_combos(single, base)
    return list(dict.fromkeys(out))


OFFICIAL_TRAIN_IMAGES = 50_000  # CIFAR-10's training set (with its own 10,000 test images)


def _train_images(spec: Any) -> tuple[int, int, str]:
    """Training and validation images per epoch, and where the count comes from. The data is opened and
    checked as launch does (a missing file, a float32 npz, labels beyond ``model.num_classes``: a
    ``DataError``, one line); only the official CIFAR-10 without a local copy is not (it would be downloaded):
    its 50,000 training images are assumed, and said to be."""
    from bnsweep.engine.data import check_num_classes, inspect_data
    from bnsweep.spec.config import TrialConfig
    from bnsweep.sweep.driver import _param_values, check_searched_data, data_where, sources_searched

    base = TrialConfig.from_dict(spec.base_trial_config())
    cfg = base.data
    if any(k == "data" or k.startswith("data.") for k in spec.parameters):
        check_searched_data(spec, base)
    summary = None if sources_searched(spec) else inspect_data(cfg)
    if summary is not None:
        for n_classes in _param_values(spec, "model.num_classes", base.model.num_classes):
            check_num_classes(summary.labels, int(n_classes), where=data_where(cfg))
    if cfg.source == "synthetic":
        return cfg.synthetic_size, cfg.val_size, "synthetic"
    if summary is None:
        n, note = OFFICIAL_TRAIN_IMAGES, (f"assuming the official CIFAR-10's {OFFICIAL_TRAIN_IMAGES:,} training "
                                          "images, not downloaded by plan; --data FILE opens a local copy")
    else:
        n, note = summary.train_images, f"{data_where(cfg)}: {summary.train_images:,} training images"
        if summary.test_images is not None:
            note += f" + {summary.test_images:,} test images"
    if cfg.train_size:
        if cfg.train_size > n and summary is not None:
            from bnsweep.engine.data import DataError

            raise DataError(f"data.train_size: {cfg.train_size} requested, {data_where(cfg)} has {n} training images")
        n = min(n, cfg.train_size)
    has_test = summary.test_images is not None if summary is not None else cfg.source == "cifar10"
    carved = 0 if has_test or cfg.test_size is None else cfg.test_size
    return max(n - cfg.val_size - carved, 0), cfg.val_size, note


def _representative_schedules(spec: Any) -> list[tuple[str, dict[str, Any]]]:
    from bnsweep.spec.sweep_spec import Constant, Distribution, OneOf, Values

    def rep(p: Any) -> Any:
        if isinstance(p, Constant):
            return p.value
        if isinstance(p, Values):
            return p.values[0]
        if isinstance(p, Distribution):
            v = math.sqrt(p.min * p.max) if "log" in p.kind else (p.min + p.max) / 2
            return round(v) if "int" in p.kind else v
        return p

    p = spec.parameters.get("lr_schedule")
    if isinstance(p, OneOf):
        return [(name, {"type": name, **{k: rep(v) for k, v in opts.items()}}) for name, opts in p.options.items()]
    base = spec.base_trial_config().get("lr_schedule") or {"type": "multistep"}
    return [(base["type"], base)]


def make_plan(spec: Any, *, probe: bool = True, probe_steps: int = 4, check_here: bool = True) -> PlanReport:
    from bnsweep.engine.regimes import account
    from bnsweep.spec.config import TrialConfig
    from bnsweep.spec.schedules import parse_schedule, planned_lr
    from bnsweep.sweep.space import count_configurations

    base = TrialConfig.from_dict(spec.base_trial_config())
    n_cfg = count_configurations(spec)
    epochs = max(int(e) for e in _values(spec, "epochs", base.epochs))
    n_train, n_val, data_note = _train_images(spec)
    report = PlanReport(name=spec.name, method=spec.method, configurations=n_cfg, replicates=spec.replicates,
                        trainings=n_cfg * spec.replicates, epochs=epochs, train_images=n_train, val_images=n_val,
                        early_stopping=spec.scheduler.type, data_note=data_note)
    if check_here:  # trials this machine cannot hold are refused here too (ClusterError), as launch does
        from bnsweep.sweep.cluster import check_local

        here = check_local(spec, configurations=n_cfg, hint="; to plan for a cluster or another machine, add "
                                                            "--for-cluster")
        report.packing = (here.concurrent, here.cpus_per_trial)
    combos = [(d, w, r) for d, w in _model_combos(spec, base) for r in _values(spec, "regime", base.regime)]
    flops_per_training = []
    for depth, width, regime in combos:
        model = base.model.replace(depth=int(depth), width=int(width))  # arch, γ init: the spec's
        a = account(model, str(regime))
        report.models.append({"arch": model.arch, "depth": depth, "width": width, "regime": regime, **a.as_dict()})
        flops_per_training.append(epochs * (a.train_flops * n_train + a.forward_flops * n_val))
    mean_flops = sum(flops_per_training) / len(flops_per_training)
    report.total_train_flops = mean_flops * report.trainings
    lr = base.replace(lr=float(_values(spec, "lr", base.lr)[0])).effective_lr  # the peak LR that trains
    for name, sched in _representative_schedules(spec):
        curve = planned_lr(parse_schedule(sched), lr=float(lr), epochs=epochs)
        report.schedules.append({"name": name, "schedule": sched, "lr": lr, "curve": curve})
    if probe:
        report.probe_images_per_sec, report.probe_note = _probe(base, combos, steps=probe_steps)
        if report.probe_images_per_sec:
            # Probe speed is for the first network; scale the others by their FLOPs.
            seconds = sum(f / flops_per_training[0] for f in flops_per_training) / len(combos) \
                * epochs * (n_train + n_val / 3) / report.probe_images_per_sec
            report.cpu_hours = seconds * report.trainings / 3600
    report.gpu_hours = report.total_train_flops / (ASSUMED_GPU_TFLOPS * 1e12) / 3600
    return report


def _probe(base: Any, combos: list[tuple[Any, Any, Any]], *, steps: int) -> tuple[float | None, str]:
    """Images/s of a few real training steps of the first network on synthetic data, here."""
    from bnsweep.engine.trial import TrialRun

    depth, width, regime = combos[0]
    cfg = base.replace(**{"model.depth": int(depth), "model.width": int(width), "regime": regime,
                          "data.source": "synthetic", "data.synthetic_size": base.batch_size * steps,
                          "data.train_size": None, "data.val_size": 0, "data.test_size": None,
                          "data.path": None, "data.test_path": None,
                          "steps_per_epoch": steps, "epochs": 2})
    try:
        run = TrialRun(cfg)
        run.train_epoch()  # compiles
        interrupts.raise_if_pending()  # a Ctrl-C a library callback swallowed while TensorFlow worked
        m = run.train_epoch()
        interrupts.raise_if_pending()
        return m.images_per_sec, f"ResNet-{depth} W={width} {regime}, batch {base.batch_size}, {steps} steps"
    except Exception as e:  # a probe failure must not hide the rest of the plan
        return None, f"probe failed: {type(e).__name__}: {e}"


def format_plan(r: PlanReport) -> str:
    from bnsweep.base.text import format_count

    lines = [f"sweep {r.name!r}: {r.method}, {r.configurations} configurations × {r.replicates} seeds = "
             f"{r.trainings} trainings × ≤{r.epochs} epochs  (early stopping: {r.early_stopping})",
             f"data: {r.train_images:,} training + {r.val_images:,} validation images per epoch"
             + (f" ({r.data_note})" if r.data_note else ""), "",
             "networks (parameters: total incl. BN statistics / trainable / BN γβ; GFLOP per image):"]
    for m in r.models:
        net = "Bottleneck" if m.get("arch") == "idiomatic_bottleneck" else "ResNet"
        lines.append(f"  {net}-{m['depth']} W={m['width']} {m['regime']:<18} "
                     f"total {format_count(m['total']):>6}  "
                     f"trainable {format_count(m['trainable']):>6}  BN {format_count(m['bn']):>6}  "
                     f"fwd {m['forward_flops'] / 1e9:.3f}  train step {m['train_flops'] / 1e9:.3f}")
    lines.append("")
    lines.append("planned learning rate per epoch (start of epoch):")
    for s in r.schedules:
        c = s["curve"]
        marks = sorted({0, len(c) // 4, len(c) // 2, (3 * len(c)) // 4, len(c) - 1})
        pts = "  ".join(f"e{i}:{c[i]:.3g}" for i in marks)
        lines.append(f"  {s['name']:<16} {_sparkline(c)}  {pts}")
    lines.append("")
    lines.append(f"compute: {r.total_train_flops / 1e15:.3g} PFLOP in all")
    if r.packing:
        lines.append(f"launch here would run {r.packing[0]} trial(s) at once × {r.packing[1]:g} CPU(s) each "
                     "(max_concurrent / resources.cpu, or chosen for this machine where the spec leaves them out)")
    if r.probe_images_per_sec:
        lines.append(f"measured here: {r.probe_images_per_sec:,.0f} images/s ({r.probe_note})")
        lines.append(f"estimated wall time on this machine: {_hours(r.cpu_hours)} (one trial at a time, "
                     f"all epochs; early stopping shortens it)")
    elif r.probe_note:
        lines.append(r.probe_note)
    lines.append(f"estimated on one GPU: {_hours(r.gpu_hours)} (at an assumed {ASSUMED_GPU_TFLOPS:g} TFLOP/s)")
    return "\n".join(lines)


def _hours(h: float | None) -> str:
    if h is None:
        return "?"
    if h < 1 / 60:
        return f"{h * 3600:.0f} s"
    if h < 1:
        return f"{h * 60:.1f} min"
    return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days"


def _sparkline(values: list[float]) -> str:
    bars = "▁▂▃▄▅▆▇█"
    if not values:
        return ""
    n = 40
    step = max(len(values) / n, 1)
    sample = [values[min(int(i * step), len(values) - 1)] for i in range(min(n, len(values)))]
    hi = max(sample) or 1.0
    return "".join(bars[min(int(v / hi * (len(bars) - 1) + 0.5), len(bars) - 1)] for v in sample)
