"""How many trials run at once and how many CPUs (= TensorFlow threads) each gets, when the spec leaves
``max_concurrent`` / ``resources.cpu`` unset: the driver's packing policy (no Ray import).

>>> default_concurrent_trials(total_cpus=2, configurations=8), default_cpus_per_trial(2, concurrent=2)
(2, 1)
"""

from __future__ import annotations

import os
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


def choose_packing(spec: Any, *, configurations: int, total_cpus: float, total_gpus: float = 0,
                   memory_bytes: int | None = None) -> tuple[int, float]:
    """(trials at once, CPUs per trial) for ``spec`` on a machine. The spec's ``max_concurrent`` and
    ``resources.cpu`` (or their flags) win; what it leaves unset is chosen for the machine: one trial per
    CPU (on 2 cores, two 1-thread trials trained 1.27× the images/s of one 2-thread trial:
    bench/RESULTS.md §4), no more than the GPUs and the memory hold or there are configurations, then
    every CPU shared out between them.

    >>> from bnsweep.spec.sweep_spec import SweepSpec
    >>> spec = SweepSpec(name="s")  # max_concurrent and resources.cpu left out
    >>> choose_packing(spec, configurations=2, total_cpus=2), choose_packing(spec, configurations=1, total_cpus=2)
    ((2, 1), (1, 2))
    """
    from bnsweep.sweep.packing import default_concurrent_trials, default_cpus_per_trial

    configurations = max(1, configurations)
    concurrent = spec.max_concurrent
    if concurrent is None:
        concurrent = default_concurrent_trials(
            total_cpus=total_cpus, configurations=configurations, cpu=spec.resources.cpu,
            total_gpus=total_gpus, gpu=spec.resources.gpu, memory_bytes=memory_bytes)
    cpu = spec.resources.cpu
    if cpu is None:
        cpu = default_cpus_per_trial(total_cpus, concurrent=min(concurrent, configurations))
    return concurrent, cpu
