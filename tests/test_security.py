"""Security: where the Ray dashboard listens (and that Ray's token authentication stays on), safe YAML,
no unpickling of unverified data, and no secret (W&B key, cloud credentials, database password, Ray's
token) in the run directory, the driver's output or Ray's own logs.

One real sweep runs the CLI in a subprocess with planted secrets, W&B on (offline) and the dashboard
on: while it runs, its listening sockets and an unauthenticated dashboard request are checked; after it,
every byte it wrote is scanned.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bnsweep.cli import main

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {
    "WANDB_API_KEY": "bnsweepfakewandbkey0123456789abcdef012345",
    "AWS_SECRET_ACCESS_KEY": "bnsweepFakeAwsSecret/0123456789abcdefXYZ",
    "BNSWEEP_TEST_SECRET_TOKEN": "bnsweep-fake-planted-token-9f8e7d6c5b4a",
}
TINY = """
name: {name}
method: random
trials: 2
replicates: 1
resources: {{cpu: 2}}
tracking: {{wandb: {wandb}, mode: offline}}
fixed:
  model: {{depth: 8}}
  epochs: 2
  batch_size: 32
  steps_per_epoch: 2
  data: {{source: synthetic, synthetic_size: 64, val_size: 32, test_size: 32}}
parameters:
  lr: {{distribution: log_uniform, min: 0.01, max: 0.3}}
"""


def _spec(tmp_path: Path, name: str = "sec", wandb: bool = False) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(TINY.format(name=name, wandb=str(wandb).lower()))
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    """The addresses a TCP port listens on (from /proc/net/tcp{,6})."""
    out = set()
    for f, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(f).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state != "0A" or int(p, 16) != port:
                continue
            if v6:
                out.add("::" if set(addr) == {"0"} else ("::1" if addr.endswith("01000000") else addr))
            else:
                out.add(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return out


# ---------------------------------------------------------------- the dashboard


class _FakeRay:
    def __init__(self):
        self.kwargs = None

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.kwargs = kwargs

        class Ctx:
            dashboard_url = f"{kwargs.get('dashboard_host')}:{kwargs.get('dashboard_port')}"
        return Ctx()

    def shutdown(self):
        pass


@pytest.mark.parametrize("host, warns", [(None, False), ("127.0.0.1", False), ("localhost", False),
                                         ("0.0.0.0", True), ("192.0.2.7", True), ("::", True)])
def test_dashboard_host_localhost_unless_asked_then_shadowray_warning_checked_on_a_fake_ray_init(
        tmp_path, capsys, monkeypatch, host, warns):
    """The arguments ``launch`` gives ``ray.init`` for each host (a fake ``ray.init`` records them: binding a
    real dashboard to 0.0.0.0 would expose this machine); the real dashboard is checked on 127.0.0.1 in
    test_a_real_sweep_keeps_secrets_out_of_everything_it_writes_and_its_dashboard_local."""
    import ray

    from bnsweep import cli
    from bnsweep.spec.sweep_spec import load_spec
    from bnsweep.sweep import driver as search

    monkeypatch.setenv("WANDB_API_KEY", SECRETS["WANDB_API_KEY"])
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    argv = ["launch", str(_spec(tmp_path)), *(["--dashboard-host", host] if host else [])]
    args = cli.build_parser().parse_args(argv)
    options = cli._options(args)
    err = capsys.readouterr().err
    assert options.dashboard_host == (host or "127.0.0.1") and options.dashboard
    assert ("ShadowRay" in err) == warns and ("token authentication stays on" in err) == warns, err
    fake = _FakeRay()
    monkeypatch.setattr(ray, "is_initialized", fake.is_initialized)
    monkeypatch.setattr(ray, "init", fake.init)
    search.start_ray(tmp_path / "run", load_spec(tmp_path / "sec.yaml"), options, 0)
    assert fake.kwargs["dashboard_host"] == (host or "127.0.0.1") and fake.kwargs["include_dashboard"]
    env = fake.kwargs["runtime_env"]["env_vars"]
    assert "WANDB_API_KEY" not in env and SECRETS["WANDB_API_KEY"] not in json.dumps(fake.kwargs)
    assert not any(k.startswith("RAY_AUTH") for k in env) and "RAY_AUTH_MODE" not in os.environ  # auth untouched
    assert not any("auth" in k.lower() for k in fake.kwargs)


def test_bad_dashboard_hosts_and_ports_are_refused(tmp_path, capsys):
    spec = str(_spec(tmp_path))
    for extra in (["--dashboard-host", ""], ["--dashboard-host", "a b"], ["--dashboard-port", "0"],
                  ["--dashboard-port", "65536"]):
        assert main(["launch", spec, "--run-dir", str(tmp_path / "r"), *extra]) == 2
        assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- YAML, pickles


@pytest.mark.parametrize("payload", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/name:os.system",
    "!!python/object:builtins.object {{}}",
    "!!python/module:os",
])
def test_yaml_python_tags_are_refused_at_the_command_line_without_running_anything(tmp_path, capsys, payload):
    marker = tmp_path / "PWNED"
    payload = payload.format(marker=marker)
    spec = tmp_path / "evil.yaml"
    spec.write_text(f"name: evil\nmethod: random\ntrials: {payload}\n")
    for argv in (["plan", str(spec), "--no-probe"], ["launch", str(spec), "--run-dir", str(tmp_path / "run")],
                 ["plan", str(_spec(tmp_path)), "--no-probe", "--set", f"epochs={payload}"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and ("YAML" in err or "tag" in err), err
    assert not marker.exists() and not (tmp_path / "run").exists()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_data_pickles_are_not_opened_before_their_checksum_matches(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (cifar / name).write_bytes(pickle.dumps({"data": _Evil(marker)}))
    npz = tmp_path / "evil.npz"
    import numpy as np

    np.savez(npz, x_train=np.array([_Evil(marker)], dtype=object), y_train=np.zeros(1, np.int64))
    for data in (cifar, npz):
        assert main(["launch", str(_spec(tmp_path)), "--data", str(data), "--run-dir", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert "checksum mismatch" in err or "not a readable npz" in err, err
    assert not marker.exists() and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- secrets


def test_a_database_password_never_reaches_the_output_or_the_run_directory(tmp_path, capsys):
    from bnsweep.spec.sweep_spec import load_spec
    from bnsweep.sweep.driver import LaunchOptions, _write_run_files

    url = "postgresql://user:s3cret-pw@127.0.0.1:9/optuna"
    run_dir = tmp_path / "run"
    assert main(["launch", str(_spec(tmp_path)), "--storage", url, "--run-dir", str(run_dir)]) == 2
    out, err = capsys.readouterr()
    assert "s3cret-pw" not in out + err and "postgresql://user:***@127.0.0.1:9/optuna" in err, err
    assert not run_dir.exists()
    # where it is recorded (a storage that works), the password is not
    _write_run_files(run_dir, load_spec(tmp_path / "sec.yaml"), {}, LaunchOptions(run_dir=run_dir, storage=url))
    assert json.loads((run_dir / "sweep.json").read_text())["storage"] == "postgresql://user:***@127.0.0.1:9/optuna"
    assert not any(b"s3cret-pw" in p.read_bytes() for p in run_dir.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_real_sweep_keeps_secrets_out_of_everything_it_writes_and_its_dashboard_local(tmp_path):
    spec = _spec(tmp_path, name="secrets", wandb=True)
    run_dir = tmp_path / "run"
    ray_tmp = Path(tempfile.mkdtemp(prefix="bns", dir="/tmp"))  # Ray's session and logs, scanned too
    port = _free_port()
    env = {**os.environ, **SECRETS, "WANDB_MODE": "offline", "KERAS_BACKEND": "tensorflow", "RAY_ADDRESS": "",
           "RAY_TMPDIR": str(ray_tmp), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("RAY_AUTH_MODE", None)
    cmd = [sys.executable, "-m", "bnsweep", "launch", str(spec), "--run-dir", str(run_dir), "--quiet", "--num-cpus",
           "2", "--dashboard-port", str(port)]
    out_f, err_f = tmp_path / "driver.out", tmp_path / "driver.err"
    try:
        with open(out_f, "w") as out, open(err_f, "w") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=tmp_path)
        listening, status = set(), None
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            if not listening:
                listening = _listening(port)
            if listening and status is None:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs/", timeout=5)
                    status = 200
                except urllib.error.HTTPError as e:
                    status = e.code
                except (urllib.error.URLError, OSError):
                    pass  # not serving yet
            time.sleep(0.2)
        rc = proc.wait(timeout=max(1, deadline - time.time()))
        assert rc == 0, err_f.read_text()[-3000:]
        assert listening == {"127.0.0.1"}, listening  # the dashboard: loopback only
        assert status in (401, 403), status  # and Ray's token authentication is on: no token, no answer
        assert (run_dir / "wandb").is_dir() and list((run_dir / "wandb").glob("offline-run-*"))  # W&B did run
        token_file = Path.home() / ".ray" / "auth_token"
        needles = {k: v.encode() for k, v in SECRETS.items()}
        if token_file.is_file() and token_file.read_text().strip():
            needles["Ray auth token"] = token_file.read_text().strip().encode()
        scanned, leaks = 0, []
        for root in (run_dir, ray_tmp):
            for p in root.rglob("*"):
                if p.is_file() and not p.is_symlink() and not p.name.endswith(".sock"):
                    try:
                        blob = p.read_bytes()
                    except OSError:
                        continue
                    scanned += 1
                    leaks += [f"{name} in {p}" for name, s in needles.items() if s in blob]
        for f in (out_f, err_f):
            blob = f.read_bytes()
            leaks += [f"{name} in the driver's {f.stem}" for name, s in needles.items() if s in blob]
        assert scanned > 50
        assert not leaks, leaks
        print(f"\nsecrets: {len(needles)} planted secrets, {scanned} files scanned (run directory + Ray's session)"
              f" + stdout/stderr: no leak; dashboard on {listening} answered {status} without a token")
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
