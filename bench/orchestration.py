"""Items 3 and 5: orchestration overhead and memory of a real sweep.

The same K trials (ResNet-20 BN-only on the shared CIFAR-10 subset, a grid over K learning rates,
one seed, one trial at a time with all cores) run three ways, one after the other:

* ``launch``: ``python -m bnsweep launch SPEC --quiet`` as a subprocess (local Ray, dashboard on unless
  ``--no-dashboard``, W&B offline, results table) — what a user runs;
* ``in-process``: the K trials back to back in one process via ``bnsweep.engine.trial.TrialRun``
  (``bench/_sweep_in_process.py``) — no orchestration at all; run at niceness 15 like Ray's workers
  (Ray 2.60 starts every worker at niceness 15), so all three train at the same priority;
* ``plain-tune``: a minimal hand-written Ray Tune + OptunaSearch script (``bench/_sweep_plain_tune.py``)
  — "use the libraries directly".

Reports wall time, wall / Σ trial wall time (each trial's ``TrialResult.wall_seconds``: model build to
test evaluation), wall relative to ``in-process``, and the time from the command to the first
epoch's start (trial ready to train) and end. For ``launch`` it also polls ``/proc`` for the driver
and every Ray process it started: peak RSS of each (item 5).

    .venv/bin/python bench/orchestration.py --trials 4 --epochs 6          # ~4 × 60 s per contender
    .venv/bin/python bench/orchestration.py --trials 2 --epochs 1 --depth 8 --only launch   # memory, quick
    .venv/bin/python bench/orchestration.py --trials 2 --epochs 5 --only launch,launch-bare,plain-tune --rounds 3
                                        # launch vs the bare script, interleaved; launch-bare = no dashboard, no W&B
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import ROOT, SUBSET, ProcTreeMonitor, classify, machine, write_json

LRS = [0.05, 0.1, 0.2, 0.4, 0.8, 0.025, 1.6, 0.0125]


def spec_text(a: argparse.Namespace) -> str:
    lrs = ", ".join(str(x) for x in LRS[:a.trials])
    cpu = f"resources: {{cpu: {a.cpus}}}\n" if a.cpus else ""
    cpu += "tracking: {wandb: false}\n" if a.no_wandb else ""
    return (f"name: bench_orchestration\nmethod: grid\nreplicates: 1\nmax_concurrent: {a.max_concurrent}\n{cpu}"
            f"fixed:\n  model: {{depth: {a.depth}}}\n  regime: {a.regime}\n  epochs: {a.epochs}\n  batch_size: 128\n"
            f"  data: {{source: npz, path: {a.data}, val_size: 500, test_size: 500}}\n"
            f"parameters:\n  lr: {{values: [{lrs}]}}\n")


def trial_configs(spec_file: Path) -> list[dict]:
    from bnsweep.spec.sweep_spec import load_spec
    from bnsweep.sweep.space import resolve_trial_config

    spec = load_spec(spec_file)
    n = len(spec.parameters["lr"].values)  # type: ignore[union-attr]  # the spec's lr is a choice of values
    return [resolve_trial_config(spec, {"lr": lr}, seed=spec.seed) for lr in LRS[:n]]


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_launch(a: argparse.Namespace, tmp: Path, spec_file: Path, name: str = "launch") -> dict:
    run_dir = tmp / f"{name}-run"
    cmd = [sys.executable, "-m", "bnsweep", "launch", str(spec_file), "--run-dir", str(run_dir), "--quiet"]
    if a.no_dashboard:
        cmd.append("--no-dashboard")
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:  # first started.json = a trial is built and about to train; first state.json = epoch 1 done
        while not stop.is_set():
            trials = run_dir / "trials"
            if "first_start" not in seen and trials.is_dir() and any(trials.glob("*/seed-*/started.json")):
                seen["first_start"] = time.time()
            if "first_epoch" not in seen and trials.is_dir() and any(trials.glob("*/seed-*/checkpoint/state.json")):
                seen["first_epoch"] = time.time()
            stop.wait(0.05)

    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mon = ProcTreeMonitor(proc.pid)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    wall = time.time() - t0
    stop.set()
    memory = mon.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"launch failed ({proc.returncode}): {err[-2000:]}")
    records = [json.loads(p.read_text()) for p in sorted(run_dir.glob("trials/*/seed-*/result.json"))]
    walls = [r["wall_seconds"] for r in records]
    epoch_s = [h["seconds"] for r in records for h in r.get("history", [])[1:]]  # (the first epoch traces)
    roles: dict[str, list[int]] = {}
    cpu: dict[str, float] = {}
    for proc_info in memory["processes"]:
        roles.setdefault(classify(proc_info["cmd"]), []).append(proc_info["peak_rss_mb"])
        cpu[classify(proc_info["cmd"])] = cpu.get(classify(proc_info["cmd"]), 0.0) + proc_info["cpu_s"]
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {"wall": wall, "trial_walls": walls, "first_start": seen.get("first_start", t0) - t0,
            "first_epoch": seen.get("first_epoch", t0) - t0, "memory": memory, "memory_by_role": roles,
            "cpu_s_by_role": cpu, "epoch_seconds": epoch_s,
            "events": [(e.get("event"), round(e["time"] - t0, 2)) for e in events if "time" in e]}


def run_events(cmd: list[str], events_file: Path | None = None) -> dict:
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=str(ROOT), env=_env(), capture_output=True, text=True, check=False)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:5])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    lines = proc.stdout.splitlines()
    if events_file and events_file.exists():
        lines += events_file.read_text().splitlines()
    ev = [json.loads(x) for x in lines if x.startswith("{")]
    starts = [e["t"] for e in ev if e["event"] == "trial_start"]
    epochs = [e["t"] for e in ev if e["event"] == "epoch"]
    # the trial's own epoch time (train + validation), as launch's history records it; each trial's first
    # epoch (tracing) left out
    epoch_s = [e["seconds"] for e in ev if e["event"] == "epoch" and e.get("epoch", 1) > 1 and "seconds" in e]
    return {"wall": wall, "epoch_seconds": epoch_s,
            "trial_walls": [e["wall_seconds"] for e in ev if e["event"] == "trial_end"],
            "first_start": min(starts) - t0 if starts else None, "first_epoch": min(epochs) - t0 if epochs else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--regime", default="bn")
    p.add_argument("--cpus", type=float, default=2, help="resources.cpu of the spec (0: leave it to the default)")
    p.add_argument("--data", default=str(SUBSET))
    p.add_argument("--no-dashboard", action="store_true")
    p.add_argument("--no-wandb", action="store_true", help="tracking: {wandb: false} in the launch's spec")
    p.add_argument("--max-concurrent", type=int, default=1, help="trials at once (launch only; memory)")
    p.add_argument("--only", default="launch,in-process,plain-tune")
    p.add_argument("--in-process-nice", type=int, default=15,
                   help="niceness of the in-process run: Ray 2.60 starts its workers at niceness 15, so on a "
                        "shared machine the Ray contenders' trials yield to every normal-priority process")
    p.add_argument("--rounds", type=int, default=1, help="repeat the contenders, order alternating, and print "
                   "the median of per-round ratios (sequential runs on a noisy machine)")
    p.add_argument("--json")
    a = p.parse_args()
    info = machine()
    print(f"machine: {info['cpu']}, load {info['loadavg']}", flush=True)
    res: dict[str, dict] = {}
    rounds: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bnsweep-bench-") as d:
        tmp = Path(d)
        spec_file = tmp / "spec.yaml"
        spec_file.write_text(spec_text(a))
        bare = argparse.Namespace(**{**vars(a), "no_dashboard": True, "no_wandb": True})
        bare_spec = tmp / "spec-bare.yaml"
        bare_spec.write_text(spec_text(bare))
        cfg_file = tmp / "configs.json"
        cfg_file.write_text(json.dumps(trial_configs(spec_file)))
        threads = str(int(a.cpus) if a.cpus else len(os.sched_getaffinity(0)))
        contenders = a.only.split(",")
        for rnd in range(a.rounds):
            here = tmp / f"round-{rnd}"
            here.mkdir()
            for which in contenders if rnd % 2 == 0 else contenders[::-1]:  # A B C, C B A, ...
                print(f"  round {rnd + 1}/{a.rounds}: running {which} ... (load {os.getloadavg()[0]:.1f})", flush=True)
                if which == "launch":
                    r = run_launch(a, here, spec_file)
                elif which == "launch-bare":  # without the dashboard and W&B: what the bare script has
                    r = run_launch(bare, here, bare_spec, name="launch-bare")
                elif which == "launch-nodash":  # W&B on, no dashboard
                    r = run_launch(argparse.Namespace(**{**vars(a), "no_dashboard": True}), here, spec_file,
                                   name="launch-nodash")
                elif which == "in-process":
                    r = run_events(["nice", "-n", str(a.in_process_nice), sys.executable,
                                    str(ROOT / "bench" / "_sweep_in_process.py"), str(cfg_file), threads])
                else:
                    ev = here / "plain-events.jsonl"
                    r = run_events([sys.executable, str(ROOT / "bench" / "_sweep_plain_tune.py"), str(cfg_file),
                                    str(here / "plain-tune"), threads, str(ev)], ev)
                r["sum_trials"] = sum(r["trial_walls"])
                r["overhead_ratio"] = r["wall"] / r["sum_trials"] if r["sum_trials"] else float("nan")
                res[which] = r
                rounds.setdefault(which, []).append(r)
                print(f"    {which}: wall {r['wall']:.1f} s, Σ trials {r['sum_trials']:.1f} s "
                      f"(median trial {statistics.median(r['trial_walls']):.1f} s), wall/Σ {r['overhead_ratio']:.3f}, "
                      f"first epoch starts {r['first_start']:.1f} s, ends {r['first_epoch']:.1f} s after the command"
                      + (f"; median epoch {statistics.median(r['epoch_seconds']):.2f} s"
                         if r.get("epoch_seconds") else ""), flush=True)
                if which.startswith("launch"):
                    print(f"    {which} events (s after the command): {r['events'][:4]} ... {r['events'][-2:]}",
                          flush=True)
    if a.rounds > 1 and "plain-tune" in rounds:
        print(f"\nover {a.rounds} rounds (order alternating), median of per-round ratios to plain-tune:")
        for which in rounds:
            if which == "plain-tune":
                continue
            pairs = list(zip(rounds[which], rounds["plain-tune"], strict=True))
            wall = sorted(x["wall"] / y["wall"] for x, y in pairs)
            ep = sorted(statistics.median(x["epoch_seconds"]) / statistics.median(y["epoch_seconds"])
                        for x, y in pairs if x.get("epoch_seconds") and y.get("epoch_seconds"))
            print(f"  {which:11s} / plain-tune: wall {statistics.median(wall):.3f} "
                  f"(rounds {wall[0]:.3f}–{wall[-1]:.3f})"
                  + (f", epoch time {statistics.median(ep):.3f} ({ep[0]:.3f}–{ep[-1]:.3f})" if ep else ""))
    print(f"\n{a.trials} trials × {a.epochs} epochs, ResNet-{a.depth} {a.regime}, cpus per trial {a.cpus or 'default'}")
    base = res.get("in-process")
    for which, r in res.items():
        rel = f", wall / in-process wall {r['wall'] / base['wall']:.3f}" if base else ""
        print(f"  {which:11s} wall {r['wall']:7.1f} s  wall/Σtrials {r['overhead_ratio']:.3f}{rel}  "
              f"to first epoch start {r['first_start']:.1f} s, end {r['first_epoch']:.1f} s")
    if "launch" in res and "plain-tune" in res:
        print(f"  launch / plain-tune wall = {res['launch']['wall'] / res['plain-tune']['wall']:.3f}")
    if "launch" in res:
        print("\n  memory of the launch (peak RSS, MB):")
        for role, mbs in sorted(res["launch"]["memory_by_role"].items(), key=lambda kv: -max(kv[1])):
            print(f"    {role:18s} {len(mbs)} process(es): {', '.join(str(m) for m in mbs)}")
        print(f"    all processes together, peak of the sum: {res['launch']['memory']['peak_total_rss_mb']} MB")
        cpu = res["launch"]["cpu_s_by_role"]
        print(f"\n  CPU seconds of the launch by role (of {sum(cpu.values()):.1f} s; "
              f"wall {res['launch']['wall']:.1f} s):")
        for role, sec in sorted(cpu.items(), key=lambda kv: -kv[1]):
            print(f"    {role:18s} {sec:7.1f} s")
    write_json(a.json, {"machine": info, "args": vars(a), "results": res, "rounds": rounds})


if __name__ == "__main__":
    main()
