"""Spec parameters -> a real Optuna define-by-run space (in-memory and SQLite storage), grids, trial configs."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest

from bnsweep.spec.config import TrialConfig, unflatten
from bnsweep.spec.errors import ConfigError
from bnsweep.spec.sweep_spec import SweepSpec, Values, load_spec, parse_spec_text
from bnsweep.sweep.space import (
    GridPointSampler,
    count_configurations,
    grid_optuna_params,
    grid_points,
    grid_size,
    make_sampler,
    resolve_trial_config,
    suggest,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

CONDITIONAL = """\
name: cond
method: tpe
trials: 30
seed: {seed}
replicates: 2
fixed:
  model: {{depth: 8}}
  regime: bn
  epochs: 4
  data: {{dataset: synthetic}}
parameters:
  batch_size: {{values: [32, 64, 128]}}
  lr: {{distribution: log_uniform, min: 0.01, max: 1.0}}
  optimizer.momentum: {{distribution: q_uniform, min: 0.5, max: 0.95, step: 0.05}}
  lr_schedule:
    one_of:
      step:      {{milestones: {{values: [[0.5, 0.75], [0.3, 0.6, 0.9]]}}, gamma: 0.1}}
      cosine:    {{warmup_epochs: {{distribution: int_uniform, min: 0, max: 5}}}}
      one_cycle: {{pct_start: {{distribution: uniform, min: 0.1, max: 0.5}}}}
"""

OPTION_KEYS = {"step": {"type", "milestones", "gamma"}, "cosine": {"type", "warmup_epochs"},
               "one_cycle": {"type", "pct_start"}}


def spec_with(seed: int = 0) -> SweepSpec:
    return parse_spec_text(CONDITIONAL.format(seed=seed))


def sample(spec: SweepSpec, n: int, *, storage: str | None = None) -> list[dict[str, Any]]:
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec), storage=storage)
    out = []
    for i in range(n):
        trial = study.ask()
        config = suggest(trial, spec.parameters)
        study.tell(trial, float(i % 7) + (1.0 if config["lr_schedule.type"] == "cosine" else 0.0))
        out.append(config)
    return out


def test_conditional_samples_round_trip_and_stay_in_bounds() -> None:
    spec = spec_with()
    configs = sample(spec, 30)
    seen_types = set()
    for config in configs:
        schedule = unflatten(config)["lr_schedule"]  # flat dotted keys, every section alike
        seen_types.add(schedule["type"])
        assert set(schedule) == OPTION_KEYS[schedule["type"]], config  # conditional params only for their option
        assert not any(isinstance(v, dict) for v in config.values())
        assert config["batch_size"] in (32, 64, 128)
        assert 0.01 <= config["lr"] <= 1.0
        assert 0.5 <= config["optimizer.momentum"] <= 0.95
        assert round((config["optimizer.momentum"] - 0.5) / 0.05, 6) % 1 == 0
        if schedule["type"] == "cosine":
            assert isinstance(schedule["warmup_epochs"], int) and 0 <= schedule["warmup_epochs"] <= 5
        if schedule["type"] == "one_cycle":
            assert 0.1 <= schedule["pct_start"] <= 0.5
        if schedule["type"] == "step":
            assert schedule["milestones"] in ([0.5, 0.75], [0.3, 0.6, 0.9]) and schedule["gamma"] == 0.1
        for seed in spec.replicate_seeds:
            resolved = resolve_trial_config(spec, config, seed=seed)
            cfg = TrialConfig.from_dict(resolved)
            assert cfg.to_dict() == resolved and cfg.seed == seed
            assert cfg.lr_schedule.model_dump().items() >= schedule.items()  # (plus the schedule's defaults)
            assert cfg.batch_size == config["batch_size"]
            assert (cfg.model.depth, cfg.regime, cfg.epochs, cfg.data.source) == (8, "bn", 4, "synthetic")
    assert seen_types == set(OPTION_KEYS)


def test_optuna_sees_distinct_conditional_parameter_names() -> None:
    spec = spec_with()
    study = optuna.create_study(sampler=make_sampler(spec))
    for _ in range(12):
        trial = study.ask()
        config = suggest(trial, spec.parameters)
        option = config["lr_schedule.type"]
        assert trial.params["lr_schedule"] == option
        conditional = {k for k in trial.params if k.startswith("lr_schedule.")}
        assert all(k.startswith(f"lr_schedule.{option}.") for k in conditional)
        study.tell(trial, 0.5)
    names = {k for t in study.trials for k in t.params}
    assert {"lr_schedule.cosine.warmup_epochs", "lr_schedule.one_cycle.pct_start",
            "lr_schedule.step.milestones"} <= names


def test_sampling_is_deterministic_for_a_seed() -> None:
    assert sample(spec_with(0), 15) == sample(spec_with(0), 15)
    assert sample(spec_with(0), 15) != sample(spec_with(1), 15)


@pytest.mark.parametrize("method", ["random", "tpe"])
def test_sqlite_storage_round_trip(tmp_path: Path, method: str) -> None:
    spec = parse_spec_text(CONDITIONAL.format(seed=3).replace("method: tpe", f"method: {method}"))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    configs = sample(spec, 12, storage=storage)
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    assert len(study.trials) == 12
    for trial, config in zip(study.trials, configs, strict=True):  # what Optuna stored replays the same config
        assert suggest(optuna.trial.FixedTrial(trial.params), spec.parameters) == config


def test_grid_points_count_and_contents(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent("""\
        name: grid
        method: grid
        fixed: {model: {depth: 8}, epochs: 2, data: {dataset: synthetic}}
        parameters:
          batch_size: {values: [64, 128]}
          optimizer.weight_decay: {value: 0.0}
          lr_schedule:
            one_of:
              constant: {}
              step: {milestones: [0.5], gamma: {values: [0.1, 0.5]}}
              cosine: {warmup_epochs: {values: [0, 2, 4]}}
    """))
    spec = load_spec(path)
    assert grid_size(spec.parameters) == 2 * (1 + 2 + 3) == count_configurations(spec) == spec.trials
    points = grid_points(spec.parameters)
    assert len(points) == 12
    assert points[0] == {"batch_size": 64, "optimizer.weight_decay": 0.0, "lr_schedule.type": "constant"}
    assert {"batch_size": 128, "optimizer.weight_decay": 0.0, "lr_schedule.type": "step",
            "lr_schedule.milestones": [0.5], "lr_schedule.gamma": 0.5} in points
    schedules = [unflatten(p)["lr_schedule"] for p in points if p["batch_size"] == 64]
    assert schedules == [{"type": "constant"},
                         {"type": "step", "milestones": [0.5], "gamma": 0.1},
                         {"type": "step", "milestones": [0.5], "gamma": 0.5},
                         {"type": "cosine", "warmup_epochs": 0},
                         {"type": "cosine", "warmup_epochs": 2},
                         {"type": "cosine", "warmup_epochs": 4}]
    assert len({repr(p) for p in points}) == 12  # no duplicates from conditional parameters
    for p in points:
        TrialConfig.from_dict(resolve_trial_config(spec, p, seed=0))
    assert grid_points(spec.parameters, limit=3) == points[:3]

    # the grid sampler hands those points out one per trial, through suggest, also from SQLite
    storage = f"sqlite:///{tmp_path / 'grid.db'}"
    study = optuna.create_study(sampler=make_sampler(spec), storage=storage, study_name="g")
    got = []
    for _ in range(12):
        trial = study.ask()
        got.append(suggest(trial, spec.parameters))
        study.tell(trial, 0.0)
    assert got == points

    capped = parse_spec_text(path.read_text().replace("method: grid", "method: grid\ntrials: 5"))
    assert count_configurations(capped) == 5
    sampler = make_sampler(capped)
    assert isinstance(sampler, GridPointSampler)
    assert sampler.points == grid_optuna_params(spec.parameters, limit=5)


def test_grid_with_label_and_value_one_ofs_and_list_values() -> None:
    spec = parse_spec_text("""\
        name: labels
        method: grid
        fixed: {epochs: 2, lr_schedule: {type: multistep}}
        parameters:
          lr_schedule.milestones: {values: [[0.5], [0.3, 0.6]]}     # lists: stored by Optuna as JSON text
          model: {one_of: {resnet8: {depth: 8}, wrn: {depth: 14, width: {values: [2, 4]}}}}   # labels only
          regime:
            one_of:
              bn: {lr: {values: [0.5, 1.0]}}
              all: {lr: 0.1, optimizer: {weight_decay: 0.0005}}
    """.replace("        ", ""))
    points = grid_points(spec.parameters)
    assert len(points) == grid_size(spec.parameters) == 2 * 3 * 3
    assert points[0] == {"lr_schedule.milestones": [0.5], "model.depth": 8, "regime": "bn", "lr": 0.5}
    assert {"lr_schedule.milestones": [0.3, 0.6], "model.depth": 14, "model.width": 4, "regime": "all",
            "lr": 0.1, "optimizer.weight_decay": 0.0005} in points
    study = optuna.create_study(sampler=make_sampler(spec))
    got = []
    for _ in points:
        trial = study.ask()
        got.append(suggest(trial, spec.parameters))
        study.tell(trial, 0.0)
    assert got == points
    assert study.trials[0].params == {"lr_schedule.milestones": "[0.5]", "model": "resnet8", "regime": "bn",
                                      "regime.bn.lr": 0.5}
    for p in points:
        cfg = TrialConfig.from_dict(resolve_trial_config(spec, p, seed=1))
        assert cfg.lr_schedule.type == "multistep" and list(cfg.lr_schedule.milestones) == p["lr_schedule.milestones"]


def test_grid_sampler_fills_gaps_after_the_list() -> None:
    sampler = GridPointSampler([{"x": 1}, {"x": 2}, {"x": 3}])
    study = optuna.create_study(sampler=sampler)
    first = study.ask()
    assert first.suggest_categorical("x", [1, 2, 3]) == 1
    study.tell(first, state=optuna.trial.TrialState.FAIL)  # point 1 never finished
    for _ in range(2):
        t = study.ask()
        t.suggest_categorical("x", [1, 2, 3])
        study.tell(t, 0.0)
    retry = study.ask()
    assert retry.suggest_categorical("x", [1, 2, 3]) == 1


def test_grid_rejects_distributions() -> None:
    spec = spec_with()
    with pytest.raises(ValueError, match="grid"):
        grid_points(spec.parameters)
    with pytest.raises(ValueError, match="grid"):
        grid_size(spec.parameters)
    assert count_configurations(spec) == 30


def test_samplers_per_method() -> None:
    spec = spec_with()
    assert isinstance(make_sampler(spec), optuna.samplers.TPESampler)
    random = parse_spec_text(CONDITIONAL.format(seed=0).replace("method: tpe", "method: random"))
    assert isinstance(make_sampler(random), optuna.samplers.RandomSampler)


def test_resolve_trial_config_seed_and_errors() -> None:
    spec = spec_with()
    sampled = {"batch_size": 64, "lr": 0.1, "optimizer.momentum": 0.9,
               "lr_schedule.type": "cosine", "lr_schedule.warmup_epochs": 2}
    resolved = resolve_trial_config(spec, sampled, seed=11)
    cfg = TrialConfig.from_dict(resolved)
    assert cfg.seed == 11 and cfg.optimizer.momentum == 0.9 and cfg.lr_schedule.warmup_epochs == 2
    assert resolved == cfg.to_dict()
    nested = {k: v for k, v in sampled.items() if not k.startswith("lr_schedule.")}  # nested keys work the same
    assert resolve_trial_config(spec, {**nested, "lr_schedule": {"type": "cosine", "warmup_epochs": 2}},
                                seed=11) == resolved
    with pytest.raises(ConfigError, match="batch_size"):
        resolve_trial_config(spec, {**sampled, "batch_size": 0}, seed=0)
    with pytest.raises(ValueError, match="seed"):
        resolve_trial_config(spec, {**sampled, "seed": 3}, seed=0)


def test_fixed_schedule_settings_merge_with_a_searched_schedule() -> None:
    spec = SweepSpec(name="m", method="random", trials=2,
                     fixed={"lr_schedule": {"type": "cosine"}, "epochs": 3},
                     parameters={"lr_schedule.warmup_epochs": Values(values=(0, 1))})
    study = optuna.create_study(sampler=make_sampler(spec))
    config = suggest(study.ask(), spec.parameters)
    schedule = resolve_trial_config(spec, config, seed=0)["lr_schedule"]
    assert schedule["type"] == "cosine" and schedule["warmup_epochs"] == config["lr_schedule.warmup_epochs"]


def test_docstring_examples_run() -> None:
    import doctest

    import bnsweep.sweep.space

    assert doctest.testmod(bnsweep.sweep.space).failed == 0
