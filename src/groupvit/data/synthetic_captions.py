"""Caption grammar of the synthetic scenes (:mod:`groupvit.data.synthetic`).

A caption names every object it mentions by its shape noun, so that shape identity is needed to match
captions and images in the contrastive task. Around that noun the grammar varies the sentence form,
counts ("two red circles"), colours (sometimes left out), spatial words derived from the object
positions, and whether the background is named.

Sentence forms (``CAPTION_FORMS``):

* ``list``      "a red circle and two blue stars on grass"
* ``photo``     "a photo of a star."
* ``there``     "there are two green squares and a yellow heart"
* ``position``  "there is a purple hexagon on the left" (every group lies in one region of a 3x3 grid)
* ``relation``  "two green squares to the left of a yellow heart" (two groups whose relation holds for
  every pair of their members)

Every word is ordinary English, so the CLIP byte-pair tokenizer splits it into few tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from groupvit.errors import InputError

CAPTION_FORMS: tuple[str, ...] = ("list", "photo", "there", "position", "relation")
# Relative frequency of each form among those that apply to a scene.
FORM_WEIGHTS: dict[str, float] = {"list": 0.2, "photo": 0.25, "there": 0.15, "position": 0.2, "relation": 0.2}

NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}

# Every phrase contains the background's class name, so captions and segmentation prompts share it.
BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "grass": ("on grass", "on the grass", "in the grass", "on a patch of grass"),
    "sand": ("on sand", "on the sand", "in the sand", "on beach sand"),
    "water": ("on water", "on the water", "floating on water", "in the water"),
    "brick": ("on a brick wall", "in front of a brick wall", "against a brick wall", "on brick"),
    "sky": ("in the sky", "against the sky", "against a cloudy sky", "in a cloudy sky"),
    "wood": ("on wood", "on a wood table", "on a wood floor", "on wood planks"),
}

PHOTO_PREFIXES: tuple[str, ...] = (
    "a photo of",
    "a picture of",
    "an image of",
    "a drawing of",
    "a photo showing",
    "a picture with",
)

# Regions of a 3x3 grid over the image, (row, column) -> two wordings; row 0 is the top.
REGION_PHRASES: dict[tuple[int, int], tuple[str, ...]] = {
    (0, 0): ("in the top left corner", "in the upper left corner"),
    (0, 1): ("at the top", "near the top"),
    (0, 2): ("in the top right corner", "in the upper right corner"),
    (1, 0): ("on the left", "on the left side"),
    (1, 1): ("in the center", "in the middle"),
    (1, 2): ("on the right", "on the right side"),
    (2, 0): ("in the bottom left corner", "in the lower left corner"),
    (2, 1): ("at the bottom", "near the bottom"),
    (2, 2): ("in the bottom right corner", "in the lower right corner"),
}

# Words for "group A <relation> group B"; the first entry of each is the canonical one.
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under"),
    "near": ("next to", "beside"),
}

# Centres closer than this (fraction of the image side) along the dominant axis give no direction.
RELATION_MARGIN = 0.08
# Two groups are "next to" each other when every pair of centres is closer than this fraction.
NEAR_DISTANCE = 0.5
# Probability of "next to" replacing a left/right relation (it is true too, only vaguer).
NEAR_INSTEAD_OF_SIDE = 0.3


class CaptionedObject(Protocol):
    """What the grammar needs from an object: its colour and shape names and its centre in pixels."""

    colour: str
    shape: str
    center: tuple[float, float]


def plural(noun: str) -> str:
    """English plural of a shape noun: ``"cross" -> "crosses"``, ``"star" -> "stars"``."""
    return noun + ("es" if noun.endswith(("s", "x", "sh", "ch")) else "s")


def article(word: str) -> str:
    """Indefinite article for ``word``: ``"an"`` before a vowel, else ``"a"``."""
    return "an" if word[:1] in "aeiou" else "a"


def noun_phrase(count: int, colour: str | None, shape: str, rng: np.random.Generator) -> str:
    """``"a red circle"``, ``"two stars"``...; ``colour=None`` leaves the colour out."""
    words = ([colour] if colour else []) + [shape if count == 1 else plural(shape)]
    if count == 1:
        head = "one" if rng.random() < 0.1 else article(words[0])
    else:
        head = NUMBER_WORDS.get(count, str(count))
    return " ".join([head, *words])


def join_phrases(phrases: Sequence[str], rng: np.random.Generator) -> str:
    """``"A"``, ``"A and B"``, ``"A, B and C"`` (sometimes with a serial comma)."""
    if len(phrases) <= 2:
        return " and ".join(phrases)
    last = ", and " if rng.random() < 0.3 else " and "
    return ", ".join(phrases[:-1]) + last + phrases[-1]


def region_of(center: tuple[float, float], image_size: int) -> tuple[int, int]:
    """(row, column) of a pixel position in the 3x3 grid over an ``image_size`` square image."""
    x, y = center

    def third(value: float) -> int:
        return 0 if value < image_size / 3 else 2 if value > 2 * image_size / 3 else 1

    return third(y), third(x)


def direction_between(
    first: Sequence[CaptionedObject], second: Sequence[CaptionedObject], image_size: int
) -> str | None:
    """The direction (``"left"``, ``"right"``, ``"above"``, ``"below"``) of ``first`` relative to
    ``second`` that holds for every pair of their members, or None.

    A pair is e.g. "left" when the second centre is further right than ``RELATION_MARGIN`` of the
    image side and the horizontal offset dominates the vertical one.
    """
    margin = RELATION_MARGIN * image_size
    tests = {
        "left": lambda dx, dy: dx > margin and dx > abs(dy),
        "right": lambda dx, dy: -dx > margin and -dx > abs(dy),
        "above": lambda dx, dy: dy > margin and dy > abs(dx),
        "below": lambda dx, dy: -dy > margin and -dy > abs(dx),
    }
    offsets = [(b.center[0] - a.center[0], b.center[1] - a.center[1]) for a in first for b in second]
    for name, holds in tests.items():
        if all(holds(dx, dy) for dx, dy in offsets):
            return name
    return None


def are_near(first: Sequence[CaptionedObject], second: Sequence[CaptionedObject], image_size: int) -> bool:
    """Whether every pair of centres is closer than ``NEAR_DISTANCE`` of the image side."""
    limit = NEAR_DISTANCE * image_size
    return all(
        np.hypot(b.center[0] - a.center[0], b.center[1] - a.center[1]) < limit for a in first for b in second
    )


def _groups(
    objects: Sequence[CaptionedObject], use_colour: bool
) -> list[tuple[str | None, str, list[CaptionedObject]]]:
    """Objects grouped by (colour, shape), or by shape alone when colours are left out."""
    groups: dict[tuple[str | None, str], list[CaptionedObject]] = {}
    for obj in objects:
        groups.setdefault((obj.colour if use_colour else None, obj.shape), []).append(obj)
    return [(colour, shape, members) for (colour, shape), members in groups.items()]


def build_caption(
    objects: Sequence[CaptionedObject],
    background: str,
    image_size: int,
    rng: np.random.Generator,
    *,
    form: str | None = None,
    use_colour: bool | None = None,
    name_background: bool | None = None,
) -> str:
    """A caption mentioning every object of ``objects`` (those to mention, in any order).

    Args:
        objects: objects with ``colour``, ``shape`` and ``center`` (x, y) in pixels.
        background: background name (a key of ``BACKGROUND_PHRASES``).
        image_size: side of the square image in pixels; spatial words are derived from it.
        rng: source of every random choice (same state -> same caption).
        form: one of ``CAPTION_FORMS``; None draws one among those that apply to these objects.
        use_colour: name the colours (None: yes with probability 0.85).
        name_background: name the background (None: yes with probability 0.6).

    Returns:
        A lower-case caption; ``"a photo of <background>"`` when ``objects`` is empty.

    Raises:
        InputError: ``form`` is unknown or does not apply (``position`` needs every group inside one
            region, ``relation`` needs exactly two groups in a definite relation).
    """
    if background not in BACKGROUND_PHRASES:
        raise InputError(f"unknown background {background!r}; expected one of {sorted(BACKGROUND_PHRASES)}")
    if form is not None and form not in CAPTION_FORMS:
        raise InputError(f"unknown caption form {form!r}; expected one of {list(CAPTION_FORMS)}")
    if use_colour is None:
        use_colour = bool(rng.random() < 0.85)
    if name_background is None:
        name_background = bool(rng.random() < 0.6)
    if not objects:
        return f"a photo of {background}"

    groups = _groups(objects, use_colour)
    groups = [groups[i] for i in rng.permutation(len(groups))]
    phrases = [noun_phrase(len(members), colour, shape, rng) for colour, shape, members in groups]
    bg = " " + str(rng.choice(BACKGROUND_PHRASES[background])) if name_background else ""
    be = "are" if len(groups[0][2]) > 1 else "is"

    regions = [{region_of(o.center, image_size) for o in members} for _, _, members in groups]
    relation = None
    if len(groups) == 2:
        relation = direction_between(groups[0][2], groups[1][2], image_size)
        near = are_near(groups[0][2], groups[1][2], image_size)
        if relation in ("left", "right") and rng.random() < NEAR_INSTEAD_OF_SIDE:
            relation = "near"
        elif relation is None and near:
            relation = "near"
    applicable = ["list", "photo", "there"]
    if all(len(r) == 1 for r in regions):
        applicable.append("position")
    if relation is not None:
        applicable.append("relation")
    if form is None:
        weights = np.array([FORM_WEIGHTS[f] for f in applicable])
        form = applicable[int(rng.choice(len(applicable), p=weights / weights.sum()))]
    elif form not in applicable:
        raise InputError(f"caption form {form!r} does not apply to these objects; use one of {applicable}")

    if form == "list":
        text = join_phrases(phrases, rng) + bg
    elif form == "photo":
        text = f"{rng.choice(PHOTO_PREFIXES)} {join_phrases(phrases, rng)}{bg}"
    elif form == "there":
        text = f"there {be} {join_phrases(phrases, rng)}{bg}"
    elif form == "position":
        # One wording per caption, so two groups never read "in the top left" and "in the upper left".
        variant = int(rng.integers(2))
        located = [
            f"{phrase} {REGION_PHRASES[next(iter(region))][variant]}"
            for phrase, region in zip(phrases, regions, strict=True)
        ]
        text = join_phrases(located, rng)
        if rng.random() < 0.5:
            text = f"there {be} {text}"
        if bg:
            text = f"{bg.strip()}, {text}"
    else:
        words = str(rng.choice(RELATION_PHRASES[relation]))
        prefix = str(rng.choice(["", "a photo of ", f"there {be} "]))
        text = f"{prefix}{phrases[0]} {words} {phrases[1]}{bg}"
    return text + ("." if rng.random() < 0.4 else "")
