"""The data a sweep trained on is part of what it recorded: every results row carries the data's content
hash, a relative ``data.path`` is read from the spec file that names it (and saved absolute in the run
directory), and ``resume`` refuses data that differs from the data the sweep started with — tried as a user
would: launch, the driver killed mid-sweep, the file replaced by another of the same name, resume.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_reliability import Driver

from bnsweep.engine.data import data_fingerprint, load_data
from bnsweep.spec.config import DataConfig
from bnsweep.spec.sweep_spec import load_spec
from bnsweep.store.table import TEXT_DTYPES

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT.parent / "shared" / "data" / "cifar10-subset-train.npz"

SPEC = """
name: identity
method: grid
replicates: 1
max_concurrent: 1
resources: {cpu: 1}
tracking: {wandb: false}
fixed:
  model: {depth: 8}
  epochs: 2
  batch_size: 32
  steps_per_epoch: 2
  data: {source: npz, path: ../data/cifar.npz, train_size: 300, val_size: 100, test_size: 100}
parameters:
  lr: {values: [0.1, 0.05]}
"""


def test_relative_data_paths_are_read_from_the_spec_file_and_saved_absolute(tmp_path):
    (tmp_path / "specs").mkdir()
    spec_file = tmp_path / "specs" / "s.yaml"
    spec_file.write_text(SPEC)
    here = os.getcwd()
    try:
        os.chdir(tmp_path / "specs")
        from_its_dir = load_spec("s.yaml")
        os.chdir("/")
        from_elsewhere = load_spec(spec_file)
    finally:
        os.chdir(here)
    want = str(tmp_path / "data" / "cifar.npz")
    assert from_its_dir.fixed["data.path"] == from_elsewhere.fixed["data.path"] == want
    assert yaml.safe_load(from_elsewhere.to_yaml())["fixed"]["data"]["path"] == want  # what the run dir keeps
    assert from_its_dir.spec_hash() == from_elsewhere.spec_hash()


@pytest.mark.skipif(not SUBSET.exists(), reason=f"needs the real CIFAR-10 subset at {SUBSET}")
def test_rows_carry_the_data_hash_and_resume_refuses_other_data(tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "data").mkdir()
    data_file = tmp_path / "data" / "cifar.npz"
    shutil.copyfile(SUBSET, data_file)
    original = data_file.read_bytes()
    spec_file = tmp_path / "specs" / "identity.yaml"
    spec_file.write_text(SPEC)
    run_dir = tmp_path / "run"
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # Ray's socket paths must stay short
    faults = tmp_path / "faults.json"  # lr 0.05's first epoch waits: time to kill the driver after lr 0.1
    faults.write_text(json.dumps({"faults": [{"lr": 0.05, "epoch": 1, "sleep": 60.0}]}))
    args = ["launch", str(spec_file), "--run-dir", str(run_dir), "--quiet", "--no-dashboard"]
    try:
        d = Driver(args, logs=tmp_path, name="launch", ray_tmp=ray_tmp, env={"BNSWEEP_TEST_FAULTS": str(faults)})
        d.wait_for(lambda: any(run_dir.glob("trials/*/seed-0/result.json")), timeout=300, what="the first record")
        d.kill()  # a crash mid-sweep: one trial recorded, one unfinished
        table = run_dir / "results.csv"
        assert not table.exists() or len(pd.read_csv(table, dtype=TEXT_DTYPES)) <= 2
        saved = yaml.safe_load((run_dir / "spec.yaml").read_text())
        assert saved["fixed"]["data"]["path"] == str(data_file)  # absolute in the run directory
        started = json.loads((run_dir / "sweep.json").read_text())["data_sha256"]
        cfg = DataConfig(source="npz", path=str(data_file), train_size=300, val_size=100, test_size=100)
        assert started == data_fingerprint(load_data(cfg))

        # another file of the same name: one pixel of one training image differs
        with np.load(data_file) as z:
            arrays = {k: z[k].copy() for k in z.files}
        arrays["x_train"][5, 0, 0, 0] ^= 1
        np.savez(data_file, **arrays)
        other = Driver(["resume", str(run_dir), "--quiet", "--no-dashboard"], logs=tmp_path, name="other",
                       ray_tmp=ray_tmp)
        rc = other.finish(timeout=300)
        err = other.err.read_text()
        assert rc == 2, other.tail()
        assert "differs from the data the sweep started with" in err and "Traceback" not in err, err
        assert len(list(run_dir.glob("trials/*/seed-0/result.json"))) == 1  # nothing trained on it

        data_file.write_bytes(original)  # the data it started with: resume finishes the sweep
        t0 = time.monotonic()
        same = Driver(["resume", str(run_dir), "--quiet", "--no-dashboard"], logs=tmp_path, name="same",
                      ray_tmp=ray_tmp)
        assert same.finish(timeout=400) == 0, same.tail()
        print(f"\nresume with the same data: {time.monotonic() - t0:.1f} s")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    table = pd.read_csv(run_dir / "results.csv", dtype=TEXT_DTYPES)
    assert len(table) == 2 and set(table["status"]) == {"completed"}, table[["trial_id", "status", "reason"]]
    assert set(table["data_sha256"]) == {started}  # every row: the data that trained it
