"""The scenes' vocabularies: shapes, colours, backgrounds, held-out pairs, label classes, splits and the
constants of placement and painting."""

from __future__ import annotations

import numpy as np

from groupvit.data.synthetic_captions import BACKGROUND_PHRASES

# Six outlines a person tells apart at a glance even at 64 pixels (no diamond next to a turned square, no
# hexagon next to a circle).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
# Two shapes the standard scenes never hold, for a domain to fine-tune to (``shapes="extended"``): an elongated
# rhombus (not a turned square) and a hexagon (six straight edges, sharp at 64 pixels only when large).
NEW_SHAPES: tuple[str, ...] = ("diamond", "hexagon")
ALL_SHAPES: tuple[str, ...] = (*SHAPES, *NEW_SHAPES)
# Shapes a generator draws from: the standard scenes, or those and the new shapes.
SHAPE_SETS: dict[str, tuple[str, ...]] = {"standard": SHAPES, "extended": ALL_SHAPES}

# Saturated, flat colours, far from the muted textures of the backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (20, 190, 70),
    "blue": (30, 70, 225),
    "yellow": (245, 220, 30),
    "orange": (250, 130, 20),
    "purple": (145, 45, 195),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}

BACKGROUNDS: tuple[str, ...] = ("grass", "sand", "water", "brick", "sky", "wood")

# One pair per colour and per shape at most, so every colour and every shape is still seen in training.
HELDOUT_COMBINATIONS: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("green", "circle"),
    ("blue", "heart"),
    ("yellow", "square"),
    ("purple", "triangle"),
    ("white", "cross"),
)

THING_CLASSES: tuple[str, ...] = ("background", *SHAPES)
STUFF_AND_THING_CLASSES: tuple[str, ...] = (*SHAPES, *BACKGROUNDS)
# Ids of the new shapes come after those of the standard vocabularies, which stay as they are.
EXTENDED_THING_CLASSES: tuple[str, ...] = ("background", *ALL_SHAPES)
EXTENDED_STUFF_AND_THING_CLASSES: tuple[str, ...] = (*STUFF_AND_THING_CLASSES, *NEW_SHAPES)
STUFF_OF_THING = np.array([0] + [EXTENDED_STUFF_AND_THING_CLASSES.index(s) for s in ALL_SHAPES], dtype=np.uint8)

SPLITS: tuple[str, ...] = ("train", "eval-all", "eval-seen", "eval-heldout")
TWIN_SHAPES: tuple[str, ...] = ("all", "one")
SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
# Extra seed word of the caption stream shared by a pair of shape twins.
TWIN_CAPTION_STREAM = 1

MIN_IMAGE_SIZE = 32
MAX_OBJECTS = 8
# Object size (diameter of the circumscribed circle) as a fraction of the image side.
SIZE_RANGE = (0.3, 0.55)
# A new object may not leave an earlier one with less than this fraction of its pixels visible.
MIN_VISIBLE_FRACTION = 0.5
PLACEMENT_TRIES = 60
LAYOUT_TRIES = 20
# Per-channel jitter of an object's colour around its named colour.
COLOUR_JITTER = 12
# Largest relative brightness change across an object (a linear shading in a random direction).
SHADING = 0.12
# Sub-pixel samples per axis for anti-aliased edges (label maps stay exact: a pixel belongs to the
# object that covers its centre).
SUPERSAMPLING = 4

assert set(BACKGROUNDS) == set(BACKGROUND_PHRASES)
