"""The fully resolved configuration of one trial: typed, frozen, validated, hashable.

A trial config is what Ray Tune hands a worker (as a plain nested ``dict``) and what the results
table records. ``TrialConfig.from_dict(d).to_dict()`` round-trips, and ``config_hash`` names the run
directory of a configuration (open_lth style), so the recorded config is the config that trained.

>>> cfg = TrialConfig.from_dict({"regime": "bn", "model": {"depth": 8}, "epochs": 2})
>>> cfg.model.depth, cfg.regime, cfg.lr_schedule["type"]
(8, 'bn', 'multistep')
>>> len(config_hash(cfg))
12
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from bnsweep.spec.errors import ConfigError
from bnsweep.spec.schedules import SCHEDULE_TYPES, resolve_schedule

Regime = Literal[
    "all", "bn", "bn_output", "bn_shortcut_output", "shortcut_output", "output", "none", "random_k",
    "random_k_channel",
]
REGIMES: tuple[str, ...] = get_args(Regime)
GammaInit = Literal["uniform", "ones"]
# resnet: the paper's He et al. CIFAR ResNet (depth 6·D+2); idiomatic_bottleneck: the seed notebooks'
# "ResNet20", keras-idiomatic-programmer's bottleneck ResNet v1 (depth 9·n+2), engine/bottleneck.py.
Arch = Literal["resnet", "idiomatic_bottleneck"]
Source = Literal["cifar10", "npz", "dir", "synthetic"]
Augment = Literal["paper", "notebook", "none"]
OptimizerName = Literal["sgd", "adam", "adamw"]
Backend = Literal["tensorflow", "jax", "auto"]  # auto: engine.backend.resolve_backend (JAX on a GPU, else TF)
Strategy = Literal["none", "mirrored", "tpu"]
LrScaling = Literal["none", "linear", "sqrt"]
Precision = Literal["float32", "mixed_bfloat16"]
ReplicatesLayout = Literal["separate", "fused", "auto"]


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, value, "one of " + ", ".join(choices))


def _check_positive(key: str, value: Any, *, integer: bool = False, allow_zero: bool = False,
                    maximum: float | None = None) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        what = "an integer" if integer else "a number"
        bound = f" and <= {maximum:,}" if maximum is not None else ""
        raise ConfigError(key, value, f"{what} {'>= 0' if allow_zero else '> 0'}{bound}")


# Upper bounds: far above any CIFAR study, low enough that a typo (an extra digit, 1e30) is refused
# before `plan` or a worker tries to build or allocate it.
MAX_DEPTH = 6 * 500 + 2  # the paper's deepest is 866 (D = 144)
MAX_WIDTH = 1024  # the paper's widest is 32
MAX_IMAGES = 10**9  # per split
MAX_SYNTHETIC = 10**6  # synthetic images per split (3 KB each)
MAX_BATCH = 2**20
MAX_EPOCHS = 100_000


@dataclass(frozen=True)
class ModelConfig:
    """CIFAR ResNet of depth 6·D+2 and width multiplier W (He et al. 2016; the paper's family), or with
    ``arch: idiomatic_bottleneck`` the notebooks' bottleneck ResNet of depth 9·n+2."""

    depth: int = 20  # resnet: 6·D + 2 (8, 14, 20, 32, 56, 110, ...); idiomatic_bottleneck: 9·n + 2 (20, 56, ...)
    width: int = 1  # filters are 16·W, 32·W, 64·W (W=1: ResNet, W>1: WRN-depth-W)
    gamma_init: GammaInit = "uniform"  # paper: γ ~ U[0, 1); "ones" is the Keras default
    num_classes: int = 10
    arch: Arch = "resnet"

    def __post_init__(self) -> None:
        _check_choice("model.arch", self.arch, get_args(Arch))
        step, low, examples = (9, 11, "11, 20, 56, 110, 164, 1001") if self.arch == "idiomatic_bottleneck" \
            else (6, 8, "8, 14, 20, 32, 56, 110, ...")
        if (not isinstance(self.depth, int) or isinstance(self.depth, bool) or not low <= self.depth <= MAX_DEPTH
                or (self.depth - 2) % step):
            unit = "n" if step == 9 else "D"
            raise ConfigError("model.depth", self.depth,
                              f"{step}·{unit}+2 with 1 <= {unit} <= {(MAX_DEPTH - 2) // step} ({examples})"
                              + (" for arch idiomatic_bottleneck" if step == 9 else ""))
        _check_positive("model.width", self.width, integer=True, maximum=MAX_WIDTH)
        _check_choice("model.gamma_init", self.gamma_init, get_args(GammaInit))
        _check_positive("model.num_classes", self.num_classes, integer=True, maximum=100_000)

    @property
    def blocks_per_stage(self) -> int:
        """Residual blocks per stage: D (resnet) or n (idiomatic_bottleneck: 1 projection + n−1 identity)."""
        return (self.depth - 2) // (9 if self.arch == "idiomatic_bottleneck" else 6)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split, normalized and augmented."""

    source: Source = "cifar10"
    path: str | None = None  # npz file (x_train/y_train[/x_test/y_test]) or official python dir
    test_path: str | None = None  # optional separate npz with x_test/y_test
    train_size: int | None = None  # first N training images (None: all)
    val_size: int = 5000  # carved from the training images, seeded; the search sees only this
    test_size: int | None = None  # cap on test images; carved from training data if no test set
    split_seed: int = 0  # the split does not change with the trial seed
    augment: Augment = "paper"  # paper: pad 4 + random crop + flip; notebook: pad-crop + brightness
    normalize: bool = True  # per-channel mean/std of the training split
    synthetic_size: int = 512  # images per split for source=synthetic (tests only)

    def __post_init__(self) -> None:
        _check_choice("data.source", self.source, get_args(Source))
        _check_choice("data.augment", self.augment, get_args(Augment))
        if self.source in ("npz", "dir") and not self.path:
            raise ConfigError("data.path", self.path, f"a path (required for source {self.source!r})")
        for key in ("train_size", "test_size"):
            value = getattr(self, key)
            if value is not None:
                _check_positive(f"data.{key}", value, integer=True, maximum=MAX_IMAGES)
        _check_positive("data.val_size", self.val_size, integer=True, allow_zero=True, maximum=MAX_IMAGES)
        _check_positive("data.synthetic_size", self.synthetic_size, integer=True, maximum=MAX_SYNTHETIC)


@dataclass(frozen=True)
class OptimizerConfig:
    """SGD (paper: momentum 0.9, wd 1e-4 coupled L2 as in PyTorch), Adam (coupled L2) or AdamW."""

    name: OptimizerName = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4  # sgd/adam: L2 added to the gradient; adamw: decoupled
    decay_bn: bool = True  # open_lth decays every trainable tensor, γ/β included
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7

    def __post_init__(self) -> None:
        _check_choice("optimizer.name", self.name, get_args(OptimizerName))
        _check_positive("optimizer.weight_decay", self.weight_decay, allow_zero=True)
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise ConfigError("optimizer.momentum", self.momentum, "a number in [0, 1)")


def _default_backend() -> Backend:
    """``KERAS_BACKEND`` if set (how the trial runs on a JAX-only GPU machine), else TensorFlow (an
    unknown name is refused by ``TrialConfig`` with the allowed ones)."""
    import os

    return os.environ.get("KERAS_BACKEND", "tensorflow")  # type: ignore[return-value]


def _default_schedule() -> dict[str, Any]:
    return {"type": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1}


@dataclass(frozen=True)
class TrialConfig:
    """Everything one training run needs. Defaults are the paper's recipe (open_lth CIFAR ResNet)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    regime: Regime = "all"
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr: float = 0.1  # peak learning rate; with lr_scaling, per `lr_reference_batch` images
    lr_scaling: LrScaling = "none"  # linear (Goyal et al.): lr × batch/reference; sqrt: × √(batch/reference)
    lr_reference_batch: int = 128  # the batch size `lr` is quoted for when lr_scaling is not none
    lr_schedule: dict[str, Any] = field(default_factory=_default_schedule)  # see spec/schedules.py
    batch_size: int = 128
    epochs: int = 160
    seed: int = 0  # model init, random_k mask, shuffling, augmentation
    backend: Backend = field(default_factory=lambda: _default_backend())  # Keras 3 backend that trains
    jit_compile: bool | Literal["auto"] = "auto"
    threads: int | None = None  # TF intra-op threads; None: the trial's CPUs
    steps_per_epoch: int | None = None  # cap (tests, probes); None: a full pass over the data
    strategy: Strategy = "none"  # TensorFlow distribution: tpu = TPUStrategy (all cores), mirrored = all GPUs
    # Keras dtype policy; mixed_bfloat16 keeps BN statistics, logits, loss and optimizer state in float32
    precision: Precision = "float32"
    # How a configuration's seeds train: separate = one TrialRun each, fused = one FusedTrialRun
    # (engine/fused_replicates.py), auto = fused on a GPU/TPU, separate on a CPU. Not hashed (see config_hash).
    replicates_layout: ReplicatesLayout = "separate"

    def __post_init__(self) -> None:
        _check_choice("regime", self.regime, REGIMES)
        _check_positive("lr", self.lr)
        _check_positive("batch_size", self.batch_size, integer=True, maximum=MAX_BATCH)
        _check_choice("lr_scaling", self.lr_scaling, get_args(LrScaling))
        _check_positive("lr_reference_batch", self.lr_reference_batch, integer=True, maximum=MAX_BATCH)
        _check_positive("epochs", self.epochs, integer=True, maximum=MAX_EPOCHS)
        _check_choice("backend", self.backend, get_args(Backend))
        _check_choice("strategy", self.strategy, get_args(Strategy))
        _check_choice("precision", self.precision, get_args(Precision))
        _check_choice("replicates_layout", self.replicates_layout, get_args(ReplicatesLayout))
        if self.strategy != "none" and self.backend == "jax":
            raise ConfigError("strategy", self.strategy, "'none' unless backend is 'tensorflow' (or 'auto')")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError("seed", self.seed, "an integer")
        if not isinstance(self.lr_schedule, dict) or "type" not in self.lr_schedule:
            raise ConfigError("lr_schedule", self.lr_schedule, "a mapping with a 'type' key")
        _check_choice("lr_schedule.type", self.lr_schedule["type"], SCHEDULE_TYPES)
        object.__setattr__(self, "lr_schedule", resolve_schedule(self.lr_schedule))
        if self.steps_per_epoch is not None:
            _check_positive("steps_per_epoch", self.steps_per_epoch, integer=True, maximum=10**9)
        if self.threads is not None:
            _check_positive("threads", self.threads, integer=True, maximum=4096)

    @property
    def effective_lr(self) -> float:
        """The peak LR the optimizer uses: ``lr`` scaled from ``lr_reference_batch`` to ``batch_size``.

        >>> TrialConfig(lr=0.1, batch_size=1024, lr_scaling="linear").effective_lr
        0.8
        """
        ratio = self.batch_size / self.lr_reference_batch
        factor = {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[self.lr_scaling]
        return float(self.lr * factor)

    # ---- plain dicts (what Ray Tune passes around and what the results table stores) ----
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialConfig:
        """Build from a nested (or dotted-key) dict; unknown keys raise ``ConfigError``."""
        nested = unflatten(d)
        kwargs: dict[str, Any] = {}
        sub = {"model": ModelConfig, "data": DataConfig, "optimizer": OptimizerConfig}
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in nested.items():
            if key not in names:
                raise ConfigError(key, value, "a trial-config key: " + ", ".join(sorted(names)))
            if key in sub:
                if not isinstance(value, dict):
                    raise ConfigError(key, value, "a mapping")
                sub_names = {f.name for f in dataclasses.fields(sub[key])}
                for k in value:
                    if k not in sub_names:
                        raise ConfigError(f"{key}.{k}", value[k], "one of " + ", ".join(sorted(sub_names)))
                try:
                    kwargs[key] = sub[key](**value)
                except TypeError as e:  # pragma: no cover - guarded above
                    raise ConfigError(key, value, str(e)) from None
            elif key == "lr_schedule":
                kwargs[key] = dict(value) if isinstance(value, dict) else value
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> TrialConfig:
        """A copy with dotted-key changes: ``cfg.replace(**{"model.depth": 8})``."""
        d = flatten(self.to_dict())
        for k, v in changes.items():
            d = {key: val for key, val in d.items() if key != k and not key.startswith(k + ".")}
            d[k] = v
        return TrialConfig.from_dict(d)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"depth": 20}}`` -> ``{"model.depth": 20}``; ``lr_schedule`` stays one dict."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "lr_schedule":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(d: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``flatten``; also merges already-nested parts."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        parts = k.split(".")
        if parts[0] == "lr_schedule" and len(parts) > 1:
            out.setdefault("lr_schedule", {})[".".join(parts[1:])] = v
            continue
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(v, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(v)
        else:
            node[parts[-1]] = v
    return out


# Not part of what a configuration is: how its replicates are scheduled (a run may switch on resume; the
# separate and fused layouts train the same numbers).
NOT_HASHED = ("replicates_layout",)
# Fields added after run directories existed: hashed only when not at their default, so the runs made
# before them keep their hashes (and resume).
HASHED_UNLESS_DEFAULT: dict[str, Any] = {"precision": "float32", "model.arch": "resnet"}


def config_hash(cfg: TrialConfig, *, ignore: tuple[str, ...] = ()) -> str:
    """12 hex digits naming a configuration; ``ignore=("seed",)`` groups replicates together.

    >>> config_hash(TrialConfig(replicates_layout="fused")) == config_hash(TrialConfig())
    True
    >>> config_hash(TrialConfig(precision="mixed_bfloat16")) == config_hash(TrialConfig())
    False
    """
    d = {k: v for k, v in flatten(cfg.to_dict()).items()
         if k not in ignore and k not in NOT_HASHED and HASHED_UNLESS_DEFAULT.get(k, object()) != v}
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
