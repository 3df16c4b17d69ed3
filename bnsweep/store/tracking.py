"""Weights & Biases tracking: one W&B run per trial replicate, one summary run per sweep; never in the way.

```python
tracker = TrialTracker.start(tracking=TrackingConfig(), run_dir=Path("runs/lr_schedules"),
                             sweep="lr_schedules", trial_id="t0007", seed=1, group=config_hash,
                             config=flat_config)
for m in history:
    tracker.log_epoch(dataclasses.asdict(m), epoch=m.epoch)
tracker.finish({"test_accuracy": 0.71, ...}, status="completed")
```

**Modes.** ``TrackingConfig.mode="auto"`` (the default) logs online only when an API key is configured
(``WANDB_API_KEY``/``WANDB_IDENTITY_TOKEN_FILE`` in the environment, or a ``~/.netrc`` entry for the
W&B host, read with wandb's own helper); otherwise it writes offline runs. An explicit ``WANDB_MODE``
in the environment is honoured in ``auto``. ``wandb: false`` or ``mode: disabled`` turns tracking into
a no-op that never imports wandb.

**Where files go.** A trial's runs are written where the trial runs (``run_dir`` is then the trial's
scratch directory on its worker); finished, each offline run travels in the trial's checkpoint through
Ray's storage and the driver copies it into the sweep's run directory (``RUN_DIR/wandb/offline-run-*``,
on an object store too: download it, then ``wandb sync``). Everything lands in ``run_dir``: runs in
``<run_dir>/wandb/offline-run-*``
(or ``run-*`` when online), and wandb's cache, config and data directories (artifact staging, the
``wandb-core`` debug log) in ``<run_dir>/wandb/.cache``, ``.config`` and ``.data``, unless
``WANDB_CACHE_DIR``/``WANDB_CONFIG_DIR``/``WANDB_DATA_DIR`` are already set. Nothing goes to
``~/.cache``, ``~/.config`` or ``~/.local/share``. (Because of that, a custom server chosen with
``wandb login --host`` — stored in ``~/.config/wandb/settings`` — is not seen: set ``WANDB_BASE_URL``.)

**Uploading offline runs later**, from a machine with network access and a key (``wandb login``)::

    wandb sync runs/<sweep>/wandb/offline-run-*          # every trial replicate and the summary run
    wandb sync --dry-run runs/<sweep>/wandb/offline-run-*  # list what would be uploaded
    wandb sync --project other --entity team runs/<sweep>/wandb/offline-run-*  # somewhere else

``wandb sync`` skips runs it has already uploaded. Artifact files (the summary run's tables and plots)
are staged in ``runs/<sweep>/wandb/.data`` and referenced by absolute path: sync before moving the
run directory, or sync from the same path.

**Failures never propagate.** A missing or broken wandb, a bad key, no network, an init that takes
longer than ``TrackingConfig.init_timeout``, or any other W&B error is reported once per process (a
``TrackingWarning`` naming the reason) and W&B is then switched off for the rest of the process (no
more init timeouts to pay per trial): the failed tracker and every tracker started after that are
no-ops (runs already going in the same process carry on). ``tracking_failure()`` says why. Secrets
are scrubbed from configs, summaries and the recorded command line before anything reaches wandb.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from bnsweep.spec.tracking import TrackingConfig  # the spec's `tracking:` section, one definition

__all__ = ["TrackingConfig", "TrackingWarning", "TrialTracker", "log_sweep_summary", "resolve_mode", "scrub_secrets",
           "tracking_failure"]

log = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    """``TrackingConfig`` (the spec's ``tracking:`` section) is loaded on first use: importing this module stays
    fast (no pydantic, no wandb) for processes that never track."""
    if name == "TrackingConfig":
        from bnsweep.spec.tracking import TrackingConfig

        return TrackingConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

MASK = "***"


class TrackingWarning(RuntimeWarning):
    """W&B could not be used; training goes on without it."""


# --------------------------------------------------------------------------------------------- secrets

_SECRET_KEY = re.compile(r"api[_-]?key|token|secret|passw(or)?d|credential|private[_-]?key|access[_-]?key",
                         re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)[^@\s/]+@")


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def _known_secrets() -> list[str]:
    """Secret values from the environment that must never be logged (long enough to match safely)."""
    out = []
    for name, value in os.environ.items():
        if (name == "WANDB_API_KEY" or _is_secret_key(name)) and value and len(value) >= 8:
            out.append(value)
    return out


def _scrub_str(s: str, secrets: Sequence[str]) -> str:
    s = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + "@", s)
    for value in secrets:
        if value in s:
            s = s.replace(value, MASK)
    return s


def scrub_secrets(obj: Any) -> Any:
    """A copy of ``obj`` with secrets masked: values under keys that look like credentials
    (``WANDB_API_KEY``, ``api_key``, ``*token*``, ``*secret*``, ``*password*``, ...) become ``"***"``,
    passwords in URLs (``postgresql://user:***@host/db``) are masked, and so is any string containing
    the value of a secret environment variable (e.g. the configured W&B API key). Dicts, lists and
    tuples are walked recursively; nothing is modified in place."""
    return _scrub(obj, _known_secrets())


def _scrub(obj: Any, secrets: Sequence[str]) -> Any:
    if isinstance(obj, Mapping):
        return {k: (MASK if _is_secret_key(k) and v is not None else _scrub(v, secrets)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        items = [_scrub(v, secrets) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, str):
        return _scrub_str(obj, secrets)
    return obj


def _scrub_argv(argv: Sequence[str], secrets: Sequence[str]) -> list[str]:
    """``--api-key KEY``/``--token=KEY``/URL passwords/known secret values masked."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        if arg.startswith("-") and _is_secret_key(arg.split("=", 1)[0]):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=" + MASK)
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(_scrub_str(arg, secrets))
    return out


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only (numpy scalars, Paths, dataclasses... become numbers or strings)."""
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj  # NaN/inf are fine for wandb
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_jsonable(v) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy / jax arrays
    if callable(tolist) and bool(getattr(obj, "ndim", False)):
        with contextlib.suppress(Exception):
            return _jsonable(tolist())
    item = getattr(obj, "item", None)  # numpy / jax scalars
    if callable(item):
        with contextlib.suppress(Exception):
            v = item()
            if isinstance(v, bool | int | float | str):
                return v
    try:
        return json.loads(json.dumps(obj, default=str))
    except (TypeError, ValueError):
        return str(obj)


# --------------------------------------------------------------------------------------------- failure state

_lock = threading.RLock()
_failure: str | None = None  # why W&B was switched off in this process


def _fail(reason: str) -> None:
    """Switch W&B off for this process and warn once (with the reason, secrets masked)."""
    global _failure
    reason = _scrub_str(" ".join(str(reason).split()), _known_secrets())[:500]
    with _lock:
        first = _failure is None
        if first:
            _failure = reason
    if not first:
        log.debug("W&B error after tracking was switched off: %s", reason)
        return
    message = (f"W&B tracking switched off for this process: {reason}. Training goes on; "
               "nothing more is logged to W&B.")
    try:
        warnings.warn(message, TrackingWarning, stacklevel=3)
    except Exception:  # warnings configured as errors: still never raise
        log.warning(message)


def tracking_failure() -> str | None:
    """The reason W&B was switched off in this process, or None while it is usable."""
    return _failure


def _reset_for_tests() -> None:
    global _failure
    with _lock:
        _failure = None


# --------------------------------------------------------------------------------------------- mode

_DEFAULT_BASE_URL = "https://api.wandb.ai"


def _base_url() -> str:
    url = os.environ.get("WANDB_BASE_URL")
    if url:
        return url.rstrip("/")
    try:
        from wandb.sdk.lib.urls import DEFAULT_BASE_URL

        return str(DEFAULT_BASE_URL)
    except Exception:
        return _DEFAULT_BASE_URL


def api_key_configured() -> bool:
    """An API key (or identity token file) in the environment, or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = _base_url()
    reader: Any = None
    with contextlib.suppress(Exception):
        from wandb.sdk.lib.wbauth import read_netrc_auth as reader  # wandb's own (same file, same host rules)
    if reader is not None:
        try:
            return bool(reader(host=host))
        except Exception as e:  # malformed key or host: not usable
            log.debug("netrc check failed: %s", e)
            return False
    import netrc
    from urllib.parse import urlsplit

    try:
        path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
        creds = netrc.netrc(path).authenticators(urlsplit(host).netloc)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(creds and creds[2])


def resolve_mode(tracking: TrackingConfig) -> Literal["online", "offline", "disabled"]:
    """What ``tracking`` means here and now (``auto`` looks at the environment and netrc)."""
    if not tracking.wandb or tracking.mode == "disabled":
        return "disabled"
    if tracking.mode in ("online", "offline"):
        return tracking.mode  # type: ignore[return-value]
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode in ("offline", "dryrun"):
        return "offline"
    if env_mode == "disabled" or os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1"):
        return "disabled"
    if env_mode == "online":
        return "online"
    return "online" if api_key_configured() else "offline"


# --------------------------------------------------------------------------------------------- wandb plumbing

_WANDB_DIRS = {"WANDB_CACHE_DIR": ".cache", "WANDB_CONFIG_DIR": ".config", "WANDB_DATA_DIR": ".data"}


@contextlib.contextmanager
def _wandb_env(run_dir: Path) -> Iterator[None]:
    """Point wandb's directories into ``run_dir/wandb`` (unless set by the user) and keep it quiet;
    the environment is restored afterwards. Holds the module lock (os.environ is process-wide)."""
    with _lock:
        wdir = run_dir / "wandb"
        wanted = {"WANDB_DIR": str(run_dir), "WANDB_SILENT": "true"}
        for name, sub in _WANDB_DIRS.items():
            if not os.environ.get(name):
                wanted[name] = str(wdir / sub)
        saved = {k: os.environ.get(k) for k in wanted}
        try:
            os.environ.update(wanted)
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@contextlib.contextmanager
def _scrubbed_argv() -> Iterator[None]:
    """wandb records ``sys.argv`` in the run's metadata; hide secrets given on the command line."""
    saved = sys.argv
    try:
        sys.argv = [*saved[:1], *_scrub_argv(saved[1:], _known_secrets())]
        yield
    finally:
        sys.argv = saved


def _settings(wandb: Any, tracking: TrackingConfig) -> Any:
    wanted: dict[str, Any] = {
        "init_timeout": float(tracking.init_timeout),
        "console": "off",  # no stdout/stderr capture
        "x_disable_stats": True,  # no system-metrics sampling thread
        "_disable_stats": True,  # older spelling
        "silent": True,
        "save_code": False,
        "login_timeout": float(tracking.init_timeout),
    }
    base_url = os.environ.get("WANDB_BASE_URL")
    if base_url:  # wandb snapshots the environment at its first setup: pass what may have changed since
        wanted["base_url"] = base_url
    fields = getattr(wandb.Settings, "model_fields", None)
    if fields is not None:
        wanted = {k: v for k, v in wanted.items() if k in fields}
    else:  # pragma: no cover - very old wandb
        wanted = {k: v for k, v in wanted.items() if not k.startswith("_")}
    return wandb.Settings(**wanted)


def _init(tracking: TrackingConfig, mode: str, run_dir: Path, **kwargs: Any) -> Any:
    """``wandb.init`` with our settings, bounded by ``init_timeout``; raises on any failure."""
    wandb = _import_wandb()

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "wandb").mkdir(exist_ok=True)
    with _scrubbed_argv():
        run = wandb.init(project=tracking.project, entity=tracking.entity, dir=str(run_dir), mode=mode,
                         settings=_settings(wandb, tracking), reinit="create_new", **kwargs)
    if run is None or type(run).__name__ in ("RunDisabled", "PreInitObject"):
        raise RuntimeError("wandb.init returned no run")
    return run


class _WandbImportError(RuntimeError):
    pass


def _import_wandb() -> Any:
    try:
        import wandb
    except Exception as e:  # ImportError, or a broken install failing at import time
        raise _WandbImportError(f"wandb could not be imported ({type(e).__name__}: {e})") from e
    return wandb


def _describe(e: Exception, what: str) -> str:
    return str(e) if isinstance(e, _WandbImportError) else f"{what} failed ({type(e).__name__}: {e})"


def _precheck(tracking: TrackingConfig) -> str | None:
    """The wandb mode to use, or None for a no-op (disabled, or switched off after a failure)."""
    if not tracking.wandb or tracking.mode == "disabled" or _failure is not None:
        return None
    try:
        mode = resolve_mode(tracking)
    except Exception as e:
        _fail(f"could not decide the W&B mode ({type(e).__name__}: {e})")
        return None
    if mode == "disabled":
        return None
    if mode == "online" and not api_key_configured():
        _fail("mode is online but no W&B API key is configured (WANDB_API_KEY or `wandb login`); "
              "use mode offline or auto")
        return None
    return mode


def _safe_name(s: str) -> str:
    """An artifact name: letters, digits, '-', '_', '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "sweep"


# --------------------------------------------------------------------------------------------- trials


class TrialTracker:
    """One W&B run for one trial replicate. Every method is a no-op when tracking is off or broken,
    and none of them raises."""

    def __init__(self, run: Any = None, run_dir: Path | None = None) -> None:
        self._run = run
        self.run_dir = run_dir
        self._pending: Any = None  # the Future of a start in the background (start_in_background)
        self._sync_dir: Path | None = None  # where this run's files are (the ``wandb sync`` path)
        if run is not None:
            with contextlib.suppress(Exception):
                self._sync_dir = Path(run.settings.sync_dir)

    @property
    def active(self) -> bool:
        self._wait()
        return self._run is not None

    @property
    def sync_dir(self) -> Path | None:
        self._wait()
        return self._sync_dir

    @classmethod
    def start_in_background(cls, **kwargs: Any) -> TrialTracker:
        """``start`` on a background thread, off the trial's critical path (``wandb.init`` takes 0.3–2.5 s,
        the first in a process the longest; the model builds meanwhile). The tracker's methods wait for it.

        >>> from bnsweep.spec.tracking import TrackingConfig
        >>> t = TrialTracker.start_in_background(tracking=TrackingConfig(wandb=False), run_dir=Path("."),
        ...                                      sweep="s", trial_id="t", seed=0, group="g", config={})
        >>> t.active
        False
        """
        if _precheck(kwargs["tracking"]) is None:
            return cls()
        tracker = cls()
        tracker._pending = _starter().submit(cls.start, **kwargs)
        return tracker

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            started = pending.result()
        except Exception as e:  # start never raises; a broken thread pool must not either
            _fail(_describe(e, "wandb.init"))
            return
        self._run, self.run_dir, self._sync_dir = started._run, started.run_dir, started._sync_dir

    @classmethod
    def start(cls, *, tracking: TrackingConfig, run_dir: Path, sweep: str, trial_id: str, seed: int,
              group: str, config: dict[str, Any], tags: Sequence[str] = ()) -> TrialTracker:
        """Start the W&B run ``{trial_id}-seed{seed}`` in group ``{tracking.group or sweep}/{group}`` (replicates of
        one configuration share ``group``, the config hash without the seed), tagged ``tracking.tags``."""
        mode = _precheck(tracking)
        if mode is None:
            return cls()
        run_dir = Path(run_dir).absolute()
        try:
            with _wandb_env(run_dir):
                run = _init(tracking, mode, run_dir, name=f"{trial_id}-seed{seed}",
                            group=f"{tracking.group or sweep}/{group}", job_type="trial",
                            config=_jsonable(scrub_secrets(dict(config))),
                            tags=[str(t) for t in (*tracking.tags, *tags)] or None)
        except Exception as e:
            _fail(_describe(e, "wandb.init"))
            return cls()
        return cls(run, run_dir)

    def log_epoch(self, metrics: Mapping[str, float], *, epoch: int) -> None:
        """Log one epoch's metrics at step ``epoch`` (1-based, as in ``EpochMetrics.epoch``)."""
        self._wait()
        if self._run is None:
            return
        try:
            data = _jsonable(scrub_secrets(dict(metrics)))
            data["epoch"] = int(epoch)
            assert self.run_dir is not None
            with _wandb_env(self.run_dir):
                self._run.log(data, step=int(epoch))
        except Exception as e:
            self._abandon(f"wandb log failed ({type(e).__name__}: {e})")

    def finish(self, summary: Mapping[str, Any], *, status: str) -> None:
        """Write the final summary (plus ``status``) and close the run. Idempotent."""
        self._wait()
        run, self._run = self._run, None
        if run is None:
            return
        try:
            assert self.run_dir is not None
            with _wandb_env(self.run_dir):
                values = _jsonable(scrub_secrets(dict(summary)))
                values["status"] = status
                run.summary.update(values)
                with contextlib.suppress(Exception):
                    run.tags = (*tuple(run.tags or ()), str(status))
                run.finish(exit_code=1 if status == "failed" else 0)
        except Exception as e:
            _fail(f"wandb finish failed ({type(e).__name__}: {e})")

    def _abandon(self, reason: str) -> None:
        run, self._run = self._run, None
        _fail(reason)
        if run is not None and self.run_dir is not None:
            with contextlib.suppress(Exception), _wandb_env(self.run_dir):
                run.finish(exit_code=1)

    def __enter__(self) -> TrialTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._wait()
        if self._run is not None:
            self.finish({"reason": f"{exc_type.__name__}: {exc}"} if exc_type else {},
                        status="failed" if exc_type else "completed")

    def __repr__(self) -> str:
        return f"TrialTracker(active={self.active}, sync_dir={self.sync_dir})"


_pool: Any = None
_pool_lock = threading.Lock()  # not _lock: a start in the background holds that one while wandb.init runs


def _starter() -> Any:
    """One background thread per process for W&B starts (in order; ``_wandb_env`` serializes the rest)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnsweep-wandb-start")
        return _pool


# --------------------------------------------------------------------------------------------- the sweep


def _read_table(path: Path) -> Any:
    import pandas as pd

    from bnsweep.store.table import TEXT_DTYPES

    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=TEXT_DTYPES)  # a trial id of digits only stays text


def log_sweep_summary(*, tracking: TrackingConfig, run_dir: Path, sweep: str, table_paths: list[Path],
                      plot_paths: list[Path], config: dict[str, Any]) -> None:
    """One run named ``sweep-summary`` (job type ``summary``, group ``{sweep}``) holding the results
    tables (each as a ``wandb.Table``) and the plots (``wandb.Image`` for PNG/JPEG), plus an artifact
    ``{sweep}-results`` of type ``results`` with all the files. Never raises."""
    mode = _precheck(tracking)
    if mode is None:
        return
    run_dir = Path(run_dir).absolute()
    tables = [Path(p) for p in table_paths if Path(p).is_file()]
    plots = [Path(p) for p in plot_paths if Path(p).is_file()]
    missing = [str(p) for p in [*table_paths, *plot_paths] if not Path(p).is_file()]
    if missing:
        log.warning("sweep summary: skipping missing files %s", missing)
    try:
        with _wandb_env(run_dir):
            wandb = _import_wandb()
            run = _init(tracking, mode, run_dir, name="sweep-summary", group=tracking.group or sweep,
                        job_type="summary", config=_jsonable(scrub_secrets(dict(config))),
                        tags=[*tracking.tags, sweep, "summary"])
            try:
                data: dict[str, Any] = {}
                for p in [*tables, *plots]:  # one unreadable file costs its panel, not the summary
                    try:
                        if p in tables:  # over wandb.Table.MAX_ROWS (10k) rows: truncated; the artifact is whole
                            data[f"tables/{p.stem}"] = wandb.Table(dataframe=_read_table(p))
                        elif p.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif"):
                            data[f"plots/{p.stem}"] = wandb.Image(str(p), caption=p.name)
                    except Exception as e:
                        log.warning("sweep summary: %s not logged as a W&B %s (%s: %s); it is in the artifact",
                                    p, "table" if p in tables else "image", type(e).__name__, e)
                if data:
                    run.log(data)
                artifact = wandb.Artifact(_safe_name(f"{sweep}-results"), type="results",
                                          description=f"results tables and plots of sweep {sweep}",
                                          metadata={"sweep": sweep, "tables": [p.name for p in tables],
                                                    "plots": [p.name for p in plots]})
                used: set[str] = set()
                for p in [*tables, *plots]:
                    name = _artifact_path(p, run_dir)
                    if name in used:  # two files of the same name from different places
                        name = f"{p.parent.name}/{name}"
                    used.add(name)
                    artifact.add_file(str(p), name=name)
                run.log_artifact(artifact)
                run.summary.update({"tables": len(tables), "plots": len(plots)})
            except BaseException:
                with contextlib.suppress(Exception):
                    run.finish(exit_code=1)
                raise
            run.finish()
    except Exception as e:
        _fail(_describe(e, "the W&B sweep summary"))


def _artifact_path(p: Path, run_dir: Path) -> str:
    try:
        return p.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return p.name
