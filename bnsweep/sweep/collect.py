"""The driver's side of the transport: a trial's checkpoint in the run's storage (written by Ray Tune
from wherever the trial ran) becomes records of the run directory.

``collect_checkpoint`` reads the checkpoint through its own filesystem (``checkpoint.filesystem``,
``checkpoint.path``: S3, GCS, NFS or local alike) and copies, for each replicate:

- ended: ``started.json``, ``final_weights.npz``, the W&B offline run (to ``RUN_DIR/wandb/``), and
  ``result.json`` last, into ``trials/<trial_id>/seed-<s>/`` — only if the run directory has no
  record yet (a record, once there, is never rewritten: resume keeps it byte for byte);
- running: its progress ``checkpoint/state.json`` (epoch history) and ``started.json``, for ``status``
  and for the record of a replicate later pruned or failed.

For a URI run directory each file is written to the driver's local copy and uploaded as one object,
the ``result.json`` after the files it names.

>>> import json, tempfile, pathlib
>>> from ray.tune import Checkpoint
>>> src = pathlib.Path(tempfile.mkdtemp()); (src / "seed-0").mkdir()
>>> _ = (src / "bnsweep.json").write_text(json.dumps({"replicates": {"0": "ended"}}))
>>> _ = (src / "seed-0" / "result.json").write_text('{"status": "completed"}')
>>> rd = RunDir(tempfile.mkdtemp())
>>> collect_checkpoint(rd, "t1", Checkpoint.from_directory(str(src)))
{0: 'ended'}
>>> rd.replicate("t1", 0).result.read_text()
'{"status": "completed"}'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bnsweep.base.atomic import atomic_write_bytes
from bnsweep.store.rundir import RunDir
from bnsweep.sweep.trainable import MANIFEST


def _read(fs: Any, path: str) -> bytes | None:
    try:
        with fs.open_input_stream(path) as f:
            return bytes(f.read())
    except (FileNotFoundError, OSError):
        return None


def read_manifest(checkpoint: Any) -> dict[str, Any] | None:
    """A trial checkpoint's ``bnsweep.json`` (None when the checkpoint or it is missing)."""
    if checkpoint is None:
        return None
    blob = _read(checkpoint.filesystem, f"{checkpoint.path}/{MANIFEST}")
    if blob is None:
        return None
    try:
        out = json.loads(blob)
    except ValueError:
        return None
    return out if isinstance(out, dict) and isinstance(out.get("replicates"), dict) else None


def collect_checkpoint(rd: RunDir, trial_id: str, checkpoint: Any) -> dict[int, str]:
    """Copy what ``checkpoint`` (a ``ray.tune.Checkpoint`` in the run's storage) holds of each replicate
    into the run directory; returns {seed: "ended" | "running"} as the checkpoint says ({} without one)."""
    manifest = read_manifest(checkpoint)
    if manifest is None:
        return {}
    import pyarrow.fs as pafs

    fs, base = checkpoint.filesystem, checkpoint.path
    states: dict[int, str] = {}
    for key, state in manifest["replicates"].items():
        try:
            seed = int(key)
        except ValueError:
            continue
        states[seed] = str(state)
        files = rd.replicate(trial_id, seed)
        src = f"{base}/seed-{seed}"
        written: list[Path] = []
        if not files.started.exists():
            blob = _read(fs, f"{src}/started.json")
            if blob is not None:
                atomic_write_bytes(files.started, blob)
                written.append(files.started)
        if state == "ended":
            if files.result.exists():
                rd.push(written)
                continue
            record = _read(fs, f"{src}/result.json")
            if record is None:  # not there after all: leave it to the end-of-trial bookkeeping
                states[seed] = "missing"
                rd.push(written)
                continue
            weights = _read(fs, f"{src}/final_weights.npz")
            if weights is not None:
                atomic_write_bytes(files.weights, weights)
                written.append(files.weights)
            infos = fs.get_file_info(pafs.FileSelector(f"{src}/wandb", recursive=True, allow_not_found=True))
            for info in infos:
                if info.type != pafs.FileType.File:
                    continue
                blob = _read(fs, info.path)
                if blob is not None:
                    dest = rd.wandb_dir / info.path[len(f"{src}/wandb/"):]
                    atomic_write_bytes(dest, blob)
                    written.append(dest)
            atomic_write_bytes(files.result, record)  # last: a result.json comes with its weights
            written.append(files.result)
            files.lost.unlink(missing_ok=True)
        elif state == "running":
            blob = _read(fs, f"{src}/state.json")
            if blob is not None:
                atomic_write_bytes(files.state, blob)
                written.append(files.state)
        rd.push(written)
    return states
