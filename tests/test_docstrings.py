"""The runnable examples in the modules' docstrings run and say what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["bnsweep.config", "bnsweep.models", "bnsweep.regimes", "bnsweep.schedules", "bnsweep.data",
           "bnsweep.spec", "bnsweep.space", "bnsweep.rundir", "bnsweep.plan", "bnsweep.status",
           "bnsweep.accelerators", "analysis.tables"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if name != "bnsweep.accelerators":
        assert result.attempted > 0, f"{name} has no runnable example"
