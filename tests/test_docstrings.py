"""The runnable examples in every module's docstrings run and say what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import bnsweep

MODULES = sorted({m.name for m in pkgutil.walk_packages(bnsweep.__path__, "bnsweep.") if m.name != "bnsweep.__main__"}
                 | {"bnsweep.analysis.tables", "bnsweep.analysis.plots", "bnsweep.analysis.provenance",
                    "bnsweep.analysis.compare", "bnsweep.analysis.scorecard"})
# Modules whose examples need a trained model, a GPU, Ray or a terminal: documented, not run here.
NO_EXAMPLE = {
    "bnsweep", "bnsweep.base", "bnsweep.spec", "bnsweep.engine", "bnsweep.store", "bnsweep.sweep", "bnsweep.report",
    "bnsweep.analysis.plots", "bnsweep.analysis.provenance",
    "bnsweep.base.interrupts", "bnsweep.cli", "bnsweep.engine.fused_replicates", "bnsweep.engine.optimizers",
    "bnsweep.store.table", "bnsweep.store.tracking", "bnsweep.sweep.driver", "bnsweep.sweep.monitor",
    "bnsweep.sweep.options", "bnsweep.sweep.raystart", "bnsweep.sweep.recovery",
    "bnsweep.sweep.trainable",
}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if name not in NO_EXAMPLE:
        assert result.attempted > 0, f"{name} has no runnable example"
