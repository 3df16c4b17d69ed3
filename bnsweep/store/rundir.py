"""The run directory: its layout (``RunDir``: every file name in one place), metadata, and the lock that
keeps two drivers out of one sweep.

```
RUN_DIR/                                 a local or NFS path, or a URI (s3://bucket/prefix, gs://..., fsspec)
  sweep.json  spec.yaml  optuna.db  ray/  wandb/offline-run-*  plots/
  trials/<trial_id>/seed-<seed>/{result.json, final_weights.npz, started.json, lost.json,
                                 checkpoint/state.json (progress while it runs)}
  results.{parquet,csv}  history.{parquet,csv}
```

Only the driver writes it. For a URI the driver works in a local copy (``RunDir.local``, a cache
directory keyed by the URI) and uploads each file it writes as one object, the results table last;
readers (``status``, ``export``, ``plot``, ``resume`` on a fresh machine) download what they need.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with RunLock(d): (d / ".lock").exists()
True
>>> rd = RunDir(d)
>>> rd.replicate("t1", 0).result.relative_to(d).as_posix(), rd.results_table("csv").name
('trials/t1/seed-0/result.json', 'results.csv')
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bnsweep.base.meta import now_iso
from bnsweep.store.fs import Location, LocationError, check_reachable, parse_location
from bnsweep.store.records import FAILURE_FILE, LOST_FILE, RESULT_FILE, START_FILE, STATE_FILE, WEIGHTS_FILE

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

    def __init__(self, run_dir: Path | RunDir) -> None:
        self.path = (run_dir.local if isinstance(run_dir, RunDir) else Path(run_dir)) / LOCK_NAME
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


def seed_dir(run_dir: Path | RunDir, trial_id: str, seed: int) -> Path:
    return RunDir.of(run_dir).replicate(trial_id, seed).dir


def read_sweep_json(run_dir: Path | RunDir) -> dict[str, Any]:
    rd = RunDir.of(run_dir)
    p = rd.sweep_json
    shown = rd.uri
    if not p.is_file():
        raise RunDirError(f"{shown}: not a bnsweep run directory (no sweep.json); "
                          "start one with `bnsweep launch SPEC`")
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError
        raise RunDirError(f"{rd.shown(p)}: unreadable ({type(e).__name__}: {e}); "
                          "the run directory is damaged") from None
    if not isinstance(info, dict):
        raise RunDirError(f"{rd.shown(p)}: expected a JSON object, found {type(info).__name__}; "
                          "the run directory is damaged")
    missing = [k for k in ("name", "spec_hash") if not isinstance(info.get(k), str)]
    if missing:
        raise RunDirError(f"{rd.shown(p)}: {', '.join(missing)} missing; the run directory is damaged")
    return info


# ============================================================================ the layout


@dataclasses.dataclass(frozen=True)
class ReplicateFiles:
    """One replicate's files (one trial configuration x one seed) in the driver's copy of the run directory."""

    dir: Path

    @property
    def result(self) -> Path:  # the final record: its presence means the replicate ended
        return self.dir / RESULT_FILE

    @property
    def weights(self) -> Path:
        return self.dir / WEIGHTS_FILE

    @property
    def started(self) -> Path:
        return self.dir / START_FILE

    @property
    def failure(self) -> Path:  # written by workers of older versions only; still read
        return self.dir / FAILURE_FILE

    @property
    def lost(self) -> Path:  # the driver could find neither a record nor a checkpoint of the replicate
        return self.dir / LOST_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return (self.dir / STATE_FILE).parent

    @property
    def state(self) -> Path:  # progress (epoch history) while it runs; copied by the driver from Ray's checkpoint
        return self.dir / STATE_FILE


class RunDir:
    """A run directory anywhere (local, NFS, object store), with every file name of its layout.

    ``local`` is the directory the driver reads and writes: the run directory itself when it is local,
    else a cache directory keyed by the URI (``$BNSWEEP_RUN_CACHE``, else ``$XDG_CACHE_HOME/bnsweep/runs``,
    else ``~/.cache/bnsweep/runs``). ``push`` uploads files of that copy to the store (one object each; a
    no-op for a local run directory), ``pull`` downloads the store's files into it.

    >>> rd = RunDir("/tmp/r")
    >>> rd.is_remote, rd.sweep_json.as_posix(), rd.rel(rd.history_table("parquet"))
    (False, '/tmp/r/sweep.json', 'history.parquet')
    """

    SWEEP_JSON = "sweep.json"
    SPEC_YAML = "spec.yaml"
    OPTUNA_DB = "optuna.db"
    RAY = "ray"  # Ray Tune's experiment (RunConfig name): state, searcher, trial dirs and their checkpoints
    WANDB = "wandb"
    TRIALS = "trials"
    PLOTS = "plots"
    LOCK = LOCK_NAME
    TABLES = ("results", "history")

    def __init__(self, location: str | os.PathLike[str] | Location, *, cache_root: Path | None = None) -> None:
        try:
            self.loc = location if isinstance(location, Location) else parse_location(location)
        except LocationError as e:  # the run directory's errors are RunDirErrors (one line, exit 2)
            raise RunDirError(str(e)) from None
        self.local = Path(self.loc.path) if self.loc.local else cache_dir_for(self.loc.uri, cache_root)

    @classmethod
    def of(cls, run_dir: str | os.PathLike[str] | RunDir) -> RunDir:
        return run_dir if isinstance(run_dir, RunDir) else cls(run_dir)

    def __repr__(self) -> str:
        return f"RunDir({self.uri!r})"

    @property
    def uri(self) -> str:
        """What the user typed, normalized (an absolute path, or scheme://bucket/prefix)."""
        return self.loc.uri

    @property
    def is_remote(self) -> bool:
        return not self.loc.local

    # ---------------------------------------------------------------- names (in the local copy)
    @property
    def sweep_json(self) -> Path:
        return self.local / self.SWEEP_JSON

    @property
    def spec_yaml(self) -> Path:
        return self.local / self.SPEC_YAML

    @property
    def optuna_db(self) -> Path:
        """The Optuna study: always on the driver's local disk (SQLite must not live on NFS or an object
        store); for a URI it is copied to the store after each finished trial (``publish_optuna_db``)."""
        return self.local / self.OPTUNA_DB

    @property
    def ray_dir(self) -> Path:  # a local run directory's Ray experiment (for a URI, see ray_storage)
        return self.local / self.RAY

    @property
    def wandb_dir(self) -> Path:
        return self.local / self.WANDB

    @property
    def trials_dir(self) -> Path:
        return self.local / self.TRIALS

    @property
    def plots_dir(self) -> Path:
        return self.local / self.PLOTS

    def results_table(self, fmt: str = "parquet") -> Path:
        return self.local / f"results.{fmt}"

    def history_table(self, fmt: str = "parquet") -> Path:
        return self.local / f"history.{fmt}"

    def table_files(self) -> list[Path]:
        return [self.local / f"{t}.{fmt}" for t in self.TABLES for fmt in ("parquet", "csv")]

    def replicate(self, trial_id: str, seed: int) -> ReplicateFiles:
        return ReplicateFiles(self.local / self.TRIALS / str(trial_id) / f"seed-{int(seed)}")

    def rel(self, p: Path) -> str:
        """``p`` (a file of the local copy) relative to the run directory, '/'-separated."""
        return Path(p).relative_to(self.local).as_posix()

    def shown(self, p: Path) -> str:
        """How to name the file ``p`` of the local copy to a user: its place in the run directory."""
        if not self.is_remote:
            return str(p)
        return f"{self.uri}/{self.rel(p)}"

    # ---------------------------------------------------------------- Ray Tune's storage
    def ray_storage(self) -> tuple[str, Any]:
        """(``RunConfig.storage_path``, ``storage_filesystem``) for Ray Tune: the run directory itself.
        With a filesystem the path must be *in* it ("bucket/prefix", never "s3://...": Ray refuses the
        pair); a local run directory passes no filesystem."""
        if not self.is_remote:
            return str(self.local), None
        return self.loc.path, self.loc.fs

    # ---------------------------------------------------------------- the store
    def check_reachable(self) -> None:
        try:
            check_reachable(self.loc, what="run directory")
        except LocationError as e:
            raise RunDirError(str(e)) from None

    def read_remote(self, rel: str) -> bytes | None:
        """The run directory's file ``rel`` as the store has it (the worker's read-only view), or None."""
        try:
            return self.loc.read_bytes(rel)
        except OSError:
            return None

    def exists_remote(self, rel: str) -> bool:
        try:
            return self.loc.exists(rel)
        except OSError:
            return False

    def push(self, paths: Iterable[Path]) -> None:
        """Upload files of the local copy to the store, each one object (a no-op for a local run dir)."""
        if not self.is_remote:
            return
        for p in paths:
            if p.is_file():
                self.loc.upload(p, self.rel(p))

    def push_tree(self, root: Path) -> None:
        """``push`` every file under ``root`` (a directory of the local copy)."""
        if self.is_remote and root.is_dir():
            self.push(sorted(q for q in root.rglob("*") if q.is_file() and not q.is_symlink()))

    def pull(self, *, prefixes: Iterable[str] = ("",), suffixes: tuple[str, ...] | None = None,
             refresh: Iterable[str] = ()) -> int:
        """Download the store's files under ``prefixes`` (ending in ``suffixes``) into the local copy:
        missing ones and those whose size differs, and always those named in ``refresh`` (files that
        change: the sweep's progress). Returns how many were written. A no-op for a local run dir."""
        if not self.is_remote:
            return 0
        from bnsweep.base.atomic import atomic_write_bytes

        always = set(refresh)
        n = 0
        for prefix in prefixes:
            if prefix and not prefix.endswith("/"):  # one file
                data = self.loc.read_bytes(prefix)
                if data is not None:
                    atomic_write_bytes(self.local / prefix, data)
                    n += 1
                continue
            listed = self.loc.list_files(prefix.rstrip("/"))
            if prefix == self.TRIALS + "/":  # the store is the truth: what it no longer has goes here too
                keep = {rel for rel, _ in listed}
                for q in sorted(self.trials_dir.rglob("*")) if self.trials_dir.is_dir() else []:
                    if q.is_file() and self.rel(q) not in keep and (suffixes is None or q.name.endswith(suffixes)):
                        q.unlink(missing_ok=True)
            for rel, size in listed:
                if rel == self.LOCK or rel.startswith(f"{self.RAY}/"):
                    continue  # the lock is not data; Ray's state is read by Ray through its storage
                if suffixes is not None and not rel.endswith(suffixes):
                    continue
                dest = self.local / rel
                fresh = rel in always or rel.endswith("/state.json")
                if dest.is_file() and dest.stat().st_size == size and not fresh:
                    continue
                data = self.loc.read_bytes(rel)
                if data is not None:
                    atomic_write_bytes(dest, data)
                    n += 1
        return n

    def pull_records(self) -> int:
        """The sweep's files and every replicate's records and progress (JSON only; not the weights)."""
        return self.pull(prefixes=(self.SWEEP_JSON, self.SPEC_YAML, self.TRIALS + "/"), suffixes=(".json", ".yaml"),
                         refresh=(self.SWEEP_JSON,))

    def delete_remote(self, rel: str) -> None:
        with contextlib.suppress(OSError):
            self.loc.delete(rel)


def cache_dir_for(uri: str, root: Path | None = None) -> Path:
    """The driver's local copy of the run directory ``uri``: one directory per URI."""
    if root is None:
        base = os.environ.get("BNSWEEP_RUN_CACHE")
        if base:
            root = Path(base)
        else:
            xdg = os.environ.get("XDG_CACHE_HOME")
            root = (Path(xdg) if xdg else Path.home() / ".cache") / "bnsweep" / "runs"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", uri.split("://", 1)[-1]).strip("-")[-60:] or "run"
    return Path(root) / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


# ============================================================================ the lock on an object store


LOCK_HEARTBEAT_S = 5.0  # the holder rewrites the lock object this often
LOCK_STALE_S = 30.0  # a lock not rewritten for this long belongs to a dead (or cut-off) driver
LOCK_SETTLE_S = 1.5  # after writing the lock, wait this long and read it back: the last writer wins


class ObjectLock:
    """The run-directory lock on an object store, where there is no ``flock`` and no atomic
    create-if-absent through pyarrow: a lock object (``RUN/.lock``) naming its owner (a random id, pid,
    host) and a heartbeat the holder rewrites every ``LOCK_HEARTBEAT_S`` seconds.

    To take it: read it; a fresh heartbeat of another owner means busy (a lock of a dead pid on this
    host, or whose heartbeat is older than ``LOCK_STALE_S``, is taken over); write ours; wait
    ``LOCK_SETTLE_S`` and read it back: of drivers that raced, only the last writer reads its own id
    (object stores are read-after-write consistent), the others are refused. Guaranteed: two drivers
    never both hold it unless one of them took longer than ``LOCK_SETTLE_S`` between its read and its
    write, or its heartbeat stalled for ``LOCK_STALE_S`` (a frozen machine); a holder that finds
    another owner in the lock at its heartbeat sets ``lost`` and warns. Not guaranteed: fencing of a
    frozen holder's later writes (that needs conditional writes, which pyarrow does not expose).
    """

    def __init__(self, rd: RunDir) -> None:
        self.rd = rd
        self.path = rd.local / LOCK_NAME  # for messages
        self.held = False
        self.lost = False
        self._owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict[str, Any] | None:
        blob = self.rd.read_remote(LOCK_NAME)
        if not blob:
            return None
        try:
            info = json.loads(blob)
        except ValueError:
            return None
        return info if isinstance(info, dict) else None

    def is_stale(self, info: dict[str, Any] | None) -> bool:
        if info is None:
            return True
        try:
            beat = float(info.get("heartbeat", 0))
            pid = int(info.get("pid", -1))
        except (TypeError, ValueError):
            return True
        if info.get("host") == socket.gethostname() and not _pid_alive(pid):
            return True
        return time.time() - beat > LOCK_STALE_S

    def is_held_elsewhere(self) -> bool:
        info = self.holder()
        return info is not None and info.get("owner") != self._owner and not self.is_stale(info)

    def _record(self) -> bytes:
        return json.dumps({"owner": self._owner, "pid": os.getpid(), "host": socket.gethostname(),
                           "started": getattr(self, "_started", now_iso()), "heartbeat": time.time()}).encode()

    def acquire(self) -> None:
        info = self.holder()
        if info is not None and not self.is_stale(info):
            raise self._busy(info)
        self._started = now_iso()
        try:
            self.rd.loc.put(LOCK_NAME, self._record())
        except OSError as e:
            raise RunDirError(f"{self.rd.uri}: cannot write to the run directory ({e}); check the bucket, the "
                              "credentials and the endpoint") from None
        time.sleep(LOCK_SETTLE_S)
        info = self.holder()
        if info is None or info.get("owner") != self._owner:
            raise self._busy(info)
        self.held = True
        self._thread = threading.Thread(target=self._heartbeat, name="bnsweep-lock", daemon=True)
        self._thread.start()

    def _busy(self, info: dict[str, Any] | None) -> RunDirError:
        if info:
            return RunDirError(f"{self.rd.uri}: in use by another bnsweep (pid {info.get('pid')} on "
                               f"{info.get('host')}, since {info.get('started')}); wait for it, or stop it first "
                               f"(a lock not renewed for {LOCK_STALE_S:g} s is taken over)")
        return RunDirError(f"{self.rd.uri}: in use by another bnsweep")

    def _heartbeat(self) -> None:
        import sys

        while not self._stop.wait(LOCK_HEARTBEAT_S):
            try:
                info = self.holder()
                if info is not None and info.get("owner") != self._owner:
                    if not self.lost:
                        print(f"warning: {self.rd.uri}: another bnsweep (pid {info.get('pid')} on {info.get('host')}) "
                              "took over this run directory's lock", file=sys.stderr)
                    self.lost = True
                    continue
                self.rd.loc.put(LOCK_NAME, self._record())
            except Exception:  # a store hiccup: try again at the next beat
                continue

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(LOCK_HEARTBEAT_S + 5)
        info = self.holder()
        if info is not None and info.get("owner") == self._owner:
            self.rd.delete_remote(LOCK_NAME)
        self.held = False

    def __enter__(self) -> ObjectLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_for(run_dir: Path | RunDir) -> RunLock | ObjectLock:
    """The lock of a run directory: ``flock`` on a local one, a heartbeat object on a store."""
    rd = RunDir.of(run_dir)
    return ObjectLock(rd) if rd.is_remote else RunLock(rd.local)
