"""A run directory on an object store: a real S3-protocol server (moto, on 127.0.0.1, started here and
stopped by PID), a real local Ray, real Optuna SQLite, real Keras training, the real CLI in subprocesses.

- ``launch --run-dir s3://bucket/sweep``; the driver SIGKILLed (with its Ray) mid-sweep once two
  configurations have their records in the bucket; ``resume s3://bucket/sweep`` from a fresh process
  with an empty local cache (another ``HOME`` and ``XDG_CACHE_HOME``: a fresh head machine) finishes
  the sweep with every record that was in the bucket byte-identical and never re-trained, and the
  Optuna study continued (no configuration sampled twice, none left RUNNING);
- ``status``, ``export`` and ``plot`` read it from the URI;
- a bucket that does not exist, a scheme nobody knows, a scheme without a path, an endpoint nobody
  answers at, a prefix that holds no sweep: one line, exit 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from test_reliability import _descendants  # the /proc process tree, one copy

from bnsweep.store.table import TEXT_DTYPES

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SPEC = """
name: s3_sweep
method: random
trials: 4
replicates: 2
seed: 0
max_concurrent: 1
resources: {cpu: 2}
tracking: {wandb: true, mode: offline}
fixed:
  model: {depth: 8}
  epochs: 3
  batch_size: 32
  steps_per_epoch: 2
  data: {source: synthetic, synthetic_size: 64, val_size: 32, test_size: 32}
parameters:
  lr: {distribution: log_uniform, min: 0.01, max: 0.3}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 (its own session; stopped by its PID) with the bucket ``bucket``."""
    port = _free_port()
    server = BIN / "moto_server"
    cmd = [str(server)] if server.exists() else [sys.executable, "-m", "moto.server"]
    log = open(Path(tempfile.gettempdir()) / f"moto-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.time() < deadline, "moto did not start"
            time.sleep(0.1)
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bucket", method="PUT"), timeout=10).close()
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ENDPOINT_URL": endpoint,
               "AWS_EC2_METADATA_DISABLED": "true"}
        yield {"endpoint": endpoint, "env": env, "pid": proc.pid}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def _fs(s3):
    from pyarrow import fs

    return fs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                           endpoint_override=s3["endpoint"].removeprefix("http://"), scheme="http")


def _objects(s3, prefix: str) -> dict[str, int]:
    from pyarrow import fs as pafs

    infos = _fs(s3).get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return {i.path: i.size for i in infos if i.type == pafs.FileType.File}


def _records(s3, prefix: str) -> dict[str, bytes]:
    fs = _fs(s3)
    out = {}
    for path in _objects(s3, f"{prefix}/trials"):
        if path.endswith("/result.json"):
            with fs.open_input_stream(path) as f:
                out[path] = f.read()
    return out


def _machine(tmp_path: Path, name: str, s3) -> dict[str, str]:
    """The environment of a 'machine': its own HOME and cache (so its local copy of the run starts empty)."""
    home = tmp_path / name
    (home / "cache").mkdir(parents=True, exist_ok=True)
    return {**os.environ, **s3["env"], "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"),
            "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "WANDB_MODE": "offline", "RAY_ADDRESS": "",
            "RAY_TMPDIR": tempfile.mkdtemp(prefix="bno", dir="/tmp"), "BNSWEEP_RUN_CACHE": ""}


def _cli(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """The CLI in a subprocess; its output also in $TMPDIR/bnsweep-cli-<verb>.{out,err} while it runs."""
    logs = Path(tempfile.gettempdir()) / f"bnsweep-cli-{args[0]}"
    with open(f"{logs}.out", "w") as out, open(f"{logs}.err", "w") as err:
        proc = subprocess.run([sys.executable, "-m", "bnsweep", *args], stdout=out, stderr=err, text=True, env=env,
                              cwd=ROOT, timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, Path(f"{logs}.out").read_text(),
                                       Path(f"{logs}.err").read_text())


def _events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


@pytest.mark.slow
def test_sweep_on_s3_survives_kill_9_and_resumes_from_a_fresh_machine(s3, tmp_path):
    spec = tmp_path / "s3.yaml"
    spec.write_text(SPEC)
    uri, prefix = "s3://bucket/sweep", "bucket/sweep"
    log = tmp_path / "epochs.jsonl"
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"log": str(log)}))
    env_a = {**_machine(tmp_path, "machine-a", s3), "BNSWEEP_TEST_FAULTS": str(faults)}
    t0 = time.perf_counter()
    with open(tmp_path / "a.out", "w") as out, open(tmp_path / "a.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bnsweep", "launch", str(spec), "--run-dir", uri, "--quiet",
                                 "--no-dashboard", "--num-cpus", "2"], stdout=out, stderr=err, env=env_a, cwd=ROOT,
                                start_new_session=True)
    family: set[int] = set()
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(_records(s3, prefix)) < 4:  # 2 configurations x 2 seeds
            family.update(_descendants(proc.pid))
            assert proc.poll() is None, (tmp_path / "a.err").read_text()[-3000:]
            time.sleep(0.3)
        assert len(_records(s3, prefix)) >= 4, (tmp_path / "a.err").read_text()[-3000:]
        family.update(_descendants(proc.pid))
        os.killpg(proc.pid, signal.SIGKILL)  # the driver (and this machine's Ray) dies mid-sweep
        proc.wait(30)
    finally:
        time.sleep(1)
        for pid in sorted(family):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    killed_after = time.perf_counter() - t0
    before = _records(s3, prefix)
    assert 4 <= len(before) < 8, sorted(before)
    assert _objects(s3, prefix).get(f"{prefix}/.lock"), "the killed driver's lock object is left behind"
    done_before = {(json.loads(b)["trial_id"], json.loads(b)["seed"]) for b in before.values()}
    epochs_before = len(log.read_text().splitlines())

    # resume from another "machine": empty cache, another HOME; the lock of the dead pid is taken over
    env_b = {**_machine(tmp_path, "machine-b", s3), "BNSWEEP_TEST_FAULTS": str(faults)}
    t1 = time.perf_counter()
    res = _cli(["resume", uri, "--quiet", "--no-dashboard", "--num-cpus", "2"], env_b)
    resume_s = time.perf_counter() - t1
    assert res.returncode == 0, res.stderr[-4000:]
    events = _events(res.stdout)
    assert events[0]["event"] == "resumed" and events[-1]["event"] == "finished", events[-3:]
    after = _records(s3, prefix)
    assert len(after) == 8
    for key, blob in before.items():  # every record that was in the bucket: byte for byte, never re-run
        assert after[key] == blob, key
    retrained = [e for e in map(json.loads, log.read_text().splitlines()[epochs_before:])
                 if (e["trial_id"], e["seed"]) in done_before]
    assert not retrained, retrained
    objects = _objects(s3, prefix)
    assert f"{prefix}/.lock" not in objects  # released
    for name in ("sweep.json", "spec.yaml", "optuna.db", "results.parquet", "results.csv", "history.parquet"):
        assert f"{prefix}/{name}" in objects, name
    assert any(p.startswith(f"{prefix}/ray/") and p.endswith("bnsweep.json") for p in objects)  # Ray's checkpoints
    assert len({p.split("/")[3] for p in objects if p.startswith(f"{prefix}/wandb/offline-run-")}) == 8 + 1
    # the study continued from the bucket's copy: 4 configurations with 4 distinct lrs, none RUNNING; a trial
    # the killed driver had asked Optuna for before Ray's snapshot knew it (it never trained) is a FAIL marked
    # interrupted, never a configuration
    study_copy = tmp_path / "optuna.db"
    with _fs(s3).open_input_stream(f"{prefix}/optuna.db") as f:
        study_copy.write_bytes(f.read())
    trials = optuna.load_study(study_name="bnsweep", storage=f"sqlite:///{study_copy}").trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and len({round(t.params["lr"], 12) for t in complete}) == 4
    others = [t for t in trials if t not in complete]
    assert all(t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("bnsweep_interrupted")
               for t in others), [(t.state, t.user_attrs) for t in others]
    with _fs(s3).open_input_stream(f"{prefix}/results.csv") as f:
        df = pd.read_csv(f, dtype=TEXT_DTYPES)
    assert len(df) == 8 and set(df["status"]) == {"completed"} and df["test_accuracy"].notna().all()
    assert df["lr"].round(12).nunique() == 4

    # status, export, plot from a third machine (its own empty cache)
    env_c = _machine(tmp_path, "machine-c", s3)
    st = _cli(["status", uri, "--json"], env_c, timeout=180)
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)
    assert status["counts"] == {"completed": 4} and not status["running"] and status["run_dir"] == uri
    ex = _cli(["export", uri, "--format", "csv", "--group-by", "regime"], env_c, timeout=180)
    assert ex.returncode == 0, ex.stderr
    assert "regime" in ex.stdout and "test_accuracy" in ex.stdout, ex.stdout
    pl = _cli(["plot", uri, "--kind", "lr-curves"], env_c, timeout=300)
    assert pl.returncode == 0, pl.stderr
    assert f"wrote {uri}/plots/lr-curves.png" in pl.stdout, pl.stdout
    assert f"{prefix}/plots/lr-curves.png" in _objects(s3, prefix)
    print(f"\ns3 run dir: driver killed after {killed_after:.0f} s with {len(before)}/8 records in the bucket; "
          f"resume from a fresh machine finished in {resume_s:.0f} s: 8/8 rows with test accuracy, "
          f"{len(before)} records byte-identical, 0 re-trained epochs of them")


@pytest.mark.parametrize("args, message", [
    (["status", "s3://no-such-bucket/x"], "no bucket (or root) 'no-such-bucket'"),
    (["status", "s3://bucket/nothing-here"], "not a bnsweep run directory (no sweep.json)"),
    (["resume", "s3://bucket/nothing-here", "--no-dashboard"], "not a bnsweep run directory (no sweep.json)"),
    (["export", "s3://bucket/nothing-here"], "not a bnsweep run directory"),
    (["status", "nosuchscheme://bucket/x"], "unknown scheme 'nosuchscheme'"),
    (["status", "s3:"], "not a path nor a URI"),
    (["status", "s3://"], "no bucket or path after s3://"),
    (["launch", "SPEC", "--run-dir", "s3://no-such-bucket/x", "--no-dashboard"],
     "no bucket (or root) 'no-such-bucket'"),
    (["status", "s3://bucket/x", "ENDPOINT=http://127.0.0.1:9"], "bnsweep status: "),
])
def test_bad_run_dir_uris_are_one_line_exit_2(s3, tmp_path, args, message):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    env = _machine(tmp_path, "m", s3)
    if args[-1].startswith("ENDPOINT="):  # an endpoint nobody answers at: unreadable
        endpoint = args.pop().split("=", 1)[1]
        env.update(AWS_ENDPOINT_URL_S3=endpoint, AWS_ENDPOINT_URL=endpoint, AWS_MAX_ATTEMPTS="1")
    args = [str(spec) if a == "SPEC" else a for a in args]
    t0 = time.perf_counter()
    res = _cli(args, env, timeout=180)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [x for x in res.stderr.strip().splitlines() if not x.startswith("warning: ")]  # (the spec's own)
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.stderr, res.stderr
    assert time.perf_counter() - t0 < 90
    assert not _objects(s3, "bucket/x")  # nothing written


_RACER = """
import os, sys, time
from bnsweep.store.rundir import RunDir, RunDirError, lock_for
lock = lock_for(RunDir(sys.argv[1]))
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
try:
    lock.acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
    lock.release()
except RunDirError as e:
    print("refused", flush=True)
"""


def test_the_lock_object_one_of_racing_drivers_wins_and_a_dead_holder_s_lock_is_taken_over(s3, tmp_path,
                                                                                               monkeypatch):
    """The run-directory lock on an object store (a heartbeat lock object, settle-and-read-back): of 5
    drivers racing for one URI exactly one holds it, every round; a lock left by a killed driver (its pid
    dead on this host) is taken over at once; a live holder's is refused with who holds it."""
    from bnsweep.store.rundir import RunDir, RunDirError, lock_for

    env = {**_machine(tmp_path, "racers", s3), "PYTHONPATH": str(ROOT)}
    for k, v in s3["env"].items():
        monkeypatch.setenv(k, v)
    uri = "s3://bucket/locks"
    for round_ in range(2):
        go = tmp_path / f"go-{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", _RACER, uri, str(go), "4"], stdout=subprocess.PIPE,
                                  text=True, env=env, cwd=ROOT) for _ in range(5)]
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 5
        go.touch()
        answers = [p.stdout.readline().strip() for p in procs]
        for p in procs:
            p.wait(60)
        assert sorted(answers) == ["held"] + ["refused"] * 4, answers
    holder = subprocess.Popen([sys.executable, "-c", _RACER, uri, str(tmp_path / "go-0"), "300"],
                              stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "ready" and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"in use by another bnsweep \\(pid {holder.pid} on"):
            lock_for(RunDir(uri)).acquire()
    finally:
        holder.kill()  # kill -9: its lock object stays, naming a dead pid
        holder.wait()
    assert json.loads(_fs(s3).open_input_stream("bucket/locks/.lock").read())["pid"] == holder.pid
    with lock_for(RunDir(uri)) as lock:  # taken over at once
        assert lock.held and not lock.lost
    assert "bucket/locks/.lock" not in _objects(s3, "bucket/locks")
