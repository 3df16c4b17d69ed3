"""LR schedules and optimizers: the planned curves, the Keras schedules that train, and the optimizer
that really uses them (the notebooks' CosineDecay-to-0 and never-recompiled bugs made impossible).

Everything is real: NumPy and Keras on the TensorFlow backend, TF's own reference schedules, and one
tiny real training run. Runs in a few seconds plus ~15 s for the training run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from bnsweep.engine.optimizers import make_keras_schedule, make_optimizer
from bnsweep.spec.config import TrialConfig
from bnsweep.spec.errors import ConfigError
from bnsweep.spec.schedules import SCHEDULE_TYPES, lr_at, parse_schedule, planned_lr

# One instance of every schedule type (non-default parameters where they matter).
EVERY_SCHEDULE = {
    "constant": {"type": "constant"},
    "step_every": {"type": "step", "every": 3, "gamma": 0.5},
    "step_milestones": {"type": "step", "milestones": [0.3, 9]},
    "multistep": {"type": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1},
    "cosine": {"type": "cosine"},
    "cosine_warmup": {"type": "cosine", "warmup_epochs": 2, "final_fraction": 0.05},
    "one_cycle": {"type": "one_cycle", "pct_start": 0.25},
    "exponential": {"type": "exponential", "gamma": 0.8},
    "exponential_warmup": {"type": "exponential", "gamma": 0.9, "warmup_epochs": 0.2},
    "cosine_restarts": {"type": "cosine_restarts", "first_cycle": 1.5, "t_mul": 2.0, "m_mul": 0.8,
                        "final_fraction": 0.1},
    "cosine_restarts_t1": {"type": "cosine_restarts", "first_cycle": 0.25, "t_mul": 1.0},
    "linear_cosine": {"type": "linear_cosine", "num_periods": 2.0, "alpha": 0.1, "beta": 0.01},
    "rampup_exp": {"type": "rampup_exp", "rampup_epochs": 3},
}


def S(schedule):
    return parse_schedule(schedule) if isinstance(schedule, dict) else schedule


def test_every_schedule_type_is_exercised():
    assert {s["type"] for s in EVERY_SCHEDULE.values()} == set(SCHEDULE_TYPES)


def _keras_curve(schedule, *, lr, epochs, steps_per_epoch):
    """The LR the optimizer would use at every step of the run (float32, Keras ops)."""
    import keras

    sched = make_keras_schedule(S(schedule), lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    steps = np.arange(epochs * steps_per_epoch + 1, dtype=np.int64)
    return steps, np.asarray(keras.ops.convert_to_numpy(sched(steps)), np.float64)


# ---------------------------------------------------------------- planned curves: defining properties


@pytest.mark.parametrize("epochs, drops", [(160, (80, 120)), (8, (4, 6)), (75, (38, 57))])
def test_multistep_divides_by_ten_at_half_and_three_quarters(epochs, drops):
    """75 epochs: 0.5 → 37.5 and 0.75 → 56.25 take effect at the next epoch start (38, 57)."""
    curve = planned_lr(S({"type": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1}), lr=0.1, epochs=epochs)
    expected = [0.1 * 0.1 ** sum(e >= d for d in drops) for e in range(epochs)]
    np.testing.assert_allclose(curve, expected, rtol=1e-12)
    changes = [e for e in range(1, epochs) if curve[e] != curve[e - 1]]
    assert changes == list(drops)


def test_milestones_in_epochs_equal_milestones_as_fractions():
    frac = planned_lr(S({"type": "multistep", "milestones": [0.5, 0.75]}), lr=0.1, epochs=160)
    ep = planned_lr(S({"type": "multistep", "milestones": [80, 120]}), lr=0.1, epochs=160)
    assert frac == ep
    # ≥ 1 is epochs, not a fraction: milestone 1 is the end of the first epoch, whatever the run length.
    one = planned_lr(S({"type": "multistep", "milestones": [1]}), lr=1.0, epochs=50)
    assert one[:2] == [1.0, 0.1] and set(one[1:]) == {0.1}


@pytest.mark.parametrize("fraction, epochs_value, schedule", [
    (0.1, 16, lambda v: {"type": "cosine", "warmup_epochs": v}),
    (0.25, 40, lambda v: {"type": "step", "every": v}),
    (0.1, 16, lambda v: {"type": "cosine_restarts", "first_cycle": v, "t_mul": 2.0}),
    (0.05, 8, lambda v: {"type": "exponential", "warmup_epochs": v, "gamma": 0.97}),
    (0.625, 100, lambda v: {"type": "multistep", "milestones": [v]}),
])
def test_time_parameters_below_one_are_fractions_of_the_run(fraction, epochs_value, schedule):
    a = planned_lr(S(schedule(fraction)), lr=0.1, epochs=160, points_per_epoch=4)
    b = planned_lr(S(schedule(epochs_value)), lr=0.1, epochs=160, points_per_epoch=4)
    np.testing.assert_allclose(a, b, rtol=1e-9)


@pytest.mark.parametrize("steps_per_epoch", [1, 3, 7, 391])
def test_step_schedules_change_at_the_same_epochs_whatever_the_steps_per_epoch(steps_per_epoch):
    """Batch size only changes steps per epoch; the LR still drops at the start of epochs 38 and 57."""
    sched = {"type": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1}
    _steps, curve = _keras_curve(sched, lr=0.1, epochs=75, steps_per_epoch=steps_per_epoch)
    change = np.flatnonzero(np.abs(np.diff(curve)) > 1e-9) + 1  # first step with the new LR
    assert list(change) == [38 * steps_per_epoch, 57 * steps_per_epoch]
    epoch_start = curve[::steps_per_epoch][:75]
    np.testing.assert_allclose(epoch_start, planned_lr(S(sched), lr=0.1, epochs=75), rtol=1e-6)


def test_cosine_with_warmup_rises_then_decays_to_final_fraction_exactly_at_the_end():
    lr, epochs = 0.4, 75
    sched = {"type": "cosine", "warmup_epochs": 5, "final_fraction": 0.01}
    t = np.linspace(0, epochs, 75 * 64 + 1)
    curve = np.asarray(lr_at(t, S(sched), lr=lr, epochs=epochs))
    warm, rest = curve[t < 5], curve[t >= 5]
    assert curve[0] > 0  # step 0 trains
    assert np.all(np.diff(warm) > 0)  # rises
    assert np.all(np.diff(rest) <= 1e-15)  # then decays
    assert curve.max() <= lr + 1e-15 and lr_at(5.0, S(sched), lr=lr, epochs=epochs) == pytest.approx(lr)
    assert float(lr_at(float(epochs), S(sched), lr=lr, epochs=epochs)) == pytest.approx(0.01 * lr, rel=1e-12)
    assert rest[:-1].min() > 0.01 * lr  # reaches the floor only at the end
    # Halfway through the decay it is halfway between peak and floor.
    mid = float(lr_at(5 + 35.0, S(sched), lr=lr, epochs=epochs))
    assert mid == pytest.approx(0.01 * lr + 0.5 * (lr - 0.01 * lr), rel=1e-12)


def test_warmup_never_exceeds_the_peak_even_with_many_steps_per_epoch():
    for sched in ({"type": "cosine", "warmup_epochs": 1}, {"type": "exponential", "warmup_epochs": 1}):
        _, curve = _keras_curve(sched, lr=0.1, epochs=2, steps_per_epoch=4096)
        assert curve.max() <= 0.1 * (1 + 1e-6), sched


def test_cosine_does_not_reach_zero_after_1000_steps_the_notebook_bug():
    """CosineDecay(0.1, decay_steps=1000) hit 0 at epoch 2.6 of 75 (batch 128, 50k images)."""
    sched = {"type": "cosine"}
    curve = planned_lr(S(sched), lr=0.1, epochs=75)
    assert curve[3] > 0.9 * 0.1
    assert min(curve) > 0  # every epoch trains; 0 only after the last step
    _steps, per_step = _keras_curve(sched, lr=0.1, epochs=75, steps_per_epoch=391)
    assert per_step[1000] > 0.9 * 0.1
    assert per_step[: 75 * 391].min() > 0
    assert per_step[75 * 391] == pytest.approx(0.0, abs=1e-9)


def test_one_cycle_peaks_at_pct_start():
    lr, epochs = 0.5, 40
    sched = {"type": "one_cycle", "pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}
    t = np.linspace(0, epochs, epochs * 100 + 1)
    curve = np.asarray(lr_at(t, S(sched), lr=lr, epochs=epochs))
    assert t[np.argmax(curve)] == pytest.approx(0.3 * epochs)
    assert curve.max() == pytest.approx(lr)
    assert curve[0] == pytest.approx(lr / 25)
    assert curve[-1] == pytest.approx(lr / 25 / 1e4)
    peak = int(np.argmax(curve))
    assert np.all(np.diff(curve[: peak + 1]) > 0) and np.all(np.diff(curve[peak:]) < 0)


def test_exponential_multiplies_by_gamma_every_epoch():
    curve = np.asarray(planned_lr(S({"type": "exponential", "gamma": 0.9}), lr=0.2, epochs=30))
    np.testing.assert_allclose(curve[1:] / curve[:-1], 0.9, rtol=1e-9)
    assert curve[0] == pytest.approx(0.2)
    # Continuous within the epoch: half an epoch is a factor sqrt(gamma).
    half = float(lr_at(0.5, S({"type": "exponential", "gamma": 0.9}), lr=0.2, epochs=30))
    assert half == pytest.approx(0.2 * math.sqrt(0.9))
    warm = planned_lr(S({"type": "exponential", "gamma": 0.9, "warmup_epochs": 4}), lr=0.2, epochs=30)
    assert warm[0] < warm[1] < warm[2] < warm[3] < warm[4] == pytest.approx(0.2)
    assert warm[5] == pytest.approx(0.2 * 0.9)


def test_cosine_restarts_restart_at_the_right_epochs_with_t_mul():
    """Cycles of 5, 10, 20 epochs (t_mul 2): restarts at epochs 5, 15, 35; peaks × m_mul each time."""
    lr, epochs = 0.1, 40
    sched = {"type": "cosine_restarts", "first_cycle": 5, "t_mul": 2.0, "m_mul": 0.5, "final_fraction": 0.0}
    curve = planned_lr(S(sched), lr=lr, epochs=epochs, points_per_epoch=8)
    jumps = [i / 8 for i in range(1, len(curve)) if curve[i] > curve[i - 1] + 1e-12]
    assert jumps == [5.0, 15.0, 35.0]
    for i, start in enumerate((0.0, 5.0, 15.0, 35.0)):
        assert float(lr_at(start, S(sched), lr=lr, epochs=epochs)) == pytest.approx(lr * 0.5**i, rel=1e-12)
    # Just before a restart the cycle has (almost) reached its floor.
    assert float(lr_at(15.0 - 1e-6, S(sched), lr=lr, epochs=epochs)) < 1e-9
    # Mid-cycle: half of the cycle's peak (cycle 2 runs 5 → 15, its peak is lr · 0.5).
    assert float(lr_at(10.0, S(sched), lr=lr, epochs=epochs)) == pytest.approx(lr * 0.5 * 0.5, rel=1e-9)


@pytest.mark.parametrize("t_mul, m_mul, alpha", [(2.0, 1.0, 0.0), (1.0, 0.7, 0.1), (1.5, 0.9, 0.05)])
def test_cosine_restarts_matches_keras_cosine_decay_restarts(t_mul, m_mul, alpha):
    import keras

    spe, epochs, first = 10, 30, 2
    sched = {"type": "cosine_restarts", "first_cycle": first, "t_mul": t_mul, "m_mul": m_mul,
             "final_fraction": alpha}
    steps, ours = _keras_curve(sched, lr=0.1, epochs=epochs, steps_per_epoch=spe)
    ref = keras.optimizers.schedules.CosineDecayRestarts(0.1, first * spe, t_mul=t_mul, m_mul=m_mul, alpha=alpha)
    theirs = np.asarray(keras.ops.convert_to_numpy(ref(steps)), np.float64)
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-7)


def test_linear_cosine_matches_tensorflows_linear_cosine_decay():
    import tensorflow as tf

    spe, epochs, lr = 7, 20, 0.1
    for params in ({}, {"num_periods": 2.0, "alpha": 0.1, "beta": 0.01}):
        sched = {"type": "linear_cosine", **params}
        steps, ours = _keras_curve(sched, lr=lr, epochs=epochs, steps_per_epoch=spe)
        p = {"num_periods": 0.5, "alpha": 0.0, "beta": 0.001, **params}
        ref = tf.compat.v1.train.linear_cosine_decay(
            lr, tf.constant(steps, tf.float32), epochs * spe, num_periods=p["num_periods"], alpha=p["alpha"],
            beta=p["beta"])
        theirs = np.asarray(ref() if callable(ref) else ref, np.float64)
        np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-8)
        # The documented formula, written out.
        s = np.minimum(steps, epochs * spe) / (epochs * spe)
        formula = lr * ((p["alpha"] + 1 - s) * 0.5 * (1 + np.cos(np.pi * 2 * p["num_periods"] * s)) + p["beta"])
        np.testing.assert_allclose(ours, formula, rtol=2e-5, atol=1e-8)


def _notebook_lrfn(epoch, start_lr=0.00001, min_lr=0.00001, max_lr=0.00005 * 8, rampup_epochs=5,
                   sustain_epochs=0, exp_decay=0.8):
    """Verbatim logic of CIFAR10_Full_TPU_Different_LR_Schedules.ipynb (8 TPU cores)."""
    if epoch < rampup_epochs:
        return (max_lr - start_lr) / rampup_epochs * epoch + start_lr
    if epoch < rampup_epochs + sustain_epochs:
        return max_lr
    return (max_lr - min_lr) * exp_decay ** (epoch - rampup_epochs - sustain_epochs) + min_lr


def test_rampup_exp_reproduces_the_notebook_callback_exactly():
    curve = planned_lr(S({"type": "rampup_exp"}), lr=4e-4, epochs=30)
    np.testing.assert_allclose(curve, [_notebook_lrfn(e) for e in range(30)], rtol=1e-9)
    assert curve[0] == pytest.approx(1e-5, rel=1e-12)
    assert curve[5] == pytest.approx(4e-4, rel=1e-12)  # the peak
    assert curve[6] == pytest.approx((4e-4 - 1e-5) * 0.8 + 1e-5, rel=1e-12)  # 3.22e-4 (min_lr 1e-5)
    # What the notebook printed for lrfn(0) and lrfn(9): "1e-05 0.00016974400000000002".
    assert curve[9] == pytest.approx(0.00016974400000000002, rel=1e-9)
    # With min_lr 0 the decay is a pure ×0.8 per epoch: 4e-4 → 3.2e-4.
    pure = planned_lr(S({"type": "rampup_exp", "min_lr": 0.0}), lr=4e-4, epochs=8)
    assert pure[5] == pytest.approx(4e-4) and pure[6] == pytest.approx(3.2e-4) and pure[7] == pytest.approx(2.56e-4)
    # Evaluated per whole epoch, as LearningRateScheduler did: constant within an epoch.
    _steps, per_step = _keras_curve({"type": "rampup_exp"}, lr=4e-4, epochs=10, steps_per_epoch=5)
    np.testing.assert_allclose(per_step[:50].reshape(10, 5), np.repeat(curve[:10], 5).reshape(10, 5), rtol=1e-6)


# ---------------------------------------------------------------- the training schedule is the planned one


@pytest.mark.parametrize("name", sorted(EVERY_SCHEDULE))
def test_keras_schedule_equals_numpy_lr_at_at_every_step(name):
    sched, lr, epochs, spe = EVERY_SCHEDULE[name], 0.1, 12, 7
    steps, keras_curve = _keras_curve(sched, lr=lr, epochs=epochs, steps_per_epoch=spe)
    numpy_curve = np.broadcast_to(np.asarray(lr_at(steps / spe, S(sched), lr=lr, epochs=epochs), np.float64),
                                  steps.shape)
    assert np.all(np.isfinite(keras_curve)) and np.all(keras_curve >= 0)
    np.testing.assert_allclose(keras_curve, numpy_curve, rtol=1e-5, atol=1e-7 * lr)
    np.testing.assert_allclose(keras_curve[::spe][:epochs], planned_lr(S(sched), lr=lr, epochs=epochs), rtol=1e-5,
                               atol=1e-7 * lr)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("schedule, key", [
    ({"type": "cosinus"}, "lr_schedule.type"),
    ({}, "lr_schedule.type"),
    ("cosine", "lr_schedule"),
    ({"type": "cosine", "milestones": [0.5]}, "lr_schedule.milestones"),
    ({"type": "cosine", "warmup": 5}, "lr_schedule.warmup"),
    ({"type": "multistep", "milestones": [0.5, -1]}, "lr_schedule.milestones"),
    ({"type": "multistep", "milestones": 0.5}, "lr_schedule.milestones"),
    ({"type": "multistep", "milestones": ["80"]}, "lr_schedule.milestones"),
    ({"type": "multistep", "gamma": "0.1"}, "lr_schedule.gamma"),
    ({"type": "multistep", "gamma": 0}, "lr_schedule.gamma"),
    ({"type": "step"}, "lr_schedule.milestones"),
    ({"type": "step", "every": 2, "milestones": [3]}, "lr_schedule.milestones"),
    ({"type": "step", "every": 0}, "lr_schedule.every"),
    ({"type": "cosine", "warmup_epochs": -1}, "lr_schedule.warmup_epochs"),
    ({"type": "cosine", "final_fraction": 2.0}, "lr_schedule.final_fraction"),
    ({"type": "one_cycle", "pct_start": 1.0}, "lr_schedule.pct_start"),
    ({"type": "one_cycle", "div_factor": 0}, "lr_schedule.div_factor"),
    ({"type": "exponential", "gamma": float("nan")}, "lr_schedule.gamma"),
    ({"type": "cosine_restarts", "t_mul": 0.5}, "lr_schedule.t_mul"),
    ({"type": "cosine_restarts", "first_cycle": 0}, "lr_schedule.first_cycle"),
    ({"type": "rampup_exp", "decay": True}, "lr_schedule.decay"),
    ({"type": "rampup_exp", "start_lr": -1e-5}, "lr_schedule.start_lr"),
])
def test_parse_schedule_rejects_bad_schedules_naming_the_dotted_key(schedule, key):
    with pytest.raises(ConfigError) as info:
        parse_schedule(schedule)
    assert info.value.key == key
    assert str(info.value).startswith(key + ":")
    with pytest.raises(ConfigError) as info:  # the same, inside a trial config
        TrialConfig.from_dict({"lr_schedule": schedule})
    assert info.value.key == key


def test_parse_schedule_fills_defaults_typed_and_frozen():
    out = parse_schedule({"type": "multistep"}, key="search.lr_schedule")
    assert out.model_dump() == {"type": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1}
    assert out.milestones == (0.5, 0.75) and isinstance(out.gamma, float)
    with pytest.raises(ValidationError):
        out.gamma = 0.5  # frozen
    with pytest.raises(ConfigError, match=r"^search\.lr_schedule\.gamma:"):
        parse_schedule({"type": "multistep", "gamma": -1}, key="search.lr_schedule")
    assert parse_schedule(out.model_dump()) == out == parse_schedule({"type": "multistep"})
    # times keep their type (epochs are whole numbers), rates become floats
    cosine = parse_schedule({"type": "cosine", "warmup_epochs": 5, "final_fraction": 0})
    assert cosine.warmup_epochs == 5 and isinstance(cosine.warmup_epochs, int)
    assert isinstance(cosine.final_fraction, float)


# ---------------------------------------------------------------- the optimizer really uses the schedule


def test_a_real_trial_trains_with_the_planned_lr_every_epoch():
    """The notebooks' "never recompiled" bug: the reported per-epoch LR must be the schedule's."""
    from bnsweep.engine.trial import run

    sched = {"type": "multistep", "milestones": [0.4, 0.75], "gamma": 0.1}  # 1.6 → epoch 2, 3 → epoch 3
    config = {"model": {"depth": 8}, "regime": "bn", "epochs": 4, "batch_size": 16, "steps_per_epoch": 3,
              "lr": 0.05, "lr_schedule": sched,
              "data": {"source": "synthetic", "synthetic_size": 64, "val_size": 16, "augment": "none"}}
    reported = []
    result = run(config, report=reported.append)
    assert result.status == "completed" and result.epochs_run == 4
    expected = planned_lr(S(sched), lr=0.05, epochs=4)
    np.testing.assert_allclose(expected, [0.05, 0.05, 0.005, 0.0005], rtol=1e-12)
    np.testing.assert_allclose([m.lr for m in result.history], expected, rtol=1e-6)
    np.testing.assert_allclose([m.lr for m in reported], expected, rtol=1e-6)
    assert result.config["lr_schedule"] == sched and result.config["lr"] == 0.05


def _cfg(**optimizer):
    lr = optimizer.pop("lr", 0.1)
    return TrialConfig.from_dict({"optimizer": optimizer, "lr": lr, "lr_schedule": {"type": "constant"},
                                  "epochs": 1})


def _apply(opt, pairs):
    import keras

    opt.apply_gradients([(keras.ops.convert_to_tensor(np.asarray(g, np.float32)), v) for g, v in pairs])


def _np(v):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


def test_coupled_l2_sgd_step_is_w_minus_lr_times_g_plus_wd_w():
    import keras

    w0 = np.array([1.0, -2.0, 3.0, 0.25])
    g = np.array([0.5, 0.5, -1.0, 0.0])
    w = keras.Variable(w0.astype(np.float32))
    opt = make_optimizer(_cfg(name="sgd", momentum=0.0, weight_decay=0.01), steps_per_epoch=1, no_decay=[])
    _apply(opt, [(g, w)])
    np.testing.assert_allclose(_np(w), w0 - 0.1 * (g + 0.01 * w0), rtol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_and_nesterov_reach_the_keras_optimizer(nesterov):
    import keras

    opt = make_optimizer(_cfg(name="sgd", momentum=0.8, nesterov=nesterov, weight_decay=0.0),
                         steps_per_epoch=1, no_decay=[])
    assert isinstance(opt, keras.optimizers.SGD)
    assert opt.momentum == pytest.approx(0.8) and opt.nesterov is nesterov
    # Two steps against the update rule (Keras: v ← m·v − lr·g; w ← w + v, or w + m·v − lr·g with Nesterov).
    w0, g1, g2 = np.array([1.0, -1.0]), np.array([0.5, 0.25]), np.array([-0.2, 0.4])
    w = keras.Variable(w0.astype(np.float32))
    _apply(opt, [(g1, w)])
    _apply(opt, [(g2, w)])
    ref, v = w0.copy(), np.zeros(2)
    for g in (g1, g2):
        v = 0.8 * v - 0.1 * g
        ref = ref + (0.8 * v - 0.1 * g if nesterov else v)
    np.testing.assert_allclose(_np(w), ref, rtol=1e-6)


def test_adam_hyperparameters_reach_the_keras_optimizer():
    import keras

    adam = make_optimizer(_cfg(name="adam", beta_1=0.8, beta_2=0.99, epsilon=1e-6), steps_per_epoch=1,
                          no_decay=[])
    assert isinstance(adam, keras.optimizers.Adam)
    assert (adam.beta_1, adam.beta_2, adam.epsilon) == (0.8, 0.99, 1e-6)
    adamw = make_optimizer(_cfg(name="adamw", weight_decay=0.05), steps_per_epoch=1, no_decay=[])
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == pytest.approx(0.05)


def test_optimizer_learning_rate_is_the_schedule():
    import keras

    cfg = TrialConfig.from_dict({"lr": 0.2, "epochs": 10, "lr_schedule": {"type": "multistep", "milestones": [3]}})
    opt = make_optimizer(cfg, steps_per_epoch=4, no_decay=[])
    w = keras.Variable(np.zeros(2, np.float32))
    seen = []
    for _ in range(16):
        seen.append(float(_np(opt.learning_rate)))
        _apply(opt, [(np.ones(2), w)])
    np.testing.assert_allclose(seen, [0.2] * 12 + [0.02] * 4, rtol=1e-6)


def _tiny_bn_net():
    import keras

    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling2D()(x))
    net = keras.Model(inputs, outputs)
    bn = net.get_layer("bn")
    bn.gamma.assign(np.linspace(0.2, 0.8, 4).astype(np.float32))
    bn.beta.assign(np.linspace(-0.5, 0.5, 4).astype(np.float32))  # nonzero: decay would show
    return net, net.get_layer("conv").kernel, bn


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_decay_bn_false_leaves_bn_gamma_beta_undecayed_while_convs_decay(name):
    """Zero gradients: only weight decay moves a variable (SGD momentum 0 or AdamW's first step)."""
    _net, kernel, bn = _tiny_bn_net()
    lr, wd = 0.1, 0.01
    before = {"kernel": _np(kernel), "gamma": _np(bn.gamma), "beta": _np(bn.beta)}
    opt = make_optimizer(_cfg(name=name, momentum=0.0, weight_decay=wd, lr=lr), steps_per_epoch=1,
                         no_decay=[bn.gamma, bn.beta])
    _apply(opt, [(np.zeros(v.shape), v) for v in (kernel, bn.gamma, bn.beta)])
    np.testing.assert_allclose(_np(kernel), before["kernel"] * (1 - lr * wd), rtol=1e-6)
    np.testing.assert_array_equal(_np(bn.gamma), before["gamma"])
    np.testing.assert_array_equal(_np(bn.beta), before["beta"])

    # Control (decay_bn: true): the same step does decay γ and β.
    _net2, kernel2, bn2 = _tiny_bn_net()
    opt2 = make_optimizer(_cfg(name=name, momentum=0.0, weight_decay=wd, lr=lr), steps_per_epoch=1, no_decay=[])
    _apply(opt2, [(np.zeros(v.shape), v) for v in (kernel2, bn2.gamma, bn2.beta)])
    np.testing.assert_allclose(_np(bn2.gamma), before["gamma"] * (1 - lr * wd), rtol=1e-6)
    np.testing.assert_allclose(_np(bn2.beta), before["beta"] * (1 - lr * wd), rtol=1e-6)


def test_adamw_decay_is_decoupled_and_adam_decay_is_coupled():
    import keras

    lr, wd, eps = 0.01, 0.1, 1e-7
    w0, g = np.array([2.0, -4.0]), np.array([0.3, 0.3])
    # AdamW: Adam's step on g alone, plus w·lr·wd (Keras applies the decay before the Adam step).
    w = keras.Variable(w0.astype(np.float32))
    _apply(make_optimizer(_cfg(name="adamw", weight_decay=wd, lr=lr), steps_per_epoch=1, no_decay=[]), [(g, w)])
    m, v = 0.1 * g, 0.001 * g * g
    alpha = lr * math.sqrt(1 - 0.999) / (1 - 0.9)
    decayed = w0 - w0 * wd * lr
    np.testing.assert_allclose(_np(w), decayed - alpha * m / (np.sqrt(v) + eps), rtol=1e-5)
    # Coupled Adam: the decay enters the gradient (g + wd·w), then Adam normalizes it.
    w = keras.Variable(w0.astype(np.float32))
    _apply(make_optimizer(_cfg(name="adam", weight_decay=wd, lr=lr), steps_per_epoch=1, no_decay=[]), [(g, w)])
    gc = g + wd * w0
    m, v = 0.1 * gc, 0.001 * gc * gc
    np.testing.assert_allclose(_np(w), w0 - alpha * m / (np.sqrt(v) + eps), rtol=1e-5)
