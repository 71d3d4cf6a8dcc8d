"""Procedural background textures (grass, sand, water, brick, sky, wood) from value noise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

from groupvit.data.synthetic.vocabulary import BACKGROUNDS
from groupvit.errors import InputError


@lru_cache(maxsize=128)
def _interpolation(n_out: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index int64 [n_out] left of each output pixel and its smoothstep weight float32 [n_out]."""
    pos = (np.arange(n_out) + 0.5) / n_out * cells
    left = np.minimum(pos.astype(np.int64), cells - 1)
    t = pos - left
    return left, (t * t * (3 - 2 * t)).astype(np.float32)


def _value_noise(rng: np.random.Generator, size: int, cells_y: int, cells_x: int) -> np.ndarray:
    """float32 [size, size] in [0, 1]: random lattice values smoothly interpolated."""
    cells_y, cells_x = max(1, min(cells_y, size)), max(1, min(cells_x, size))
    lattice = rng.random((cells_y + 1, cells_x + 1), dtype=np.float32)
    # Gathers rather than interpolation matrices: no BLAS, so results are bit-identical everywhere.
    iy, ty = _interpolation(size, cells_y)
    ix, tx = _interpolation(size, cells_x)
    rows = lattice[iy] + (lattice[iy + 1] - lattice[iy]) * ty[:, None]
    return rows[:, ix] + (rows[:, ix + 1] - rows[:, ix]) * tx


def _fbm(rng: np.random.Generator, size: int, cells: int, octaves: int) -> np.ndarray:
    """float32 [size, size] fractal noise stretched to [0, 1]: octaves of doubling frequency, halving."""
    total = np.zeros((size, size), dtype=np.float32)
    for octave in range(octaves):
        n = cells * 2**octave
        total += 0.5**octave * _value_noise(rng, size, n, n)
    return _stretch(total)


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    return (values - low) / max(float(high - low), 1e-6)


def _mix(low: Sequence[float] | np.ndarray, high: Sequence[float] | np.ndarray, t: np.ndarray) -> np.ndarray:
    """float32 [H, W, 3] blend ``low + (high - low) * t`` of colours (or images) by weights t [H, W]."""
    low = np.asarray(low, dtype=np.float32)
    high = np.asarray(high, dtype=np.float32)
    return low + (high - low) * t[..., None]


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.arange(size, dtype=np.float32) + 0.5
    return axis[None, :], axis[:, None]


def _grass(rng: np.random.Generator, size: int) -> np.ndarray:
    patches = _fbm(rng, size, 3, 3)
    # Lattice fine across x and coarse along y: vertical blades.
    blades = _value_noise(rng, size, max(2, size // 12), max(2, size // 2))
    t = np.clip(0.55 * patches + 0.65 * blades - 0.15, 0, 1)
    return _mix((40, 75, 25), (125, 160, 60), t)


def _sand(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    theta = rng.uniform(0, np.pi)
    period = size / rng.uniform(6, 10)
    warp = _fbm(rng, size, 3, 2)
    ripples = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period + 6 * warp)
    grain = rng.random((size, size), dtype=np.float32)
    t = 0.45 * ripples + 0.3 * grain + 0.25 * _fbm(rng, size, 4, 2)
    return _mix((180, 155, 110), (235, 215, 170), t)


def _water(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    period = size / rng.uniform(5, 9)
    warp = _fbm(rng, size, 3, 3)
    phase = rng.uniform(0, 2 * np.pi)
    swell = 2.0 * np.sin(2 * np.pi * x / (2.3 * period) + phase)
    waves = 0.5 + 0.5 * np.sin(2 * np.pi * y / period + swell + 5 * warp)
    crests = np.clip((waves - 0.85) / 0.15, 0, 1)
    water = _mix((20, 70, 105), (65, 140, 170), 0.7 * waves + 0.3 * _fbm(rng, size, 4, 2))
    return _mix(water, (160, 205, 220), 0.6 * crests)


def _brick(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    height = size / rng.uniform(7, 10)
    width = height * rng.uniform(2.0, 2.6)
    mortar = max(1.0, size / 80)
    row = np.floor(y / height).astype(np.int64)
    shifted = x + (row % 2) * (width / 2)
    col = np.floor(shifted / width).astype(np.int64)
    in_mortar = (y - row * height < mortar) | (shifted - col * width < mortar)
    tones = rng.uniform(-1, 1, size=(int(size / height) + 2, int(size / width) + 3)).astype(np.float32)
    tone = tones[row, col]
    grit = _value_noise(rng, size, size // 3, size // 3) - 0.5
    brick = np.stack([150 + 22 * tone, 65 + 10 * tone, 45 + 8 * tone], axis=-1) + 30 * grit[..., None]
    mortar_rgb = _mix((150, 145, 135), (190, 185, 175), grit + 0.5)
    return np.where(in_mortar[..., None], mortar_rgb, brick)


def _sky(rng: np.random.Generator, size: int) -> np.ndarray:
    _, y = _coords(size)
    sky = _mix((70, 135, 210), (150, 195, 240), np.broadcast_to(y / size, (size, size)))
    clouds = np.clip((_fbm(rng, size, 2, 4) - rng.uniform(0.4, 0.6)) * 2.5, 0, 1)
    return _mix(sky, (200, 208, 222), 0.9 * clouds)


def _wood(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    vertical = rng.random() < 0.5
    across = np.broadcast_to(x if vertical else y, (size, size))
    period = size / rng.uniform(6, 12)
    warp = _fbm(rng, size, 2, 3)
    rings = (0.5 + 0.5 * np.sin(2 * np.pi * (across + 0.35 * size * warp) / period)) ** 1.5
    coarse, fine = max(2, size // 16), max(2, size // 2)
    streaks = _value_noise(rng, size, coarse, fine) if vertical else _value_noise(rng, size, fine, coarse)
    return _mix((100, 62, 32), (180, 125, 75), 0.65 * rings + 0.35 * streaks)


TEXTURES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "grass": _grass,
    "sand": _sand,
    "water": _water,
    "brick": _brick,
    "sky": _sky,
    "wood": _wood,
}
assert set(TEXTURES) == set(BACKGROUNDS)


def background_texture(name: str, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [image_size, image_size, 3] procedural texture of background ``name``."""
    if name not in TEXTURES:
        raise InputError(f"unknown background {name!r}; expected one of {list(BACKGROUNDS)}")
    rgb = TEXTURES[name](rng, image_size) * rng.uniform(0.9, 1.05)
    return np.clip(rgb, 0, 255).astype(np.uint8)
