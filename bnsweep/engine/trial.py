"""One trial: build → freeze → compile → fit epoch by epoch (report, checkpoint) → test once.

``run(config)`` is the whole thing; ``TrialRun`` exposes the same steps one epoch at a time so the
orchestrator can train the replicates (seeds) of one configuration in lockstep and report their mean.

>>> from bnsweep.engine.trial import run
>>> r = run({"model": {"depth": 8}, "regime": "bn", "epochs": 1, "batch_size": 32,
...          "steps_per_epoch": 2, "data": {"source": "synthetic", "synthetic_size": 64,
...          "val_size": 32, "test_size": 32}})                       # doctest: +SKIP
>>> r.status, r.accounting["trainable"]                             # doctest: +SKIP
('completed', 672)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bnsweep.base.atomic import atomic_write, atomic_write_text
from bnsweep.engine.data import Splits, load_data
from bnsweep.spec.config import TrialConfig, config_hash

Status = Literal["completed", "pruned", "diverged", "failed"]


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based: the number of epochs trained so far
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float  # the schedule's learning rate at the start of this epoch (what the optimizer steps with)
    images_per_sec: float  # training images per second of this epoch (fit only, no validation)
    seconds: float  # wall time of the epoch, validation included


@dataclass
class TrialResult:
    config: dict[str, Any]
    config_hash: str
    status: Status
    reason: str = ""
    epochs_run: int = 0
    final_val_accuracy: float | None = None
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    final_val_loss: float | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    accounting: dict[str, int] = field(default_factory=dict)
    gamma_near_zero: float | None = None  # share of BN γ with |γ| < 0.01 at the end
    wall_seconds: float = 0.0
    images_per_sec: float | None = None  # mean over epochs, training only
    accelerator: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    history: list[EpochMetrics] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Report = Callable[[EpochMetrics], None]


class Diverged(RuntimeError):
    pass


class TrialRun:
    """A trial that trains one epoch per ``train_epoch()`` call; resumable from ``checkpoint_dir``."""

    def __init__(self, config: TrialConfig | dict[str, Any], *, data: Splits | None = None,
                 checkpoint_dir: str | Path | None = None, threads: int | None = None) -> None:
        self.config = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
        cfg = self.config
        from bnsweep.engine import backend

        backend.select_backend(cfg.backend, strategy=cfg.strategy)
        import keras

        from bnsweep.engine.batchnorm import use_fast_batchnorm
        from bnsweep.engine.data import make_preprocess
        from bnsweep.engine.models import build_resnet
        from bnsweep.engine.optimizers import make_optimizer
        from bnsweep.engine.precision import float32_logits, precision_policy
        from bnsweep.engine.regimes import account, apply_regime

        backend.configure_threads(cfg.threads or threads or _cpus())
        self.started = time.perf_counter()
        self.data = data if data is not None else load_data(cfg.data)
        keras.utils.set_random_seed(cfg.seed)

        # ---- the recipe (defaults: the paper / open_lth CIFAR ResNet) ----------------------
        # TPU / multi-GPU: build inside the strategy; mixed_bfloat16: layers built under that policy
        with backend.distribution_scope(cfg.strategy), precision_policy(cfg.precision):
            self.net = build_resnet(cfg.model, seed=cfg.seed)  # Kaiming-normal, γ ~ U[0,1) or 1
            float32_logits(self.net)  # logits and loss in float32 under mixed_bfloat16 (engine/precision.py)
            use_fast_batchnorm(self.net)  # same BN, fused kernels: ~1.5× faster steps on TF/CPU (engine/batchnorm.py)
            self.applied = apply_regime(self.net, cfg.model, cfg.regime, seed=cfg.seed)  # per variable
            preprocess = make_preprocess(mean=self.data.mean, std=self.data.std, augment=cfg.data.augment,
                                         normalize=cfg.data.normalize, seed=cfg.seed)  # on device
            images = keras.Input((32, 32, 3), dtype="uint8", name="uint8_images")
            self.model = keras.Model(images, self.net(preprocess(images)), name="trial")
            n = len(self.data.y_train)
            full = math.ceil(n / cfg.batch_size)
            self.steps_per_epoch = min(full, cfg.steps_per_epoch) if cfg.steps_per_epoch else full
            bn_params = [v for layer in self.net.layers if isinstance(layer, keras.layers.BatchNormalization)
                         for v in (layer.gamma, layer.beta)]
            optimizer = make_optimizer(cfg, steps_per_epoch=self.steps_per_epoch,  # LR schedule in epochs
                                       no_decay=[] if cfg.optimizer.decay_bn else bn_params)
            self.model.compile(
                optimizer=optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                jit_compile=_jit(cfg),
            )
        self.accounting = account(cfg.model, cfg.regime).as_dict()
        if self.applied.trainable_scalars != self.accounting["trainable"]:
            raise AssertionError(f"regime {cfg.regime}: model trains {self.applied.trainable_scalars} "
                                 f"scalars, accounting says {self.accounting['trainable']}")
        # TensorFlow without a strategy: feed batches ourselves (_train_batches); JAX's fit feeds NumPy
        # batches without tf.data, and TPU/multi-GPU strategies need fit's steps_per_execution loop.
        self._feed_batches = keras.backend.backend() == "tensorflow" and cfg.strategy == "none"
        self.history: list[EpochMetrics] = []
        self.epoch = 0
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        if self.checkpoint_dir and (self.checkpoint_dir / CHECKPOINT_STATE).exists():
            self._restore()

    # ------------------------------------------------------------------ training
    def train_epoch(self) -> EpochMetrics:
        """Train one epoch, validate, checkpoint. Raises ``Diverged`` on a NaN/inf loss."""
        import keras

        cfg, d = self.config, self.data
        t0 = time.perf_counter()
        lr = self.epoch_lr()
        # Our own seeded shuffle (per seed and epoch) so a resumed trial sees the same batches.
        order = np.random.default_rng([cfg.seed, self.epoch]).permutation(len(d.y_train))
        take = self.steps_per_epoch * cfg.batch_size
        order = order[:take]
        if self._feed_batches:
            train_loss, train_acc = self._train_batches(order)
        else:
            h = self.model.fit(
                d.x_train[order], d.y_train[order], batch_size=cfg.batch_size, epochs=1, shuffle=False,
                steps_per_epoch=self.steps_per_epoch if cfg.steps_per_epoch else None,
                callbacks=[keras.callbacks.TerminateOnNaN()], verbose=0)
            train_loss = float(h.history["loss"][-1])
            train_acc = float(h.history["accuracy"][-1])
        fit_seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {self.epoch + 1} (lr {lr:.3g})")
        val_loss, val_acc = self._evaluate(d.x_val, d.y_val)
        self.epoch += 1
        m = EpochMetrics(self.epoch, train_loss, train_acc, val_loss, val_acc, lr,
                         images_per_sec=min(take, len(order)) / fit_seconds,
                         seconds=time.perf_counter() - t0)
        self.history.append(m)
        if self.checkpoint_dir:
            self._save()
        return m

    def epoch_lr(self) -> float:
        """The schedule's LR at the start of the next epoch, from the schedule and the epoch — not read
        from the optimizer, whose step counter never moves when nothing trains (regime ``none``)."""
        from bnsweep.spec.schedules import lr_at

        cfg = self.config
        return float(lr_at(float(self.epoch), cfg.lr_schedule, lr=cfg.effective_lr, epochs=cfg.epochs))

    def _train_batches(self, order: np.ndarray) -> tuple[float, float]:
        """One epoch as one ``train_on_batch`` per batch (TensorFlow without a distribution strategy).

        ``fit`` on TensorFlow wraps the arrays in a new ``tf.data`` pipeline per call, and tearing that
        pipeline down stalled for ~1 s at the end of about half the epochs (plus ~40 ms to build it):
        10–40% of a short epoch (bench/README.md). Loss and accuracy are the
        batch-size-weighted means over the epoch, as ``fit`` reports them; a non-finite loss ends the
        epoch at once (``TerminateOnNaN``).
        """
        x, y, bs = self.data.x_train, self.data.y_train, self.config.batch_size
        n = 0
        loss = acc = 0.0
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            logs = self.model.train_on_batch(x[idx], y[idx], return_dict=True)
            n += len(idx)
            loss += float(logs["loss"]) * len(idx)
            acc += float(logs["accuracy"]) * len(idx)
            if not math.isfinite(float(logs["loss"])):
                return float(logs["loss"]), acc / n
        return loss / n, acc / n

    def _evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        if len(y) == 0:
            return float("nan"), float("nan")
        bs = max(self.config.batch_size, 256)
        if self._feed_batches:  # see _train_batches
            loss = acc = 0.0
            for i in range(0, len(y), bs):
                out = self.model.test_on_batch(x[i:i + bs], y[i:i + bs], return_dict=True)
                k = len(y[i:i + bs])
                loss += float(out["loss"]) * k
                acc += float(out["accuracy"]) * k
            return loss / len(y), acc / len(y)
        out = self.model.evaluate(x, y, batch_size=bs, verbose=0, return_dict=True)
        return float(out["loss"]), float(out["accuracy"])

    def finish(self, status: Status = "completed", reason: str = "") -> TrialResult:
        """Evaluate the test split once (completed trials only) and assemble the result."""
        from bnsweep.engine.backend import describe_accelerator

        test_loss = test_acc = None
        if status == "completed" and self.data.y_test is not None:
            test_loss, test_acc = self._evaluate(self.data.x_test, self.data.y_test)  # type: ignore[arg-type]
        best = max(self.history, key=lambda m: m.val_accuracy, default=None)
        last = self.history[-1] if self.history else None
        return TrialResult(
            config=self.config.to_dict(), config_hash=config_hash(self.config), status=status,
            reason=reason, epochs_run=self.epoch,
            final_val_accuracy=last.val_accuracy if last else None,
            best_val_accuracy=best.val_accuracy if best else None,
            best_epoch=best.epoch if best else None,
            final_val_loss=last.val_loss if last else None,
            test_accuracy=test_acc, test_loss=test_loss, accounting=self.accounting,
            gamma_near_zero=self.gamma_near_zero(),
            wall_seconds=time.perf_counter() - self.started,
            images_per_sec=float(np.mean([m.images_per_sec for m in self.history])) if self.history else None,
            accelerator=describe_accelerator(precision=self.config.precision),
            data={**self.data.sizes, "source": self.data.description,
                  "test_is_holdout": self.data.test_is_holdout, "sha256": self.data.fingerprint},
            history=list(self.history),
        )

    def gamma_near_zero(self, threshold: float = 0.01) -> float:
        """Share of BN γ with |γ| < threshold (the paper: BN-only disables about a third)."""
        return gamma_near_zero(self.net, threshold)

    # ------------------------------------------------------------------ checkpoints
    def _variables(self) -> list[Any]:
        opt = self.model.optimizer
        if not opt.built:
            opt.build(self.model.trainable_variables)
        return list(self.model.variables) + list(opt.variables)

    def _save(self) -> None:
        """Weights, optimizer state (momentum, step) and RNG state, written then renamed."""
        assert self.checkpoint_dir is not None
        import keras

        save_checkpoint(self.checkpoint_dir, [keras.ops.convert_to_numpy(v) for v in self._variables()],
                        epoch=self.epoch, config=self.config, history=self.history)

    def _restore(self) -> None:
        assert self.checkpoint_dir is not None
        variables = self._variables()
        self.epoch, self.history, arrays = load_checkpoint(self.checkpoint_dir, self.config, expected=len(variables))
        for v, a in zip(variables, arrays, strict=True):
            v.assign(a)


def gamma_near_zero(net: Any, threshold: float = 0.01) -> float:
    """Share of the BN γ of ``net`` with |γ| < threshold."""
    import keras

    gammas = [keras.ops.convert_to_numpy(layer.gamma).ravel() for layer in net.layers
              if isinstance(layer, keras.layers.BatchNormalization)]
    return float(np.mean(np.abs(np.concatenate(gammas)) < threshold))


# A trial's checkpoint (also a fused replica's, engine/fused_replicates.py), in ``checkpoint_dir``:
#   variables.npz  v00000, v00001, ...: the model's variables (augmentation RNG state, then the network's),
#                  then the optimizer's (step counter, then its slots in the order it built them)
#   state.json     {"epoch": epochs trained, "config_hash": config_hash(config), "history": [EpochMetrics]}
CHECKPOINT_STATE, CHECKPOINT_VARIABLES = "state.json", "variables.npz"


def save_checkpoint(directory: str | Path, arrays: list[np.ndarray], *, epoch: int, config: TrialConfig,
                    history: list[EpochMetrics]) -> None:
    """Write a checkpoint (arrays first; each file written then renamed, so a crash leaves the old one)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    named = {f"v{i:05d}": a for i, a in enumerate(arrays)}
    atomic_write(directory / CHECKPOINT_VARIABLES, lambda f: np.savez(f, **named))  # type: ignore[arg-type]
    state = {"epoch": epoch, "config_hash": config_hash(config), "history": [asdict(m) for m in history]}
    atomic_write_text(directory / CHECKPOINT_STATE, json.dumps(state))


def load_checkpoint(directory: str | Path, config: TrialConfig, *,
                    expected: int) -> tuple[int, list[EpochMetrics], list[np.ndarray]]:
    """(epoch, history, arrays) of a checkpoint of ``config`` holding ``expected`` arrays; ``ValueError`` for a
    checkpoint of another configuration or another model."""
    directory = Path(directory)
    state = json.loads((directory / CHECKPOINT_STATE).read_text())
    if state["config_hash"] != config_hash(config):
        raise ValueError(f"{directory}: checkpoint of another configuration "
                         f"({state['config_hash']}, this trial is {config_hash(config)})")
    with np.load(directory / CHECKPOINT_VARIABLES, allow_pickle=False) as f:
        if len(f.files) != expected:
            raise ValueError(f"{directory}: checkpoint holds {len(f.files)} variables, "
                             f"the model has {expected}")
        arrays = [f[f"v{i:05d}"] for i in range(expected)]
    return int(state["epoch"]), [EpochMetrics(**m) for m in state["history"]], arrays


def run(config: TrialConfig | dict[str, Any], *, report: Report | None = None, data: Splits | None = None,
        checkpoint_dir: str | Path | None = None,
        should_stop: Callable[[EpochMetrics], bool] | None = None) -> TrialResult:
    """Train one trial to the end. ``report`` gets every epoch's metrics; ``should_stop`` returning
    True prunes the trial (status ``pruned``). A NaN/inf loss ends it as ``diverged``."""
    trial = TrialRun(config, data=data, checkpoint_dir=checkpoint_dir)
    while trial.epoch < trial.config.epochs:
        try:
            m = trial.train_epoch()
        except Diverged as e:
            return trial.finish("diverged", str(e))
        if report:
            report(m)
        if should_stop and should_stop(m) and trial.epoch < trial.config.epochs:
            return trial.finish("pruned", f"stopped by the scheduler after epoch {trial.epoch}")
    return trial.finish("completed")


def _jit(cfg: TrialConfig) -> bool:
    """``jit_compile: auto``: XLA on JAX (its only compiled path), never on TensorFlow, whatever the regime.

    Measured on the 2-core CPU (bench/regimes.py, bench/RESULTS.md): with bnsweep's fused BN,
    TF+XLA trained ResNet-20 at 0.35× (all) and 0.76× (bn) the images/s of TF without XLA — XLA's CPU
    convolutions, above all the weight gradients, are slower than oneDNN's. (With Keras' stock BN,
    XLA made BN-only ~1.07× faster by fusing BN's element-wise passes; the fused BN kernel does that
    better.) GPU/TPU trials run on JAX or under a TPU strategy, where XLA is the compiler anyway.
    """
    if cfg.jit_compile != "auto":
        return bool(cfg.jit_compile)
    import keras

    return keras.backend.backend() == "jax"  # the backend that runs (``backend: auto`` resolved)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


