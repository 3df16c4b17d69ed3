"""Fused replicates: the N seeds of one configuration trained as ONE Keras model and one compiled step.

A configuration is trained over several seeds (``replicates``); a small CIFAR ResNet leaves a GPU
mostly idle, so training the seeds one after another (or as separate processes sharing the GPU)
wastes it. ``FusedTrialRun`` builds one model that holds the N replicas and trains them together, as
HFTA (Wang et al., MLSys 2021) did for PyTorch:

* ``layout="grouped"`` (for GPUs): the replicas are stacked along the channel axis — replica i's
  images in channels 3i..3i+2 of one (B, 32, 32, 3N) batch, every convolution a grouped convolution
  (``groups=N``), BatchNormalization over N·C channels, the output layer a grouped dense (einsum).
  Nothing mixes replicas: a grouped convolution never connects groups, BN statistics are per channel.
  One convolution call does the work of N (cuDNN/XLA grouped kernels keep a GPU busy).
* ``layout="separate"`` (for CPUs, where TensorFlow's and XLA's grouped-convolution gradients are
  ~20× slower than N ordinary convolutions, ``bench/README.md``): the N ordinary networks side by side
  in one model (each with its own preprocessing), one step, one optimizer.
* ``layout="auto"``: grouped on a GPU/TPU, separate on a CPU.

The loss is the *sum* of the replicas' mean cross-entropies, so each replica's gradient is exactly its
own; SGD/Adam updates, weight decay and the LR schedule are element-wise, so one optimizer over all
variables updates each replica as its own optimizer would. Each replica keeps what makes it that seed
in a separate ``TrialRun``: the initial weights (``build_resnet(seed=s)``), the data order
(``default_rng([s, epoch])``) and its own augmentation random stream (a preprocessing layer seeded
with s). So replica i follows ``TrialRun(config with seed=s_i)`` step for step: bit for bit in the
separate layout; in the grouped one up to floating-point summation order (a grouped convolution is not
bit-identical to N convolutions), which ``tests/test_fused.py`` bounds. One limit to "bit for bit", on
TensorFlow with more than one intra-op thread per trial: oneDNN may split a reduction over the batch
between a different number of threads inside the larger fused graph (seen on a partial last batch, for
replicas after the first), and the replica then drifts by rounding — measured 1e-4 relative in the
training loss after 4 epochs of the real CIFAR-10 subset with 2 threads; with one thread per trial (the
sweep's default packing) it stayed bit-identical.

**A drop-in for N TrialRuns.** Every replica is a ``FusedReplica`` with what the sweep's trainable uses
of a ``TrialRun`` (``config``, ``epoch``, ``history``, ``net``, ``finish(status, reason)`` →
``TrialResult``), and checkpoints into its own ``checkpoint_dir`` in ``TrialRun``'s format
(``trial.save_checkpoint``: ``state.json`` + ``variables.npz``, the variables in the order a TrialRun of
that seed holds them), so a fused run resumes from its replicas' checkpoints, and a run may switch
between N TrialRuns and either fused layout on resume. Replicas resumed at different epochs (a crash
between two replicas' checkpoints, or TrialRuns that stopped unevenly) catch up first: ``train_epoch``
trains the replicas at the lowest epoch. ``start_replicates`` picks N TrialRuns or one fused run from
``TrialConfig.replicates_layout`` and gives both the same interface.

**Divergence.** A replica whose loss becomes non-finite in a step is recorded ``diverged`` with the
epoch and LR (the message ``TrialRun`` raises in ``Diverged``) and the weights it had after that step
(what a TrialRun keeps); the others go on without it (the model is rebuilt over the rest at the next
epoch). In the separate layout its NaNs cannot reach them (separate parameters and operations, the
gradient of a sum): they finish the epoch as if it were not there, bit for bit. In the grouped layout
they can, in the step it diverges — the CPU grouped-convolution filter gradients of oneDNN and XLA mix
groups (a NaN upstream in one group makes every group's kernel gradient NaN) — so there the others
restart that epoch from its start without it.

Not covered: ``random_k``/``random_k_channel`` in the grouped layout (their element masks are per
replica) and distribution strategies (``start_replicates`` falls back to TrialRuns).

>>> run = FusedTrialRun({"model": {"depth": 8}, "regime": "bn", "epochs": 1, "batch_size": 8,
...                      "steps_per_epoch": 1, "data": {"source": "synthetic", "synthetic_size": 16,
...                      "val_size": 8, "test_size": 8}}, seeds=[0, 1], layout="separate")  # doctest: +SKIP
>>> {seed: m.epoch for seed, m in run.train_epoch().items()}              # doctest: +SKIP
{0: 1, 1: 1}
>>> resolve_replicates_layout("auto", kind="gpu")[0], resolve_replicates_layout("auto", kind="cpu")[0]
('fused', 'separate')
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bnsweep.engine.data import Splits, load_data
from bnsweep.engine.trial import (
    CHECKPOINT_STATE,
    Diverged,
    EpochMetrics,
    Status,
    TrialResult,
    TrialRun,
    gamma_near_zero,
    load_checkpoint,
    save_checkpoint,
)
from bnsweep.spec.config import TrialConfig, config_hash

Layout = Literal["auto", "grouped", "separate"]
Outcome = EpochMetrics | Diverged  # what train_epoch gives per seed
Ref = tuple[Any, str | None, int]  # (variable, how to slice it, group)
CheckpointDirs = Sequence[str | Path | None] | None


def _has_accelerator() -> bool:
    from bnsweep.engine.backend import describe_accelerator

    return describe_accelerator()["kind"] in ("gpu", "tpu")


def resolve_replicates_layout(layout: str, *, kind: str | None = None) -> tuple[str, str]:
    """``TrialConfig.replicates_layout`` → ("separate" | "fused", why). ``auto`` by device ``kind`` (default:
    the running backend's): fused on a GPU/TPU, N TrialRuns on a CPU, where the fused step runs the same
    arithmetic on the same cores (bench/RESULTS.md §6: fused / separate ≈ 1.0 on 2 cores)."""
    if layout in ("separate", "fused"):
        return layout, "asked for"
    if layout != "auto":
        raise ValueError(f"replicates_layout: expected separate, fused or auto, received {layout!r}")
    if kind is None:
        from bnsweep.engine.backend import describe_accelerator

        kind = describe_accelerator()["kind"]
    if kind in ("gpu", "tpu"):
        return "fused", f"{kind}: one fused program per configuration (GPU speed unmeasured yet: bench/gpu.py)"
    return "separate", "cpu: fused and separate train at the same speed (bench/RESULTS.md §6)"


def _dirs(checkpoint_dirs: CheckpointDirs, seeds: list[int]) -> list[Path | None]:
    if checkpoint_dirs is None:
        return [None] * len(seeds)
    dirs = [Path(d) if d is not None else None for d in checkpoint_dirs]
    if len(dirs) != len(seeds):
        raise ValueError(f"checkpoint_dirs: expected one per seed ({len(seeds)}), received {len(dirs)}")
    return dirs


def start_replicates(config: TrialConfig | dict[str, Any], seeds: list[int], *, data: Splits | None = None,
                     checkpoint_dirs: CheckpointDirs = None, threads: int | None = None,
                     layout: str | None = None) -> SeparateReplicates | FusedTrialRun:
    """The replicates (seeds) of one configuration as the sweep trains them: N TrialRuns or one
    FusedTrialRun, by ``layout`` (default ``config.replicates_layout``; ``resolve_replicates_layout``).

    Both answer the same calls: ``replicas`` (seed → a TrialRun or FusedReplica: ``config``, ``epoch``,
    ``history``, ``net``), ``active`` (seeds still training), ``train_epoch()`` (seed → ``EpochMetrics``, or
    the ``Diverged`` of a replica that diverged in that epoch), ``finish(seed, status, reason)`` →
    ``TrialResult``, and ``layout_choice`` (what was chosen, and why).
    """
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    from bnsweep.engine import backend

    backend.select_backend(cfg.backend, strategy=cfg.strategy)
    choice, why = resolve_replicates_layout(layout or cfg.replicates_layout)
    if choice == "fused" and cfg.strategy != "none":
        choice, why = "separate", f"strategy {cfg.strategy}: fused replicates take no distribution strategy"
    data = data if data is not None else load_data(cfg.data)
    out: SeparateReplicates | FusedTrialRun
    if choice == "fused":
        out = FusedTrialRun(cfg, seeds, data=data, checkpoint_dirs=checkpoint_dirs, threads=threads)
    else:
        out = SeparateReplicates(cfg, seeds, data=data, checkpoint_dirs=checkpoint_dirs, threads=threads)
    out.layout_choice = (choice if choice == "separate" else f"fused-{out.layout}", why)
    return out


class SeparateReplicates:
    """N TrialRuns, each trained one epoch in turn (``replicates_layout: separate``), behind the interface
    of ``FusedTrialRun``: a replica that diverges is reported (its ``Diverged``), not raised."""

    layout = "separate"

    def __init__(self, config: TrialConfig | dict[str, Any], seeds: list[int], *, data: Splits | None = None,
                 checkpoint_dirs: CheckpointDirs = None, threads: int | None = None) -> None:
        cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
        data = data if data is not None else load_data(cfg.data)
        self.replicas: dict[int, TrialRun] = {
            s: TrialRun(cfg.replace(seed=s), data=data, checkpoint_dir=d, threads=threads)
            for s, d in zip(seeds, _dirs(checkpoint_dirs, seeds), strict=True)}
        self.layout_choice = ("separate", "asked for")
        self._ended: set[int] = set()

    @property
    def active(self) -> list[int]:
        return [s for s in self.replicas if s not in self._ended]

    def train_epoch(self) -> dict[int, Outcome]:
        out: dict[int, Outcome] = {}
        for seed in self.active:
            try:
                out[seed] = self.replicas[seed].train_epoch()
            except Diverged as e:
                self._ended.add(seed)
                out[seed] = e
        return out

    def finish(self, seed: int, status: Status = "completed", reason: str = "") -> TrialResult:
        self._ended.add(seed)
        return self.replicas[seed].finish(status, reason)


class FusedReplica:
    """One seed of a ``FusedTrialRun``, with what a sweep uses of a ``TrialRun``."""

    def __init__(self, run: FusedTrialRun, index: int, config: TrialConfig, checkpoint_dir: Path | None) -> None:
        self.run, self.index, self.config, self.seed = run, index, config, config.seed
        self.checkpoint_dir = checkpoint_dir
        self.epoch = 0
        self.history: list[EpochMetrics] = []
        self.diverged: Diverged | None = None
        self.finished = False
        self.state: list[np.ndarray] | None = None  # its checkpoint arrays while it is outside the model

    @property
    def live(self) -> bool:
        """Still training: neither finished nor diverged."""
        return not self.finished and self.diverged is None

    @property
    def net(self) -> Any:
        """This replica as a plain ``build_resnet`` network holding its current weights (``save_weights``)."""
        return self.run.replica_net(self.index)

    def finish(self, status: Status = "completed", reason: str = "") -> TrialResult:
        return self.run.finish(self.seed, status, reason)


class FusedTrialRun:
    """N replicas (seeds) of one trial config, one model, one compiled training step per batch."""

    def __init__(self, config: TrialConfig | dict[str, Any], seeds: list[int], *, data: Splits | None = None,
                 layout: Layout = "auto", threads: int | None = None, checkpoint_dirs: CheckpointDirs = None) -> None:
        cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds: expected distinct seeds, received {seeds!r}")
        if cfg.strategy != "none":
            raise ValueError("fused replicates do not support distribution strategies (strategy must be 'none')")
        from bnsweep.engine import backend

        backend.select_backend(cfg.backend, strategy=cfg.strategy)
        import keras

        from bnsweep.engine.batchnorm import use_fast_batchnorm
        from bnsweep.engine.data import make_preprocess
        from bnsweep.engine.models import build_resnet
        from bnsweep.engine.precision import float32_logits, precision_policy
        from bnsweep.engine.regimes import account, apply_regime
        from bnsweep.engine.trial import _cpus

        backend.configure_threads(cfg.threads or threads or _cpus())
        self.config, self.seeds, self.n = cfg, list(seeds), len(seeds)
        self.configs = [cfg.replace(seed=s) for s in seeds]
        self.layout = ("grouped" if _has_accelerator() else "separate") if layout == "auto" else layout
        if self.layout not in ("grouped", "separate"):
            raise ValueError(f"layout: expected auto, grouped or separate, received {layout!r}")
        if self.layout == "grouped" and cfg.regime in ("random_k", "random_k_channel"):
            raise ValueError(f"regime {cfg.regime}: its element masks are per replica; use layout='separate'")
        self.started = time.perf_counter()
        self.data = data if data is not None else load_data(cfg.data)
        self.layout_choice = (f"fused-{self.layout}", "asked for")
        keras.utils.set_random_seed(seeds[0])
        d = self.data

        # Each replica exactly as TrialRun builds it: init, regime, preprocessing (its own seed), precision.
        with precision_policy(cfg.precision):
            self.nets = [build_resnet(cfg.model, seed=s, name=f"replica{i}_net") for i, s in enumerate(seeds)]
            for net in self.nets:
                float32_logits(net)
                use_fast_batchnorm(net)
            self.applied = [apply_regime(net, cfg.model, cfg.regime, seed=s)
                            for net, s in zip(self.nets, seeds, strict=True)]
            self._pre = [make_preprocess(mean=d.mean, std=d.std, augment=cfg.data.augment,
                                         normalize=cfg.data.normalize, seed=s) for s in seeds]
        # Replica i as a TrialRun holds it (uint8 images → preprocess → network): its checkpoint's variable
        # order, its single-replica evaluation, and (separate layout) its part of the fused model.
        self._views = []
        for i in range(self.n):
            x = keras.Input((32, 32, 3), dtype="uint8", name=f"uint8_images_{i}")
            self._views.append(keras.Model(x, self.nets[i](self._pre[i](x)), name=f"replica{i}"))
        n_train = len(d.y_train)
        full = math.ceil(n_train / cfg.batch_size)
        self.steps_per_epoch = min(full, cfg.steps_per_epoch) if cfg.steps_per_epoch else full
        self.accounting = account(cfg.model, cfg.regime).as_dict()
        if self.applied[0].trainable_scalars != self.accounting["trainable"]:
            raise AssertionError(f"regime {cfg.regime}: model trains {self.applied[0].trainable_scalars} "
                                 f"scalars, accounting says {self.accounting['trainable']}")
        self._reps = [FusedReplica(self, i, c, p)
                      for i, (c, p) in enumerate(zip(self.configs, _dirs(checkpoint_dirs, self.seeds), strict=True))]
        self.replicas: dict[int, FusedReplica] = {r.seed: r for r in self._reps}
        self.model: Any = None
        self.net: Any = None  # the grouped network (layout grouped)
        self._members: list[int] = []  # replica indices in the current model, in its order
        self._refs: dict[int, list[Ref]] = {}
        self._version = 0  # bumped whenever weights change (test evaluations are cached per version)
        self._test_cache: dict[str, Any] = {}
        self._eval_models: dict[int, Any] = {}
        resumed = [r for r in self._reps if r.checkpoint_dir and (r.checkpoint_dir / CHECKPOINT_STATE).exists()]
        for r in resumed:  # epochs first: they decide which replicas the first model holds
            _check_hash(r)
        self._build(self._cohort())
        expected = len(next(iter(self._refs.values())))
        for r in resumed:
            r.epoch, r.history, arrays = load_checkpoint(r.checkpoint_dir, r.config, expected=expected)  # type: ignore[arg-type]
            r.state = arrays
        self._load(self._parked(self._members))
        self._version += 1

    # ------------------------------------------------------------------ what a sweep reads
    @property
    def active(self) -> list[int]:
        """Seeds still training (not finished, not diverged)."""
        return [r.seed for r in self._reps if r.live]

    @property
    def epoch(self) -> int:
        """The lowest epoch of the replicas still training (of all, when none is)."""
        live = [r.epoch for r in self._reps if r.live]
        return min(live or [r.epoch for r in self._reps])

    @property
    def history(self) -> list[list[EpochMetrics]]:
        return [r.history for r in self._reps]

    @property
    def diverged(self) -> dict[int, str]:
        """Replica index → why it diverged."""
        return {r.index: str(r.diverged) for r in self._reps if r.diverged is not None}

    def _cohort(self) -> list[int]:
        live = [r for r in self._reps if r.live]
        if not live:
            return []
        low = min(r.epoch for r in live)
        return [r.index for r in live if r.epoch == low]

    # ------------------------------------------------------------------ the fused model
    def _build(self, members: list[int]) -> None:
        """(Re)build the fused model over ``members`` (replica indices); the replicas leaving or staying
        are parked first (their checkpoint arrays), the staying ones loaded back by the caller."""
        import keras

        from bnsweep.engine.batchnorm import use_fast_batchnorm
        from bnsweep.engine.optimizers import make_optimizer
        from bnsweep.engine.precision import float32_logits, precision_policy
        from bnsweep.engine.regimes import apply_regime
        from bnsweep.engine.trial import _jit

        if self.model is not None:
            self._park()
        self.model = self.net = None
        self._members, self._refs, self._eval_models = [], {}, {}
        if not members:
            return
        cfg, k = self.config, len(members)
        inputs = [keras.Input((32, 32, 3), dtype="uint8", name=f"uint8_images_{j}") for j in range(k)]
        with precision_policy(cfg.precision):
            if self.layout == "separate":
                logits = keras.ops.stack([self._views[i](x) for i, x in zip(members, inputs, strict=True)],
                                         axis=1)  # (B, k, classes)
                bn_owners = [self.nets[i] for i in members]
            else:
                self.net = build_grouped_resnet(cfg.model, k)
                float32_logits(self.net)
                use_fast_batchnorm(self.net)
                apply_regime(self.net, cfg.model, cfg.regime, seed=self.seeds[members[0]])
                copy_into_grouped([self.nets[i] for i in members], self.net)
                pre = [keras.Model(x, self._pre[i](x), name=f"replica{i}_preprocess")  # unique layer names
                       for i, x in zip(members, inputs, strict=True)]
                logits = self.net(keras.ops.concatenate([m(x) for m, x in zip(pre, inputs, strict=True)], axis=-1))
                bn_owners = [self.net]
            self.model = keras.Model(inputs, logits, name="fused_trial")
            bn_params = [v for net in bn_owners for layer in net.layers
                         if isinstance(layer, keras.layers.BatchNormalization) for v in (layer.gamma, layer.beta)]

            def summed_cross_entropy(y_true: Any, y_pred: Any) -> Any:  # Σ over replicas, mean over the batch
                ce = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
                return keras.ops.sum(keras.ops.reshape(ce, (-1, k)), axis=-1)

            metrics = []
            for j in range(k):
                metrics += [keras.metrics.MeanMetricWrapper(_replica_fn(j, "loss"), name=f"loss_{j}"),
                            keras.metrics.MeanMetricWrapper(_replica_fn(j, "accuracy"), name=f"accuracy_{j}")]
            optimizer = make_optimizer(cfg, steps_per_epoch=self.steps_per_epoch,
                                       no_decay=[] if cfg.optimizer.decay_bn else bn_params)
            self.model.compile(optimizer=optimizer, loss=summed_cross_entropy, metrics=metrics, jit_compile=_jit(cfg))
            slots = _build_optimizer(optimizer, self.model.trainable_variables)
        self._members = list(members)
        self._refs = self._variable_refs(slots)

    def _variable_refs(self, slots: list[tuple[Any, Any]]) -> dict[int, list[Ref]]:
        """Per member, its checkpoint's variables in TrialRun's order as (variable of this model, how to slice
        it, group): ``None`` = the whole variable (the optimizer's step counter is every member's);
        ``conv``/``bn`` = group j of the last axis; ``dense`` = index j of the first axis."""
        optimizer_vars = self.model.optimizer.variables
        slot_ref = {id(s): ref for ref, s in slots}
        refs: dict[int, list[Ref]] = {}
        if self.layout == "separate":
            owner = {id(v): i for i in self._members for v in self._views[i].trainable_variables}
            for i in self._members:
                whole: list[Ref] = [(v, None, 0) for v in self._views[i].variables]
                whole += [(v, None, 0) for v in optimizer_vars
                          if id(v) not in slot_ref or owner[id(slot_ref[id(v)])] == i]
                refs[i] = whole
            return refs
        pairs = _pairs([self.nets[i] for i in self._members], self.net)
        where = {id(v): (g, kind, j) for kind, g, vs in pairs for j, v in enumerate(vs)}
        kind_of = {id(g): kind for kind, g, _ in pairs}
        for j, i in enumerate(self._members):
            model: list[Ref] = [where.get(id(v), (v, None, 0)) for v in self._views[i].variables]
            opt: list[Ref] = [(v, None, 0) if id(v) not in slot_ref else (v, kind_of[id(slot_ref[id(v)])], j)
                              for v in optimizer_vars]
            refs[i] = model + opt
        return refs

    def _read(self, members: list[int]) -> dict[int, list[np.ndarray]]:
        """The members' checkpoint arrays (TrialRun's order), read from this model."""
        import keras

        values: dict[int, np.ndarray] = {}
        k = len(self._members)
        out = {}
        for i in members:
            arrays = []
            for v, kind, j in self._refs[i]:
                if id(v) not in values:
                    values[id(v)] = np.asarray(keras.ops.convert_to_numpy(v))
                a = values[id(v)]
                if kind == "dense":
                    a = a[j]
                elif kind is not None:
                    w = a.shape[-1] // k
                    a = a[..., j * w:(j + 1) * w]
                arrays.append(np.array(a, copy=True))
            out[i] = arrays
        return out

    def _load(self, states: dict[int, list[np.ndarray]]) -> None:
        """Write members' checkpoint arrays into this model (several members' groups of one variable at once)."""
        import keras

        k = len(self._members)
        todo: dict[int, tuple[Any, str | None, dict[int, np.ndarray]]] = {}
        for i, arrays in states.items():
            refs = self._refs[i]
            if len(arrays) != len(refs):
                raise ValueError(f"replica seed {self.seeds[i]}: state holds {len(arrays)} variables, "
                                 f"the model has {len(refs)}")
            for (v, kind, j), a in zip(refs, arrays, strict=True):
                todo.setdefault(id(v), (v, kind, {}))[2][j if kind is not None else i] = a
        for v, kind, parts in todo.values():
            if kind is None:
                first, *rest = parts.values()
                if any(not np.array_equal(first, a) for a in rest):  # the optimizer's step counter
                    raise ValueError(f"{v.path}: replicas at different optimizer steps cannot share one model")
                v.assign(first)
                continue
            full = np.array(keras.ops.convert_to_numpy(v), copy=True)
            for j, a in parts.items():
                if kind == "dense":
                    full[j] = a
                else:
                    w = full.shape[-1] // k
                    full[..., j * w:(j + 1) * w] = a
            v.assign(full)

    def _parked(self, members: list[int]) -> dict[int, list[np.ndarray]]:
        return {i: s for i in members if (s := self._reps[i].state) is not None}

    def _park(self) -> None:
        """Keep the live members' state outside the model (before it is rebuilt); grouped: their networks too."""
        live = [i for i in self._members if self._reps[i].live]
        states = self._read(live)
        for i in live:
            self._reps[i].state = states[i]
            if self.layout == "grouped":
                self._write_net(i, states[i])

    def _write_net(self, i: int, arrays: list[np.ndarray]) -> None:
        """Replica i's plain network (and augmentation RNG) from its checkpoint arrays."""
        for v, a in zip(self._views[i].variables, arrays, strict=False):
            v.assign(a)

    # ------------------------------------------------------------------ training
    def train_epoch(self) -> dict[int, Outcome]:
        """One epoch of every live replica at the lowest epoch (normally all of them; each with its own data
        order), validation, checkpoints. Returns seed → ``EpochMetrics``, or the ``Diverged`` of a replica
        whose loss became non-finite in this epoch (the others are unaffected and go on)."""

        members = self._cohort()
        if not members:
            raise RuntimeError("every replica has finished or diverged")
        if members != self._members:
            self._build(members)
            self._load(self._parked(members))
        reps = [self._reps[i] for i in members]
        d, bs, k = self.data, self.config.batch_size, len(members)
        # Grouped: a replica's NaN gradients can reach the others' in the step it diverges (oneDNN's and XLA's
        # CPU grouped-convolution filter gradient mixes groups), so they restart the epoch without it.
        start = self._read(members) if self.layout == "grouped" else {}
        t0 = time.perf_counter()
        lr = self.epoch_lr()
        take = self.steps_per_epoch * bs
        orders = [np.random.default_rng([r.seed, r.epoch]).permutation(len(d.y_train))[:take] for r in reps]
        loss, acc = [0.0] * k, [0.0] * k
        bad: dict[int, tuple[int, float]] = {}  # member position -> (step, its non-finite loss)
        snapshots: dict[int, list[np.ndarray]] = {}
        seen = 0
        for step, first in enumerate(range(0, len(orders[0]), bs)):
            idx = [o[first:first + bs] for o in orders]
            logs = self.model.train_on_batch([d.x_train[i] for i in idx],
                                             np.stack([d.y_train[i] for i in idx], axis=1), return_dict=True)
            self._version += 1
            n = len(idx[0])
            seen += n
            for j, r in enumerate(reps):  # the same running sums as TrialRun._train_batches
                if j in bad:
                    continue
                batch_loss = float(logs[f"loss_{j}"])
                if not math.isfinite(batch_loss):  # TrialRun stops here: keep what it would keep
                    bad[j] = (step, batch_loss)
                    snapshots[j] = self._read([r.index])[r.index]
                    continue
                loss[j] += batch_loss * n
                acc[j] += float(logs[f"accuracy_{j}"]) * n
        fit_seconds = time.perf_counter() - t0
        out: dict[int, Outcome] = {}
        earliest = min((step for step, _ in bad.values()), default=0)
        culprits = {j for j, (step, _) in bad.items() if step == earliest or not start}
        for j in culprits:
            r = reps[j]
            r.diverged = Diverged(f"training loss became {bad[j][1]} in epoch {r.epoch + 1} (lr {lr:.3g})")
            r.state = None
            self._write_net(r.index, snapshots[j])
            out[r.seed] = r.diverged
        if start and culprits and len(culprits) < k:  # grouped: the others again from the epoch's start
            for j, r in enumerate(reps):
                if j not in culprits:
                    r.state = start[r.index]
                    self._write_net(r.index, start[r.index])
            self.model, self._members = None, []  # dropped, not parked
            return {**out, **self.train_epoch()}
        val = self.evaluate(d.x_val, d.y_val)
        for j, r in enumerate(reps):
            if j in culprits:
                continue
            r.epoch += 1
            m = EpochMetrics(r.epoch, loss[j] / seen, acc[j] / seen, val[r.seed][0], val[r.seed][1], lr,
                             images_per_sec=seen / fit_seconds, seconds=time.perf_counter() - t0)
            r.history.append(m)
            out[r.seed] = m
        saving = [r.index for j, r in enumerate(reps) if j not in culprits and r.checkpoint_dir]
        for i, arrays in self._read(saving).items():
            r = self._reps[i]
            save_checkpoint(r.checkpoint_dir, arrays, epoch=r.epoch, config=r.config, history=r.history)  # type: ignore[arg-type]
        return out

    def epoch_lr(self) -> float:
        """The schedule's LR at the start of the next epoch (see ``TrialRun.epoch_lr``)."""
        from bnsweep.spec.schedules import lr_at

        cfg = self.config
        return float(lr_at(float(self.epoch), cfg.lr_schedule, lr=cfg.effective_lr, epochs=cfg.epochs))

    def evaluate(self, x: np.ndarray | None, y: np.ndarray | None) -> dict[int, tuple[float, float]]:
        """seed → (loss, accuracy) of every replica in the model on the same images (no augmentation)."""
        seeds = [self.seeds[i] for i in self._members]
        if x is None or y is None or len(y) == 0:
            return {s: (float("nan"), float("nan")) for s in seeds}
        bs = max(self.config.batch_size, 256)
        k = len(seeds)
        loss, acc = [0.0] * k, [0.0] * k
        for start in range(0, len(y), bs):
            xb, yb = x[start:start + bs], y[start:start + bs]
            logs = self.model.test_on_batch([xb] * k, np.stack([yb] * k, axis=1), return_dict=True)
            for j in range(k):  # the same running sums as TrialRun._evaluate
                loss[j] += float(logs[f"loss_{j}"]) * len(yb)
                acc[j] += float(logs[f"accuracy_{j}"]) * len(yb)
        return {s: (loss[j] / len(y), acc[j] / len(y)) for j, s in enumerate(seeds)}

    def _evaluate_alone(self, i: int, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Replica i on its own (it is not in the fused model), as TrialRun evaluates."""
        import keras

        from bnsweep.engine.trial import _jit

        if i not in self._eval_models:
            images = keras.Input((32, 32, 3), dtype="uint8", name="uint8_images")
            m = keras.Model(images, self.nets[i](self._pre[i](images)), name="trial")
            m.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], jit_compile=_jit(self.config))
            self._eval_models[i] = m
        m, bs = self._eval_models[i], max(self.config.batch_size, 256)
        loss = acc = 0.0
        for start in range(0, len(y), bs):
            out = m.test_on_batch(x[start:start + bs], y[start:start + bs], return_dict=True)
            n = len(y[start:start + bs])
            loss += float(out["loss"]) * n
            acc += float(out["accuracy"]) * n
        return loss / len(y), acc / len(y)

    def replica_net(self, i: int) -> Any:
        """Replica i as a plain ``build_resnet`` network holding its current weights."""
        if self.layout == "grouped" and i in self._members and self._reps[i].live:
            self._write_net(i, self._read([i])[i])
        return self.nets[i]

    def finish(self, seed: int, status: Status = "completed", reason: str = "") -> TrialResult:
        """End one replica as ``TrialRun.finish`` ends a trial: the test split once (completed only), then its
        ``TrialResult``. It trains no more."""
        from bnsweep.engine.backend import describe_accelerator

        r = self.replicas[seed]
        test_loss = test_acc = None
        if status == "completed" and self.data.y_test is not None:
            test_loss, test_acc = self._test(r.index)
        best = max(r.history, key=lambda m: m.val_accuracy, default=None)
        last = r.history[-1] if r.history else None
        result = TrialResult(
            config=r.config.to_dict(), config_hash=config_hash(r.config), status=status,
            reason=reason, epochs_run=r.epoch,
            final_val_accuracy=last.val_accuracy if last else None,
            best_val_accuracy=best.val_accuracy if best else None,
            best_epoch=best.epoch if best else None,
            final_val_loss=last.val_loss if last else None,
            test_accuracy=test_acc, test_loss=test_loss, accounting=self.accounting,
            gamma_near_zero=gamma_near_zero(self.replica_net(r.index)),
            wall_seconds=time.perf_counter() - self.started,
            images_per_sec=float(np.mean([m.images_per_sec for m in r.history])) if r.history else None,
            accelerator=describe_accelerator(precision=self.config.precision,
                                             replicates=f"fused-{self.layout}:{self.n}"),
            data={**self.data.sizes, "source": self.data.description,
                  "test_is_holdout": self.data.test_is_holdout, "sha256": self.data.fingerprint},
            history=list(r.history),
        )
        r.finished = True
        return result

    def _test(self, i: int) -> tuple[float, float]:
        d = self.data
        assert d.x_test is not None and d.y_test is not None
        if i in self._members:  # one pass of the fused model tests every member (cached until weights change)
            if self._test_cache.get("version") != self._version:
                self._test_cache = {"version": self._version, "values": self.evaluate(d.x_test, d.y_test)}
            return self._test_cache["values"][self.seeds[i]]
        self.replica_net(i)
        return self._evaluate_alone(i, d.x_test, d.y_test)

    def break_replica_for_tests(self, seed: int) -> None:
        """Test hook (tests/test_fused.py): set this replica's output kernel to +inf, so its next training step
        gives a NaN loss and it diverges. Nothing else calls it."""
        i = self.replicas[seed].index
        kernel = (self.nets[i] if self.layout == "separate" else self.net).get_layer("output").kernel
        a = np.array(kernel.numpy(), copy=True)
        if self.layout == "separate":
            a[...] = np.inf
        else:
            a[self._members.index(i)] = np.inf
        kernel.assign(a)


def _check_hash(r: FusedReplica) -> None:
    import json

    assert r.checkpoint_dir is not None
    state = json.loads((r.checkpoint_dir / CHECKPOINT_STATE).read_text())
    if state["config_hash"] != config_hash(r.config):
        raise ValueError(f"{r.checkpoint_dir}: checkpoint of another configuration "
                         f"({state['config_hash']}, this trial is {config_hash(r.config)})")
    r.epoch = int(state["epoch"])


def _build_optimizer(optimizer: Any, variables: list[Any]) -> list[tuple[Any, Any]]:
    """Build ``optimizer`` over ``variables``; returns (model variable, optimizer slot) for every slot it made,
    in the order it made them (Keras optimizers make them with ``add_variable_from_reference``)."""
    made: list[tuple[Any, Any]] = []
    plain = optimizer.add_variable_from_reference

    def recording(reference_variable: Any, *args: Any, **kwargs: Any) -> Any:
        slot = plain(reference_variable, *args, **kwargs)
        made.append((reference_variable, slot))
        return slot

    optimizer.add_variable_from_reference = recording
    try:
        optimizer.build(variables)
    finally:
        del optimizer.add_variable_from_reference
    return made


def _replica_fn(j: int, what: str) -> Any:
    import keras

    def fn(y_true: Any, y_pred: Any) -> Any:
        yt, yp = y_true[:, j], y_pred[:, j, :]
        if what == "loss":
            return keras.losses.sparse_categorical_crossentropy(yt, yp, from_logits=True)
        return keras.metrics.sparse_categorical_accuracy(yt, yp)

    fn.__name__ = f"{what}_{j}"
    return fn


# ---------------------------------------------------------------------- the grouped (stacked) network


def build_grouped_resnet(cfg: Any, n: int, *, name: str = "grouped_resnet") -> Any:
    """N networks of ``cfg`` (either architecture) stacked along channels: input (B, 32, 32, 3N) normalized images,
    output (B, N, classes). Same layer names as ``models.build_resnet`` (so ``regimes.apply_regime``
    freezes it by role), every convolution ``groups=n``, BN over N·C channels, output a grouped dense.
    Weights come from ``copy_into_grouped``.
    """
    import keras
    from keras import layers

    from bnsweep.engine.models import bn_settings, layer_specs, network_trunk

    specs = {s.name: s for s in layer_specs(cfg)}
    momentum, epsilon = bn_settings(cfg)

    def conv(x: Any, spec_name: str) -> Any:
        s = specs[spec_name]
        return layers.Conv2D(n * s.out_channels, s.kernel, strides=s.stride, padding="same", use_bias=s.bias,
                             groups=n, name=spec_name)(x)

    def bn(x: Any, spec_name: str) -> Any:
        return layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=spec_name)(x)

    inputs = keras.Input((32, 32, 3 * n), name="stacked_images")
    x = network_trunk(inputs, cfg, conv=conv, bn=bn)
    out = specs["output"]
    outputs = GroupedDense(n, out.in_channels, out.out_channels, name="output")(x)
    return keras.Model(inputs, outputs, name=name)


_CLASSES: dict[str, Any] = {}


def _grouped_dense_class() -> Any:
    if "GroupedDense" in _CLASSES:
        return _CLASSES["GroupedDense"]
    import keras

    @keras.saving.register_keras_serializable(package="bnsweep")
    class GroupedDense(keras.layers.Layer):
        """N independent dense layers: (B, N·C_in) → (B, N, C_out), kernel (N, C_in, C_out)."""

        def __init__(self, n: int, in_features: int, units: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.n, self.in_features, self.units = n, in_features, units
            self.kernel = self.add_weight(shape=(n, in_features, units), initializer="zeros", name="kernel")
            self.bias = self.add_weight(shape=(n, units), initializer="zeros", name="bias")

        def call(self, x: Any) -> Any:
            from keras import ops

            x = ops.reshape(x, (-1, self.n, self.in_features))
            return ops.einsum("bnc,nck->bnk", x, self.kernel) + self.bias

        def compute_output_shape(self, input_shape: Any) -> Any:
            return (input_shape[0], self.n, self.units)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "n": self.n, "in_features": self.in_features, "units": self.units}

    _CLASSES["GroupedDense"] = GroupedDense
    return GroupedDense


def GroupedDense(n: int, in_features: int, units: int, **kwargs: Any) -> Any:
    return _grouped_dense_class()(n, in_features, units, **kwargs)


def _pairs(nets: list[Any], grouped: Any) -> list[tuple[str, Any, list[Any]]]:
    """(kind, grouped variable, the replicas' variables) for every weight, matched by layer and part."""
    out = []
    for layer in grouped.layers:
        if not layer.weights:
            continue
        parts = [net.get_layer(layer.name) for net in nets]
        for j, v in enumerate(layer.weights):
            # conv kernels, conv biases and BN vectors all stack along their last (channel) axis
            kind = "dense" if layer.name == "output" else ("conv" if v.path.endswith("kernel") else "bn")
            out.append((kind, v, [p.weights[j] for p in parts]))
    return out


def copy_into_grouped(nets: list[Any], grouped: Any) -> None:
    """Stack the replicas' weights into the grouped network (conv kernels along output channels,
    BN vectors end to end, dense kernels/biases along a new first axis)."""
    for kind, v, vs in _pairs(nets, grouped):
        arrays = [np.asarray(w.numpy()) for w in vs]
        v.assign(np.stack(arrays) if kind == "dense" else np.concatenate(arrays, axis=-1))


def copy_from_grouped(grouped: Any, nets: list[Any], *, only: int | None = None) -> None:
    """The inverse of ``copy_into_grouped``: write the grouped weights back into the replicas."""
    n = len(nets)
    for kind, v, vs in _pairs(nets, grouped):
        a = np.asarray(v.numpy())
        parts = list(a) if kind == "dense" else np.split(a, n, axis=-1)
        for i, (w, p) in enumerate(zip(vs, parts, strict=True)):
            if only is None or i == only:
                w.assign(p)
