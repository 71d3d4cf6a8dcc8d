"""Fine-tuning: start from released or own weights (``model.init``) and choose what trains (``train.trainable``).

``model.init`` takes anything :func:`groupvit.load_pretrained` takes; the architecture is the weights'. Other
``model`` keys may change what does not change a parameter's shape (e.g. ``vision.drop_path_rate``); a key
that contradicts the weights is refused with one line naming it.

``train.trainable`` is ``all``, ``vision`` (the image tower, its projection head and the temperatures; the
text tower and its head frozen), ``group-tokens`` (only the learnable group tokens) or a list of parameter-name
patterns (:func:`fnmatch.fnmatchcase`, e.g. ``["vision.stages.*.group_token", "image_projector.*"]``). Frozen
parameters get no gradient, no optimiser state and no weight decay, and BatchNorm layers whose parameters are
all frozen keep their running statistics (they run in eval mode while the rest trains).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from torch import nn

from groupvit.config import GroupViTConfig
from groupvit.errors import ConfigError, GroupViTError
from groupvit.model import GroupViT

TRAINABLE = {
    "all": ("*",),
    "vision": ("vision.*", "image_projector.*", "logit_scale", "multi_label_logit_scale"),
    "group-tokens": ("vision.stages.*.group_token",),
}


def load_init(source: str) -> GroupViT:
    """The weights of ``model.init`` (a name, file, Hugging Face folder or hub id), on the CPU.

    Raises:
        ConfigError: the weights cannot be read (one line, naming ``model.init`` and the reason).
    """
    from groupvit.weights import load_pretrained

    try:
        return load_pretrained(source)
    except GroupViTError as err:
        raise ConfigError(f"model.init={source!r}: {err}") from None


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def init_config(model: GroupViT, overrides: dict[str, Any], source: str, merged: GroupViTConfig) -> GroupViTConfig:
    """``merged`` (the weights' configuration with the other ``model`` keys over it) when the weights fit it.

    Raises:
        ConfigError: a key changes the shape or the set of parameters; the message names the first such key.
    """
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    built = {name: tuple(t.shape) for name, t in GroupViT(merged).state_dict().items()}
    if built == expected:
        return merged
    base = _flat(model.config.to_dict())
    for key, value in _flat(overrides).items():
        if base.get(key) != value and key in base:
            raise ConfigError(f"model.{key}={value!r} contradicts the weights of model.init={source!r} "
                              f"({base[key]!r}); drop the key: the architecture comes from the weights")
    raise ConfigError(f"the model keys {sorted(_flat(overrides))} do not fit the weights of model.init={source!r}")


def trainable_patterns(spec: str | Sequence[str]) -> tuple[str, ...]:
    """The parameter-name patterns of ``train.trainable``."""
    if isinstance(spec, str):
        if spec not in TRAINABLE:
            raise ConfigError(f"train.trainable must be one of {', '.join(TRAINABLE)} or a list of parameter-name "
                              f"patterns, got {spec!r}")
        return TRAINABLE[spec]
    patterns = tuple(str(p) for p in spec)
    if not patterns:
        raise ConfigError("train.trainable is an empty list; give parameter-name patterns or 'all'")
    return patterns


def apply_trainable(model: nn.Module, spec: str | Sequence[str]) -> tuple[int, int]:
    """Freeze every parameter that no pattern of ``spec`` matches; returns ``(trainable, total)`` element counts.

    Raises:
        ConfigError: a pattern that matches no parameter, or nothing left to train.
    """
    patterns = trainable_patterns(spec)
    names = [name for name, _ in model.named_parameters()]
    unused = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unused and not isinstance(spec, str):  # the presets name optional parameters (the multi-label temperature)
        raise ConfigError(f"train.trainable pattern {unused[0]!r} matches no parameter (names look like {names[0]!r})")
    trainable = total = 0
    for name, param in model.named_parameters():
        param.requires_grad_(any(fnmatch.fnmatchcase(name, p) for p in patterns))
        trainable += param.numel() if param.requires_grad else 0
        total += param.numel()
    if trainable == 0:
        raise ConfigError(f"train.trainable={spec!r} leaves no parameter to train")
    return trainable, total


def keep_frozen_batchnorm(model: nn.Module) -> None:
    """Eval mode for every BatchNorm whose parameters are all frozen (its running statistics stay as loaded).

    Call after every ``model.train()``.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
