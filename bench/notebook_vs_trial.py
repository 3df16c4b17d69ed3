"""Item 1: bnsweep's trial vs the notebooks' way of training, same network, regime and batch size.

* ``notebook``: plain ``model.fit`` on a host-side ``tf.data`` pipeline — float32 ``x / 255`` on the
  host, per-image ``dataset.map`` (tf.image pad to 40 + random 32-crop + random brightness ±0.5 +
  clip), shuffle, batch, prefetch; Keras' stock BatchNormalization; no XLA (``bench/_harness.py``,
  ``NotebookContender``).
* ``bnsweep``: ``bnsweep.engine.trial.TrialRun.train_epoch`` with ``data.augment: notebook`` and
  ``normalize: false`` (the same augmentation, on the uint8 arrays, inside the model), everything else
  as a sweep runs it (``jit_compile: auto``, fast BN, direct batch feeding).

Both train ResNet-20 (default) on the shared 5,085-image CIFAR-10 subset, ``--steps`` batches per
measured epoch, interleaved A, B, A, B in one process; the ratio is the median of per-round ratios.

    .venv/bin/python bench/notebook_vs_trial.py --rounds 7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Worker, interleave, machine, median_ips, median_ratio, spread, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regimes", default="all,bn")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="batches per measured epoch")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json")
    a = p.parse_args()
    common = {"depth": a.depth, "batch_size": a.batch_size, "steps": a.steps, "augment": "notebook",
              "normalize": False}
    contenders = {}
    for r in a.regimes.split(","):
        contenders[f"notebook/{r}"] = {**common, "kind": "notebook", "regime": r}
        contenders[f"bnsweep/{r}"] = {**common, "kind": "trial", "regime": r, "jit": "auto"}
    info = machine()
    print(f"machine: {info['cpu']}, load {info['loadavg']}", flush=True)
    w = Worker(contenders, threads=a.threads)
    try:
        print(f"  worker ready: {w.wait_ready()['info']}", flush=True)
        res = interleave([w], a.rounds)
    finally:
        w.close()
    print(f"\nResNet-{a.depth}, batch {a.batch_size}, {a.steps} steps per epoch, {a.rounds} rounds")
    summary = {n: {"ips": median_ips(v), "ips_cpu": median_ips(v, "ips_cpu")} for n, v in res.items()}
    for n, s in summary.items():
        print(f"  {n:16s} {s['ips']:6.0f} img/s  ({s['ips_cpu']:.0f} img per CPU-second)")
    ratios = {}
    for r in a.regimes.split(","):
        x, y = res[f"bnsweep/{r}"], res[f"notebook/{r}"]
        lo, hi = spread(x, y)
        ratios[r] = {"median": median_ratio(x, y), "min": lo, "max": hi, "median_cpu": median_ratio(x, y, "ips_cpu")}
        print(f"  {r}: bnsweep / notebook = {ratios[r]['median']:.2f}×  (rounds {lo:.2f}–{hi:.2f}; per CPU-second "
              f"{ratios[r]['median_cpu']:.2f}×)  target ≥ 1.10")
    write_json(a.json, {"machine": info, "args": vars(a), "summary": summary, "ratios": ratios, "raw": res})


if __name__ == "__main__":
    main()
