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

import json
import os
import socket
from pathlib import Path
from typing import Any

from bnsweep.base.meta import now_iso

LOCK_NAME = ".lock"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked; the message says why and what to do."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory, so two drivers never run one sweep.

    ``flock`` on ``RUN_DIR/.lock``: the kernel drops it when the holder exits, however it exits
    (``kill -9`` included), so a lock left by a dead driver is taken over at once; the holder's pid,
    host and start time are written inside for the "in use" message. The file is removed on release.
    Where the filesystem cannot ``flock`` (some network filesystems) the pid inside decides: a lock
    naming a dead pid on this host is stale and taken over.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False
        self._fd: int | None = None

    def holder(self) -> dict[str, Any] | None:
        try:
            info = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def is_stale(self, info: dict[str, Any] | None) -> bool:
        """Whether the lock described by ``info`` no longer protects a live driver."""
        if info is None:
            return True
        state = _flock_state(self.path) if self._fd is None and self.path.exists() else "unknown"
        if state != "unknown":
            return state == "free"
        try:
            pid = int(info.get("pid", -1))
        except (TypeError, ValueError):
            return True
        return info.get("host") == socket.gethostname() and not _pid_alive(pid)

    def is_held_elsewhere(self) -> bool:
        """Whether another live driver holds the lock now (for ``status``)."""
        if not self.path.exists():
            return False
        return not self.is_stale(self.holder())

    def _busy(self, info: dict[str, Any] | None) -> RunDirError:
        if info:
            return RunDirError(f"{self.path.parent}: in use by another bnsweep (pid {info.get('pid')} on "
                               f"{info.get('host')}, since {info.get('started')}); wait for it, or stop it first")
        return RunDirError(f"{self.path.parent}: in use by another bnsweep")

    def acquire(self) -> None:
        import errno
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy(self.holder()) from None
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                self._acquire_by_pid()
                return
            try:  # the file we locked must still be the lock file (a releaser may have removed it)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": now_iso()}).encode())
            self._fd, self.held = fd, True
            return
        raise RunDirError(f"{self.path}: could not take the lock")

    def _acquire_by_pid(self) -> None:
        """Fallback without ``flock``: create the file exclusively; take over a dead pid's lock."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.holder()
                pid_dead = info is None or (info.get("host") == socket.gethostname()
                                            and not _pid_alive(int(info.get("pid", -1))))
                if pid_dead:
                    self.path.unlink(missing_ok=True)  # left by a killed driver
                    continue
                raise self._busy(info) from None
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso()}, f)
            self.held = True
            return
        raise RunDirError(f"{self.path}: could not take the lock")

    def release(self) -> None:
        if not self.held:
            return
        self.path.unlink(missing_ok=True)  # while still locked: the next taker re-checks the inode
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock_state(path: Path) -> str:
    """``"held"`` when some process holds an exclusive ``flock`` on ``path`` (this one's other fds
    included), ``"free"`` when nobody does, ``"unknown"`` where the file cannot be opened or the file
    system has no ``flock`` (some network file systems)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return "unknown"
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "free"
    except BlockingIOError:
        return "held"
    except OSError:
        return "unknown"
    finally:
        os.close(fd)


def seed_dir(run_dir: Path, trial_id: str, seed: int) -> Path:
    return Path(run_dir) / "trials" / trial_id / f"seed-{seed}"


def read_sweep_json(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / "sweep.json"
    if not p.is_file():
        raise RunDirError(f"{run_dir}: not a bnsweep run directory (no sweep.json); "
                          "start one with `bnsweep launch SPEC`")
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError
        raise RunDirError(f"{p}: unreadable ({type(e).__name__}: {e}); the run directory is damaged") from None
    if not isinstance(info, dict):
        raise RunDirError(f"{p}: expected a JSON object, found {type(info).__name__}; the run directory is damaged")
    missing = [k for k in ("name", "spec_hash") if not isinstance(info.get(k), str)]
    if missing:
        raise RunDirError(f"{p}: {', '.join(missing)} missing; the run directory is damaged")
    return info
