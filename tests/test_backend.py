"""Backend choice and GPU memory per trial (bnsweep/engine/backend.py), tested as far as a machine without a
GPU allows: the rules on given facts, the environment and TensorFlow settings they produce, and what this
machine resolves to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnsweep.engine import backend
from bnsweep.engine.backend import (
    choose_backend,
    configure_gpu_memory,
    gpu_notice,
    jax_memory_env,
    resolve_backend,
    tensorflow_memory_plan,
)
from bnsweep.spec.config import TrialConfig
from bnsweep.spec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
HAS_GPU = backend.gpu_visible()


def _python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter (Keras not imported yet); its last stdout line is JSON."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


CUDA_JAX, CPU_JAX = (True, "JAX has CUDA (jax-cuda12-plugin 0.10.2)"), (False, "JAX is CPU-only")
CUDA_TF, CPU_TF = (True, "TensorFlow has CUDA and finds cuDNN"), (False, "TensorFlow is built without CUDA")


@pytest.mark.parametrize(("gpu", "jax", "tf", "installed", "expected"), [
    (True, CUDA_JAX, CUDA_TF, True, "jax"),  # a GPU: JAX/XLA first
    (True, CPU_JAX, CUDA_TF, True, "tensorflow"),  # ... unless only TensorFlow can use it
    (True, CPU_JAX, CPU_TF, True, "tensorflow"),  # neither can: the CPU default
    (True, CPU_JAX, CPU_TF, False, "jax"),
    (False, CUDA_JAX, CUDA_TF, True, "tensorflow"),  # no GPU: TensorFlow (faster on CPUs)
    (False, CPU_JAX, CPU_TF, False, "jax"),  # ... where it is installed
])
def test_auto_backend_rule(gpu, jax, tf, installed, expected):
    chosen, why = choose_backend(gpu=gpu, jax=jax, tensorflow=tf, tensorflow_installed=installed)
    assert chosen == expected and why


def test_explicit_backends_and_strategies_are_not_second_guessed():
    assert resolve_backend("jax") == ("jax", "asked for")
    assert resolve_backend("tensorflow") == ("tensorflow", "asked for")
    assert resolve_backend("auto", strategy="mirrored")[0] == "tensorflow"
    assert TrialConfig(backend="auto", strategy="tpu").backend == "auto"
    with pytest.raises(ConfigError, match="strategy"):
        TrialConfig(backend="jax", strategy="tpu")


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU: the no-GPU resolution does not apply")
def test_auto_resolves_to_tensorflow_before_keras_starts_without_a_gpu():
    r = _python("import json, sys; from bnsweep.engine.backend import resolve_backend; "
                "b = resolve_backend('auto'); print(json.dumps([*b, 'keras' in sys.modules]))")
    assert r == ["tensorflow", "no GPU visible: TensorFlow (faster than JAX on CPUs)", False]


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_a_trial_with_backend_auto_trains_on_tensorflow_and_says_why_without_a_gpu():
    code = ("import json; from bnsweep.engine.trial import run; "
            "r = run({'backend': 'auto', 'model': {'depth': 8}, 'epochs': 1, 'batch_size': 8, "
            "'steps_per_epoch': 1, 'data': {'source': 'synthetic', 'synthetic_size': 8, 'val_size': 8, "
            "'test_size': 8}}); print(json.dumps(r.accelerator))")
    acc = _python(code, KERAS_BACKEND="auto")  # as a worker whose environment says auto
    assert acc["backend"] == "tensorflow" and acc["backend_choice"].startswith("no GPU visible")


def test_the_notice_names_what_keeps_a_visible_gpu_unused():
    assert gpu_notice("jax", visible=False) is None
    assert gpu_notice("jax", visible=True, support=CUDA_JAX) is None
    line = gpu_notice("jax", visible=True, support=CPU_JAX)
    assert line == ("note: a GPU is visible but backend 'jax' cannot use it (JAX is CPU-only); "
                    "trials will train on the CPU")
    assert "TensorFlow is built without CUDA" in gpu_notice("tensorflow", visible=True, support=CPU_TF)
    assert "\n" not in line


def test_what_this_machine_finds_about_gpu_support():
    jax_ok, jax_why = backend.jax_gpu_support()
    tf_ok, tf_why = backend.tensorflow_gpu_support()
    assert jax_why and tf_why and isinstance(jax_ok, bool) and isinstance(tf_ok, bool)
    if not HAS_GPU:
        assert gpu_notice("jax") is None and gpu_notice("tensorflow") is None  # nothing to warn about
    hidden = subprocess.run([sys.executable, "-c", "from bnsweep.engine.backend import gpu_visible; "
                             "print(gpu_visible())"], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}, timeout=120)
    assert hidden.stdout.strip() == "False"


def test_gpu_memory_fraction_sets_the_allocators_without_a_gpu():
    env: dict[str, str] = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9"}
    got = configure_gpu_memory(0.25, environ=env, total_mib=143_771)
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert float(env["XLA_PYTHON_CLIENT_MEM_FRACTION"]) == pytest.approx(0.25 * backend.GPU_MEMORY_HEADROOM)
    assert got["tensorflow"] == {"memory_limit_mb": int(0.25 * 143_771 * backend.GPU_MEMORY_HEADROOM)}
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in env  # a hard limit instead of growth
    # four 0.25-GPU trials fit on the card, with room for what the allocators do not count
    assert 4 * got["tensorflow"]["memory_limit_mb"] < 143_771
    whole: dict[str, str] = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"}
    assert configure_gpu_memory(None, environ=whole)["tensorflow"] == {"memory_growth": True}
    assert whole == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    assert tensorflow_memory_plan(0.5, None) == {"memory_growth": True}  # total unknown: growth
    assert jax_memory_env(1.0) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    for bad in (0, 1.5, -0.1, "half"):
        with pytest.raises(ValueError, match="fraction"):
            configure_gpu_memory(bad, environ={})  # type: ignore[arg-type]


def test_gpu_memory_is_configured_before_keras_in_a_trial_process_without_a_gpu():
    code = ("import json, os; from bnsweep.engine.backend import configure_gpu_memory; "
            "got = configure_gpu_memory(0.25, total_mib=80000); "
            "from bnsweep.engine.trial import TrialRun; "
            "r = TrialRun({'model': {'depth': 8}, 'epochs': 1, 'batch_size': 8, 'steps_per_epoch': 1, "
            "'data': {'source': 'synthetic', 'synthetic_size': 8, 'val_size': 0, 'test_size': 8}}); "
            "m = r.train_epoch(); "
            "print(json.dumps({'got': got, 'frac': os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION'], "
            "'loss': m.train_loss}))")
    r = _python(code)
    assert r["got"]["late"] == [] and r["got"]["tensorflow"] == {"memory_limit_mb": 19000}
    assert r["frac"] == "0.2375" and r["loss"] > 0
