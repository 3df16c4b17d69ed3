"""Shared benchmark harness: contenders measured interleaved (A, B, A, B, ...) in long-lived worker
processes, so every ratio compares measurements taken seconds apart on the same (noisy) machine.

A *worker* is a subprocess (``python bench/_harness.py worker``) with its own Keras backend; it builds
its contenders once (model, compile, one warm-up epoch so tracing/compilation is excluded), then
answers ``{"cmd": "epoch", "name": ...}`` lines on stdin with one JSON line: images trained, wall
seconds and process CPU seconds of that epoch (training only, no validation). The parent sends the
commands round-robin, so contenders living in different processes (TensorFlow vs JAX) are still
interleaved. ``{"cmd": "epoch_all"}`` sent to several workers at once runs them concurrently
(packing, several trials sharing a GPU).

Ratios are reported as the median over rounds of the per-round ratio (each round measures every
contender once, back to back), alongside the median images/s of each contender.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ROOT.parent / "shared" / "data" / "cifar10-subset-train.npz"

# ------------------------------------------------------------------ machine description


def cpu_info() -> dict[str, Any]:
    """CPU model, cores, clock (from /proc/cpuinfo) and the fp32 peak we assume for it."""
    model, mhz, flags = platform.processor() or platform.machine(), None, ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name":
                model = value
            elif key == "cpu MHz" and mhz is None:
                mhz = float(value)
            elif key == "flags" and not flags:
                flags = value
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    avx512 = "avx512f" in flags.split()
    # Assumption (stated in RESULTS.md): 2 FMA units per core, each 16 fp32 lanes (AVX-512) or 8 (AVX2),
    # 2 flops per FMA, at the clock /proc/cpuinfo reports (no turbo visible inside the VM).
    lanes = 16 if avx512 else 8
    peak = None if mhz is None else cores * (mhz / 1000.0) * 2 * lanes * 2
    return {"model": model, "cores": cores, "mhz": mhz, "avx512": avx512, "peak_fp32_gflops": peak}


def gpu_info() -> list[dict[str, str]]:
    """The NVIDIA GPUs ``nvidia-smi`` lists (name, memory, driver); empty without one."""
    import shutil

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [dict(zip(("name", "memory", "driver"), (x.strip() for x in line.split(",")), strict=False))
            for line in out.strip().splitlines()]


def machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("tensorflow", "keras", "jax", "jaxlib", "jax-cuda12-plugin", "ray", "optuna", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            versions[pkg] = version(pkg)
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "cpu": cpu_info(),
            "python": platform.python_version(), "versions": versions, "loadavg": os.getloadavg(),
            "gpus": gpu_info()}


# ------------------------------------------------------------------ contenders (run inside a worker)


def _trial_config(c: dict[str, Any]) -> dict[str, Any]:
    data = dict(vars(_data_config(c.get("data_path"))))
    data.update(augment=c.get("augment", "paper"), normalize=c.get("normalize", True))
    cfg = {
        "model": {"depth": c.get("depth", 20), "width": c.get("width", 1)},
        "regime": c.get("regime", "all"), "batch_size": c.get("batch_size", 128),
        "epochs": 10_000, "steps_per_epoch": c.get("steps", 10), "seed": c.get("seed", 0),
        "jit_compile": c.get("jit", "auto"),
        "precision": c.get("precision") or "float32",
        "data": data,
    }
    if "lr" in c:
        cfg["lr"] = c["lr"]
    return cfg


class TrialContender:
    """``bnsweep.engine.trial.TrialRun.train_epoch`` (the real thing), optionally with Keras' stock BN."""

    def __init__(self, c: dict[str, Any], data: Any) -> None:
        from bnsweep.engine.trial import TrialRun

        self.run = TrialRun(_trial_config(c), data=data, threads=c.get("threads"))
        from bnsweep.engine.batchnorm import use_fast_batchnorm, use_stock_batchnorm

        if c.get("bn") == "stock":  # Keras' own BatchNormalization (autodiff through generic ops)
            use_stock_batchnorm(self.run.model)
        elif c.get("bn") == "ops":  # bnsweep's closed form in keras.ops, no backend kernel
            use_fast_batchnorm(self.run.model, backend_kernel=False)
        if c.get("feed") == "fit":  # the pre-#6 data feeding: model.fit on NumPy arrays (tf.data)
            self.run._feed_batches = False
        self.images = self.run.steps_per_epoch * self.run.config.batch_size
        self.jit = self.run.model.jit_compile

    def epoch(self) -> int:
        self.run.train_epoch()
        return self.images


class NotebookContender:
    """The notebooks' way: plain ``model.fit`` on a host-side ``tf.data`` pipeline — float32 images
    divided by 255 on the host, per-image ``dataset.map`` with ``tf.image`` pad-to-40 + random 32-crop
    + random brightness ±0.5 + clip, shuffle, batch, prefetch; Keras' stock BatchNormalization, no XLA.
    Same network, regime, optimizer, batch size and images per epoch as the TrialContender."""

    def __init__(self, c: dict[str, Any], data: Any) -> None:
        import keras
        import tensorflow as tf

        from bnsweep.engine.batchnorm import use_stock_batchnorm
        from bnsweep.engine.models import build_resnet
        from bnsweep.engine.optimizers import make_optimizer
        from bnsweep.engine.regimes import apply_regime
        from bnsweep.spec.config import TrialConfig

        cfg = TrialConfig.from_dict(_trial_config(c))
        keras.utils.set_random_seed(cfg.seed)
        net = build_resnet(cfg.model, seed=cfg.seed)
        use_stock_batchnorm(net)  # (build_resnet already gives stock BN; kept explicit)
        apply_regime(net, cfg.model, cfg.regime, seed=cfg.seed)
        steps = cfg.steps_per_epoch or 1
        net.compile(optimizer=make_optimizer(cfg, steps_per_epoch=steps, no_decay=[]),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                    jit_compile=bool(c.get("notebook_jit", False)))
        x = data.x_train.astype("float32") / 255.0  # the notebooks normalized on the host

        def augment(image: Any, label: Any) -> tuple[Any, Any]:
            image = tf.image.resize_with_crop_or_pad(image, 40, 40)
            image = tf.image.random_crop(image, size=[32, 32, 3])
            image = tf.image.random_brightness(image, max_delta=0.5)
            return tf.clip_by_value(image, 0.0, 1.0), label

        ds = tf.data.Dataset.from_tensor_slices((x, data.y_train)).shuffle(len(x), seed=cfg.seed)
        self.ds = (ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(cfg.batch_size)
                   .prefetch(tf.data.AUTOTUNE).take(steps))
        self.model = net
        self.images = steps * cfg.batch_size
        self.jit = bool(c.get("notebook_jit", False))

    def epoch(self) -> int:
        self.model.fit(self.ds, epochs=1, verbose=0)
        return self.images


class ReplicasContender:
    """N seeds of one configuration as N TrialRuns, each trained one epoch in turn — how
    ``bnsweep.sweep.trainable`` trains the replicates of a configuration in lockstep."""

    def __init__(self, c: dict[str, Any], data: Any) -> None:
        self.parts = [TrialContender({**c, "seed": s}, data) for s in range(c.get("replicas", 2))]
        self.images = sum(p.images for p in self.parts)
        self.jit = self.parts[0].jit

    def epoch(self) -> int:
        return sum(p.epoch() for p in self.parts)


class FusedContender:
    """The same N seeds as one ``bnsweep.engine.fused_replicates.FusedTrialRun`` (one model, one step per batch)."""

    def __init__(self, c: dict[str, Any], data: Any) -> None:
        from bnsweep.engine.fused_replicates import FusedTrialRun

        n = c.get("replicas", 2)
        self.run = FusedTrialRun(_trial_config(c), seeds=list(range(n)), data=data, layout=c.get("layout", "auto"),
                                 threads=c.get("threads"))
        self.images = n * self.run.steps_per_epoch * self.run.config.batch_size
        self.jit = self.run.model.jit_compile

    def epoch(self) -> int:
        self.run.train_epoch()
        return self.images


CONTENDERS = {"trial": TrialContender, "notebook": NotebookContender, "replicas": ReplicasContender,
              "fused": FusedContender}


def _data_config(path: str | None) -> Any:
    """The benchmark's data: the shared CIFAR-10 subset, another npz, or ``synthetic:N`` (machines
    without the shared folder, e.g. a lent GPU machine)."""
    from bnsweep.spec.config import DataConfig

    path = path or str(SUBSET)
    if path.startswith("synthetic"):
        return DataConfig(source="synthetic", synthetic_size=int(path.partition(":")[2] or 5120), val_size=0)
    return DataConfig(source="npz", path=path, val_size=0)


def worker_main() -> None:
    """Protocol loop: first line {"contenders": {name: spec}, "threads": n}; then commands."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    setup = json.loads(sys.stdin.readline())
    from bnsweep.engine import backend as accelerators

    if setup.get("gpu_fraction"):  # before Keras starts the backend (several trials sharing a GPU)
        accelerators.configure_gpu_memory(setup["gpu_fraction"])
    from bnsweep.engine.data import load_data

    accelerators.configure_threads(setup.get("threads"))
    data = load_data(_data_config(setup.get("data_path")))
    contenders: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for name, spec in setup["contenders"].items():
        t0 = time.perf_counter()
        spec = {"precision": setup.get("precision"), **spec, "data_path": setup.get("data_path")}
        contenders[name] = CONTENDERS[spec.get("kind", "trial")](spec, data)
        contenders[name].epoch()  # warm-up: tracing / XLA compilation
        info[name] = {"setup_s": round(time.perf_counter() - t0, 2), "jit": getattr(contenders[name], "jit", None)}
    import keras

    _reply({"ready": True, "backend": keras.backend.backend(), "pid": os.getpid(), "info": info,
            "accelerator": accelerators.describe_accelerator()})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        names = list(contenders) if cmd["cmd"] == "epoch_all" else [cmd["name"]]
        out = {}
        for name in names:
            w0, c0 = time.perf_counter(), time.process_time()
            images = contenders[name].epoch()
            out[name] = {"images": images, "wall": time.perf_counter() - w0, "cpu": time.process_time() - c0,
                         "load": os.getloadavg()[0]}
        _reply({"results": out, "rss_peak_mb": _peak_rss_mb()})


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reply(obj: dict[str, Any]) -> None:
    out = sys.__stdout__
    assert out is not None
    out.write(json.dumps(obj) + "\n")
    out.flush()


# ------------------------------------------------------------------ parent side


class Worker:
    """One benchmark subprocess with its backend, threads and contenders."""

    def __init__(self, contenders: dict[str, dict[str, Any]], *, backend: str = "tensorflow",
                 threads: int | None = None, env: dict[str, str] | None = None, precision: str | None = None,
                 data_path: str | None = None, gpu_fraction: float | None = None,
                 deadline: float | None = None) -> None:
        full_env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
                    "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
        self.names = list(contenders)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=full_env, cwd=str(ROOT))
        self._send({"contenders": contenders, "threads": threads, "precision": precision, "data_path": data_path,
                    "gpu_fraction": gpu_fraction})
        self.ready: dict[str, Any] | None = None
        self.deadline = deadline  # time.time() after which waiting for this worker raises TimeoutError

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def _recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        if self.deadline is not None:
            import select

            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, self.deadline - time.time()))
            if not ready:
                self.proc.kill()
                raise TimeoutError(f"benchmark worker {self.names}: out of time (killed)")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.names} died (exit {self.proc.wait()}); "
                               "run it by hand to see its error: python bench/_harness.py worker")
        return json.loads(line)

    def wait_ready(self) -> dict[str, Any]:
        if self.ready is None:
            self.ready = self._recv()
        return self.ready

    def epoch(self, name: str) -> dict[str, Any]:
        self._send({"cmd": "epoch", "name": name})
        return self._recv()["results"][name]

    def start_epoch_all(self) -> None:
        self._send({"cmd": "epoch_all"})

    def finish_epoch_all(self) -> dict[str, Any]:
        return self._recv()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"cmd": "quit"})
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def interleave(workers: Iterable[Worker], rounds: int, *, log: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Every contender of every worker once per round, round-robin; returns name -> measurements."""
    workers = list(workers)
    for w in workers:
        w.wait_ready()
    order = [(w, n) for w in workers for n in w.names]
    res: dict[str, list[dict[str, Any]]] = {n: [] for _, n in order}
    for r in range(rounds):
        # alternate the order each round so no contender always follows the same one
        for w, n in (order if r % 2 == 0 else order[::-1]):
            m = w.epoch(n)
            m["ips"] = m["images"] / m["wall"]
            m["ips_cpu"] = m["images"] / m["cpu"] if m["cpu"] > 0 else float("nan")
            res[n].append(m)
        if log:
            print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {res[n][-1]['ips']:.0f}" for _, n in order)
                  + f" img/s (load {os.getloadavg()[0]:.1f})", flush=True)
    return res


def median_ips(ms: list[dict[str, Any]], key: str = "ips") -> float:
    return statistics.median(m[key] for m in ms)


def median_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str = "ips") -> float:
    """Median over rounds of a[i]/b[i] (images/s): > 1 means a is faster."""
    return statistics.median(x[key] / y[key] for x, y in zip(a, b, strict=True))


def spread(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str = "ips") -> tuple[float, float]:
    rs = sorted(x[key] / y[key] for x, y in zip(a, b, strict=True))
    return rs[0], rs[-1]


class ProcTreeMonitor:
    """Polls ``/proc`` for a process and all its descendants (Ray's raylet, GCS, dashboard, trial
    workers): the peak RSS of each (``VmHWM``), its CPU seconds (user + system, last seen), its command
    line, and the peak of their summed RSS."""

    def __init__(self, root_pid: int, interval: float = 0.25) -> None:
        import threading

        self.root, self.interval = root_pid, interval
        self.peak: dict[int, float] = {}
        self.cpu: dict[int, float] = {}
        self.cmd: dict[int, str] = {}
        self.peak_total_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _children(self) -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
        return kids

    def _loop(self) -> None:
        while not self._stop.is_set():
            kids, todo, total = self._children(), [self.root], 0.0
            while todo:
                pid = todo.pop()
                todo += kids.get(pid, [])
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    self.cpu[pid] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
                except (OSError, IndexError, ValueError):
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                hwm = float(fields.get("VmHWM", "0 kB").split()[0]) / 1024
                rss = float(fields.get("VmRSS", "0 kB").split()[0]) / 1024
                total += rss
                self.peak[pid] = max(self.peak.get(pid, 0.0), hwm)
                self.cmd.setdefault(pid, cmd.strip()[:160])
            self.peak_total_mb = max(self.peak_total_mb, total)
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        return {"peak_total_rss_mb": round(self.peak_total_mb),
                "processes": sorted(({"pid": p, "peak_rss_mb": round(m), "cpu_s": round(self.cpu.get(p, 0.0), 2),
                                      "cmd": self.cmd.get(p, "")}
                                     for p, m in self.peak.items()), key=lambda d: -d["peak_rss_mb"])}


def classify(cmd: str) -> str:
    """A short role for a process of a Ray-based sweep, from its command line."""
    for key, role in (("ImplicitFunc", "trial worker"), ("train_configuration", "trial worker"),
                      ("setup_worker.py", "trial worker"), ("default_worker.py", "idle Ray worker"),
                      ("ray-dashboard-", "dashboard module"), ("multiprocessing.forkserver", "dashboard module"),
                      ("wandb-core", "wandb-core"), ("resource_tracker", "other"),
                      ("raylet", "raylet"), ("gcs_server", "gcs"), ("dashboard/agent", "dashboard agent"),
                      ("DashboardAgent", "dashboard agent"), ("dashboard.py", "dashboard"),
                      ("runtime_env/agent", "runtime-env agent"), ("log_monitor", "log monitor"),
                      ("monitor.py", "monitor"), ("ray::IDLE", "idle worker"), ("bnsweep launch", "driver"),
                      ("-m bnsweep", "driver")):
        if key in cmd:
            return role
    return "other"


def write_json(path: str | None, obj: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=1, default=str))
        print(f"wrote {path}")


def first_epoch_main(spec: dict[str, Any]) -> None:
    """``python bench/_harness.py first-epoch '{...}'``: one TrialRun from a fresh process, timestamps
    (``time.time()``) when Keras is up, the data loaded, the model built and compiled, the first epoch done."""
    t = {"start": time.time()}
    from bnsweep.engine import backend

    if spec.get("gpu_fraction"):
        backend.configure_gpu_memory(spec["gpu_fraction"])
    backend.select_backend(os.environ.get("KERAS_BACKEND", "tensorflow"))
    t["keras"] = time.time()
    from bnsweep.engine.data import load_data
    from bnsweep.engine.trial import TrialRun

    data = load_data(_data_config(spec.get("data_path")))
    t["data"] = time.time()
    run = TrialRun(_trial_config(spec), data=data)
    t["built"] = time.time()
    m = run.train_epoch()
    t["first_epoch"] = time.time()
    _reply({"times": t, "epoch_seconds": m.seconds, "images": run.steps_per_epoch * run.config.batch_size,
            "accelerator": backend.describe_accelerator()})


def first_epoch(spec: dict[str, Any], *, backend: str, timeout: float) -> dict[str, Any]:
    """Command → first epoch: seconds from starting a fresh Python process to the end of its first training
    epoch (imports, data, build, compile and trace included), and the milestones in between."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.time()
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "first-epoch", json.dumps(spec)],
                       capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"first-epoch run failed (exit {p.returncode}): {p.stderr[-2000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    times = r.pop("times")
    return {"command_to_first_epoch_s": round(times["first_epoch"] - t0, 2),
            **{f"to_{k}_s": round(v - t0, 2) for k, v in times.items() if k != "first_epoch"}, **r}


if __name__ == "__main__" and sys.argv[1:] == ["worker"]:
    worker_main()
elif __name__ == "__main__" and sys.argv[1:2] == ["first-epoch"]:
    first_epoch_main(json.loads(sys.argv[2]))
