"""GPU numbers in one run (issue 15): how to use one GPU for many small trials. Aggregate ResNet-20 training
images/s for ``all`` and ``bn`` (batch 128 per trial or replica), every comparison measured in this run:

* ``first``  command → first epoch: a fresh process (imports, data, build, compile, one epoch), per backend;
* ``single`` one trial on the GPU: float32 vs mixed_bfloat16, per backend (TensorFlow only where installed),
  contenders interleaved in one worker;
* ``fused``  fused replicates (``bnsweep.engine.fused_replicates``), N = 4, 8, 16, 32, layouts grouped and
  separate, vs one TrialRun in the same worker (N TrialRuns one after another train at its images/s);
* ``share``  k = 1, 2, 4, 8 trials per GPU as processes, each held to 1/k of the GPU's memory
  (``engine.backend.configure_gpu_memory``), training at once.

Parts run in that order, each measurement bounded by what is left of ``--budget-s`` (a worker out of time
is killed and recorded); the JSON (``--json``, default ``$OUT/gpu.json``) is rewritten after each one.
``--smoke`` is a CPU dry run of every code path (ResNet-8, 1 step, N = 2, k = 2; tests/test_bench.py).
On a machine without Keras, see bench/README.md (``bench/offline_keras.py``)::

    python bench/gpu.py --budget-s 540
    .venv/bin/python bench/gpu.py --smoke --json /tmp/gpu-smoke.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import SUBSET, Worker, first_epoch, interleave, machine, median_ips, median_ratio


def _list(text: str, kind: type = str) -> list[Any]:
    return [kind(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=None, help="default 540 (--smoke: 3600)")
    p.add_argument("--parts", default="first,single,fused,share")
    p.add_argument("--backends", default="auto", help="jax,tensorflow; auto: jax, and tensorflow where installed")
    p.add_argument("--precisions", default="float32,mixed_bfloat16")
    p.add_argument("--regimes", default="all,bn")
    p.add_argument("--replicas", default="4,8,16,32")
    p.add_argument("--layouts", default="grouped,separate")
    p.add_argument("--shares", default="1,2,4,8")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="training steps per measured epoch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default=None, help="npz path or synthetic:N (default: the shared subset, else "
                                                "synthetic:10240)")
    p.add_argument("--json", default=str(Path(os.environ.get("OUT", ".")) / "gpu.json"))
    p.add_argument("--smoke", action="store_true",
                   help="CPU dry run: ResNet-8, batch 8, 1 step, 1 round, bn only, N = 2, k = 2")
    a = p.parse_args()
    if a.smoke:  # every code path once, as few compilations as that takes (XLA on a loaded CPU: ~30 s each)
        a.depth, a.steps, a.rounds, a.batch_size = 8, 1, 1, 8
        a.replicas, a.shares, a.regimes = "2", "2", "bn"
        a.data = a.data or "synthetic:64"
    if a.budget_s is None:
        a.budget_s = 3600 if a.smoke else 540
    backends = _list(a.backends)
    if backends == ["auto"]:
        backends = ["jax"] + (["tensorflow"] if importlib.util.find_spec("tensorflow") else [])
    data = a.data or (str(SUBSET) if SUBSET.exists() else "synthetic:10240")
    regimes, precisions = _list(a.regimes), _list(a.precisions)
    t_end = time.time() + a.budget_s
    out: dict[str, Any] = {"machine": machine(), "args": vars(a), "backends": backends, "data": data,
                           "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "skipped": [], "errors": []}
    print(json.dumps({"gpus": out["machine"]["gpus"], "backends": backends}), flush=True)
    common = {"depth": a.depth, "batch_size": a.batch_size, "steps": a.steps}

    def save() -> None:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))

    def measure(part: str, key: str, need_s: float, fn: Any) -> None:
        """Run one measurement if the budget allows, record what it gives (or why not), save."""
        if time.time() + need_s > t_end:
            out["skipped"].append(f"{part}/{key}: not enough time left")
            return
        t0 = time.time()
        try:
            out.setdefault(part, {})[key] = fn()
        except Exception as e:  # an out-of-memory N, a worker out of time: recorded, the rest goes on
            out["errors"].append({"part": f"{part}/{key}", "error": f"{type(e).__name__}: {e}"[:2000],
                                  "traceback": traceback.format_exc()[-2000:]})
        print(json.dumps({part: {key: out.get(part, {}).get(key)}, "seconds": round(time.time() - t0, 1)},
                         default=str), flush=True)
        save()

    def worker(contenders: dict[str, dict[str, Any]], backend: str, **kw: Any) -> Worker:
        return Worker(contenders, backend=backend, data_path=data, deadline=t_end, **kw)

    parts = _list(a.parts)
    if "first" in parts:
        for b in backends:
            measure("first", b, 30, lambda b=b: first_epoch(
                {**common, "regime": "all", "data_path": data}, backend=b, timeout=max(1.0, t_end - time.time())))
    if "single" in parts:
        for b in backends:
            def single(b: str = b) -> dict[str, Any]:
                names = {f"{r}/{pr}": {**common, "kind": "trial", "regime": r, "precision": pr}
                         for pr in precisions for r in regimes}
                w = worker(names, b)
                try:
                    ready = w.wait_ready()
                    res = interleave([w], a.rounds)
                finally:
                    w.close()
                got: dict[str, Any] = {n: median_ips(v) for n, v in res.items()}
                for pr in precisions:
                    if {"bn", "all"} <= set(regimes):
                        got[f"bn/all {pr}"] = median_ratio(res[f"bn/{pr}"], res[f"all/{pr}"])
                    if pr != precisions[0]:
                        for r in regimes:
                            got[f"{r}: {pr}/{precisions[0]}"] = median_ratio(res[f"{r}/{pr}"],
                                                                             res[f"{r}/{precisions[0]}"])
                got["setup_s"] = {n: i["setup_s"] for n, i in ready["info"].items()}
                got["accelerator"] = ready.get("accelerator")
                return got
            measure("single", b, 60, single)
    if "fused" in parts:
        b = backends[0]
        for n in _list(a.replicas, int):
            def fused(n: int = n) -> dict[str, Any]:
                names: dict[str, dict[str, Any]] = {}
                for r in regimes:
                    names[f"trial/{r}"] = {**common, "kind": "trial", "regime": r, "precision": precisions[0]}
                    for layout in _list(a.layouts):
                        names[f"{layout}/{r}"] = {**common, "kind": "fused", "regime": r, "replicas": n,
                                                  "layout": layout, "precision": precisions[0]}
                w = worker(names, b)
                try:
                    ready = w.wait_ready()
                    res = interleave([w], a.rounds)
                finally:
                    w.close()
                got: dict[str, Any] = {name: median_ips(v) for name, v in res.items()}
                for r in regimes:
                    for layout in _list(a.layouts):
                        got[f"{layout}/trial {r}"] = median_ratio(res[f"{layout}/{r}"], res[f"trial/{r}"])
                got["setup_s"] = {name: i["setup_s"] for name, i in ready["info"].items()}
                return got
            measure("fused", f"N={n}", 90, fused)
    if "share" in parts:
        b = backends[0]
        for k in _list(a.shares, int):
            def share(k: int = k) -> dict[str, Any]:
                names = {r: {**common, "kind": "trial", "regime": r, "precision": precisions[0]} for r in regimes}
                ws = [worker({n: {**c, "seed": i} for n, c in names.items()}, b, gpu_fraction=1.0 / k)
                      for i in range(k)]
                try:
                    for w in ws:
                        w.wait_ready()
                    agg: dict[str, list[float]] = {r: [] for r in regimes}
                    for _ in range(a.rounds):
                        for r in regimes:  # all k trials train regime r at once
                            t0 = time.perf_counter()
                            for w in ws:
                                w._send({"cmd": "epoch", "name": r})
                            images = sum(w._recv()["results"][r]["images"] for w in ws)
                            agg[r].append(images / (time.perf_counter() - t0))
                finally:
                    for w in ws:
                        w.close()
                return {f"{r} aggregate": sorted(v)[len(v) // 2] for r, v in agg.items()}
            measure("share", f"k={k}", 60 + 15 * k, share)
        one = out.get("share", {}).get("k=1")
        for key, got in out.get("share", {}).items():
            if one and got and key != "k=1":
                got.update({f"{r} {key}/k=1": got[f"{r} aggregate"] / one[f"{r} aggregate"] for r in regimes})
    save()
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
