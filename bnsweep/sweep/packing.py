"""How many trials run at once and how many CPUs (= TensorFlow threads) each gets, when the spec leaves
``max_concurrent`` / ``resources.cpu`` unset: the driver's packing policy, per node (no Ray import).

A trial fits on a node when the node has every resource the trial needs (``trial_needs``, in Ray's
names: ``CPU``, ``GPU``, ``TPU``, ``memory``, custom ones); trials never span nodes, so 3 nodes × 2 CPUs
run 2 one-CPU trials each and no 4-CPU trial at all:

>>> nodes = [(f"w{i}", {"CPU": 2, "memory": 4e9}) for i in (1, 2, 3)]
>>> p = pack_nodes(nodes, cpu=1, configurations=10)
>>> p.concurrent, p.per_node
(6, (('w1', 2), ('w2', 2), ('w3', 2)))
>>> pack_nodes(nodes, cpu=4, configurations=10).concurrent
0
>>> default_concurrent_trials(total_cpus=2, configurations=8), default_cpus_per_trial(2, concurrent=2)
(2, 1)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Memory one CPU trial worker holds at its peak (TensorFlow, a ResNet-20, its share of the data; measured
# 1.0-1.3 GB in bench/RESULTS.md §5), with headroom: caps how many trials run at once on a small machine.
TRIAL_MEMORY_BYTES = 1_500_000_000


def default_cpus_per_trial(total_cpus: float, *, concurrent: int) -> int:
    """CPUs per trial (= TensorFlow intra-op threads) when the spec leaves ``resources.cpu`` unset.

    Fill the machine with trials before giving any trial a second thread: on the 2-core machines two
    1-thread trials at once trained 1.27-1.28× the images/s of one 2-thread trial in aggregate on a quiet
    machine (``bench/packing.py``, ``bench/RESULTS.md`` §4: small convolutions scale poorly over threads).
    ``concurrent`` is how many trials can run at once; each gets an equal whole share, at least 1, so a
    lone trial still gets every core.

    >>> default_cpus_per_trial(2, concurrent=2), default_cpus_per_trial(2, concurrent=1)
    (1, 2)
    >>> default_cpus_per_trial(16, concurrent=3), default_cpus_per_trial(4, concurrent=8)
    (5, 1)
    """
    total = max(1, int(total_cpus))
    return max(1, total // max(1, min(int(concurrent), total)))


def default_concurrent_trials(*, total_cpus: float, configurations: int, cpu: float | None = None,
                              total_gpus: float = 0, gpu: float = 0, memory_bytes: int | None = None) -> int:
    """How many trials ``launch`` runs at once when the spec leaves ``max_concurrent`` unset: one per CPU
    (or per ``cpu`` CPUs when the spec sets it), no more than the GPUs hold at ``gpu`` each, than
    ``memory_bytes`` holds at ``TRIAL_MEMORY_BYTES`` each, or than there are configurations.

    >>> default_concurrent_trials(total_cpus=2, configurations=8)
    2
    >>> default_concurrent_trials(total_cpus=16, configurations=8, total_gpus=1, gpu=0.25)
    4
    >>> default_concurrent_trials(total_cpus=64, configurations=100, memory_bytes=24 * 10**9)
    16
    """
    n = max(1, int(total_cpus // cpu) if cpu else int(total_cpus))
    if gpu:
        n = min(n, max(1, int(total_gpus // gpu)))
    if memory_bytes:
        n = min(n, max(1, memory_bytes // TRIAL_MEMORY_BYTES))
    return max(1, min(n, int(configurations)))


def physical_memory_bytes() -> int | None:
    """This machine's RAM (Linux/macOS), or None where it cannot be read."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def trial_needs(*, cpu: float, gpu: float = 0, tpu: float = 0, memory_bytes: int | None = TRIAL_MEMORY_BYTES,
                custom: Mapping[str, float] | None = None) -> dict[str, float]:
    """What one trial needs on one node, in Ray's resource names: what bnsweep asks Ray for (``CPU``,
    ``GPU``, ``TPU``: ``resources: {tpu: N}`` is Ray's ``TPU`` resource, custom resources as named) and the
    ``memory`` it holds at its peak (``TRIAL_MEMORY_BYTES``: not asked of Ray, but a node must have it).

    >>> trial_needs(cpu=1, gpu=0.5)
    {'CPU': 1, 'GPU': 0.5, 'memory': 1500000000}
    >>> trial_needs(cpu=8, tpu=4, memory_bytes=None, custom={"accelerator_type:TPU-V4": 0.001})
    {'CPU': 8, 'TPU': 4, 'accelerator_type:TPU-V4': 0.001}
    """
    needs: dict[str, float] = {"CPU": cpu}
    if gpu:
        needs["GPU"] = gpu
    if tpu:
        needs["TPU"] = tpu
    needs.update({k: v for k, v in (custom or {}).items() if v})
    if memory_bytes:
        needs["memory"] = memory_bytes
    return needs


def fits_on_node(resources: Mapping[str, float], needs: Mapping[str, float]) -> int:
    """How many trials with ``needs`` a node with ``resources`` (Ray's ``ray.nodes()[i]["Resources"]``;
    a missing key is 0) holds at once.

    >>> fits_on_node({"CPU": 16, "GPU": 1, "memory": 64e9}, {"CPU": 1, "GPU": 0.25, "memory": 1.5e9})
    4
    >>> fits_on_node({"CPU": 16, "memory": 64e9}, {"CPU": 1, "GPU": 1})
    0
    """
    n = math.inf
    for key, need in needs.items():
        have = resources.get(key, 0)
        if need > 0 and have != math.inf:  # (inf: not counted, e.g. an autoscaler group's unreported memory)
            # Ray counts resources in units of 1/10000: 3 × 0.1 GPU fit in 0.3 GPU
            n = min(n, math.floor(have / need + 1e-6))
    return 0 if n == math.inf else int(n)


@dataclass(frozen=True)
class Packing:
    """Trials at once and CPUs (= TensorFlow threads) per trial, and how many trials each node holds."""

    concurrent: int                 # trials at once (the spec's max_concurrent, or what the nodes hold)
    cpus_per_trial: float
    needs: Mapping[str, float]      # one trial's needs (trial_needs)
    per_node: tuple[tuple[str, int], ...] = field(default=())   # (node, trials it holds at once)

    @property
    def fits(self) -> int:
        """Trials the nodes hold at once in all (0: no node can run one)."""
        return sum(n for _, n in self.per_node)

    def __iter__(self):  # ``concurrent, cpus = packing``
        return iter((self.concurrent, self.cpus_per_trial))


def pack_nodes(nodes: Sequence[tuple[str, Mapping[str, float]]], *, configurations: int, cpu: float | None = None,
               gpu: float = 0, tpu: float = 0, max_concurrent: int | None = None,
               memory_bytes: int | None = TRIAL_MEMORY_BYTES, custom: Mapping[str, float] | None = None) -> Packing:
    """The packing on these nodes (``(name, Ray resources)`` each). ``cpu`` given (``resources.cpu``) is
    kept; left out, each trial gets the most whole CPUs that still let every trial that can run at once
    run (as many as the nodes hold at one CPU each, the configurations or ``max_concurrent``, whichever is
    fewest): one trial per CPU on a full sweep (on 2 cores, two 1-thread trials trained 1.27× the images/s
    of one 2-thread trial: bench/RESULTS.md §4), every core shared out when there are fewer trials.
    ``concurrent`` is ``max_concurrent`` if given, else what the nodes hold (at most ``configurations``);
    0 when no node can hold one trial (``Packing.fits == 0``: Ray would wait forever).

    >>> gpu_nodes = [("big", {"CPU": 16, "GPU": 1}), ("cpu-only", {"CPU": 64})]
    >>> p = pack_nodes(gpu_nodes, configurations=20, gpu=0.25, memory_bytes=None)
    >>> p.concurrent, p.cpus_per_trial, p.per_node
    (4, 4, (('big', 4), ('cpu-only', 0)))
    """
    configurations = max(1, int(configurations))

    def per_node(c: float) -> tuple[tuple[str, int], ...]:
        needs = trial_needs(cpu=c, gpu=gpu, tpu=tpu, memory_bytes=memory_bytes, custom=custom)
        return tuple((name, fits_on_node(res, needs)) for name, res in nodes)

    if cpu is None:
        target = min(configurations, max_concurrent or configurations, sum(n for _, n in per_node(1)))
        cpu = 1
        most = max((int(res.get("CPU", 0)) for _, res in nodes), default=1)
        for c in range(most, 1, -1):  # the largest share that still runs every trial that can run at once
            if target and sum(n for _, n in per_node(c)) >= target:
                cpu = c
                break
    placed = per_node(cpu)
    fits = sum(n for _, n in placed)
    concurrent = max_concurrent if max_concurrent is not None else min(fits, configurations)
    return Packing(concurrent=concurrent, cpus_per_trial=cpu, per_node=placed,
                   needs=trial_needs(cpu=cpu, gpu=gpu, tpu=tpu, memory_bytes=memory_bytes, custom=custom))


def choose_packing(spec: Any, *, configurations: int, total_cpus: float, total_gpus: float = 0,
                   memory_bytes: int | None = None) -> tuple[int, float]:
    """(trials at once, CPUs per trial) for ``spec`` on one machine with ``total_cpus``, ``total_gpus``
    and ``memory_bytes`` of memory (None: not counted). The spec's ``max_concurrent`` and
    ``resources.cpu`` (or their flags) win; what it leaves unset is chosen for the machine: one trial per
    CPU (on 2 cores, two 1-thread trials trained 1.27× the images/s of one 2-thread trial:
    bench/RESULTS.md §4), no more than the GPUs and the memory hold or there are configurations, then
    every CPU shared out between them. ``pack_nodes`` does the same per node of a cluster.

    >>> from bnsweep.spec.sweep_spec import SweepSpec
    >>> spec = SweepSpec(name="s")  # max_concurrent and resources.cpu left out
    >>> choose_packing(spec, configurations=2, total_cpus=2), choose_packing(spec, configurations=1, total_cpus=2)
    ((2, 1), (1, 2))
    """
    machine: dict[str, float] = {"CPU": total_cpus, "GPU": total_gpus}
    if memory_bytes is not None:
        machine["memory"] = memory_bytes
    p = pack_nodes([("this machine", machine)], configurations=configurations, cpu=spec.resources.cpu,
                   gpu=spec.resources.gpu, tpu=0, max_concurrent=spec.max_concurrent,
                   memory_bytes=TRIAL_MEMORY_BYTES if memory_bytes is not None else None)
    # one machine: a lone trial still runs where the CPUs or memory look short (the caller refuses what
    # cannot run at all: sweep.cluster)
    return max(1, p.concurrent), p.cpus_per_trial


def spec_packing(spec: Any, nodes: Sequence[tuple[str, Mapping[str, float]]], *, configurations: int,
                 custom: Mapping[str, float] | None = None) -> Packing:
    """``pack_nodes`` for ``spec``'s ``resources`` and ``max_concurrent`` on these nodes.

    >>> from bnsweep.spec.sweep_spec import Resources, SweepSpec
    >>> p = spec_packing(SweepSpec(name="s", resources=Resources(tpu=4)), [("tpu-host", {"CPU": 96, "TPU": 4,
    ...                  "memory": 300e9}), ("cpu", {"CPU": 8, "memory": 30e9})], configurations=3)
    >>> p.concurrent, p.cpus_per_trial, p.per_node
    (1, 96, (('tpu-host', 1), ('cpu', 0)))
    """
    r = spec.resources
    return pack_nodes(nodes, configurations=configurations, cpu=r.cpu, gpu=r.gpu, tpu=r.tpu,
                      max_concurrent=spec.max_concurrent, custom=custom)
