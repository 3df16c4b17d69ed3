"""`bnsweep plan`: what a spec will train, before it trains."""

from __future__ import annotations

from bnsweep.report.plan import make_plan
from bnsweep.spec.sweep_spec import parse_spec_text


def test_a_one_of_over_the_model_plans_each_option_s_own_networks():
    spec = parse_spec_text("""
name: oneof
method: random
trials: 4
replicates: 2
fixed: {epochs: 3, regime: bn}
parameters:
  model:
    one_of:
      small: {depth: 14}
      large: {depth: 32, width: {values: [1, 2]}}
""")
    r = make_plan(spec, probe=False)
    assert [(m["depth"], m["width"]) for m in r.models] == [(14, 1), (32, 1), (32, 2)]
    assert [m["trainable"] for m in r.models] == [1120, 2464, 4928]  # BN γ/β only
    assert r.trainings == 8 and r.epochs == 3


def test_the_planned_lr_curve_is_the_scaled_lr_that_will_train():
    spec = parse_spec_text("""
name: scaled
method: grid
fixed: {epochs: 4, batch_size: 1024, lr: 0.1, lr_scaling: linear, lr_schedule: {type: constant}}
""")
    (sched,) = make_plan(spec, probe=False).schedules
    assert sched["curve"] == [0.8, 0.8, 0.8, 0.8]


def test_regime_searched_as_a_one_of_counts_every_regime():
    spec = parse_spec_text("""
name: regimes
method: grid
fixed: {epochs: 2, model: {depth: 8}}
parameters:
  regime: {values: [all, bn, none]}
""")
    r = make_plan(spec, probe=False)
    assert {m["regime"]: m["trainable"] for m in r.models} == {"all": 78042, "bn": 672, "none": 0}
    assert r.configurations == 3


def test_plan_prints_no_tensorflow_start_up_noise(tmp_path):
    """TensorFlow 2.21 prints 9-11 lines (cuInit, oneDNN, CPU features) from C++ before any logging setting
    applies; `plan`'s probe imports it: none of those lines reach the terminal, the plan does."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    got = subprocess.run([sys.executable, "-m", "bnsweep", "plan", str(root / "sweeps" / "quickstart.yaml"),
                          "--set", "data.source=synthetic"], capture_output=True, text=True, timeout=300, env=env)
    assert got.returncode == 0, got.stderr[-2000:]
    assert "probe" in got.stdout.lower() or "images/s" in got.stdout, got.stdout
    noise = [line for line in got.stderr.splitlines() if "I0000" in line or "cuInit" in line or "absl" in line
             or "oneDNN" in line]
    assert not noise, noise
