"""Item 2: BN-only vs all-trainable images/s, per backend, XLA on/off and BN implementation.

Every contender is a real ``bnsweep.engine.trial.TrialRun`` (ResNet-20, batch 128, the shared 5,085-image
CIFAR-10 subset, ``steps`` steps per measured epoch, validation off), interleaved round by round.
Reports images/s (median), the per-round-median ratios bn/all, fast/stock BN and XLA/no-XLA, and the
achieved GFLOP/s (``regimes.account(...).train_flops`` × images/s) against the CPU's fp32 peak.

    .venv/bin/python bench/regimes.py                       # TF: jit off/on × fast/stock BN; JAX
    .venv/bin/python bench/regimes.py --backends tensorflow --jit 0 --bn fast,stock --rounds 9
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Worker, cpu_info, interleave, machine, median_ips, median_ratio, spread, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="tensorflow,jax")
    p.add_argument("--regimes", default="all,bn")
    p.add_argument("--jit", default="0,1", help="TensorFlow jit_compile values to compare (JAX always jits)")
    p.add_argument("--bn", default="fast,stock", help="BatchNormalization: fast (bnsweep) and/or stock (Keras)")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="training steps per measured epoch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    p.add_argument("--json", help="write all measurements here")
    a = p.parse_args()

    from bnsweep.engine.regimes import account
    from bnsweep.spec.config import ModelConfig

    regimes, bns = a.regimes.split(","), a.bn.split(",")
    workers, names = [], []
    for backend in a.backends.split(","):
        jits = [bool(int(j)) for j in a.jit.split(",")] if backend == "tensorflow" else [True]
        contenders = {}
        for regime, jit, bn in itertools.product(regimes, jits, bns):
            if bn == "ops" and (backend != "tensorflow" or jit):
                continue  # the same code path as "fast" there (no backend kernel is used)
            name = f"{'tf' if backend == 'tensorflow' else 'jax'}{'-xla' if jit and backend == 'tensorflow' else ''}" \
                   f"/{bn}/{regime}"
            contenders[name] = {"kind": "trial", "regime": regime, "jit": jit, "bn": bn, "depth": a.depth,
                                "batch_size": a.batch_size, "steps": a.steps}
        workers.append(Worker(contenders, backend=backend, threads=a.threads))
        names += list(contenders)
    info = machine()
    print(f"machine: {info['cpu']}, load {info['loadavg']}", flush=True)
    try:
        for w in workers:
            print(f"  worker ready: {w.wait_ready()['info']}", flush=True)
        res = interleave(workers, a.rounds)
    finally:
        for w in workers:
            w.close()
    peak = cpu_info()["peak_fp32_gflops"]
    flops = {r: account(ModelConfig(depth=a.depth), r).train_flops for r in regimes}
    print(f"\nResNet-{a.depth}, batch {a.batch_size}, {a.rounds} rounds × {a.steps} steps; "
          f"peak fp32 {peak:.0f} GFLOP/s (assumed)")
    print(f"{'contender':28s} {'img/s':>7s} {'img/CPU-s':>9s} {'GFLOP/s':>8s} {'% peak':>7s}")
    summary: dict[str, dict[str, float]] = {}
    for n in names:
        regime = n.rsplit("/", 1)[1]
        ips = median_ips(res[n])
        g = ips * flops[regime] / 1e9
        summary[n] = {"ips": ips, "ips_cpu": median_ips(res[n], "ips_cpu"), "gflops": g,
                      "pct_peak": 100 * g / peak if peak else float("nan")}
        print(f"{n:28s} {ips:7.0f} {summary[n]['ips_cpu']:9.0f} {g:8.1f} {summary[n]['pct_peak']:6.1f}%")
    ratios = {}

    def ratio(label: str, x: str, y: str) -> None:
        if x in res and y in res:
            lo, hi = spread(res[x], res[y])
            ratios[label] = {"median": median_ratio(res[x], res[y]), "min": lo, "max": hi,
                             "median_cpu": median_ratio(res[x], res[y], "ips_cpu")}
            print(f"  {label:44s} {ratios[label]['median']:.2f}×  (rounds {lo:.2f}–{hi:.2f}; "
                  f"per CPU-second {ratios[label]['median_cpu']:.2f}×)")

    print("\nratios (median of per-round ratios):")
    prefixes = sorted({n.rsplit("/", 2)[0] for n in names})
    for pre in prefixes:
        for bn in bns:
            ratio(f"{pre}/{bn}: bn / all", f"{pre}/{bn}/bn", f"{pre}/{bn}/all")
    for pre in prefixes:
        for r in regimes:
            ratio(f"{pre}/{r}: fast BN / stock BN", f"{pre}/fast/{r}", f"{pre}/stock/{r}")
    for bn in bns:
        for r in regimes:
            ratio(f"{bn}/{r}: TF XLA / TF no-XLA", f"tf-xla/{bn}/{r}", f"tf/{bn}/{r}")
            ratio(f"{bn}/{r}: JAX / TF no-XLA", f"jax/{bn}/{r}", f"tf/{bn}/{r}")
    for r in regimes:
        ratio(f"{r}: best bnsweep (tf/fast) / stock Keras TF", f"tf/fast/{r}", f"tf/stock/{r}")
    write_json(a.json, {"machine": info, "args": vars(a), "summary": summary, "ratios": ratios, "raw": res})


if __name__ == "__main__":
    main()
