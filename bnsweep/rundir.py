"""The run directory: its layout, metadata, and the lock that keeps two drivers out of one sweep.

```
runs/<sweep>/
  sweep.json  spec.yaml  optuna.db  ray/  wandb/
  trials/<trial_id>/seed-<seed>/{checkpoint/, result.json, final_weights.npz, failure.json}
  results.{parquet,csv}  history.{parquet,csv}
```

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with RunLock(d): (d / ".lock").exists()
True
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked; the message says why and what to do."""


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    """Write-then-rename (with fsync): readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def git_commit(start: Path | None = None) -> str | None:
    """The project's git commit (``-dirty`` if it has uncommitted changes), or None outside git."""
    here = start or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock file with stale-lock detection (dead pid on this host)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def is_stale(self, info: dict[str, Any] | None) -> bool:
        if info is None:
            return True
        return info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1)))

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.holder()
                if self.is_stale(info):
                    self.path.unlink(missing_ok=True)  # left by a killed driver
                    continue
                raise RunDirError(
                    f"{self.path.parent}: in use by another bnsweep (pid {info.get('pid')} on "
                    f"{info.get('host')}, since {info.get('started')}); wait for it, or stop it first"
                    if info else f"{self.path.parent}: in use by another bnsweep") from None
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso()}, f)
            self.held = True
            return
        raise RunDirError(f"{self.path}: could not take the lock")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def seed_dir(run_dir: Path, trial_id: str, seed: int) -> Path:
    return Path(run_dir) / "trials" / trial_id / f"seed-{seed}"


def read_sweep_json(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / "sweep.json"
    if not p.is_file():
        raise RunDirError(f"{run_dir}: not a bnsweep run directory (no sweep.json); "
                          "start one with `bnsweep launch SPEC`")
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise RunDirError(f"{p}: unreadable ({e}); the run directory is damaged") from None
