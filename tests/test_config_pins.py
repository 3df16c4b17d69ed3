"""Pins computed with the untyped (dataclass + dict) trial config before the typed rewrite: the records on disk,
the Ray configs, the config hashes (run-directory names, replicate groups), the spec hashes (``resume`` compares
them) and the results-table columns must not change with it.

``notebook_recipe``'s grid configs are not pinned: its ``momentum: 0`` / ``weight_decay: 0`` are integers, which
the old config kept as ``0`` (and Keras refused in every trial); float fields now hold floats, so those configs
hash as the same recipe written ``0.0`` does.

Fields added since the pins were taken are pinned as additions: ``model.arch`` (the notebooks' network) and
``precision`` are hashed only off their defaults and ``replicates_layout`` never, so every pinned hash stands;
``regimes.yaml`` gained the per-channel random control (its spec hash is new, its old grid points hash as before).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bnsweep.spec.config import TrialConfig, config_hash
from bnsweep.spec.sweep_spec import load_spec

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    ({}, "6334aae40c83", "47e7fa403d7d"),
    ({"regime": "bn", "model": {"depth": 8}, "epochs": 2}, "87e266f85cab", "7f22e6e56181"),
    ({"lr_schedule": {"type": "cosine", "warmup_epochs": 2}}, "8efef1a9acde", "f853b5ef7302"),
    ({"lr_schedule": {"type": "step", "every": 30}}, "4743df1ebe4d", "2cc6307a0c51"),
    ({"lr_schedule": {"type": "step", "milestones": [0.3, 9], "gamma": 0.5}}, "355b7c6ae51f", "0e8d69ee8b60"),
    ({"lr_schedule": {"type": "one_cycle", "pct_start": 0.25}}, "70cf2326e4b9", "1f391d409b7d"),
    ({"lr_schedule": {"type": "exponential", "gamma": 0.9, "warmup_epochs": 0.2}}, "2dae7bb32cb2", "e477003b8931"),
    (
        {
            "lr_schedule": {
                "type": "cosine_restarts",
                "first_cycle": 0.142857,
                "t_mul": 2.0,
                "m_mul": 1.0,
                "final_fraction": 0.0,
            }
        },
        "edd4a12e6994",
        "287f95db1ab4",
    ),
    ({"lr_schedule": {"type": "linear_cosine"}}, "b8841b4aa852", "965df5adb6a0"),
    ({"lr_schedule": {"type": "rampup_exp", "rampup_epochs": 3}}, "b945da016ea3", "e694384ba59b"),
    (
        {
            "lr_schedule": {"type": "constant"},
            "optimizer": {"name": "adamw", "weight_decay": 0.05},
            "lr": 0.001,
            "batch_size": 1024,
            "lr_scaling": "linear",
            "data": {"source": "npz", "path": "/x/y.npz", "train_size": 5000, "val_size": 1000},
            "seed": 3,
            "jit_compile": False,
            "threads": 2,
            "steps_per_epoch": 5,
            "strategy": "none",
            "backend": "tensorflow",
        },
        "4c1dbf751766",
        "4027359a89ce",
    ),
]
SPEC_HASHES = {
    "all_frozen.yaml": "3d7d82b155f1",
    "batch_sizes.yaml": "c1a4135d8fdc",
    "cifar10_full.yaml": "f1bba8c2d1d5",
    "cifar10_full_tpu.yaml": "0618fb0536ae",
    "cifar10_subset.yaml": "bb13b546f202",
    "depth.yaml": "a95aa34d51c5",
    "lr_schedules.yaml": "cb79ea421a13",
    "lr_schedules_all.yaml": "f566be80df42",
    "notebook_recipe.yaml": "aff6e86c208d",
    "quickstart.yaml": "e4e1fe444f51",
    "regimes.yaml": "5766b7569c44",  # was a0ae4e5dbe48 before random_k_channel joined its regimes
    "visualization.yaml": "e70a56fe2bae",
    "width.yaml": "fcc47bc26536",
}
GRID_CONFIG_HASHES = {
    "all_frozen.yaml": ["01c93acad95f", "b538091a9b50"],
    "cifar10_full.yaml": ["6334aae40c83", "3fe720a392fd"],
    "cifar10_full_tpu.yaml": ["73cb02630918", "38a6f5f32640"],
    "cifar10_subset.yaml": ["70f9506c3443", "669e02d0146d"],
    "depth.yaml": [
        "5b85f605f1bd",
        "6334aae40c83",
        "b37a94b47668",
        "e935c0351a10",
        "25783ed1d856",
        "7b17f344d45c",
        "3fe720a392fd",
        "faa61cc61739",
        "0649bc504cce",
        "f0a2198e6b81",
        "b430944ff6fb",
        "7f9f3819c09f",
        "88489ccbd39a",
        "eb1995761874",
        "1cb73bcd6622",
        "1236f5ac1597",
        "5b008e03b4f9",
        "7bfeb55c4ac9",
        "d3c1268c101b",
        "51a3449bd41e",
    ],
    "quickstart.yaml": ["495a73883a2e", "eee3533e617b"],
    "regimes.yaml": [
        "6334aae40c83",
        "3fe720a392fd",
        "7f9f3819c09f",
        "8b7620cf4766",
        "e3e05c10192c",
        "b538091a9b50",
        "01c93acad95f",
        "5b008e03b4f9",
        "7925c6ee43cf",  # random_k_channel (added; the 8 above are the pins)
    ],
    "visualization.yaml": ["6334aae40c83", "3fe720a392fd"],
    "width.yaml": [
        "e14ef42b6be9",
        "78dfcfc0e573",
        "89eab03a5e42",
        "a17349691bf9",
        "33844d80dd3a",
        "7aa55f3802cf",
        "faa3977c9261",
        "6ce63f5b9d00",
        "d441a6cf9df1",
        "bb30272de20c",
        "1e3b87eecd8e",
        "b67af4307324",
    ],
}
DEFAULT_TO_DICT = {
    "model": {"depth": 20, "width": 1, "gamma_init": "uniform", "num_classes": 10, "arch": "resnet"},
    "regime": "all",
    "data": {
        "source": "cifar10",
        "path": None,
        "test_path": None,
        "train_size": None,
        "val_size": 5000,
        "test_size": None,
        "split_seed": 0,
        "augment": "paper",
        "normalize": True,
        "synthetic_size": 512,
    },
    "optimizer": {
        "name": "sgd",
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 0.0001,
        "decay_bn": True,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-07,
    },
    "lr": 0.1,
    "lr_scaling": "none",
    "lr_reference_batch": 128,
    "lr_schedule": {"type": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1},
    "batch_size": 128,
    "epochs": 160,
    "seed": 0,
    "backend": "tensorflow",
    "jit_compile": "auto",
    "threads": None,
    "steps_per_epoch": None,
    "strategy": "none",
    "precision": "float32",
    "replicates_layout": "separate",
}
STEP_SCHEDULE = {"type": "step", "milestones": None, "every": 30, "gamma": 0.1}
COLUMN_DTYPES = {
    "sweep": "str",
    "trial_id": "str",
    "replicate": "Int64",
    "seed": "Int64",
    "config_hash": "str",
    "group_hash": "str",
    "status": "str",
    "reason": "str",
    "model.depth": "Int64",
    "model.width": "Int64",
    "model.gamma_init": "str",
    "model.num_classes": "Int64",
    "model.arch": "str",
    "regime": "str",
    "data.source": "str",
    "data.path": "str",
    "data.test_path": "str",
    "data.train_size": "Int64",
    "data.val_size": "Int64",
    "data.test_size": "Int64",
    "data.split_seed": "Int64",
    "data.augment": "str",
    "data.normalize": "boolean",
    "data.synthetic_size": "Int64",
    "optimizer.name": "str",
    "optimizer.momentum": "float64",
    "optimizer.nesterov": "boolean",
    "optimizer.weight_decay": "float64",
    "optimizer.decay_bn": "boolean",
    "optimizer.beta_1": "float64",
    "optimizer.beta_2": "float64",
    "optimizer.epsilon": "float64",
    "lr": "float64",
    "lr_scaling": "str",
    "lr_reference_batch": "Int64",
    "lr_schedule.type": "str",
    "lr_schedule.alpha": "float64",
    "lr_schedule.beta": "float64",
    "lr_schedule.decay": "float64",
    "lr_schedule.div_factor": "float64",
    "lr_schedule.every": "float64",
    "lr_schedule.final_div_factor": "float64",
    "lr_schedule.final_fraction": "float64",
    "lr_schedule.first_cycle": "float64",
    "lr_schedule.gamma": "float64",
    "lr_schedule.m_mul": "float64",
    "lr_schedule.milestones": "str",
    "lr_schedule.min_lr": "float64",
    "lr_schedule.num_periods": "float64",
    "lr_schedule.pct_start": "float64",
    "lr_schedule.rampup_epochs": "float64",
    "lr_schedule.start_lr": "float64",
    "lr_schedule.t_mul": "float64",
    "lr_schedule.warmup_epochs": "float64",
    "batch_size": "Int64",
    "epochs": "Int64",
    "backend": "str",
    "jit_compile": "str",
    "threads": "Int64",
    "steps_per_epoch": "Int64",
    "strategy": "str",
    "precision": "str",
    "replicates_layout": "str",
    "depth": "Int64",
    "width": "Int64",
    "params_total": "Int64",
    "params_trainable": "Int64",
    "params_bn": "Int64",
    "params_bn_moving": "Int64",
    "params_shortcut": "Int64",
    "params_output": "Int64",
    "flops_forward": "Int64",
    "flops_train": "Int64",
    "val_accuracy_final": "float64",
    "val_accuracy_best": "float64",
    "best_epoch": "Int64",
    "val_loss_final": "float64",
    "test_accuracy": "float64",
    "test_loss": "float64",
    "gamma_near_zero": "float64",
    "epochs_run": "Int64",
    "wall_seconds": "float64",
    "images_per_sec": "float64",
    "accelerator": "str",
    "accelerator_count": "Int64",
    "accelerator_backend": "str",
    "accelerator_threads": "Int64",
    "data_source": "str",
    "data_train": "Int64",
    "data_val": "Int64",
    "data_test": "Int64",
    "test_is_holdout": "boolean",
    "data_sha256": "str",  # added with the data identity (issue 14)
    "spec_hash": "str",
    "git_commit": "str",
    "versions": "str",
    "started_at": "str",
    "finished_at": "str",
    "path": "str",
    "config_json": "str",
}


@pytest.fixture(autouse=True)
def _tensorflow_backend(monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)  # the default backend is part of the config


@pytest.mark.parametrize(("given", "full", "group"), CASES)
def test_config_hashes_are_the_untyped_configs_hashes(given, full, group):
    cfg = TrialConfig.from_dict(given)
    assert (config_hash(cfg), config_hash(cfg, ignore=("seed",))) == (full, group)
    assert config_hash(TrialConfig.from_dict(cfg.to_dict())) == full


def test_to_dict_keeps_the_plain_dict_shape():
    assert TrialConfig().to_dict() == DEFAULT_TO_DICT
    assert list(TrialConfig().to_dict()) == list(DEFAULT_TO_DICT)  # the same key order, too
    step = TrialConfig.from_dict({"lr_schedule": {"type": "step", "every": 30}}).to_dict()["lr_schedule"]
    assert step == STEP_SCHEDULE and list(step) == list(STEP_SCHEDULE)


@pytest.mark.parametrize("name", sorted(SPEC_HASHES))
def test_shipped_spec_hashes_are_unchanged(name):
    assert load_spec(ROOT / "sweeps" / name).spec_hash() == SPEC_HASHES[name]


@pytest.mark.parametrize("name", sorted(GRID_CONFIG_HASHES))
def test_shipped_grid_configs_hash_as_before(name):
    from bnsweep.sweep.space import grid_points, resolve_trial_config

    spec = load_spec(ROOT / "sweeps" / name)
    got = [
        config_hash(TrialConfig.from_dict(resolve_trial_config(spec, p, seed=0))) for p in grid_points(spec.parameters)
    ]
    assert got == GRID_CONFIG_HASHES[name]


def test_results_table_columns_are_unchanged():
    from bnsweep.store.columns import COLUMNS

    assert {k: v[0] for k, v in COLUMNS.items()} == COLUMN_DTYPES
    assert list(COLUMNS) == list(COLUMN_DTYPES)
