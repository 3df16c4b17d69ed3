"""Item 4: using the whole machine — one trial with all cores vs one trial per core.

Aggregate training images/s of
* ``1x2``: one process, TensorFlow intra-op threads = 2 (the cores), training alone;
* ``2x1``: two processes with 1 thread each, training at the same time (their images over the wall
  time until both finished);
interleaved round by round (1x2, 2x1, 2x1, 1x2, ...), each a real ``TrialRun.train_epoch`` (ResNet-20,
batch 128, the shared CIFAR-10 subset). With ``--cores N`` other than 2, ``1xN`` vs ``Nx1``.

    .venv/bin/python bench/packing.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Worker, machine, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regimes", default="all,bn")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--backend", default="tensorflow")
    p.add_argument("--json")
    a = p.parse_args()
    regimes = a.regimes.split(",")

    def contenders(seed: int) -> dict:
        return {r: {"kind": "trial", "regime": r, "depth": a.depth, "batch_size": a.batch_size, "steps": a.steps,
                    "seed": seed} for r in regimes}

    info = machine()
    print(f"machine: {info['cpu']}, load {info['loadavg']}", flush=True)
    wide = Worker(contenders(0), threads=a.cores, backend=a.backend)
    narrow = [Worker(contenders(i), threads=1, backend=a.backend) for i in range(a.cores)]
    res: dict[str, list[dict]] = {f"{k}/{r}": [] for r in regimes for k in (f"1x{a.cores}", f"{a.cores}x1")}
    try:
        for w in [wide, *narrow]:
            w.wait_ready()
        for rnd in range(a.rounds):
            for r in regimes:
                phases = ["wide", "narrow"] if rnd % 2 == 0 else ["narrow", "wide"]
                for ph in phases:
                    if ph == "wide":
                        m = wide.epoch(r)
                        res[f"1x{a.cores}/{r}"].append({"ips": m["images"] / m["wall"], "wall": m["wall"],
                                                         "ips_cpu": m["images"] / m["cpu"]})
                    else:
                        t0 = time.perf_counter()
                        for w in narrow:
                            w._send({"cmd": "epoch", "name": r})
                        outs = [w._recv()["results"][r] for w in narrow]
                        wall = time.perf_counter() - t0
                        res[f"{a.cores}x1/{r}"].append({"ips": sum(o["images"] for o in outs) / wall, "wall": wall,
                                                        "ips_cpu": sum(o["images"] for o in outs)
                                                        / sum(o["cpu"] for o in outs),
                                                        "each": [o["images"] / o["wall"] for o in outs]})
                print(f"  round {rnd + 1}/{a.rounds} {r}: 1x{a.cores} {res[f'1x{a.cores}/{r}'][-1]['ips']:.0f}, "
                      f"{a.cores}x1 {res[f'{a.cores}x1/{r}'][-1]['ips']:.0f} img/s (load {os.getloadavg()[0]:.1f})",
                      flush=True)
    finally:
        for w in [wide, *narrow]:
            w.close()
    ratios = {}
    for r in regimes:
        x, y = res[f"{a.cores}x1/{r}"], res[f"1x{a.cores}/{r}"]
        rs = sorted(u["ips"] / v["ips"] for u, v in zip(x, y, strict=True))
        rc = statistics.median(u["ips_cpu"] / v["ips_cpu"] for u, v in zip(x, y, strict=True))
        ratios[r] = {"median": statistics.median(rs), "min": rs[0], "max": rs[-1], "median_cpu": rc}
        print(f"{r}: 1x{a.cores} {statistics.median(v['ips'] for v in y):.0f} img/s, {a.cores}x1 "
              f"{statistics.median(u['ips'] for u in x):.0f} img/s aggregate → {a.cores}x1 / 1x{a.cores} = "
              f"{ratios[r]['median']:.2f}× (rounds {rs[0]:.2f}–{rs[-1]:.2f}; per CPU-second {rc:.2f}×)")
    write_json(a.json, {"machine": info, "args": vars(a), "ratios": ratios, "raw": res})


if __name__ == "__main__":
    main()
