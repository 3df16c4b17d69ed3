"""Item 6 (fused replicates): N seeds of one configuration trained as one program
(``bnsweep.engine.fused_replicates.FusedTrialRun``) vs the same N seeds as N TrialRuns one after another per epoch (how
``bnsweep.sweep.trainable`` trains replicates), interleaved in one process; aggregate images/s (all seeds).

    .venv/bin/python bench/fused.py --replicas 2,4                        # CPU: layout auto = separate
    KERAS_BACKEND=jax python bench/fused.py --backend jax --replicas 2,4,8 --batch-size 128 \\
        --data synthetic:5120 --layouts grouped                            # a GPU (bench/gpu.py runs this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Worker, interleave, machine, median_ips, median_ratio, spread, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", default="2,4")
    p.add_argument("--regimes", default="all,bn")
    p.add_argument("--layouts", default="auto", help="fused layouts to measure: auto, separate, grouped")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--backend", default="tensorflow")
    p.add_argument("--precision", default=None, help="the trial config's precision, e.g. mixed_bfloat16")
    p.add_argument("--data", default=None, help="npz path or synthetic:N (default: the shared CIFAR-10 subset)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json")
    a = p.parse_args()
    common = {"depth": a.depth, "batch_size": a.batch_size, "steps": a.steps}
    contenders = {}
    for r in a.regimes.split(","):
        for n in (int(x) for x in a.replicas.split(",")):
            contenders[f"separate-runs/N={n}/{r}"] = {**common, "kind": "replicas", "replicas": n, "regime": r}
            for layout in a.layouts.split(","):
                contenders[f"fused-{layout}/N={n}/{r}"] = {**common, "kind": "fused", "replicas": n, "regime": r,
                                                           "layout": layout}
    info = machine()
    print(f"machine: {info['cpu']}, load {info['loadavg']}", flush=True)
    w = Worker(contenders, backend=a.backend, threads=a.threads, precision=a.precision, data_path=a.data)
    try:
        print(f"  worker ready: {w.wait_ready()['info']}", flush=True)
        res = interleave([w], a.rounds)
    finally:
        w.close()
    summary = {n: median_ips(v) for n, v in res.items()}
    print(f"\nResNet-{a.depth}, batch {a.batch_size} per replica, {a.steps} steps, backend {a.backend}, "
          f"precision {a.precision or 'float32'}: aggregate images/s over all replicas")
    for name, v in summary.items():
        print(f"  {name:28s} {v:7.0f}")
    ratios = {}
    for name in res:
        if name.startswith("fused-"):
            base = "separate-runs/" + name.split("/", 1)[1]
            lo, hi = spread(res[name], res[base])
            ratios[name] = {"median": median_ratio(res[name], res[base]), "min": lo, "max": hi}
            print(f"  {name} / {base}: {ratios[name]['median']:.2f}× (rounds {lo:.2f}–{hi:.2f})")
    write_json(a.json, {"machine": info, "args": vars(a), "summary": summary, "ratios": ratios, "raw": res})


if __name__ == "__main__":
    main()
