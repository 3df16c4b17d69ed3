"""Starting (or joining) Ray for a sweep: the trial workers' environment, the dashboard's port, the
object store's size, and what a local Ray must not leak.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from bnsweep.base import interrupts
from bnsweep.store.rundir import RunDir, RunDirError
from bnsweep.sweep.options import LaunchOptions


def ray_env(run_dir: Path | RunDir, spec: Any) -> dict[str, str]:
    """The trial workers' environment. Caches go into a local run directory's ``.cache`` (nothing in the
    home directory); for a URI run directory, where no worker can write, each worker keeps its defaults
    (W&B's own go into the trial's scratch directory: store/tracking.py)."""
    rd = RunDir.of(run_dir)
    backend = spec.base_trial_config().get("backend", "tensorflow")
    env = {
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # several trials per GPU (JAX)
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",  # several trials per GPU (TensorFlow)
        "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
    }
    if not rd.is_remote:
        cache = rd.local / ".cache"
        env.update({"KERAS_HOME": str(cache / "keras"), "MPLCONFIGDIR": str(cache / "matplotlib"),
                    "WANDB_CACHE_DIR": str(cache / "wandb"), "WANDB_CONFIG_DIR": str(cache / "wandb-config"),
                    "WANDB_DATA_DIR": str(cache / "wandb-data")})
    # WANDB_API_KEY is never put here: Ray keeps the runtime env in its job table, which the dashboard
    # shows and its logs print. A local Ray's workers inherit it from this process's environment; on a
    # cluster (--address), set it (or `wandb login`) on the nodes.
    from bnsweep.sweep.trainable import TEST_FAULTS_ENV

    for key in ("BNSWEEP_DATA", "BNSWEEP_CACHE", "WANDB_MODE", "WANDB_BASE_URL", TEST_FAULTS_ENV):
        if key in os.environ:
            env[key] = os.environ[key]
    if "WANDB_API_KEY" not in os.environ:
        env.setdefault("WANDB_MODE", "offline")
    return env


def start_ray(run_dir: Path | RunDir, spec: Any, options: LaunchOptions, data_bytes: int) -> str | None:
    import ray

    if ray.is_initialized():  # an embedding program (or the test suite) already started Ray
        return None
    env = ray_env(run_dir, spec)
    os.environ.update({k: v for k, v in env.items() if k.startswith("WANDB_")})
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                              "logging_level": "ERROR", "configure_logging": True}
    try:
        with interrupts.deferred("stopping once Ray has started"):  # a half-started Ray can crash on shutdown
            if options.address:
                ctx = ray.init(address=options.address, **kwargs)
            else:
                ctx = ray.init(
                    num_cpus=options.num_cpus, num_gpus=options.num_gpus,
                    include_dashboard=options.dashboard, dashboard_host=options.dashboard_host,
                    dashboard_port=dashboard_port(options),
                    object_store_memory=max(100 << 20, 2 * data_bytes + (64 << 20)),  # data once + headroom
                    **kwargs)
        interrupts.reassert()  # Ray installs its own SIGTERM handler (a crash dump, exit 1)
    except (ConnectionError, ValueError, TimeoutError, RuntimeError) as e:
        with contextlib.suppress(Exception):
            ray.shutdown()
        where = f"--address {options.address}" if options.address else "the local Ray"
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise RunDirError(f"{where}: Ray did not start ({type(e).__name__}: {first})") from None
    return getattr(ctx, "dashboard_url", None) or None


def dashboard_port(options: LaunchOptions) -> int:
    """The requested dashboard port, or a free one if it is taken (another sweep's Ray on this machine):
    Ray would otherwise log an error and run without its dashboard (or, with --no-dashboard, still log
    the error: its API server starts anyway)."""
    import socket

    host = options.dashboard_host if options.dashboard else "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, options.dashboard_port))
            return options.dashboard_port
        except OSError:
            pass
    try:
        with socket.socket(family) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    except OSError:  # not an address of this machine: let Ray say so
        return options.dashboard_port
    if options.dashboard:
        print(f"note: port {options.dashboard_port} is taken (another Ray?); the dashboard uses {port}",
              file=sys.stderr)
    return port


def keep_credentials_out_of_ray_logs() -> None:
    """Ray Tune copies AWS credentials from the driver's environment into every trial actor's runtime env,
    which Ray's runtime-env agent then writes, in clear, to its log. A local Ray's workers inherit this
    process's environment anyway, so the copy only leaks them: stop it."""
    from bnsweep.sweep.ray_compat import stop_propagating_aws_env

    with contextlib.suppress(Exception):
        stop_propagating_aws_env()


def cleanup_ray_staging() -> None:
    """Ray Tune leaves checkpoint staging folders in the temp dir after a kill (DESIGN.md)."""
    import tempfile

    for p in Path(tempfile.gettempdir()).glob("checkpoint_tmp_*"):
        shutil.rmtree(p, ignore_errors=True)
