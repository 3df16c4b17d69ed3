"""How to run a sweep (the command line's flags), as opposed to what to run (the spec), and how it ended."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LaunchOptions:
    """How to run a sweep (command-line flags), as opposed to what to run (the spec)."""

    run_dir: Path | str | None = None  # a path or URI; default runs/<spec name>
    address: str | None = None  # join a Ray cluster ("auto" or host:port); None: start a local Ray
    dashboard: bool = True
    dashboard_host: str = "127.0.0.1"  # anyone who reaches Ray's dashboard/job API can run code
    dashboard_port: int = 8265
    quiet: bool = False  # machine-readable JSON lines instead of the live display
    plain: bool = False  # plain lines even on a terminal, instead of the live display
    storage: str | None = None  # Optuna storage URL; default SQLite on the driver's disk (RunDir.optuna_db)
    num_cpus: int | None = None  # CPUs of the local Ray (default: all)
    num_gpus: int | None = None


@dataclass(frozen=True)
class Outcome:
    run_dir: Path | str  # a local path, or the run directory's URI
    finished: bool  # every configuration ended (completed, pruned, diverged, failed or lost)
    counts: dict[str, int]
    best: dict[str, Any] | None
    interrupted: bool = False  # not finished because a Ctrl-C or SIGTERM stopped it (else Ray Tune gave up early)

    @property
    def complete(self) -> bool:
        """Finished with nothing failed or lost (the CLI exits 0 only then; finished otherwise: 3)."""
        return self.finished and not self.counts.get("failed") and not self.counts.get("lost")
