"""Pictures of a segmentation, drawn with Pillow: label PNGs, overlays with class names, group maps.

* :func:`label_image`: a label map as a palette PNG (PASCAL VOC colours), the format of VOC ground truth.
* :func:`overlay`: the prediction blended 50 % over the image (background left as is), each class
  named at its region's centroid, and a legend of the classes present on the right.
* :func:`group_maps_image`: the group map of each grouping stage, coloured with :func:`group_palette`
  and blended over the image, one panel per stage.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from groupvit.errors import InputError
from groupvit.fileio import atomic_path


def voc_palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC colour map ``uint8 [n, 3]``: colour ``i`` spreads the bits of ``i`` over R, G, B, high bit first.

    Index 0 is black, 1 is (128, 0, 0), 15 is (192, 128, 128), 255 is (224, 224, 192).
    """
    palette = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        value, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette[index] = rgb
    return palette


@lru_cache(maxsize=1)
def group_palette() -> np.ndarray:
    """256 well-separated colours ``uint8 [256, 3]`` for group ids (fixed, deterministic).

    Greedy farthest-point choice among the 8 x 8 x 8 RGB lattice, starting from pure red: each next
    colour is the one farthest (Euclidean RGB) from every colour chosen so far, so the first 64 are
    at least ~70 apart.
    """
    levels = np.linspace(0, 255, 8)
    lattice = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    chosen = [int(np.argmin(np.abs(lattice - (255, 0, 0)).sum(axis=1)))]
    nearest = np.linalg.norm(lattice - lattice[chosen[0]], axis=1)
    for _ in range(255):
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(lattice - lattice[pick], axis=1))
    return np.round(lattice[chosen]).astype(np.uint8)


def label_image(labels: np.ndarray) -> Image.Image:
    """Label map ``[H, W]`` -> palette (mode ``P``) image with VOC colours; 16-bit gray when ids exceed 255."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"a label map must be [H, W], got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise InputError(f"label ids must be in 0..65535, got {labels.min()}..{labels.max()}")
    if labels.size == 0 or labels.max() <= 255:
        image = Image.fromarray(labels.astype(np.uint8), mode="P")
        image.putpalette(voc_palette().reshape(-1).tolist())
        return image
    return Image.fromarray(labels.astype(np.uint16))


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """Write ``image`` as PNG atomically (a crash never leaves a half-written file at ``path``)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font only
        return ImageFont.load_default()


def _text_colour(fill: np.ndarray) -> tuple[int, int, int]:
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def region_anchors(labels: np.ndarray, ids: list[int], max_pixels: int = 1 << 20) -> dict[int, tuple[int, int]]:
    """A point ``(y, x)`` inside each label region: its pixel centroid, or the region pixel nearest to it.

    Large maps are subsampled to at most ~``max_pixels`` pixels first.
    """
    step = max(1, int(np.ceil(np.sqrt(labels.size / max_pixels))))
    small = labels[::step, ::step]
    anchors = {}
    for label in ids:
        ys, xs = np.nonzero(small == label)
        if ys.size == 0:
            continue
        cy, cx = ys.mean(), xs.mean()
        nearest = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
        anchors[label] = (int(ys[nearest]) * step, int(xs[nearest]) * step)
    return anchors


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    label_names: tuple[str, ...] | list[str],
    background: bool = True,
    alpha: float = 0.5,
    legend: bool = True,
    font_size: int | None = None,
) -> Image.Image:
    """Prediction over the image with class names at region centroids and a legend.

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        labels: ``[H, W]`` label ids into ``label_names``.
        label_names: name of each label id.
        background: label 0 is background: shown in grey levels (the image's luma), not named on the image.
        alpha: weight of the class colour (official 0.5).
        legend: append a legend of the present labels on the right.
        font_size: text height in pixels; default scales with the image (at least 12).

    Returns:
        an RGB PIL image, ``H`` (or taller when the legend needs it) x ``W`` + legend width.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.shape[:2] != labels.shape:
        raise InputError(f"image {image.shape[:2]} and label map {labels.shape} differ in size")
    present = [int(v) for v in np.unique(labels)]
    if present and present[-1] >= len(label_names):
        raise InputError(f"label id {present[-1]} has no name ({len(label_names)} names given)")
    palette = voc_palette(max(256, len(label_names)))
    # Pillow blends in C on uint8: no float copy of a (possibly very large) image.
    original = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    canvas = Image.blend(original, Image.fromarray(palette[labels]), alpha)
    if background:
        # Background shows the image without colour, so that "nothing predicted" never looks like a class.
        canvas.paste(original.convert("L").convert("RGB"), mask=Image.fromarray(((labels == 0) * 255).astype(np.uint8)))
    height, width = labels.shape
    size = font_size or max(12, min(48, round(min(height, width) / 28)))
    font = _font(size)
    named = [label for label in present if not (background and label == 0)]

    draw = ImageDraw.Draw(canvas)
    pad = max(2, size // 5)
    for label, (y, x) in region_anchors(labels, named).items():
        text = label_names[label]
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
        x0 = int(np.clip(x - box_w // 2, 0, max(0, width - box_w)))
        y0 = int(np.clip(y - box_h // 2, 0, max(0, height - box_h)))
        fill = palette[label]
        draw.rectangle((x0, y0, x0 + box_w, y0 + box_h), fill=tuple(int(c) for c in fill), outline=(0, 0, 0))
        draw.text((x0 + pad - left, y0 + pad - top), text, font=font, fill=_text_colour(fill))
    if not legend:
        return canvas
    return _with_legend(canvas, present, label_names, palette, background, font, size)


def _with_legend(
    canvas: Image.Image, present: list[int], label_names: tuple[str, ...] | list[str], palette: np.ndarray,
    background: bool, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, size: int,
) -> Image.Image:
    entries = [(label, label_names[label] + (" (grey)" if background and label == 0 else ""))
               for label in present]
    measure = ImageDraw.Draw(canvas)
    text_w = max((measure.textbbox((0, 0), text, font=font)[2] for _, text in entries), default=0)
    gap = max(4, size // 2)
    row = size + gap
    legend_w = gap + size + gap + text_w + gap
    height = max(canvas.height, gap + row * len(entries))
    out = Image.new("RGB", (canvas.width + legend_w, height), (255, 255, 255))
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, (label, text) in enumerate(entries):
        x, y = canvas.width + gap, gap + i * row
        swatch = (x, y, x + size, y + size)
        if background and label == 0:
            draw.rectangle(swatch, fill=(255, 255, 255), outline=(0, 0, 0))
            draw.line(swatch, fill=(0, 0, 0))
        else:
            draw.rectangle(swatch, fill=tuple(int(c) for c in palette[label]), outline=(0, 0, 0))
        top = draw.textbbox((0, 0), text, font=font)[1]
        draw.text((x + size + gap, y - top), text, font=font, fill=(0, 0, 0))
    return out


def colorize_groups(group_map: np.ndarray) -> np.ndarray:
    """Group ids ``[h, w]`` -> ``uint8 [h, w, 3]`` colours of :func:`group_palette` (id mod 256; ``-1`` black)."""
    group_map = np.asarray(group_map)
    colours = group_palette()[np.mod(group_map, 256)]
    colours[group_map < 0] = 0
    return colours


def group_maps_image(
    image: np.ndarray, group_maps: list[np.ndarray], alpha: float = 0.5, titles: bool = True
) -> Image.Image:
    """One panel per grouping stage, side by side: group colours blended over the image.

    Panels have the size of the group maps (the resolution the model saw); the image is resized to
    it. Each panel is titled ``stage i: K groups`` (the number of distinct ids shown), shortened to
    ``stage i: K`` or ``i: K`` when the panel is too narrow for it.
    """
    if not group_maps:
        raise InputError("no group maps to draw (the model has no grouping stage, or they were not computed)")
    height, width = group_maps[0].shape
    base = np.asarray(Image.fromarray(np.asarray(image)).resize((width, height), Image.BILINEAR), dtype=np.float32)
    size = max(12, min(32, round(min(height, width) / 24)))
    font = _font(size)
    strip = size + size // 2 if titles else 0
    gap = 4
    out = Image.new("RGB", (len(group_maps) * (width + gap) - gap, height + strip), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for stage, group_map in enumerate(group_maps):
        panel = np.round(base * (1 - alpha) + colorize_groups(group_map) * alpha).astype(np.uint8)
        x = stage * (width + gap)
        out.paste(Image.fromarray(panel), (x, strip))
        if titles:
            count = int(np.unique(group_map[group_map >= 0]).size)
            noun = "group" if count == 1 else "groups"
            candidates = (f"stage {stage + 1}: {count} {noun}", f"stage {stage + 1}: {count}", f"{stage + 1}: {count}")
            title = next((t for t in candidates if draw.textlength(t, font=font) <= width - 2), candidates[-1])
            draw.text((x + 2, 1), title, font=font, fill=(0, 0, 0))
    return out


def contact_sheet(
    rows: list[list[np.ndarray]], titles: list[str], legend: list[tuple[str, tuple[int, int, int]]],
    cell: int = 128,
) -> Image.Image:
    """A grid of pictures: one row per example, one titled column per view, one colour legend at the bottom.

    Args:
        rows: per row, ``uint8 [h, w, 3]`` pictures (one per column), each resized to ``cell x cell``
            with nearest-neighbour sampling so that label colours stay exact.
        titles: column titles.
        legend: ``(name, RGB colour)`` entries drawn once for the whole sheet.
    """
    if not rows or any(len(row) != len(titles) for row in rows):
        raise InputError(f"every row needs one picture per column title ({len(titles)})")
    gap, size = 4, 12
    font = _font(size)
    strip = size + 2 * gap
    swatch_rows = max(1, -(-len(legend) // 4))
    width = len(titles) * (cell + gap) + gap
    height = strip + len(rows) * (cell + gap) + swatch_rows * (size + gap) + gap
    out = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for col, title in enumerate(titles):
        draw.text((gap + col * (cell + gap), gap), title, font=font, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for col, picture in enumerate(row):
            tile = Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8)).resize((cell, cell), Image.NEAREST)
            out.paste(tile, (gap + col * (cell + gap), strip + r * (cell + gap)))
    top = strip + len(rows) * (cell + gap)
    column_width = (width - gap) // 4
    for i, (name, colour) in enumerate(legend):
        x, y = gap + (i % 4) * column_width, top + (i // 4) * (size + gap)
        draw.rectangle((x, y, x + size, y + size), fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
        draw.text((x + size + gap, y), name, font=font, fill=(0, 0, 0))
    return out
