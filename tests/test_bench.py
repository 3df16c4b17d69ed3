"""bench/gpu.py runs every code path on this CPU in its --smoke mode (no GPU here: the numbers mean nothing,
the script working does), and bench/offline_keras.py knows what Keras needs on a JAX-only machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_smoke_runs_every_part_on_a_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=900,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["errors"] == [] and r["skipped"] == [], r["errors"]
    backends = r["backends"]
    assert backends[0] == "jax" and ("tensorflow" in backends) == (_has("tensorflow"))
    for b in backends:
        assert r["first"][b]["command_to_first_epoch_s"] > r["first"][b]["to_built_s"] > 0
        single = r["single"][b]
        assert single["accelerator"]["backend"] == b
        assert {"bn/float32", "bn/mixed_bfloat16"} <= set(single)
        assert single["bn: mixed_bfloat16/float32"] > 0
    fused = r["fused"]["N=2"]
    assert {"trial/bn", "grouped/bn", "separate/bn", "grouped/trial bn", "separate/trial bn"} <= set(fused)
    assert r["share"]["k=2"]["bn aggregate"] > 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_offline_keras_lists_what_keras_imports_on_jax():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import offline_keras
    finally:
        sys.path.pop(0)
    assert set(offline_keras.PURE) == {"keras", "rich", "markdown-it-py", "mdurl", "pygments", "absl-py"}
    assert set(offline_keras.BINARY) == {"optree"}
    # Keras on JAX starts without TensorFlow, h5py and namex (what the wheels leave out)
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('tensorflow', 'h5py', 'namex'): raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import keras\n"
            "from bnsweep.engine.fused_replicates import FusedTrialRun\n"
            "print(keras.backend.backend())")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0 and p.stdout.strip().endswith("jax"), p.stderr[-2000:]
