"""Training configuration: YAML files with ``_base_`` inheritance and dotted ``key=value`` overrides.

A file has four sections and an optional fifth::

    _base_: gcc-yfcc.yaml          # optional; a path relative to this file, or a list of them
    model:                         # a preset name plus any GroupViTConfig field, nested
      preset: gcc-yfcc
      vision: {drop_path_rate: 0.1}
    data: {...}                    # DataConfig fields of groupvit.data.loader (sources, batch_size, ...)
    train: {...}                   # TrainSection
    evaluate: {...}                # EvaluateSection
    inference: {...}               # optional: the settings the trained model segments with (groupvit.inference)

Bases are merged first (dicts recursively, anything else replaced), then the file, then the
command-line overrides such as ``train.base_lr=8e-4`` or ``model.vision.gumbel=false``; each value
is read with ``yaml.safe_load`` (``8e-4`` is a float, ``[1, 2]`` a list, ``null`` None). Integer path
parts index lists (``data.sources.0.length=1000``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from groupvit.config import GroupViTConfig, get_config
from groupvit.errors import ConfigError
from groupvit.fileio import atomic_path
from groupvit.inference import check_settings
from groupvit.model import GroupViT
from groupvit.train.finetune import init_config, load_init, trainable_patterns
from groupvit.train.group_objectives import check_group_objectives

AMP_MODES = ("auto", "bf16", "fp16", "none")


@dataclass
class TrainSection:
    """Optimisation, precision, logging and checkpointing (defaults: the official recipe).

    Learning rates are quoted for a global batch of ``lr_reference_batch`` and rescaled linearly to
    ``data.batch_size x world size`` (x ``accumulation_steps``). ``warmup_epochs`` and ``epochs`` are
    converted to optimizer steps with the loader's batches per epoch.
    """

    epochs: int = 30
    warmup_epochs: float = 2.0
    base_lr: float = 1.6e-3
    warmup_lr: float = 4e-6
    min_lr: float = 4e-5
    lr_reference_batch: int = 4096
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # Global L2 norm of all gradients; 0 disables clipping.
    clip_grad: float = 5.0
    # Micro-batches per optimizer step (0 and 1 both mean none, as official).
    accumulation_steps: int = 1
    # Mixed precision: auto (bf16 autocast on GPU, float32 on CPU), bf16 (autocast on GPU and on CPUs with
    # native bfloat16: AVX-512 BF16, AMX; float32 with a warning on others), fp16 (GPU, with a GradScaler;
    # float32 on CPU) or none (float32 everywhere).
    amp: str = "auto"
    multi_label_loss_weight: float = 1.0
    # Multi-label targets: "official" (only an image's own prompts are positives) or "words" (every prompt
    # naming one of the image's prompt words is a positive; for small vocabularies, see losses.py).
    multi_label_targets: str = "official"
    # What the multi-label prompts are scored against: "image" (official: the pooled image embedding) or
    # "max-group" (the best-matching final group of each image; see losses.py).
    multi_label_pooling: str = "image"
    # Group-level objectives beyond the paper, {name: weight} (groupvit.train.group_objectives): affinity,
    # anti_copy, prototype, mix, words, object_words. Empty (official): the loss is the paper's.
    group_objectives: dict[str, float] = field(default_factory=dict)
    # What trains (groupvit.train.finetune): all, vision, group-tokens, or a list of parameter-name patterns.
    trainable: Any = "all"
    # Stop after this many optimizer steps (the schedule still spans all epochs; a later run with a larger
    # value or 0 resumes from the checkpoint written there). 0 = train to the end.
    max_steps: int = 0
    # Periods in optimizer steps; 0 = only at the end of each epoch.
    log_every: int = 10
    ckpt_every: int = 1000
    eval_every: int = 0
    seed: int = 0
    output: str = "output/groupvit"
    device: str = "auto"
    # Intra-op CPU threads; 0 = `groupvit train` chooses them from the free cores (groupvit.threads: affinity,
    # cgroup quota, processes of this job, load of other processes), the Python Trainer leaves torch's setting.
    threads: int = 0
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if self.amp not in AMP_MODES:
            raise ConfigError(f"train.amp must be one of {list(AMP_MODES)}, got {self.amp!r}")
        if self.multi_label_targets not in ("official", "words"):
            raise ConfigError(
                f"train.multi_label_targets must be 'official' or 'words', got {self.multi_label_targets!r}"
            )
        if self.multi_label_pooling not in ("image", "max-group"):
            raise ConfigError(
                f"train.multi_label_pooling must be 'image' or 'max-group', got {self.multi_label_pooling!r}"
            )
        if not isinstance(self.group_objectives, Mapping):
            raise ConfigError("train.group_objectives must map objective names to weights, e.g. {affinity: 1.0}")
        self.group_objectives = check_group_objectives(self.group_objectives)
        for name in ("words", "object_words"):
            if self.group_objectives.get(name, 0) > 0 and self.multi_label_targets != "words":
                raise ConfigError(f"train.group_objectives.{name} needs the prompts' word ids: set "
                                  "train.multi_label_targets: words")
        if isinstance(self.trainable, list | tuple):
            self.trainable = [str(p) for p in self.trainable]
        trainable_patterns(self.trainable)
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be at least 1, got {self.epochs}")
        if self.accumulation_steps < 0:
            raise ConfigError(f"train.accumulation_steps must be >= 0, got {self.accumulation_steps}")
        for name in ("log_every", "ckpt_every", "eval_every", "max_steps", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0 (0 = at epoch end only), got {getattr(self, name)}")

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step, at least 1."""
        return max(1, self.accumulation_steps)


@dataclass
class EvaluateSection:
    """Periodic evaluation and best-checkpoint selection.

    ``hooks`` are ``{"target": "package.module:factory", **kwargs}`` entries; ``factory(**kwargs)``
    must return a callable ``hook(model, step) -> dict[str, float]``. Hooks run every
    ``train.eval_every`` steps and, when ``at_epoch_end``, after every epoch. ``best.pt`` is written
    whenever ``best_metric`` (a key of the hooks' results) improves in the ``best_mode`` direction.
    """

    at_epoch_end: bool = True
    hooks: list[dict[str, Any]] = field(default_factory=list)
    best_metric: str | None = None
    best_mode: str = "max"

    def __post_init__(self) -> None:
        if self.best_mode not in ("max", "min"):
            raise ConfigError(f"evaluate.best_mode must be max or min, got {self.best_mode!r}")
        for hook in self.hooks:
            if not isinstance(hook, Mapping) or ":" not in str(hook.get("target", "")):
                raise ConfigError(f"evaluate.hooks entries need target: 'package.module:factory', got {hook!r}")


@dataclass
class TrainConfig:
    """A whole training run. ``model`` = ``{"preset": name, **GroupViTConfig overrides}``; ``data`` =
    DataConfig fields (kept as a dict so that this module does not depend on the data package)."""

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "gcc-yfcc"})
    data: dict[str, Any] = field(default_factory=dict)
    train: TrainSection = field(default_factory=TrainSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    # Written into every checkpoint of the run (groupvit.inference); empty: those of model.init, if any.
    inference: dict[str, Any] = field(default_factory=dict)
    _init: Any = field(default=None, init=False, repr=False, compare=False)  # the loaded model.init weights
    # (model section, architecture) last checked against the model.init weights (the check builds a model)
    _init_config: Any = field(default=None, init=False, repr=False, compare=False)

    def model_config(self) -> GroupViTConfig:
        """The GroupViT architecture: the preset (or the weights of ``model.init``) with the other ``model`` keys
        merged over it."""
        overrides = dict(self.model)
        preset = overrides.pop("preset", None)
        init = overrides.pop("init", None)
        if init is not None:
            if preset is not None:
                raise ConfigError("model.preset and model.init are both given; the architecture comes from the weights "
                                  "of model.init: drop model.preset")
            if self._init_config is None or self._init_config[0] != self.model:
                weights = self.init_weights()
                merged = GroupViTConfig.from_dict(deep_merge(weights.config.to_dict(), overrides))
                self._init_config = (copy.deepcopy(self.model), init_config(weights, overrides, str(init), merged))
            return self._init_config[1]
        if not isinstance(preset, str):
            raise ConfigError("model.preset must name a preset (gcc-yfcc, gcc-redcaps, small, synthetic, tiny), or "
                              "model.init weights to start from")
        return GroupViTConfig.from_dict(deep_merge(get_config(preset).to_dict(), overrides))

    def init_weights(self) -> GroupViT | None:
        """The model of ``model.init`` (loaded once per config), or None for a run from scratch."""
        source = self.model.get("init")
        if source is None:
            return None
        if self._init is None:
            self._init = load_init(str(source))
        return self._init

    def data_config(self) -> dict[str, Any]:
        """The ``data`` section with ``multi_label``, ``context_length`` and ``image.image_size`` filled in
        from the model.

        Raises ConfigError when the data asks for another number of prompts or image size than the model's.
        """
        data = copy.deepcopy(self.data)
        model = self.model_config()
        data.setdefault("multi_label", model.multi_label)
        data.setdefault("context_length", model.text.context_length)
        image = dict(data.get("image") or {})
        image.setdefault("image_size", model.vision.image_size)
        data["image"] = image
        if data["multi_label"] != model.multi_label:
            raise ConfigError(
                f"data.multi_label={data['multi_label']} but the model has multi_label={model.multi_label}; "
                "set both to the same K (or drop data.multi_label)"
            )
        if image["image_size"] != model.vision.image_size:
            raise ConfigError(
                f"data.image.image_size={image['image_size']} but the model trains at {model.vision.image_size} "
                "pixels (official: 224; position embeddings are interpolated only at evaluation)"
            )
        return data

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for YAML."""
        sections = {"model": self.model, "data": self.data, "train": dataclasses.asdict(self.train),
                    "evaluate": dataclasses.asdict(self.evaluate)}
        if self.inference:
            sections["inference"] = self.inference
        return _plain(sections)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build and validate; unknown sections or keys are refused with their names."""
        unknown = sorted(set(data) - {"model", "data", "train", "evaluate", "inference"})
        if unknown:
            raise ConfigError(f"unknown config sections {unknown}; known: model, data, train, evaluate, inference")
        for name in ("model", "data", "train", "evaluate"):
            if data.get(name) is not None and not isinstance(data[name], Mapping):
                raise ConfigError(f"config section {name!r} must be a mapping, got {type(data[name]).__name__}")
        config = cls(
            model=copy.deepcopy(dict(data.get("model") or {"preset": "gcc-yfcc"})),
            data=copy.deepcopy(dict(data.get("data") or {})),
            train=dataclass_from_dict(TrainSection, data.get("train") or {}, "train"),
            evaluate=dataclass_from_dict(EvaluateSection, data.get("evaluate") or {}, "evaluate"),
            inference=check_settings(data.get("inference"), "config section 'inference'", ConfigError),
        )
        config.model_config()  # validate the architecture now, not at the first step
        return config


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML value to a field's type: numbers from strings (``1e-3``), ints to floats, nested dataclasses."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], where) if len(options) == 1 else value
    if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return dataclass_from_dict(annotation, value, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if annotation is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if annotation is int and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("+-").isdigit()):
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if annotation in (int, float):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if annotation is str and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(annotation)
        if Ellipsis not in args and len(args) != len(value):
            raise ConfigError(f"{where} needs {len(args)} values, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))  # homogeneous tuples
    return value


def dataclass_from_dict(cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``: values coerced to the field types, nested dataclasses
    built recursively, unknown keys refused (ConfigError naming them and the known keys)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    prefix = f"{where}." if where else ""
    if unknown:
        raise ConfigError(f"unknown {where or cls.__name__} keys {unknown}; known keys are {sorted(known)}")
    values = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**values)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged over it: mappings recursively, every other value replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | os.PathLike[str], _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, resolving ``_base_`` (a path or list of paths relative to the file) recursively."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config {path} includes itself through _base_")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a mapping at the top level")
    bases = data.pop("_base_", [])
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = deep_merge(merged, load_yaml(path.parent / base, (*_seen, path)))
    return deep_merge(merged, data)


def apply_overrides(data: Mapping[str, Any], items: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` items to a nested dict; missing mapping levels are created."""
    out = copy.deepcopy(dict(data))
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.epochs=10)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {key!r}: {part!r} is not an index of a list of {len(node)}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(f"override {key!r}: {'.'.join(parts[:i])!r} is a value, not a section")
    return out


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """Load ``path`` (with its bases), apply the dotted overrides and validate."""
    return TrainConfig.from_dict(apply_overrides(load_yaml(path), overrides))


def save_config(config: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML (atomically); :func:`load_config` reads it back unchanged."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return Path(path)
