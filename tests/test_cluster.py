"""Sweeps on a real two-machine Ray cluster without a shared disk (tests/cluster.py): a head with 0 CPUs
and two 1-CPU worker nodes, each worker in its own mount namespace (its own empty run-dir parent, HOME
and TMPDIR), the whole test in a private network namespace, token auth, moto S3 on 127.0.0.1.

One cluster serves three scenarios, in this order (``sweeps_on_a_cluster``):

(a) the quickstart spec (the real CIFAR-10 subset via ``--data``: the driver loads it and Ray's object
    store carries it to the workers; ``--epochs 1``, 400 training images) launched with ``--address``
    and ``--run-dir s3://bucket/qs``: every row of the driver's results table completed with its test
    accuracy (before bnsweep used Ray's storage as the transport: 0 of 4), W&B offline runs in the
    bucket, ``status`` and ``export`` work from the driver;
(c) a *local* ``--run-dir`` with ``--address``: the workers cannot see it; nothing is invented: each
    launch is refused by the pre-flight before anything runs (exit 2, one line naming the run directory);
    without the pre-flight each trial would fail saying so and the sweep end exit 3 (never 0);
(b) a worker node's raylet killed (by PID) mid-trial, the other worker alive, ``retries: 0``: the trial is
    retried on the other node from its last checkpoint in the bucket (the driver's events show it
    restored from epoch 1), nothing lost, exit 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cluster import Cluster, require_namespaces, run_scenario

from bnsweep.store.table import TEXT_DTYPES

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT.parent / "shared" / "data" / "cifar10-subset-train.npz"

TINY = """
name: {name}
method: grid
replicates: 2
retries: 0
resources: {{cpu: 1}}
tracking: {{wandb: false}}
fixed:
  model: {{depth: 8}}
  epochs: 3
  batch_size: 32
  steps_per_epoch: 2
  data: {{source: synthetic, synthetic_size: 64, val_size: 32, test_size: 32}}
parameters:
  lr: {{values: {lrs}}}
"""


def _events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _s3_table(c: Cluster, prefix: str) -> list[dict]:
    import pandas as pd

    fs = c.pyarrow_s3()
    try:
        with fs.open_input_stream(f"{prefix}/results.csv") as f:
            df = pd.read_csv(f, dtype=TEXT_DTYPES)
    except FileNotFoundError:
        return []
    return json.loads(df[["trial_id", "seed", "status", "reason", "epochs_run", "test_accuracy"]]
                      .to_json(orient="records"))


def _s3_keys(c: Cluster, prefix: str) -> list[str]:
    from pyarrow import fs as pafs

    infos = c.pyarrow_s3().get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def sweeps_on_a_cluster(ctx, subset: str | None) -> dict:
    fast_hc = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
               "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "0"}
    out: dict = {}
    with Cluster(ctx.base, workers=2, worker_cpus=1, s3=True, bucket="bucket", head_env=fast_hc) as c:
        ctx.log(f"cluster up: {c.timings}")
        cli = [c.python, "-m", "bnsweep"]
        common = ["--address", c.address, "--quiet", "--no-dashboard"]

        # (a) the quickstart on S3
        if subset:
            t0 = time.monotonic()
            run = c.run([*cli, "launch", str(ROOT / "sweeps" / "quickstart.yaml"), "--data", subset, "--epochs", "1",
                         "--set", "data.train_size=400", "--set", "data.val_size=100", "--set", "data.test_size=100",
                         "--run-dir", "s3://bucket/qs", *common], timeout=420, name="quickstart")
            status = c.run([*cli, "status", "s3://bucket/qs", "--json"], timeout=120, name="status")
            export = c.run([*cli, "export", "s3://bucket/qs", "--format", "csv"], timeout=120, name="export")
            keys = _s3_keys(c, "bucket/qs")
            out["a"] = {"rc": run.rc, "seconds": round(time.monotonic() - t0, 1), "events": _events(run.output)[-3:],
                        "tail": run.output[-3000:], "table": _s3_table(c, "bucket/qs"),
                        "status_rc": status.rc, "status": status.json() if status.rc == 0 else status.output[-2000:],
                        "export_rc": export.rc, "export": export.output[-3000:],
                        "wandb_runs": sorted({k.split("/")[3] for k in keys
                                              if k.startswith("bucket/qs/wandb/offline-run-")}),
                        "records": [k for k in keys if k.endswith("/result.json") and "/trials/" in k]}
            ctx.log(f"(a) done: rc {run.rc}")

        # (c) a local run directory, which the workers cannot see
        spec_c = c.shared / "local.yaml"
        spec_c.write_text(TINY.format(name="local_on_cluster", lrs="[0.1]"))
        local = c.run_parent / "local-run"
        t0 = time.monotonic()
        run = c.run([*cli, "launch", str(spec_c), "--run-dir", str(local), *common], timeout=300, name="local")
        table = []
        if (local / "results.csv").exists():
            import pandas as pd

            df = pd.read_csv(local / "results.csv", dtype=TEXT_DTYPES)
            table = json.loads(df[["trial_id", "seed", "status", "reason", "test_accuracy"]].to_json(orient="records"))
        out["c"] = {"rc": run.rc, "seconds": round(time.monotonic() - t0, 1), "table": table,
                    "tail": run.output[-3000:], "events": _events(run.output)[-2:],
                    "worker_sees": c.on_worker(1, ["ls", "-A", str(c.run_parent)]).output.strip()}
        ctx.log(f"(c) done: rc {run.rc}")

        # (b) a worker node's raylet killed mid-trial; the other worker is alive
        spec_b = c.shared / "kill.yaml"
        spec_b.write_text(TINY.format(name="node_kill", lrs="[0.1]"))
        marker = c.shared / "kill-node"
        faults = c.shared / "faults.json"
        faults.write_text(json.dumps({"log": str(c.shared / "epochs.jsonl"),
                                      "faults": [{"epoch": 2, "marker": str(marker), "sleep": 8.0}]}))
        killer = c.kill_raylet_when(marker, timeout=300, delay=1.0)
        t0 = time.monotonic()
        run = c.run([*cli, "launch", str(spec_b), "--run-dir", "s3://bucket/kill", *common], timeout=420,
                    name="kill", env={"BNSWEEP_TEST_FAULTS": str(faults)})
        killer.join(5)
        epochs = [json.loads(line) for line in (c.shared / "epochs.jsonl").read_text().splitlines()] \
            if (c.shared / "epochs.jsonl").exists() else []
        out["b"] = {"rc": run.rc, "seconds": round(time.monotonic() - t0, 1), "killed": killer.result,
                    "events": [e for e in _events(run.output) if e["event"] in ("retrying", "restored", "finished",
                                                                                "incomplete", "stopped", "lost")],
                    "table": _s3_table(c, "bucket/kill"), "tail": run.output[-3000:],
                    "epochs": [(e["seed"], e["epoch"], e["host"], e["pid"]) for e in epochs],
                    "nodes": {n["name"]: n["state"] for n in c.nodes_info()}}
        ctx.log(f"(b) done: rc {run.rc}")
    out["leftovers"] = c.leftovers
    return out


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    require_namespaces()
    base = tmp_path_factory.mktemp("cluster")
    t0 = time.monotonic()
    res = run_scenario(sweeps_on_a_cluster, base, timeout=900, subset=str(SUBSET) if SUBSET.exists() else None)
    print(f"\ncluster scenarios: {time.monotonic() - t0:.0f} s in all")
    assert res.value["leftovers"] == [] and res.leftovers == []
    return res.value


@pytest.mark.slow
@pytest.mark.skipif(not SUBSET.exists(), reason=f"the real CIFAR-10 subset is not at {SUBSET} (../shared/data)")
def test_quickstart_on_two_machines_with_an_s3_run_dir_gives_a_complete_table(cluster_run):
    a = cluster_run["a"]
    assert a["rc"] == 0, a["tail"]
    assert a["events"][-1]["event"] == "finished", a["events"]
    rows = a["table"]
    done = [r for r in rows if r["status"] == "completed" and r["test_accuracy"] is not None and r["epochs_run"] == 1]
    print(f"\n(a) quickstart, 2 worker nodes, s3 run dir: {len(done)}/{len(rows)} rows completed with test accuracy "
          f"(before: 0 of 4), {a['seconds']} s")
    assert len(rows) == 4 and len(done) == 4, rows
    assert len(a["records"]) == 4
    assert len(a["wandb_runs"]) == 4 + 1, a["wandb_runs"]  # every replicate's offline run + the summary
    assert a["status_rc"] == 0 and a["status"]["counts"] == {"completed": 2}, a["status"]
    assert a["export_rc"] == 0 and "test_accuracy" in a["export"], a["export"]


@pytest.mark.slow
def test_a_local_run_dir_on_a_cluster_without_shared_disk_is_never_a_silent_wrong_table(cluster_run):
    c = cluster_run["c"]
    assert c["worker_sees"] == ""  # the worker's run-dir parent is its own, empty
    rows = [(r["status"], r["reason"][:90]) for r in c["table"]]
    print(f"\n(c) local run dir on the cluster: exit {c['rc']}, rows {rows}")
    # refused before anything runs by the pre-flight (bnsweep.sweep.cluster): the workers cannot see it
    assert c["rc"] == 2, c["tail"]
    assert not c["table"]
    assert "run directory" in c["tail"] and "Traceback" not in c["tail"], c["tail"]


@pytest.mark.slow
def test_a_worker_node_killed_mid_trial_is_retried_on_the_other_from_its_checkpoint(cluster_run):
    b = cluster_run["b"]
    assert b["killed"] and "error" not in b["killed"], b
    assert b["rc"] == 0, b["tail"]
    kinds = [e["event"] for e in b["events"]]
    restored = [e for e in b["events"] if e["event"] == "restored"]
    print(f"\n(b) raylet killed mid-trial: events {kinds}, restored from epoch "
          f"{[e['from_epoch'] for e in restored]}, {b['seconds']} s; epochs (seed, epoch, host) {b['epochs']}")
    assert "retrying" in kinds and restored and restored[0]["from_epoch"] >= 1, b["events"]
    assert kinds[-1] == "finished"
    rows = b["table"]
    assert len(rows) == 2 and all(r["status"] == "completed" and r["epochs_run"] == 3 for r in rows), rows
    assert all(r["test_accuracy"] is not None for r in rows)
    # epoch 1 trained once: the retry on the other node began at epoch 2
    assert [e for s, e, _, _ in b["epochs"] if s == 0].count(1) == 1, b["epochs"]
    assert sorted(b["nodes"].values()).count("DEAD") == 1, b["nodes"]
