"""Image transforms of GroupViT training and evaluation, on PIL images and torch tensors (no torchvision).

Train (DeiT recipe, official config): random resized crop -> horizontal flip -> RandAugment
``rand-m9-mstd0.5-inc1`` -> to tensor -> normalise -> random erasing. Eval: resize the short side to
``size * 256 / 224`` -> centre crop ``size`` -> to tensor -> normalise.

Every random choice comes from a ``numpy.random.Generator`` passed in by the caller, so a sample's
augmentation depends only on the generator it is given (the loader derives one per sample).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from groupvit.config import check_keys
from groupvit.data.randaugment import RandAugment, parse_rand_augment
from groupvit.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
ERASE_MODES = ("pixel", "rand", "const")
CROP_ATTEMPTS = 10
ERASE_ATTEMPTS = 10
ERASE_AREA = (0.02, 1.0 / 3.0)
ERASE_ASPECT = (0.3, 1.0 / 0.3)


def _unknown_interpolation(name: str) -> str:
    return f"interpolation {name!r} unknown; choose one of {', '.join(INTERPOLATIONS)}"


@dataclass(frozen=True)
class ImageAugConfig:
    """Settings of the training image transform (defaults: the official GroupViT recipe).

    Args:
        image_size: output side ``S`` in pixels; images come out ``[3, S, S]``.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height), sampled log-uniformly.
        interpolation: ``nearest``, ``bilinear``, ``bicubic`` or ``lanczos`` (crop resize and RandAugment).
        hflip: probability of a horizontal flip.
        auto_augment: RandAugment policy string (``rand-m9-mstd0.5-inc1``) or None for none.
        re_prob: probability of random erasing.
        re_mode: erased values: ``pixel`` (per-pixel N(0, 1)), ``rand`` (one N(0, 1) colour), ``const`` (zeros).
        re_count: at most this many erased boxes (the count is drawn from 1..re_count).
        mean, std: per-channel normalisation of RGB values in [0, 1].
    """

    image_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.25
    re_mode: str = "pixel"
    re_count: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in ("scale", "ratio", "mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.image_size < 1:
            raise ConfigError(f"image_size must be a positive number of pixels, got {self.image_size}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ConfigError(f"scale must be (low, high) with 0 < low <= high <= 1, got {self.scale}")
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"ratio must be (low, high) with 0 < low <= high, got {self.ratio}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(_unknown_interpolation(self.interpolation))
        if not 0 <= self.hflip <= 1 or not 0 <= self.re_prob <= 1:
            raise ConfigError(f"hflip and re_prob must be probabilities, got {self.hflip} and {self.re_prob}")
        if self.re_mode not in ERASE_MODES:
            raise ConfigError(f"re_mode {self.re_mode!r} unknown; choose one of {', '.join(ERASE_MODES)}")
        if self.re_count < 1:
            raise ConfigError(f"re_count must be at least 1, got {self.re_count}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean and std must have 3 values with std > 0, got {self.mean} and {self.std}")
        if self.auto_augment:
            parse_rand_augment(self.auto_augment)  # fail at configuration time, not in a loader worker

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageAugConfig:
        """Build from a plain dict (e.g. parsed YAML); unknown keys raise ConfigError."""
        check_keys(cls, data, "image augmentation")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (tuples become lists), the inverse of :meth:`from_dict`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def random_resized_crop_params(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """Crop box ``(top, left, crop_height, crop_width)`` of a random resized crop (torchvision semantics).

    Up to 10 attempts draw an area fraction uniformly in ``scale`` and an aspect ratio log-uniformly in
    ``ratio``; the first box that fits is placed uniformly. If none fits, the centre crop with the aspect
    ratio clamped into ``ratio`` (whole image when its ratio is inside) is returned.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_w, crop_h = int(round(height * ratio[1])), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def resize_short_side(img: Image.Image, size: int, resample: int = Image.Resampling.BILINEAR) -> Image.Image:
    """Resize so the shorter side is ``size``, keeping the aspect ratio (long side truncated to int)."""
    width, height = img.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    return img if new_size == img.size else img.resize(new_size, resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Central ``size x size`` crop (offsets rounded as torchvision does); the image must be at least that big."""
    width, height = img.size
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


@functools.lru_cache(maxsize=16)
def _value_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``float32 [3, 256]``: ``(v / 255 - mean) / std`` of every byte value ``v`` of each channel."""
    scale = np.asarray(std, dtype=np.float32).reshape(3, 1) * 255.0
    offset = np.asarray(mean, dtype=np.float32).reshape(3, 1) * 255.0
    return (np.arange(256, dtype=np.float32)[None] - offset) / scale


def to_tensor(
    img: Image.Image, mean: tuple[float, ...] = (0.0, 0.0, 0.0), std: tuple[float, ...] = (1.0, 1.0, 1.0)
) -> torch.Tensor:
    """RGB PIL image -> ``float32 [3, H, W]``: values ``(v / 255 - mean) / std`` per channel.

    Each channel is looked up in a table of the 256 values computed once in float32 (the same numbers as
    the arithmetic on every pixel, in half the time); numpy, not torch, whose intra-op threads would compete
    with the training step for the cores.
    """
    array = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    table = _value_table(tuple(mean), tuple(std))
    out = np.empty((3, *array.shape[:2]), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], array[:, :, channel], out=out[channel])
    return torch.from_numpy(out)


def random_erasing(
    tensor: torch.Tensor,
    rng: np.random.Generator,
    prob: float = 0.25,
    mode: str = "pixel",
    max_count: int = 1,
) -> torch.Tensor:
    """Erase random boxes of a normalised ``[C, H, W]`` tensor in place (timm semantics); returns it.

    With probability ``prob``, draws a box count in ``1..max_count``; for each box, up to 10 attempts draw an
    area in 2%-33% of the image divided by the count and an aspect log-uniform in [0.3, 3.33]; the first box
    strictly smaller than the image is filled with ``mode`` values (``pixel``: per-element N(0, 1),
    ``rand``: one N(0, 1) value per channel, ``const``: zeros).
    """
    if rng.random() > prob:
        return tensor
    channels, height, width = tensor.shape
    count = 1 if max_count == 1 else int(rng.integers(1, max_count + 1))
    log_aspect = (math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1]))
    for _ in range(count):
        for _ in range(ERASE_ATTEMPTS):
            target_area = rng.uniform(*ERASE_AREA) * height * width / count
            aspect = math.exp(rng.uniform(*log_aspect))
            box_h = int(round(math.sqrt(target_area * aspect)))
            box_w = int(round(math.sqrt(target_area / aspect)))
            if box_w < width and box_h < height:
                top = int(rng.integers(0, height - box_h + 1))
                left = int(rng.integers(0, width - box_w + 1))
                if mode == "pixel":
                    values = rng.standard_normal((channels, box_h, box_w), dtype=np.float32)
                elif mode == "rand":
                    values = rng.standard_normal((channels, 1, 1), dtype=np.float32)
                else:
                    values = np.zeros((channels, 1, 1), dtype=np.float32)
                tensor[:, top : top + box_h, left : left + box_w] = torch.from_numpy(values).to(tensor.dtype)
                break
    return tensor


class TrainTransform:
    """The training transform: RGB PIL image + generator -> ``float32 [3, S, S]`` (normalised).

    Draw order on ``rng``: crop box, flip, RandAugment, erasing. Same image and same generator state give
    the same tensor. RandAugment fills with the mean colour ``round(255 * mean)`` = ``(124, 116, 104)``.
    """

    def __init__(self, config: ImageAugConfig | None = None) -> None:
        self.config = config or ImageAugConfig()
        cfg = self.config
        fill = tuple(min(255, round(255 * m)) for m in cfg.mean)
        self.rand_augment: RandAugment | None = (
            parse_rand_augment(cfg.auto_augment, fill=fill, resample=INTERPOLATIONS[cfg.interpolation])
            if cfg.auto_augment
            else None
        )

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        cfg = self.config
        img = img.convert("RGB")
        resample = INTERPOLATIONS[cfg.interpolation]
        top, left, crop_h, crop_w = random_resized_crop_params(img.width, img.height, cfg.scale, cfg.ratio, rng)
        img = img.resize((cfg.image_size, cfg.image_size), resample, box=(left, top, left + crop_w, top + crop_h))
        if rng.random() < cfg.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            img = self.rand_augment(img, rng)
        tensor = to_tensor(img, cfg.mean, cfg.std)
        if cfg.re_prob > 0:
            random_erasing(tensor, rng, cfg.re_prob, cfg.re_mode, cfg.re_count)
        return tensor


@dataclass(frozen=True)
class EvalTransform:
    """The evaluation transform: PIL image -> ``float32 [3, S, S]`` (normalised), deterministic.

    Resizes the short side to ``image_size * 256 // 224`` (256 for 224), centre-crops ``image_size``.
    """

    image_size: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ConfigError(f"image_size must be a positive number of pixels, got {self.image_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(_unknown_interpolation(self.interpolation))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        short_side = self.image_size * 256 // 224
        resized = resize_short_side(img.convert("RGB"), short_side, INTERPOLATIONS[self.interpolation])
        return to_tensor(center_crop(resized, self.image_size), self.mean, self.std)


def load_image(source: str | os.PathLike[str] | Image.Image | np.ndarray, image_size: int = 224) -> torch.Tensor:
    """An image file (or PIL image / uint8 ``[H, W, 3]`` array) as the model's input: ``float32 [1, 3, S, S]``.

    The evaluation transform (:class:`EvalTransform`: short side to ``S * 256 // 224``, centre crop ``S``,
    ImageNet normalisation); EXIF orientation, palette, grey, RGBA and 16-bit files are converted like
    :func:`~groupvit.data.images.read_image`, whose :class:`~groupvit.errors.InputError` it raises.
    """
    from groupvit.data.images import read_image

    rgb = read_image(source)
    return EvalTransform(image_size=image_size)(Image.fromarray(rgb))[None]
