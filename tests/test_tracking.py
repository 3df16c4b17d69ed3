"""bnsweep.store.tracking against the real wandb client, offline: runs are written under the run directory and
read back from wandb's own transaction log (``run-<id>.wandb``). The only thing that cannot exist here is
a W&B server; the tests named ``*_server_*`` simulate its absence (a closed port) or a missing key."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from bnsweep.store import tracking
from bnsweep.store.tracking import TrackingConfig, TrackingWarning, TrialTracker, log_sweep_summary, scrub_secrets

FAKE_KEY = "f" * 20 + "0123456789abcdef0123"  # 40 characters: the shape of a real W&B key
OFFLINE = TrackingConfig(mode="offline")
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("wandb_isolated")


# --------------------------------------------------------------------------------------------- reading runs back


def read_records(path: Path) -> list[Any]:
    """Records of a ``.wandb`` transaction log (LevelDB log format: 32 KiB blocks of CRC'd chunks, after a
    7-byte ``:W&B`` header). wandb 0.31 ships no Python reader (its DataStore went with the Go core)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, pos, pending, chunks = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        if pos + 7 + length > len(data):  # still being written
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # full
            chunks.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            chunks.append(pending + chunk)
    records = []
    for c in chunks:
        r = pb.Record()
        r.ParseFromString(c)
        records.append(r)
    return records


def _items(items: Any) -> dict[str, Any]:
    """Protobuf key/value items (``key`` or ``nested_key`` path) -> a nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    return out


class OfflineRun:
    """What an offline run recorded: run metadata, config, history rows, final summary, exit, artifacts."""

    def __init__(self, sync_dir: Path, *, wait: float = 10.0) -> None:
        self.dir = sync_dir
        (wandb_file,) = sync_dir.glob("run-*.wandb")
        # wandb-core writes the log asynchronously: run.finish() can return before the exit record lands.
        deadline = time.monotonic() + wait
        while True:
            self.records = read_records(wandb_file)
            kinds = [r.WhichOneof("record_type") for r in self.records]
            if "exit" in kinds or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.run = next(r.run for r, k in zip(self.records, kinds, strict=True) if k == "run")
        self.config = {u.key: json.loads(u.value_json) for u in self.run.config.update if u.key != "_wandb"}
        self.history = [_items(r.history.item) for r, k in zip(self.records, kinds, strict=True) if k == "history"]
        self.summary: dict[str, Any] = {}
        for r, k in zip(self.records, kinds, strict=True):
            if k == "summary":
                self.summary.update(_items(r.summary.update))
        exits = [r.exit for r, k in zip(self.records, kinds, strict=True) if k == "exit"]
        self.exit_code = exits[-1].exit_code if exits else None
        self.artifacts = [r.artifact for r, k in zip(self.records, kinds, strict=True) if k == "artifact"]


def offline_runs(run_dir: Path, *, wait: float = 10.0) -> dict[str, OfflineRun]:
    runs = [OfflineRun(d, wait=wait) for d in sorted((run_dir / "wandb").glob("offline-run-*"))]
    return {r.run.display_name: r for r in runs}


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def tracking_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, TrackingWarning)]


def epoch_metrics(epoch: int) -> dict[str, float]:
    return {"train_loss": 2.0 / epoch, "train_accuracy": 0.2 * epoch, "val_loss": 2.1 / epoch,
            "val_accuracy": 0.1 * epoch, "lr": 0.1, "images_per_sec": 1000.0, "seconds": 0.5}


CONFIG = {"model.depth": 8, "model.width": 1, "regime": "bn", "lr": 0.1, "batch_size": 32, "seed": 0,
          "lr_schedule": {"type": "cosine", "warmup_epochs": 1}}


# --------------------------------------------------------------------------------------------- trial runs


def test_offline_trial_runs_written_under_run_dir_and_read_back(tmp_path, wandb_isolated):
    run_dir = tmp_path / "runs" / "sw"
    t0 = time.perf_counter()
    # Two replicates of one configuration, trained in lockstep in one process (as the orchestrator does).
    trackers = [TrialTracker.start(tracking=OFFLINE, run_dir=run_dir, sweep="sw", trial_id="t0003", seed=seed,
                                   group="abc123def456", config={**CONFIG, "seed": seed}, tags=("bn", "depth8"))
                for seed in (0, 1)]
    assert all(t.active for t in trackers)
    for epoch in (1, 2, 3):
        for t in trackers:
            t.log_epoch(epoch_metrics(epoch), epoch=epoch)
    trackers[0].finish({"test_accuracy": 0.42, "best_val_accuracy": 0.3, "epochs_run": 3}, status="completed")
    trackers[1].finish({"reason": "training loss became nan"}, status="diverged")
    trackers[1].finish({}, status="completed")  # idempotent
    trackers[1].log_epoch({"val_accuracy": 1.0}, epoch=4)  # after finish: ignored
    seconds = time.perf_counter() - t0

    runs = offline_runs(run_dir)
    assert set(runs) == {"t0003-seed0", "t0003-seed1"}
    for seed, t in enumerate(trackers):
        r = runs[f"t0003-seed{seed}"]
        assert t.sync_dir == r.dir and r.dir.parent == run_dir / "wandb"
        assert r.run.run_group == "sw/abc123def456"
        assert r.run.job_type == "trial"
        assert r.run.project == "bnsweep"
        assert set(r.run.tags) >= {"bn", "depth8"}
        assert r.config == {**CONFIG, "seed": seed}
        assert [h["_step"] for h in r.history] == [1, 2, 3]
        assert [h["epoch"] for h in r.history] == [1, 2, 3]
        assert [h["val_accuracy"] for h in r.history] == pytest.approx([0.1, 0.2, 0.3])
        assert r.history[0]["images_per_sec"] == 1000.0
    s0, s1 = runs["t0003-seed0"], runs["t0003-seed1"]
    assert s0.summary["test_accuracy"] == 0.42 and s0.summary["status"] == "completed"
    assert s0.summary["val_accuracy"] == pytest.approx(0.3)  # last logged epoch
    assert s1.summary["status"] == "diverged" and s1.summary["reason"] == "training loss became nan"
    assert s0.exit_code == 0 and s1.exit_code == 0
    # wandb's own directories were pointed into the run directory, and restored afterwards
    assert not {"WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"} & set(os.environ)
    assert tree(wandb_isolated) == []  # HOME untouched
    assert seconds < 20, seconds


def test_failed_trial_via_context_manager_exits_nonzero(tmp_path):
    with pytest.raises(ValueError, match="boom"), TrialTracker.start(
            tracking=OFFLINE, run_dir=tmp_path, sweep="sw", trial_id="t9", seed=2, group="g", config={}) as t:
        t.log_epoch(epoch_metrics(1), epoch=1)
        raise ValueError("boom")
    r = offline_runs(tmp_path)["t9-seed2"]
    assert r.exit_code == 1
    assert r.summary["status"] == "failed" and "boom" in r.summary["reason"]


def test_nothing_written_outside_run_dir_in_a_fresh_process(tmp_path):
    """A fresh interpreter (fresh wandb service) with HOME and TMPDIR in tmp: after a trial run and a
    summary run, HOME holds nothing and TMPDIR nothing left behind; everything is under run_dir/wandb."""
    home, tmp, run_dir = tmp_path / "home2", tmp_path / "tmp", tmp_path / "runs" / "sw"
    home.mkdir()
    tmp.mkdir()
    (run_dir / "plots").mkdir(parents=True)
    (run_dir / "results.csv").write_text("trial_id,val_accuracy\nt0,0.5\n")
    script = textwrap.dedent(f"""
        import warnings; from bnsweep.store.tracking import TrackingWarning
        warnings.simplefilter("error", TrackingWarning)  # a TrackingWarning fails the script
        from pathlib import Path
        from bnsweep.store.tracking import TrackingConfig, TrialTracker, log_sweep_summary
        run_dir = Path({str(run_dir)!r})
        t = TrialTracker.start(tracking=TrackingConfig(), run_dir=run_dir, sweep="sw", trial_id="t0", seed=0,
                               group="g", config={{"lr": 0.1}})
        assert t.active
        t.log_epoch({{"val_accuracy": 0.5}}, epoch=1)
        t.finish({{"test_accuracy": 0.5}}, status="completed")
        log_sweep_summary(tracking=TrackingConfig(), run_dir=run_dir, sweep="sw",
                          table_paths=[run_dir / "results.csv"], plot_paths=[], config={{"name": "sw"}})
        print("OK")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "XDG_"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), NETRC=str(home / ".netrc"), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
    assert tree(home) == []
    assert tree(tmp) == []  # wandb's service socket directory is removed at exit
    runs = offline_runs(run_dir, wait=0)  # the process has exited: its logs are complete
    assert set(runs) == {"t0-seed0", "sweep-summary"}
    assert all(r.exit_code == 0 for r in runs.values())
    assert not (tmp_path / "wandb").exists()  # nothing in the working directory either
    files = tree(run_dir)
    assert all(f.startswith(("wandb", "results.csv", "plots")) for f in files), files


def test_wandb_false_imports_nothing_and_writes_nothing(tmp_path):
    run_dir, cwd = tmp_path / "run", tmp_path / "cwd"
    cwd.mkdir()
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from bnsweep.store.tracking import TrackingConfig, TrialTracker, log_sweep_summary
        run_dir = Path({str(run_dir)!r})
        for cfg in (TrackingConfig(wandb=False), TrackingConfig(mode="disabled")):
            t = TrialTracker.start(tracking=cfg, run_dir=run_dir, sweep="s", trial_id="t", seed=0, group="g",
                                   config={{"a": 1}})
            assert not t.active
            t.log_epoch({{"x": 1.0}}, epoch=1)
            t.finish({{"y": 2}}, status="completed")
            log_sweep_summary(tracking=cfg, run_dir=run_dir, sweep="s", table_paths=[], plot_paths=[], config={{}})
        loaded = sorted(m for m in sys.modules if m == "wandb" or m.startswith("wandb."))
        assert not loaded, loaded
        print("OK")
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-W", "error", "-c", script], env=env, capture_output=True, text=True,
                         timeout=60, cwd=cwd)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
    assert not run_dir.exists()
    assert tree(cwd) == []


def test_tracking_module_imports_fast_without_wandb():
    script = "import sys, time; t=time.perf_counter(); import bnsweep.store.tracking; " \
             "print(time.perf_counter()-t, 'wandb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60)
    seconds, imported = out.stdout.split()
    assert imported == "False" and float(seconds) < 0.5, out.stdout


# --------------------------------------------------------------------------------------------- no server, no key


def test_unreachable_server_warns_once_and_tracking_becomes_noop(tmp_path, monkeypatch):
    """Simulates the W&B server's absence: online mode, a well-formed but fake key, and a base URL on a
    closed local port. The init gives up after ``init_timeout``; nothing raises; one warning."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    cfg = TrackingConfig(mode="online", init_timeout=3)
    run_dir = tmp_path / "run"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        t = TrialTracker.start(tracking=cfg, run_dir=run_dir, sweep="s", trial_id="t1", seed=0, group="g",
                               config={"lr": 0.1})
        first = time.perf_counter() - t0
        assert not t.active
        t.log_epoch(epoch_metrics(1), epoch=1)
        t.finish({"test_accuracy": 0.1}, status="completed")
        # later trials in this process do not pay the timeout again, nor warn again
        t1 = time.perf_counter()
        t2 = TrialTracker.start(tracking=cfg, run_dir=run_dir, sweep="s", trial_id="t2", seed=0, group="g",
                                config={})
        t2.log_epoch(epoch_metrics(1), epoch=1)
        t2.finish({}, status="completed")
        log_sweep_summary(tracking=cfg, run_dir=run_dir, sweep="s", table_paths=[], plot_paths=[], config={})
        later = time.perf_counter() - t1
    messages = tracking_warnings(record)
    assert len(messages) == 1, messages
    assert "127.0.0.1:9" in messages[0] and FAKE_KEY not in messages[0]
    assert tracking.tracking_failure() is not None
    assert not t2.active
    assert first < 30, first
    assert later < 1, later
    _assert_key_absent(run_dir)


def test_online_without_a_key_warns_once_without_contacting_a_server(tmp_path):
    cfg = TrackingConfig(mode="online", init_timeout=3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        t = TrialTracker.start(tracking=cfg, run_dir=tmp_path, sweep="s", trial_id="t", seed=0, group="g",
                               config={})
        t.log_epoch({"x": 1.0}, epoch=1)
        t.finish({}, status="completed")
        seconds = time.perf_counter() - t0
    messages = tracking_warnings(record)
    assert len(messages) == 1 and "no W&B API key" in messages[0], messages
    assert not t.active and seconds < 5
    assert tree(tmp_path / "wandb") == []


def test_broken_wandb_import_warns_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for trial in ("a", "b"):
            t = TrialTracker.start(tracking=TrackingConfig(), run_dir=tmp_path, sweep="s", trial_id=trial,
                                   seed=0, group="g", config={})
            t.log_epoch({"x": 1.0}, epoch=1)
            t.finish({}, status="completed")
    messages = tracking_warnings(record)
    assert len(messages) == 1 and "could not be imported" in messages[0], messages


def test_warnings_as_errors_still_never_raise(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = TrialTracker.start(tracking=OFFLINE, run_dir=tmp_path, sweep="s", trial_id="t", seed=0, group="g",
                               config={})
    assert not t.active
    assert "switched off" in caplog.text


def test_resolve_mode(tmp_path, monkeypatch, wandb_isolated):
    resolve = tracking.resolve_mode
    assert resolve(TrackingConfig()) == "offline"  # no key anywhere
    assert resolve(TrackingConfig(wandb=False, mode="online")) == "disabled"
    assert resolve(TrackingConfig(mode="disabled")) == "disabled"
    assert resolve(TrackingConfig(mode="online")) == "online"
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve(TrackingConfig()) == "online"
    assert resolve(TrackingConfig(mode="offline")) == "offline"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve(TrackingConfig()) == "offline"  # an explicit WANDB_MODE wins in auto
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    # a netrc entry for the configured host counts, one for another host does not
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    netrc = wandb_isolated / ".netrc"
    netrc.write_text(f"machine example.org\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    assert resolve(TrackingConfig()) == "offline"
    netrc.write_text(f"machine 127.0.0.1:9\n  login user\n  password {FAKE_KEY}\n")
    assert resolve(TrackingConfig()) == "online"
    with pytest.raises(ValueError, match=r"tracking\.mode"):
        TrackingConfig(mode="sometimes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- the sweep summary


def test_sweep_summary_logs_tables_plots_and_results_artifact(tmp_path, wandb_isolated):
    from PIL import Image

    run_dir = tmp_path / "runs" / "sw"
    (run_dir / "plots").mkdir(parents=True)
    (run_dir / "results.csv").write_text(
        "trial_id,seed,regime,val_accuracy,test_accuracy,status\n"
        "t0,0,bn,0.41,0.40,completed\nt0,1,bn,0.43,,diverged\nt1,0,all,0.62,0.60,completed\n")
    (run_dir / "history.csv").write_text("trial_id,seed,epoch,val_accuracy\nt0,0,1,0.3\nt0,0,2,0.41\n")
    png = run_dir / "plots" / "params_vs_accuracy.png"
    Image.new("RGB", (32, 24), (200, 30, 30)).save(png)
    svg = run_dir / "plots" / "lr_curves.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    broken = run_dir / "broken.parquet"  # unreadable: no panel, but still in the artifact
    broken.write_bytes(b"not parquet")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        log_sweep_summary(tracking=OFFLINE, run_dir=run_dir, sweep="sw",
                          table_paths=[run_dir / "results.csv", run_dir / "history.csv", broken],
                          plot_paths=[png, svg, run_dir / "plots" / "missing.png"],
                          config={"name": "sw", "trials": 2, "replicates": 2})
        seconds = time.perf_counter() - t0
    assert tracking_warnings(record) == []
    r = offline_runs(run_dir)["sweep-summary"]
    assert r.run.job_type == "summary" and r.run.run_group == "sw"
    assert r.config == {"name": "sw", "trials": 2, "replicates": 2}
    assert r.exit_code == 0
    (row,) = r.history
    assert row["tables/results"]["_type"] == "table-file" and row["tables/results"]["nrows"] == 3
    assert row["tables/history"]["nrows"] == 2
    assert row["plots/params_vs_accuracy"]["_type"] == "image-file"
    assert "plots/lr_curves" not in row and "tables/broken" not in row  # in the artifact only
    table = json.loads((r.dir / "files" / row["tables/results"]["path"]).read_text())
    assert table["columns"] == ["trial_id", "seed", "regime", "val_accuracy", "test_accuracy", "status"]
    assert table["data"][2] == ["t1", 0, "all", 0.62, 0.6, "completed"]
    assert (r.dir / "files" / row["plots/params_vs_accuracy"]["path"]).is_file()
    (artifact,) = [a for a in r.artifacts if a.type == "results"]
    assert artifact.name == "sw-results"
    contents = {c.path: c for c in artifact.manifest.contents}
    assert set(contents) == {"results.csv", "history.csv", "broken.parquet", "plots/params_vs_accuracy.png",
                             "plots/lr_curves.svg"}
    staged = Path(contents["results.csv"].local_path)  # what `wandb sync` will upload
    assert staged.is_relative_to(run_dir / "wandb") and staged.read_bytes() == (run_dir / "results.csv").read_bytes()
    assert seconds < 20, seconds
    assert tree(wandb_isolated) == []  # HOME untouched (artifact staging and cache are in run_dir/wandb)


# --------------------------------------------------------------------------------------------- secrets


def _assert_key_absent(root: Path) -> None:
    hits = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and FAKE_KEY.encode() in p.read_bytes()]
    assert hits == []


def test_planted_api_key_never_written_under_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # present, but the mode is offline
    monkeypatch.setattr(sys, "argv", [sys.argv[0], "launch", "spec.yaml", "--api-key", FAKE_KEY,
                                      f"--storage=postgresql://u:{FAKE_KEY}@db/optuna"])
    run_dir = tmp_path / "run"
    config = {**CONFIG, "wandb_api_key": FAKE_KEY, "optuna.storage": f"postgresql://u:{FAKE_KEY}@db/optuna",
              "notes": f"launched with {FAKE_KEY}", "callbacks": [{"token": FAKE_KEY}]}
    t = TrialTracker.start(tracking=OFFLINE, run_dir=run_dir, sweep="s", trial_id="t", seed=0, group="g",
                           config=config)
    t.log_epoch(epoch_metrics(1), epoch=1)
    t.finish({"reason": f"failed with key {FAKE_KEY}", "auth_token": FAKE_KEY}, status="failed")
    (run_dir / "results.csv").write_text("a,b\n1,2\n")
    log_sweep_summary(tracking=OFFLINE, run_dir=run_dir, sweep="s", table_paths=[run_dir / "results.csv"],
                      plot_paths=[], config={"storage": f"postgresql://u:{FAKE_KEY}@db/optuna", "secret": "x"})
    runs = offline_runs(run_dir)
    assert set(runs) == {"t-seed0", "sweep-summary"}
    r = runs["t-seed0"]
    assert r.config["wandb_api_key"] == "***" and r.config["optuna.storage"] == "postgresql://u:***@db/optuna"
    assert r.config["lr"] == 0.1 and r.summary["auth_token"] == "***"
    _assert_key_absent(run_dir)
    assert len(list(run_dir.rglob("*"))) > 10  # the scan did look at real files


def test_scrub_secrets():
    obj = {"WANDB_API_KEY": "k1", "api_key": "k2", "apiKey": "k3", "hf_token": "k4", "client_secret": "k5",
           "db": {"password": "k6", "url": "postgresql://user:pw@host:5432/db", "host": "h"},
           "items": [{"Token": "k7"}, "plain"], "tuple": ("a", {"passwd": "k8"}), "lr": 0.1, "empty_token": None}
    out = scrub_secrets(obj)
    assert out == {"WANDB_API_KEY": "***", "api_key": "***", "apiKey": "***", "hf_token": "***",
                   "client_secret": "***", "db": {"password": "***", "url": "postgresql://user:***@host:5432/db",
                                                  "host": "h"},
                   "items": [{"Token": "***"}, "plain"], "tuple": ("a", {"passwd": "***"}), "lr": 0.1,
                   "empty_token": None}
    assert obj["api_key"] == "k2"  # not modified in place
    assert scrub_secrets("https://example.org/path") == "https://example.org/path"


def test_scrub_secrets_masks_the_configured_key_anywhere(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert scrub_secrets({"note": f"key={FAKE_KEY}!"}) == {"note": "key=***!"}


def test_a_run_started_in_the_background_records_what_a_direct_start_does(tmp_path, wandb_isolated):
    """``start_in_background`` (what the trainable uses: wandb.init overlaps the model build) returns at once;
    logging and finishing wait for the start, and the offline runs hold every epoch and the summary."""
    run_dir = tmp_path / "runs" / "bg"
    t0 = time.perf_counter()
    trackers = [TrialTracker.start_in_background(tracking=OFFLINE, run_dir=run_dir, sweep="bg", trial_id="t1",
                                                 seed=seed, group="g", config={**CONFIG, "seed": seed})
                for seed in (0, 1)]
    returned = time.perf_counter() - t0
    for epoch in (1, 2):
        for t in trackers:
            t.log_epoch(epoch_metrics(epoch), epoch=epoch)
    for t in trackers:
        t.finish({"test_accuracy": 0.5}, status="completed")
    started = time.perf_counter() - t0
    print(f"\nbackground starts returned after {returned:.3f} s; both runs done after {started:.2f} s")
    assert returned < started / 4  # the caller did not wait for wandb.init
    runs = offline_runs(run_dir)
    assert set(runs) == {"t1-seed0", "t1-seed1"}
    for seed, t in enumerate(trackers):
        r = runs[f"t1-seed{seed}"]
        assert t.sync_dir == r.dir and r.config == {**CONFIG, "seed": seed}
        assert [h["epoch"] for h in r.history] == [1, 2] and r.summary["test_accuracy"] == 0.5
