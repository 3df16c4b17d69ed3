"""Data sources, splits and on-device augmentation.

Sources: ``cifar10`` (``path``, else ``$BNSWEEP_DATA``, else the official archive, downloaded and
extracted once per cache through Keras' ``get_file``, sha256-checked; each batch file md5-checked
before it is unpickled), ``npz`` (``x_train``/``y_train`` and optional
``x_test``/``y_test`` uint8 arrays, ``allow_pickle=False``), ``dir`` (the official python layout,
checksums verified before unpickling) and ``synthetic`` (tests only). Images stay uint8 NHWC in
memory; casting, augmentation and normalization run inside the compiled training step
(``Preprocess``), on whatever device trains.

>>> from bnsweep.spec.config import DataConfig
>>> d = load_data(DataConfig(source="synthetic", synthetic_size=64, val_size=16, test_size=16))
>>> d.x_train.shape, d.x_val.shape, d.x_test.shape, d.x_train.dtype.name
((64, 32, 32, 3), (16, 32, 32, 3), (16, 32, 32, 3), 'uint8')
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import pickle
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnsweep.spec.config import DataConfig

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
# Official per-file md5s (the CIFAR page; the same values torchvision checks).
CIFAR10_FILES_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The notebooks' augment(): resize_with_crop_or_pad(40) + random_crop(32) +
# random_brightness(max_delta=0.5) + clip_by_value(0, 1), on [0, 1] pixels (CIFAR10_Subset,
# CIFAR10_Full, CIFAR10_Full_TPU*).
NOTEBOOK_BRIGHTNESS_DELTA = 0.5
DATA_ENV = "BNSWEEP_DATA"  # a local npz file or CIFAR python directory used instead of downloading


class DataError(ValueError):
    """A data file or directory is missing, corrupt or has the wrong shape; the message says which."""


@dataclass(frozen=True)
class Splits:
    """uint8 images (N, 32, 32, 3) and int32 labels per split; statistics of the training split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    mean: tuple[float, float, float]  # per channel, on [0, 1] pixels, training split only
    std: tuple[float, float, float]
    description: str  # where the data came from, for the results table
    test_is_holdout: bool  # True: the test split was carved from training images (no official test set)

    @functools.cached_property
    def fingerprint(self) -> str:
        """``data_fingerprint`` of these splits, computed once (it travels with them through Ray)."""
        return data_fingerprint(self)

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val),
                "test": 0 if self.y_test is None else len(self.y_test)}


# ---------------------------------------------------------------- raw sources


def _check_arrays(x: Any, y: Any, where: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``where`` names the file and arrays, e.g. ``data.npz x_train/y_train``."""
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        shape = getattr(x, "shape", type(x).__name__)
        raise DataError(f"{where}: expected images of shape (N, 32, 32, 3), received {shape}")
    if x.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 images, received dtype {x.dtype}")
    if not isinstance(y, np.ndarray):
        raise DataError(f"{where}: labels missing (the images have no label array)")
    y = y.reshape(-1)
    if len(y) != len(x):
        raise DataError(f"{where}: {len(x)} images but {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: expected integer labels, received dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{where}: labels must be in [0, {num_classes - 1}], received {y.min()}..{y.max()}")
    return x, y.astype(np.int32)


def load_npz(path: str | Path, *, require_train: bool = True) -> dict[str, np.ndarray]:
    """Arrays of an npz file, loaded without pickle, with shapes and labels checked."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    if not zipfile.is_zipfile(p):  # np.load would take anything else for .npy or a pickle
        raise DataError(f"{p}: not an npz file (not a zip archive; truncated or another format?)")
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled object), OSError, EOFError
        raise DataError(f"{p}: not a readable npz file ({type(e).__name__}: {e})") from None
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        if f"x_{split}" in arrays:
            out[f"x_{split}"], out[f"y_{split}"] = _check_arrays(
                arrays[f"x_{split}"], arrays.get(f"y_{split}"), f"{p} x_{split}/y_{split}")
    if require_train and "x_train" not in out:
        raise DataError(f"{p}: expected arrays x_train and y_train, found {sorted(arrays) or 'none'}")
    return out


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Belt and braces after the checksum: the CIFAR batches need only NumPy array reconstruction."""

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy", "ndarray"), ("numpy", "dtype")})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_cifar_dir(path: str | Path) -> dict[str, np.ndarray]:
    """The official ``cifar-10-batches-py`` directory; every file's md5 is checked before unpickling."""
    root = Path(path)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise DataError(f"{root}: no such directory (expected the official cifar-10-batches-py layout)")
    xs: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    ys: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for name, md5 in CIFAR10_FILES_MD5.items():
        f = root / name
        if not f.is_file():
            raise DataError(f"{f}: missing (expected {', '.join(CIFAR10_FILES_MD5)})")
        got = _md5(f)
        if got != md5:
            raise DataError(f"{f}: checksum mismatch (md5 {got}, expected {md5}); refusing to unpickle it")
        batch = _NumpyOnlyUnpickler(io.BytesIO(f.read_bytes()), encoding="bytes").load()
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        split = "test" if name == "test_batch" else "train"
        xs[split].append(x)
        ys[split].append(np.asarray(batch[b"labels"], dtype=np.int32))
    return {"x_train": np.concatenate(xs["train"]), "y_train": np.concatenate(ys["train"]),
            "x_test": np.concatenate(xs["test"]), "y_test": np.concatenate(ys["test"])}


def download_cifar10(cache_dir: str | Path | None = None) -> Path:
    """Download and extract the official archive once per cache; returns the batches directory."""
    cache = Path(cache_dir or os.environ.get("BNSWEEP_CACHE") or Path.home() / ".cache" / "bnsweep")
    datasets = cache / "datasets"
    try:
        datasets.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{datasets}: cannot create the download cache ({e}); set BNSWEEP_CACHE to a writable "
                        f"directory, or point the spec at a local copy (--data, or {DATA_ENV})") from None
    # Trials start in parallel: one process downloads and extracts, the others wait, then reuse it
    # (get_file would re-extract the whole archive on every call, under the feet of running readers).
    with _locked(datasets / ".cifar-10-python.lock"):
        for done in sorted(datasets.glob("*/cifar-10-batches-py")):
            if all((done / n).is_file() and _md5(done / n) == md5 for n, md5 in CIFAR10_FILES_MD5.items()):
                return done
        return _download_and_extract(cache)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no inter-process lock
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download_and_extract(cache: Path) -> Path:
    import keras

    try:
        path = keras.utils.get_file(
            fname="cifar-10-python.tar.gz", origin=CIFAR10_URL, file_hash=CIFAR10_ARCHIVE_SHA256,
            hash_algorithm="sha256", extract=True, cache_dir=str(cache), cache_subdir="datasets")
    except Exception as e:
        raise DataError(
            f"could not download CIFAR-10 from {CIFAR10_URL} ({type(e).__name__}: {e}). Offline? Point "
            f"the spec at a local copy: --data FILE.npz or --data cifar-10-batches-py/, or set {DATA_ENV}"
        ) from None
    found = list(Path(path).rglob("data_batch_1")) if Path(path).is_dir() else []
    if not found:
        found = list(Path(path).parent.rglob("cifar-10-batches-py/data_batch_1"))
    if not found:
        raise DataError(f"{path}: the downloaded archive has no cifar-10-batches-py directory")
    return found[0].parent


def synthetic(n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake CIFAR (tests only): each class is a colour/position pattern plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.normal(110, 40, (n, 32, 32, 3))
    for k in range(10):
        idx = y == k
        r, c = divmod(k, 4)
        x[idx, r * 10:(r * 10) + 10, c * 8:(c * 8) + 8, k % 3] += 110
    return np.clip(x, 0, 255).astype(np.uint8), y


def _raw(cfg: DataConfig) -> tuple[dict[str, np.ndarray], str]:
    if cfg.source == "synthetic":
        n = cfg.synthetic_size
        x, y = synthetic(n + cfg.val_size + (cfg.test_size or 0), seed=1234)
        return {"x_train": x, "y_train": y}, f"synthetic({n})"
    if cfg.source == "npz":
        assert cfg.path
        arrays = load_npz(cfg.path)
        if cfg.test_path:
            test = load_npz(cfg.test_path, require_train=False)
            if "x_test" not in test:
                raise DataError(f"{cfg.test_path}: expected arrays x_test and y_test")
            arrays.update(x_test=test["x_test"], y_test=test["y_test"])
        return arrays, f"npz:{Path(cfg.path).name}"
    if cfg.source == "dir":
        assert cfg.path
        return load_cifar_dir(cfg.path), f"dir:{Path(cfg.path).name}"
    local = cfg.path or os.environ.get(DATA_ENV)  # a local copy instead of downloading
    if local:
        p = Path(local)
        return (load_npz(p) if p.suffix == ".npz" else load_cifar_dir(p)), f"cifar10:{p.name}"
    return load_cifar_dir(download_cifar10()), "cifar10"


# ---------------------------------------------------------------- checks before a sweep starts


@dataclass(frozen=True)
class DataSummary:
    """What a data source holds, opened and checked (``inspect_data``): for ``plan`` and the driver's checks."""

    description: str
    train_images: int  # in the source, before data.train_size takes its first N
    test_images: int | None  # an official test set's images (None: none; the test split is carved)
    labels: tuple[int, ...]  # the distinct labels found, train and test


def inspect_data(cfg: DataConfig) -> DataSummary | None:
    """Open ``cfg``'s source as a trial would (the path exists, is a readable npz or CIFAR directory of uint8
    images with integer labels: a ``DataError`` naming the file otherwise) and say what it holds. None for the
    official CIFAR-10 without a local copy (opening it means downloading it: launch does that once).

    >>> from bnsweep.spec.config import DataConfig
    >>> inspect_data(DataConfig(source="synthetic", synthetic_size=64, val_size=16)).labels
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
    """
    if cfg.source == "cifar10" and not (cfg.path or os.environ.get(DATA_ENV)):
        return None
    arrays, description = _raw(cfg)
    ys = [arrays["y_train"]] + ([arrays["y_test"]] if "y_test" in arrays else [])
    labels = tuple(int(v) for v in np.unique(np.concatenate(ys)))
    train = cfg.synthetic_size + cfg.val_size if cfg.source == "synthetic" else len(arrays["y_train"])
    return DataSummary(description=description, train_images=train,
                       test_images=len(arrays["y_test"]) if "y_test" in arrays else None, labels=labels)


def check_num_classes(labels: Any, num_classes: int, *, where: str) -> None:
    """``model.num_classes`` must hold every label of the data (``labels``: the distinct ones found in
    ``where``): a network with fewer outputs fails in every trial. A ``DataError`` naming the key and the
    labels otherwise.

    >>> check_num_classes((0, 1, 2, 7), 5, where="x.npz")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bnsweep.engine.data.DataError: model.num_classes: 5, but x.npz has labels 0..7 (4 distinct: 0, 1, 2, 7); ...
    """
    found = sorted({int(v) for v in np.asarray(labels).reshape(-1)})
    if found and found[-1] >= num_classes:
        shown = ", ".join(map(str, found[:12])) + (", ..." if len(found) > 12 else "")
        raise DataError(f"model.num_classes: {num_classes}, but {where} has labels {found[0]}..{found[-1]} "
                        f"({len(found)} distinct: {shown}); set model.num_classes to at least {found[-1] + 1}, "
                        "or leave it out (10)")


# ---------------------------------------------------------------- splits


def load_data(cfg: DataConfig) -> Splits:
    """Load, subset and split. The validation (and, without a test set, a held-out test) split is
    carved from the training images with ``cfg.split_seed``; nothing the search sees is test data.
    """
    arrays, description = _raw(cfg)
    x, y = arrays["x_train"], arrays["y_train"]
    has_test = "x_test" in arrays
    carve_test = 0 if has_test else (cfg.test_size or 0)
    if cfg.source == "synthetic":
        n_train = cfg.synthetic_size
    else:
        n_train = len(x) if cfg.train_size is None else cfg.train_size
        n_train = min(n_train, len(x))
    if cfg.train_size is not None and cfg.train_size > len(x):
        raise DataError(f"data.train_size: {cfg.train_size} requested, the source has {len(x)} training images")
    # The subset is the first n images (as the notebooks took the first 10,000); val/test come from it.
    pool_x, pool_y = (x, y) if cfg.source == "synthetic" else (x[:n_train], y[:n_train])
    need = cfg.val_size + carve_test
    if cfg.source != "synthetic" and need >= len(pool_y):
        raise DataError(
            f"data.val_size: {cfg.val_size} validation + {carve_test} test images leave no training "
            f"images out of {len(pool_y)}")
    perm = np.random.default_rng([cfg.split_seed, 7]).permutation(len(pool_y))
    val_idx, test_idx, train_idx = perm[:cfg.val_size], perm[cfg.val_size:need], perm[need:]
    if cfg.source == "synthetic":
        train_idx = train_idx[:cfg.synthetic_size]
    train_idx = np.sort(train_idx)
    x_train, y_train = pool_x[train_idx], pool_y[train_idx]
    if has_test:
        x_test, y_test = arrays["x_test"], arrays["y_test"]
        if cfg.test_size is not None:
            x_test, y_test = x_test[:cfg.test_size], y_test[:cfg.test_size]
    elif carve_test:
        x_test, y_test = pool_x[np.sort(test_idx)], pool_y[np.sort(test_idx)]
    else:
        x_test = y_test = None  # type: ignore[assignment]  # no test split: Splits holds None
    mean, std = _channel_stats(x_train)
    return Splits(
        x_train=x_train, y_train=y_train,
        x_val=pool_x[np.sort(val_idx)], y_val=pool_y[np.sort(val_idx)],
        x_test=x_test, y_test=y_test,
        mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        std=(float(std[0]), float(std[1]), float(std[2])),
        description=description, test_is_holdout=bool(carve_test),
    )


def data_fingerprint(splits: Splits) -> str:
    """A content hash of the data a trial trains, validates and tests on: sha256 over each split's
    images and labels (name, dtype, shape, then the bytes), as ``sha256:`` + 64 hex digits.
    Identical data gives the same fingerprint whatever its source; one changed pixel, label or split
    membership gives another. Reads every byte once (~0.3 s for CIFAR-10's 60,000 images).

    >>> from bnsweep.spec.config import DataConfig
    >>> d = load_data(DataConfig(source="synthetic", synthetic_size=64, val_size=16, test_size=16))
    >>> data_fingerprint(d) == data_fingerprint(load_data(DataConfig(source="synthetic", synthetic_size=64,
    ...                                                                val_size=16, test_size=16)))
    True
    """
    h = hashlib.sha256(b"bnsweep-data-v1")
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        a = getattr(splits, name)
        if a is None:
            h.update(f"|{name}:none".encode())
            continue
        a = np.ascontiguousarray(a)
        h.update(f"|{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.view(np.uint8).reshape(-1).data)  # the bytes, no copy
    return "sha256:" + h.hexdigest()


def _channel_stats(x: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images on [0, 1] pixels, from exact integer sums in chunks
    (no float64 copy of the whole training set: that would be 1.2 GB for CIFAR-10)."""
    s1 = np.zeros(3, np.int64)
    s2 = np.zeros(3, np.int64)
    for i in range(0, len(x), chunk):
        v = x[i:i + chunk].reshape(-1, 3).astype(np.int64)
        s1 += v.sum(0)
        s2 += (v * v).sum(0)
    n = max(len(x) * x.shape[1] * x.shape[2], 1)
    mean = s1 / n
    var = np.maximum(s2 / n - mean * mean, 0.0)
    return mean / 255.0, np.sqrt(var) / 255.0 + 1e-8


# ---------------------------------------------------------------- on-device preprocessing


def make_preprocess(*, mean: tuple[float, ...], std: tuple[float, ...], augment: str, normalize: bool, seed: int):
    """A weightless Keras layer: uint8 → float, augmentation (training only), normalization.

    Pad-and-crop is a pair of one-hot matrix products (exact integer shifts, zero fill, any
    backend, no gather), ≈0.3 M multiply-adds per image against ResNet-20's 40.8 M. It runs on the
    integer pixel values 0..255, which stay exact even where float32 matmuls run in TF32 (10-bit
    mantissa: the default for TensorFlow and JAX on Ampere and later GPUs); ``x / 255`` would not.
    ``augment="notebook"`` is the notebooks' pad-crop + random brightness ± NOTEBOOK_BRIGHTNESS_DELTA
    per image, clipped to [0, 1]; ``"paper"`` is pad-crop + horizontal flip.
    """
    import keras
    from keras import ops

    class Preprocess(keras.layers.Layer):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(seed)
            self.mean = np.asarray(mean, np.float32).reshape(1, 1, 1, 3)
            self.std = np.asarray(std, np.float32).reshape(1, 1, 1, 3)

        def call(self, x: Any, training: bool | None = False) -> Any:
            x = ops.cast(x, "float32")
            if training and augment != "none":
                x = self._pad_crop(x, pad=4) / 255.0
                if augment == "paper":
                    flip = keras.random.uniform((ops.shape(x)[0], 1, 1, 1), seed=self.seed_generator) < 0.5
                    x = ops.where(flip, ops.flip(x, axis=2), x)
                else:  # the notebooks: random brightness, no flip
                    delta = keras.random.uniform(
                        (ops.shape(x)[0], 1, 1, 1), minval=-NOTEBOOK_BRIGHTNESS_DELTA,
                        maxval=NOTEBOOK_BRIGHTNESS_DELTA, seed=self.seed_generator)
                    x = ops.clip(x + delta, 0.0, 1.0)
            else:
                x = x / 255.0
            if normalize:
                x = (x - self.mean) / self.std
            return x

        def _pad_crop(self, x: Any, *, pad: int) -> Any:
            n, size = ops.shape(x)[0], 32
            padded = ops.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
            offsets = keras.random.randint((n, 2), 0, 2 * pad + 1, seed=self.seed_generator)
            grid = ops.arange(size, dtype="int32")[None, :]
            rows = ops.one_hot(offsets[:, 0:1] + grid, size + 2 * pad, dtype="float32")  # (n, 32, 40)
            cols = ops.one_hot(offsets[:, 1:2] + grid, size + 2 * pad, dtype="float32")
            x = ops.einsum("bih,bhwc->biwc", rows, padded)
            return ops.einsum("bjw,biwc->bijc", cols, x)

        def compute_output_shape(self, input_shape: Any) -> Any:
            return input_shape

    return Preprocess(name="preprocess")
