"""Item 6: GPU numbers, one script (JAX backend; a lent GPU machine has JAX, maybe no TensorFlow).

1. images/s of all / bn at batch 128 and 512, float32 and mixed_bfloat16 (one worker per precision,
   contenders interleaved);
2. several trials sharing the GPU: 1, 2 and 4 processes training at once (bn, batch 128), aggregate
   images/s;
3. fused replicates: N = 2, 4, 8 seeds as one grouped model (``bnsweep.engine.fused_replicates``, layout grouped) vs
   N TrialRuns one after another (bn and all, batch 128).

Each part is bounded (``--budget-s`` total, parts skipped when it runs out) and everything is written
to ``$OUT/gpu.json`` (or ``--json``). Data: the shared CIFAR-10 subset when present, else synthetic.

    KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false python bench/gpu.py --budget-s 480
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import SUBSET, Worker, interleave, machine, median_ips, median_ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=480)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--parts", default="precision,sharing,fused")
    p.add_argument("--json", default=str(Path(os.environ.get("OUT", ".")) / "gpu.json"))
    p.add_argument("--quick", action="store_true", help="a CPU dry run of every code path (tiny sizes)")
    a = p.parse_args()
    scale = 10 if a.quick else 1  # --quick: steps / 10, N up to 2, depth 8, one round
    if a.quick:
        a.depth, a.rounds = 8, 1
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    t_end = time.time() + a.budget_s
    data = str(SUBSET) if SUBSET.exists() else "synthetic:10240"
    out: dict = {"machine": machine(), "args": vars(a), "data": data}
    try:
        import jax

        out["devices"] = [str(d) for d in jax.devices()]
    except Exception as e:
        out["devices"] = f"jax unavailable: {e}"
    print(json.dumps({"devices": out["devices"]}), flush=True)

    def save() -> None:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))

    def left() -> float:
        return t_end - time.time()

    parts = a.parts.split(",")
    if "precision" in parts:
        out["precision"] = {}
        for precision in ("float32", "mixed_bfloat16"):
            if left() < 60:
                break
            contenders = {f"{r}/b{b}": {"kind": "trial", "regime": r, "batch_size": b, "depth": a.depth,
                                        "steps": max(1, (20 if b == 128 else 8) // scale)}
                          for b in (128, 512) for r in ("all", "bn")}
            w = Worker(contenders, backend="jax", precision=None if precision == "float32" else precision,
                       data_path=data)
            try:
                res = interleave([w], a.rounds)
            finally:
                w.close()
            out["precision"][precision] = {n: median_ips(v) for n, v in res.items()}
            out["precision"][precision]["bn/all b128"] = median_ratio(res["bn/b128"], res["all/b128"])
            out["precision"][precision]["bn/all b512"] = median_ratio(res["bn/b512"], res["all/b512"])
            print(json.dumps({precision: out["precision"][precision]}), flush=True)
            save()
    if "sharing" in parts:
        out["sharing"] = {}
        for k in (1, 2) if a.quick else (1, 2, 4):
            if left() < 60:
                break
            ws = [Worker({"bn": {"kind": "trial", "regime": "bn", "batch_size": 128, "depth": a.depth,
                                 "steps": 20 // scale, "seed": i}}, backend="jax", data_path=data) for i in range(k)]
            try:
                for w in ws:
                    w.wait_ready()
                agg = []
                for _ in range(a.rounds):
                    t0 = time.perf_counter()
                    for w in ws:
                        w._send({"cmd": "epoch", "name": "bn"})
                    images = sum(w._recv()["results"]["bn"]["images"] for w in ws)
                    agg.append(images / (time.perf_counter() - t0))
            finally:
                for w in ws:
                    w.close()
            out["sharing"][f"{k} trials"] = sorted(agg)[len(agg) // 2]
            print(json.dumps({"sharing": out["sharing"]}), flush=True)
            save()
    if "fused" in parts:
        out["fused"] = {}
        for n in (2,) if a.quick else (2, 4, 8):
            if left() < 90:
                break
            contenders = {}
            for r in ("bn", "all"):
                common = {"regime": r, "batch_size": 128, "depth": a.depth, "steps": max(1, 10 // scale),
                          "replicas": n}
                contenders[f"separate/N={n}/{r}"] = {**common, "kind": "replicas"}
                contenders[f"fused/N={n}/{r}"] = {**common, "kind": "fused", "layout": "grouped"}
            w = Worker(contenders, backend="jax", data_path=data)
            try:
                res = interleave([w], a.rounds)
            finally:
                w.close()
            for r in ("bn", "all"):
                out["fused"][f"N={n}/{r}"] = {
                    "fused_ips": median_ips(res[f"fused/N={n}/{r}"]),
                    "separate_ips": median_ips(res[f"separate/N={n}/{r}"]),
                    "ratio": median_ratio(res[f"fused/N={n}/{r}"], res[f"separate/N={n}/{r}"])}
            print(json.dumps({"fused": out["fused"]}), flush=True)
            save()
    save()
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
