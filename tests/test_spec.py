"""The sweep spec: YAML files on disk -> SweepSpec, and every kind of bad input -> precise problems."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest
import yaml

from bnsweep.spec.config import TrialConfig
from bnsweep.spec.sweep_spec import (
    Constant,
    Distribution,
    Metric,
    OneOf,
    Problem,
    Resources,
    SchedulerSpec,
    SpecError,
    SweepSpec,
    TrackingConfig,
    Values,
    load_spec,
    merge_config,
    parse_spec_text,
)

FULL = """\
name: lr_schedules                 # required
description: BN-only ResNet-20 — which LR schedule trains γ/β best?
method: tpe
metric: {name: val_accuracy, goal: maximize}
trials: 32
replicates: 3
seed: 0
max_concurrent: 2
scheduler: {type: asha, grace_period: 10, reduction_factor: 3}
resources: {cpu: 1, gpu: 0.25, tpu: 0}
retries: 1
storage: null
tracking: {wandb: true, project: bnsweep}
fixed:
  model: {depth: 20, width: 1}
  regime: bn
  epochs: 60
  data: {dataset: cifar10, val_size: 5000}
parameters:
  batch_size: {values: [128, 256, 512]}
  lr: {distribution: log_uniform, min: 0.01, max: 1.0}
  optimizer.weight_decay: {value: 0.0005}
  lr_schedule:
    one_of:
      step:      {milestones: [0.5, 0.75], gamma: 0.1}
      cosine:    {warmup_epochs: {distribution: int_uniform, min: 0, max: 5}}
      one_cycle: {pct_start: {distribution: uniform, min: 0.1, max: 0.5}}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, **kwargs: object) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        load_spec(path, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


def only(problems: list[Problem], key: str) -> Problem:
    found = [p for p in problems if p.key == key]
    assert len(found) == 1, (key, [str(p) for p in problems])
    return found[0]


# ---------------------------------------------------------------- valid specs


def test_full_spec_parses_to_typed_dataclasses(tmp_path: Path) -> None:
    path = write(tmp_path, "lr.yaml", FULL)
    spec = load_spec(path)
    assert spec.name == "lr_schedules" and "γ/β" in spec.description
    assert (spec.method, spec.trials, spec.replicates, spec.seed, spec.max_concurrent, spec.retries) == (
        "tpe", 32, 3, 0, 2, 1)
    assert spec.metric == Metric(name="val_accuracy", goal="maximize") and spec.metric.mode == "max"
    assert spec.scheduler == SchedulerSpec(type="asha", grace_period=10, reduction_factor=3)
    assert spec.resources == Resources(cpu=1, gpu=0.25, tpu=0)
    assert spec.storage is None and spec.tracking == TrackingConfig(wandb=True, project="bnsweep")
    assert spec.source == str(path)
    assert spec.fixed == {"model.depth": 20, "model.width": 1, "regime": "bn", "epochs": 60,
                          "data.source": "cifar10", "data.val_size": 5000}
    assert spec.parameters == {
        "batch_size": Values(values=(128, 256, 512)),
        "lr": Distribution(kind="log_uniform", min=0.01, max=1.0),
        "optimizer.weight_decay": Constant(value=0.0005),
        "lr_schedule": OneOf(options={
            "step": {"milestones": Constant(value=[0.5, 0.75]), "gamma": Constant(value=0.1)},
            "cosine": {"warmup_epochs": Distribution(kind="int_uniform", min=0, max=5)},
            "one_cycle": {"pct_start": Distribution(kind="uniform", min=0.1, max=0.5)},
        }),
    }
    base = TrialConfig.from_dict(spec.base_trial_config())
    assert (base.model.depth, base.regime, base.epochs, base.data.source) == (20, "bn", 60, "cifar10")
    assert spec.replicate_seeds == (0, 1, 2)


def test_raw_is_a_resolved_spec_that_reads_back_the_same(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "lr.yaml", FULL))
    assert "include" not in spec.raw and spec.raw["fixed"]["data"] == {"source": "cifar10", "val_size": 5000}
    again = load_spec(write(tmp_path, "resolved.yaml", yaml.safe_dump(dict(spec.raw), allow_unicode=True)))
    assert again.parameters == spec.parameters and again.fixed == spec.fixed
    assert again.spec_hash() == spec.spec_hash()
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_nested_and_dotted_parameter_keys_and_yaml12_floats(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "s.yaml", """\
        name: nested
        method: random
        trials: 3
        fixed: {epochs: 2, model.gamma_init: ones, optimizer: {weight_decay: 5e-4}}
        parameters:
          model: {depth: {values: [8, 14]}, width: {distribution: int_uniform, min: 1, max: 4, step: 1}}
          lr: {distribution: log_uniform, min: 1e-3, max: 1}
          optimizer:
            one_of:
              sgd: {momentum: {values: [0.9, 0.99]}, nesterov: true}
              adam: {}
    """))
    assert spec.fixed == {"epochs": 2, "model.gamma_init": "ones", "optimizer.weight_decay": 5e-4}
    assert spec.parameters["model.depth"] == Values(values=(8, 14))
    assert spec.parameters["lr"] == Distribution(kind="log_uniform", min=1e-3, max=1)
    assert spec.parameters["model.width"] == Distribution(kind="int_uniform", min=1, max=4, step=1)
    assert spec.parameters["optimizer"] == OneOf(options={
        "sgd": {"momentum": Values(values=(0.9, 0.99)), "nesterov": Constant(value=True)}, "adam": {}})


def test_defaults_and_shorthands(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "s.yaml", """\
        name: tiny
        trials: 2
        metric: val_loss
        scheduler: median
        fixed: {lr_schedule: cosine}
    """))
    assert spec.method == "tpe" and spec.metric == Metric(name="val_loss", goal="minimize")
    assert spec.scheduler.type == "median" and spec.resources == Resources()
    assert spec.fixed == {"lr_schedule.type": "cosine"} and spec.parameters == {}
    assert spec.tracking == TrackingConfig() and spec.tracking.mode == "auto"  # offline unless a key is set


def test_grid_trials_default_to_and_are_capped_by_the_grid_size(tmp_path: Path) -> None:
    grid = """\
        name: g
        method: grid
        {trials}
        fixed: {{epochs: 2}}
        parameters:
          batch_size: {{values: [64, 128]}}
          lr_schedule: {{one_of: {{constant: {{}}, cosine: {{warmup_epochs: {{values: [0, 1]}}}}}}}}
    """
    assert load_spec(write(tmp_path, "a.yaml", grid.format(trials=""))).trials == 6
    assert load_spec(write(tmp_path, "b.yaml", grid.format(trials="trials: 100"))).trials == 6
    assert load_spec(write(tmp_path, "c.yaml", grid.format(trials="trials: 4"))).trials == 4


# ---------------------------------------------------------------- include


def test_include_chain_deep_merges_and_the_child_wins(tmp_path: Path) -> None:
    (tmp_path / "common").mkdir()
    write(tmp_path, "common/base.yaml", """\
        method: random
        trials: 4
        resources: {cpu: 2, gpu: 0.5}
        fixed:
          model: {depth: 8}
          epochs: 3
          lr: 0.2
          lr_schedule: {type: step, every: 1}
        parameters:
          batch_size: {values: [64, 128]}
    """)
    write(tmp_path, "common/mid.yaml", """\
        include: base.yaml
        resources: {gpu: 0}
        fixed: {regime: bn}
    """)
    child = write(tmp_path, "child.yaml", """\
        name: child
        include: [common/mid.yaml]
        fixed:
          batch_size: 32                                 # was searched in base.yaml
        parameters:
          lr: {values: [0.1, 0.3]}                       # was fixed in base.yaml
          lr_schedule: {one_of: {constant: {}, cosine: {warmup_epochs: {values: [0, 1]}}}}
    """)
    spec = load_spec(child)
    assert (spec.method, spec.trials) == ("random", 4)
    assert spec.resources == Resources(cpu=2, gpu=0)
    assert spec.fixed == {"model.depth": 8, "epochs": 3, "regime": "bn", "batch_size": 32}
    assert set(spec.parameters) == {"lr", "lr_schedule"}


def test_include_problems_name_the_included_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", """\
        method: random
        fixed:
          regime: bnn
    """)
    child = write(tmp_path, "child.yaml", "name: c\ntrials: 2\ninclude: base.yaml\n")
    p = only(problems_of(child), "fixed.regime")
    assert (p.file, p.line) == (str(tmp_path / "base.yaml"), 3)
    assert "received 'bnn'" in p.message and "did you mean 'bn'?" in p.message


def test_include_cycle_is_an_error(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "name: a\ntrials: 1\ninclude: b.yaml\n")
    write(tmp_path, "b.yaml", "method: random\ninclude: a.yaml\n")
    p = only(problems_of(a), "include")
    assert p.file == str(tmp_path / "b.yaml") and p.line == 2
    assert "include cycle" in p.message and "a.yaml -> " in p.message


def test_missing_include_reports_the_including_line(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "name: a\ntrials: 1\ninclude:\n  - nope.yaml\n")
    p = only(problems_of(a), "include")
    assert (p.file, p.line) == (str(a), 4) and "file not found" in p.message


def test_fixed_and_searched_in_one_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", """\
        name: s
        trials: 2
        fixed:
          lr: 0.1
        parameters:
          lr: {values: [0.1, 0.2]}
    """)
    p = only(problems_of(path), "parameters.lr")
    assert p.line == 6 and "both searched and fixed (fixed.lr (line 4))" in p.message


# ---------------------------------------------------------------- bad input, precisely


BAD = """\
name: bad name
method: tpee
trials: 0
metric: {name: val_acc}
scheduler: {type: asha, grace_period: 100}
resources: {cpu: 0, gpu: 1.5, tpu: -1}
fixed:
  model: {depth: 21, widht: 2}
  regime: bnn
  epochs: 60
parameters:
  batch_size: {values: [128, 0]}
  lr: {distribution: log_uniform, min: -0.1, max: 1.0}
  momentum: {values: [0.9]}
  optimizer: {one_of: {sgd: {momentum: 0.9}, adamm: {}}}
  lr_schedule:
    one_of:
      step: {milestones: [0.5, 0.75], gamma: 0.1}
      cosinee: {}
      one_cycle: {pct_start: {distribution: uniform, min: 0.1, max: 1.5}}
"""


def test_every_problem_is_reported_at_once_with_file_line_key_received_and_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", BAD)
    problems = problems_of(path)
    expected = {  # key: (line, substrings of the message)
        "name": (1, ["received 'bad name'", "letters, digits"]),
        "method": (2, ["received 'tpee'", "one of grid, random, tpe, cmaes", "did you mean 'tpe'?"]),
        "trials": (3, ["received 0", "an integer from 1"]),
        "metric.name": (4, ["received 'val_acc'", "did you mean 'val_accuracy'?"]),
        "scheduler.grace_period": (5, ["at most the number of epochs (60)", "received 100"]),
        "resources.cpu": (6, ["expected a number > 0", "received 0"]),
        "resources.gpu": (6, ["whole number of GPUs", "received 1.5"]),
        "resources.tpu": (6, ["an integer from 0 to 4096", "received -1"]),
        "fixed.model.depth": (8, ["6·D+2", "received 21"]),
        "fixed.model.widht": (8, ["unknown model setting 'widht'", "did you mean 'width'?", "depth, width"]),
        "fixed.regime": (9, ["received 'bnn'", "did you mean 'bn'?", "bn_output"]),
        "parameters.batch_size.values[1]": (12, ["expected an integer from 1 to 1,048,576, received 0"]),
        "parameters.lr.min": (13, ["expected a number > 0", "received -0.1"]),
        "parameters.momentum": (14, ["unknown trial-config key 'momentum'", "did you mean 'optimizer.momentum'?"]),
        "parameters.optimizer.one_of.adamm": (15, ["received 'adamm'", "did you mean 'adam'?", "sgd, adam, adamw"]),
        "parameters.lr_schedule.one_of.cosinee": (19, ["received 'cosinee'", "did you mean 'cosine'?"]),
        "parameters.lr_schedule.one_of.one_cycle.pct_start.max": (20, ["a number in (0, 1)", "received 1.5"]),
    }
    assert sorted(p.key for p in problems) == sorted(expected)
    for key, (line, parts) in expected.items():
        p = only(problems, key)
        assert (p.file, p.line) == (str(path), line), str(p)
        for part in parts:
            assert part in p.message, (part, str(p))
    text = str(SpecError(problems))
    assert text.count("\n") == len(problems) - 1
    assert f"{path}:13 parameters.lr.min: expected a number > 0" in text


@pytest.mark.parametrize(("body", "key", "line", "parts"), [
    ("parameters:\n  lr: {distribution: uniform, min: 1, max: 0.5}\n", "parameters.lr.max", 4,
     ["a number > min (1)", "received 0.5"]),
    ("parameters:\n  lr: {distribution: uniform, min: 0.1}\n", "parameters.lr.max", 4, ["received None"]),
    ("parameters:\n  batch_size: {distribution: int_uniform, min: 16, max: 64.5}\n", "parameters.batch_size.max",
     4, ["an integer", "received 64.5"]),
    ("parameters:\n  lr: {distribution: normal, min: 0, max: 1}\n", "parameters.lr.distribution", 4,
     ["received 'normal'", "uniform, log_uniform"]),
    ("parameters:\n  lr: {distribution: q_uniform, min: 0, max: 1}\n", "parameters.lr.step", 4,
     ["required for q_uniform"]),
    ("parameters:\n  lr: {distrbution: uniform, min: 0, max: 1}\n", "parameters.lr", 4,
     ["a parameter spec", "did you mean 'distribution'?"]),
    ("parameters:\n  lr: {values: []}\n", "parameters.lr.values", 4, ["a non-empty list", "received []"]),
    ("parameters:\n  lr: {values: [0.1], value: 0.1}\n", "parameters.lr", 4, ["only one of"]),
    ("parameters:\n  lr: 0.1\n", "parameters.lr", 4, ["a parameter spec", "received 0.1", "`fixed`"]),
    ("parameters:\n  lr: {values: [0.1], min: 0}\n", "parameters.lr.min", 4, ["unknown key 'min'"]),
    ("parameters:\n  seed: {values: [1, 2]}\n", "parameters.seed", 4, ["per replicate"]),
    ("fixed:\n  model: 20\n", "fixed.model", 4, ["a mapping of model settings", "received 20"]),
    ("fixed:\n  data: {dataset: npz}\n", "fixed.data.source", 4, ["makes data.path invalid",
                                                                   "required for source 'npz'"]),
    ("fixed:\n  lr_schedule: {type: cosine, milestones: [0.5]}\n", "fixed.lr_schedule.milestones", 4,
     ["a parameter of 'cosine'", "warmup_epochs"]),
    ("scheduler: {type: asha, grace: 3}\n", "scheduler.grace", 3, ["unknown key 'grace'",
                                                                    "did you mean 'grace_period'?"]),
    ("storage: postgres\n", "storage", 3, ["a database URL", "received 'postgres'"]),
    ("tracking: {wandb: yes please}\n", "tracking.wandb", 3, ["true or false"]),
    ("early_terminate: {type: hyperband}\n", "early_terminate", 3, ["did you mean 'scheduler'?"]),
    ("replicates: 1000000000000000000000000000000\n", "replicates", 3, ["an integer from 1 to"]),
    ("seed: -1\n", "seed", 3, ["received -1"]),
    ("fixed:\n  epochs: 1e400\n", "fixed.epochs", 4, ["received inf"]),
    ("parameters:\n  lr: {distribution: uniform, min: 0, max: .inf}\n", "parameters.lr.max", 4,
     ["between -1e+15 and 1e+15", "received inf"]),
    ("parameters:\n  epochs: {distribution: int_uniform, min: 1, max: 100000000000000000000000000}\n",
     "parameters.epochs.max", 4, ["received 100000000000000000000000000"]),
    ("method: grid\nparameters:\n  lr: {distribution: log_uniform, min: 0.01, max: 1}\n", "parameters.lr", 5,
     ["method grid needs {values: [...]}", "log_uniform"]),
    ("method: grid\nparameters:\n  lr_schedule: {one_of: {cosine: {warmup_epochs: {distribution: uniform, min: 0, "
     "max: 5}}}}\n", "parameters.lr_schedule.one_of.cosine.warmup_epochs", 5, ["method grid needs"]),
    ("fixed:\n  modle: {depth: 8}\n", "fixed.modle", 4, ["did you mean 'model'?"]),
    ("fixed:\n  data: {source: synthetic, dataset: cifar10}\n", "fixed.data.source", 4, ["given twice"]),
    ("description: ünïcödé ✓\nfixed:\n  regime: bñ\n", "fixed.regime", 5, ["received 'bñ'"]),
])
def test_each_bad_value_gets_a_precise_problem(tmp_path: Path, body: str, key: str, line: int,
                                               parts: list[str]) -> None:
    path = write(tmp_path, "s.yaml", "name: s\ntrials: 2\n" + body)
    problems = problems_of(path)
    p = only(problems, key)
    assert (p.file, p.line) == (str(path), line), str(p)
    for part in parts:
        assert part in p.message, (part, str(p))


def test_problems_inside_one_of_options_are_blamed_on_the_option_or_its_value(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", """\
        name: s
        trials: 3
        parameters:
          regime: {one_of: {bn: {lr: {values: [0.5, -1]}}, bnx: {}}}
          optimizer:
            one_of:
              sgd: {nesterov: true}
              adam: {momentum: 2, weight_decay: {values: [-1, 0.1]}}
          data: {one_of: {npz: {path: /x.npz}, dir: {}, synthetic: {synthetic_size: 0}}}
          lr_schedule: {one_of: {cosine: {type: step}}}
    """)
    problems = problems_of(path)
    expected = {
        "parameters.regime.one_of.bn.lr.values[1]": (4, "expected a number > 0, received -1"),
        "parameters.regime.one_of.bnx": (4, "did you mean 'bn'?"),
        "parameters.optimizer.one_of.adam.momentum": (8, "expected a number in [0, 1), received 2"),
        "parameters.optimizer.one_of.adam.weight_decay.values[0]": (8, "expected a number >= 0, received -1"),
        "parameters.data.one_of.dir": (9, "makes data.path invalid"),
        "parameters.data.one_of.synthetic.synthetic_size": (9, "expected an integer from 1 to 1,000,000, received 0"),
        "parameters.lr_schedule.one_of.cosine.type": (10, "the option's name here"),
    }
    assert sorted(p.key for p in problems) == sorted(expected)
    for key, (line, part) in expected.items():
        p = only(problems, key)
        assert p.line == line and part in p.message, str(p)


def test_problem_str_format() -> None:
    p = Problem("sweeps/x.yaml", 12, "parameters.lr.min", "expected a number > 0, received -0.1")
    assert str(p) == "sweeps/x.yaml:12 parameters.lr.min: expected a number > 0, received -0.1"
    assert str(Problem("x.yaml", None, "", "empty")) == "x.yaml: empty"
    err = pickle.loads(pickle.dumps(SpecError([p])))
    assert err.problems == [p] and str(err) == str(p)


def test_unknown_top_level_key_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", "name: s\ntrials: 2\nreplicats: 3\nparamters: {}\n")
    problems = problems_of(path)
    assert "did you mean 'replicates'?" in only(problems, "replicats").message
    p = only(problems, "paramters")
    assert p.line == 4 and "did you mean 'parameters'?" in p.message


def test_required_keys(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "s.yaml", "description: no name\n"))
    assert "required" in only(problems, "name").message
    assert "required for method 'tpe'" in only(problems, "trials").message


# ---------------------------------------------------------------- hostile or broken files


def test_python_tags_are_rejected_without_executing(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = write(tmp_path, "evil.yaml", f"""\
        name: evil
        trials: 1
        fixed:
          lr: !!python/object/apply:os.system ["touch {marker}"]
          epochs: !!python/name:os.system
    """)
    problems = problems_of(path)
    assert not marker.exists()
    p = only(problems, "fixed.lr")
    assert p.line == 4 and "unsupported YAML tag '!!python/object/apply:os.system'" in p.message
    assert "safe loader" in p.message
    assert only(problems, "fixed.epochs").line == 5


def test_broken_yaml_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "name: b\ntrials: 2\nfixed:\n  lr: [0.1\n  epochs: 3\n")
    (p,) = problems_of(path)
    assert p.file == str(path) and p.line == 5 and "invalid YAML" in p.message and "(line 4)" in p.message
    path = write(tmp_path, "tabs.yaml", "name: b\nfixed:\n\tlr: 0.1\n")
    (p,) = problems_of(path)
    assert p.line == 3 and "invalid YAML" in p.message


@pytest.mark.parametrize(("text", "part"), [
    ("", "empty spec"),
    ("# only a comment\n", "empty spec"),
    ("- name: x\n", "expected a mapping"),
    ("just a string\n", "expected a mapping"),
    ("name: a\n---\nname: b\n", "invalid YAML"),
    ("a: &a [*a, *a]\n", "too large"),
    ("a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n", "too large"),
    ("name: s\nname: t\n", "duplicate key"),
    ("name: s\nseed: " + "9" * 5000 + "\n", "invalid YAML value"),
    ("[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
])
def test_degenerate_files_give_a_problem_not_a_crash(tmp_path: Path, text: str, part: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    problems = problems_of(path)
    assert any(part in p.message for p in problems), [str(p) for p in problems]


def test_unreadable_files(tmp_path: Path) -> None:
    (p,) = problems_of(tmp_path / "missing.yaml")
    assert p.file == str(tmp_path / "missing.yaml") and "file not found" in p.message
    (p,) = problems_of(tmp_path)
    assert "cannot read spec" in p.message
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    (p,) = problems_of(bad)
    assert "cannot read spec" in p.message


# ---------------------------------------------------------------- overrides


def test_overrides_apply_on_top_of_fixed_and_replace_searches(tmp_path: Path) -> None:
    path = write(tmp_path, "lr.yaml", FULL)
    spec = load_spec(path, overrides={"data.source": "npz", "data.path": "/data/c10.npz", "epochs": 20,
                                      "batch_size": 64})
    assert spec.fixed["data.source"] == "npz" and spec.fixed["data.path"] == "/data/c10.npz"
    assert spec.fixed["epochs"] == 20 and spec.fixed["batch_size"] == 64 and "batch_size" not in spec.parameters
    assert load_spec(path).spec_hash() != spec.spec_hash()
    problems = problems_of(path, overrides={"epochs": 2})  # shorter than the scheduler's grace period
    assert "at most the number of epochs (2)" in only(problems, "scheduler.grace_period").message
    # choosing a one_of option keeps searching that option's own parameters
    spec = load_spec(path, overrides={"lr_schedule.type": "cosine", "epochs": 10})
    assert spec.fixed["lr_schedule.type"] == "cosine" and "lr_schedule" not in spec.parameters
    assert spec.parameters["lr_schedule.warmup_epochs"] == Distribution(kind="int_uniform", min=0, max=5)
    # nested overrides are fine too
    assert load_spec(path, overrides={"model": {"depth": 8}}).fixed["model.depth"] == 8


def test_bad_overrides_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "lr.yaml", FULL)
    problems = problems_of(path, overrides={"model.detph": 8, "regime": "bnn", "data.source": "npz"})
    assert {(p.file, p.key) for p in problems} == {
        ("<overrides>", "model.detph"), ("<overrides>", "regime"), ("<overrides>", "data.source")}
    assert "did you mean 'depth'?" in only(problems, "model.detph").message
    assert "data.path" in only(problems, "data.source").message


# ---------------------------------------------------------------- hashing and direct construction


def test_spec_hash_is_stable_and_sensitive(tmp_path: Path) -> None:
    a = load_spec(write(tmp_path, "a.yaml", FULL))
    b = load_spec(write(tmp_path, "b.yaml", FULL.replace("# required", "# a comment")))
    assert len(a.spec_hash()) == 12 and int(a.spec_hash(), 16) >= 0
    assert a.spec_hash() == b.spec_hash() == parse_spec_text(FULL).spec_hash()
    for old, new in [("max: 1.0}", "max: 2.0}"), ("trials: 32", "trials: 33"), ("depth: 20", "depth: 14"),
                     ("gamma: 0.1}", "gamma: 0.2}"), ("replicates: 3", "replicates: 2")]:
        assert old in FULL
        assert parse_spec_text(FULL.replace(old, new)).spec_hash() != a.spec_hash(), old


def test_dataclasses_validate_when_built_directly() -> None:
    with pytest.raises(SpecError, match="min: expected a number > 0"):
        Distribution(kind="log_uniform", min=0, max=1)
    with pytest.raises(SpecError, match="goal"):
        Metric(name="val_loss", goal="lowest")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match=r"fixed\.model\.depth"):
        SweepSpec(name="x", fixed={"model.depth": 21})
    with pytest.raises(SpecError, match="both searched and fixed"):
        SweepSpec(name="x", fixed={"lr": 0.1}, parameters={"lr": Values(values=(0.1,))})
    assert Distribution(kind="q_uniform", min=0, max=1, step=0.3).endpoints() == (0, pytest.approx(0.9))


def test_yaml_value_is_safe_and_reads_yaml12_floats() -> None:
    from bnsweep.spec.sweep_spec import yaml_value

    assert yaml_value("5e-4") == 5e-4 and yaml_value("1E3") == 1000.0 and yaml_value("[0.5, 0.75]") == [0.5, 0.75]
    with pytest.raises(yaml.YAMLError):
        yaml_value('!!python/object/apply:os.system ["true"]')


def test_merge_config_schedule_rules() -> None:
    untyped = TrialConfig.from_dict(merge_config({}, {"lr_schedule.gamma": 0.5}))  # the default kind's
    assert untyped.to_dict()["lr_schedule"] == {"type": "multistep", "milestones": [0.5, 0.75], "gamma": 0.5}
    assert merge_config({"lr_schedule": {"type": "step", "every": 3}}, {"lr_schedule": {"gamma": 0.5}}) == {
        "lr_schedule.type": "step", "lr_schedule.every": 3, "lr_schedule.gamma": 0.5}
    # another kind starts the schedule afresh, whichever order the keys come in
    assert merge_config({"lr_schedule.type": "step", "lr_schedule.every": 3},
                        {"lr_schedule.warmup_epochs": 2, "lr_schedule.type": "cosine"}) == {
        "lr_schedule.type": "cosine", "lr_schedule.warmup_epochs": 2}


def test_docstring_examples_run() -> None:
    import doctest

    import bnsweep.spec.sweep_spec

    assert doctest.testmod(bnsweep.spec.sweep_spec).failed == 0
