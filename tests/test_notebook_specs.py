"""The notebook reproductions under ``sweeps/notebook_*.yaml``: each trains the notebooks' own network
(the bottleneck "ResNet20", exact counts in ``plan``) with the notebooks' recipe, and differs from its
notebook only where the notebook was wrong (validation on test, BN frozen into inference mode)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnsweep.cli import main
from bnsweep.spec.config import TrialConfig
from bnsweep.spec.sweep_spec import load_spec
from bnsweep.sweep.space import grid_points, resolve_trial_config

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
# spec -> (regimes, optimizer, lr, batch sizes, training images)
NOTEBOOKS = {
    "notebook_subset": ({"all", "bn"}, "sgd", 0.01, {128}, 10_000),
    "notebook_full": ({"all", "bn"}, "sgd", 0.01, {128}, None),
    "notebook_full_tpu": ({"all", "bn"}, "sgd", 0.01, {1024}, None),
    "notebook_adam": ({"all", "bn"}, "adam", 0.001, {1024}, None),
    "notebook_batch_sizes": ({"bn"}, "adam", 0.001, {256, 512, 1024, 2048}, None),
    "notebook_all_frozen": ({"none"}, "sgd", 0.01, {128}, None),
}
COUNTS = {"all": 571_114, "bn": 4_000, "none": 0}


def _configs(name: str) -> list[dict]:
    spec = load_spec(SWEEPS / f"{name}.yaml")
    points = grid_points(spec.parameters)
    return [TrialConfig.from_dict(resolve_trial_config(spec, p, seed=0)).to_dict() for p in points]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_specs_train_the_notebooks_network_and_recipe(name):
    regimes, opt, lr, batches, train = NOTEBOOKS[name]
    configs = _configs(name)
    assert {c["regime"] for c in configs} == regimes and {c["batch_size"] for c in configs} == batches
    for c in configs:
        assert c["model"] == {"arch": "idiomatic_bottleneck", "depth": 20, "width": 1, "gamma_init": "ones",
                              "num_classes": 10}
        o = c["optimizer"]
        assert (o["name"], o["weight_decay"]) == (opt, 0.0) and c["lr"] == lr and c["lr_scaling"] == "none"
        assert opt == "adam" or o["momentum"] == 0  # Keras' SGD(): no momentum
        assert c["lr_schedule"] == {"type": "constant"} and c["epochs"] == 75
        assert (c["data"]["augment"], c["data"]["normalize"]) == ("notebook", False)
        assert c["data"]["val_size"] > 0  # validation carved from the training images, never the test set
        if train is not None:
            assert c["data"]["train_size"] - c["data"]["val_size"] == train
        else:
            assert c["data"]["train_size"] is None and c["data"]["test_size"] is None


def test_plan_shows_the_notebooks_exact_counts(capsys):
    capsys.readouterr()
    assert main(["plan", str(SWEEPS / "notebook_subset.yaml"), "--no-probe", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    got = {m["regime"]: (m["arch"], m["total"], m["trainable"], m["bn"]) for m in plan["models"]}
    assert got == {r: ("idiomatic_bottleneck", 575_114, COUNTS[r], 4_000) for r in ("all", "bn")}
    assert main(["plan", str(SWEEPS / "notebook_subset.yaml"), "--no-probe"]) == 0
    text = capsys.readouterr().out
    assert "Bottleneck-20 W=1 all" in text and "575K" in text and "571K" in text
