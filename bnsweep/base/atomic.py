"""Write-then-rename on a local filesystem: readers see the old file or the new one, never half.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
>>> atomic_write_text(p, "hello"); p.read_text()
'hello'
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from bnsweep.base.testhooks import pause_for_tests


def atomic_write(path: Path, write: Callable[[BinaryIO], Any], *, pause_point: str | None = None) -> None:
    """``write(binary_file)`` into a temporary sibling, fsync, rename over ``path``, fsync the directory:
    readers see the old file or the new one, never half; a failed write leaves the old file and no
    temporary one. ``pause_point`` is a test-only kill point between writing and renaming."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if pause_point:
            pause_for_tests(pause_point)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``atomic_write`` of a bytes object."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write`` of a UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def pickle_complete(p: Path) -> bool:
    """A pickle file that is there and whole (it ends with the STOP opcode; a torn one does not)."""
    try:
        with open(p, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 2:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"."
    except OSError:
        return False


ENVIRONMENT_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EIO: "input/output error",
                      errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system"}
_ENVIRONMENT_TEXTS = (("no space left on device", errno.ENOSPC), ("database or disk is full", errno.ENOSPC),
                      ("disk quota exceeded", errno.EDQUOT), ("disk i/o error", errno.EIO),
                      ("input/output error", errno.EIO), ("read-only file system", errno.EROFS),
                      ("[errno 28]", errno.ENOSPC), ("[errno 5]", errno.EIO))


def environment_fault(error: BaseException | str | None) -> str | None:
    """What fault of the machine (disk full, I/O error, quota, read-only) ``error`` is, through its causes
    (an Optuna or SQLAlchemy error over SQLite's "database or disk is full" included), or None: a fault of
    the environment, not of the trial's code, retried on ``resume`` once fixed.

    >>> environment_fault(OSError(28, "No space left on device"))
    'no space left on device'
    >>> environment_fault("OSError: [Errno 28] Error writing bytes to file"), environment_fault(ValueError("x"))
    ('no space left on device', None)
    """
    seen: set[int] = set()
    e: Any = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            return ENVIRONMENT_ERRNOS[e.errno]
        text = (e if isinstance(e, str) else str(e)).lower()
        for needle, code in _ENVIRONMENT_TEXTS:
            if needle in text:
                return ENVIRONMENT_ERRNOS[code]
        if isinstance(e, str):
            break
        e = e.__cause__ or e.__context__
    return None


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
