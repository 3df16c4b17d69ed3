"""Item 2: where a TensorFlow training step's time goes, per op category (TensorFlow profiler).

Profiles ``--steps`` steps of a real ``TrialRun`` per regime (after a warm-up epoch) and sums the
kernel time per op type from the trace (``tensorflow.tsl`` XPlane), grouped into convolution forward /
input gradient / weight gradient, batch normalization, other element-wise, preprocessing and rest.
``--bn stock`` profiles Keras' own BatchNormalization instead of bnsweep's.

    .venv/bin/python bench/profile_step.py --regimes all,bn
    .venv/bin/python bench/profile_step.py --regimes all,bn --bn stock
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import SUBSET, machine, write_json

CATEGORIES = [
    ("conv weight gradient", ("Conv2DBackpropFilter",)),
    ("conv input gradient", ("Conv2DBackpropInput",)),
    ("conv forward", ("Conv2D",)),
    ("batch norm (fused kernels)", ("FusedBatchNorm",)),
    ("preprocessing", ("Einsum", "OneHot", "Pad", "ReverseV2", "StatelessRandom", "SelectV2")),
    ("element-wise / reductions", ("Mul", "Add", "Sub", "Mean", "Sum", "SquaredDifference", "Tile", "Relu",
                                   "Rsqrt", "Neg", "Square", "Maximum", "BroadcastTo", "RealDiv", "Cast")),
    ("variables / optimizer", ("VariableOp", "AssignSub", "AssignAdd", "ReadVariable")),
]


def category(op: str) -> str:
    for name, keys in CATEGORIES:
        if any(k in op for k in keys):
            return name
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regimes", default="all,bn")
    p.add_argument("--bn", default="fast", choices=["fast", "ops", "stock"])
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--json")
    a = p.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from bnsweep.engine.batchnorm import use_fast_batchnorm, use_stock_batchnorm
    from bnsweep.engine.data import load_data
    from bnsweep.engine.trial import TrialRun
    from bnsweep.spec.config import DataConfig

    data = load_data(DataConfig(source="npz", path=str(SUBSET), val_size=0))
    info = machine()
    out: dict[str, dict[str, Any]] = {}
    for regime in a.regimes.split(","):
        run = TrialRun({"model": {"depth": a.depth}, "regime": regime, "batch_size": a.batch_size, "epochs": 100,
                        "steps_per_epoch": a.steps, "data": {"source": "npz", "path": str(SUBSET), "val_size": 0}},
                       data=data)
        if a.bn == "stock":
            use_stock_batchnorm(run.model)
        elif a.bn == "ops":
            use_fast_batchnorm(run.model, backend_kernel=False)
        run.train_epoch()
        with tempfile.TemporaryDirectory() as d:
            tf.profiler.experimental.start(d)
            m = run.train_epoch()
            tf.profiler.experimental.stop()
            space = xplane_pb2.XSpace()
            space.ParseFromString(Path(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0]).read_bytes())
        per_op: collections.Counter = collections.Counter()
        for plane in space.planes:
            names = {k: md.name for k, md in plane.event_metadata.items()}
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for e in line.events:
                    op = names.get(e.metadata_id, "?")
                    if op.startswith("Executor") or op.startswith("Threadpool"):
                        continue  # containers, not kernels
                    per_op[op] += e.duration_ps / 1e9 / a.steps  # ms per step
        cats: collections.Counter = collections.Counter()
        for op, ms in per_op.items():
            cats[category(op)] += ms
        total = sum(cats.values())
        out[regime] = {"ms_per_step": dict(cats), "kernel_ms_per_step": total, "images_per_sec": m.images_per_sec,
                       "top_ops": dict(per_op.most_common(12))}
        print(f"\n{regime} ({a.bn} BN): {m.images_per_sec:.0f} img/s while profiling; kernel time {total:.0f} ms/step "
              f"(wall {a.batch_size / m.images_per_sec * 1000:.0f} ms/step)")
        for c, ms in cats.most_common():
            print(f"  {c:28s} {ms:7.1f} ms/step  {100 * ms / total:5.1f}%")
    if len(out) == 2 and "all" in out and "bn" in out:
        print(f"\nkernel time all / bn = {out['all']['kernel_ms_per_step'] / out['bn']['kernel_ms_per_step']:.2f}")
    write_json(a.json, {"machine": info, "args": vars(a), "profile": out})


if __name__ == "__main__":
    main()
