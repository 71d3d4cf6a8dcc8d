"""RandAugment on PIL images, with the semantics of timm's ``rand-m9-mstd0.5-inc1`` policy used by GroupViT.

A policy string ``rand-m{M}[-n{N}][-mstd{S}][-inc{0|1}][-p{P}]`` picks ``N`` ops (default 2) uniformly with
replacement from 15; each op runs with probability ``P`` (default 0.5) at magnitude ``M`` (0-10) plus
Gaussian noise of std ``S``, clipped to [0, 10]. ``inc1`` selects the op set whose severity grows with the
magnitude for every op (posterize keeps fewer bits, solarize lowers its threshold, enhancements move further
from 1). Geometric ops fill uncovered pixels with ``fill`` (the ImageNet mean colour by default) and resample
with ``resample``. Randomness comes only from the ``numpy.random.Generator`` passed to each call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from groupvit.errors import ConfigError

MAX_LEVEL = 10.0
# Geometric ranges at full magnitude (level 10).
MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE_FRACTION = 0.45
MAX_SOLARIZE_ADD = 110
SOLARIZE_ADD_THRESHOLD = 128

INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
STANDARD_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)

Fill = tuple[int, int, int]


def _signed(value: float, rng: np.random.Generator) -> float:
    """``value`` with a random sign (negative with probability 1/2)."""
    return -value if rng.random() > 0.5 else value


def _affine(img: Image.Image, coeffs: tuple[float, ...], fill: Fill, resample: int) -> Image.Image:
    # PIL's affine maps each output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f).
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=resample, fillcolor=fill)


def _solarize_add(img: Image.Image, add: int) -> Image.Image:
    lut = [min(255, v + add) if v < SOLARIZE_ADD_THRESHOLD else v for v in range(256)]
    return img.point(lut * len(img.getbands()))


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    """Keep the ``bits`` most significant bits of each value; 0 bits gives black (Pillow refuses 0)."""
    if bits >= 8:
        return img
    mask = 0xFF & ~((1 << (8 - max(0, bits))) - 1)
    return img.point([v & mask for v in range(256)] * len(img.getbands()))


_ENHANCERS: dict[str, type] = {
    "Color": ImageEnhance.Color,
    "Contrast": ImageEnhance.Contrast,
    "Brightness": ImageEnhance.Brightness,
    "Sharpness": ImageEnhance.Sharpness,
}


def apply_op(
    img: Image.Image,
    name: str,
    magnitude: float,
    rng: np.random.Generator,
    fill: Fill = (124, 116, 104),
    resample: int = Image.Resampling.BILINEAR,
) -> Image.Image:
    """Apply one RandAugment op at ``magnitude`` (0-10) to an RGB image, unconditionally.

    Signed ops (rotate, shear, translate, the ``*Increasing`` enhancements) draw one ``rng.random()``
    for the sign. Level-to-argument maps at level ``m``: rotate ``30 m/10`` degrees; shear ``0.3 m/10``;
    translate ``0.45 m/10`` of the width/height in pixels; posterize ``int(4 m/10)`` bits kept (increasing:
    ``4 - int(4 m/10)``); solarize threshold ``int(256 m/10)`` (increasing: ``256 - int(256 m/10)``); solarize-add
    ``int(110 m/10)`` added below 128; enhance factor ``0.1 + 1.8 m/10`` (increasing: ``1 ± 0.9 m/10``).
    """
    level = magnitude / MAX_LEVEL
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        return img.rotate(_signed(level * MAX_ROTATE_DEGREES, rng), resample=resample, fillcolor=fill)
    if name == "ShearX":
        return _affine(img, (1, _signed(level * MAX_SHEAR, rng), 0, 0, 1, 0), fill, resample)
    if name == "ShearY":
        return _affine(img, (1, 0, 0, _signed(level * MAX_SHEAR, rng), 1, 0), fill, resample)
    if name == "TranslateXRel":
        pixels = _signed(level * MAX_TRANSLATE_FRACTION, rng) * img.size[0]
        return _affine(img, (1, 0, pixels, 0, 1, 0), fill, resample)
    if name == "TranslateYRel":
        pixels = _signed(level * MAX_TRANSLATE_FRACTION, rng) * img.size[1]
        return _affine(img, (1, 0, 0, 0, 1, pixels), fill, resample)
    if name == "Posterize":
        return _posterize(img, int(level * 4))
    if name == "PosterizeIncreasing":
        return _posterize(img, 4 - int(level * 4))
    if name == "Solarize":
        return ImageOps.solarize(img, int(level * 256))
    if name == "SolarizeIncreasing":
        return ImageOps.solarize(img, 256 - int(level * 256))
    if name == "SolarizeAdd":
        return _solarize_add(img, int(level * MAX_SOLARIZE_ADD))
    if name in _ENHANCERS:
        return _ENHANCERS[name](img).enhance(level * 1.8 + 0.1)
    if name.endswith("Increasing") and name[: -len("Increasing")] in _ENHANCERS:
        return _ENHANCERS[name[: -len("Increasing")]](img).enhance(1.0 + _signed(level * 0.9, rng))
    raise ConfigError(f"unknown RandAugment op {name!r}; choose one of {', '.join(STANDARD_OPS + INCREASING_OPS)}")


@dataclass(frozen=True)
class RandAugment:
    """``num_ops`` random ops per image, each applied with probability ``prob`` (timm's RandAugment).

    Args:
        num_ops: ops drawn per image, uniformly with replacement from ``ops`` (default 2).
        magnitude: mean magnitude on the 0-10 scale (default 9).
        magnitude_std: std of the Gaussian noise added to the magnitude per op (default 0.5; 0 = fixed).
        prob: probability that a drawn op is applied (default 0.5).
        ops: op names (default: the increasing-severity set).
        fill: RGB fill of pixels uncovered by geometric ops (default: ImageNet mean ``(124, 116, 104)``).
        resample: PIL resampling filter of geometric ops (default bilinear).
    """

    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.5
    prob: float = 0.5
    ops: tuple[str, ...] = INCREASING_OPS
    fill: Fill = (124, 116, 104)
    resample: int = Image.Resampling.BILINEAR

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Augment an RGB image. Draw order: op indices, then per op: apply?, magnitude noise, sign."""
        for index in rng.integers(len(self.ops), size=self.num_ops):
            if rng.random() > self.prob:
                continue
            magnitude = self.magnitude
            if self.magnitude_std > 0:
                magnitude = rng.normal(magnitude, self.magnitude_std)
            magnitude = min(MAX_LEVEL, max(0.0, float(magnitude)))
            img = apply_op(img, self.ops[index], magnitude, rng, self.fill, self.resample)
        return img


def parse_rand_augment(
    spec: str, fill: Sequence[int] = (124, 116, 104), resample: int = Image.Resampling.BILINEAR
) -> RandAugment:
    """Build a :class:`RandAugment` from a timm-style policy string such as ``'rand-m9-mstd0.5-inc1'``.

    Sections after ``rand``: ``m`` magnitude, ``n`` number of ops, ``mstd`` magnitude noise std,
    ``inc`` 1 for the increasing-severity op set (default 0), ``p`` op probability.
    """
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ConfigError(
            f"auto_augment {spec!r} is not supported; use a RandAugment policy like 'rand-m9-mstd0.5-inc1' or None"
        )
    values: dict[str, float] = {}
    for part in parts[1:]:
        key = next((k for k in ("mstd", "inc", "m", "n", "p") if part.startswith(k)), None)
        try:
            if key is None:
                raise ValueError(part)
            values[key] = float(part[len(key):])
        except ValueError:
            raise ConfigError(
                f"cannot parse section {part!r} of auto_augment {spec!r}; sections are m<float>, n<int>, "
                "mstd<float>, inc<0|1>, p<float>"
            ) from None
    num_ops = int(values.get("n", 2))
    magnitude = values.get("m", 10.0)
    prob = values.get("p", 0.5)
    if num_ops < 0 or not 0 <= magnitude <= MAX_LEVEL or not 0 <= prob <= 1 or values.get("mstd", 0) < 0:
        raise ConfigError(f"auto_augment {spec!r} is out of range: n >= 0, 0 <= m <= 10, mstd >= 0, 0 <= p <= 1")
    return RandAugment(
        num_ops=num_ops,
        magnitude=magnitude,
        magnitude_std=values.get("mstd", 0.0),
        prob=prob,
        ops=INCREASING_OPS if values.get("inc", 0) else STANDARD_OPS,
        fill=tuple(int(v) for v in fill),
        resample=resample,
    )
