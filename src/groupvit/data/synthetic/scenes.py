"""Scene composition: painting objects over a background, exact label maps, and :class:`SceneGenerator`,
the deterministic sampler of captioned scenes per (seed, split, index)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np

from groupvit.data.synthetic.objects import Scene, SceneObject
from groupvit.data.synthetic.shapes import MAX_ROTATION, shape_coverage, shape_mask
from groupvit.data.synthetic.textures import TEXTURES, background_texture
from groupvit.data.synthetic.vocabulary import (
    ALL_SHAPES,
    BACKGROUNDS,
    COLOUR_JITTER,
    COLOURS,
    HELDOUT_COMBINATIONS,
    LAYOUT_TRIES,
    MAX_OBJECTS,
    MIN_IMAGE_SIZE,
    MIN_VISIBLE_FRACTION,
    PLACEMENT_TRIES,
    SHADING,
    SHAPE_SETS,
    SHAPES,
    SIZE_RANGE,
    SPLIT_CODES,
    SPLITS,
    STUFF_OF_THING,
    TWIN_CAPTION_STREAM,
    TWIN_SHAPES,
)
from groupvit.data.synthetic_captions import build_caption
from groupvit.errors import ConfigError, InputError


def _paint(
    patch: np.ndarray, obj: SceneObject, window: tuple[slice, slice], image_size: int, rng: np.random.Generator
) -> np.ndarray:
    """float32 [h, w, 3]: ``patch`` (the image under ``window``) with ``obj`` painted over it, edges
    anti-aliased and the colour shaded linearly (up to ``SHADING``) in a random direction."""
    alpha = shape_coverage(obj, image_size)[..., None]
    rgb = np.asarray(obj.rgb if obj.rgb is not None else COLOURS[obj.colour], dtype=np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ys = np.arange(window[0].start, window[0].stop, dtype=np.float32)[:, None] - obj.center[1]
    xs = np.arange(window[1].start, window[1].stop, dtype=np.float32)[None, :] - obj.center[0]
    shade = 1 + rng.uniform(0, SHADING) * (xs * np.cos(theta) + ys * np.sin(theta)) / (obj.size / 2)
    colour = np.clip(rgb * shade[..., None], 0, 255)
    return patch * (1 - alpha) + colour * alpha


def _compose(
    objects: Sequence[SceneObject],
    masks: Sequence[tuple[tuple[slice, slice], np.ndarray]],
    background: str,
    texture: np.ndarray,
    rng: np.random.Generator,
    index: int,
    caption_rng: np.random.Generator | None = None,
) -> Scene:
    """Paint ``objects`` over ``texture`` in order, measure what stays visible, and caption it.

    The caption's random choices come from ``caption_rng`` when given, else from ``rng``.
    """
    image_size = texture.shape[0]
    labels = np.zeros((image_size, image_size), dtype=np.uint8)
    instances = np.zeros((image_size, image_size), dtype=np.uint8)
    canvas = texture.astype(np.float32)
    for k, (obj, (window, mask)) in enumerate(zip(objects, masks, strict=True), start=1):
        canvas[window] = _paint(canvas[window], obj, window, image_size, rng)
        labels[window][mask] = ALL_SHAPES.index(obj.shape) + 1
        instances[window][mask] = k
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    rendered = []
    for k, (obj, (window, _)) in enumerate(zip(objects, masks, strict=True), start=1):
        ys, xs = np.nonzero(instances[window] == k)
        if len(ys) == 0:
            rendered.append(replace(obj, box=None, area=0))
            continue
        oy, ox = window[0].start, window[1].start
        box = (ox + int(xs.min()), oy + int(ys.min()), ox + int(xs.max()) + 1, oy + int(ys.max()) + 1)
        rendered.append(replace(obj, box=box, area=len(ys)))
    background_id = len(SHAPES) + BACKGROUNDS.index(background)
    stuff_labels = np.where(labels > 0, STUFF_OF_THING[labels], background_id).astype(np.uint8)
    mentioned = [obj for obj in rendered if obj.mentioned and obj.area > 0]
    caption = build_caption(mentioned, background, image_size, rng if caption_rng is None else caption_rng)
    return Scene(image, caption, labels, stuff_labels, instances, rendered, background, index)


def render_scene(
    objects: Sequence[SceneObject], background: str, image_size: int = 128, seed: int = 0
) -> Scene:
    """Render hand-placed ``objects`` (painted in order) over a ``background`` texture.

    No visibility rule applies here: an object may be covered entirely (then ``area == 0``,
    ``box is None`` and the caption leaves it out). ``seed`` drives the texture and the caption.
    """
    if background not in TEXTURES:
        raise InputError(f"unknown background {background!r}; expected one of {list(BACKGROUNDS)}")
    if len(objects) > 255:
        raise InputError(f"a scene holds at most 255 objects (uint8 instance ids), got {len(objects)}")
    for obj in objects:
        if obj.colour not in COLOURS:
            raise InputError(f"unknown colour {obj.colour!r}; expected one of {list(COLOURS)}")
    rng = np.random.default_rng(seed)
    texture = background_texture(background, image_size, rng)
    masks = [shape_mask(obj, image_size) for obj in objects]
    return _compose(objects, masks, background, texture, rng, -1)


class SceneGenerator:
    """Deterministic generator of captioned scenes.

    Args:
        image_size: side of the square images in pixels (>= 32); default 128.
        seed: base seed; scene ``index`` depends only on (seed, split, index).
        min_objects, max_objects: the number of objects is uniform in [min_objects, max_objects]
            (1 <= min <= max <= 8).
        caption_drop_rate: probability that an object is left out of the caption (at least one
            object is always mentioned); in [0, 1).
        split: ``train`` (held-out colour-shape pairs never appear), ``eval-all``, ``eval-seen`` (only
            pairs seen in training) or ``eval-heldout`` (at least one held-out object per image).
        twins: every odd scene is the *shape twin* of the scene before it: same background, layout
            and colours, every shape replaced by another one, and a caption drawn with the same
            random choices (sentence form, colours named or not, background phrase), so the two
            captions differ in their shape words only (unless the new shapes regroup the objects).
            Twins sit side by side in a batch, so colour and background words cannot tell them
            apart: the contrastive loss needs the shapes.
        twin_shapes: which shapes a twin replaces: ``"all"`` of them, or ``"one"`` object's (one the
            caption names, drawn per pair), so that the two captions differ in one shape word and the
            image embedding has to keep that object apart from the others.
    """

    def __init__(
        self,
        image_size: int = 128,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 3,
        caption_drop_rate: float = 0.05,
        split: str = "train",
        twins: bool = False,
        twin_shapes: str = "all",
        shapes: str = "standard",
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"unknown synthetic split {split!r}; expected one of {list(SPLITS)}")
        if int(image_size) < MIN_IMAGE_SIZE:
            raise ConfigError(f"synthetic image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
        if not 1 <= int(min_objects) <= int(max_objects) <= MAX_OBJECTS:
            raise ConfigError(
                f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {min_objects} and {max_objects}"
            )
        if not 0.0 <= float(caption_drop_rate) < 1.0:
            raise ConfigError(f"caption_drop_rate must be in [0, 1), got {caption_drop_rate}")
        if int(seed) < 0:
            raise ConfigError(f"seed must be non-negative, got {seed}")
        if twin_shapes not in TWIN_SHAPES:
            raise ConfigError(f"unknown twin_shapes {twin_shapes!r}; expected one of {list(TWIN_SHAPES)}")
        if shapes not in SHAPE_SETS:
            raise ConfigError(f"unknown shape set {shapes!r}; expected one of {list(SHAPE_SETS)}")
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.min_objects = int(min_objects)
        self.max_objects = int(max_objects)
        self.caption_drop_rate = float(caption_drop_rate)
        self.split = split
        self.twins = bool(twins)
        self.twin_shapes = twin_shapes
        self.shapes = SHAPE_SETS[shapes]
        all_pairs = [(c, s) for c in COLOURS for s in self.shapes]
        seen = [pair for pair in all_pairs if pair not in HELDOUT_COMBINATIONS]
        self._pairs = all_pairs if split in ("eval-all", "eval-heldout") else seen

    def sample(self, index: int) -> Scene:
        """Scene number ``index`` (>= 0); the same generator settings and index give the same scene."""
        if index < 0:
            raise InputError(f"scene index must be non-negative, got {index}")
        if self.twins and index % 2 == 1:
            return self._shape_twin(self._scene(index - 1), index)
        return self._scene(index)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_CODES[self.split], int(index)])

    def _caption_rng(self, index: int) -> np.random.Generator | None:
        """With twins, one caption stream per pair (both scenes draw the same choices); else None."""
        if not self.twins:
            return None
        return np.random.default_rng([self.seed, SPLIT_CODES[self.split], int(index) // 2, TWIN_CAPTION_STREAM])

    def _scene(self, index: int) -> Scene:
        rng = self._rng(index)
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        texture = background_texture(background, self.image_size, rng)
        for _ in range(LAYOUT_TRIES):
            layout = self._layout(rng)
            if layout is not None:
                objects, masks = layout
                return _compose(objects, masks, background, texture, rng, int(index), self._caption_rng(index))
        raise RuntimeError(f"could not lay out scene {index} in {LAYOUT_TRIES} tries")

    def _shape_twin(self, scene: Scene, index: int) -> Scene:
        """``scene`` with every shape (or one object's, see ``twin_shapes``) replaced, repainted."""
        rng = self._rng(index)
        allowed = set(self._pairs)
        changed = range(len(scene.objects))
        if self.twin_shapes == "one":  # a named, visible object, so that the captions differ
            named = [n for n, obj in enumerate(scene.objects) if obj.mentioned and obj.area > 0]
            changed = [named[int(rng.integers(len(named)))]] if named else [int(rng.integers(len(scene.objects)))]
        objects = []
        for number, obj in enumerate(scene.objects):
            if number not in changed:
                objects.append(obj)
                continue
            shapes = [shape for shape in self.shapes if shape != obj.shape and (obj.colour, shape) in allowed]
            objects.append(replace(obj, shape=shapes[int(rng.integers(len(shapes)))], box=None, area=0))
        texture = background_texture(scene.background, self.image_size, rng)
        masks = [shape_mask(obj, self.image_size) for obj in objects]
        return _compose(objects, masks, scene.background, texture, rng, int(index), self._caption_rng(index))

    def iter_scenes(self, start: int = 0, count: int | None = None) -> Iterator[Scene]:
        """Scenes ``start, start + 1, ...``: ``count`` of them, or endless when None."""
        index = start
        while count is None or index < start + count:
            yield self.sample(index)
            index += 1

    def _draw_pairs(self, rng: np.random.Generator) -> list[tuple[str, str]]:
        count = int(rng.integers(self.min_objects, self.max_objects + 1))
        pairs = [self._pairs[i] for i in rng.integers(len(self._pairs), size=count)]
        if self.split == "eval-heldout":
            pairs[int(rng.integers(count))] = HELDOUT_COMBINATIONS[
                int(rng.integers(len(HELDOUT_COMBINATIONS)))
            ]
        return pairs

    def _layout(
        self, rng: np.random.Generator
    ) -> tuple[list[SceneObject], list[tuple[tuple[slice, slice], np.ndarray]]] | None:
        """Place objects one by one under the visibility rule; None when the layout fails the split."""
        size = self.image_size
        instances = np.zeros((size, size), dtype=np.uint8)
        objects: list[SceneObject] = []
        masks: list[tuple[tuple[slice, slice], np.ndarray]] = []
        full_area: list[int] = []
        visible: list[int] = []
        for colour, shape in self._draw_pairs(rng):
            jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
            red, green, blue = (int(c) for c in np.clip(np.add(COLOURS[colour], jitter), 0, 255))
            max_turn = MAX_ROTATION.get(shape, np.pi)
            for _ in range(PLACEMENT_TRIES):
                diameter = rng.uniform(*SIZE_RANGE) * size
                radius = diameter / 2
                center = (
                    float(rng.uniform(radius, size - radius)),
                    float(rng.uniform(radius, size - radius)),
                )
                angle = float(rng.uniform(-max_turn, max_turn))
                obj = SceneObject(colour, shape, center, float(diameter), angle, rgb=(red, green, blue))
                window, mask = shape_mask(obj, size)
                covered = np.bincount(instances[window][mask], minlength=len(objects) + 1)[1:]
                remaining = np.asarray(visible, dtype=np.int64) - covered
                if np.all(remaining >= MIN_VISIBLE_FRACTION * np.asarray(full_area)):
                    instances[window][mask] = len(objects) + 1
                    objects.append(obj)
                    masks.append((window, mask))
                    full_area.append(int(mask.sum()))
                    visible[:] = [*remaining.tolist(), full_area[-1]]
                    break
        if len(objects) < self.min_objects:
            return None
        if self.split == "eval-heldout" and not any(obj.heldout for obj in objects):
            return None
        mentioned = rng.random(len(objects)) >= self.caption_drop_rate
        if not mentioned.any():
            mentioned[int(rng.integers(len(objects)))] = True
        objects = [replace(obj, mentioned=bool(m)) for obj, m in zip(objects, mentioned, strict=True)]
        return objects, masks
