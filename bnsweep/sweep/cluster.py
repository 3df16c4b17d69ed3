"""Pre-flight of the Ray a sweep runs on, after Ray is connected and before anything is written: the nodes
and their CPUs / GPUs / TPUs / memory, the packing per node (a trial never spans nodes), and, on a cluster
(``--address``), whether every node that would run trials reaches the run directory and the data.

What no node can run is refused in one line (``ClusterError``: exit 2) instead of Ray waiting for it
forever; ``plan`` and a local ``launch`` check this machine the same way without starting Ray
(``check_local``):

>>> from bnsweep.spec.sweep_spec import Resources, SweepSpec
>>> nodes = [Node("a1", "head", is_head=True, resources={"memory": 8e9}),
...          Node("b2", "worker-1", resources={"CPU": 2, "memory": 8e9}),
...          Node("c3", "worker-2", resources={"CPU": 2, "memory": 8e9})]
>>> print(format_packing(check_resources(SweepSpec(name="s"), nodes, configurations=8), nodes))
3 nodes: a trial takes 1 CPU, 1.5 GB → head: none (0 CPU, 8.0 GB); worker-1, worker-2: 2 trials each (2 CPU, \
8.0 GB) = 4 trials at once
>>> try:
...     check_resources(SweepSpec(name="s", resources=Resources(gpu=1)), nodes, configurations=8,
...                     where="the cluster at 10.0.0.5:6379")
... except ClusterError as e:
...     print(e)
resources.gpu / --gpus-per-trial 1: a trial asks for 1 GPU, but no node of the cluster at 10.0.0.5:6379 has a \
GPU (head: 0 CPU, 8.0 GB; worker-1, worker-2: 2 CPU, 8.0 GB each); Ray would wait for one forever. Allowed \
there: 0 (CPU trials), or add GPU nodes (ray start --num-gpus N)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bnsweep.base.atomic import atomic_write_text
from bnsweep.store.rundir import RunDirError
from bnsweep.sweep.packing import Packing, spec_packing

# A node that has not answered its probe by then is named as not answering (never a silent wait).
PROBE_TIMEOUT_S = 60.0
PROBE_PREFIX = ".bnsweep-preflight-"
# Keys whose values are paths a trial opens itself when the sweep searches over data settings.
DATA_PATH_KEYS = ("data.path", "data.test_path")


class ClusterError(RunDirError):
    """The cluster (or this machine) cannot run the sweep as asked; the one-line message says what was
    asked, what the nodes have and what to do. Caught like every bad-input error: exit 2, no traceback."""


# ------------------------------------------------------------------ nodes

@dataclass(frozen=True)
class Node:
    """One Ray node as ``ray.nodes()`` shows it (``resources`` in Ray's names; a missing key is 0).

    >>> n = Node("ab12", "gpu-1", "10.0.0.9", resources={"CPU": 8, "GPU": 2, "accelerator_type:H100": 1,
    ...          "memory": 60e9})
    >>> n.label, n.describe(), n.accelerator_type
    ('gpu-1 (10.0.0.9)', '8 CPU, 2 GPU H100, 60.0 GB', 'H100')
    """

    node_id: str
    name: str
    ip: str = ""
    is_head: bool = False
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The node's name, and its IP when the name is not the IP (Ray names nodes by IP by default)."""
        return self.name if not self.ip or self.ip == self.name else f"{self.name} ({self.ip})"

    @property
    def accelerator_type(self) -> str | None:
        """``H100``, ``TPU-V4``...: Ray's ``ray.io/accelerator-type`` label or ``accelerator_type:`` resource."""
        label = self.labels.get("ray.io/accelerator-type")
        if label:
            return label
        return next((k.split(":", 1)[1] for k in self.resources if k.startswith("accelerator_type:")), None)

    def describe(self) -> str:
        """``2 CPU, 1 GPU H100, 4 TPU, 8.0 GB``: what a trial can use here."""
        r = self.resources
        parts = [f"{r.get('CPU', 0):g} CPU"]
        for key in ("GPU", "TPU"):
            if r.get(key):
                acc = self.accelerator_type
                parts.append(f"{r[key]:g} {key}" + (f" {acc}" if acc and (key == "TPU") == acc.startswith("TPU")
                                                     else ""))
        if "memory" in r and r["memory"] != float("inf"):
            parts.append(_gb(r["memory"]))
        return ", ".join(parts)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def cluster_nodes() -> list[Node]:
    """The alive nodes of the Ray this process is connected to."""
    import ray

    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = dict(n.get("Resources") or {})
        out.append(Node(node_id=n["NodeID"], name=n.get("NodeName") or n.get("NodeManagerAddress") or n["NodeID"][:12],
                        ip=n.get("NodeManagerAddress") or "", is_head="node:__internal_head__" in res,
                        resources={k: v for k, v in res.items() if not k.startswith("node:")},
                        labels=dict(n.get("Labels") or {})))
    return sorted(out, key=lambda n: (not n.is_head, n.name, n.node_id))


def local_node(*, num_cpus: float | None = None, num_gpus: float | None = None) -> Node:
    """This machine as a local ``ray.init(num_cpus=, num_gpus=)`` would see it (Ray's own detection of
    CPUs (cgroup limits included), NVIDIA/AMD/Intel GPUs, TPUs and memory), without starting Ray.

    >>> local_node(num_cpus=3, num_gpus=0).resources["CPU"]
    3
    """
    try:
        from bnsweep.sweep import ray_compat

        resources, labels = ray_compat.local_resources(num_cpus=None if num_cpus is None else int(num_cpus),
                                                       num_gpus=None if num_gpus is None else int(num_gpus))
        res = {k: v for k, v in resources.items() if not k.startswith("node:")}
    except Exception:  # Ray's internals moved: count what the standard library can see
        from bnsweep.sweep.packing import physical_memory_bytes

        res = {"CPU": num_cpus if num_cpus is not None else os.cpu_count() or 1, "GPU": num_gpus or 0}
        if physical_memory_bytes():
            res["memory"] = int(0.7 * (physical_memory_bytes() or 0))
        labels = {}
    res.setdefault("CPU", 0)
    return Node(node_id="local", name="this machine", is_head=True, resources=res, labels=labels)


# ------------------------------------------------------------------ what fits where

_WHAT = {"CPU": "CPU", "GPU": "GPU", "TPU": "TPU chip", "memory": "memory"}


def check_resources(spec: Any, nodes: Sequence[Node], *, configurations: int, where: str = "the cluster",
                    custom: Mapping[str, float] | None = None, hint: str = "") -> Packing:
    """The per-node packing of ``spec``'s trials on ``nodes``; ``ClusterError`` when no node can run one
    (a CPU, GPU, TPU, memory or ``custom`` resource more than any node has, or no node with all of them).
    ``hint`` ends the message (e.g. how to plan for another machine)."""
    packing = spec_packing(spec, [(n.label, n.resources) for n in nodes], configurations=configurations,
                           custom=custom)
    if packing.fits == 0:
        raise ClusterError(_why_nothing_fits(spec, packing.needs, nodes, where) + hint)
    return packing


def _ask_key(spec: Any, key: str, need: float) -> str:
    """The spec key and flag that asked for ``key``."""
    if key == "CPU":
        return f"resources.cpu / --cpus-per-trial {need:g}" if spec.resources.cpu is not None else "CPU"
    if key == "GPU":
        return f"resources.gpu / --gpus-per-trial {need:g}"
    if key == "TPU":
        return f"resources.tpu {need:g}"
    if key == "memory":
        return "memory"
    return f"resource {key!r}"


def _plural(n: float, what: str) -> str:
    if what.startswith("'"):  # a custom resource: "0.5 of 'accelerator_type:H100'"
        return f"{n:g} of {what}"
    return f"{n:g} {what}" + ("s" if n > 1 and what != "memory" else "")


def _why_nothing_fits(spec: Any, needs: Mapping[str, float], nodes: Sequence[Node], where: str) -> str:
    local = where == "this machine"
    summary = summarize_nodes(nodes)
    allowed = "Allowed here" if local else "Allowed there"
    order = sorted(needs, key=lambda k: ({"GPU": 0, "TPU": 1, "CPU": 3, "memory": 4}.get(k, 2), k))
    for key in order:
        need = needs[key]
        best = max((n.resources.get(key, 0) for n in nodes), default=0)
        if best >= need - 1e-9:
            continue
        what = _WHAT.get(key, f"{key!r}")
        asked = _ask_key(spec, key, need)
        if key == "memory":
            offers = f"this machine offers Ray {_gb(best)}" if local else \
                f"no node of {where} offers Ray that much (largest: {_gb(best)}; {summary})"
            return (f"memory: a trial needs about {_gb(need)} (TensorFlow, the network and its share of the data: "
                    f"bnsweep.sweep.packing.TRIAL_MEMORY_BYTES), but {offers}; use "
                    f"{'a machine' if local else 'nodes'} with more memory")
        if key == "CPU" and spec.resources.cpu is None:
            none = "this machine has no CPU" if local else f"no node of {where} has a CPU"
            return f"CPU: {none} for a trial ({summary}); start worker nodes with CPUs (ray start --num-cpus N)"
        if best <= 0:
            fix = {"GPU": "0 (CPU trials), or " + ("run it on a GPU machine" if local else
                                                   "add GPU nodes (ray start --num-gpus N)"),
                   "TPU": "0 (CPU or GPU trials), or run it on a TPU host (Ray's TPU resource)"}.get(
                       key, f"leave it out, or start a node that has it (ray start --resources '{{\"{key}\": N}}')")
            article = "a " if key in _WHAT else ""
            none = f"this machine has no {what} Ray can use" if local else f"no node of {where} has {article}{what}"
            return (f"{asked}: a trial asks for {_plural(need, what)}, but {none} ({summary}); Ray would wait for "
                    f"one forever. {allowed}: {fix}")
        if local:
            return (f"{asked}: a trial asks for {_plural(need, what)}, but this machine has {best:g} ({summary}); "
                    f"Ray would wait forever. {allowed}: at most {best:g}")
        return (f"{asked}: a trial asks for {_plural(need, what)}, but the largest node of {where} has {best:g} "
                f"({summary}); Ray would wait forever. {allowed}: at most {best:g}, or add larger nodes")
    asked = " + ".join(_plural(v, _WHAT.get(k, repr(k))) if k != "memory" else _gb(v) for k, v in needs.items())
    lacks = "this machine does not have all of it" if local else f"no node of {where} has all of it at once"
    return (f"resources: a trial asks for {asked} on one node, but {lacks} ({summary}); Ray would wait forever. "
            "Ask for less (resources.cpu / --cpus-per-trial, resources.gpu / --gpus-per-trial)"
            + ("" if local else ", or add nodes that have it all"))


def summarize_nodes(nodes: Sequence[Node], counts: Sequence[int] | None = None) -> str:
    """Nodes grouped by what they have (and, with ``counts``, the trials each holds).

    >>> summarize_nodes([Node("1", "w1", resources={"CPU": 2}), Node("2", "w2", resources={"CPU": 2})])
    'w1, w2: 2 CPU each'
    """
    groups: dict[tuple[str, int | None], list[str]] = {}
    for i, n in enumerate(nodes):
        groups.setdefault((n.describe(), None if counts is None else counts[i]), []).append(n.label)
    parts = []
    for (desc, count), names in groups.items():
        who = ", ".join(names) if len(names) <= 3 else f"{len(names)} nodes ({names[0]} … {names[-1]})"
        if count is None:
            parts.append(f"{who}: {desc}{' each' if len(names) > 1 else ''}")
        else:
            held = "none" if count == 0 else f"{count} trial{'s' if count != 1 else ''}"
            parts.append(f"{who}: {held}{' each' if len(names) > 1 and count else ''} ({desc})")
    return "; ".join(parts)


def format_packing(packing: Packing, nodes: Sequence[Node], *, where: str = "") -> str:
    """One or two lines: what a trial takes and how many each node holds (what ``launch --address`` prints)."""
    takes = ", ".join(_plural(v, _WHAT.get(k, repr(k))) if k != "memory" else _gb(v) for k, v in packing.needs.items())
    counts = [n for _, n in packing.per_node]
    head = f"{where}: " if where else ""
    line = (f"{head}{len(nodes)} node{'s' if len(nodes) != 1 else ''}: a trial takes {takes} → "
            f"{summarize_nodes(nodes, counts)} = {packing.fits} trial{'s' if packing.fits != 1 else ''} at once")
    if packing.concurrent < packing.fits:
        line += f"\n  running {packing.concurrent} at once (max_concurrent, or fewer configurations)"
    elif packing.concurrent > packing.fits:
        line += (f"\n  max_concurrent {packing.concurrent}: only {packing.fits} can run at once on these nodes; "
                 "the rest wait")
    return line


def check_local(spec: Any, *, configurations: int | None = None, num_cpus: float | None = None,
                num_gpus: float | None = None, hint: str = "") -> Packing:
    """``check_resources`` on this machine as a local Ray would see it (``plan``, ``launch`` without
    ``--address``), before any Ray starts."""
    node = local_node(num_cpus=num_cpus, num_gpus=num_gpus)
    return check_resources(spec, [node], configurations=_configurations(spec, configurations),
                           where="this machine", hint=hint)


def _configurations(spec: Any, configurations: int | None) -> int:
    if configurations is not None:
        return configurations
    from bnsweep.sweep.space import count_configurations

    return count_configurations(spec)


# ------------------------------------------------------------------ paths the workers must reach

def trials_load_their_own_data(spec: Any) -> bool:
    """True when the sweep searches over ``data.*`` keys: each trial loads its data itself, on its node
    (otherwise the driver loads it once and it travels through Ray's object store)."""
    return any(k == "data" or k.startswith("data.") for k in spec.parameters)


def data_paths(spec: Any) -> list[str]:
    """Every path a trial of ``spec`` may open itself (``data.path`` / ``data.test_path`` over the fixed
    settings, the searched values and ``one_of`` options; ``$BNSWEEP_DATA`` for CIFAR-10 without a path);
    empty when the data is fixed (loaded once by the driver).

    >>> from bnsweep.spec.sweep_spec import parse_spec_text
    >>> data_paths(parse_spec_text("name: d\\nmethod: grid\\nparameters: {data.path: {values: [/d/a.npz, /d/b.npz]}}"))
    ['/d/a.npz', '/d/b.npz']
    """
    if not trials_load_their_own_data(spec):
        return []
    from bnsweep.spec.sweep_spec import Constant, OneOf, Values

    found: dict[str, list[Any]] = {k: [spec.fixed[k]] for k in (*DATA_PATH_KEYS, "data.source") if k in spec.fixed}

    def walk(params: Mapping[str, Any], prefix: str) -> None:
        for key, p in params.items():
            full = f"{prefix}{key}"
            if isinstance(p, OneOf):
                for name, opts in p.options.items():
                    if full == "data":  # a one_of over data: the option name is the source
                        found.setdefault("data.source", []).append(name)
                    walk(opts, f"{full}.")
            elif isinstance(p, Values):
                found.setdefault(full, []).extend(p.values)
            elif isinstance(p, Constant):
                found.setdefault(full, []).append(p.value)

    walk(spec.parameters, "")
    paths = [str(v) for k in DATA_PATH_KEYS for v in found.get(k, []) if isinstance(v, str | Path) and str(v)]
    env = os.environ.get("BNSWEEP_DATA")
    if env and "cifar10" in (found.get("data.source") or ["cifar10"]):
        paths.append(env)
    return list(dict.fromkeys(os.path.abspath(os.path.expanduser(p)) for p in paths))


def is_uri(path: str | Path) -> bool:
    """``s3://bucket/x``, ``gs://bucket/x``...: a run directory on object storage.

    >>> is_uri("s3://b/runs"), is_uri("/mnt/nfs/runs")
    (True, False)
    """
    return "://" in str(path) and not str(path).startswith("file://")


def _probe_here(run_dir: str | None, token: str | None, fs: Any, data: Sequence[str]) -> dict[str, Any]:
    """Runs on one node (a Ray task pinned there): can it read the driver's probe file in the run directory
    and write next to it, and open every data path? Returns the problems found (none: empty)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    problems: dict[str, str] = {}
    if run_dir is not None and token is not None:
        probe = f"{run_dir.rstrip('/')}/{PROBE_PREFIX}{token}"
        mine = f"{probe}.{node_id[:16]}"
        try:
            if fs is None:
                got = Path(probe).read_text() if os.path.exists(probe) else None
            else:
                with fs.open_input_stream(probe) as f:
                    got = f.read().decode(errors="replace")
        except Exception as e:
            got, problems["run_dir"] = None, f"cannot read it ({type(e).__name__}: {_first_line(e)})"
        if "run_dir" not in problems and got is None:
            problems["run_dir"] = "not there (the file bnsweep wrote is missing: another disk)"
        elif "run_dir" not in problems and (got or "").strip() != token:
            problems["run_dir"] = "a different directory at the same path (the file bnsweep wrote is not there)"
        if "run_dir" not in problems:  # trials write there too (checkpoints, results)
            try:
                if fs is None:
                    atomic_write_text(Path(mine), token)  # write, fsync, rename: what the trials do
                    os.unlink(mine)
                else:
                    with fs.open_output_stream(mine) as f:
                        f.write(token.encode())
                    fs.delete_file(mine)
            except Exception as e:
                problems["run_dir"] = f"cannot write there ({type(e).__name__}: {_first_line(e)})"
    for p in data:
        if not os.path.exists(p):
            problems[p] = "missing"
        elif not os.access(p, os.R_OK):
            problems[p] = "not readable"
    return {"node_id": node_id, "problems": problems}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def check_paths(nodes: Sequence[Node], *, run_dir: str | Path | None, data: Sequence[str] = (),
                timeout: float = PROBE_TIMEOUT_S) -> None:
    """Ask every node in ``nodes`` (one task pinned to each, no CPU taken) whether it reaches the run
    directory (a local path: does it see the probe file this driver wrote there, can it write next to it;
    a URI: can it read and write there with the filesystem Ray Tune ships to trials, i.e. this node's
    credentials) and each of ``data``; ``ClusterError`` naming the nodes that cannot. The probe file is
    removed again."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not nodes or (run_dir is None and not data):
        return
    token = secrets.token_hex(8)
    fs, where, probe, made = None, None, None, []
    shown = str(run_dir)
    if run_dir is not None:
        if is_uri(run_dir):
            fs, where = _open_uri(str(run_dir))
            probe = f"{where.rstrip('/')}/{PROBE_PREFIX}{token}"
            made = _missing_dirs(fs, where)
            try:
                with fs.open_output_stream(probe) as f:
                    f.write(token.encode())
            except Exception as e:
                raise ClusterError(f"run directory {shown}: this driver cannot write there ({type(e).__name__}: "
                                   f"{_first_line(e)}); check the bucket name and this machine's credentials") from None
        else:
            where = str(Path(run_dir).resolve())
            if not Path(where).is_dir():
                where = None  # nothing to look for (launch and resume always have it by now)
            else:
                probe = f"{where}/{PROBE_PREFIX}{token}"
                atomic_write_text(Path(probe), token)
    try:
        task = ray.remote(num_cpus=0, max_retries=0)(_probe_here)
        refs = {task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False),
                             name="bnsweep-preflight").remote(where, token if where else None, fs, list(data)): n
                for n in nodes}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        results: dict[str, dict[str, Any]] = {}
        broken: list[str] = []
        for ref in ready:
            try:
                results[refs[ref].node_id] = ray.get(ref)
            except Exception as e:
                cause = getattr(e, "cause", None) or e
                broken.append(f"{refs[ref].label} ({type(cause).__name__}: {_first_line(cause)})")
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
    finally:
        if probe is not None:
            with contextlib.suppress(Exception):
                if fs is not None:
                    fs.delete_file(probe)
                    _remove_empty_dirs(fs, made)
                else:
                    os.unlink(probe)
    silent = [refs[r].label for r in pending]
    if silent:
        raise ClusterError(f"{_names(silent)} did not answer bnsweep's pre-flight probe within {timeout:g} s (a "
                           "task pinned to each node, no CPU taken): overloaded, frozen or cut off from this driver? "
                           "See `ray status` on the head")
    if broken:
        raise ClusterError(f"bnsweep's pre-flight probe failed on {_names(broken)}: is bnsweep (this version) "
                           "installed in the Python that Ray runs on every node?")
    by_node = {n.node_id: n for n in nodes}
    results = {n.node_id: results[n.node_id] for n in nodes if n.node_id in results}  # in the nodes' order
    run_bad = {by_node[i].label: r["problems"]["run_dir"] for i, r in results.items() if "run_dir" in r["problems"]}
    if run_bad:
        raise ClusterError(_run_dir_message(shown, run_bad, total=len(nodes), uri=fs is not None))
    data_bad: dict[str, list[str]] = {}
    for i, r in results.items():
        for p, why in r["problems"].items():
            if p != "run_dir":
                data_bad.setdefault(f"{p} ({why})", []).append(by_node[i].label)
    if data_bad:
        (path, who), more = next(iter(data_bad.items())), len(data_bad) - 1
        raise ClusterError(f"data path {path} on {_names(who)}{f' (and {more} more path(s))' if more else ''}: the "
                           "sweep searches data.* settings, so each trial loads its data on its own node. Put the "
                           "file at the same path on every node (or on a disk they all mount), or fix the data "
                           "settings so the driver loads the data once and Ray ships it")


def _names(labels: Sequence[str]) -> str:
    return ", ".join(labels[:5]) + (f" and {len(labels) - 5} more nodes" if len(labels) > 5 else "")


def _run_dir_message(shown: str, bad: Mapping[str, str], *, total: int, uri: bool) -> str:
    reasons = sorted(set(bad.values()))
    head = f"run directory {shown}: {len(bad)} of {total} node(s) that would run trials cannot use it"
    what = f"{_names(list(bad))}: {reasons[0]}" + (f"; also: {'; '.join(reasons[1:])}" if len(reasons) > 1 else "")
    if uri:
        return (f"{head} ({what}); give every node credentials for it (an instance role or service account, or "
                "AWS_* / GOOGLE_APPLICATION_CREDENTIALS in the environment of its `ray start`)")
    return (f"{head} ({what}): the nodes share no disk with this driver. Use a bucket every node can reach "
            f"(--run-dir s3://BUCKET/PATH or gs://BUCKET/PATH) or a directory on a disk every node mounts at the "
            f"same path (NFS, e.g. /mnt/nfs/runs/NAME)")


def _missing_dirs(fs: Any, path: str) -> list[str]:
    """``path`` and its parents (below the bucket) that do not exist yet, deepest first."""
    import pyarrow.fs as pafs

    out = []
    parts = path.strip("/").split("/")
    for i in range(len(parts), 1, -1):
        d = "/".join(parts[:i])
        with contextlib.suppress(Exception):
            if fs.get_file_info(d).type != pafs.FileType.NotFound:
                break
            out.append(d)
    return out


def _remove_empty_dirs(fs: Any, dirs: Sequence[str]) -> None:
    """Remove the (object-store) directories the probe made, if nothing else landed in them meanwhile."""
    import pyarrow.fs as pafs

    for d in dirs:
        with contextlib.suppress(Exception):
            if fs.get_file_info(pafs.FileSelector(d, allow_not_found=True)):
                return
            fs.delete_dir(d)


def _open_uri(uri: str) -> tuple[Any, str]:
    """The pyarrow filesystem and path Ray Tune uses for a ``storage_path`` URI (its endpoint is resolved
    here; credentials are read on each node)."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:
        raise ClusterError(f"run directory {uri}: not a location pyarrow can open ({type(e).__name__}: "
                           f"{_first_line(e)}); expected s3://BUCKET/PATH, gs://BUCKET/PATH or a path") from None


# ------------------------------------------------------------------ the pre-flight

def autoscaler_groups(config: Any) -> list[tuple[Node, int]]:
    """The node groups an autoscaler can start (``ray_compat.autoscaler_cluster_config()``, which
    Ray's autoscaler v2 and KubeRay report; None elsewhere) as (node, most nodes; -1: no limit). Ray
    Train checks its asks against the same config.

    >>> from ray.core.generated import autoscaler_pb2
    >>> cfg = autoscaler_pb2.ClusterConfig(node_group_configs=[autoscaler_pb2.NodeGroupConfig(
    ...     name="gpu", resources={"CPU": 8, "GPU": 1}, max_count=4)])
    >>> [(n.name, n.resources["GPU"], k) for n, k in autoscaler_groups(cfg)]
    [('gpu', 1, 4)]
    """
    out = []
    for g in getattr(config, "node_group_configs", None) or []:
        if g.max_count == 0:
            continue
        res = {k: (int(v) if float(v).is_integer() else v) for k, v in dict(g.resources).items()}
        res.setdefault("memory", float("inf"))  # not reported: not what stops a trial there
        out.append((Node(node_id=f"group:{g.name}", name=g.name or "autoscaler nodes", resources=res), g.max_count))
    return out


def _cluster_config() -> Any:
    try:
        from bnsweep.sweep import ray_compat

        return ray_compat.autoscaler_cluster_config()
    except Exception:  # not reported, or Ray's internals moved: only the nodes there count
        return None


@dataclass(frozen=True)
class Preflight:
    """What the pre-flight found: the packing per node, the nodes, which were probed, and how long it took."""

    packing: Packing
    nodes: tuple[Node, ...]
    probed: tuple[str, ...]
    seconds: float


GROUP_COPIES = 32  # an autoscaler group without a limit counts as this many nodes for the packing


def preflight(spec: Any, options: Any, *, run_dir: str | Path | None, configurations: int | None = None,
              out: TextIO | None = None) -> Preflight:
    """Run after Ray is connected, before anything is written: refuse (``ClusterError``) trials no node
    can run (nor any node an autoscaler reports it can add); with ``options.address``, print the per-node
    packing and probe the nodes that would run trials (other than this driver's) for the run directory
    and, when trials load their own data, the data paths. A local Ray (no ``--address``) is not probed."""
    import ray

    t0 = time.monotonic()
    nodes = cluster_nodes()
    groups = autoscaler_groups(_cluster_config()) if options.address else []
    where = f"the cluster at {options.address}" if options.address else "this machine's Ray"
    packing, now, line = pack_cluster(spec, nodes, groups, configurations=_configurations(spec, configurations),
                                      where=where, address=options.address or "")
    probed: list[Node] = []
    if options.address:
        print(f"cluster {line}", file=out or sys.stderr, flush=True)
        here = ray.get_runtime_context().get_node_id()
        probed = [n for n, (_, k) in zip(nodes, now.per_node, strict=True) if k > 0 and n.node_id != here]
        check_paths(probed, run_dir=run_dir, data=data_paths(spec))  # (nodes added later are not probed)
    return Preflight(packing=packing, nodes=tuple(nodes), probed=tuple(n.label for n in probed),
                     seconds=round(time.monotonic() - t0, 3))


def pack_cluster(spec: Any, nodes: Sequence[Node], groups: Sequence[tuple[Node, int]] = (), *, configurations: int,
                 where: str = "the cluster", address: str = "") -> tuple[Packing, Packing, str]:
    """(the packing over the nodes and what the autoscaler can add, the same on today's nodes only, the
    line ``launch --address`` prints); ``ClusterError`` when neither can hold a trial.

    >>> from bnsweep.spec.sweep_spec import Resources, SweepSpec
    >>> nodes = [Node("h", "head", resources={"CPU": 4, "memory": 16e9})]
    >>> gpu = (Node("group:gpu", "gpu", resources={"CPU": 8, "GPU": 1, "memory": float("inf")}), 4)
    >>> p, now, line = pack_cluster(SweepSpec(name="s", resources=Resources(gpu=1)), nodes, [gpu], configurations=10)
    >>> p.concurrent, now.fits
    (4, 0)
    >>> print(line)
    1 node: a trial takes 8 CPUs, 1 GPU, 1.5 GB → head: none (4 CPU, 16.0 GB) = 0 trials at once
      the autoscaler can add: gpu (up to 4 nodes): 1 trial each; 4 trials at once in all
    """
    virtual = [g for g, most in groups for _ in range(most if 0 < most <= GROUP_COPIES else GROUP_COPIES)]
    packing = check_resources(spec, [*nodes, *virtual], configurations=configurations, where=where)
    now = dataclasses.replace(packing, per_node=packing.per_node[:len(nodes)])
    line = format_packing(now, nodes, where=address)
    if groups:
        fits = {g.node_id: k for g, (_, k) in zip(virtual, packing.per_node[len(nodes):], strict=True)}
        adds = "; ".join(f"{g.label} (up to {most if most > 0 else 'any number of'} nodes): "
                         f"{_plural(fits.get(g.node_id, 0), 'trial')} each" for g, most in groups)
        line = line.split("\n")[0] + f"\n  the autoscaler can add: {adds}; {packing.concurrent} trials at once in all"
    return packing, now, line
