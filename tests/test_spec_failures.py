"""Spec-level failures that used to pass ``plan`` and fail every trial (or ``launch`` after Ray started): each is
now refused at load with one line per problem and exit 2, or said as a warning — through the real CLI, in a
subprocess where the exit status is the point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bnsweep.cli import main
from bnsweep.spec.config import TrialConfig
from bnsweep.spec.sweep_spec import SpecError, load_spec, parse_spec_text
from bnsweep.sweep.space import grid_points, resolve_trial_config

ROOT = Path(__file__).resolve().parents[1]
BASE = """\
name: t
method: random
trials: 2
tracking: {wandb: false}
fixed: {model: {depth: 8}, epochs: 4, batch_size: 32, data: {source: synthetic, synthetic_size: 64, val_size: 16}}
"""


def cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bnsweep", *argv], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def refused(res: subprocess.CompletedProcess[str], *parts: str, lines: int = 1) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-500:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr + res.stdout and res.stdout == ""
    err = res.stderr.strip()
    assert len(err.splitlines()) == lines, err
    for part in parts:
        assert part in err, (part, err)
    return err


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------- values reach the libraries as their type


def test_the_notebook_recipe_momentum_0_reaches_keras_as_a_float():
    """sweeps/base/notebook_recipe.yaml writes `momentum: 0`; Keras refused the int in every trial."""
    import keras

    from bnsweep.engine.optimizers import make_optimizer

    spec = load_spec(ROOT / "sweeps" / "notebook_recipe.yaml")
    for point in grid_points(spec.parameters):
        cfg = TrialConfig.from_dict(resolve_trial_config(spec, point, seed=0))
        assert cfg.optimizer.momentum == 0.0 and type(cfg.optimizer.momentum) is float
        assert type(cfg.optimizer.weight_decay) is float and type(cfg.to_dict()["optimizer"]["momentum"]) is float
    opt = make_optimizer(cfg, steps_per_epoch=2, no_decay=[])
    assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == 0.0
    from_set = load_spec(ROOT / "sweeps" / "quickstart.yaml", overrides={"optimizer.momentum": 0, "lr": 1})
    cfg = TrialConfig.from_dict(from_set.base_trial_config())  # --set optimizer.momentum=0 --set lr=1
    assert type(cfg.optimizer.momentum) is float and type(cfg.lr) is float
    make_optimizer(cfg, steps_per_epoch=2, no_decay=[])


# ---------------------------------------------------------------- refused at load


def test_a_validation_metric_without_a_validation_split_is_refused(tmp_path):
    spec = write(tmp_path, BASE.replace("val_size: 16", "val_size: 0") + "metric: val_loss\n")
    err = refused(cli("plan", str(spec), "--no-probe"), "data.val_size", "metric.name 'val_loss'", f"{spec}:5")
    assert "validation split" in err
    ok = write(tmp_path, BASE.replace("val_size: 16", "val_size: 0") + "metric: train_loss\n", "ok.yaml")
    assert cli("plan", str(ok), "--no-probe").returncode == 0
    refused(cli("plan", str(write(tmp_path, BASE, "b.yaml")), "--no-probe", "--set", "data.val_size=0"),
            "<overrides> data.val_size", "metric.name 'val_accuracy'")
    searched = BASE.replace(", val_size: 16", "") + "parameters:\n  data.val_size: {values: [16, 0]}\n"
    with pytest.raises(SpecError) as e:
        parse_spec_text(searched, filename="x.yaml")
    assert [p.key for p in e.value.problems] == ["parameters.data.val_size.values[1]"]


@pytest.mark.parametrize(("tracking", "key", "part"), [
    ("{mode: bogus}", "tracking.mode", "one of auto, offline, online, disabled"),
    ("{wandb: false, mode: bogus}", "tracking.mode", "received 'bogus'"),
    ("{wandb: false, tgas: [a]}", "tracking.tgas", "did you mean 'tags'?"),
    ("{tags: [1, 2]}", "tracking.tags", "a list of strings"),
    ("{init_timeout: 0}", "tracking.init_timeout", "received 0"),
])
def test_tracking_problems_are_refused_at_load(tmp_path, tracking, key, part):
    spec = write(tmp_path, BASE.replace("tracking: {wandb: false}", f"tracking: {tracking}"))
    refused(cli("plan", str(spec), "--no-probe"), f"{spec}:4 {key}:", part)


def test_tracking_tags_and_group_reach_the_wandb_runs(tmp_path):
    """The spec's tracking section is the one TrackingConfig W&B uses: tags and group are not dropped."""
    from bnsweep.store.tracking import TrialTracker

    spec = parse_spec_text(BASE.replace("{wandb: false}", "{mode: offline, tags: [paper, fig2], group: study}"))
    assert spec.tracking.tags == ("paper", "fig2") and spec.tracking.group == "study"
    with TrialTracker.start(tracking=spec.tracking, run_dir=tmp_path, sweep="t", trial_id="t0", seed=0,
                            group="abc123", config={}) as t:
        assert t.active
        run = t._run
        assert run.group == "study/abc123" and {"paper", "fig2"} <= set(run.tags)


@pytest.mark.parametrize("seed", ["-1", "abc", "1.5", "1e30"])
def test_a_bad_split_seed_is_one_line(tmp_path, seed):
    spec = write(tmp_path, BASE)
    refused(cli("plan", str(spec), "--no-probe", "--set", f"data.split_seed={seed}"), "<overrides> data.split_seed:",
            "expected an integer from 0 to 4,294,967,295")
    inline = write(tmp_path, BASE.replace("val_size: 16", f"val_size: 16, split_seed: {seed}"), "i.yaml")
    refused(cli("plan", str(inline), "--no-probe"), f"{inline}:5 fixed.data.split_seed:")


def test_batch_size_larger_than_the_fixed_training_images_is_refused(tmp_path):
    spec = write(tmp_path, BASE.replace("source: synthetic, synthetic_size: 64", "source: npz, path: /x.npz, "
                                                                               "train_size: 1000"))
    refused(cli("plan", str(spec), "--no-probe", "--set", "batch_size=1024"), "<overrides> batch_size:",
            "data.train_size 1000 − data.val_size 16 = 984", "received 1024")
    refused(cli("plan", str(spec), "--no-probe", "--set", "data.val_size=1000"), "<overrides> data.val_size:",
            "fewer than data.train_size (1000)")
    ok = cli("plan", str(spec), "--no-probe", "--set", "batch_size=984")  # the spec is fine; plan opens the data,
    assert ok.returncode == 2 and "/x.npz: no such file" in ok.stderr  # and /x.npz is not there


# ---------------------------------------------------------------- saved specs read back; flags are named


def test_a_quoted_number_in_the_spec_survives_the_run_directory(tmp_path):
    """`description: "1e3"` passed plan and failed launch after Ray started: the saved copy read 1e3 as a number."""
    from bnsweep.sweep.driver import LaunchOptions, _write_run_files

    spec = load_spec(write(tmp_path, BASE.replace("name: t", 'name: t\ndescription: "1e3"')))
    run_dir = tmp_path / "run"
    _write_run_files(run_dir, spec, {}, LaunchOptions(run_dir=run_dir))  # raised RuntimeError before
    again = load_spec(run_dir / "spec.yaml")
    assert again.description == "1e3" and again.spec_hash() == spec.spec_hash()
    assert json.loads((run_dir / "sweep.json").read_text())["spec_hash"] == spec.spec_hash()
    for text in ("null", "1_000", "0x10", "2001-12-14", "yes", "1e-3", "-.inf", "~"):
        s = parse_spec_text(BASE.replace("name: t", f"name: t\ndescription: {json.dumps(text)}"))
        assert parse_spec_text(s.to_yaml()).spec_hash() == s.spec_hash(), text


def test_trials_on_a_grid_is_the_first_points_or_a_clear_refusal(tmp_path, capsys):
    quickstart = str(ROOT / "sweeps" / "quickstart.yaml")  # a grid of 2 points
    refused(cli("launch", quickstart, "--trials", "3", "--run-dir", str(tmp_path / "run")), "--trials 3:",
            "2 points (regime: 2 values)", "at most 2")
    assert not (tmp_path / "run").exists()
    assert main(["plan", quickstart, "--trials", "1", "--no-probe", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["configurations"] == 1
    from bnsweep.sweep.driver import LaunchOptions, _write_run_files

    spec = load_spec(quickstart).replace(trials=1)
    _write_run_files(tmp_path / "one", spec, {}, LaunchOptions(run_dir=tmp_path / "one"))
    assert load_spec(tmp_path / "one" / "spec.yaml").trials == 1


@pytest.mark.parametrize(("flag", "value", "part"), [
    ("--trials", "0", "expected an integer from 1 to 1,000,000, received 0"),
    ("--trials", "10000000", "received 10000000"),
    ("--replicates", "0", "an integer from 1 to 10,000"),
    ("--max-concurrent", "0", "received 0"),
    ("--cpus-per-trial", "-1", "a number > 0"),
    ("--cpus-per-trial", "nan", "received nan"),
    ("--gpus-per-trial", "1.5", "a fraction <= 1 or a whole number of GPUs"),
])
def test_flag_problems_name_the_flag(tmp_path, flag, value, part):
    err = refused(cli("plan", str(write(tmp_path, BASE)), "--no-probe", flag, value), f"bnsweep plan {flag}:", part)
    assert "resources." not in err and " trials:" not in err


def test_a_huge_grid_is_reported_as_the_grid(tmp_path):
    grid = BASE.replace("method: random\ntrials: 2", "method: grid") + (
        "parameters:\n"
        + "".join(f"  {k}: {{values: {list(range(1, 101))}}}\n" for k in ("threads", "steps_per_epoch"))
        + "  lr: {values: " + json.dumps([0.001 * i for i in range(1, 201)]) + "}\n")
    spec = write(tmp_path, grid)
    err = refused(cli("plan", str(spec), "--no-probe"), f"{spec}:5 parameters:", "2,000,000 points",
                  "threads: 100 values × steps_per_epoch: 100 values × lr: 200 values", "1,000,000")
    assert "trials" not in err.split("parameters:")[1].split(";")[0]


# ---------------------------------------------------------------- warnings: plan and launch say them


@pytest.mark.parametrize(("schedule", "key", "numbers"), [
    ("{type: cosine, warmup_epochs: 6}", "fixed.lr_schedule.warmup_epochs", ["6 epochs", "run of 4 epochs"]),
    ("{type: exponential, warmup_epochs: 4}", "fixed.lr_schedule.warmup_epochs", ["4 epochs", "run of 4 epochs"]),
    ("{type: multistep, milestones: [2, 7]}", "fixed.lr_schedule.milestones", ["milestone 7 (epoch 7)", "4-epoch"]),
    ("{type: step, every: 5}", "fixed.lr_schedule.every", ["every 5 epochs", "run of 4 epochs"]),
    ("{type: cosine_restarts, first_cycle: 9}", "fixed.lr_schedule.first_cycle", ["9 epochs", "no restart"]),
    ("{type: rampup_exp, rampup_epochs: 5}", "fixed.lr_schedule.rampup_epochs", ["5 epochs", "run of 4 epochs"]),
])
def test_schedules_that_cannot_do_what_they_say_warn_in_plan_and_launch(tmp_path, schedule, key, numbers):
    spec = write(tmp_path, BASE.replace("epochs: 4,", f"epochs: 4, lr_schedule: {schedule},"))
    res = cli("plan", str(spec), "--no-probe")
    assert res.returncode == 0, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"warning: {spec}:5 {key}: "), line
    for part in numbers:
        assert part in line, (part, line)
    held = tmp_path / "held"  # launch says it too (then stops here: the directory already holds a sweep)
    held.mkdir()
    (held / "sweep.json").write_text(json.dumps({"name": "other"}))
    res = cli("launch", str(spec), "--run-dir", str(held))
    assert res.returncode == 2 and res.stderr.startswith(f"warning: {spec}:5 {key}: "), res.stderr


def test_a_warning_is_blamed_on_the_searched_value_that_brings_it():
    spec = parse_spec_text(BASE + "parameters:\n  lr_schedule: {one_of: {constant: {}, cosine: {warmup_epochs: "
                                  "{values: [1, 8]}}}}\n", filename="w.yaml")
    assert [(w.line, w.key) for w in spec.warnings] == [(7, "parameters.lr_schedule.one_of.cosine.warmup_epochs"
                                                             ".values[1]")]
    assert "a warm-up of 8 epochs in a run of 4 epochs" in spec.warnings[0].message
    assert not parse_spec_text(BASE).warnings
    assert all(not load_spec(p).warnings for p in sorted((ROOT / "sweeps").glob("*.yaml")))


def test_the_saved_spec_is_plain_yaml():
    text = load_spec(ROOT / "sweeps" / "lr_schedules.yaml").to_yaml()
    assert yaml.safe_load(text)["parameters"]["lr_schedule"]["one_of"]["multistep"]["gamma"] == {"values": [0.1, 0.2]}
