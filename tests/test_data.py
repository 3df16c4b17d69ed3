"""Data: sources (real CIFAR-10 subset, npz, official python layout, download, synthetic), splits,
statistics, refusal of bad or unsafe files, and the on-device augmentation.

Real parts only: real files written to tmp, the real shared CIFAR-10 subset (skipped when absent),
real pickles (a malicious one included, whose unpickling would create a marker file), Keras on the
TensorFlow backend. The one test that tries the real download expects it to fail: there is no
internet here (``..._offline``).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import socket
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bnsweep.engine import data as D
from bnsweep.engine.data import DataError, load_cifar_dir, load_data, load_npz, make_preprocess, synthetic
from bnsweep.spec.config import DataConfig, TrialConfig

SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset-train.npz"
SUBSET_CLASS_COUNTS = [517, 524, 490, 493, 537, 475, 503, 516, 529, 501]  # labels per class in cifar10-subset-train.npz
needs_subset = pytest.mark.skipif(
    not SUBSET.is_file(), reason=f"the shared real CIFAR-10 subset is absent ({SUBSET}); it lives beside the project")


# ---------------------------------------------------------------- helpers: real files in tmp


def _indexed(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images whose first pixel encodes their index (i % 256, i // 256)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    x[:, 0, 0, 1] = np.arange(n) // 256
    return x, rng.integers(0, 10, n).astype(np.uint8)


def _index_of(x: np.ndarray) -> np.ndarray:
    return x[:, 0, 0, 0].astype(np.int64) + 256 * x[:, 0, 0, 1].astype(np.int64)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.fixture
def indexed_npz(tmp_path) -> Path:
    x, y = _indexed(600)
    return _npz(tmp_path / "indexed.npz", x_train=x, y_train=y)


class _Plant:
    """Unpickling this creates ``marker`` (stands for arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _batch_bytes(x_hwc: np.ndarray, labels: np.ndarray) -> bytes:
    """An official-layout batch: rows of 3072 bytes (R, G, B planes, row-major), labels as a list."""
    rows = x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), -1)
    return pickle.dumps({b"batch_label": b"fake", b"labels": [int(v) for v in labels], b"data": rows,
                         b"filenames": [b"f%d.png" % i for i in range(len(x_hwc))]}, protocol=4)


def _fake_cifar_dir(root: Path, n: int = 4, seed: int = 0):
    """A ``cifar-10-batches-py`` with tiny batches; returns (dir, {name: (x, y)}, {name: md5})."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    content, md5s = {}, {}
    for name in D.CIFAR10_FILES_MD5:
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        blob = _batch_bytes(x, y)
        (d / name).write_bytes(blob)
        content[name], md5s[name] = (x, y), hashlib.md5(blob).hexdigest()
    return d, content, md5s


# ---------------------------------------------------------------- the real CIFAR-10 subset


@needs_subset
def test_real_subset_loads_via_npz_source():
    raw = load_npz(SUBSET)
    assert raw["x_train"].shape == (5085, 32, 32, 3) and raw["x_train"].dtype == np.uint8
    assert raw["y_train"].shape == (5085,) and raw["y_train"].dtype == np.int32
    assert np.bincount(raw["y_train"], minlength=10).tolist() == SUBSET_CLASS_COUNTS

    d = load_data(DataConfig(source="npz", path=str(SUBSET), val_size=0))
    assert d.sizes == {"train": 5085, "val": 0, "test": 0}
    assert d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int32
    assert d.x_test is None and d.test_is_holdout is False
    assert d.description == "npz:cifar10-subset-train.npz"
    np.testing.assert_array_equal(d.x_train, raw["x_train"])  # val_size 0: all of it, in order
    # CIFAR-10's well-known channel statistics (≈ 0.49, 0.48, 0.45 / 0.25, 0.24, 0.26).
    np.testing.assert_allclose(d.mean, (0.491, 0.482, 0.447), atol=0.02)
    np.testing.assert_allclose(d.std, (0.247, 0.243, 0.261), atol=0.02)


@needs_subset
def test_real_subset_split_with_a_held_out_test_set():
    d = load_data(DataConfig(source="npz", path=str(SUBSET), val_size=1000, test_size=500))
    assert d.sizes == {"train": 3585, "val": 1000, "test": 500}
    assert d.test_is_holdout is True
    assert d.y_val.dtype == np.int32 and d.x_val.dtype == np.uint8 and d.x_test.dtype == np.uint8


# ---------------------------------------------------------------- splits


def _split_indices(d):
    test = set() if d.x_test is None else set(_index_of(d.x_test).tolist())
    return set(_index_of(d.x_train).tolist()), set(_index_of(d.x_val).tolist()), test


def test_val_split_size_disjointness_and_determinism(indexed_npz):
    cfg = DataConfig(source="npz", path=str(indexed_npz), val_size=100, split_seed=3)
    a, b = load_data(cfg), load_data(cfg)
    train, val, _ = _split_indices(a)
    assert len(val) == 100 and len(train) == 500 and not train & val and train | val == set(range(600))
    assert _split_indices(b) == (train, val, set())  # same split_seed: same split
    np.testing.assert_array_equal(a.x_val, b.x_val)
    # labels travel with their images
    y = np.load(indexed_npz)["y_train"]
    np.testing.assert_array_equal(a.y_train, y[_index_of(a.x_train)])
    np.testing.assert_array_equal(a.y_val, y[_index_of(a.x_val)])
    other = load_data(DataConfig(source="npz", path=str(indexed_npz), val_size=100, split_seed=4))
    assert _split_indices(other)[1] != val  # another split_seed: another split


def test_split_does_not_depend_on_the_trial_seed(indexed_npz):
    data = {"source": "npz", "path": str(indexed_npz), "val_size": 50, "test_size": 50}
    c0 = TrialConfig.from_dict({"seed": 0, "data": data})
    c1 = TrialConfig.from_dict({"seed": 1, "data": data})
    assert _split_indices(load_data(c0.data)) == _split_indices(load_data(c1.data))


def test_train_size_takes_the_first_n_images(indexed_npz):
    d = load_data(DataConfig(source="npz", path=str(indexed_npz), train_size=300, val_size=60))
    train, val, _ = _split_indices(d)
    assert train | val == set(range(300)) and len(val) == 60 and not train & val


def test_test_split_is_carved_from_training_when_there_is_no_test_set(indexed_npz):
    d = load_data(DataConfig(source="npz", path=str(indexed_npz), val_size=100, test_size=80))
    train, val, test = _split_indices(d)
    assert d.test_is_holdout is True and len(test) == 80 and len(val) == 100 and len(train) == 420
    assert not test & val and not test & train and train | val | test == set(range(600))
    none = load_data(DataConfig(source="npz", path=str(indexed_npz), val_size=100))
    assert none.x_test is None and none.test_is_holdout is False


def test_official_test_set_is_used_and_capped_by_test_size(tmp_path):
    x, y = _indexed(200)
    xt, yt = _indexed(90, seed=1)
    path = _npz(tmp_path / "both.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    d = load_data(DataConfig(source="npz", path=str(path), val_size=20, test_size=30))
    np.testing.assert_array_equal(d.x_test, xt[:30])
    np.testing.assert_array_equal(d.y_test, yt[:30].astype(np.int32))
    assert d.test_is_holdout is False and d.sizes == {"train": 180, "val": 20, "test": 30}
    # A separate test file (test_path) is used the same way.
    only = _npz(tmp_path / "train_only.npz", x_train=x, y_train=y)
    test = _npz(tmp_path / "test.npz", x_test=xt, y_test=yt)
    d2 = load_data(DataConfig(source="npz", path=str(only), test_path=str(test), val_size=20))
    np.testing.assert_array_equal(d2.x_test, xt)
    assert d2.test_is_holdout is False


def test_mean_and_std_come_from_the_training_split_only(indexed_npz):
    d = load_data(DataConfig(source="npz", path=str(indexed_npz), val_size=200))
    px = d.x_train.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(d.mean, px.mean(0), rtol=1e-9)
    np.testing.assert_allclose(d.std, px.std(0), rtol=1e-7)
    everything = np.load(indexed_npz)["x_train"].reshape(-1, 3).astype(np.float64) / 255
    assert np.abs(np.asarray(d.mean) - everything.mean(0)).max() > 1e-5  # not the whole pool


def test_sizes_beyond_the_source_are_refused(indexed_npz):
    with pytest.raises(DataError, match="train_size"):
        load_data(DataConfig(source="npz", path=str(indexed_npz), train_size=601, val_size=10))
    with pytest.raises(DataError, match="val_size"):
        load_data(DataConfig(source="npz", path=str(indexed_npz), val_size=500, test_size=100))


# ---------------------------------------------------------------- bad npz files


def _truncated(p):
    x, y = _indexed(50)
    np.savez(p, x_train=x, y_train=y)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _good_then(**overrides):
    def write(p):
        x, y = _indexed(20)
        arrays = {"x_train": x, "y_train": y, **overrides}
        np.savez(p, **{k: v for k, v in arrays.items() if v is not None})
    return write


@pytest.mark.parametrize("make, problem", [
    (_truncated, "not an npz"),
    (lambda p: p.write_text("x_train,y_train\n1,2\n"), "not an npz"),
    (lambda p: p.write_bytes(_npy_bytes(np.zeros((2, 32, 32, 3), np.uint8))), "not an npz"),  # a .npy
    (_good_then(x_train=np.zeros((20, 28, 28, 3), np.uint8)), "shape (N, 32, 32, 3)"),
    (_good_then(x_train=np.zeros((20, 3, 32, 32), np.uint8)), "shape (N, 32, 32, 3)"),
    (_good_then(x_train=np.zeros((20, 32, 32, 3), np.float32)), "uint8"),
    (_good_then(y_train=np.full(20, 10, np.int64)), "labels must be in [0, 9]"),
    (_good_then(y_train=np.full(20, -1, np.int64)), "labels must be in [0, 9]"),
    (_good_then(y_train=np.zeros(20, np.float32)), "integer labels"),
    (_good_then(y_train=np.zeros(19, np.uint8)), "20 images but 19 labels"),
    (_good_then(y_train=None), "labels missing"),
    (lambda p: np.savez(p, images=np.zeros((2, 32, 32, 3), np.uint8)), "expected arrays x_train and y_train"),
    (_good_then(y_train=np.array([object()] * 20, dtype=object)), "Object arrays cannot be loaded"),
])
def test_bad_npz_files_raise_data_error_naming_file_and_problem(tmp_path, make, problem):
    p = tmp_path / "bad.npz"
    make(p)
    with pytest.raises(DataError) as info:
        load_data(DataConfig(source="npz", path=str(p), val_size=5))
    assert str(p) in str(info.value) and problem in str(info.value)


def test_npz_object_array_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    x, _y = _indexed(4)
    p = _npz(tmp_path / "evil.npz", x_train=x, y_train=np.array([_Plant(marker)] * 4, dtype=object))
    with pytest.raises(DataError, match=r"pickle|Object arrays"):
        load_npz(p)
    assert not marker.exists()
    with np.load(p, allow_pickle=True) as f:  # control: the payload is live
        f["y_train"]
    assert marker.exists()


def test_missing_npz_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_npz(tmp_path / "nope.npz")


# ---------------------------------------------------------------- the official python layout (dir)


def test_dir_source_reads_the_official_layout(tmp_path, monkeypatch):
    d, content, md5s = _fake_cifar_dir(tmp_path)
    monkeypatch.setattr(D, "CIFAR10_FILES_MD5", md5s)
    arrays = load_cifar_dir(tmp_path)  # the parent of cifar-10-batches-py works too
    train = [content[f"data_batch_{i}"] for i in range(1, 6)]
    np.testing.assert_array_equal(arrays["x_train"], np.concatenate([x for x, _ in train]))  # CHW rows → HWC
    np.testing.assert_array_equal(arrays["y_train"], np.concatenate([y for _, y in train]))
    np.testing.assert_array_equal(arrays["x_test"], content["test_batch"][0])
    assert arrays["x_train"].dtype == np.uint8 and arrays["y_train"].dtype == np.int32
    s = load_data(DataConfig(source="dir", path=str(d), val_size=4))
    assert s.sizes == {"train": 16, "val": 4, "test": 4} and s.test_is_holdout is False


def test_dir_checksum_mismatch_is_refused_before_unpickling(tmp_path, monkeypatch):
    d, _, md5s = _fake_cifar_dir(tmp_path)
    monkeypatch.setattr(D, "CIFAR10_FILES_MD5", md5s)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Plant(marker))
    (d / "data_batch_2").write_bytes(payload)  # replaced after its checksum was recorded
    with pytest.raises(DataError) as info:
        load_cifar_dir(d)
    assert "checksum" in str(info.value) and str(d / "data_batch_2") in str(info.value)
    assert not marker.exists()
    pickle.loads(payload)  # control: the planted file really would run code when unpickled
    assert marker.exists()


def test_dir_missing_file(tmp_path, monkeypatch):
    d, _, md5s = _fake_cifar_dir(tmp_path)
    monkeypatch.setattr(D, "CIFAR10_FILES_MD5", md5s)
    (d / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch: missing"):
        load_cifar_dir(d)


def test_numpy_only_unpickler_refuses_other_globals(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        D._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(_Plant(marker))), encoding="bytes").load()
    assert not marker.exists()
    evil = pickle.dumps({b"data": np.zeros(3, np.uint8), b"x": __import__("os").getcwd}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        D._NumpyOnlyUnpickler(io.BytesIO(evil), encoding="bytes").load()
    # What a batch needs (NumPy array reconstruction) loads.
    x = np.arange(12, dtype=np.uint8).reshape(3, 4)
    ok = D._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps({b"data": x, b"labels": [1]}, protocol=4)),
                               encoding="bytes").load()
    np.testing.assert_array_equal(ok[b"data"], x)


# ---------------------------------------------------------------- source cifar10: local copies, download


def test_cifar10_without_a_local_copy_says_how_to_point_at_one_offline(tmp_path, monkeypatch):
    """No internet here: the real download attempt fails; the error must say what to do instead."""
    monkeypatch.setenv("BNSWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(D.DATA_ENV, raising=False)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5)  # bound the attempt should a network half-exist
    try:
        with pytest.raises(DataError) as info:
            load_data(DataConfig(source="cifar10", val_size=10))
    finally:
        socket.setdefaulttimeout(old)
    msg = str(info.value)
    assert "--data" in msg and D.DATA_ENV in msg and D.CIFAR10_URL in msg


def test_bnsweep_data_env_var_npz_is_used_for_source_cifar10(indexed_npz, monkeypatch):
    monkeypatch.setenv(D.DATA_ENV, str(indexed_npz))
    d = load_data(DataConfig(source="cifar10", val_size=100))
    assert d.description == "cifar10:indexed.npz" and d.sizes["train"] == 500
    assert set(_index_of(d.x_train)) | set(_index_of(d.x_val)) == set(range(600))


def test_source_cifar10_with_a_path_uses_that_local_copy(tmp_path, monkeypatch):
    monkeypatch.delenv(D.DATA_ENV, raising=False)
    monkeypatch.setenv("BNSWEEP_CACHE", str(tmp_path / "no-cache"))
    d, _, md5s = _fake_cifar_dir(tmp_path / "local")
    monkeypatch.setattr(D, "CIFAR10_FILES_MD5", md5s)
    s = load_data(DataConfig(source="cifar10", path=str(d), val_size=4))
    assert s.sizes == {"train": 16, "val": 4, "test": 4}
    assert not (tmp_path / "no-cache").exists()  # nothing downloaded


def test_cifar10_download_extracts_once_from_a_local_file_url_offline(tmp_path, monkeypatch):
    """The download path end to end, with a file:// archive standing in for the (unreachable) URL."""
    src, content, md5s = _fake_cifar_dir(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    monkeypatch.setattr(D, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(D, "CIFAR10_ARCHIVE_SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(D, "CIFAR10_FILES_MD5", md5s)
    monkeypatch.setenv("BNSWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(D.DATA_ENV, raising=False)
    got = D.download_cifar10()
    assert got.name == "cifar-10-batches-py" and (tmp_path / "cache") in got.parents
    s = load_data(DataConfig(source="cifar10", val_size=4))
    np.testing.assert_array_equal(s.x_test, content["test_batch"][0])
    # Cached: neither the origin nor the downloaded archive is needed again.
    archive.unlink()
    for f in (tmp_path / "cache" / "datasets").glob("*.tar.gz"):
        f.unlink()
    assert D.download_cifar10() == got
    # A wrong archive checksum is refused (no extraction of an unverified archive).
    monkeypatch.setenv("BNSWEEP_CACHE", str(tmp_path / "cache2"))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not the archive")
    monkeypatch.setattr(D, "CIFAR10_URL", bad.as_uri())
    with pytest.raises(DataError, match="could not download"):
        D.download_cifar10()


# ---------------------------------------------------------------- synthetic


def test_synthetic_source_shapes_and_a_learnable_class_signal():
    d = load_data(DataConfig(source="synthetic", synthetic_size=300, val_size=200, test_size=100))
    assert d.sizes == {"train": 300, "val": 200, "test": 100}
    assert d.x_train.shape == (300, 32, 32, 3) and d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int32
    assert d.test_is_holdout is True and set(np.unique(d.y_train)) == set(range(10))
    # Nearest class mean on the training split classifies held-out images far above chance (10%).
    means = np.stack([d.x_train[d.y_train == k].reshape(-1, 3072).mean(0) for k in range(10)])
    val = d.x_val.reshape(len(d.x_val), -1).astype(np.float64)
    pred = np.argmin(((val[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == d.y_val).mean() > 0.8
    x, y = synthetic(50, seed=1)
    x2, y2 = synthetic(50, seed=1)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


# ---------------------------------------------------------------- on-device preprocessing / augmentation

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def _pre(augment="paper", normalize=False, seed=0):
    return make_preprocess(mean=MEAN, std=STD, augment=augment, normalize=normalize, seed=seed)


def _run(layer, x, training=True):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(layer(x, training=training)))


def _shifts(img: np.ndarray, flips: bool) -> dict:
    """Every pad-4 crop of ``img`` (and its mirror): {(dy, dx, flipped): 32×32×3 uint8}."""
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))
    out = {}
    for oy in range(9):
        for ox in range(9):
            crop = padded[oy:oy + 32, ox:ox + 32]
            out[(oy - 4, ox - 4, False)] = crop
            if flips:
                out[(oy - 4, ox - 4, True)] = crop[:, ::-1]
    return out


def _match_paper(out: np.ndarray, img: np.ndarray) -> list:
    """Which (shift, flip) of ``img`` the [0, 1] output ``out`` is, exactly (integer pixels)."""
    scaled = out * 255.0
    assert np.abs(scaled - np.round(scaled)).max() < 1e-3, "pixels are not exact shifts of the input"
    u8 = np.round(scaled).astype(np.uint8)
    return [k for k, c in _shifts(img, flips=True).items() if np.array_equal(c, u8)]


def _random_images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_eval_mode_is_exactly_scale_and_normalize():
    x = _random_images(8)
    for augment in ("paper", "notebook", "none"):
        out = _run(_pre(augment, normalize=True), x, training=False)
        ref = (x.astype(np.float32) / np.float32(255) - np.float32(MEAN)) / np.float32(STD)
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(_run(_pre("none"), x, training=True), x.astype(np.float32) / np.float32(255))


def test_paper_augmentation_is_an_integer_shift_with_zero_fill_plus_a_flip_half_the_time():
    x = _random_images(200)
    out = _run(_pre("paper"), x)
    matches = [_match_paper(o, img) for o, img in zip(out, x, strict=True)]
    assert all(len(m) == 1 for m in matches)  # every image is exactly one shift (± mirror) of its input
    found = [m[0] for m in matches]
    assert all(-4 <= dy <= 4 and -4 <= dx <= 4 for dy, dx, _ in found)
    assert len({(dy, dx) for dy, dx, _ in found}) >= 30  # the offsets really vary over the 81
    assert {dy for dy, _, _ in found} >= {-4, 4} and {dx for _, dx, _ in found} >= {-4, 4}
    flipped = sum(f for _, _, f in found)
    assert 60 <= flipped <= 140  # about half of 200


def test_notebook_augmentation_shifts_and_changes_brightness_within_delta_never_flips():
    assert D.NOTEBOOK_BRIGHTNESS_DELTA == 0.5  # the notebooks: random_brightness(max_delta=0.5), then clip
    x = _random_images(64, seed=1)
    out = _run(_pre("notebook"), x)
    assert out.min() >= 0.0 and out.max() <= 1.0  # clipped to [0, 1] like the notebooks
    deltas = []
    for o, img in zip(out, x, strict=True):
        fits = []
        for key, crop in _shifts(img, flips=True).items():
            c = crop.astype(np.float32) / 255
            inside = (o > 0) & (o < 1)
            d = float(np.median(o[inside] - c[inside]))
            if np.abs(np.clip(c + d, 0, 1) - o).max() < 1e-5:
                fits.append((key, d))
        assert len(fits) == 1, fits
        (_, _, flipped), d = fits[0]
        assert not flipped
        deltas.append(d)
    deltas = np.asarray(deltas)
    assert np.abs(deltas).max() <= D.NOTEBOOK_BRIGHTNESS_DELTA + 1e-6
    assert deltas.min() < -0.25 and deltas.max() > 0.25  # spread over ±0.5, per image


def test_normalization_follows_augmentation():
    x = _random_images(16, seed=2)
    raw, norm = _run(_pre("paper", normalize=False, seed=7), x), _run(_pre("paper", normalize=True, seed=7), x)
    np.testing.assert_allclose(norm, (raw - np.float32(MEAN)) / np.float32(STD), rtol=1e-5, atol=1e-5)


def test_same_seed_same_augmentation_sequence():
    x = _random_images(16, seed=3)
    for augment in ("paper", "notebook"):
        a, b, c = _pre(augment, seed=11), _pre(augment, seed=11), _pre(augment, seed=12)
        seq_a = [_run(a, x) for _ in range(3)]
        seq_b = [_run(b, x) for _ in range(3)]
        for u, v in zip(seq_a, seq_b, strict=True):
            np.testing.assert_array_equal(u, v)
        assert not np.array_equal(seq_a[0], seq_a[1])  # successive batches differ
        assert not np.array_equal(seq_a[0], _run(c, x))  # another seed differs


def test_batch_of_one_and_partial_batches_in_a_compiled_step():
    import tensorflow as tf

    layer = _pre("paper")
    step = tf.function(lambda x: layer(x, training=True),
                       input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8)])
    x = _random_images(7, seed=4)
    for n in (1, 5, 7):
        out = step(x[:n]).numpy()
        assert out.shape == (n, 32, 32, 3)
        assert all(len(_match_paper(o, img)) == 1 for o, img in zip(out, x[:n], strict=True))
    eager = _run(_pre("notebook"), x[:1])
    assert eager.shape == (1, 32, 32, 3)


def test_zip_check_is_not_fooled_by_extension(tmp_path):
    """An npz is a zip archive; the check looks at the content, not the name."""
    p = tmp_path / "renamed.dat"
    x, y = _indexed(10)
    with zipfile.ZipFile(p, "w") as z:
        for name, arr in (("x_train.npy", x), ("y_train.npy", y)):
            z.writestr(name, _npy_bytes(arr))
    assert load_npz(p)["x_train"].shape == (10, 32, 32, 3)
