"""What a scene is made of: :class:`SceneObject` (one painted object) and :class:`Scene` (a rendered scene
with its caption and exact label maps)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from groupvit.data.synthetic.vocabulary import HELDOUT_COMBINATIONS


@dataclass(frozen=True)
class SceneObject:
    """One painted object.

    ``center`` (x, y) and ``size`` (diameter of the circumscribed circle) are in pixels; ``angle`` is
    the rotation in radians. ``rgb`` is the painted colour (None: the named colour). ``box`` (x0, y0,
    x1, y1, ends exclusive) and ``area`` describe the visible pixels once rendered (None / 0 before
    rendering or when the object is fully covered).
    """

    colour: str
    shape: str
    center: tuple[float, float]
    size: float
    angle: float = 0.0
    mentioned: bool = True
    rgb: tuple[int, int, int] | None = None
    box: tuple[int, int, int, int] | None = None
    area: int = 0

    @property
    def heldout(self) -> bool:
        """Whether (colour, shape) is one of ``HELDOUT_COMBINATIONS``."""
        return (self.colour, self.shape) in HELDOUT_COMBINATIONS


@dataclass
class Scene:
    """A rendered scene.

    Attributes:
        image: uint8 [H, W, 3] RGB.
        caption: the caption (lower case).
        labels: uint8 [H, W], things vocabulary (``THING_CLASSES``: 0 background, 1..6 shapes).
        stuff_labels: uint8 [H, W], ``STUFF_AND_THING_CLASSES`` (0..5 shapes, 6.. backgrounds).
        instances: uint8 [H, W], 0 = background, k = ``objects[k - 1]``.
        objects: the objects in painting order (later ones on top), with visible boxes and areas.
        background: the background name.
        index: the sample index it was generated from (-1 for a hand-built scene).
    """

    image: np.ndarray
    caption: str
    labels: np.ndarray
    stuff_labels: np.ndarray
    instances: np.ndarray
    objects: list[SceneObject]
    background: str
    index: int = -1
