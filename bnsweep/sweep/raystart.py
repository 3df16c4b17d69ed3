"""Starting (or joining) Ray for a sweep: the trial workers' environment, the dashboard's port, the
object store's size, what a local Ray must not leak, and joining a cluster with its token.

Ray 2.60 clusters use token authentication: a driver joining with an explicit address needs the
cluster's token (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token``)
*and* ``RAY_AUTH_MODE=token`` (Ray only infers the mode for a local ``address="auto"``). ``launch
--address`` sets the mode when it finds a token, and asks the head once, quickly, whether it accepts
this driver, so a missing or wrong token is one line (what to set, where the token lives on the head)
instead of Ray's 20-second retry loop and a traceback.
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
    if options.address:
        check_can_join(options.address, prepare_token_auth())
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
        token = f"; {_token_hint()}" if options.address and "auth" in f"{type(e).__name__} {e}".lower() else ""
        raise RunDirError(f"{where}: Ray did not start ({type(e).__name__}: {first}){token}") from None
    return getattr(ctx, "dashboard_url", None) or None


# ------------------------------------------------------------------ joining a cluster: the token

TOKEN_ENV, TOKEN_PATH_ENV, AUTH_MODE_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"
JOIN_TIMEOUT_S = 10


def find_token(env: Any = None) -> tuple[str | None, str | None]:
    """(the token, where it was found) as Ray looks for it: ``$RAY_AUTH_TOKEN``, the file
    ``$RAY_AUTH_TOKEN_PATH`` names, ``~/.ray/auth_token``; (None, None) when there is none.

    >>> find_token({"RAY_AUTH_TOKEN": "ab12"})
    ('ab12', 'RAY_AUTH_TOKEN')
    >>> find_token({"RAY_AUTH_TOKEN_PATH": "/no/such/file", "HOME": "/no/such/home"})
    (None, None)
    """
    env = os.environ if env is None else env
    if env.get(TOKEN_ENV, "").strip():
        return env[TOKEN_ENV].strip(), TOKEN_ENV
    files = [Path(env[TOKEN_PATH_ENV]).expanduser()] if env.get(TOKEN_PATH_ENV) else []
    home = env.get("HOME") or (str(Path.home()) if env is os.environ else None)
    if home:
        files.append(Path(home) / ".ray" / "auth_token")
    for f in files:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            token = f.read_text().strip()
            if token:
                return token, str(f)
    return None, None


def prepare_token_auth() -> str | None:
    """Where this driver's token comes from (None: no token); sets ``RAY_AUTH_MODE=token`` for this
    process when a token is found and the mode is unset (a cluster without authentication ignores it)."""
    _, source = find_token()
    if source and not os.environ.get(AUTH_MODE_ENV):
        os.environ[AUTH_MODE_ENV] = "token"
        if "ray._raylet" in sys.modules:  # Ray caches its config when first read: re-read the environment
            with contextlib.suppress(Exception):
                from bnsweep.sweep import ray_compat

                ray_compat.reload_ray_config()
    return source


def _token_hint() -> str:
    return ("the token is on the head: `ray get-auth-token` there prints it (it is the file ~/.ray/auth_token of "
            "the user who ran `ray start --head`, or that start's RAY_AUTH_TOKEN); set RAY_AUTH_TOKEN to it here, "
            "or copy it into ~/.ray/auth_token")


def check_can_join(address: str, source: str | None, *, timeout_s: float = JOIN_TIMEOUT_S) -> None:
    """Ask the GCS at ``address`` (HOST:PORT, or ``auto``: the cluster started on this machine) once whether
    it accepts this driver; ``RunDirError`` in one line if it refuses the token or is no Ray head. Ray's
    own C++ warning about it is kept off the terminal. ``ray://`` (Ray Client) addresses are left to Ray."""
    if address.startswith("ray://"):
        return
    from bnsweep.sweep import ray_compat

    gcs = address
    if address == "auto":
        try:
            gcs = ray_compat.bootstrap_address("auto") or ""
        except Exception:
            gcs = ""
        if not gcs:
            return  # no cluster found here: ray.init says so
    with _stderr_swallowed():
        try:
            ray_compat.probe_gcs(gcs, timeout_s=timeout_s)
            return
        except ImportError:  # Ray's internals moved: let ray.init find out
            return
        except Exception as e:
            err = e
    name, text = type(err).__name__, _first(err)
    mode = os.environ.get(AUTH_MODE_ENV, "")
    if "Authentication" in name or "InvalidAuthToken" in text or "Unauthenticated" in text:
        if source is None:
            raise RunDirError(f"--address {address}: the Ray cluster there refused this driver: it uses token "
                              f"authentication and no token was found here ({TOKEN_ENV}, {TOKEN_PATH_ENV}, "
                              f"~/.ray/auth_token); {_token_hint()}") from None
        if mode.lower() not in ("", "token"):
            raise RunDirError(f"--address {address}: the Ray cluster there refused this driver: {AUTH_MODE_ENV}="
                              f"{mode} is set here, so the token (from {source}) is not sent; unset it or set "
                              f"{AUTH_MODE_ENV}=token") from None
        raise RunDirError(f"--address {address}: the Ray cluster there refused the token from {source}: it is not "
                          f"that cluster's token; {_token_hint()}") from None
    if "rpc_code: 12" in text or "UNIMPLEMENTED" in text.upper():
        raise RunDirError(f"--address {address}: something answers there, but not a Ray head's GCS ({name}: "
                          f"{text}); give the port of `ray start --head --port` (default 6379)") from None
    raise RunDirError(f"--address {address}: the Ray head did not accept this driver within {timeout_s:g} s "
                      f"({name}: {text}); is it a Ray {_ray_version()} head, and up?") from None


def _first(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300]


def _ray_version() -> str:
    try:
        import ray

        return ray.__version__
    except Exception:
        return "2.x"


@contextlib.contextmanager
def _stderr_swallowed():
    """File descriptor 2 goes to /dev/null meanwhile (C++ log lines are written there, not to sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


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
    """Ray Tune leaves checkpoint staging folders in the temp dir after a kill (seen with Ray 2.60)."""
    import tempfile

    for p in Path(tempfile.gettempdir()).glob("checkpoint_tmp_*"):
        shutil.rmtree(p, ignore_errors=True)
