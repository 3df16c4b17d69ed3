"""Provenance facts: the time, the project's git commit, the versions of the libraries that shape a result.

>>> sorted(library_versions())[:1]
['bnsweep']
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from pathlib import Path


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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
