"""Issue 11: the wall-time cost of a run directory on an object store instead of the local disk.

The quickstart (``sweeps/quickstart.yaml`` on the shared CIFAR-10 subset, ``--data``) launched through
the real CLI, with
* ``local``: ``--run-dir`` a local directory (Ray's storage the local disk);
* ``s3``: ``--run-dir s3://bench/<round>`` on a moto S3 server on 127.0.0.1 (started here, stopped by
  PID): every checkpoint uploaded by the trial, every record, table and the Optuna study copied by the
  driver, a forced Ray snapshot uploaded after each checkpoint;
interleaved round by round (local, s3, s3, local, ...). Prints each launch's wall time, the median of
the per-round s3/local ratios with its range, and from the driver's final event the time spent on
storage: forced snapshots after checkpoints (count, seconds), copying checkpoints into the run
directory (``collect``), writing and uploading the tables, copying the Optuna study, and the trials'
time inside ``tune.report`` (the checkpoint's copy into the run's storage, on the worker). Each launch
runs its own local Ray, as a user's does. On a loaded machine the wall times move by ±30% between
launches of the same contender; the storage seconds are the less noisy measure of the cost.

    .venv/bin/python bench/storage.py --rounds 3 --epochs 2 --train-size 2000 --val-size 500
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine, write_json

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT.parent / "shared" / "data" / "cifar10-subset-train.npz"


def _moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Path(sys.executable).parent / "moto_server"
    cmd = [str(server)] if server.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.time() > deadline:
            raise RuntimeError("moto did not start")
        time.sleep(0.1)
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bench", method="PUT"), timeout=10).close()
    return proc, endpoint


def _launch(run_dir: str, a: argparse.Namespace, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "bnsweep", "launch", str(ROOT / "sweeps" / "quickstart.yaml"), "--data", str(SUBSET),
           "--epochs", str(a.epochs), "--set", f"data.train_size={a.train_size}",
           "--set", f"data.val_size={a.val_size}", "--set", f"data.test_size={a.val_size}", "--run-dir", run_dir,
           "--quiet", "--no-dashboard", "--num-cpus", str(a.cpus)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    wall = time.perf_counter() - t0
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    last = events[-1] if events else {}
    if res.returncode != 0 or last.get("event") != "finished":
        raise RuntimeError(f"{run_dir}: exit {res.returncode}\n{res.stderr[-3000:]}")
    return {"wall_s": wall, "snapshots": last.get("snapshots"), "storage_s": last.get("storage_s"),
            "counts": last.get("counts")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--val-size", type=int, default=500, help="validation and test images each")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--json")
    a = p.parse_args()
    if not SUBSET.exists():
        sys.exit(f"the CIFAR-10 subset is not at {SUBSET}")
    info = machine()
    print(f"machine: {info['cpu']}, load {info['loadavg']}; quickstart, {a.epochs} epoch(s), {a.train_size} images, "
          f"{a.rounds} rounds")
    proc, endpoint = _moto()
    tmp = Path(tempfile.mkdtemp(prefix="bnsweep-bench-storage-"))
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "WANDB_MODE": "offline",
           "RAY_ADDRESS": "", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint, "AWS_EC2_METADATA_DISABLED": "true",
           "XDG_CACHE_HOME": str(tmp / "cache")}
    rows: list[dict] = []
    try:
        for r in range(a.rounds):
            order = ["local", "s3"] if r % 2 == 0 else ["s3", "local"]
            got = {}
            for kind in order:
                where = str(tmp / f"local-{r}") if kind == "local" else f"s3://bench/round-{r}"
                got[kind] = _launch(where, a, env)
                print(f"round {r + 1} {kind:5s}: {got[kind]['wall_s']:6.1f} s  forced snapshots "
                      f"{got[kind]['snapshots']}  storage work (s) {got[kind]['storage_s']}", flush=True)
            rows.append({**got, "ratio": got["s3"]["wall_s"] / got["local"]["wall_s"]})
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = [row["ratio"] for row in rows]
    print(f"s3 / local wall time: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}, "
          f"{len(ratios)} rounds); local median {statistics.median(r['local']['wall_s'] for r in rows):.1f} s, "
          f"s3 median {statistics.median(r['s3']['wall_s'] for r in rows):.1f} s")
    write_json(a.json, {"machine": info, "args": vars(a), "rounds": rows})


if __name__ == "__main__":
    main()
