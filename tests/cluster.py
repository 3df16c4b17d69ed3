"""A real multi-node Ray cluster (and an S3 server) for tests, with no shared disk and no network.

Everything runs inside a fresh network namespace made for one test, so no packet can leave loopback:
the Ray head (0 CPUs by default), N Ray worker nodes, an optional moto S3 server and the commands under
test (a ``bnsweep`` driver, a probe script). Each worker node also runs in its own mount namespace with
private tmpfs mounts over the run directories' parent, its ``$HOME`` and its ``$TMPDIR``, so it shares no
files with the driver: a local ``storage_path`` written from a worker lands in that worker's tmpfs, as on a
real cluster without a shared file system. The head node and the drivers share the test's files.

Two layers:

* **pytest side** -- :func:`run_scenario` runs a *scenario function* (a module-level function of a test
  module) inside ``unshare --net --fork``, waits for it, and returns what the function returned (JSON)
  in a :class:`ScenarioResult`. It records the namespace and afterwards checks that no process is left in
  it (``ScenarioResult.leftovers``; any found is killed by PID). :func:`require_namespaces` skips a test
  where the machine cannot do this (not root, no ``unshare``, mount refused).
* **inside the namespace** -- the scenario function gets a :class:`ScenarioContext` and uses
  :class:`Cluster` as a context manager: it starts the nodes and waits until they joined; gives the
  environment a driver needs (``Cluster.driver_env``: ``RAY_ADDRESS``, ``RAY_AUTH_MODE=token`` and the
  token, the AWS variables for the moto server); runs drivers on the head (``Cluster.start`` / ``run`` /
  ``run_python``), a command in a worker's mount namespace (``on_worker``), or connects the scenario
  process itself (``connect``); lists nodes as the GCS sees them (``nodes_info``); kills a node's raylet
  by PID (``kill_raylet``, or ``kill_raylet_when`` a marker file appears), SIGKILLs a whole node
  (``kill_node``) or SIGSTOPs it (``freeze_node``: a hung machine), waits for the GCS to declare it dead
  (``wait_node_dead``), starts it again or adds nodes (``restart_node``, ``add_worker``, also without the
  token to show it is refused); and on exit ends exactly the processes it started (their process groups,
  then every recorded descendant by PID) and reports any survivor in ``Cluster.leftovers``.

Example (a test module)::

    from cluster import Cluster, require_namespaces, run_scenario

    def scenario(ctx, trials):             # runs inside the namespace; returns JSON
        with Cluster(ctx.base, workers=2, worker_cpus=1, s3=True) as c:
            marker = c.shared / "kill"      # e.g. written by a driver-side Tune callback: a node ID
            killer = c.kill_raylet_when(marker)
            run = c.start([c.python, "-m", "bnsweep", "launch", "spec.yaml"], name="driver")
            rc = run.wait(300)
            killer.join(1)
            out = {"rc": rc, "killed": killer.result, "log": run.output[-2000:]}
        out["leftovers"] = c.leftovers     # filled when the cluster closed
        return out

    def test_x(tmp_path):
        require_namespaces()
        res = run_scenario(scenario, tmp_path, timeout=300, trials=2)
        assert res.value["rc"] == 0 and res.value["leftovers"] == [] and res.leftovers == []

Privileges: root (``unshare`` of net and mount namespaces, tmpfs mounts). Ray's processes get
``RAY_AUTH_MODE=token`` with a random ``RAY_AUTH_TOKEN`` per cluster and ``HOME`` inside the test's
directory (so ``~/.ray/auth_token`` of the machine is neither read nor written); every port is
explicit and distinct per node (see :class:`Ports`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent
RAY = str(BIN / "ray")

# What every Ray node process (and so every Ray worker) and every driver gets.
NODE_ENV = {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "WANDB_MODE": "offline",
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
            # `ray start --block` on SIGTERM first asks the GCS to drain the node, waiting up to 30 s
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
# Variables of the calling environment that would steer Ray, AWS clients or the token elsewhere.
_SCRUB_PREFIXES = ("RAY_", "AWS_")
_SCRUB = {"RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_TMPDIR", "TMPDIR"}
PR_SET_CHILD_SUBREAPER = 36


# =================================================================================== process helpers

def _psutil():
    try:
        import psutil
    except ImportError:  # Ray ships it in ray/thirdparty_files; find it without importing ray
        spec = importlib.util.find_spec("ray")
        if spec is None or not spec.submodule_search_locations:
            raise
        sys.path.append(str(Path(next(iter(spec.submodule_search_locations))) / "thirdparty_files"))
        import psutil
    return psutil


@dataclasses.dataclass(frozen=True)
class ProcInfo:
    pid: int
    create_time: float
    cmd: str

    def alive(self) -> bool:
        """True while this very process (same PID *and* start time) exists and is not a zombie."""
        psutil = _psutil()
        try:
            p = psutil.Process(self.pid)
            return abs(p.create_time() - self.create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def as_dict(self) -> dict:
        return {"pid": self.pid, "cmd": self.cmd}


def process_tree(pids: Iterable[int]) -> dict[int, ProcInfo]:
    """The given processes and all their descendants, alive now."""
    psutil = _psutil()
    out: dict[int, ProcInfo] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                out[p.pid] = ProcInfo(p.pid, p.create_time(), " ".join(p.cmdline())[:300])
            except psutil.Error:
                pass
    return out


def _signal_pid(info: ProcInfo, sig: int) -> None:
    if info.alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(info.pid, sig)


def netns_processes(netns: str, exclude: Iterable[int] = ()) -> list[ProcInfo]:
    """Every process whose network namespace is ``netns`` (as ``readlink /proc/PID/ns/net`` says)."""
    psutil = _psutil()
    skip = set(exclude)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/ns/net") != netns:
                continue
            p = psutil.Process(int(entry.name))
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            found.append(ProcInfo(p.pid, p.create_time(), " ".join(p.cmdline())[:300]))
        except (OSError, psutil.Error):
            pass
    return found


def _reap_children() -> None:
    """Collect exit statuses of finished children (we are a subreaper, orphans become ours)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _become_subreaper() -> bool:
    import ctypes
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def free_port_base(span: int = 1000, low: int = 20000, high: int = 50000) -> int:
    """A random port base (a multiple of 1000) in [low, high): no Ray default port is in that range
    (GCS 6379, client 10001, dashboard 8265, agent 52365, workers 10002-19999)."""
    return low + span * secrets.randbelow((high - low) // span)


def wait_port(port: int, timeout: float, host: str = "127.0.0.1", proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before port {port} opened")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")
        time.sleep(0.1)


def _started_ok(log: Path) -> bool:
    try:
        return "Ray runtime started." in Path(log).read_text(errors="replace")
    except OSError:
        return False


def interfaces() -> list[str]:
    """Network interfaces of this process's network namespace (/sys/class/net shows the host's)."""
    return sorted(name for _, name in socket.if_nameindex())


def tail(path: Path | str, n: int = 60) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"({path}: missing)"
    return "\n".join(lines[-n:])


# =================================================================================== pytest side

def unavailable_reason() -> str | None:
    """Why this machine cannot run the namespaced cluster, or None if it can (cached)."""
    global _UNAVAILABLE
    if _UNAVAILABLE is not None:
        return _UNAVAILABLE or None
    reason = ""
    if not sys.platform.startswith("linux"):
        reason = "network/mount namespaces need Linux"
    elif os.geteuid() != 0:
        reason = "needs root for unshare --net/--mount and tmpfs mounts"
    elif not shutil.which("unshare") or not shutil.which("ip"):
        reason = "needs the unshare and ip commands (util-linux, iproute2)"
    else:
        with tempfile.TemporaryDirectory(prefix="bnc-probe-") as d:
            cmd = ["unshare", "--net", "--fork", "unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'ip link set lo up && mount -t tmpfs -o size=1m probe "$0" && touch "$0/x"', d]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
                if r.returncode != 0:
                    reason = f"cannot make a net+mount namespace with a tmpfs: {(r.stderr or r.stdout).strip()}"
                elif os.path.exists(os.path.join(d, "x")):
                    reason = "tmpfs mount in a private mount namespace leaked to the host"
            except (OSError, subprocess.TimeoutExpired) as e:
                reason = f"unshare failed: {e}"
    _UNAVAILABLE = reason
    return reason or None


_UNAVAILABLE: str | None = None


def require_namespaces() -> None:
    """pytest.skip with the reason where the machine cannot run the namespaced cluster."""
    reason = unavailable_reason()
    if reason:
        import pytest
        pytest.skip(reason)


@dataclasses.dataclass
class ScenarioResult:
    value: Any            # what the scenario function returned
    seconds: float        # wall time of the whole namespaced run
    log: Path             # stdout+stderr of the namespaced process
    netns: str            # e.g. "net:[4026532178]"
    leftovers: list[dict]  # processes still in the namespace after it ended (they were killed by PID)


class ScenarioError(AssertionError):
    pass


def _remove_temp_links(target: Path) -> None:
    """Remove /tmp/bnc-* symlinks to ``target`` that a killed scenario could not remove itself."""
    for link in Path("/tmp").glob("bnc-*"):
        with contextlib.suppress(OSError):
            if link.is_symlink() and Path(os.readlink(link)) == target:
                link.unlink()


def run_scenario(func: Callable[..., Any], base: Path | str, *, timeout: float = 300,
                 env: Mapping[str, str] | None = None, **kwargs: Any) -> ScenarioResult:
    """Run ``func(ctx, **kwargs)`` in a fresh network namespace (``unshare --net --fork``), return its value.

    ``func`` must be a module-level function of an importable file (a test module); the module is
    loaded afresh inside the namespace, so only ``kwargs`` (JSON) and ``base`` cross over, and only the
    JSON-serialisable return value comes back. On timeout the namespaced process gets SIGTERM (it tears
    its cluster down), then everything left in the namespace SIGKILL. Raises ScenarioError with the
    traceback and the log tail if the function raised or the run timed out.
    """
    base = Path(base).resolve()
    sdir = base / "scenario"
    sdir.mkdir(parents=True, exist_ok=True)
    source = inspect.getsourcefile(func)
    if source is None or "<" in func.__qualname__:
        raise ValueError("func must be a module-level function defined in a file")
    request = {"file": str(Path(source).resolve()), "func": func.__qualname__, "kwargs": kwargs,
               "base": str(base), "result": str(sdir / "result.json"), "netns_file": str(sdir / "netns")}
    req_path = sdir / "request.json"
    req_path.write_text(json.dumps(request))
    for p in (sdir / "result.json", sdir / "netns"):
        p.unlink(missing_ok=True)
    log = sdir / "log.txt"
    full_env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    full_env.update(env or {})
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["unshare", "--net", "--kill-child=SIGTERM", PYTHON, "-u", str(Path(__file__).resolve()), "--inner",
             str(req_path)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
            start_new_session=True, cwd=str(base))
    netns = ""
    timed_out = False
    try:
        deadline = t0 + timeout
        while proc.poll() is None:
            if not netns and (sdir / "netns").exists():
                netns = (sdir / "netns").read_text().strip()
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.2)
        if not netns and (sdir / "netns").exists():
            netns = (sdir / "netns").read_text().strip()
        if timed_out:
            # unshare forwards nothing; --kill-child makes the scenario process get SIGTERM when unshare dies.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            end = time.monotonic() + 60
            while netns and netns_processes(netns) and time.monotonic() < end:
                time.sleep(0.5)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        leftovers = []
        if netns:
            left = netns_processes(netns)
            for info in left:
                _signal_pid(info, signal.SIGKILL)
            leftovers = [i.as_dict() for i in left]
        _remove_temp_links(base / "cluster" / "ray")
    seconds = time.monotonic() - t0
    if timed_out:
        raise ScenarioError(f"scenario {func.__qualname__} ran past {timeout} s; log tail:\n{tail(log, 120)}")
    try:
        result = json.loads((sdir / "result.json").read_text())
    except (OSError, ValueError):
        raise ScenarioError(f"scenario {func.__qualname__} left no result (exit {proc.returncode}); "
                            f"log tail:\n{tail(log, 120)}") from None
    if not result.get("ok"):
        raise ScenarioError(f"scenario {func.__qualname__} failed inside the namespace:\n{result.get('traceback')}"
                            f"\n--- log tail:\n{tail(log, 80)}")
    return ScenarioResult(value=result["value"], seconds=seconds, log=log, netns=netns, leftovers=leftovers)


# =================================================================================== inside the namespace

@dataclasses.dataclass
class ScenarioContext:
    base: Path        # the test's tmp dir (the same path inside and outside the namespace)
    netns: str
    t0: float = dataclasses.field(default_factory=time.monotonic)

    def log(self, msg: str) -> None:
        """A time-stamped line in the scenario log (and the pytest failure message's tail)."""
        print(f"[scenario {time.monotonic() - self.t0:7.2f}s] {msg}", flush=True)


class _Terminated(BaseException):
    pass


def _inner_main(req_path: str) -> int:
    """Entry point inside ``unshare --net``: bring lo up, run the scenario function, write its result."""
    req = json.loads(Path(req_path).read_text())
    netns = os.readlink("/proc/self/ns/net")
    Path(req["netns_file"]).write_text(netns)

    def on_term(signum, frame):
        raise _Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    result: dict[str, Any] = {"ok": False}
    try:
        if interfaces() != ["lo"]:
            raise RuntimeError(f"not in a fresh network namespace: interfaces {interfaces()}")
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        _become_subreaper()
        for p in (str(Path(req["file"]).parent), str(TESTS_DIR), str(REPO_ROOT)):
            if p not in sys.path:
                sys.path.insert(0, p)
        spec = importlib.util.spec_from_file_location(Path(req["file"]).stem, req["file"])
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        func = module
        for part in req["func"].split("."):
            func = getattr(func, part)
        ctx = ScenarioContext(base=Path(req["base"]), netns=netns)
        value = func(ctx, **req["kwargs"])
        result = {"ok": True, "value": json.loads(json.dumps(value, default=str))}
    except BaseException:
        result = {"ok": False, "traceback": traceback.format_exc()}
    finally:
        Path(req["result"]).write_text(json.dumps(result))
        _reap_children()
    return 0 if result["ok"] else 1


# ----------------------------------------------------------------------------------- cluster

@dataclasses.dataclass(frozen=True)
class Ports:
    """The ports of one node: ``base`` + fixed offsets, so nodes (1000 apart) never collide."""
    base: int

    gcs = property(lambda s: s.base + 0)               # head only: ray start --port
    dashboard = property(lambda s: s.base + 1)         # head only, when the dashboard is on
    client_server = property(lambda s: s.base + 2)     # head only
    node_manager = property(lambda s: s.base + 3)
    object_manager = property(lambda s: s.base + 4)
    metrics_export = property(lambda s: s.base + 5)
    agent_listen = property(lambda s: s.base + 6)      # dashboard agent HTTP
    agent_grpc = property(lambda s: s.base + 7)        # dashboard agent gRPC (metrics agent)
    runtime_env_agent = property(lambda s: s.base + 8)
    s3 = property(lambda s: s.base + 9)                # head block only: moto
    autoscaler_metrics = property(lambda s: s.base + 10)  # head only (AUTOSCALER_METRIC_PORT, default 44217)
    dashboard_metrics = property(lambda s: s.base + 11)   # head only (DASHBOARD_METRIC_PORT, default 44227)
    min_worker = property(lambda s: s.base + 100)
    max_worker = property(lambda s: s.base + 399)      # 300 worker processes per node at most


@dataclasses.dataclass
class Node:
    name: str           # "head", "worker-1", ...
    index: int          # 0 = head
    cpus: float
    ports: Ports
    temp_dir: str       # --temp-dir (short path through a symlink into the test dir)
    log: Path
    proc: subprocess.Popen | None = None
    node_id: str | None = None   # hex, once joined
    gpus: float = 0              # advertised only (Ray trusts --num-gpus; no device is needed)
    resources: dict = dataclasses.field(default_factory=dict)   # custom resources (ray start --resources)

    @property
    def pid(self) -> int:
        """PID of this node's ``ray start --block`` (the process group leader of the node)."""
        assert self.proc is not None
        return self.proc.pid

    def raylet_pid(self) -> int:
        for info in process_tree([self.pid]).values():
            if "/raylet/raylet " in info.cmd + " ":
                return info.pid
        raise RuntimeError(f"{self.name}: no raylet process under PID {self.pid}\n{tail(self.log)}")

    def session_dir(self) -> Path | None:
        latest = Path(self.temp_dir) / "session_latest"
        return latest.resolve() if latest.exists() else None


_WORKER_WRAPPER = r"""
set -e
size="$1"; shift
while [ "$1" != "--" ]; do
    mount -t tmpfs -o "size=$size,mode=0777" bnc-private "$1"
    if [ -n "$(ls -A "$1")" ]; then echo "bnc: private dir $1 is not empty" >&2; exit 97; fi
    echo "bnc: private empty tmpfs over $1"
    shift
done
shift
exec "$@"
"""


class Cluster:
    """A Ray head, ``workers`` worker nodes and optionally a moto S3 server, inside the current namespace.

    Must run inside a fresh network namespace (:func:`run_scenario`); refuses otherwise. Layout under
    ``base``: ``runs/`` (``run_parent``: where drivers put run directories; private tmpfs on every worker),
    ``cluster/`` (``logs/``; ``home/`` and ``tmp/``, private on workers; ``shared/``, visible on every node
    for test control such as marker files; Ray's temp dirs ``ray/<node>``, reached through a short symlink
    ``/tmp/bnc-XXXX`` because Ray's socket paths must stay under 108 bytes).

    Arguments: ``workers`` (count), ``worker_cpus`` (one number or one per worker), ``head_cpus`` (0: no
    trial runs on the head), ``worker_gpus`` / ``worker_resources`` (advertised GPUs and custom resources such
    as ``{"accelerator_type:H100": 1}``, one value or one per worker; Ray does not check devices exist),
    ``s3`` (start moto and create ``bucket``), ``private_dirs`` (extra paths made private tmpfs on workers;
    ``run_parent``, ``$HOME`` and ``$TMPDIR`` (``cluster/tmp``) always are), ``object_store_mb``,
    ``memory_mb`` (advertised per node), ``dashboard``, ``env`` (extra variables for nodes and drivers),
    ``head_env`` (only for the head: e.g. ``RAY_health_check_period_ms``), ``token`` (random by default),
    ``port_base``, ``join_timeout``, ``tmpfs_size``.

    A scenario process should use one Cluster at a time: on close it also ends orphaned processes of the
    sessions it started.
    """

    def __init__(self, base: Path | str, *, workers: int = 2, worker_cpus: float | Sequence[float] = 1,
                 head_cpus: float = 0, worker_gpus: float | Sequence[float] = 0,
                 worker_resources: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
                 s3: bool = False, bucket: str = "bnsweep",
                 private_dirs: Sequence[Path | str] = (), object_store_mb: int = 100,
                 memory_mb: int = 2048, dashboard: bool = False, env: Mapping[str, str] | None = None,
                 head_env: Mapping[str, str] | None = None, token: str | None = None,
                 port_base: int | None = None, join_timeout: float = 60, tmpfs_size: str = "512m"):
        self.base = Path(base).resolve()
        self.run_parent = self.base / "runs"
        self.dir = self.base / "cluster"
        self.home = self.dir / "home"
        self.logs = self.dir / "logs"
        cpus = [worker_cpus] * workers if isinstance(worker_cpus, int | float) else list(worker_cpus)
        gpus = [worker_gpus] * workers if isinstance(worker_gpus, int | float) else list(worker_gpus)
        if worker_resources is None or isinstance(worker_resources, Mapping):
            res = [dict(worker_resources or {}) for _ in range(workers)]
        else:
            res = [dict(r) for r in worker_resources]
        if not len(cpus) == len(gpus) == len(res) == workers:
            raise ValueError("worker_cpus / worker_gpus / worker_resources: one value, or one per worker")
        self.token = token or secrets.token_hex(32)
        self.port_base = port_base or free_port_base(span=1000, high=50000 - 1000 * (workers + 1))
        self.s3_enabled, self.bucket = s3, bucket
        self.tmp = self.dir / "tmp"   # TMPDIR of every node and driver
        self.shared = self.dir / "shared"   # deliberately visible on every node: for test control only
        self.private_dirs = [self.run_parent, self.home, self.tmp, *map(Path, private_dirs)]
        self.object_store_bytes = object_store_mb * 2**20
        self.memory_bytes = memory_mb * 2**20
        self.dashboard = dashboard
        self.extra_env = dict(env or {})
        self.head_env = dict(head_env or {})
        self.join_timeout = join_timeout
        self.tmpfs_size = tmpfs_size
        self._tmp_link = ""
        self.nodes: list[Node] = []
        self._head_cpus = head_cpus
        self._worker_cpus = cpus
        self._worker_gpus = gpus
        self._worker_resources = res
        self._started: list[tuple[str, subprocess.Popen]] = []   # every process we started (session leaders)
        self._known: dict[int, ProcInfo] = {}                     # them and every descendant ever seen
        self.leftovers: list[dict] = []                           # filled by close()
        self.timings: dict[str, float] = {}
        self.s3_proc: subprocess.Popen | None = None
        self._closed = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ addresses and environments
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.nodes[0].ports.gcs}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{Ports(self.port_base).s3}"

    @property
    def temp_root(self) -> str:
        """Short path (a symlink to ``cluster/ray``) under which each node has its Ray temp dir."""
        return self._tmp_link

    @property
    def python(self) -> str:
        return PYTHON

    def s3_env(self) -> dict[str, str]:
        """What boto3, s3fs and pyarrow's S3FileSystem need to use the moto server (pyarrow >= 15 reads
        AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL; the scheme comes from the URL)."""
        if not self.s3_enabled:
            return {}
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.s3_endpoint, "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def base_env(self, *, token: bool = True) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB and not k.startswith(_SCRUB_PREFIXES)}
        env.update(NODE_ENV)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env["HOME"] = str(self.home)
        env["TMPDIR"] = str(self.tmp)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR)]
                                            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        # the autoscaler monitor and the dashboard (head only) export metrics on fixed ports otherwise
        env["AUTOSCALER_METRIC_PORT"] = str(Ports(self.port_base).autoscaler_metrics)
        env["DASHBOARD_METRIC_PORT"] = str(Ports(self.port_base).dashboard_metrics)
        if token:
            env["RAY_AUTH_MODE"] = "token"
            env["RAY_AUTH_TOKEN"] = self.token
        env.update(self.s3_env())
        env.update(self.extra_env)
        return env

    def driver_env(self, *, token: bool = True, **extra: str) -> dict[str, str]:
        """Environment for a driver on the head node: ``RAY_ADDRESS``, the token, AWS variables."""
        env = self.base_env(token=token)
        env["RAY_ADDRESS"] = self.address
        env.update(extra)
        return env

    def pyarrow_s3(self):
        """A pyarrow S3FileSystem on the moto server (explicit endpoint; no environment needed)."""
        from pyarrow import fs
        return fs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                               endpoint_override=f"127.0.0.1:{Ports(self.port_base).s3}", scheme="http",
                               allow_bucket_creation=True)

    # ------------------------------------------------------------------ start
    def __enter__(self) -> Cluster:
        try:
            self.start_all()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self, name: str, cmd: Sequence[str], env: Mapping[str, str], log: Path,
               cwd: Path | None = None) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._closed:
                raise RuntimeError("cluster is closed")
            with open(log, "ab") as out:
                proc = subprocess.Popen(list(cmd), env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        cwd=str(cwd or self.base))
            self._started.append((name, proc))
        self._remember()
        return proc

    def _remember(self) -> None:
        """Record every process we started and all their descendants alive now (for teardown)."""
        with self._lock:
            self._known.update(process_tree([p.pid for _, p in self._started if p.poll() is None]))

    def start_all(self) -> None:
        if interfaces() != ["lo"]:
            raise RuntimeError(f"Cluster must run in a fresh network namespace (run_scenario); interfaces "
                               f"{interfaces()}")
        t0 = time.monotonic()
        for d in (self.run_parent, self.home, self.tmp, self.shared, self.logs, self.dir / "ray"):
            d.mkdir(parents=True, exist_ok=True)
        # Ray's sockets live in <temp_dir>/session_*/sockets and must fit in 107 bytes: a short symlink.
        self._tmp_link = tempfile.mktemp(prefix="bnc-", dir="/tmp")
        os.symlink(self.dir / "ray", self._tmp_link)
        # this process may act as a driver / GCS client (Cluster.connect, nodes()): same token as the nodes
        for k in list(os.environ):
            if k in _SCRUB or k.startswith(_SCRUB_PREFIXES):
                del os.environ[k]
        os.environ.update({k: v for k, v in self.base_env().items() if k != "PATH"})
        if self.s3_enabled:
            self._start_s3()
        self.nodes = [Node("head", 0, self._head_cpus, Ports(self.port_base), f"{self._tmp_link}/head",
                           self.logs / "head.log")]
        for i, cpus in enumerate(self._worker_cpus, start=1):
            self.nodes.append(Node(f"worker-{i}", i, cpus, Ports(self.port_base + 1000 * i),
                                   f"{self._tmp_link}/worker-{i}", self.logs / f"worker-{i}.log",
                                   gpus=self._worker_gpus[i - 1], resources=self._worker_resources[i - 1]))
        self._start_node(self.nodes[0])
        wait_port(self.nodes[0].ports.gcs, 60, proc=self.nodes[0].proc)
        self.timings["gcs_up_s"] = round(time.monotonic() - t0, 2)
        for node in self.nodes[1:]:
            self._start_node(node)
        self.wait_nodes_alive([n.name for n in self.nodes], timeout=self.join_timeout)
        self._remember()
        self.timings["start_s"] = round(time.monotonic() - t0, 2)

    def ray_start_args(self, node: Node, *, address: str | None = None) -> list[str]:
        p = node.ports
        args = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--node-name={node.name}",
                f"--temp-dir={node.temp_dir}", f"--num-cpus={node.cpus:g}", f"--num-gpus={node.gpus:g}",
                f"--object-store-memory={self.object_store_bytes}", f"--memory={self.memory_bytes}",
                f"--node-manager-port={p.node_manager}", f"--object-manager-port={p.object_manager}",
                f"--min-worker-port={p.min_worker}", f"--max-worker-port={p.max_worker}",
                f"--metrics-export-port={p.metrics_export}", f"--dashboard-agent-listen-port={p.agent_listen}",
                f"--dashboard-agent-grpc-port={p.agent_grpc}", f"--runtime-env-agent-port={p.runtime_env_agent}",
                "--disable-usage-stats", "--log-style=record", "--log-color=false"]
        if node.resources:
            args.append(f"--resources={json.dumps(node.resources)}")
        if node.index == 0:
            args += ["--head", f"--port={p.gcs}", f"--ray-client-server-port={p.client_server}",
                     f"--include-dashboard={'true' if self.dashboard else 'false'}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={p.dashboard}"]
        else:
            args += [f"--address={address or self.address}"]
        return args

    def _start_node(self, node: Node, *, env: Mapping[str, str] | None = None) -> None:
        env = dict(env if env is not None else self.base_env())
        cmd = self.ray_start_args(node)
        if node.index == 0:
            env.update(self.head_env)
        else:
            cmd = self.worker_wrapper(cmd)
        node.proc = self._spawn(node.name, cmd, env, node.log)

    def worker_wrapper(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` in a new mount namespace with private empty tmpfs over the private dirs (and /tmp)."""
        private = [str(p) for p in self.private_dirs]
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _WORKER_WRAPPER, "bnc-wrapper",
                self.tmpfs_size, *private, "--", *cmd]

    def _start_s3(self) -> None:
        port = Ports(self.port_base).s3
        server = BIN / "moto_server"
        cmd = [str(server)] if server.exists() else [PYTHON, "-m", "moto.server"]
        self.s3_proc = self._spawn("s3", [*cmd, "-H", "127.0.0.1", "-p", str(port)], self.base_env(),
                                   self.logs / "s3.log")
        wait_port(port, 30, proc=self.s3_proc)
        # moto checks no signature: a plain PUT creates the bucket
        req = urllib.request.Request(f"{self.s3_endpoint}/{self.bucket}", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            if r.status != 200:
                raise RuntimeError(f"creating bucket {self.bucket}: HTTP {r.status}")

    # ------------------------------------------------------------------ nodes as the GCS sees them
    def nodes_info(self) -> list[dict]:
        """All nodes the GCS knows (alive and dead): node_id, name, state, resources, is_head."""
        from ray._raylet import GcsClient
        from ray.core.generated import gcs_pb2
        client = GcsClient(address=self.address)
        infos = client.get_all_node_info(timeout=10)
        out = []
        for node_id, info in infos.items():
            out.append({"node_id": node_id.hex() if hasattr(node_id, "hex") else str(node_id),
                        "name": info.node_name, "state": gcs_pb2.GcsNodeInfo.GcsNodeState.Name(info.state),
                        "is_head": info.is_head_node, "resources": dict(info.resources_total),
                        "temp_dir": info.temp_dir, "end_time_ms": info.end_time_ms,
                        "death": str(info.death_info).strip()})
        return out

    def wait_nodes_alive(self, names: Sequence[str], timeout: float = 60) -> float:
        t0 = time.monotonic()
        while True:
            try:
                alive = {n["name"]: n for n in self.nodes_info() if n["state"] == "ALIVE"
                         and n["temp_dir"] in {m.temp_dir for m in self.nodes}}
            except Exception:   # GCS not answering yet
                alive = {}
            for node in self.nodes:
                if node.name in alive:
                    node.node_id = alive[node.name]["node_id"]
            # ALIVE in the GCS comes before `ray start` has finished starting the node (agents): a node
            # SIGTERMed then can hang in its start-up, so also wait for its "Ray runtime started."
            if all(n in alive for n in names) and all(
                    _started_ok(node.log) for node in self.nodes if node.name in names and node.proc is not None):
                return time.monotonic() - t0
            for node in self.nodes:
                if node.name in names and node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(f"{node.name} exited with {node.proc.returncode} before joining:\n"
                                       f"{tail(node.log)}")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"nodes {sorted(set(names) - set(alive))} not alive after {timeout} s")
            time.sleep(0.25)

    def wait_node_dead(self, index: int, timeout: float = 120) -> float:
        """Seconds until the GCS reports node ``index`` DEAD (polling every 0.1 s)."""
        node = self.nodes[index]
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            for n in self.nodes_info():
                if n["node_id"] == node.node_id and n["state"] == "DEAD":
                    return time.monotonic() - t0
            time.sleep(0.1)
        raise TimeoutError(f"{node.name} still not DEAD after {timeout} s")

    def add_worker(self, cpus: float = 1, *, gpus: float = 0, resources: Mapping[str, float] | None = None,
                   wait: bool = True, token: bool = True, env: Mapping[str, str] | None = None) -> Node:
        """Start one more worker node (a new machine: fresh mount namespace, empty private dirs), named
        ``worker-<n>``; ``token=False`` starts it without the token (it must be refused: don't wait)."""
        i = len(self.nodes)
        node = Node(f"worker-{i}", i, cpus, Ports(self.port_base + 1000 * i), f"{self._tmp_link}/worker-{i}",
                    self.logs / f"worker-{i}.log", gpus=gpus, resources=dict(resources or {}))
        self.nodes.append(node)
        full = self.base_env(token=token)
        full.update(env or {})
        self._start_node(node, env=full)
        if wait:
            self.wait_nodes_alive([node.name], timeout=self.join_timeout)
        return node

    def restart_node(self, index: int, *, wait: bool = True) -> Node:
        """Start worker ``index`` again after it died (same name and ports, new node ID, empty private dirs)."""
        node = self.nodes[index]
        if node.proc is not None and node.proc.poll() is None:
            raise RuntimeError(f"{node.name} is still running")
        node.node_id = None
        node.log.write_text("")   # the old "Ray runtime started." must not count
        self._start_node(node)
        if wait:
            self.wait_nodes_alive([node.name], timeout=self.join_timeout)
        return node

    # ------------------------------------------------------------------ failures
    def kill_raylet(self, index: int, sig: int = signal.SIGKILL) -> int:
        """Kill node ``index``'s raylet by PID (its ``ray start --block`` then ends the node's other
        processes); returns the PID."""
        node = self.nodes[index]
        self._remember()
        pid = node.raylet_pid()
        os.kill(pid, sig)
        return pid

    def kill_node(self, index: int) -> list[int]:
        """SIGKILL every process of node ``index`` at once (the machine is gone); returns the PIDs."""
        node = self.nodes[index]
        self._remember()
        tree = process_tree([node.pid])
        for info in tree.values():
            _signal_pid(info, signal.SIGKILL)
        return sorted(tree)

    def node_index(self, node_id_or_name: str) -> int:
        """Index in ``nodes`` of the node with this hex node ID or name."""
        for node in self.nodes:
            if node_id_or_name in (node.node_id, node.name):
                return node.index
        raise KeyError(f"no node {node_id_or_name!r} among {[(n.name, n.node_id) for n in self.nodes]}")

    def freeze_node(self, index: int) -> list[int]:
        """SIGSTOP every process of node ``index``: a hung or cut-off machine (its connections stay open, so
        peers see no reset, only silence). Teardown still ends them (SIGKILL works on stopped processes)."""
        node = self.nodes[index]
        self._remember()
        tree = process_tree([node.pid])
        for info in tree.values():
            _signal_pid(info, signal.SIGSTOP)
        return sorted(tree)

    def kill_raylet_when(self, marker: Path | str, index: int | None = None, *, timeout: float = 300,
                         delay: float = 0.0) -> threading.Thread:
        """In a background thread: when ``marker`` exists, wait ``delay`` s and kill a node's raylet by PID --
        node ``index``, or (``index=None``) the node whose hex ID or name the marker file holds (e.g. written
        by a driver-side Tune callback from the reported node ID). ``thread.result`` becomes
        {"index", "pid", "killed_at" (time.time())} or {"error"}; ``thread.join()`` to wait."""
        def run():
            try:
                self.wait_for_file(marker, timeout)
                i = index if index is not None else self.node_index(Path(marker).read_text().strip())
                time.sleep(delay)
                pid = self.kill_raylet(i)
                thread.result = {"index": i, "pid": pid, "killed_at": time.time()}
            except Exception as e:
                thread.result = {"error": repr(e)}
        thread = threading.Thread(target=run, daemon=True)
        thread.result = None
        thread.start()
        return thread

    # ------------------------------------------------------------------ commands
    def start(self, cmd: Sequence[str], *, name: str = "cmd", env: Mapping[str, str] | None = None,
              token: bool = True, cwd: Path | None = None, log: Path | None = None) -> Command:
        """Start ``cmd`` (a driver) on the head node, in its own session; its output goes to ``log``."""
        full = self.driver_env(token=token)
        full.update(env or {})
        log = log or self.logs / f"{name}-{len(self._started)}.log"
        return Command(self, self._spawn(name, cmd, full, log, cwd=cwd), log)

    def run(self, cmd: Sequence[str], *, timeout: float = 300, **kw) -> Command:
        """``start`` and wait; returns the finished Command (``rc``, ``output``)."""
        c = self.start(cmd, **kw)
        c.wait(timeout)
        return c

    def run_python(self, code: str, *, timeout: float = 300, **kw) -> Command:
        """Run ``python -c code`` as a driver; ``Command.json()`` parses the last line it printed."""
        return self.run([PYTHON, "-c", code], timeout=timeout, **kw)

    def on_worker(self, index: int, cmd: Sequence[str], *, timeout: float = 60, name: str = "on-worker") -> Command:
        """Run ``cmd`` as if on worker ``index``'s machine: in that node's mount namespace (nsenter)."""
        node = self.nodes[index]
        full = ["nsenter", f"--mount=/proc/{node.pid}/ns/mnt", "--", *cmd]
        log = self.logs / f"{name}-{len(self._started)}.log"
        c = Command(self, self._spawn(name, full, self.base_env(), log), log)
        c.wait(timeout)
        return c

    def connect(self, **kw):
        """``ray.init`` this (scenario) process as a driver on the head; ``close()`` shuts it down."""
        import ray
        return ray.init(address=self.address, log_to_driver=False, **kw)

    @staticmethod
    def wait_for_file(path: Path | str, timeout: float = 300, poll: float = 0.1) -> float:
        t0 = time.monotonic()
        while not Path(path).exists():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{path} did not appear within {timeout} s")
            time.sleep(poll)
        return time.monotonic() - t0

    # ------------------------------------------------------------------ teardown
    def close(self, grace: float = 10) -> list[dict]:
        """End every process this cluster started and every descendant of them, by process group and then
        by PID; return (and keep in ``leftovers``) the ones that survived (none expected)."""
        with self._lock:
            if self._closed:
                return self.leftovers
            self._closed = True
        t0 = time.monotonic()
        with contextlib.suppress(Exception):
            import ray
            if ray.is_initialized():
                ray.shutdown()
        self._remember()
        known = dict(self._known)
        # drivers, then the worker nodes, then the head, then S3, each stage given `grace` s after SIGTERM to
        # its process groups (each a session we made with setsid); then SIGKILL by PID to whatever is left.
        stages = [[p for n, p in self._started if n not in {"head", "s3"} and not n.startswith("worker-")],
                  [p for n, p in self._started if n.startswith("worker-")],
                  [p for n, p in self._started if n == "head"], [p for n, p in self._started if n == "s3"]]
        stubborn: list[ProcInfo] = []
        for stage in stages:
            group_pids = set()
            for proc in stage:
                group_pids.update(process_tree([proc.pid]))
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGTERM)
            members = [known[pid] for pid in group_pids if pid in known]
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(i.alive() for i in members):
                _reap_children()
                time.sleep(0.1)
            for info in members:
                if info.alive():
                    stubborn.append(info)
                    _signal_pid(info, signal.SIGKILL)
        for info in known.values():   # processes that had left their parents' trees
            if info.alive():
                stubborn.append(info)
                _signal_pid(info, signal.SIGKILL)
        self.timings["sigkilled"] = [i.cmd[:120] for i in stubborn]
        for _, proc in self._started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        time.sleep(0.2)
        _reap_children()
        # anything that appeared after the last snapshot is still our descendant (we are a subreaper) and,
        # unless it called setsid itself, in one of the sessions we made
        sessions = {p.pid for _, p in self._started}
        late = {}
        for pid, info in process_tree([os.getpid()]).items():
            with contextlib.suppress(OSError):
                if pid != os.getpid() and os.getsid(pid) in sessions:
                    late[pid] = info
        for info in late.values():
            _signal_pid(info, signal.SIGKILL)
        _reap_children()
        self.leftovers = [i.as_dict() for i in [*known.values(), *late.values()] if i.alive()]
        self.timings["teardown_s"] = round(time.monotonic() - t0, 2)
        self.timings["processes_tracked"] = len(known)
        if self._tmp_link:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp_link)
        return self.leftovers


class Command:
    """A process started by :meth:`Cluster.start` (a session of its own)."""

    def __init__(self, cluster: Cluster, proc: subprocess.Popen, log: Path):
        self.cluster, self.proc, self.log = cluster, proc, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def rc(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"{self.proc.args!r} ran past {timeout} s:\n{tail(self.log)}") from None
        finally:
            self.cluster._remember()

    def kill(self, sig: int = signal.SIGKILL, group: bool = True) -> None:
        """Signal the command (``group``: its whole process group, which we created)."""
        self.cluster._remember()
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                os.kill(self.proc.pid, sig)

    @property
    def output(self) -> str:
        return Path(self.log).read_text(errors="replace")

    def json(self) -> Any:
        """The last line of output that parses as JSON."""
        for line in reversed(self.output.splitlines()):
            line = line.strip()
            if line.startswith(("{", "[")):
                with contextlib.suppress(ValueError):
                    return json.loads(line)
        raise ValueError(f"no JSON line in the output of {self.proc.args!r}:\n{tail(self.log)}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--inner":
        sys.path.insert(0, str(TESTS_DIR))
        import cluster as _cluster  # the module object the scenario's `from cluster import ...` gets
        sys.exit(_cluster._inner_main(sys.argv[2]))
    print(__doc__)
    sys.exit(2)
