"""Backend set-up for one trial process: which backend (``resolve_backend``), threads, GPU memory per
trial (``configure_gpu_memory``), TPU strategy, a notice when a visible GPU would go unused
(``gpu_notice``), and a description of the device for the results table.

Only this module touches backend-specific APIs (``tensorflow``/``jax``); models, regimes, schedules
and the training step are pure Keras 3.

>>> describe_accelerator()["kind"] in ("cpu", "gpu", "tpu")
True
>>> resolve_backend("jax")
('jax', 'asked for')
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

_configured: dict[str, Any] = {}


# ---------------------------------------------------------------------- which backend


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this machine (``/dev/nvidia0`` or ``nvidia-smi`` on PATH), without
    starting any backend. ``CUDA_VISIBLE_DEVICES`` set to nothing (or -1) hides them."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def _distribution(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def jax_gpu_support() -> tuple[bool, str]:
    """(can JAX use an NVIDIA GPU, why), from what is installed; nothing is imported."""
    if _distribution("jax") is None:
        return False, "JAX is not installed"
    for plugin in ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-cuda12-pjrt", "jax-cuda13-pjrt"):
        if _distribution(plugin):
            return True, f"JAX has CUDA ({plugin} {_distribution(plugin)})"
    if "cuda" in (_distribution("jaxlib") or ""):
        return True, f"JAX has CUDA (jaxlib {_distribution('jaxlib')})"
    return False, "JAX is CPU-only (no jax-cuda plugin: pip install -e '.[gpu]')"


def tensorflow_gpu_support() -> tuple[bool, str]:
    """(can TensorFlow use an NVIDIA GPU, why), from its build information and the CUDA libraries it would
    load (pip ``nvidia-cudnn-cu12`` or a system cuDNN); TensorFlow is not imported."""
    import importlib.util

    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return False, "TensorFlow is not installed"
    info = Path(next(iter(spec.submodule_search_locations))) / "python" / "platform" / "build_info.py"
    try:
        text = info.read_text()
    except OSError:
        return False, "TensorFlow's build information is unreadable"
    if "'is_cuda_build', True" not in text:
        return False, "TensorFlow is built without CUDA"
    import ctypes.util

    if _distribution("nvidia-cudnn-cu12") or ctypes.util.find_library("cudnn"):
        return True, "TensorFlow has CUDA and finds cuDNN"
    return False, "TensorFlow finds no CUDA libraries (pip install 'tensorflow[and-cuda]')"


def resolve_backend(requested: str, *, strategy: str = "none") -> tuple[str, str]:
    """The Keras backend a trial runs on, and why. ``auto``: JAX/XLA where a GPU is visible and JAX can use
    it, otherwise TensorFlow (faster than JAX on a CPU, bench/RESULTS.md §2; TensorFlow's distribution
    strategies need it). Call it before Keras is imported (it imports no backend); in a process that
    already runs Keras, ``auto`` is that backend.

    >>> resolve_backend("auto", strategy="tpu")
    ('tensorflow', 'strategy tpu is a TensorFlow distribution strategy')
    """
    if requested != "auto":
        return requested, "asked for"
    if strategy != "none":
        return "tensorflow", f"strategy {strategy} is a TensorFlow distribution strategy"
    if "keras" in sys.modules:
        import keras

        return keras.backend.backend(), "this process already runs Keras on it"
    visible = gpu_visible()
    return choose_backend(gpu=visible, jax=jax_gpu_support() if visible else (False, ""),
                          tensorflow=tensorflow_gpu_support() if visible else (False, ""),
                          tensorflow_installed=_distribution("tensorflow") is not None)


def choose_backend(*, gpu: bool, jax: tuple[bool, str], tensorflow: tuple[bool, str],
                   tensorflow_installed: bool) -> tuple[str, str]:
    """``resolve_backend``'s rule for ``auto`` on the facts it found (``jax``/``tensorflow``: can it use a
    GPU, why).

    >>> choose_backend(gpu=True, jax=(True, "JAX has CUDA"), tensorflow=(True, ""), tensorflow_installed=True)
    ('jax', 'a GPU is visible and JAX has CUDA: JAX/XLA')
    >>> choose_backend(gpu=False, jax=(True, ""), tensorflow=(True, ""), tensorflow_installed=True)[0]
    'tensorflow'
    """
    if gpu:
        (jax_ok, jax_why), (tf_ok, tf_why) = jax, tensorflow
        if jax_ok:
            return "jax", f"a GPU is visible and {jax_why}: JAX/XLA"
        if tf_ok:
            return "tensorflow", f"a GPU is visible, {jax_why}, {tf_why}"
        why = f"a GPU is visible but neither backend can use it ({jax_why}; {tf_why})"
        return ("tensorflow" if tensorflow_installed else "jax"), why
    if tensorflow_installed:
        return "tensorflow", "no GPU visible: TensorFlow (faster than JAX on CPUs)"
    return "jax", "no GPU visible and TensorFlow is not installed"


def gpu_notice(backend: str, *, visible: bool | None = None, support: tuple[bool, str] | None = None) -> str | None:
    """One line for ``launch``/``plan`` when a GPU is visible here but ``backend`` cannot use it, else None.
    ``visible``/``support`` default to ``gpu_visible()`` and the backend's ``*_gpu_support()``.

    >>> gpu_notice("jax", visible=True, support=(False, "JAX is CPU-only"))
    "note: a GPU is visible but backend 'jax' cannot use it (JAX is CPU-only); trials will train on the CPU"
    >>> gpu_notice("jax", visible=False) is None
    True
    """
    if visible is None:
        visible = gpu_visible()
    if not visible:
        return None
    if backend == "auto":
        backend, _ = resolve_backend("auto")
    if support is None:
        support = jax_gpu_support() if backend == "jax" else tensorflow_gpu_support()
    ok, why = support
    if ok:
        return None
    return f"note: a GPU is visible but backend {backend!r} cannot use it ({why}); trials will train on the CPU"


def select_backend(backend: str, *, strategy: str = "none") -> str:
    """Set ``KERAS_BACKEND`` (``auto`` resolved by ``resolve_backend``) and import Keras (its start-up noise
    filtered, ``native_noise_filtered``); refuses to switch an already-imported Keras. Returns the backend."""
    if backend == "auto" or os.environ.get("KERAS_BACKEND") == "auto":
        backend, why = resolve_backend(backend, strategy=strategy)
        _configured["backend_choice"] = why
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise RuntimeError(
                f"backend: this process already runs Keras on {keras.backend.backend()!r}; "
                f"start a new process with KERAS_BACKEND={backend} to use {backend!r}")
        return backend
    os.environ["KERAS_BACKEND"] = backend
    with native_noise_filtered():
        import keras  # (TensorFlow / XLA print their start-up lines now)
    return backend


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
    if "gpu_memory" not in _configured:  # several trials per GPU: do not let one trial take the card's memory
        _configured["gpu_memory"] = {"memory_growth": True}
    _apply_tensorflow_gpu_memory()


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


# Share of a trial's GPU memory budget its allocator may use; the rest is for what the allocator does not
# count (the CUDA context, cuDNN/cuBLAS workspaces), so k trials of 1/k each fit on the card.
GPU_MEMORY_HEADROOM = 0.95


def gpu_total_mib() -> int | None:
    """Memory of the smallest GPU this process may use (``CUDA_VISIBLE_DEVICES``), from ``nvidia-smi``;
    None where there is none or it cannot tell. No backend is started."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        totals = {int(i): int(float(m)) for i, m in (line.split(",") for line in out.strip().splitlines())}
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [int(x) for x in visible.split(",") if x.strip().isdigit()]
        totals = {i: m for i, m in totals.items() if i in ids} or totals
    return min(totals.values()) if totals else None


def tensorflow_memory_plan(fraction: float | None, total_mib: int | None) -> dict[str, Any]:
    """What TensorFlow is told about GPU memory: a logical-device limit of fraction × total (× headroom), or
    memory growth where the trial has the whole GPU or the total is unknown.

    >>> tensorflow_memory_plan(0.25, 143771)
    {'memory_limit_mb': 34145}
    >>> tensorflow_memory_plan(None, 143771)
    {'memory_growth': True}
    """
    if fraction is None or fraction >= 1 or not total_mib:
        return {"memory_growth": True}
    return {"memory_limit_mb": int(fraction * total_mib * GPU_MEMORY_HEADROOM)}


def jax_memory_env(fraction: float | None) -> dict[str, str]:
    """The XLA client variables for a trial with ``fraction`` of a GPU: no preallocation, and an allocator
    capped at fraction × headroom of the GPU's memory (XLA's BFC allocator grows up to that cap).

    >>> jax_memory_env(0.25)
    {'XLA_PYTHON_CLIENT_PREALLOCATE': 'false', 'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.2375'}
    """
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if fraction is not None and fraction < 1:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction * GPU_MEMORY_HEADROOM:.4g}"
    return env


def configure_gpu_memory(fraction: float | None, *, environ: MutableMapping[str, str] | None = None,
                         total_mib: int | None = None) -> dict[str, Any]:
    """Bound this trial process's GPU memory to ``fraction`` of a GPU (Ray's ``resources.gpu``; None or 1:
    the whole GPU, allocated as needed), so k trials of 1/k share a card without starving each other.

    JAX: ``jax_memory_env`` into ``environ`` (default ``os.environ``). TensorFlow: ``tensorflow_memory_plan``
    (a logical-device memory limit, else memory growth), applied to every visible GPU when TensorFlow starts
    (``configure_threads``) or at once if it already has. Call it first thing in the trial process, before
    Keras is imported: a backend that has already initialized its GPU ignores it (listed under ``late``).
    Returns what was set.
    """
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"fraction: expected a number in (0, 1], received {fraction!r}")
    environ = os.environ if environ is None else environ
    jax_env = jax_memory_env(fraction)
    environ.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
    environ.update(jax_env)
    if total_mib is None and fraction is not None and fraction < 1:
        total_mib = gpu_total_mib()
    plan = tensorflow_memory_plan(fraction, total_mib)
    if "memory_growth" in plan:
        environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    _configured["gpu_memory"] = plan
    late = []
    if "jax" in sys.modules and _jax_started():
        late.append("jax had already started its backends")
    if "tensorflow" in sys.modules and not _apply_tensorflow_gpu_memory():
        late.append("tensorflow had already initialized its GPUs")
    return {"fraction": fraction, "jax": jax_env, "tensorflow": plan, "late": late}


def _jax_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # a JAX without that helper: assume it has
        return True


def _apply_tensorflow_gpu_memory() -> bool:
    """Apply ``configure_gpu_memory``'s plan to TensorFlow's GPUs; False where TensorFlow had started them."""
    plan = _configured.get("gpu_memory")
    if plan is None:
        return True
    import tensorflow as tf

    try:
        for gpu in tf.config.list_physical_devices("GPU"):
            if "memory_limit_mb" in plan:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=plan["memory_limit_mb"])])
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
    except (RuntimeError, ValueError):  # "cannot be modified after being initialized"
        return False
    return True


def describe_accelerator(**extra: Any) -> dict[str, Any]:
    """``{"kind": "cpu"|"gpu"|"tpu", "name": ..., "count": n, "backend": ..., "threads": n}`` for the running
    backend, plus ``extra`` (a trial adds its ``precision``) and, where ``backend: auto`` chose the backend,
    ``backend_choice`` (why); ``threads`` is the CPU threads this process trains with (TensorFlow's intra-op
    pool as it is set, not as it was asked for; ``None`` where unknown)."""
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
    out = {"kind": kind, "name": name, "count": count, "backend": backend, "threads": threads, **extra}
    if "backend_choice" in _configured:
        out["backend_choice"] = _configured["backend_choice"]
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
