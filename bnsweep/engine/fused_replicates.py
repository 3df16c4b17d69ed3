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
with s). So replica i follows ``TrialRun(config with seed=s_i)`` step for step; what differs is only
floating-point summation order (a grouped convolution is not bit-identical to N convolutions), which
``tests/test_fused.py`` bounds after several steps.

Not covered (yet): checkpoint/resume (``TrialRun``'s), ``random_k``/``random_k_channel`` in the grouped
layout (their element masks are per replica), and distribution strategies. A replica whose loss becomes non-finite
is reported as diverged; it cannot poison the others (separate parameters, the gradient of a sum).

>>> run = FusedTrialRun({"model": {"depth": 8}, "regime": "bn", "epochs": 1, "batch_size": 8,
...                      "steps_per_epoch": 1, "data": {"source": "synthetic", "synthetic_size": 16,
...                      "val_size": 8, "test_size": 8}}, seeds=[0, 1], layout="separate")  # doctest: +SKIP
>>> [m.epoch for m in run.train_epoch()]                                  # doctest: +SKIP
[1, 1]
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import numpy as np

from bnsweep.engine.data import Splits, load_data
from bnsweep.engine.trial import EpochMetrics
from bnsweep.spec.config import TrialConfig

Layout = Literal["auto", "grouped", "separate"]


def _has_accelerator() -> bool:
    from bnsweep.engine.backend import describe_accelerator

    return describe_accelerator()["kind"] in ("gpu", "tpu")


class FusedTrialRun:
    """N replicas (seeds) of one trial config, one model, one compiled training step per batch."""

    def __init__(self, config: TrialConfig | dict[str, Any], seeds: list[int], *, data: Splits | None = None,
                 layout: Layout = "auto", threads: int | None = None) -> None:
        cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds: expected distinct seeds, received {seeds!r}")
        if cfg.strategy != "none":
            raise ValueError("fused replicates do not support distribution strategies (strategy must be 'none')")
        from bnsweep.engine import backend

        backend.select_backend(cfg.backend)
        import keras

        from bnsweep.engine.batchnorm import use_fast_batchnorm
        from bnsweep.engine.data import make_preprocess
        from bnsweep.engine.models import build_resnet
        from bnsweep.engine.optimizers import make_optimizer
        from bnsweep.engine.regimes import account, apply_regime
        from bnsweep.engine.trial import _cpus, _jit

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
        keras.utils.set_random_seed(seeds[0])
        d = self.data

        # Each replica exactly as TrialRun builds it: init, regime, preprocessing (its own seed).
        self.nets = [build_resnet(cfg.model, seed=s, name=f"replica{i}_net") for i, s in enumerate(seeds)]
        for net in self.nets:
            use_fast_batchnorm(net)
        self.applied = [apply_regime(net, cfg.model, cfg.regime, seed=s) for net, s in zip(self.nets, seeds,
                                                                                             strict=True)]
        pre = [make_preprocess(mean=d.mean, std=d.std, augment=cfg.data.augment, normalize=cfg.data.normalize,
                               seed=s) for s in seeds]
        inputs = [keras.Input((32, 32, 3), dtype="uint8", name=f"uint8_images_{i}") for i in range(self.n)]
        if self.layout == "separate":
            outs = []
            for i in range(self.n):  # a nested model per replica keeps layer names unique
                sub = keras.Model(inputs[i], self.nets[i](pre[i](inputs[i])), name=f"replica{i}")
                outs.append(sub(inputs[i]))
            logits = keras.ops.stack(outs, axis=1)  # (B, N, classes)
            self.net = None
        else:
            self.net = build_grouped_resnet(cfg.model, self.n)
            use_fast_batchnorm(self.net)
            apply_regime(self.net, cfg.model, cfg.regime, seed=seeds[0])
            copy_into_grouped(self.nets, self.net)
            pre_models = [keras.Model(x, p(x), name=f"replica{i}_preprocess")  # unique layer names
                          for i, (p, x) in enumerate(zip(pre, inputs, strict=True))]
            stacked = keras.ops.concatenate([m(x) for m, x in zip(pre_models, inputs, strict=True)], axis=-1)
            logits = self.net(stacked)
        self.model = keras.Model(inputs, logits, name="fused_trial")
        n_train = len(d.y_train)
        full = math.ceil(n_train / cfg.batch_size)
        self.steps_per_epoch = min(full, cfg.steps_per_epoch) if cfg.steps_per_epoch else full
        bn_params = [v for layer in self._bn_layers() for v in (layer.gamma, layer.beta)]
        n_classes = cfg.model.num_classes

        def summed_cross_entropy(y_true: Any, y_pred: Any) -> Any:  # Σ over replicas, mean over the batch
            ce = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
            return keras.ops.sum(keras.ops.reshape(ce, (-1, self.n)), axis=-1)

        metrics = []
        for i in range(self.n):
            metrics += [keras.metrics.MeanMetricWrapper(_replica_fn(i, "loss", n_classes), name=f"loss_{i}"),
                        keras.metrics.MeanMetricWrapper(_replica_fn(i, "accuracy", n_classes), name=f"accuracy_{i}")]
        self.model.compile(
            optimizer=make_optimizer(cfg, steps_per_epoch=self.steps_per_epoch,
                                     no_decay=[] if cfg.optimizer.decay_bn else bn_params),
            loss=summed_cross_entropy, metrics=metrics, jit_compile=_jit(cfg))
        self.accounting = account(cfg.model, cfg.regime).as_dict()
        self.history: list[list[EpochMetrics]] = [[] for _ in seeds]
        self.diverged: dict[int, str] = {}  # replica index -> reason
        self.epoch = 0

    def _bn_layers(self) -> list[Any]:
        import keras

        nets = [self.net] if self.net is not None else self.nets
        return [layer for net in nets for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]

    # ------------------------------------------------------------------ training
    def train_epoch(self) -> list[EpochMetrics]:
        """One epoch of every replica (each with its own data order); validation per replica."""

        d, bs = self.data, self.config.batch_size
        t0 = time.perf_counter()
        lr = self.epoch_lr()
        take = self.steps_per_epoch * bs
        orders = [np.random.default_rng([s, self.epoch]).permutation(len(d.y_train))[:take] for s in self.seeds]
        sums = np.zeros((self.n, 2))
        seen = 0
        for start in range(0, len(orders[0]), bs):
            idx = [o[start:start + bs] for o in orders]
            logs = self.model.train_on_batch([d.x_train[i] for i in idx],
                                             np.stack([d.y_train[i] for i in idx], axis=1), return_dict=True)
            k = len(idx[0])
            seen += k
            sums += k * np.array([[float(logs[f"loss_{i}"]), float(logs[f"accuracy_{i}"])] for i in range(self.n)])
        fit_seconds = time.perf_counter() - t0
        val = self.evaluate(d.x_val, d.y_val)
        self.epoch += 1
        out = []
        for i in range(self.n):
            train_loss, train_acc = sums[i] / max(seen, 1)
            if not math.isfinite(train_loss) and i not in self.diverged:
                self.diverged[i] = f"training loss became {train_loss} in epoch {self.epoch} (lr {lr:.3g})"
            m = EpochMetrics(self.epoch, float(train_loss), float(train_acc), val[i][0], val[i][1], lr,
                             images_per_sec=seen / fit_seconds, seconds=time.perf_counter() - t0)
            self.history[i].append(m)
            out.append(m)
        return out

    def epoch_lr(self) -> float:
        """The schedule's LR at the start of the next epoch (see ``TrialRun.epoch_lr``)."""
        from bnsweep.spec.schedules import lr_at

        cfg = self.config
        return float(lr_at(float(self.epoch), cfg.lr_schedule, lr=cfg.effective_lr, epochs=cfg.epochs))

    def evaluate(self, x: np.ndarray | None, y: np.ndarray | None) -> list[tuple[float, float]]:
        """(loss, accuracy) of every replica on the same images (no augmentation)."""
        if x is None or y is None or len(y) == 0:
            return [(float("nan"), float("nan"))] * self.n
        bs = max(self.config.batch_size, 256)
        sums = np.zeros((self.n, 2))
        for start in range(0, len(y), bs):
            xb, yb = x[start:start + bs], y[start:start + bs]
            logs = self.model.test_on_batch([xb] * self.n, np.stack([yb] * self.n, axis=1), return_dict=True)
            sums += len(yb) * np.array([[float(logs[f"loss_{i}"]), float(logs[f"accuracy_{i}"])]
                                        for i in range(self.n)])
        return [(float(a), float(b)) for a, b in sums / len(y)]

    def replica_net(self, i: int) -> Any:
        """Replica i as a plain ``build_resnet`` network holding its current weights."""
        if self.net is not None:
            copy_from_grouped(self.net, self.nets, only=i)
        return self.nets[i]


def _replica_fn(i: int, what: str, n_classes: int) -> Any:
    import keras

    def fn(y_true: Any, y_pred: Any) -> Any:
        yt, yp = y_true[:, i], y_pred[:, i, :]
        if what == "loss":
            return keras.losses.sparse_categorical_crossentropy(yt, yp, from_logits=True)
        return keras.metrics.sparse_categorical_accuracy(yt, yp)

    fn.__name__ = f"{what}_{i}"
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
