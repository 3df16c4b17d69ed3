"""Analysis of bnsweep run directories: paper tables and figures.

Reads only the results tables and the replicate records (``result.json``, ``final_weights.npz``)
of run directories, never Ray Tune's internals, and never writes into a run directory.

>>> from analysis import summarize, export, plot, format_count   # doctest: +SKIP
"""

from __future__ import annotations

from bnsweep.analysis.provenance import provenance, write_sidecar
from bnsweep.analysis.tables import export, load_runs, paired_difference, summarize

from bnsweep.base.text import format_count

__all__ = ["KINDS", "export", "format_count", "load_runs", "paired_difference", "plot", "provenance",
           "summarize", "write_sidecar"]

KINDS = ("params-vs-accuracy", "lr-curves", "batch-size", "gamma", "feature-maps", "filters")


def plot(*args, **kwargs):  # type: ignore[no-untyped-def]
    """``analysis.plots.plot`` (matplotlib is imported on first use)."""
    from bnsweep.analysis.plots import plot as _plot

    return _plot(*args, **kwargs)
