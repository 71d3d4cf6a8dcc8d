"""Shape outlines: the inside test of each shape in object coordinates, its pixel window and its
anti-aliased coverage."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from groupvit.data.synthetic.objects import SceneObject
from groupvit.data.synthetic.vocabulary import ALL_SHAPES, SUPERSAMPLING
from groupvit.errors import InputError

# Each shape is an implicit test on coordinates normalised by the circumscribed radius, y pointing down.


def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, vertex_angle: float) -> np.ndarray:
    inside = np.ones(u.shape, dtype=bool)
    for k in range(sides):
        normal = vertex_angle + np.pi / sides + 2 * np.pi * k / sides
        inside &= u * np.cos(normal) + v * np.sin(normal) <= np.cos(np.pi / sides)
    return inside


def _star(u: np.ndarray, v: np.ndarray, inner: float = 0.45) -> np.ndarray:
    # Fold every point into the half-sector between an inner vertex (angle 0, radius `inner`) and an
    # outer vertex (angle pi/5, radius 1); inside means on the origin's side of the edge joining them.
    sector = 2 * np.pi / 5
    phi = np.abs(np.mod(np.arctan2(v, u) + np.pi / 2, sector) - sector / 2)
    rho = np.hypot(u, v)
    x, y = rho * np.cos(phi), rho * np.sin(phi)
    dx, dy = np.cos(sector / 2) - inner, np.sin(sector / 2)
    return dx * y - dy * (x - inner) >= 0


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # (x^2 + y^2 - 1)^3 <= x^2 y^3 spans x in [-1.14, 1.14], y in [-1, 1.24]; centre and fit it.
    x, y = 1.3 * u, -1.3 * v + 0.12
    return (x * x + y * y - 1) ** 3 <= x * x * y**3


_SHAPE_TESTS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.72,
    "triangle": lambda u, v: _regular_polygon(u, v, 3, -np.pi / 2),
    "star": _star,
    "heart": _heart,
    "cross": lambda u, v: (
        ((np.abs(u) <= 0.32) & (np.abs(v) <= 0.95)) | ((np.abs(u) <= 0.95) & (np.abs(v) <= 0.32))
    ),
    "diamond": lambda u, v: np.abs(u) / 0.55 + np.abs(v) <= 1.0,
    "hexagon": lambda u, v: _regular_polygon(u, v, 6, 0.0),
}
# Hearts only tilt a little so they stay upright; the other shapes turn freely.
MAX_ROTATION = {"heart": 0.5}

assert set(_SHAPE_TESTS) == set(ALL_SHAPES)


def _object_window(obj: SceneObject, image_size: int) -> tuple[slice, slice]:
    """(rows, cols) slices of the image that can hold pixels of ``obj``."""
    if obj.shape not in _SHAPE_TESTS:
        raise InputError(f"unknown shape {obj.shape!r}; expected one of {list(ALL_SHAPES)}")
    reach = obj.size / 2 * 1.05 + 1
    cx, cy = obj.center
    x0, x1 = max(0, int(np.floor(cx - reach))), min(image_size, int(np.ceil(cx + reach)))
    y0, y1 = max(0, int(np.floor(cy - reach))), min(image_size, int(np.ceil(cy + reach)))
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _inside(obj: SceneObject, window: tuple[slice, slice], offset: tuple[float, float]) -> np.ndarray:
    """bool [h, w]: whether the point at ``offset`` (x, y) inside each pixel of ``window`` lies in ``obj``."""
    radius = obj.size / 2
    cx, cy = obj.center
    dx = ((np.arange(window[1].start, window[1].stop, dtype=np.float32) + offset[0] - cx) / radius)[None, :]
    dy = ((np.arange(window[0].start, window[0].stop, dtype=np.float32) + offset[1] - cy) / radius)[:, None]
    cos, sin = np.float32(np.cos(obj.angle)), np.float32(np.sin(obj.angle))
    u, v = cos * dx + sin * dy, cos * dy - sin * dx
    return _SHAPE_TESTS[obj.shape](u, v)


def shape_mask(obj: SceneObject, image_size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """Pixels covered by ``obj`` in an ``image_size`` square image (pixel centres at +0.5).

    Returns:
        (rows, cols) slices of the object's window in the image, and a bool [h, w] mask over it.
    """
    window = _object_window(obj, image_size)
    return window, _inside(obj, window, (0.5, 0.5))


def shape_coverage(obj: SceneObject, image_size: int, samples: int = SUPERSAMPLING) -> np.ndarray:
    """float32 [h, w] over ``shape_mask``'s window: the fraction of ``samples x samples`` points of each
    pixel that lie in ``obj`` (anti-aliasing weights)."""
    window = _object_window(obj, image_size)
    steps = (np.arange(samples, dtype=np.float32) + 0.5) / samples
    total = sum(_inside(obj, window, (float(ox), float(oy))).astype(np.float32) for oy in steps for ox in steps)
    return total / samples**2
