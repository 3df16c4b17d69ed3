"""Analysis of bnsweep run directories: paper tables and figures.

Reads only the results tables and the replicate records (``result.json``, ``final_weights.npz``)
of run directories, never Ray Tune's internals, and never writes into a run directory.

>>> from bnsweep.analysis import summarize, export, compare, scorecard, plot   # doctest: +SKIP
"""

from __future__ import annotations

from bnsweep.analysis.compare import compare, comparison_table
from bnsweep.analysis.provenance import provenance, write_sidecar
from bnsweep.analysis.scorecard import scorecard, scorecard_table
from bnsweep.analysis.tables import best_configurations, export, load_runs, paired_difference, summarize

from bnsweep.base.text import format_count

__all__ = ["KINDS", "best_configurations", "compare", "comparison_table", "export", "format_count", "load_runs",
           "paired_difference", "plot", "provenance", "scorecard", "scorecard_table", "summarize", "write_sidecar"]

KINDS = ("params-vs-accuracy", "lr-curves", "batch-size", "gamma", "feature-maps", "filters")


def plot(*args, **kwargs):  # type: ignore[no-untyped-def]
    """``analysis.plots.plot`` (matplotlib is imported on first use)."""
    from bnsweep.analysis.plots import plot as _plot

    return _plot(*args, **kwargs)
