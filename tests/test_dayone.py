"""Day-one failures of real use (issue 13), each reproduced with the real CLI in a subprocess where the exit
status or a traceback is the point: resuming a finished sweep, another Optuna storage on resume, damaged
records under ``status``, symlink loops, labels the model cannot hold, disk full / I/O errors mid-sweep.

One real tiny sweep (the quickstart on 300 real CIFAR images, one step, one seed) is launched once for the
module and copied by the tests that resume or damage it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-subset-train.npz"
TINY = ("--set", "data.train_size=300", "--set", "data.val_size=100", "--set", "data.test_size=100",
        "--set", "steps_per_epoch=1", "--epochs", "1")
RAY = ("--no-dashboard", "--num-cpus", "2")

needs_cifar = pytest.mark.skipif(not CIFAR.is_file(), reason=f"the real CIFAR subset is absent ({CIFAR.name})")


def env() -> dict[str, str]:
    return {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "WANDB_MODE": "offline",
            "RAY_ADDRESS": ""}


def cli(*argv: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bnsweep", *argv], capture_output=True, text=True, timeout=timeout,
                          env=env(), cwd=cwd)


def refused(res: subprocess.CompletedProcess[str], *parts: str) -> str:
    """Exit 2, one line on stderr naming ``parts``, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout[-1000:], res.stderr[-3000:])
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for part in parts:
        assert part in err, (part, err)
    return err


def tree_digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    """A finished quickstart (2 configurations × 1 seed, one step each) launched through the CLI (~50 s)."""
    if not CIFAR.is_file():
        pytest.skip(f"the real CIFAR subset is absent ({CIFAR})")
    run_dir = tmp_path_factory.mktemp("dayone") / "qs"
    res = cli("launch", str(ROOT / "sweeps" / "quickstart.yaml"), "--data", str(CIFAR), *TINY, "--replicates", "1",
              "--run-dir", str(run_dir), "--quiet", *RAY)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    return run_dir


def copy_of(run_dir: Path, tmp_path: Path, name: str = "copy") -> Path:
    dst = tmp_path / name
    shutil.copytree(run_dir, dst, symlinks=True)
    return dst


# ---------------------------------------------------------------- 3. resume of a finished sweep


@needs_cifar
def test_resume_of_a_finished_sweep_says_it_is_complete_and_exits_0(finished_sweep, tmp_path):
    """Before: "stopped: {... 'completed': 2 ...} continue with: bnsweep resume DIR", exit 130."""
    rd = copy_of(finished_sweep, tmp_path)
    before = tree_digest(rd)
    res = cli("resume", str(rd), *RAY)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    assert "already complete" in res.stdout and "2 completed" in res.stdout, res.stdout
    assert "continue with" not in res.stdout + res.stderr and "Traceback" not in res.stderr
    assert tree_digest(rd) == before  # nothing run, nothing written
    quiet = cli("resume", str(rd), "--quiet", *RAY)
    assert quiet.returncode == 0
    event = json.loads(quiet.stdout.strip().splitlines()[-1])
    assert event["event"] == "finished" and event["already_complete"] is True
    assert event["counts"]["completed"] == 2 and event["best"]["trial_id"]


# ---------------------------------------------------------------- 7. resume --storage OTHER


@needs_cifar
def test_resume_with_another_optuna_storage_is_refused_naming_both(finished_sweep, tmp_path):
    """Before: the resume silently opened (and created) the other database: an empty study."""
    rd = copy_of(finished_sweep, tmp_path)
    before = tree_digest(rd)
    other = tmp_path / "other.db"
    err = refused(cli("resume", str(rd), "--storage", f"sqlite:///{other}", *RAY),
                  f"--storage sqlite:///{other}", f"sqlite:///{rd / 'optuna.db'}", "not this sweep's Optuna storage")
    assert "empty study" in err
    assert not other.exists() and tree_digest(rd) == before
    # the sweep's own storage, spelled relative to another directory, is the same database: accepted
    same = cli("resume", "copy", "--storage", "sqlite:///copy/optuna.db", *RAY, cwd=tmp_path)
    assert same.returncode == 0 and "already complete" in same.stdout, (same.stdout, same.stderr[-2000:])


# ---------------------------------------------------------------- 6. status on damaged records

DAMAGE = {  # name: (file, how), before: a TypeError / ValueError / AttributeError traceback or a silent wrong count
    "a record without its status": ("record", lambda d: d.pop("status")),  # traceback (sorting None with str)
    "a record whose config is a string": ("record", lambda d: d.__setitem__("config", "x")),  # traceback
    "a record whose status is a number": ("record", lambda d: d.__setitem__("status", 3)),  # a status "3"
    "a record whose accuracy is a string": ("record", lambda d: d.__setitem__("final_val_accuracy", "high")),
    "a record that is a list": ("record", None),  # the replicate silently missing: "1 configurations"
    "sweep.json whose metric is a string": ("sweep", lambda d: d.__setitem__("metric", "val_accuracy")),  # traceback
    "sweep.json whose replicates is a string": ("sweep", lambda d: d.__setitem__("replicates", "two")),
}


@needs_cifar
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_status_of_a_damaged_record_or_sweep_json_is_one_line_naming_the_file(finished_sweep, tmp_path, damage):
    where, how = DAMAGE[damage]
    rd = copy_of(finished_sweep, tmp_path)
    for t in rd.glob("results.*"):
        t.unlink()  # the tables are rebuilt from the records
    target = sorted(rd.glob("trials/*/seed-0/result.json"))[0] if where == "record" else rd / "sweep.json"
    data = json.loads(target.read_text())
    if how is None:
        data = [data]
    else:
        how(data)
    target.write_text(json.dumps(data))
    before = tree_digest(rd)
    for extra in ((), ("--json",)) if damage == "a record without its status" else ((),):
        err = refused(cli("status", str(rd), *extra, timeout=60), str(target.relative_to(rd)), "damaged")
        assert "nothing was changed" in err
    assert tree_digest(rd) == before


# ---------------------------------------------------------------- 5. symbolic link loops


def test_symlink_loops_as_data_run_dir_resume_status_or_include_are_one_line_exit_2(tmp_path):
    """Before: a RuntimeError ("Symlink loop from ...") traceback, exit 1, for each but `plan DIR`."""
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    (tmp_path / "c.npz").symlink_to("d.npz")
    (tmp_path / "d.npz").symlink_to("c.npz")
    (tmp_path / "runs").symlink_to("runs")  # the default run directory runs/<name> goes through a loop
    spec = tmp_path / "s.yaml"
    spec.write_text("name: t\nmethod: random\ntrials: 1\ntracking: {wandb: false}\n"
                    "fixed: {model: {depth: 8}, epochs: 1, batch_size: 32, steps_per_epoch: 1,\n"
                    "        lr_schedule: {type: constant},\n"
                    "        data: {source: synthetic, synthetic_size: 32, val_size: 16}}\n")
    (tmp_path / "inc.yaml").write_text("name: t\ninclude: a\nmethod: random\ntrials: 1\n")
    loop, npz = str(tmp_path / "a"), str(tmp_path / "c.npz")
    cases = [
        (("plan", str(spec), "--no-probe", "--data", npz), ("--data", npz, "symbolic link loop")),
        (("plan", str(spec), "--no-probe", "--data", loop), ("--data", loop, "symbolic link loop")),
        (("launch", str(spec), "--data", npz, *RAY), ("--data", npz, "symbolic link loop")),
        (("launch", str(spec), "--run-dir", f"{loop}/run", *RAY), ("--run-dir", loop, "symbolic link loop")),
        (("launch", str(spec), *RAY), ("runs/t", "symbolic link loop")),
        (("resume", loop, *RAY), (loop, "symbolic link loop")),
        (("status", loop), (loop, "symbolic link loop")),
        (("plan", str(tmp_path / "inc.yaml"), "--no-probe"), ("inc.yaml:2 include", "symbolic link loop")),
    ]
    for argv, parts in cases:
        refused(cli(*argv, cwd=tmp_path, timeout=120), *parts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c.npz", "d.npz", "inc.yaml", "runs", "s.yaml"]


# ---------------------------------------------------------------- 4. labels and data checked before launch

SEARCHED_DATA = """\
name: ds
method: grid
replicates: 1
tracking: {wandb: false}
fixed: {model: {depth: 8}, epochs: 1, batch_size: 32, steps_per_epoch: 1, lr_schedule: {type: constant},
        data: {val_size: 100, test_size: 100}}
parameters:
  data.train_size: {values: [300, 400]}
"""


@needs_cifar
def test_labels_beyond_num_classes_and_bad_data_of_a_data_search_are_refused_before_launch(tmp_path):
    """Before: every trial failed (exit 3 after Ray started), and plan said nothing or assumed 50,000 images."""
    import numpy as np

    qs = str(ROOT / "sweeps" / "quickstart.yaml")
    run = tmp_path / "run"
    for verb in ("launch", "plan"):
        extra = ("--run-dir", str(run), *RAY) if verb == "launch" else ("--no-probe",)
        refused(cli(verb, qs, "--data", str(CIFAR), "--set", "model.num_classes=5", *extra),
                "model.num_classes: 5", f"/{CIFAR.name} has", "labels 0..9", "at least 10")  # (its resolved path)
    spec = tmp_path / "ds.yaml"
    spec.write_text(SEARCHED_DATA)
    f32 = tmp_path / "f32.npz"
    np.savez(f32, x_train=np.zeros((400, 32, 32, 3), np.float32), y_train=np.zeros(400, np.int64))
    for data, parts in ((tmp_path / "missing.npz", ("missing.npz", "no such file")),
                        (f32, ("f32.npz", "uint8", "float32"))):
        for verb in ("launch", "plan"):
            extra = ("--run-dir", str(run), *RAY) if verb == "launch" else ("--no-probe",)
            refused(cli(verb, str(spec), "--data", str(data), *extra), *parts)
    assert not run.exists()
    ok = cli("plan", qs, "--data", str(CIFAR), "--no-probe")  # the real image counts, not an assumed 50,000
    assert ok.returncode == 0, ok.stderr
    assert "5,085 training images" in ok.stdout and "3,000 training + 1,000 validation" in ok.stdout, ok.stdout
    assert "assuming" in cli("plan", qs, "--no-probe").stdout  # the official set without a local copy: said so


# ---------------------------------------------------------------- 2. disk full

SYNTHETIC = """\
name: full
method: grid
replicates: 1
tracking: {wandb: false}
fixed: {model: {depth: 8}, epochs: 1, batch_size: 32, steps_per_epoch: 1, lr_schedule: {type: constant},
        data: {source: synthetic, synthetic_size: 64, val_size: 32, test_size: 32}}
parameters:
  lr: {values: [0.1, 0.05]}
"""


def in_tmpfs(mnt: Path, size: str, script: str, *, extra_env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``script`` (bash) in a private mount namespace where ``mnt`` is a tmpfs of ``size``; skips the test where
    this machine does not allow it (not root, no user namespaces)."""
    mnt.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "-o",
                            "size=16k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {probe.stderr.strip()[:200]}")
    full = f"mount -t tmpfs -o size={size} tmpfs {mnt} || exit 99\n{script}"
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", full],
                          capture_output=True, text=True, timeout=timeout, env={**env(), **(extra_env or {})})


def test_a_near_full_disk_at_launch_is_one_line_and_leaves_no_half_written_study(tmp_path):
    """Before: a SQLAlchemy "database or disk is full" traceback (exit 1) and a half-written optuna.db left."""
    spec = tmp_path / "full.yaml"
    spec.write_text(SYNTHETIC)
    mnt = tmp_path / "mnt"
    launch = f"{sys.executable} -m bnsweep launch {spec} --run-dir {mnt}/run {' '.join(RAY)}"
    after = f"; rc=$?; ls -A {mnt}; exit $rc"
    # the free-space check: refused before anything is written
    res = in_tmpfs(mnt, "64k", launch + after)
    err = refused(subprocess.CompletedProcess(res.args, res.returncode, "", res.stderr), "MiB free", "--run-dir")
    assert "at least 64 MiB" in err and res.stdout.strip() == "", res.stdout
    # below the check (BNSWEEP_MIN_FREE_MB=0): Optuna's SQLite study cannot be created: one line, and no optuna.db
    for size in ("8k", "64k"):
        res = in_tmpfs(mnt, size, launch + after, extra_env={"BNSWEEP_MIN_FREE_MB": "0"})
        refused(subprocess.CompletedProcess(res.args, res.returncode, "", res.stderr), "no space left on device",
                "nothing was started")
        assert res.stdout.strip() == "", res.stdout  # the run directory is gone: no optuna.db, nothing


FILL_SPEC = """\
name: enospc
method: grid
replicates: 1
max_concurrent: 1
retries: 0
tracking: {wandb: false}
fixed: {model: {depth: 8}, epochs: 2, batch_size: 32, steps_per_epoch: 1, lr_schedule: {type: constant}, regime: bn,
        data: {source: synthetic, synthetic_size: 64, val_size: 32, test_size: 32}}
parameters:
  lr: {values: [0.1, 0.05, 0.02]}
"""


@pytest.mark.slow
def test_a_disk_that_fills_mid_sweep_stops_it_with_exit_3_and_resume_retries_the_failed_trials(tmp_path):
    """The run directory on a 100 MB tmpfs, filled once the first trial's record is written (the second trial
    sleeps 10 s in its first epoch, so the fill lands while it trains); then freed and resumed.
    Before: the driver died with Optuna's StorageInternalError traceback (exit 1)."""
    spec = tmp_path / "enospc.yaml"
    spec.write_text(FILL_SPEC)
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"faults": [{"lr": 0.05, "epoch": 1, "sleep": 10}]}))
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    out.mkdir()
    py = f"{sys.executable} -m bnsweep"
    script = f"""
{py} launch {spec} --run-dir {mnt}/run --quiet {' '.join(RAY)} > {out}/launch.out 2> {out}/launch.err &
pid=$!
until ls {mnt}/run/trials/*/seed-0/result.json > /dev/null 2>&1; do sleep 0.2; done
dd if=/dev/zero of={mnt}/filler bs=1M 2> /dev/null
wait $pid; echo $? > {out}/launch.rc
rm {mnt}/filler
{py} resume {mnt}/run --quiet {' '.join(RAY)} > {out}/resume.out 2> {out}/resume.err; echo $? > {out}/resume.rc
{py} status {mnt}/run --json > {out}/status.json 2> {out}/status.err
"""
    res = in_tmpfs(mnt, "100m", script, extra_env={"BNSWEEP_TEST_FAULTS": str(faults)}, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    launch_err = (out / "launch.err").read_text()
    assert (out / "launch.rc").read_text().strip() == "3", launch_err[-3000:]
    last = launch_err.strip().splitlines()[-1]
    assert last.startswith("bnsweep launch:") and "no space left on device" in last and "bnsweep resume" in last
    assert (out / "resume.rc").read_text().strip() == "0", (out / "resume.err").read_text()[-3000:]
    assert "Traceback" not in (out / "resume.err").read_text()
    status = json.loads((out / "status.json").read_text())
    rows = [(t["trial_id"], t["status"], t.get("lr")) for t in status["trials"]]
    assert status["counts"] == {"completed": 3}, rows
    assert sorted(round(float(t["lr"]), 4) for t in status["trials"]) == [0.02, 0.05, 0.1], rows  # each point once
    assert status["best"]["status"] == "completed"
