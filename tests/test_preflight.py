"""Joining a cluster is checked before anything starts (bnsweep.sweep.cluster, raystart's token check).

On a real multi-node Ray cluster (tests/cluster.py: a 0-CPU head and two 2-CPU worker nodes without a
shared disk, in a private network namespace, token auth, moto S3), started once for this module:

* ``launch --address`` with a GPU ask on the CPU-only cluster, or a CPU ask larger than any node, is
  refused before launch (exit 2, one line, no run directory);
* the per-node packing is printed (2 one-CPU trials on each 2-CPU worker, none on the head);
* a local run directory the workers cannot see is refused, naming them;
* a driver without the token, or with a wrong one, gets a one-line explanation, fast;
* the probes: a shared directory passes and leaves nothing behind, a data file only on the driver's disk is
  named, an ``s3://`` run directory passes, and nodes whose credentials the store refuses are named;
* with a worker advertising fake GPUs (a mock of hardware that cannot exist here) added, a real sweep
  with ``--gpus-per-trial 1`` runs every trial on that node and none on the CPU-only ones.

Without a cluster: the resource refusals (CPU, GPU, TPU, memory, custom), the per-node packing, the data
paths a sweep opens, where the token is found; and on this GPU-less machine ``plan`` and ``launch`` refuse
``--gpus-per-trial 1`` in one line, fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cluster import Cluster, require_namespaces, run_scenario

from bnsweep.spec.sweep_spec import Resources, SweepSpec, parse_spec_text
from bnsweep.sweep.cluster import ClusterError, Node, check_resources, data_paths, format_packing, local_node
from bnsweep.sweep.packing import TRIAL_MEMORY_BYTES, pack_nodes
from bnsweep.sweep.raystart import find_token, prepare_token_auth

ROOT = Path(__file__).resolve().parents[1]

SPEC = """\
name: pf
method: random
trials: 2
replicates: 1
seed: 0
retries: 0
metric: {name: val_accuracy, goal: maximize}
scheduler: {type: none}
tracking: {wandb: false}
fixed:
  model: {depth: 8, width: 1}
  epochs: 1
  batch_size: 32
  regime: bn
  data: {source: synthetic, synthetic_size: 64, val_size: 16, test_size: 16}
parameters:
  lr: {distribution: log_uniform, min: 0.01, max: 1.0}
"""


# ------------------------------------------------------------------------------------ scenario
# (runs inside the namespace; returns JSON)

def _wait_all(cmds: dict, t0: float, timeout: float) -> dict:
    """Wait for every command; each one's exit status, output and seconds (since t0) when it ended."""
    done: dict = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(cmds) and time.monotonic() < deadline:
        for name, cmd in cmds.items():
            if name not in done and cmd.rc is not None:
                done[name] = {"rc": cmd.rc, "s": round(time.monotonic() - t0, 2), "output": cmd.output[-6000:]}
        time.sleep(0.1)
    for name, cmd in cmds.items():
        if name not in done:
            cmd.kill()
            done[name] = {"rc": None, "s": None, "output": cmd.output[-6000:]}
    return done


def _moto_auth(c: Cluster, on: bool) -> None:
    """moto checks signatures from now on (only the IAM keys it issued are valid), or no longer."""
    req = urllib.request.Request(f"{c.s3_endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf",
                                 method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req, timeout=10).read()


def preflight_cluster(ctx) -> dict:
    out: dict = {}
    with Cluster(ctx.base, workers=2, worker_cpus=2, memory_mb=4096, s3=True) as c:
        out["start_s"] = c.timings["start_s"]
        spec = c.shared / "pf.yaml"
        spec.write_text(SPEC)
        runs = c.run_parent  # the driver's disk; an empty private tmpfs on every worker
        bn = [c.python, "-m", "bnsweep", "launch", str(spec), "--address", c.address, "--no-dashboard", "--quiet"]

        # ---- refusals, all at once: GPU / CPU asks, a local run dir, no token, a wrong token
        t0 = time.monotonic()
        cmds = {"gpu": c.start([*bn, "--gpus-per-trial", "1", "--run-dir", str(runs / "gpu")], name="gpu"),
                "cpu4": c.start([*bn, "--cpus-per-trial", "4", "--run-dir", str(runs / "cpu4")], name="cpu4"),
                "local": c.start([*bn, "--trials", "8", "--run-dir", str(runs / "local")], name="local"),
                "no_token": c.start([*bn, "--run-dir", str(runs / "nt")], name="no-token", token=False),
                "wrong_token": c.start([*bn, "--run-dir", str(runs / "wt")], name="wrong-token",
                                       env={"RAY_AUTH_TOKEN": "0" * 64})}
        out["refusals"] = _wait_all(cmds, t0, timeout=180)
        out["runs_left"] = sorted(os.listdir(runs))

        # ---- heterogeneous: add a worker advertising 2 fake GPUs; GPU trials must all run there (the sweep runs
        # while this process probes the CPU-only workers)
        gpu_node = c.add_worker(2, gpus=2)
        t_het = time.monotonic()
        het = c.start([*bn, "--gpus-per-trial", "1", "--run-dir", str(c.shared / "runs" / "het")], name="het")

        # ---- the probes, from this process as a driver
        from bnsweep.sweep.cluster import check_paths, cluster_nodes

        c.connect()
        workers = [n for n in cluster_nodes() if n.name in ("worker-1", "worker-2")]
        shared_run = c.shared / "runs" / "ok"
        shared_run.mkdir(parents=True)
        for label in ("cold", "warm"):  # cold: Ray starts a worker process on each node first
            t = time.monotonic()
            check_paths(workers, run_dir=shared_run)
            out[f"probe_{label}_s"] = round(time.monotonic() - t, 3)
        out["shared_left"] = sorted(os.listdir(shared_run))
        npz = runs / "data.npz"
        npz.write_bytes(b"not really")
        try:
            check_paths(workers, run_dir=None, data=[str(npz)])
            out["data_msg"] = None
        except ClusterError as e:
            out["data_msg"] = str(e)
        t = time.monotonic()
        check_paths(workers, run_dir="s3://bnsweep/pf/run")
        out["probe_s3_s"] = round(time.monotonic() - t, 3)
        fs = c.pyarrow_s3()
        from pyarrow import fs as pafs

        out["s3_left"] = [i.path for i in fs.get_file_info(pafs.FileSelector("bnsweep/pf", recursive=True,
                                                                              allow_not_found=True))]
        # the store refuses the workers' credentials (theirs: moto's "testing" keys, which it did not issue),
        # while this driver holds a key it issued
        import boto3

        iam = boto3.client("iam", endpoint_url=c.s3_endpoint, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iam.create_user(UserName="driver")
        iam.put_user_policy(UserName="driver", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="driver")["AccessKey"]
        saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
        os.environ.update(AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
        os.environ.pop("AWS_SESSION_TOKEN", None)
        _moto_auth(c, True)
        try:
            check_paths(workers, run_dir="s3://bnsweep/pf/creds")
            out["creds_msg"] = None
        except ClusterError as e:
            out["creds_msg"] = str(e)
        finally:
            _moto_auth(c, False)
            for k, v in saved.items():
                if v is not None:
                    os.environ[k] = v

        het.wait(300)
        out["het"] = {"rc": het.rc, "s": round(time.monotonic() - t_het, 2), "output": het.output[-6000:]}
        from ray._private.state import actors

        names = {n.node_id: n.name for n in c.nodes}
        here = __import__("ray").get_runtime_context().get_job_id()
        out["trial_actors"] = [{"class": a.get("ActorClassName"), "node": names.get(a["Address"]["NodeID"]),
                                "state": a.get("State")}
                               for a in actors().values() if a.get("JobID") != here]
        out["gpu_node"] = gpu_node.name
    out["leftovers"] = c.leftovers
    return out


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    require_namespaces()
    t = time.monotonic()
    res = run_scenario(preflight_cluster, tmp_path_factory.mktemp("preflight"), timeout=600)
    v = res.value
    print(f"preflight cluster: {time.monotonic() - t:.1f} s in all, cluster start {v['start_s']} s; refusals "
          f"{ {k: r['s'] for k, r in v['refusals'].items()} } s; probes cold {v['probe_cold_s']} s, warm "
          f"{v['probe_warm_s']} s, s3 {v['probe_s3_s']} s; heterogeneous sweep {v['het']['s']} s")
    assert v["leftovers"] == [] and res.leftovers == []
    return v


def _one_line(err: dict) -> str:
    """The refusal: exactly one 'bnsweep launch:' line and no traceback in the driver's output."""
    out = err["output"]
    assert err["rc"] == 2, out
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.startswith("bnsweep launch:")]
    assert len(lines) == 1, out
    return lines[0]


# ------------------------------------------------------------------------------------ on the cluster

def test_cluster_gpu_ask_on_a_cpu_only_cluster_is_refused_before_launch(cluster_run):
    r = cluster_run["refusals"]
    line = _one_line(r["gpu"])
    assert "resources.gpu / --gpus-per-trial 1: a trial asks for 1 GPU, but no node of the cluster at" in line
    assert "Ray would wait for one forever" in line and "ray start --num-gpus" in line
    assert "(head (127.0.0.1): 0 CPU, 4.3 GB; worker-1 (127.0.0.1), worker-2 (127.0.0.1): 2 CPU, 4.3 GB each)" in line
    line = _one_line(r["cpu4"])
    assert "resources.cpu / --cpus-per-trial 4: a trial asks for 4 CPUs, but the largest node" in line
    assert "has 2 (head (127.0.0.1): 0 CPU, 4.3 GB; worker-1 (127.0.0.1), worker-2 (127.0.0.1): 2 CPU" in line
    assert "Allowed there: at most 2" in line
    assert cluster_run["runs_left"] == []  # no run directory was made (data.npz comes later)
    assert r["gpu"]["s"] < 60


def test_cluster_per_node_packing_is_printed(cluster_run):
    out = cluster_run["refusals"]["local"]["output"]
    assert ("3 nodes: a trial takes 1 CPU, 1.5 GB → head (127.0.0.1): none (0 CPU, 4.3 GB); worker-1 (127.0.0.1), "
            "worker-2 (127.0.0.1): 2 trials each (2 CPU, 4.3 GB) = 4 trials at once") in out
    het = cluster_run["het"]["output"]
    assert ("a trial takes 1 CPU, 1 GPU, 1.5 GB → head (127.0.0.1): none (0 CPU, 4.3 GB); worker-1 (127.0.0.1), "
            "worker-2 (127.0.0.1): none (2 CPU, 4.3 GB); worker-3 (127.0.0.1): 2 trials (2 CPU, 2 GPU, 4.3 GB) = "
            "2 trials at once") in het, het


def test_cluster_local_run_dir_without_shared_disk_is_refused_naming_the_nodes(cluster_run):
    line = _one_line(cluster_run["refusals"]["local"])
    assert "runs/local: 2 of 2 node(s) that would run trials cannot use it (worker-1 (127.0.0.1), " \
           "worker-2 (127.0.0.1): not there" in line
    assert "share no disk" in line and "s3://BUCKET/PATH" in line and "gs://" in line and "NFS" in line


def test_cluster_driver_without_the_token_or_with_a_wrong_one_is_told_in_one_line(cluster_run):
    r = cluster_run["refusals"]
    line = _one_line(r["no_token"])
    assert "refused this driver: it uses token authentication and no token was found here" in line
    assert "ray get-auth-token" in line and "~/.ray/auth_token" in line and "RAY_AUTH_TOKEN" in line
    line = _one_line(r["wrong_token"])
    assert "refused the token from RAY_AUTH_TOKEN: it is not that cluster's token" in line
    # no 20-second retry loop, and none of Ray's C++ log lines (gcs_client.cc) on the terminal
    for k in ("no_token", "wrong_token"):
        assert "gcs_client.cc" not in r[k]["output"] and "Failed to connect" not in r[k]["output"]
        assert r[k]["s"] < 60


def test_cluster_probes_paths_on_every_node(cluster_run):
    v = cluster_run
    assert v["shared_left"] == []  # the probe files are removed again
    assert v["data_msg"].startswith("data path ") and "data.npz (missing) on worker-1 (127.0.0.1), worker-2" \
        in v["data_msg"]
    assert v["s3_left"] == []
    assert v["creds_msg"].startswith("run directory s3://bnsweep/pf/creds: 2 of 2 node(s)")
    assert "cannot read it (OSError: " in v["creds_msg"] and "AWS Error" in v["creds_msg"]
    assert "give every node credentials for it" in v["creds_msg"]
    assert v["probe_warm_s"] < 2 and v["probe_s3_s"] < 2


def test_fake_gpus_gpu_trials_run_only_on_the_gpu_node(cluster_run):
    """Mock: worker-3 advertises 2 GPUs it does not have (Ray trusts --num-gpus); the placement is real."""
    v = cluster_run
    assert v["het"]["rc"] == 0, v["het"]["output"]
    trials = [a for a in v["trial_actors"] if a["class"] and "ImplicitFunc" in a["class"]]
    assert len(trials) >= 1, v["trial_actors"]
    assert {a["node"] for a in trials} == {v["gpu_node"]}
    launched = next(json.loads(ln) for ln in v["het"]["output"].splitlines() if ln.startswith('{"event": "launched"'))
    assert (launched["concurrent"], launched["cpus_per_trial"]) == (2, 1)  # what the per-node packing chose


# ------------------------------------------------------------------------------------ without a cluster

NODES = [Node("h", "head", is_head=True, resources={"memory": 8e9}),
         Node("w1", "w1", resources={"CPU": 2, "memory": 8e9}),
         Node("w2", "w2", resources={"CPU": 2, "memory": 8e9}),
         Node("w3", "w3", resources={"CPU": 2, "memory": 8e9})]


def _refusal(spec: SweepSpec, nodes=NODES, **kw) -> str:
    with pytest.raises(ClusterError) as e:
        check_resources(spec, nodes, configurations=8, where="the cluster at h:6379", **kw)
    return str(e.value)


def test_packing_is_per_node_not_the_clusters_total():
    p = check_resources(SweepSpec(name="s"), NODES, configurations=10)
    assert (p.concurrent, p.cpus_per_trial, p.fits) == (6, 1, 6)
    assert p.per_node == (("head", 0), ("w1", 2), ("w2", 2), ("w3", 2))
    # 3 configurations: each node's CPUs shared out (2 threads each), not 6 CPUs given to one trial
    assert tuple(check_resources(SweepSpec(name="s"), NODES, configurations=3)) == (3, 2)
    assert "6 CPUs" in _refusal(SweepSpec(name="s", resources=Resources(cpu=6)))  # 6 CPUs in all, none has 6


def test_heterogeneous_packing_puts_gpu_and_tpu_trials_only_where_they_fit():
    nodes = [Node("g", "gpu", resources={"CPU": 8, "GPU": 2, "memory": 60e9}),
             Node("t", "tpu", resources={"CPU": 96, "TPU": 4, "memory": 300e9}),
             Node("c", "cpu", resources={"CPU": 16, "memory": 60e9})]
    gpu = check_resources(SweepSpec(name="s", resources=Resources(gpu=0.5)), nodes, configurations=20)
    assert gpu.per_node == (("gpu", 4), ("tpu", 0), ("cpu", 0)) and gpu.cpus_per_trial == 2
    tpu = check_resources(SweepSpec(name="s", resources=Resources(cpu=8, tpu=4)), nodes, configurations=2)
    assert tpu.per_node == (("gpu", 0), ("tpu", 1), ("cpu", 0)) and tpu.needs["TPU"] == 4
    cpu = check_resources(SweepSpec(name="s", resources=Resources(cpu=1)), nodes, configurations=200)
    assert cpu.per_node == (("gpu", 8), ("tpu", 96), ("cpu", 16))  # CPU trials may use every node's CPUs
    print(format_packing(gpu, nodes, where="h:6379"))


def test_every_impossible_ask_is_refused_naming_the_key_what_the_nodes_have_and_what_to_do():
    msg = _refusal(SweepSpec(name="s", resources=Resources(gpu=1)))
    assert msg.startswith("resources.gpu / --gpus-per-trial 1: a trial asks for 1 GPU, but no node of the cluster "
                          "at h:6379 has a GPU (head: 0 CPU, 8.0 GB; w1, w2, w3: 2 CPU, 8.0 GB each)")
    assert "Allowed there: 0 (CPU trials), or add GPU nodes" in msg
    one_gpu = [*NODES, Node("g", "g1", resources={"CPU": 4, "GPU": 1, "memory": 8e9})]
    msg = _refusal(SweepSpec(name="s", resources=Resources(gpu=2)), one_gpu)
    assert "a trial asks for 2 GPUs, but the largest node of the cluster at h:6379 has 1 (head: 0 CPU" in msg
    assert "; g1: 4 CPU, 1 GPU, 8.0 GB); Ray would wait forever. Allowed there: at most 1, or add larger nodes" in msg
    msg = _refusal(SweepSpec(name="s", resources=Resources(tpu=4)))
    assert msg.startswith("resources.tpu 4: a trial asks for 4 TPU chips, but no node") and "TPU host" in msg
    msg = _refusal(SweepSpec(name="s", resources=Resources(cpu=4)))
    assert msg.startswith("resources.cpu / --cpus-per-trial 4: a trial asks for 4 CPUs, but the largest node")
    small = [Node("s", "small", resources={"CPU": 4, "memory": 1e9})]
    msg = _refusal(SweepSpec(name="s"), small)
    assert msg.startswith(f"memory: a trial needs about {TRIAL_MEMORY_BYTES / 1e9:.1f} GB") and "1.0 GB" in msg
    msg = _refusal(SweepSpec(name="s"), custom={"accelerator_type:H100": 0.001})
    assert msg.startswith("resource 'accelerator_type:H100': a trial asks for 0.001 of 'accelerator_type:H100', "
                          "but no node of the cluster at h:6379 has 'accelerator_type:H100'")
    both = [Node("a", "a", resources={"CPU": 8, "memory": 8e9}), Node("b", "b", resources={"CPU": 1, "GPU": 1,
                                                                                              "memory": 8e9})]
    msg = _refusal(SweepSpec(name="s", resources=Resources(cpu=4, gpu=1)), both)
    assert msg.startswith("resources: a trial asks for 4 CPUs + 1 GPU + 1.5 GB on one node, but no node of the "
                          "cluster at h:6379 has all of it at once")


def test_zero_cpu_head_alone_is_refused():
    msg = _refusal(SweepSpec(name="s"), [Node("h", "head", is_head=True, resources={"memory": 8e9})])
    assert msg.startswith("CPU: ") and "start worker nodes with CPUs" in msg


def test_pack_nodes_keeps_what_the_spec_sets():
    nodes = [("a", {"CPU": 2, "memory": 8e9}), ("b", {"CPU": 2, "memory": 8e9})]
    assert tuple(pack_nodes(nodes, configurations=8, max_concurrent=1)) == (1, 2)
    assert tuple(pack_nodes(nodes, configurations=8, cpu=0.5)) == (8, 0.5)
    p = pack_nodes(nodes, configurations=8, max_concurrent=6, cpu=1)  # more than fits: Ray queues the rest
    assert (p.concurrent, p.fits) == (6, 4)


def test_data_paths_are_the_ones_trials_open_themselves(monkeypatch):
    fixed = parse_spec_text("name: d\nmethod: grid\nfixed: {data: {source: npz, path: /d/a.npz}}\n"
                            "parameters: {lr: {values: [0.1, 0.2]}}")
    assert data_paths(fixed) == []  # loaded once by the driver, shipped through Ray's object store
    searched = parse_spec_text(
        "name: d\nmethod: grid\nfixed: {data: {source: npz, path: /d/a.npz, test_path: /d/t.npz}}\n"
        "parameters: {data.train_size: {values: [6000, 7000]}}")
    assert data_paths(searched) == ["/d/a.npz", "/d/t.npz"]
    one_of = parse_spec_text("name: d\nmethod: grid\nparameters:\n  data:\n    one_of:\n"
                             "      npz: {path: /d/b.npz}\n      dir: {path: {values: [/d/c, /d/e]}}\n")
    assert data_paths(one_of) == ["/d/b.npz", "/d/c", "/d/e"]
    monkeypatch.setenv("BNSWEEP_DATA", "/d/cifar-10-batches-py")
    cifar = parse_spec_text("name: d\nmethod: grid\nparameters: {data.train_size: {values: [6000, 7000]}}")
    assert data_paths(cifar) == ["/d/cifar-10-batches-py"]


def test_the_token_is_found_where_ray_looks_and_turns_token_mode_on(tmp_path, monkeypatch):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("fromfile\n")
    (tmp_path / "tok").write_text("frompath")
    assert find_token({"HOME": str(tmp_path)}) == ("fromfile", str(tmp_path / ".ray" / "auth_token"))
    assert find_token({"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")})[0] == "frompath"
    assert find_token({"HOME": str(tmp_path), "RAY_AUTH_TOKEN": "fromenv"}) == ("fromenv", "RAY_AUTH_TOKEN")
    monkeypatch.setenv("HOME", str(tmp_path / "nowhere"))
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(k, raising=False)
    assert prepare_token_auth() is None and "RAY_AUTH_MODE" not in os.environ
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert prepare_token_auth() == "RAY_AUTH_TOKEN" and os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user's explicit choice is kept
    assert prepare_token_auth() == "RAY_AUTH_TOKEN" and os.environ["RAY_AUTH_MODE"] == "disabled"


def _cli(args: list[str], cwd: Path) -> tuple[int, str, str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "bnsweep", *args], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=120)
    return r.returncode, r.stdout, r.stderr, time.monotonic() - t


def test_gpu_ask_on_this_gpu_less_machine_is_refused_by_plan_and_launch(tmp_path):
    if local_node().resources.get("GPU"):
        pytest.skip("this machine has a GPU")
    spec = tmp_path / "pf.yaml"
    spec.write_text(SPEC)
    for verb in (["plan", str(spec), "--no-probe"], ["launch", str(spec), "--run-dir", str(tmp_path / "run")]):
        rc, out, err, seconds = _cli([*verb, "--gpus-per-trial", "1"], tmp_path)
        assert rc == 2 and out == "", (out, err)
        err = "".join(x for x in err.splitlines(keepends=True) if not x.startswith("warning: "))  # the spec's own
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"bnsweep {verb[0]}: resources.gpu / --gpus-per-trial 1: a trial asks for 1 GPU, but "
                              "this machine has no GPU Ray can use")
        assert seconds < 30, seconds  # no Ray is started (a launch that ran would wait forever)
    assert not (tmp_path / "run").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["pf.yaml"]
    rc, out, err, _ = _cli(["plan", str(spec), "--no-probe", "--gpus-per-trial", "1", "--for-cluster"], tmp_path)
    assert rc == 0 and all(x.startswith("warning: ") for x in err.splitlines()) and "launch here would run" not in out


def test_nodes_an_autoscaler_reports_it_can_add_count_and_are_named():
    from ray.core.generated import autoscaler_pb2

    from bnsweep.sweep.cluster import autoscaler_groups, pack_cluster

    cfg = autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(name="gpu", resources={"CPU": 8, "GPU": 2}, max_count=3),
        autoscaler_pb2.NodeGroupConfig(name="off", resources={"CPU": 8, "GPU": 8}, max_count=0)])
    groups = autoscaler_groups(cfg)
    assert [(g.name, most) for g, most in groups] == [("gpu", 3)]  # a group that may start no node is left out
    spec = SweepSpec(name="s", resources=Resources(cpu=2, gpu=1))
    packing, now, line = pack_cluster(spec, NODES, groups, configurations=20, address="h:6379")
    assert now.fits == 0 and packing.concurrent == 6  # 2 per GPU node, 3 nodes: Ray's autoscaler starts them
    assert "the autoscaler can add: gpu (up to 3 nodes): 2 trials each; 6 trials at once in all" in line
    with pytest.raises(ClusterError, match="a trial asks for 4 GPUs, but the largest node"):
        pack_cluster(SweepSpec(name="s", resources=Resources(gpu=4)), NODES, groups, configurations=2)
