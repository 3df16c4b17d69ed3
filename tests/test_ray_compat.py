"""Every private access to Ray Tune and Optuna (bnsweep/sweep/ray_compat.py) still works with the
installed versions: each test fails loudly, naming the seam, when an upgrade breaks one. Real Ray (one
local instance for the module), real Optuna SQLite storages."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import optuna
import pytest

from bnsweep.sweep import ray_compat


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_tune_controller_snapshot_staging_and_restored_callbacks(ray_local, tmp_path):
    from ray import tune

    seen: dict = {}

    def _trainable(config):  # (defined here: pickled by value, the workers cannot import this test module)
        from ray import tune

        tune.report({"score": 1.0})

    class Probe(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            c = ray_compat.tune_controller_from_stack()
            seen["controller"] = c is not None
            ray_compat.snapshot_experiment(c)  # forced, waited for
            staging, state_name = ray_compat.experiment_staging(c)
            seen["state_written"] = (Path(staging) / state_name).is_file()

    tuner = tune.Tuner(_trainable, param_space={"x": tune.grid_search([1])},
                       run_config=tune.RunConfig(name="compat", storage_path=str(tmp_path), callbacks=[Probe()],
                                                 verbose=0))
    tuner.fit()
    assert seen == {"controller": True, "state_written": True}, \
        f"Ray Tune's controller seam (tune_controller_from_stack / snapshot / staging) broke: {seen}"
    restored = tune.Tuner.restore(str(tmp_path / "compat"), trainable=_trainable)
    new = Probe()
    ray_compat.set_restored_callbacks(restored, [new])
    assert restored._local_tuner.get_run_config().callbacks == [new], "Tuner.restore's callbacks seam broke"


def test_a_ctrl_c_taken_by_ray_tune_s_own_handler_is_told_apart_from_a_loop_that_ended_by_itself(ray_local, tmp_path):
    """``tune_took_sigint``: Tune's handler (``_setup_signal_catching``) puts back the one it found on a Ctrl-C
    and never otherwise. A run given a Ctrl-C at its first step ends with trials left (4 samples, 1 CPU);
    a run left alone ends with all of them."""
    import signal

    from ray import tune

    def _trainable(config):
        import time

        from ray import tune

        time.sleep(0.5)
        tune.report({"score": 1.0})

    class CtrlC(tune.Callback):
        def on_step_begin(self, iteration, trials, **info):
            if not seen.get("sent"):
                seen["sent"] = True
                signal.raise_signal(signal.SIGINT)  # Tune's handler: ends the loop gracefully, no exception

    ours, usr1 = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    results = {}
    try:
        for name, callbacks in (("ctrl_c", [CtrlC()]), ("left_alone", [])):
            seen: dict = {}
            signal.signal(signal.SIGINT, signal.default_int_handler)
            before = ray_compat.sigint_handler()
            grid = tune.Tuner(_trainable, param_space={"x": tune.grid_search([1, 2, 3, 4])},
                              run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), callbacks=callbacks,
                                                        verbose=0)).fit()
            results[name] = (ray_compat.tune_took_sigint(before), sum(r.metrics.get("score") == 1.0 for r in grid))
    finally:
        signal.signal(signal.SIGINT, ours)
        signal.signal(signal.SIGUSR1, usr1)
    assert results["left_alone"] == (False, 4), f"a run without a Ctrl-C read as interrupted: {results}"
    took, done = results["ctrl_c"]
    assert took and done < 4, f"Ray Tune's SIGINT seam (tune_took_sigint) broke: {results}"


def test_a_hung_trial_is_failed_with_a_reason_its_actor_killed_and_retried_from_its_checkpoint(ray_local, tmp_path):
    """``fail_hung_trial`` (TuneController._process_trial_failure + ray.kill): with one CPU, the retry can only
    start once the hung actor's CPU is freed; it restores the checkpoint; the reason is in the error file."""
    import time

    from ray import tune

    def _hangs_once(config):
        import json
        import os
        import tempfile
        import time
        from pathlib import Path

        from ray import tune

        ckpt = tune.get_checkpoint()
        start = json.loads((Path(ckpt.to_directory()) / "e.json").read_text())["epoch"] if ckpt else 0
        for epoch in range(start + 1, 3):
            if epoch == 2 and ckpt is None:
                time.sleep(300)  # hung (first attempt only)
            d = tempfile.mkdtemp()
            (Path(d) / "e.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch, "start": start, "pid": os.getpid()},
                        checkpoint=tune.Checkpoint.from_directory(d))

    seen: dict = {"results": []}

    class Stopper(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            seen["results"].append((result["epoch"], result["start"]))
            seen.setdefault("first", time.monotonic())
            seen["trial"] = trial

        def on_step_end(self, iteration, trials, **info):
            if "first" in seen and "retried" not in seen and time.monotonic() - seen["first"] > 1:
                seen["retried"] = ray_compat.fail_hung_trial(ray_compat.tune_controller_from_stack(), seen["trial"],
                                                             "bnsweep-reason: hung, stopped by the test")

    t0 = time.monotonic()
    tune.Tuner(_hangs_once, run_config=tune.RunConfig(
        name="hung", storage_path=str(tmp_path), callbacks=[Stopper()], verbose=0,
        failure_config=tune.FailureConfig(max_failures=1))).fit()
    took = time.monotonic() - t0
    trial = seen["trial"]
    assert seen.get("retried") is True, "fail_hung_trial's seam (TuneController._process_trial_failure) broke"
    assert seen["results"] == [(1, 0), (2, 1)], f"the retry did not restore the checkpoint: {seen['results']}"
    assert trial.status == "TERMINATED" and trial.num_failures == 1
    assert "hung, stopped by the test" in Path(trial.error_file).read_text()
    assert took < 120, f"{took:.0f} s: the hung actor was not killed (its CPU held until Ray's 600 s clean-up)"


def test_aws_variables_are_no_longer_propagated_to_trial_actors():
    from ray.tune.execution import class_cache

    saved = set(class_cache.ENV_VARS_TO_PROPAGATE)
    assert any(k.startswith("AWS_") for k in saved), "Ray Tune no longer lists AWS_* in ENV_VARS_TO_PROPAGATE"
    try:
        ray_compat.stop_propagating_aws_env()
        assert not any(k.startswith("AWS_") for k in class_cache.ENV_VARS_TO_PROPAGATE)
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE.clear()
        class_cache.ENV_VARS_TO_PROPAGATE.update(saved)


def _space(trial):
    return {"lr": trial.suggest_float("lr", 0.01, 0.1, log=True)}


def test_the_pickled_optuna_search_reconnects_to_a_moved_study(tmp_path):
    """OptunaSearch's private fields (_ot_study, _ot_trials, _completed_trials, Optuna's Trial._trial_id)
    and ResumableOptunaSearch's pickling: the study copied elsewhere (a fresh machine) continues."""
    from bnsweep.sweep.searcher import ResumableOptunaSearch, use_storage

    first = tmp_path / "a" / "optuna.db"
    first.parent.mkdir()
    storage = use_storage(f"sqlite:///{first}")
    s = ResumableOptunaSearch(space=_space, metric="score", mode="max", storage=storage, study_name="bnsweep",
                              max_configurations=3)
    assert ray_compat.searcher_study(s) is not None, "OptunaSearch._ot_study is gone"
    config = s.suggest("t1")
    s.suggest("t2")
    assert ray_compat.searcher_live_trials(s) == ({"t1", "t2"}, set()), "OptunaSearch._ot_trials/_completed_trials"
    s.on_trial_complete("t1", {"score": 0.5})
    assert ray_compat.searcher_live_trials(s)[1] == {"t1"}
    blob = pickle.dumps(s)
    assert str(first).encode() not in blob, "the pickled searcher still names its SQLite file"
    path = tmp_path / "searcher.pkl"
    s.save(str(path))
    moved = tmp_path / "b" / "optuna.db"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    shutil.rmtree(first.parent)  # the first machine's cache is gone
    use_storage(f"sqlite:///{moved}")
    again = pickle.loads(blob)  # as Ray unpickles tuner.pkl
    again.restore(str(path))  # and then its searcher-state-*.pkl
    again.on_trial_complete("t2", {"score": 0.7})
    trials = optuna.load_study(study_name="bnsweep", storage=f"sqlite:///{moved}").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert trials[0].params["lr"] == config["lr"] and [t.value for t in trials] == [0.5, 0.7]
    assert again.suggest("t3") is not None and again.suggest("t4") == "FINISHED"  # the cap counts the study


def test_stale_running_trials_are_failed_through_optuna_s_public_tell(tmp_path):
    from bnsweep.sweep.recovery import fail_stale_optuna_trials

    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="bnsweep", storage=url)
    study.ask()
    study.ask()
    assert fail_stale_optuna_trials(url) == 2
    trials = optuna.load_study(study_name="bnsweep", storage=url).trials
    assert {t.state for t in trials} == {optuna.trial.TrialState.FAIL}
    assert all(t.user_attrs.get("bnsweep_interrupted") for t in trials)


GRID_LRS = (0.01, 0.02, 0.04, 0.08)


def _grid_space(trial):
    return {"lr": trial.suggest_categorical("lr", GRID_LRS)}


def test_an_orphaned_running_trial_frees_its_grid_point_and_is_not_a_configuration(tmp_path):
    """Optuna's Trial/FrozenTrial ``_trial_id`` and OptunaSearch's ``_ot_trials`` (ray_compat): a driver killed
    between asking Optuna and Ray's snapshot leaves a RUNNING trial the restored searcher never handed out.
    The restored searcher fails it as interrupted before its first suggestion: the grid point it held is given
    to a later trial (not a duplicate of another), and the budget does not count it."""
    from bnsweep.sweep.searcher import ResumableOptunaSearch, use_storage
    from bnsweep.sweep.space import GridPointSampler

    points = [{"lr": v} for v in GRID_LRS]
    url = f"sqlite:///{tmp_path / 'o.db'}"
    s = ResumableOptunaSearch(space=_grid_space, metric="score", mode="max", storage=use_storage(url),
                              study_name="bnsweep", sampler=GridPointSampler(points), max_configurations=4)
    assert s.suggest("t0") == {"lr": 0.01}
    s.on_trial_complete("t0", {"score": 0.5})
    path = tmp_path / "searcher.pkl"
    s.save(str(path))  # Ray's snapshot: it knows t0 only
    assert s.suggest("t1") == {"lr": 0.02}  # ... and then the driver dies: t1 is RUNNING in Optuna, unknown to Ray
    study = ray_compat.searcher_study(s)
    assert ray_compat.optuna_trial_storage_id(study.trials[1]) == ray_compat.optuna_trial_storage_id(s._ot_trials["t1"])
    assert ray_compat.searcher_handed_trial_ids(s) == {ray_compat.optuna_trial_storage_id(t) for t in study.trials}

    again = pickle.loads(pickle.dumps(s))  # as Ray unpickles tuner.pkl ...
    again.restore(str(path))  # ... and then its searcher state
    configs = [again.suggest(f"r{i}") for i in range(4)]
    for i in range(3):
        again.on_trial_complete(f"r{i}", {"score": 0.6})
    assert configs[:3] == [{"lr": 0.04}, {"lr": 0.08}, {"lr": 0.02}] and configs[3] == "FINISHED", configs
    trials = optuna.load_study(study_name="bnsweep", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs["bnsweep_interrupted"] and again.ended_in_study() == 4
    assert sorted(t.params["lr"] for t in trials if t.state.name == "COMPLETE") == [0.01, 0.02, 0.04, 0.08]


def test_ray_core_seams_of_the_pre_flight_and_of_joining_a_cluster(ray_local):
    """Ray's view of this machine, the autoscaler's config, the config reload, the bootstrap address and the
    GCS probe: their callers fall back quietly when one is gone, so this test is what notices."""
    import ray

    resources, labels = ray_compat.local_resources(num_cpus=3, num_gpus=0)
    assert resources["CPU"] == 3 and resources.get("memory", 0) > 0 and isinstance(labels, dict), \
        f"ray_compat.local_resources (ResourceAndLabelSpec) broke: {resources}"
    config = ray_compat.autoscaler_cluster_config()  # a local Ray reports no autoscaler; it must answer
    assert config is None or hasattr(config, "node_group_configs"), f"autoscaler_cluster_config: {config!r}"
    ray_compat.reload_ray_config()  # ray._raylet.Config.initialize("")
    try:
        found = ray_compat.bootstrap_address("auto")
    except ConnectionError:  # Ray's own answer when no cluster is recorded on this machine
        found = None
    assert found is None or ":" in found, f"bootstrap_address('auto') returned {found!r}"
    gcs = ray.get_runtime_context().gcs_address
    ray_compat.probe_gcs(gcs, timeout_s=10)  # the live GCS of this test's Ray accepts us
    with pytest.raises(Exception) as refused:
        ray_compat.probe_gcs("127.0.0.1:1", timeout_s=1)  # nobody there
    assert not isinstance(refused.value, (ImportError, AttributeError, TypeError)), \
        f"ray_compat.probe_gcs (InnerGcsClient.standalone) broke: {refused.value!r}"


def test_newest_checkpoint_names_a_trials_last_checkpoint_in_its_storage(ray_local, tmp_path):
    from ray import tune

    seen: dict = {}

    def _trainable(config):  # three reports, each with a checkpoint folder holding its epoch
        import tempfile as _tf
        from pathlib import Path as _P

        from ray import tune

        for epoch in (1, 2, 3):
            with _tf.TemporaryDirectory() as d:
                (_P(d) / "epoch.txt").write_text(str(epoch))
                tune.report({"epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(d))

    class Probe(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            ckpt = ray_compat.newest_checkpoint(trial)
            with ckpt.as_directory() as d:
                seen["epoch"] = (Path(d) / "epoch.txt").read_text()

    tune.Tuner(_trainable, run_config=tune.RunConfig(name="newest", storage_path=str(tmp_path), callbacks=[Probe()],
                                                     verbose=0)).fit()
    assert seen == {"epoch": "3"}, f"newest_checkpoint (Trial.storage: storage_filesystem, trial_fs_path) broke: {seen}"
