"""Shared test set-up: the Keras backend and quiet TensorFlow logs, set before Keras is imported."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# ---------------------------------------------------------------- tiny_run_dir (results/analysis tests)
# A real run directory: tiny ResNet-8 trials really trained on synthetic data, recorded with
# bnsweep.store.save_trial_record exactly as the worker does. Built once per session (~30 s).

import dataclasses as _dc
import json as _json
import time as _time
from pathlib import Path as _Path

import pytest

TINY_BASE = {"model": {"depth": 8}, "epochs": 2, "batch_size": 32, "steps_per_epoch": 2,
             "data": {"source": "synthetic", "synthetic_size": 64, "val_size": 32, "test_size": 32}}
_COSINE = {"type": "cosine", "warmup_epochs": 1}
# trial_id -> (overrides of TINY_BASE, seeds, how it ends)
TINY_TRIALS = {
    "t00_all_w1": ({"regime": "all"}, (0, 1), "completed"),
    "t01_bn_w1": ({"regime": "bn", "lr_schedule": _COSINE}, (0, 1), "completed"),
    "t02_all_w2": ({"regime": "all", "model": {"depth": 8, "width": 2}}, (0, 1), "completed"),
    "t03_bn_w2": ({"regime": "bn", "model": {"depth": 8, "width": 2}, "lr_schedule": _COSINE}, (0, 1), "completed"),
    "t04_bn_b64": ({"regime": "bn", "batch_size": 64, "steps_per_epoch": 1, "lr_schedule": _COSINE}, (0,),
                   "completed"),
    "t05_all_lr1e8": ({"regime": "all", "lr": 1e8}, (0,), "diverged"),
    "t07_bn_output": ({"regime": "bn_output"}, (0,), "completed"),
    "t06_bn_running": ({"regime": "bn"}, (0,), "running"),  # one of two epochs, checkpoint only
}


@_dc.dataclass(frozen=True)
class TinyRun:
    run_dir: _Path
    trials: dict  # trial_id -> (config dict, seeds, expected status)
    seconds: float


def _tiny_config(overrides: dict, seed: int) -> dict:
    cfg = _json.loads(_json.dumps(TINY_BASE))
    for k, v in overrides.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    cfg["seed"] = seed
    return cfg


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> TinyRun:
    from bnsweep.base.meta import library_versions
    from bnsweep.engine.data import load_data
    from bnsweep.engine.trial import Diverged, TrialRun
    from bnsweep.spec.config import DataConfig
    from bnsweep.store.records import save_trial_record, save_trial_start
    from bnsweep.store.table import write_results_table

    t0 = _time.perf_counter()
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    (run_dir / "ray").mkdir(parents=True)
    (run_dir / "ray" / "experiment_state.json").write_text("not for analysis")
    versions = library_versions()
    sweep = {"name": "tiny", "spec_hash": "0123456789ab", "created": "2026-11-27T00:00:00+00:00",
             "git_commit": None, "versions": versions, "replicates": 2, "seed_base": 0,
             "metric": {"name": "val_accuracy", "goal": "maximize"}, "spec_source": "tests/conftest.py"}
    (run_dir / "sweep.json").write_text(_json.dumps(sweep))
    data = load_data(DataConfig(**TINY_BASE["data"]))
    trials = {}
    for trial_id, (overrides, seeds, expected) in TINY_TRIALS.items():
        trials[trial_id] = (_tiny_config(overrides, 0), seeds, expected)
        for i, seed in enumerate(seeds):
            cfg = _tiny_config(overrides, seed)
            seed_dir = run_dir / "trials" / trial_id / f"seed-{seed}"
            meta = {"sweep": "tiny", "spec_hash": sweep["spec_hash"], "git_commit": None, "versions": versions,
                    "started_at": "2026-11-27T00:00:00+00:00"}
            save_trial_start(run_dir, trial_id=trial_id, seed=seed, replicate=i, config=cfg, meta=meta)
            run = TrialRun(cfg, data=data, checkpoint_dir=seed_dir / "checkpoint")
            status, reason = "completed", ""
            epochs = 1 if expected == "running" else run.config.epochs
            while run.epoch < epochs:
                try:
                    run.train_epoch()
                except Diverged as e:
                    status, reason = "diverged", str(e)
                    break
            if expected == "running":
                continue
            assert status == expected, (trial_id, status, reason)
            save_trial_record(run_dir, trial_id=trial_id, seed=seed, replicate=i, result=run.finish(status, reason),
                              net=run.net, meta=meta)
    write_results_table(run_dir)
    return TinyRun(run_dir, trials, _time.perf_counter() - t0)


# ---------------------------------------------------------------- wandb_isolated (W&B tests)
# A clean W&B environment: HOME in tmp (so nothing can reach the real ~/.cache, ~/.config, ~/.netrc),
# no W&B key, mode, server or directory settings inherited from the outside, and bnsweep.store.tracking's
# "switched off after a failure" state reset before and after the test.

_WANDB_ENV = ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR",
              "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ENTITY", "WANDB_PROJECT",
              "WANDB_DISABLED", "WANDB_SILENT", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_TAGS", "WANDB_NAME")


@pytest.fixture
def wandb_isolated(tmp_path, monkeypatch) -> _Path:
    """Yields the temporary HOME (empty); see the comment above."""
    from bnsweep.store import tracking

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))  # absent unless a test writes it
    for name in (*_WANDB_ENV, "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    tracking._reset_for_tests()
    yield home
    tracking._reset_for_tests()
