"""One replicate's files in the run directory: its start record, its final record and its trained weights.

Every replicate (one trial configuration × one seed) has its record when it ends::

    trials/<trial_id>/seed-<seed>/result.json        the final record (``save_trial_record``)
    trials/<trial_id>/seed-<seed>/final_weights.npz  the trained network (keys: variable path, "/" -> ":")
    trials/<trial_id>/seed-<seed>/started.json       config + provenance at start (``save_trial_start``)
    trials/<trial_id>/seed-<seed>/checkpoint/state.json   per-epoch progress while it runs (engine/trial.py)
    trials/<trial_id>/seed-<seed>/lost.json          the driver found neither its record nor a checkpoint
    trials/<trial_id>/seed-<seed>/failure.json       an exception that ended it (run directories of older versions)

The trial's worker writes the same files (``write_trial_record``, ``write_trial_start``) into the
checkpoint it reports to Ray Tune; the driver copies them into the run directory (sweep/collect.py).

Non-finite floats (a diverged run's NaN loss) are kept as JSON ``NaN`` in ``result.json`` (Python's
``json`` reads them back).

>>> weight_key("stem_bn/gamma")
'stem_bn:gamma'
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bnsweep.base.atomic import atomic_write
from bnsweep.base.meta import library_versions, now_iso
from bnsweep.spec.config import ModelConfig, TrialConfig, config_hash

RESULT_FILE = "result.json"


WEIGHTS_FILE = "final_weights.npz"


START_FILE = "started.json"


FAILURE_FILE = "failure.json"


LOST_FILE = "lost.json"


STATE_FILE = Path("checkpoint") / "state.json"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _atomic_json(path: Path, obj: Any) -> None:
    blob = json.dumps(obj, indent=1, default=_json_default).encode()
    atomic_write(path, lambda f: f.write(blob))


def _seed_dir(run_dir: str | Path, trial_id: str, seed: int) -> Path:
    return Path(run_dir) / "trials" / str(trial_id) / f"seed-{int(seed)}"


def save_trial_start(run_dir: str | Path, *, trial_id: str, seed: int, replicate: int,
                     config: Mapping[str, Any] | TrialConfig, meta: Mapping[str, Any]) -> Path:
    """Record a replicate's config when it starts (``started.json``), so a running or crashed
    replicate shows its hyperparameters in the table. Optional: without it the config of a running
    replicate is taken from a finished sibling seed of the same trial."""
    return write_trial_start(_seed_dir(run_dir, trial_id, seed), trial_id=trial_id, seed=seed, replicate=replicate,
                             config=config, meta=meta)


def write_trial_start(d: Path, *, trial_id: str, seed: int, replicate: int,
                      config: Mapping[str, Any] | TrialConfig, meta: Mapping[str, Any]) -> Path:
    """``save_trial_start`` into the replicate directory ``d`` (the run directory's, or a checkpoint's)."""
    cfg = (config if isinstance(config, TrialConfig) else TrialConfig.from_dict(dict(config))).to_dict()
    record = {"sweep": meta.get("sweep"), "trial_id": str(trial_id), "replicate": int(replicate),
              "seed": int(seed), "spec_hash": meta.get("spec_hash"), "git_commit": meta.get("git_commit"),
              "versions": dict(meta.get("versions") or {}), "started_at": meta.get("started_at") or now_iso(),
              "config": cfg, "config_hash": config_hash(TrialConfig.from_dict(cfg))}
    _atomic_json(d / START_FILE, record)
    return d / START_FILE


def save_trial_record(run_dir: str | Path, *, trial_id: str, seed: int, replicate: int, result: Any,
                      net: Any = None, meta: Mapping[str, Any]) -> Path:
    """Write one replicate's final ``result.json`` (and ``final_weights.npz`` when ``net`` is given).

    ``result`` is a ``TrialResult`` (or its ``as_dict()``); ``meta`` holds sweep, spec_hash,
    git_commit, versions, started_at. The weights are written first, so a ``result.json`` always
    comes with its weights; both are written to a temporary file, fsynced and renamed.
    Returns the path of ``result.json``.
    """
    return write_trial_record(_seed_dir(run_dir, trial_id, seed), trial_id=trial_id, seed=seed, replicate=replicate,
                              result=result, net=net, meta=meta)


def write_trial_record(d: Path, *, trial_id: str, seed: int, replicate: int, result: Any, net: Any = None,
                       meta: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> Path:
    """``save_trial_record`` into the replicate directory ``d`` (the run directory's, or a checkpoint's);
    ``extra`` fields (e.g. a failure's traceback) are added to the record."""
    d.mkdir(parents=True, exist_ok=True)
    body = result.as_dict() if hasattr(result, "as_dict") else dict(result)
    weights = None
    if net is not None:
        save_weights(net, d / WEIGHTS_FILE)
        weights = WEIGHTS_FILE
    versions = meta.get("versions")
    if versions is None:
        versions = library_versions()
    record = {"sweep": meta.get("sweep"), "trial_id": str(trial_id), "replicate": int(replicate),
              "seed": int(seed), "spec_hash": meta.get("spec_hash"), "git_commit": meta.get("git_commit"),
              "versions": dict(versions), "started_at": meta.get("started_at"), "finished_at": now_iso(),
              **body, "final_weights": weights, **dict(extra or {})}
    _atomic_json(d / RESULT_FILE, record)
    return d / RESULT_FILE


def weight_key(variable_path: str) -> str:
    """npz key of a Keras variable: ``stem_bn/gamma`` -> ``stem_bn:gamma``."""
    return variable_path.replace("/", ":")


def save_weights(net: Any, path: str | Path) -> Path:
    """Every variable of a Keras model (BN moving statistics included) to an npz, atomically."""
    import keras

    arrays: dict[str, np.ndarray] = {}
    for v in net.variables:
        key = weight_key(v.path)
        if key in arrays:
            raise ValueError(f"two variables share the path {v.path!r}; cannot save weights by path")
        arrays[key] = np.asarray(keras.ops.convert_to_numpy(v))
    path = Path(path)
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
    return path


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a ``final_weights.npz`` (no pickle)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def load_trained_net(trial_seed_dir: str | Path) -> Any:
    """Rebuild a replicate's trained network from ``result.json`` + ``final_weights.npz``.

    The architecture comes from the recorded config (``build_resnet(ModelConfig(**config["model"]))``);
    every variable is then assigned by path. The network takes normalized float images (the trial's
    ``Preprocess`` is not part of it).
    """
    d = Path(trial_seed_dir)
    rec = read_json(d / RESULT_FILE)
    if rec is None:
        raise FileNotFoundError(f"{d / RESULT_FILE}: missing or unreadable")
    wpath = d / WEIGHTS_FILE
    if not wpath.is_file():
        raise FileNotFoundError(f"{wpath}: no final weights for this replicate")
    from bnsweep.engine.models import build_resnet

    net = build_resnet(ModelConfig(**rec["config"]["model"]), seed=0)
    arrays = load_weights(wpath)
    wanted = {weight_key(v.path): v for v in net.variables}
    missing, extra = sorted(set(wanted) - set(arrays)), sorted(set(arrays) - set(wanted))
    if missing or extra:
        raise ValueError(f"{wpath}: does not match the recorded architecture "
                         f"(missing {missing[:5]}, unexpected {extra[:5]})")
    for key, v in wanted.items():
        if tuple(arrays[key].shape) != tuple(v.shape):
            raise ValueError(f"{wpath}: does not match the recorded architecture ({key} has shape "
                             f"{arrays[key].shape}, the network expects {tuple(v.shape)})")
        v.assign(arrays[key])
    return net


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        out = json.loads(text)
    except ValueError as e:
        warnings.warn(f"{path}: unreadable JSON ({e}); ignored", RuntimeWarning, stacklevel=3)
        return None
    return out if isinstance(out, dict) else None
