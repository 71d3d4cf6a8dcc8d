"""Image transforms: crop geometry, flips, RandAugment ops, normalisation, erasing, eval resizing, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from groupvit.data.randaugment import INCREASING_OPS, STANDARD_OPS, RandAugment, apply_op, parse_rand_augment
from groupvit.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    ImageAugConfig,
    TrainTransform,
    center_crop,
    random_erasing,
    random_resized_crop_params,
    resize_short_side,
    to_tensor,
)
from groupvit.errors import ConfigError

PLAIN = dict(auto_augment=None, re_prob=0.0)


class ScriptedRNG:
    """Returns fixed values for the draws RandAugment makes."""

    def __init__(self, random: float = 0.0, ops: tuple[int, ...] = (0, 1)) -> None:
        self._random, self._ops = random, ops

    def random(self) -> float:
        return self._random

    def integers(self, high: int, size: int) -> np.ndarray:
        return np.array(self._ops[:size])

    def normal(self, mean: float, std: float) -> float:
        return mean


def column_image(width: int = 20, height: int = 6) -> Image.Image:
    """RGB image whose red value is 10 x column index (green 50, blue 100)."""
    array = np.zeros((height, width, 3), np.uint8)
    array[..., 0] = np.arange(width, dtype=np.uint8)[None, :] * 10
    array[..., 1], array[..., 2] = 50, 100
    return Image.fromarray(array)


def solid(value: tuple[int, int, int], size: tuple[int, int] = (4, 4)) -> Image.Image:
    return Image.new("RGB", size, value)


# --------------------------------------------------------------------------- crop geometry


def test_crop_of_whole_square_image():
    rng = np.random.default_rng(0)
    assert random_resized_crop_params(10, 10, (1.0, 1.0), (1.0, 1.0), rng) == (0, 0, 10, 10)


def test_crop_falls_back_to_centre_crop_with_clamped_ratio():
    # 20x10 image, full area at ratio 1 needs a 14x14 box: never fits, so the fallback clamps the image
    # ratio 2 to 1 and takes the central 10x10 box at left = (20 - 10) // 2 = 5.
    rng = np.random.default_rng(0)
    assert random_resized_crop_params(20, 10, (1.0, 1.0), (1.0, 1.0), rng) == (0, 5, 10, 10)
    # 10x40 (ratio 0.25 < 0.5): width kept, height = round(10 / 0.5) = 20, top = (40 - 20) // 2 = 10.
    assert random_resized_crop_params(10, 40, (1.0, 1.0), (0.5, 0.5), rng) == (10, 0, 20, 10)


def test_random_crops_respect_scale_and_ratio():
    rng = np.random.default_rng(1)
    width, height = 200, 150
    for _ in range(300):
        top, left, h, w = random_resized_crop_params(width, height, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        # Rounding each side to an int moves area and ratio by at most a pixel's worth.
        assert 0.08 * width * height - (w + h) <= w * h <= width * height
        assert 3 / 4 - 1 / min(w, h) <= w / h <= 4 / 3 + 1 / min(w, h)


# --------------------------------------------------------------------------- tensor conversion, flip


def test_to_tensor_normalises_each_channel():
    tensor = to_tensor(solid((255, 0, 128), (3, 2)), IMAGENET_MEAN, IMAGENET_STD)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    for channel, value in enumerate(expected):
        assert torch.allclose(tensor[channel], torch.full((2, 3), value), atol=1e-5)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_to_tensor_equals_the_float32_arithmetic_on_every_pixel(mode):
    rng = np.random.default_rng(3)
    mean = tuple(float(v) for v in rng.uniform(0, 1, 3))
    std = tuple(float(v) for v in rng.uniform(0.1, 1, 3))
    image = Image.fromarray(rng.integers(0, 256, (16, 32, 4 if mode == "RGBA" else 3), dtype=np.uint8)).convert(mode)
    # all 256 values in every channel, then the same sum written out: (v - 255 mean) / (255 std) in float32
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    offset = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1) * 255.0
    scale = np.asarray(std, dtype=np.float32).reshape(3, 1, 1) * 255.0
    assert torch.equal(to_tensor(image, mean, std), torch.from_numpy((pixels - offset) / scale))
    ramp = Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2))
    expected = (np.arange(256, dtype=np.float32)[None, None] - offset) / scale
    assert torch.equal(to_tensor(ramp, mean, std), torch.from_numpy(expected))


def test_horizontal_flip():
    image = column_image(8, 8)
    config = dict(image_size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), **PLAIN)
    kept = TrainTransform(ImageAugConfig(hflip=0.0, **config))(image, np.random.default_rng(0))
    flipped = TrainTransform(ImageAugConfig(hflip=1.0, **config))(image, np.random.default_rng(0))
    assert torch.allclose(kept, to_tensor(image, IMAGENET_MEAN, IMAGENET_STD))
    assert torch.equal(flipped, kept.flip(-1))


# --------------------------------------------------------------------------- RandAugment


def test_policy_string_parsing():
    policy = parse_rand_augment("rand-m9-mstd0.5-inc1")
    assert (policy.num_ops, policy.magnitude, policy.magnitude_std, policy.prob) == (2, 9.0, 0.5, 0.5)
    assert policy.ops == INCREASING_OPS and len(policy.ops) == 15
    assert parse_rand_augment("rand-m7-n3").ops == STANDARD_OPS
    for bad in ("original", "rand-x9", "rand-m11", "rand-mfoo"):
        with pytest.raises(ConfigError):
            parse_rand_augment(bad)


@pytest.mark.parametrize(
    ("op", "magnitude", "before", "after"),
    [
        ("Invert", 9, 10, 245),
        # increasing posterize at m=9 keeps 4 - int(3.6) = 1 bit: 200 -> 128, 100 -> 0
        ("PosterizeIncreasing", 9, 200, 128),
        ("PosterizeIncreasing", 9, 100, 0),
        # standard posterize at m=10 keeps int(4.0) = 4 bits: 200 -> 192
        ("Posterize", 10, 200, 192),
        # at m=10 increasing posterize keeps 0 bits: black
        ("PosterizeIncreasing", 10, 255, 0),
        # increasing solarize at m=9: threshold 256 - int(230.4) = 26; values >= 26 are inverted
        ("SolarizeIncreasing", 9, 100, 155),
        ("SolarizeIncreasing", 9, 20, 20),
        # solarize-add at m=9 adds int(99.0) = 99 below 128
        ("SolarizeAdd", 9, 100, 199),
        ("SolarizeAdd", 9, 200, 200),
        # standard brightness at m=5: factor 0.1 + 1.8 * 0.5 = 1.0
        ("Brightness", 5, 77, 77),
        # increasing brightness at m=5 with a positive sign: factor 1.45
        ("BrightnessIncreasing", 5, 100, 145),
    ],
)
def test_pixel_ops(op, magnitude, before, after):
    out = apply_op(solid((before,) * 3), op, magnitude, ScriptedRNG(random=0.0))
    assert np.asarray(out)[0, 0].tolist() == [after] * 3


def test_translate_rel_shifts_by_fraction_of_width_and_fills_with_mean():
    # m=10: 0.45 * 20 = 9 pixels; a positive sign samples x + 9, i.e. the content moves 9 pixels left.
    out = np.asarray(apply_op(column_image(), "TranslateXRel", 10, ScriptedRNG(random=0.0)))
    assert out[0, :11, 0].tolist() == [10 * (x + 9) for x in range(11)]
    assert (out[:, 11:] == (124, 116, 104)).all()
    # A sign draw above 0.5 negates: the content moves right.
    out = np.asarray(apply_op(column_image(), "TranslateXRel", 10, ScriptedRNG(random=0.9)))
    assert out[0, 9:, 0].tolist() == [10 * x for x in range(11)]


def test_geometric_ops_at_zero_magnitude_are_identity():
    image = column_image()
    for op in ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        assert np.array_equal(np.asarray(apply_op(image, op, 0, ScriptedRNG())), np.asarray(image)), op


def test_every_op_keeps_size_and_mode():
    image = column_image(16, 12)
    rng = np.random.default_rng(0)
    for op in set(INCREASING_OPS + STANDARD_OPS):
        out = apply_op(image, op, 9, rng)
        assert out.size == image.size and out.mode == "RGB", op


def test_ops_run_with_probability():
    image = solid((10, 10, 10))
    # Ops 2 (Invert) twice; a draw of 0.9 > prob 0.5 skips both, 0.1 runs both (double inversion).
    skipped = RandAugment(ops=INCREASING_OPS)(image, ScriptedRNG(random=0.9, ops=(2, 2)))
    assert np.asarray(skipped)[0, 0].tolist() == [10] * 3
    once = RandAugment(num_ops=1, ops=INCREASING_OPS)(image, ScriptedRNG(random=0.1, ops=(2,)))
    assert np.asarray(once)[0, 0].tolist() == [245] * 3


# --------------------------------------------------------------------------- random erasing


def test_random_erasing_fills_one_box():
    tensor = torch.zeros(3, 40, 30)
    random_erasing(tensor, np.random.default_rng(3), prob=1.0, mode="pixel")
    rows = tensor.abs().sum(dim=(0, 2)).nonzero().flatten()
    cols = tensor.abs().sum(dim=(0, 1)).nonzero().flatten()
    box = tensor[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert (box != 0).all()  # a solid rectangle, in every channel
    h, w = box.shape[1:]
    assert 0.02 * 1200 - (h + w) <= h * w <= 1200 / 3 + (h + w)
    assert 0.3 - 1 / min(h, w) <= h / w <= 1 / 0.3 + 1 / min(h, w)


def test_random_erasing_probability_and_const_mode():
    tensor = torch.ones(3, 20, 20)
    assert torch.equal(random_erasing(tensor.clone(), np.random.default_rng(0), prob=0.0), tensor)
    erased = random_erasing(tensor.clone(), np.random.default_rng(0), prob=1.0, mode="const")
    assert 0 < (erased == 0).sum() < tensor.numel() and set(erased.unique().tolist()) == {0.0, 1.0}


# --------------------------------------------------------------------------- whole transforms


def test_train_transform_is_a_function_of_the_generator():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    transform = TrainTransform(ImageAugConfig(image_size=24, re_prob=1.0))
    a = transform(image, np.random.default_rng(7))
    b = transform(image, np.random.default_rng(7))
    c = transform(image, np.random.default_rng(8))
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eval_resize_and_centre_crop():
    # 96x64 -> short side 56 * 256 // 224 = 64 (unchanged) -> 56x56 crop at left 20, top 4.
    image = column_image(96, 64)
    assert resize_short_side(column_image(30, 20), 64).size == (96, 64)
    assert resize_short_side(column_image(20, 30), 64).size == (64, 96)
    cropped = np.asarray(center_crop(image, 56))
    assert cropped.shape == (56, 56, 3) and cropped[0, 0, 0] == (20 * 10) % 256
    out = EvalTransform(image_size=56)(image)
    assert out.shape == (3, 56, 56)
    assert torch.allclose(out, to_tensor(center_crop(image, 56), IMAGENET_MEAN, IMAGENET_STD))
    assert EvalTransform(image_size=224).image_size * 256 // 224 == 256


def test_config_validation_and_round_trip():
    config = ImageAugConfig(image_size=64, scale=[0.5, 1.0])
    assert config.scale == (0.5, 1.0)
    assert ImageAugConfig.from_dict(config.to_dict()) == config
    for bad in (
        dict(image_size=0),
        dict(scale=(0.5, 0.2)),
        dict(interpolation="cubic"),
        dict(re_mode="noise"),
        dict(auto_augment="autoaug"),
        dict(hflip=2.0),
    ):
        with pytest.raises(ConfigError):
            ImageAugConfig(**bad)
    with pytest.raises(ConfigError):
        ImageAugConfig.from_dict({"size": 3})
    assert math.isclose(ImageAugConfig().ratio[0], 0.75)
