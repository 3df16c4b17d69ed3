"""The fully resolved configuration of one trial: typed (pydantic, strict), frozen, validated, hashable.

A trial config is what Ray Tune hands a worker (as a plain nested ``dict``) and what the results table records.
``TrialConfig.from_dict(d).to_dict()`` round-trips, and ``config_hash`` identifies a configuration (open_lth
style: every record and checkpoint carries it, and a checkpoint of another configuration is refused), so the
recorded config is the config that trained. Every field's help text is
its ``Field(description=...)``: the results-table column docs and ``bnsweep plan --help`` read it from there.

>>> cfg = TrialConfig.from_dict({"regime": "bn", "model": {"depth": 8}, "epochs": 2, "optimizer.momentum": 0})
>>> cfg.model.depth, cfg.regime, cfg.lr_schedule.type, cfg.optimizer.momentum
(8, 'bn', 'multistep', 0.0)
>>> len(config_hash(cfg))
12
>>> TrialConfig.from_dict({"lr_schedule": {"type": "cosine", "warmup_epochs": 30}, "epochs": 20}).warnings()
[('lr_schedule.warmup_epochs', 'a warm-up of 30 epochs in a run of 20 epochs: the run ends before the LR has \
warmed up')]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from bnsweep.spec.errors import ConfigError
from bnsweep.spec.fields import Allowed, Section, config_errors, selector_of, tags_of
from bnsweep.spec.schedules import MultiStepSchedule, Schedule

Regime = Literal[
    "all", "bn", "bn_output", "bn_shortcut_output", "shortcut_output", "output", "none", "random_k",
    "random_k_channel",
]
REGIMES: tuple[str, ...] = get_args(Regime)
# resnet: the paper's He et al. CIFAR ResNet (depth 6·D+2); idiomatic_bottleneck: the seed notebooks'
# "ResNet20", keras-idiomatic-programmer's bottleneck ResNet v1 (depth 9·n+2), engine/bottleneck.py.
Arch = Literal["resnet", "idiomatic_bottleneck"]
Backend = Literal["tensorflow", "jax", "auto"]  # auto: engine.backend.resolve_backend (JAX on a GPU, else TF)
Precision = Literal["float32", "mixed_bfloat16"]
ReplicatesLayout = Literal["separate", "fused", "auto"]


# Upper bounds: far above any CIFAR study, low enough that a typo (an extra digit, 1e30) is refused
# before `plan` or a worker tries to build or allocate it.
MAX_DEPTH = 6 * 500 + 2  # the paper's deepest is 866 (D = 144)
MAX_WIDTH = 1024  # the paper's widest is 32
MAX_IMAGES = 10**9  # per split
MAX_SYNTHETIC = 10**6  # synthetic images per split (3 KB each)
MAX_BATCH = 2**20
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1  # NumPy's and TensorFlow's seeds

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Beta = Annotated[float, Field(ge=0, lt=1)]
PathText = Annotated[str, Field(min_length=1)]


# depth rule per network: (step, smallest depth, examples)
_DEPTH_RULES: dict[str, tuple[int, int, str]] = {
    "resnet": (6, 8, "8, 14, 20, 32, 56, 110, ..."),
    "idiomatic_bottleneck": (9, 11, "11, 20, 56, 110, 164, 1001"),
}

Depth = Annotated[int, Field(ge=8, le=MAX_DEPTH), Allowed(
    f"6·D+2 with 1 <= D <= {(MAX_DEPTH - 2) // 6} (8, 14, 20, 32, 56, 110, ...); "
    "arch idiomatic_bottleneck: 9·n+2 (11, 20, 56, ...)")]


class ModelConfig(Section):
    """CIFAR ResNet of depth 6·D+2 and width multiplier W (He et al. 2016; the paper's family), or with
    ``arch: idiomatic_bottleneck`` the notebooks' bottleneck ResNet of depth 9·n+2."""

    _key: ClassVar[str] = "model"
    depth: Depth = Field(20, description="network depth (resnet: 6·D+2 — 8, 14, 20, 32, 56, 110, 218, 434, 866; "
                                         "idiomatic_bottleneck: 9·n+2)")
    width: int = Field(1, ge=1, le=MAX_WIDTH, description="width multiplier W (16·W, 32·W, 64·W filters; W > 1: WRN)")
    gamma_init: Literal["uniform", "ones"] = Field(
        "uniform", description="BN γ initialization (uniform: the paper's U[0,1); ones: the Keras default)")
    num_classes: int = Field(10, ge=1, le=100_000, description="output classes")
    arch: Arch = Field("resnet", description="network (resnet: the paper's; idiomatic_bottleneck: the notebooks')")

    @model_validator(mode="after")
    def _depth_of_arch(self) -> ModelConfig:
        step, low, examples = _DEPTH_RULES[self.arch]
        if not low <= self.depth <= MAX_DEPTH or (self.depth - 2) % step:
            unit = "n" if step == 9 else "D"
            raise ConfigError("depth", self.depth,
                              f"{step}·{unit}+2 with 1 <= {unit} <= {(MAX_DEPTH - 2) // step} ({examples})"
                              + (f" for arch {self.arch}" if self.arch != "resnet" else ""))
        return self

    @property
    def blocks_per_stage(self) -> int:
        """Residual blocks per stage: D (resnet) or n (idiomatic_bottleneck: 1 projection + n−1 identity)."""
        return (self.depth - 2) // (9 if self.arch == "idiomatic_bottleneck" else 6)


class DataConfig(Section):
    """Where the images come from and how they are split, normalized and augmented."""

    _key: ClassVar[str] = "data"
    source: Literal["cifar10", "npz", "dir", "synthetic"] = Field(
        "cifar10", description="data source kind (cifar10, npz, dir, synthetic)")
    path: PathText | None = Field(None, description="data file or directory (source npz: x_train/y_train[/x_test/"
                                                "y_test]; dir: the official python batches)")
    test_path: PathText | None = Field(None, description="separate test npz (x_test/y_test), if any")
    train_size: int | None = Field(None, ge=1, le=MAX_IMAGES,
            description="first N training images used, validation included (empty: all)")
    val_size: int = Field(5000, ge=0, le=MAX_IMAGES,
            description="validation images carved (seeded) from the training data; the search sees only these")
    test_size: int | None = Field(None, ge=1, le=MAX_IMAGES,
            description="cap on test images (carved from the training data if the source has no test set)")
    split_seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the train/val(/test) split (not the trial seed)")
    augment: Literal["paper", "notebook", "none"] = Field(
        "paper", description="augmentation (paper: pad 4 + random crop + flip; notebook: pad-crop + brightness)")
    normalize: bool = Field(True, description="per-channel mean/std normalization of the training split")
    synthetic_size: int = Field(512, ge=1, le=MAX_SYNTHETIC,
            description="images per split for source synthetic (tests)")

    @model_validator(mode="after")
    def _path_for_files(self) -> DataConfig:
        if self.source in ("npz", "dir") and not self.path:
            raise ConfigError("path", self.path, f"a path (required for source {self.source!r})")
        return self

    def known_train_images(self) -> int | None:
        """At most how many images train, as far as the config alone says (``train_size`` less the validation
        images carved from it); None: it depends on the data (or the source is synthetic)."""
        if self.source == "synthetic" or self.train_size is None:
            return None
        return self.train_size - self.val_size


class OptimizerConfig(Section):
    """SGD (paper: momentum 0.9, wd 1e-4 coupled L2 as in PyTorch), Adam (coupled L2) or AdamW."""

    _key: ClassVar[str] = "optimizer"
    name: Literal["sgd", "adam", "adamw"] = Field("sgd", description="optimizer (sgd, adam, adamw)")
    momentum: Beta = Field(0.9, description="SGD momentum (PyTorch's form)")
    nesterov: bool = Field(False, description="Nesterov momentum")
    weight_decay: NonNegative = Field(
        1e-4, description="weight decay (L2 added to the gradient for sgd/adam, decoupled for adamw)")
    decay_bn: bool = Field(True, description="weight decay applied to BN γ/β too (open_lth decays every tensor)")
    beta_1: Beta = Field(0.9, description="Adam β1")
    beta_2: Beta = Field(0.999, description="Adam β2")
    epsilon: Positive = Field(1e-7, description="Adam ε")


def _default_backend() -> str:
    """``KERAS_BACKEND`` if set (how the trial runs on a JAX-only GPU machine), else TensorFlow (an unknown
    name is refused with the allowed ones)."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


class TrialConfig(Section):
    """Everything one training run needs. Defaults are the paper's recipe (open_lth CIFAR ResNet)."""

    model: ModelConfig = Field(ModelConfig(), description="the network")
    regime: Regime = Field("all", description="freezing regime: which parameters train")
    data: DataConfig = Field(DataConfig(), description="the data")
    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="the optimizer")
    lr: Positive = Field(0.1, description="peak learning rate (per lr_reference_batch images when lr_scaling is set)")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="LR scaling with batch size (linear: lr × batch/reference; sqrt: × √(batch/reference))")
    lr_reference_batch: int = Field(128, ge=1, le=MAX_BATCH, description="the batch size lr is quoted for")
    lr_schedule: Annotated[Schedule, Allowed("a mapping with a 'type' key")] = Field(
        MultiStepSchedule(), description="the LR schedule over the run (spec/schedules.py)")
    batch_size: int = Field(128, ge=1, le=MAX_BATCH, description="training batch size")
    epochs: int = Field(160, ge=1, le=MAX_EPOCHS, description="planned epochs")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="model init, random_k mask, shuffling, augmentation")
    backend: Backend = Field(
        default_factory=_default_backend, validate_default=True,
        description="Keras backend the trial asks for (tensorflow, jax, auto: JAX where a GPU is visible and JAX "
                    "has CUDA, else TensorFlow; default: KERAS_BACKEND)")
    jit_compile: bool | Literal["auto"] = Field("auto", description="XLA compilation (true, false, auto)")
    threads: int | None = Field(None, ge=1, le=4096,
            description="TensorFlow intra-op threads (empty: the trial's CPUs)")
    steps_per_epoch: int | None = Field(None, ge=1, le=10**9,
            description="cap on steps per epoch (tests, probes; empty: a full pass)")
    strategy: Literal["none", "mirrored", "tpu"] = Field(
        "none", description="TensorFlow distribution strategy (tpu: TPUStrategy on all cores; mirrored: all GPUs)")
    precision: Precision = Field(
        "float32", description="Keras dtype policy (mixed_bfloat16 keeps BN statistics, logits, loss and optimizer "
                               "state in float32)")
    replicates_layout: ReplicatesLayout = Field(
        "separate", description="how a configuration's seeds train (separate: one TrialRun each; fused: one "
                                "FusedTrialRun; auto: fused on a GPU/TPU); not hashed")

    @model_validator(mode="after")
    def _consistent(self) -> TrialConfig:
        if self.strategy != "none" and self.backend == "jax":
            raise ConfigError("strategy", self.strategy, "'none' unless backend is 'tensorflow' (or 'auto')")
        images = self.data.known_train_images()
        if images is not None and images < 1:
            raise ConfigError("data.val_size", self.data.val_size,
                              f"fewer than data.train_size ({self.data.train_size}): validation is carved from them")
        if images is not None and self.batch_size > images:
            where = f"data.train_size {self.data.train_size} − data.val_size {self.data.val_size} = {images:,}"
            raise ConfigError("batch_size", self.batch_size, f"at most the training images ({where})")
        return self

    @property
    def effective_lr(self) -> float:
        """The peak LR the optimizer uses: ``lr`` scaled from ``lr_reference_batch`` to ``batch_size``.

        >>> TrialConfig(lr=0.1, batch_size=1024, lr_scaling="linear").effective_lr
        0.8
        """
        ratio = self.batch_size / self.lr_reference_batch
        factor = {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[self.lr_scaling]
        return float(self.lr * factor)

    def warnings(self) -> list[tuple[str, str]]:
        """``(dotted key, message)`` for what this config will not do as written (not errors)."""
        return [(f"lr_schedule.{k}", m) for k, m in self.lr_schedule.warnings(self.epochs)]

    # ---- plain dicts (what Ray Tune passes around and what the results table stores) ----
    def to_dict(self) -> dict[str, Any]:
        """The nested plain dict (lists for lists, every default filled in)."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialConfig:
        """Build from a nested (or dotted-key) dict; the first problem raises ``ConfigError``."""
        data = unflatten(dict(d))
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise config_errors(e, cls, data)[0] from None

    def replace(self, **changes: Any) -> TrialConfig:
        """A copy with dotted-key changes: ``cfg.replace(**{"model.depth": 8})``."""
        d = flatten(self.to_dict())
        for k, v in changes.items():
            set_key(d, k, v)
        return TrialConfig.from_dict(d)


# ---------------------------------------------------------------- keys


def sections() -> dict[str, FieldInfo]:
    """Trial-config fields that are sections (their keys are dotted: ``model.depth``, ``lr_schedule.type``)."""
    return {name: f for name, f in TrialConfig.model_fields.items() if tags_of(f) or _section_model(f)}


def _section_model(f: FieldInfo) -> type[Section] | None:
    a = f.annotation
    return a if isinstance(a, type) and issubclass(a, Section) else None


def _section_models(f: FieldInfo) -> list[type[BaseModel]]:
    """The model of a section field (a tagged section: every kind's, in order)."""
    single = _section_model(f)
    return list(tags_of(f).values()) or ([single] if single else [])


def section_keys(name: str) -> tuple[str, ...]:
    """The keys of a section (a tagged one: every kind's, the tag first).

    >>> section_keys("model"), section_keys("lr_schedule")[:3]
    (('depth', 'width', 'gamma_init', 'num_classes', 'arch'), ('type', 'milestones', 'every'))
    """
    f = TrialConfig.model_fields[name]
    return tuple(dict.fromkeys(k for m in _section_models(f) for k in m.model_fields))


def selectors() -> dict[str, str]:
    """Tagged sections -> their tag key: changing the tag starts the section afresh (``{'lr_schedule': 'type'}``)."""
    return {name: s for name, f in sections().items() if (s := selector_of(f))}


def set_key(flat: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in a flat config: it replaces ``key`` and what is under it; a new tag of a tagged section
    (``lr_schedule.type``) also drops the old kind's parameters.

    >>> d = {"lr_schedule.type": "step", "lr_schedule.every": 3, "lr": 0.1}
    >>> set_key(d, "lr_schedule.type", "cosine"); d
    {'lr': 0.1, 'lr_schedule.type': 'cosine'}
    """
    section, _, leaf = key.partition(".")
    reset = selectors().get(section) == leaf and flat.get(key, value) != value
    drop = section if reset else key
    for k in [k for k in flat if k == drop or k.startswith(drop + ".")]:
        del flat[k]
    flat[key] = value


def with_default_tags(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flat config where a tagged section is set without its tag (``lr_schedule.gamma`` alone): the default
    config's kind (``--set lr_schedule.gamma=0.5`` changes the default multistep schedule).

    >>> with_default_tags({"lr_schedule.gamma": 0.5})
    {'lr_schedule.gamma': 0.5, 'lr_schedule.type': 'multistep'}
    """
    out = dict(flat)
    for section, tag in selectors().items():
        if f"{section}.{tag}" not in out and any(k.startswith(section + ".") for k in out):
            out[f"{section}.{tag}"] = getattr(getattr(TrialConfig(), section), tag)
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"depth": 20}}`` -> ``{"model.depth": 20}`` (every section alike, the LR schedule's too)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(d: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of ``flatten``; also merges already-nested parts."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        parts = k.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):  # "model": 20 and "model.depth": 8 — the validator names it
                break
        else:
            if isinstance(v, Mapping) and isinstance(node.get(parts[-1]), dict):
                node[parts[-1]] = {**node[parts[-1]], **unflatten(v)}
            else:
                node[parts[-1]] = v
    return out


def _hashed_items(cfg: TrialConfig) -> Iterator[tuple[str, Any]]:
    """What a config hash covers: sections as dotted keys, a tagged section as one value (its keys depend on its
    tag) — the encoding the hashes of every run directory so far were made with."""
    tagged = selectors()
    for name, value in cfg.to_dict().items():
        if name in tagged or not isinstance(value, dict):
            yield name, value
        else:
            yield from flatten(value, name + ".").items()


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
    d = {k: v for k, v in _hashed_items(cfg)
         if k not in ignore and k not in NOT_HASHED and HASHED_UNLESS_DEFAULT.get(k, object()) != v}
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def config_keys() -> dict[str, FieldInfo]:
    """Every dotted trial-config key -> its field (a tagged section: each parameter once, from its first kind).

    >>> keys = config_keys(); keys["model.depth"].description.split(" (")[0], "lr_schedule.warmup_epochs" in keys
    ('network depth', True)
    """
    out: dict[str, FieldInfo] = {}
    for name, f in TrialConfig.model_fields.items():
        if name not in sections():
            out[name] = f
            continue
        for m in _section_models(f):
            for k, g in m.model_fields.items():
                out.setdefault(f"{name}.{k}", g)
    return out


def keys_help() -> str:
    """Every trial-config key with its description, one per line (``bnsweep plan --help``); a tagged section's
    parameters say which kinds have them.

    >>> keys_help().splitlines()[0].split()[:3]
    ['model.depth', 'network', 'depth']
    >>> [line.split()[-1] for line in keys_help().splitlines() if "lr_schedule.every" in line]
    ['(step)']
    """
    keys = {k: f for k, f in config_keys().items() if k != "seed"}
    pad = max(len(k) for k in keys) + 2
    lines = []
    for key, f in keys.items():
        section, _, leaf = key.partition(".")
        kinds = tags_of(TrialConfig.model_fields[section]) if section in TrialConfig.model_fields else {}
        used = [t for t, m in kinds.items() if leaf in m.model_fields] if leaf != selectors().get(section) else []
        lines.append(f"  {key:<{pad}}{f.description or ''}" + (f" ({', '.join(used)})" if used else ""))
    return "\n".join(lines)
