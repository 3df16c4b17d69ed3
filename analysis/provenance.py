"""Where a table or figure came from: the run directories, their spec hashes, this project's git
commit and the library versions that made it. Every output of ``analysis`` carries it, as a
``<file>.provenance.json`` sidecar and, for PNG/PDF, inside the file's metadata.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bnsweep.base.atomic import atomic_write_text

LIBRARIES = ("bnsweep", "pandas", "numpy", "pyarrow", "matplotlib", "keras", "tensorflow", "jax")


def _versions() -> dict[str, str]:
    import platform

    out = {"python": platform.python_version()}
    for pkg in LIBRARIES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def _sweep_info(run_dir: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"path": _portable(run_dir)}
    try:
        sweep = json.loads((run_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        sweep = {}
    for key in ("name", "spec_hash", "created", "git_commit"):
        info[key] = sweep.get(key)
    return info


def project_commit() -> str | None:
    """This project's git commit (``-dirty`` with uncommitted changes), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        from bnsweep.base.meta import git_commit  # the same format as sweep.json's git_commit
    except ImportError:  # pragma: no cover - fallback if the orchestrator's helper moves
        import subprocess

        try:
            return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None
    return git_commit(here)


def provenance(run_dirs: Iterable[str | Path] | str | Path) -> dict[str, Any]:
    """Provenance of an output made from ``run_dirs``: the runs (path, sweep name, spec hash,
    creation time and the commit they ran at), the analysing project's git commit (None outside
    git), library versions and the creation time of the output."""
    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(d) for d in run_dirs]
    runs = [_sweep_info(d) for d in dirs]
    return {
        "run_dirs": [r["path"] for r in runs],
        "runs": runs,
        "spec_hashes": sorted({r["spec_hash"] for r in runs if r["spec_hash"]}),
        "git_commit": project_commit(),
        "versions": _versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": "bnsweep analysis",
    }


def sidecar_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".provenance.json")


def write_sidecar(path: str | Path, prov: dict[str, Any]) -> Path:
    """Write ``prov`` next to ``path`` as ``<file>.provenance.json`` (atomically); returns it."""
    out = sidecar_path(path)
    atomic_write_text(out, json.dumps({"file": Path(path).name, **prov}, indent=1, default=str))
    return out


def figure_metadata(prov: dict[str, Any], *, title: str, fmt: str) -> dict[str, str]:
    """Matplotlib ``savefig(metadata=...)`` for PNG (free-form text chunks) or PDF (info dict)."""
    blob = json.dumps(prov, separators=(",", ":"), default=str)
    software = f"bnsweep analysis (commit {prov.get('git_commit') or 'unknown'})"
    if fmt == "png":
        return {"Title": title, "Software": software, "Source": " ".join(prov.get("run_dirs", [])),
                "Provenance": blob}
    if fmt == "pdf":
        return {"Title": title, "Creator": software, "Subject": blob,
                "Keywords": " ".join(prov.get("spec_hashes", []))}
    return {}


def _portable(run_dir: Path) -> str:
    """The run directory relative to the working directory where possible (figures get shared and
    committed: no machine-specific absolute paths), else as given."""
    try:
        return str(run_dir.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(run_dir)
