"""The experiment catalogue under ``sweeps/``: every spec plans, and each asks what it says it asks.

Every spec (``base/`` excluded) must pass ``bnsweep plan --no-probe --json``; the science is checked
on the resolved trial configs (what would train), not on the YAML text: the notebooks' recipe with
its schedules in epochs (the CosineDecay-reaches-0-after-1,000-steps bug cannot recur), the paper's
recipe elsewhere, the Fig. 2 depth/width grid, all eight regimes, the TPU variant. One test runs
``plan`` with its speed probe (a few real training steps).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bnsweep.cli import main
from bnsweep.spec.config import REGIMES, TrialConfig
from bnsweep.spec.schedules import parse_schedule, planned_lr
from bnsweep.spec.sweep_spec import OneOf, SweepSpec, Values, load_spec
from bnsweep.sweep.space import grid_points, resolve_trial_config

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"
BASE = SWEEPS / "base"
SPECS = sorted(SWEEPS.glob("*.yaml"))
# Specs that train with the paper's recipe unchanged (SGD 0.9, wd 1e-4, ×0.1 at 50%/75%, pad-crop + flip).
PAPER = ("cifar10_subset", "cifar10_full", "cifar10_full_tpu", "all_frozen", "visualization", "regimes", "depth",
         "width")
EXPECTED = {"quickstart", "cifar10_subset", "cifar10_full", "cifar10_full_tpu", "notebook_recipe", "lr_schedules",
            "lr_schedules_all", "batch_sizes", "all_frozen", "depth", "width", "regimes", "visualization"}


def _spec(name: str) -> SweepSpec:
    return load_spec(SWEEPS / f"{name}.yaml")


def _plan(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["plan", str(path), *extra, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _configs(spec: SweepSpec) -> list[dict[str, Any]]:
    """The resolved trial config of every grid point (seed 0), as TrialConfig dicts."""
    assert spec.method == "grid"
    points = grid_points(spec.parameters)
    return [TrialConfig.from_dict(resolve_trial_config(spec, p, seed=0)).to_dict() for p in points]


def _includes(path: Path) -> list[Path]:
    inc = yaml.safe_load(path.read_text()).get("include") or []
    return [(path.parent / i).resolve() for i in ([inc] if isinstance(inc, str) else inc)]


def _chain(path: Path) -> set[Path]:
    out: set[Path] = set()
    todo = _includes(path)
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(_includes(p))
    return out


def test_the_catalogue_has_every_experiment():
    assert {p.stem for p in SPECS} >= EXPECTED
    assert (BASE / "paper_recipe.yaml").is_file() and (BASE / "notebook_recipe.yaml").is_file()


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_plans_to_a_sensible_size(path, capsys):
    plan = _plan(path, capsys, "--no-probe", "--for-cluster")  # (the TPU spec asks for a TPU host, not this machine)
    spec = load_spec(path)
    assert plan["name"] == spec.name == path.stem
    assert plan["trainings"] == plan["configurations"] * plan["replicates"] >= 2
    assert plan["configurations"] <= 100 and plan["trainings"] <= 120
    assert 1 <= plan["epochs"] <= 160
    assert plan["train_images"] >= 3000 and plan["val_images"] >= 1000
    assert plan["models"] and all(m["trainable"] <= m["total"] for m in plan["models"])
    assert plan["total_train_flops"] > 0 and plan["gpu_hours"] > 0
    for s in plan["schedules"]:  # the LR curve is in epochs: one value per epoch, finite, at most the peak
        assert len(s["curve"]) == plan["epochs"]  # (linear_cosine starts at lr × 1.001, as TF's LinearCosineDecay)
        assert all(math.isfinite(v) and 0 <= v <= s["lr"] * 1.01 for v in s["curve"])


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_says_what_it_asks_and_how_to_run_it(path):
    text = path.read_text()
    head = re.sub(r" +", " ", text.split("\nname:")[0])
    assert head.startswith("#") and f"sweeps/{path.name}" in head, "a leading comment with the command to run it"
    assert re.search(r"bnsweep (launch|plan) sweeps/" + re.escape(path.name), head)
    assert load_spec(path).description


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_specs_share_the_recipe_through_a_base_instead_of_copying_it(path):
    chain = _chain(path)
    assert any(p.parent == BASE.resolve() for p in chain), f"{path.name} includes no sweeps/base/ file"
    own = yaml.safe_load(path.read_text()).get("fixed") or {}
    # The recipe block (optimizer + schedule + data pipeline) lives in a base, never in an experiment.
    assert not ({"optimizer", "lr_schedule"} <= set(own) and "augment" in (own.get("data") or {}))


def test_notebook_recipe_is_the_notebooks_settings_with_schedules_in_epochs(capsys):
    spec = _spec("notebook_recipe")
    assert BASE.resolve() / "notebook_recipe.yaml" in _chain(SWEEPS / "notebook_recipe.yaml")
    configs = _configs(spec)
    assert len(configs) == 16
    for c in configs:
        assert c["optimizer"]["name"] == "sgd"
        assert c["optimizer"]["momentum"] == 0 and c["optimizer"]["weight_decay"] == 0
        assert c["data"]["augment"] == "notebook" and c["data"]["normalize"] is False
        assert c["epochs"] == 75 and c["batch_size"] == 128
        assert c["model"]["gamma_init"] == "ones" and c["model"]["depth"] == 20
        assert c["data"]["train_size"] - c["data"]["val_size"] == 10_000  # the notebook's 10,000 training images
    assert {c["regime"] for c in configs} == {"all", "bn"}
    assert {c["lr"] for c in configs} == {0.01, 0.1}  # Keras' SGD default; the schedule cells' initial LR
    assert {c["lr_schedule"]["type"] for c in configs} == {"constant", "cosine", "linear_cosine", "cosine_restarts"}
    constant = [c for c in configs if c["lr_schedule"]["type"] == "constant"]
    assert {c["lr"] for c in constant} >= {0.01}  # the notebooks' "SGD" runs: lr 0.01, no schedule
    for c in configs:
        curve = planned_lr(parse_schedule(c["lr_schedule"]), lr=c["lr"], epochs=c["epochs"])
        # Never the notebooks' CosineDecay(0.1, decay_steps=1000): LR 0 after 2.6-12.7 epochs, then 70 epochs at 0.
        assert sum(curve) / len(curve) > 0.25 * c["lr"], c["lr_schedule"]
        assert max(curve[60:]) > 0  # still training near the end
        if c["lr_schedule"]["type"] != "constant":
            assert curve[-1] < 0.01 * c["lr"]  # annealed over the whole run, reaching ~0 only at its end
        if c["lr_schedule"]["type"] == "cosine":
            assert curve[3] > 0.9 * c["lr"]
    restarts = next(c for c in configs if c["lr_schedule"]["type"] == "cosine_restarts")
    curve = planned_lr(parse_schedule(restarts["lr_schedule"]), lr=1.0, epochs=75)
    peaks = [e for e in range(1, 75) if curve[e] > curve[e - 1] + 0.5]
    assert peaks == [11, 33]  # three cycles (1/7, 2/7, 4/7 of the run), the last ending with the run
    # The plan shows the same curve before launch.
    plan = _plan(SWEEPS / "notebook_recipe.yaml", capsys, "--no-probe")
    cosine = next(s for s in plan["schedules"] if s["name"] == "cosine")
    assert cosine["curve"][3] > 0.9 * cosine["lr"] and len(cosine["curve"]) == 75


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_specs_train_with_the_papers_recipe(name):
    spec = _spec(name)
    for c in _configs(spec):
        o = c["optimizer"]
        assert (o["name"], o["momentum"], o["weight_decay"], o["decay_bn"]) == ("sgd", 0.9, 1e-4, True)
        assert c["lr_schedule"] == {"type": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1}
        assert c["lr"] == pytest.approx(0.1 * c["batch_size"] / 128)  # 0.1 per 128 images
        assert c["epochs"] == 160 and c["model"]["gamma_init"] == "uniform"
        assert (c["data"]["augment"], c["data"]["normalize"]) == ("paper", True)
        assert c["data"]["val_size"] > 0  # validation carved from training images, never the test set
        curve = planned_lr(parse_schedule(c["lr_schedule"]), lr=c["lr"], epochs=c["epochs"])
        assert (curve[79], curve[80], curve[119], curve[120]) == pytest.approx(
            (c["lr"], c["lr"] / 10, c["lr"] / 10, c["lr"] / 100))


def test_notebook_reproductions_compare_all_with_bn_only():
    for name in ("cifar10_subset", "cifar10_full", "cifar10_full_tpu", "visualization"):
        assert {c["regime"] for c in _configs(_spec(name))} == {"all", "bn"}, name
    subset = _configs(_spec("cifar10_subset"))[0]["data"]
    assert subset["train_size"] - subset["val_size"] == 10_000 and subset["test_size"] == 2000
    full = _configs(_spec("cifar10_full"))[0]["data"]
    assert full["train_size"] is None and full["test_size"] is None  # all 50,000 + the whole test set


def test_tpu_spec_requests_tpus_and_scales_the_lr_with_the_batch():
    spec = _spec("cifar10_full_tpu")
    assert spec.resources.tpu > 0 and spec.resources.gpu == 0
    configs = _configs(spec)
    assert {c["batch_size"] for c in configs} == {1024}
    assert all(c["lr"] == pytest.approx(0.8) for c in configs)  # linear scaling: 0.1 × 1024 / 128
    assert SWEEPS.resolve() / "cifar10_full.yaml" in _chain(SWEEPS / "cifar10_full_tpu.yaml")


def test_depth_and_width_are_the_papers_fig2_grid(capsys):
    regimes = {"all", "bn", "bn_output", "random_k"}
    depth, width = _spec("depth"), _spec("width")
    for spec in (depth, width):
        assert spec.replicates == 5
        assert set(spec.parameters["regime"].values) == regimes
    assert depth.parameters["model.depth"].values == (14, 20, 32, 56, 110)
    assert {(c["model"]["depth"], c["model"]["width"]) for c in _configs(depth)} == {
        (d, 1) for d in (14, 20, 32, 56, 110)}
    assert width.parameters["model.width"].values == (2, 4, 8)
    assert {(c["model"]["depth"], c["model"]["width"]) for c in _configs(width)} == {(14, w) for w in (2, 4, 8)}
    plan = _plan(SWEEPS / "depth.yaml", capsys, "--no-probe")
    assert {(m["depth"], m["regime"]) for m in plan["models"]} == {
        (d, r) for d in (14, 20, 32, 56, 110) for r in regimes}
    r20 = next(m for m in plan["models"] if m["depth"] == 20 and m["regime"] == "all")
    assert (r20["trainable"], r20["bn"]) == (272_474, 1_568)
    text = (SWEEPS / "depth.yaml").read_text()
    assert all(f"ResNet-{d}" in text for d in (218, 434, 866))  # the deeper ones, with their cost, in comments


def test_regimes_spec_covers_all_nine_regimes():
    spec = _spec("regimes")
    assert spec.replicates == 5
    assert {c["regime"] for c in _configs(spec)} == set(REGIMES) and len(REGIMES) == 9
    assert {c["model"]["depth"] for c in _configs(spec)} == {20}


def test_all_frozen_holds_the_baselines():
    assert {c["regime"] for c in _configs(_spec("all_frozen"))} == {"none", "output"}


def test_lr_schedule_searches():
    bn, everything = _spec("lr_schedules"), _spec("lr_schedules_all")
    for spec, regime in ((bn, "bn"), (everything, "all")):
        assert spec.method == "tpe" and spec.scheduler.type == "asha"
        assert spec.fixed["regime"] == regime and "regime" not in spec.parameters
        assert spec.parameters["lr"].kind == "log_uniform"
        schedules = spec.parameters["lr_schedule"]
        assert isinstance(schedules, OneOf) and len(schedules.names) >= 6
        assert "warmup_epochs" in schedules.options["cosine"]  # warm-up is searched
        assert spec.scheduler.grace_period < spec.fixed["epochs"]


def test_batch_sizes_searches_optimizer_and_lr_for_each_batch_size():
    spec = _spec("batch_sizes")
    assert spec.fixed["regime"] == "bn"
    assert isinstance(spec.parameters["batch_size"], Values)
    assert spec.parameters["batch_size"].values == (128, 256, 512, 1024, 2048)
    assert set(spec.parameters["optimizer"].names) == {"sgd", "adam"}
    lr = spec.parameters["lr"]
    assert lr.min <= 1e-3 and lr.max >= 0.1  # per 128 images: Adam's 1e-3 and SGD's 0.1 both inside
    # the LR-scaling rule is explicit: the trial at batch 2048 trains with 16× the per-128 LR
    from bnsweep.spec.config import TrialConfig

    cfg = TrialConfig.from_dict({**spec.base_trial_config(), "batch_size": 2048, "lr": 0.1})
    assert cfg.lr_scaling == "linear" and cfg.effective_lr == pytest.approx(1.6)
    assert spec.method == "random" and spec.scheduler.type == "none"


def test_visualization_documents_its_follow_up_plot():
    text = re.sub(r" +", " ", (SWEEPS / "visualization.yaml").read_text())
    assert "bnsweep plot runs/visualization --kind feature-maps" in text


def test_docs_and_readme_name_only_existing_specs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- experiments:start -->")[1].split("<!-- experiments:end -->")[0]
    for path in SPECS:
        assert f"sweeps/{path.name}" in section, f"README experiments table lacks {path.name}"
    for doc in (ROOT / "docs" / "notebooks.md", ROOT / "docs" / "catalogue.md", ROOT / "README.md"):
        for ref in set(re.findall(r"sweeps/[\w./]+\.yaml", doc.read_text())):
            assert (ROOT / ref).is_file(), f"{doc.name} names {ref}, which does not exist"


def test_plan_with_the_speed_probe_on_the_quickstart(capsys):
    plan = _plan(SWEEPS / "quickstart.yaml", capsys)  # trains a few real steps of ResNet-8 here
    assert plan["probe_images_per_sec"] and plan["probe_images_per_sec"] > 0, plan["probe_note"]
    assert "ResNet-8" in plan["probe_note"]
    assert 0 < plan["cpu_hours"] < 1  # minutes on a CPU
