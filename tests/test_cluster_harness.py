"""The namespaced multi-node cluster harness (tests/cluster.py) does what it promises.

One real cluster (head with 0 CPUs + 2 worker nodes + moto S3) in a private network namespace: the nodes
join with the token and nodes or drivers without it are refused; a task pinned to each worker node sees
an empty run-dir parent while the driver sees its files; tasks on the workers write S3 objects the driver
reads back; every listening port is one of ours; a raylet killed by PID turns its node DEAD; teardown leaves
no process (checked by the cluster, by PID, and from outside, by network namespace).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cluster import Cluster, ScenarioError, interfaces, require_namespaces, run_scenario


def _listening_ports() -> set[int]:
    """TCP ports listening in this process's network namespace (/proc/self/net is per namespace)."""
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# ------------------------------------------------------------------------------------ scenarios
# (run inside the namespace by run_scenario; they return JSON)

def two_workers(ctx) -> dict:
    out: dict = {"interfaces": interfaces()}
    # Fast failure detection so the test stays short: the GCS pings each raylet every 0.5 s and declares
    # it dead after 3 misses (Ray's defaults, 3 s x 5, take ~13 s here).
    fast_hc = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
               "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "0"}
    with Cluster(ctx.base, workers=2, worker_cpus=1, s3=True, head_env=fast_hc) as c:
        ctx.log(f"cluster up: {c.timings}")
        out["start_s"] = c.timings["start_s"]
        out["port_base"] = c.port_base
        out["ports"] = sorted(_listening_ports())
        out["gcs_nodes"] = {n["name"]: {"state": n["state"], "cpu": n["resources"].get("CPU", 0)}
                            for n in c.nodes_info()}

        # the driver's run directory, on the head's (= the driver's) disk
        run_dir = c.run_parent / "sweep-1"
        run_dir.mkdir()
        (run_dir / "sweep.json").write_text("{}")

        # refused joins, both at once (each retries the GCS for RAY_gcs_server_port_wait_time_s)
        quick = {"RAY_gcs_server_port_wait_time_s": "3"}
        no_token_driver = c.start([c.python, "-c", f"import ray; ray.init(address='{c.address}'); print('JOINED')"],
                                  name="no-token-driver", token=False, env=quick)
        intruder = c.add_worker(1, wait=False, token=False, env=quick)   # worker-3

        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        c.connect()

        @ray.remote(num_cpus=0)
        def look(run_parent: str, key: str) -> dict:
            import pyarrow.fs as pafs
            fs, _ = pafs.FileSystem.from_uri("s3://bnsweep")  # endpoint from AWS_ENDPOINT_URL_S3
            path = f"bnsweep/harness/{key}.txt"
            with fs.open_output_stream(path) as f:
                f.write(key.encode())
            return {"node_id": ray.get_runtime_context().get_node_id(), "listdir": sorted(os.listdir(run_parent)),
                    "home": sorted(os.listdir(os.environ["HOME"])), "mnt": os.readlink("/proc/self/ns/mnt"),
                    "env": {k: os.environ.get(k) for k in ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL", "WANDB_MODE")},
                    "s3_key": path}

        by_name = {n["NodeName"]: n for n in ray.nodes() if n["Alive"]}
        probes = {name: look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                  .remote(str(c.run_parent), name) for name, n in by_name.items()}
        out["probes"] = {name: ray.get(ref, timeout=60) for name, ref in probes.items()}
        out["node_ids"] = {name: n["NodeID"] for name, n in by_name.items()}
        out["driver_listdir"] = sorted(os.listdir(c.run_parent))
        out["driver_mnt"] = os.readlink("/proc/self/ns/mnt")
        fs = c.pyarrow_s3()
        out["s3_read_by_driver"] = {name: fs.open_input_stream(p["s3_key"]).read().decode()
                                    for name, p in out["probes"].items()}
        out["on_worker_ls"] = c.on_worker(1, ["ls", "-A", str(c.run_parent)]).output.strip()

        no_token_driver.wait(90)
        out["no_token_driver"] = {"rc": no_token_driver.rc, "output": no_token_driver.output[-4000:]}
        with contextlib.suppress(subprocess.TimeoutExpired):
            intruder.proc.wait(90)
        out["intruder"] = {"rc": intruder.proc.poll(), "output": intruder.log.read_text()[-4000:]}
        out["names_after_intruder"] = sorted(n["name"] for n in c.nodes_info())
        c.nodes.remove(intruder)

        # kill worker-2's raylet by PID; the GCS (and so ray.nodes()) must see the node dead
        victim = c.nodes[2]
        out["raylet_pid"] = c.kill_raylet(2)
        t0 = time.monotonic()
        out["dead_after_s"] = round(c.wait_node_dead(2, timeout=60), 2)
        out["ray_nodes_after"] = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
        out["victim_id"] = victim.node_id
        victim.proc.wait(30)
        out["victim_ray_start_rc"] = victim.proc.returncode
        out["victim_gone_s"] = round(time.monotonic() - t0, 2)
    out["leftovers"] = c.leftovers
    out["timings"] = c.timings
    return out


def fails(ctx) -> None:
    raise ValueError("boom inside")


def forgets_a_process(ctx) -> dict:
    """Starts a process in a session of its own and does not end it: run_scenario must find and kill it."""
    p = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with socket.socket() as s:
        s.settimeout(2)
        outside = s.connect_ex(("1.1.1.1", 80))   # no route out of the namespace
    return {"pid": p.pid, "interfaces": interfaces(), "connect_out_errno": outside}


# ------------------------------------------------------------------------------------ tests

def test_cluster_refuses_to_start_outside_a_namespace(tmp_path):
    if interfaces() == ["lo"]:
        pytest.skip("this process is itself in a loopback-only namespace")
    with pytest.raises(RuntimeError, match="fresh network namespace"):
        Cluster(tmp_path, workers=1).start_all()


def test_scenario_errors_and_forgotten_processes(tmp_path):
    require_namespaces()
    with pytest.raises(ScenarioError, match="boom inside"):
        run_scenario(fails, tmp_path / "a", timeout=60)
    res = run_scenario(forgets_a_process, tmp_path / "b", timeout=60)
    assert res.value["interfaces"] == ["lo"]
    assert res.value["connect_out_errno"] != 0
    assert [p["pid"] for p in res.leftovers] == [res.value["pid"]]   # found in the namespace and killed
    time.sleep(0.2)
    status = f"/proc/{res.value['pid']}/status"
    assert not os.path.exists(status) or "zombie" in Path(status).read_text().lower()


def test_two_worker_cluster(tmp_path):
    require_namespaces()
    res = run_scenario(two_workers, tmp_path, timeout=240)
    v = res.value
    print(f"harness: {res.seconds:.1f} s in all, cluster start {v['start_s']} s, node dead after "
          f"{v['dead_after_s']} s, timings {v['timings']}")
    assert v["interfaces"] == ["lo"]
    # head without CPUs, two 1-CPU workers, all joined with the token
    assert v["gcs_nodes"] == {"head": {"state": "ALIVE", "cpu": 0}, "worker-1": {"state": "ALIVE", "cpu": 1.0},
                              "worker-2": {"state": "ALIVE", "cpu": 1.0}}
    # every listening port is ours (no Ray default such as 6379, 8265, 10001, 52365, 44217)
    lo, hi = v["port_base"], v["port_base"] + 10000
    assert v["ports"] and all(lo <= p < hi for p in v["ports"]), v["ports"]
    # no shared disk: the workers see an empty run-dir parent (and home), the driver its run directory
    probes = v["probes"]
    assert set(probes) == {"head", "worker-1", "worker-2"}
    assert probes["head"]["listdir"] == ["sweep-1"] == v["driver_listdir"]
    for w in ("worker-1", "worker-2"):
        assert probes[w]["listdir"] == [] and probes[w]["home"] == []
        assert probes[w]["mnt"] != v["driver_mnt"]
        assert probes[w]["node_id"] == v["node_ids"][w]
        assert probes[w]["env"] == {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "WANDB_MODE": "offline"}
    assert probes["worker-1"]["mnt"] != probes["worker-2"]["mnt"]
    assert v["on_worker_ls"] == ""
    # S3: what tasks on the workers wrote, the driver reads
    assert v["s3_read_by_driver"] == {name: name for name in probes}
    # token: a driver and a node without it are refused
    assert v["no_token_driver"]["rc"] != 0 and "JOINED" not in v["no_token_driver"]["output"]
    assert "Authentication token is missing or incorrect" in v["no_token_driver"]["output"]
    assert v["intruder"]["rc"] not in (None, 0)
    assert "Authentication token is missing or incorrect" in v["intruder"]["output"]
    assert v["names_after_intruder"] == ["head", "worker-1", "worker-2"]
    # the killed raylet's node is dead for the GCS and ray.nodes(); its `ray start --block` ended
    assert v["ray_nodes_after"][v["victim_id"]] is False
    assert sum(v["ray_nodes_after"].values()) == 2
    assert v["victim_ray_start_rc"] not in (None, 0)
    # teardown: nothing left, as the cluster saw it (recorded descendants) and as the namespace shows
    assert v["leftovers"] == []
    assert res.leftovers == []
