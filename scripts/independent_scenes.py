"""Score a synthetic-scenes model on scenes of the same vocabulary drawn by a second, independent renderer.

``groupvit.data.synthetic`` draws the training and evaluation scenes. A model could learn that renderer's
quirks (its exact star, its noise textures) rather than shapes and words; this script draws the same
vocabulary another way — PIL polygons and ellipses rendered at 4x and downsampled, hand-made textures,
no shared code — and reports the zero-shot mIoU (background + shapes) for each background rule of
``groupvit demo``, without refinement and with the demo's (PAMR). Usage::

    python scripts/independent_scenes.py --num 200 --seed 3 [--weights W]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

import groupvit
from groupvit.commands.demo import DEFAULT_REFINE, synthetic_segmenter
from groupvit.data.synthetic import BACKGROUNDS, COLOURS, SHAPES, THING_CLASSES
from groupvit.evaluate.miou import IoUAccumulator
from groupvit.inference import BACKGROUND_RULES
from groupvit.pretrained import DEFAULT_BG_THRESH, default_weights_path

SCALE = 4  # drawn at 4x, then reduced: smooth edges


def _outline(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]] | None:
    """Polygon of ``shape`` (None for the circle and the heart, drawn from ellipses)."""

    def ring(count: int, radii: list[float], start: float) -> list[tuple[float, float]]:
        pts = []
        for k in range(count):
            a = start + turn + 2 * math.pi * k / count
            rad = radii[k % len(radii)]
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts

    if shape == "square":
        return ring(4, [r * 0.98], math.pi / 4)
    if shape == "triangle":
        return ring(3, [r], -math.pi / 2)
    if shape == "star":
        return ring(10, [r, r * 0.42], -math.pi / 2)
    if shape == "cross":
        w = r * 0.33
        arm = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w),
               (-w, -w)]
        c, s = math.cos(turn), math.sin(turn)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in arm]
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, turn: float, fill) -> None:
    polygon = _outline(shape, cx, cy, r, turn)
    if polygon is not None:
        draw.polygon(polygon, fill=fill)
    elif shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:  # heart: two lobes and a point, upright
        lobe = r * 0.52
        draw.ellipse([cx - 2 * lobe + lobe * 0.1, cy - r * 0.75, cx + lobe * 0.1, cy - r * 0.75 + 2 * lobe], fill=fill)
        draw.ellipse([cx - lobe * 0.1, cy - r * 0.75, cx + 2 * lobe - lobe * 0.1, cy - r * 0.75 + 2 * lobe], fill=fill)
        draw.polygon([(cx - r * 0.98, cy - r * 0.1), (cx + r * 0.98, cy - r * 0.1), (cx, cy + r)], fill=fill)


def _texture(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A background drawn with PIL primitives and numpy noise (no code shared with the training renderer)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    noise = rng.normal(0, 1, (size, size)).astype(np.float32)
    if name == "grass":
        streaks = np.repeat(rng.normal(0, 1, (1, size)), size, 0) * 0.6 + noise * 0.4
        rgb = np.stack([60 + 18 * streaks, 120 + 28 * streaks, 40 + 10 * streaks], -1)
    elif name == "sand":
        rgb = np.stack([210 + 10 * noise, 185 + 10 * noise, 140 + 8 * noise], -1)
        rgb += 12 * np.sin(2 * math.pi * (x + 0.3 * y) * rng.uniform(5, 9))[..., None]
    elif name == "water":
        wave = np.sin(2 * math.pi * (y * rng.uniform(6, 10) + 0.15 * np.sin(2 * math.pi * x * 3)))
        rgb = np.stack([35 + 20 * wave, 100 + 30 * wave, 150 + 25 * wave], -1) + 5 * noise[..., None]
    elif name == "sky":
        rgb = np.stack([100 + 60 * y, 160 + 40 * y, 235 + 0 * y], -1)
        img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(2, 5)):
            cx, cy, w = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.15, 0.35) * size
            draw.ellipse([cx - w, cy - w / 2.5, cx + w, cy + w / 2.5], fill=(235, 238, 245))
        return img.filter(ImageFilter.GaussianBlur(size / 40))
    elif name == "wood":
        rings = np.sin(2 * math.pi * (x * rng.uniform(6, 11) + 0.2 * np.sin(2 * math.pi * y * 2)))
        rgb = np.stack([140 + 30 * rings, 90 + 22 * rings, 50 + 14 * rings], -1) + 4 * noise[..., None]
    else:  # brick
        img = Image.new("RGB", (size, size), (175, 170, 160))
        draw = ImageDraw.Draw(img)
        h = size / rng.uniform(6, 9)
        for row in range(int(size / h) + 1):
            offset = (row % 2) * h
            for col in range(-1, int(size / (2 * h)) + 2):
                x0, y0 = col * 2 * h + offset, row * h
                tone = int(rng.integers(-15, 15))
                draw.rectangle([x0 + 1, y0 + 1, x0 + 2 * h - 1, y0 + h - 1], fill=(160 + tone, 70 + tone // 2, 50))
        return img
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def render(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene: uint8 image ``[size, size, 3]`` and labels ``[size, size]`` (THING_CLASSES ids)."""
    big = size * SCALE
    image = _texture(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], big, rng)
    labels = Image.new("L", (big, big), 0)
    for _ in range(int(rng.integers(1, 4))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(COLOURS.values())[int(rng.integers(len(COLOURS)))]
        for _ in range(20):  # at most a quarter of a new object may lie on earlier ones
            r = rng.uniform(0.16, 0.27) * big
            cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
            turn = 0.0 if shape == "heart" else rng.uniform(0, 2 * math.pi)
            mask = Image.new("1", (big, big), 0)
            _draw_shape(ImageDraw.Draw(mask), shape, cx, cy, r, turn, 1)
            inside = np.asarray(mask)
            if (np.asarray(labels)[inside] > 0).mean() <= 0.25:
                _draw_shape(ImageDraw.Draw(image), shape, cx, cy, r, turn, colour)
                _draw_shape(ImageDraw.Draw(labels), shape, cx, cy, r, turn, SHAPES.index(shape) + 1)
                break
    small = np.asarray(image.resize((size, size), Image.Resampling.BOX))
    return small, np.asarray(labels.resize((size, size), Image.Resampling.NEAREST))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="default: the shipped model")
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--save", default=None, help="write the first 16 scenes side by side to this PNG")
    args = parser.parse_args()
    model = groupvit.load_pretrained(args.weights or default_weights_path())
    size = model.config.vision.image_size
    rng = np.random.default_rng(args.seed)
    scenes = [render(size, rng) for _ in range(args.num)]
    if args.save:
        Image.fromarray(np.concatenate([s[0] for s in scenes[:16]], axis=1)).save(args.save)
    for rule in ("names", *BACKGROUND_RULES):
        for refine in (None, DEFAULT_REFINE):
            segmenter, lut = synthetic_segmenter(model, rule, DEFAULT_BG_THRESH, size, refine)
            iou = IoUAccumulator(len(THING_CLASSES))
            for (_, truth), result in zip(scenes, segmenter([s[0] for s in scenes], groups=False), strict=True):
                iou.update(lut[result.labels], truth)
            print(f"independent renderer, background by {rule:>10}, refinement {refine or 'none':>4}: "
                  f"mIoU {100 * iou.compute().miou:5.1f} ({args.num} scenes, seed {args.seed})")


if __name__ == "__main__":
    main()
