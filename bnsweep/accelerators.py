"""Backend set-up for one trial process: threads, GPU memory growth, TPU strategy, and a description
of the device for the results table.

Only this module touches backend-specific APIs (``tensorflow``/``jax``); models, regimes, schedules
and the training step are pure Keras 3.

>>> describe_accelerator()["kind"] in ("cpu", "gpu", "tpu")
True
"""

from __future__ import annotations

import os
import platform
from typing import Any

_configured: dict[str, Any] = {}


def select_backend(backend: str) -> None:
    """Set ``KERAS_BACKEND`` before Keras is imported; refuses to switch an already-imported Keras."""
    import sys

    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise RuntimeError(
                f"backend: this process already runs Keras on {keras.backend.backend()!r}; "
                f"start a new process with KERAS_BACKEND={backend} to use {backend!r}")
        return
    os.environ["KERAS_BACKEND"] = backend


def configure_threads(threads: int | None) -> None:
    """Intra-op threads = the trial's CPUs (TF ignores Ray's OMP_NUM_THREADS=1), inter-op 1.

    Must run before the backend starts its thread pools; later calls in the same process are no-ops.
    """
    if threads is None or _configured.get("threads") is not None:
        return
    import keras

    _configured["threads"] = threads
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # the TF runtime is already initialized in this process
            pass
        try:  # several trials per GPU: do not let one trial take the card's memory
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass


def gpu_memory_growth() -> None:
    """TensorFlow: allocate GPU memory as needed (fractional-GPU trials); JAX: no preallocation."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")


def describe_accelerator() -> dict[str, Any]:
    """``{"kind": "cpu"|"gpu"|"tpu", "name": ..., "count": n}`` for the running backend."""
    import keras

    backend = keras.backend.backend()
    kind, name, count = "cpu", platform.processor() or platform.machine(), os.cpu_count() or 1
    try:
        if backend == "jax":
            import jax

            devices = jax.devices()
            if devices and devices[0].platform != "cpu":
                kind = "tpu" if devices[0].platform == "tpu" else "gpu"
                name, count = devices[0].device_kind, len(devices)
        elif backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_logical_devices("GPU")
            tpus = tf.config.list_logical_devices("TPU")
            if tpus:
                kind, name, count = "tpu", "TPU", len(tpus)
            elif gpus:
                details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
                kind, name, count = "gpu", details.get("device_name", "GPU"), len(gpus)
    except Exception:  # describing must never fail a trial
        pass
    return {"kind": kind, "name": name, "count": count, "backend": backend}


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a result (for provenance)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("keras", "tensorflow", "jax", "numpy", "ray", "optuna", "bnsweep"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def distribution_scope(strategy: str) -> Any:
    """The scope a model must be built and compiled in: nothing, MirroredStrategy, or TPUStrategy."""
    import contextlib

    if strategy == "none":
        return contextlib.nullcontext()
    import tensorflow as tf

    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy().scope()
    found = tpu_strategy()
    if found is None:
        raise RuntimeError("strategy: 'tpu' was asked for but no TPU was found (run on a TPU VM, or set "
                           "strategy: none)")
    return found.scope()


def tpu_strategy() -> Any:
    """A ``tf.distribute.TPUStrategy`` for a TPU VM / Colab TPU, or ``None`` where there is no TPU.

    Untestable on the project's machines (no TPU); the TPU path is the notebooks' recipe.
    """
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, tf.errors.NotFoundError):
        return None
