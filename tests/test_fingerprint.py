"""``data_fingerprint``: the content hash that identifies the data a trial saw (recorded with results,
checked on resume): same data → same hash, whatever the source; one changed pixel, label or split
membership → another; fast enough for CIFAR-10."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from bnsweep.engine.data import Splits, data_fingerprint, load_data
from bnsweep.spec.config import DataConfig

SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset-train.npz"


def _splits(seed: int = 0, n: int = 300) -> Splits:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.int32)
    return Splits(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:], (0.5,) * 3, (0.25,) * 3, "t", False)


def test_same_data_same_hash_and_any_change_another():
    a, b = _splits(), _splits()
    fp = data_fingerprint(a)
    assert fp == data_fingerprint(b) and fp.startswith("sha256:") and len(fp) == 7 + 64
    assert data_fingerprint(dataclasses.replace(a, description="elsewhere", mean=(0.0,) * 3)) == fp  # content only
    x = a.x_train.copy()
    x[17, 3, 5, 1] ^= 1  # one pixel, one bit
    assert data_fingerprint(dataclasses.replace(a, x_train=x)) != fp
    y = a.y_test.copy()
    y[0] = (y[0] + 1) % 10
    assert data_fingerprint(dataclasses.replace(a, y_test=y)) != fp
    moved = dataclasses.replace(a, x_train=a.x_train[:-1], y_train=a.y_train[:-1],  # one image train → val
                                x_val=np.concatenate([a.x_train[-1:], a.x_val]),
                                y_val=np.concatenate([a.y_train[-1:], a.y_val]))
    assert data_fingerprint(moved) != fp
    assert data_fingerprint(dataclasses.replace(a, x_test=None, y_test=None)) != fp
    assert data_fingerprint(dataclasses.replace(a, y_train=a.y_train.astype(np.int64))) != fp  # dtype counts
    assert data_fingerprint(dataclasses.replace(a, x_train=np.asfortranarray(a.x_train))) == fp  # layout not


def test_the_split_seed_and_sizes_change_it_through_the_data():
    base = DataConfig(source="synthetic", synthetic_size=64, val_size=16, test_size=16)
    fp = data_fingerprint(load_data(base))
    assert data_fingerprint(load_data(base)) == fp
    assert data_fingerprint(load_data(base.replace(split_seed=1))) != fp
    assert data_fingerprint(load_data(base.replace(val_size=8))) != fp


def test_fast_for_cifar10_sized_data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60_000, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 60_000).astype(np.int32)
    s = Splits(x[:45_000], y[:45_000], x[45_000:50_000], y[45_000:50_000], x[50_000:], y[50_000:],
               (0.5,) * 3, (0.25,) * 3, "t", False)
    t0 = time.perf_counter()
    data_fingerprint(s)
    assert time.perf_counter() - t0 < 3.0  # ~0.3 s here; 184 MB read once


@pytest.mark.skipif(not SUBSET.is_file(), reason=f"the shared real CIFAR-10 subset is absent ({SUBSET})")
def test_real_subset_by_two_routes(tmp_path):
    """The npz file and an equal copy written elsewhere give one fingerprint; a smaller subset another."""
    cfg = DataConfig(source="npz", path=str(SUBSET), val_size=500, test_size=500)
    with np.load(SUBSET, allow_pickle=False) as f:
        np.savez(tmp_path / "copy.npz", x_train=f["x_train"], y_train=f["y_train"])
    copy = cfg.replace(path=str(tmp_path / "copy.npz"))
    assert data_fingerprint(load_data(cfg)) == data_fingerprint(load_data(copy))
    assert data_fingerprint(load_data(cfg.replace(train_size=5_000))) != data_fingerprint(load_data(cfg))
