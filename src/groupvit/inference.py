"""Inference settings that travel with the weights, and the one resolver every surface uses.

A checkpoint of this package may carry an ``inference`` mapping: the settings its model segments best with
(short side, mode, window and stride, background rule and its parameters, refinement, prompt templates).
``groupvit train`` writes the config's ``inference:`` section into every checkpoint, :func:`groupvit.save_checkpoint`
writes ``model.inference``, and ``groupvit export onnx`` copies it into the export. Official NVlabs and Hugging
Face weights carry none, so they keep the official protocol exactly.

Per setting, the first of these that has a value wins (:func:`resolve_settings`):

1. what the caller typed (a command-line flag, a keyword of :class:`~groupvit.Segmenter`, a choice in the page);
2. the weights' ``inference`` section;
3. the surface's own default (a benchmark's background threshold, the demo's rule);
4. the official protocol (:data:`OFFICIAL`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from groupvit.errors import GroupViTError, InputError
from groupvit.text.templates import TEMPLATES

MODES = ("slide", "whole")
BACKGROUND_RULES = ("threshold", "best-group", "mutual")
# best_group_classes when not given: 'mutual' may pair the image's two best classes (the synthetic scenes' choice).
RULE_CLASSES = {"threshold": 1, "best-group": 1, "mutual": 2}
REFINE_METHODS = ("none", "superpixel", "pamr")

# The official evaluation protocol (reference §5.2): short side 448, 448 px windows every 224 px, the VOC
# background threshold, no refinement, the one-sentence template.
OFFICIAL: dict[str, Any] = {
    "short_side": 448, "mode": "slide", "window": 448, "stride": 224, "background_rule": "threshold",
    "best_group_classes": None, "bg_thresh": 0.95, "refine": "none", "templates": "simple",
}
SETTINGS = tuple(OFFICIAL)
# Names as they appear in the one line each command prints.
LABELS = {"short_side": "short side", "mode": "mode", "window": "window", "stride": "stride",
          "background_rule": "background rule", "best_group_classes": "classes per rule", "bg_thresh": "bg thresh",
          "refine": "refine", "templates": "templates"}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_settings(
    settings: Mapping[str, Any] | None, where: str, error: type[GroupViTError] = InputError
) -> dict[str, Any]:
    """Validated copy of an ``inference`` mapping (``None`` values dropped, ``refine: null`` read as ``'none'``).

    Args:
        settings: keys of :data:`SETTINGS`, each optional.
        where: what holds them, for the message (``"the inference section of run/latest.pt"``).
        error: the exception type raised (``ConfigError`` for a config, ``WeightsError`` for weights).

    Raises:
        ``error``: not a mapping, an unknown key, or a value of the wrong kind, with the key named.
    """
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise error(f"{where} must be a mapping of inference settings, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise error(f"{where} has unknown keys {unknown}; known: {', '.join(SETTINGS)}")
    out = {key: value for key, value in settings.items() if value is not None or key == "refine"}
    if "refine" in out and out["refine"] is None:
        out["refine"] = "none"

    def bad(key: str, wanted: str) -> GroupViTError:
        return error(f"{where}: {key} must be {wanted}, got {out[key]!r}")

    for key in ("short_side", "window", "stride", "best_group_classes"):
        if key in out and not _positive_int(out[key]):
            raise bad(key, "a positive integer")
    for key, allowed in (("mode", MODES), ("background_rule", BACKGROUND_RULES), ("refine", REFINE_METHODS)):
        if key in out and out[key] not in allowed:
            raise bad(key, f"one of {', '.join(allowed)}")
    if "bg_thresh" in out:
        value = out["bg_thresh"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad("bg_thresh", "a finite number")
        out["bg_thresh"] = float(value)
    if "templates" in out:
        value = out["templates"]
        named = isinstance(value, str) and value in TEMPLATES
        listed = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
                  and all(isinstance(t, str) and "{}" in t for t in value))
        if not (named or listed):
            raise bad("templates", f"one of {', '.join(sorted(TEMPLATES))} or a list of strings with '{{}}'")
        out["templates"] = value if named else list(value)
    return out


def model_settings(model: Any) -> dict[str, Any]:
    """The ``inference`` settings a model (or an ONNX export) carries; empty for official and Hugging Face weights."""
    return dict(getattr(model, "inference", None) or {})


@dataclass(frozen=True)
class ResolvedSettings:
    """Every setting of :data:`SETTINGS` with a value, and where each came from.

    Attributes:
        values: setting -> value (``best_group_classes`` always an int).
        origins: setting -> ``"typed"``, ``"weights"``, ``"default"`` (the surface's own) or ``"official"``.
    """

    values: dict[str, Any]
    origins: dict[str, str]

    def from_origin(self, origin: str) -> list[str]:
        """The settings that came from ``origin``, in :data:`SETTINGS` order."""
        return [key for key in SETTINGS if self.origins[key] == origin]

    def describe_origins(self) -> str:
        """Where the settings came from, for the one line a command prints (``"from the weights: short side,
        mode; typed: refine"``), or ``"the official protocol"`` when nothing was typed or carried."""
        parts = [f"{name}: {', '.join(LABELS[key] for key in keys)}"
                 for name, keys in (("from the weights", self.from_origin("weights")),
                                    ("typed", self.from_origin("typed"))) if keys]
        return "; ".join(parts) if parts else "the official protocol"


def resolve_settings(
    weights: Mapping[str, Any] | None, typed: Mapping[str, Any] | None, defaults: Mapping[str, Any] | None = None,
) -> ResolvedSettings:
    """(the weights' settings, what the user typed) -> the settings to segment with (module docstring: the order).

    ``None`` values in ``typed`` and ``defaults`` count as not given. ``best_group_classes`` follows its rule: the
    weights' (or the defaults') count is used only with the rule they name (or with their rule unchanged), so a typed
    ``background_rule`` never inherits another rule's count; without one the rule's :data:`RULE_CLASSES` applies.

    Raises:
        InputError: a typed value of the wrong kind (the weights' settings are checked when the weights are read).
    """
    layers = [("typed", check_settings({k: v for k, v in (typed or {}).items() if v is not None}, "the settings")),
              ("weights", dict(weights or {})),
              ("default", check_settings({k: v for k, v in (defaults or {}).items() if v is not None},
                                         "the defaults")),
              ("official", {k: v for k, v in OFFICIAL.items() if v is not None})]
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for key in SETTINGS:
        if key == "best_group_classes":
            continue
        origin, layer = next((name, layer) for name, layer in layers if key in layer)
        values[key], origins[key] = layer[key], origin
    rule = values["background_rule"]
    for origin, layer in layers[:3]:
        if "best_group_classes" in layer and (origin == "typed" or layer.get("background_rule", rule) == rule):
            values["best_group_classes"], origins["best_group_classes"] = layer["best_group_classes"], origin
            break
    else:
        values["best_group_classes"], origins["best_group_classes"] = RULE_CLASSES[rule], "official"
    return ResolvedSettings({key: values[key] for key in SETTINGS}, {key: origins[key] for key in SETTINGS})
