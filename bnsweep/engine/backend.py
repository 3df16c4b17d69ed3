"""Backend set-up for one trial process: threads, GPU memory growth, TPU strategy, and a description
of the device for the results table.

Only this module touches backend-specific APIs (``tensorflow``/``jax``); models, regimes, schedules
and the training step are pure Keras 3.

>>> describe_accelerator()["kind"] in ("cpu", "gpu", "tpu")
True
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
from collections.abc import Iterator
from typing import Any

_configured: dict[str, Any] = {}


def select_backend(backend: str) -> None:
    """Set ``KERAS_BACKEND`` and import Keras (its start-up noise filtered, ``native_noise_filtered``);
    refuses to switch an already-imported Keras."""
    import sys

    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise RuntimeError(
                f"backend: this process already runs Keras on {keras.backend.backend()!r}; "
                f"start a new process with KERAS_BACKEND={backend} to use {backend!r}")
        return
    os.environ["KERAS_BACKEND"] = backend
    with native_noise_filtered():
        import keras  # (TensorFlow / XLA print their start-up lines now)


# What TensorFlow, XLA and absl print on every start, before any logging setting applies (TF 2.21 writes
# these from C++ before absl::InitializeLog, so TF_CPP_MIN_LOG_LEVEL cannot silence them): 9-11 lines of
# "cuInit failed" / oneDNN / CPU-feature notes in front of every command that trains.
_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|Could not find cuda drivers"
    r"|cpu_feature_guard|^To enable the following instructions|rebuild TensorFlow with the appropriate compiler"
    r"|failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered"
    r"|TF-TRT Warning|This TensorFlow binary is optimized|cudart_stub|Unable to initialize backend 'cuda'"
    r"|An NVIDIA GPU may be present on this machine")


@contextlib.contextmanager
def native_noise_filtered() -> Iterator[None]:
    """Run the block with file descriptor 2 (native code's stderr) going to a temporary file, then write the
    lines that are not known start-up noise (``_NOISE``) to stderr: errors still show, the notes do not.
    ``BNSWEEP_SHOW_NATIVE_LOGS=1`` turns the filter off.

    >>> import os
    >>> with native_noise_filtered():
    ...     _ = os.write(2, b"I0000 oneDNN custom operations are on.")  # not shown
    """
    if os.environ.get("BNSWEEP_SHOW_NATIVE_LOGS") == "1":
        yield
        return
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 (embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if line.strip() and not _NOISE.search(line)]
            if kept:
                with contextlib.suppress(OSError):
                    os.write(2, "".join(kept).encode())


def configure_threads(threads: int | None) -> None:
    """Intra-op threads = the trial's CPUs (TF ignores Ray's OMP_NUM_THREADS=1), inter-op 1.

    Must run before the backend starts its thread pools; later calls in the same process are no-ops.
    """
    if threads is None or _configured.get("threads") is not None:
        return
    import keras

    _configured["threads"] = threads
    if keras.backend.backend() == "tensorflow":
        with native_noise_filtered():  # the first device query prints "failed call to cuInit" without a GPU
            _configure_tensorflow_threads(threads)


def _configure_tensorflow_threads(threads: int) -> None:
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


def fused_batch_norm_kernel() -> Any:
    """TensorFlow's fused training-mode batch normalization, or ``None`` on other backends.

    Returns ``fn(x, gamma, beta, epsilon) -> (y, batch_mean, batch_variance)`` over all axes but the
    last (NHWC), the biased variance (what Keras' BatchNormalization puts in its moving variance),
    differentiable through TensorFlow's registered fused gradient (``FusedBatchNormV3`` /
    ``FusedBatchNormGradV3``: oneDNN on CPU, cuDNN on GPU, XLA under ``jit_compile``). One kernel per
    direction instead of a dozen element-wise passes: ~1.8× faster BN than the keras.ops closed form
    on a 2-core CPU (bench/README.md). ``bnsweep.engine.batchnorm`` uses it when available; the model stays
    backend-agnostic (JAX and any other backend use the keras.ops path). ``BNSWEEP_TF_FUSED_BN=0``
    turns it off.
    """
    import keras

    if keras.backend.backend() != "tensorflow" or os.environ.get("BNSWEEP_TF_FUSED_BN", "1") == "0":
        return None
    import tensorflow as tf

    def fused(x: Any, gamma: Any, beta: Any, epsilon: float) -> tuple[Any, Any, Any]:
        empty = tf.constant([], dtype=tf.float32)
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=float(epsilon),
            exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        n = tf.cast(tf.size(x) // tf.shape(x)[-1], variance.dtype)
        return y, mean, variance * ((n - 1.0) / tf.maximum(n, 1.0))  # the op returns the unbiased variance

    return fused


def gpu_memory_growth() -> None:
    """TensorFlow: allocate GPU memory as needed (fractional-GPU trials); JAX: no preallocation."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")


def describe_accelerator() -> dict[str, Any]:
    """``{"kind": "cpu"|"gpu"|"tpu", "name": ..., "count": n, "backend": ..., "threads": n}`` for the running
    backend; ``threads`` is the CPU threads this process trains with (TensorFlow's intra-op pool as it is
    set, not as it was asked for; ``None`` where unknown)."""
    import keras

    backend = keras.backend.backend()
    kind, name, count = "cpu", platform.processor() or platform.machine(), os.cpu_count() or 1
    threads = _configured.get("threads")
    with native_noise_filtered():  # a first device query prints cuInit/absl notes
        try:
            if backend == "jax":
                import jax

                devices = jax.devices()
                if devices and devices[0].platform != "cpu":
                    kind = "tpu" if devices[0].platform == "tpu" else "gpu"
                    name, count = devices[0].device_kind, len(devices)
            elif backend == "tensorflow":
                import tensorflow as tf

                threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()  # 0: all cores
                gpus = tf.config.list_logical_devices("GPU")
                tpus = tf.config.list_logical_devices("TPU")
                if tpus:
                    kind, name, count = "tpu", "TPU", len(tpus)
                elif gpus:
                    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
                    kind, name, count = "gpu", details.get("device_name", "GPU"), len(gpus)
        except Exception:  # describing must never fail a trial
            pass
    return {"kind": kind, "name": name, "count": count, "backend": backend, "threads": threads}


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
