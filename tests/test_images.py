"""Image reading (modes, bit depths, broken files), label maps, and the evaluation resize / normalisation."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from groupvit.data.images import (
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    list_images,
    prepare_segmentation_input,
    read_image,
    read_label_map,
    rescale_size,
    resize_bilinear,
)
from groupvit.errors import InputError


def png_bytes(array: np.ndarray, bit_depth: int, colour_type: int) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB): colour type 0 gray, 2 RGB, 6 RGBA."""
    height, width = array.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + np.ascontiguousarray(array[y]).astype(dtype).tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_rgb_file_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, rgb)
    np.testing.assert_array_equal(read_image(str(tmp_path / "a.png")), rgb)
    np.testing.assert_array_equal(read_image(Image.fromarray(rgb)), rgb)


def test_grayscale_is_replicated(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)
    np.testing.assert_array_equal(read_image(gray), out)
    np.testing.assert_array_equal(read_image(gray[:, :, None]), out)


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: its colour
    rgba[0, 1] = (10, 20, 30, 0)  # transparent: white, not the hidden colour
    rgba[0, 2] = (0, 0, 0, 128)  # half black over white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], (10, 20, 30))
    np.testing.assert_array_equal(out[0, 1], (255, 255, 255))
    assert np.all(np.abs(out[0, 2].astype(int) - 127) <= 1)
    np.testing.assert_array_equal(read_image(rgba), out)


def test_palette_images_expand_to_their_colours(tmp_path):
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 200, 10, 10, 5, 250, 5] + [0] * (768 - 9))
    image.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 1], (200, 10, 10))
    np.testing.assert_array_equal(out[1, 0], (5, 250, 5))
    # With a transparent index, that colour becomes white.
    image.save(tmp_path / "pt.png", transparency=1)
    out = read_image(tmp_path / "pt.png")
    np.testing.assert_array_equal(out[0, 1], (255, 255, 255))
    np.testing.assert_array_equal(out[1, 0], (5, 250, 5))


def test_16_bit_gray_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    (tmp_path / "g16.png").write_bytes(png_bytes(values, 16, 0))
    out = read_image(tmp_path / "g16.png")
    # round(v / 257): 0, 1, 128, 255 (Pillow's own convert would clip everything above 255 to white).
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(read_image(values)[0, :, 0], [0, 1, 128, 255])


def test_16_bit_rgb_png(tmp_path):
    values = np.zeros((1, 2, 3), dtype=np.uint16)
    values[0, 0] = (65535, 32768, 0)
    values[0, 1] = (256 * 200 + 255, 0, 65535)
    (tmp_path / "rgb16.png").write_bytes(png_bytes(values, 16, 2))
    out = read_image(tmp_path / "rgb16.png")
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out[0, 0], (255, 128, 0))
    np.testing.assert_array_equal(out[0, 1], (200, 0, 255))


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (6, 4, 3)
    assert out[0, -1].min() > 200  # the white top-left corner moved to the top-right


def test_truncated_jpeg_is_an_input_error(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.jpg.*truncated or corrupt"):
        read_image(tmp_path / "cut.jpg")


def test_non_image_missing_and_directory_are_input_errors(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image at all")
    with pytest.raises(InputError, match="notes.jpg is not an image"):
        read_image(tmp_path / "notes.jpg")
    with pytest.raises(InputError, match="no such image file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(InputError, match="cannot read an image from int"):
        read_image(3)


def test_array_inputs_are_checked():
    with pytest.raises(InputError, match="uint8"):
        read_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(InputError, match="shape"):
        read_image(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(InputError, match="empty"):
        read_image(np.zeros((0, 4, 3), dtype=np.uint8))
    assert read_image(np.ones((2, 2), dtype=bool)).max() == 255


def test_label_maps_keep_palette_indices(tmp_path):
    labels = np.array([[0, 15, 255], [3, 3, 20]], dtype=np.uint8)
    image = Image.fromarray(labels, mode="P")
    image.putpalette(list(range(256)) * 3)
    image.save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "l.png"), labels)
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="expected one channel"):
        read_label_map(tmp_path / "rgb.png")


def test_list_images_filters_by_extension(tmp_path):
    for name in ("b.JPG", "a.png", "c.txt", "d.jpeg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "d.jpeg"]


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((375, 500), (448, 597)),  # 500 * 448 / 375 = 597.3
        ((500, 375), (597, 448)),
        ((1, 1), (448, 448)),
        ((100, 10000), (20, 2048)),  # the long side cap wins: factor 0.2048
        ((448, 448), (448, 448)),
    ],
)
def test_rescale_size_matches_mmcv_rule(size, expected):
    assert rescale_size(*size) == expected


def test_resize_bilinear_equals_torch_interpolate():
    gen = torch.Generator().manual_seed(0)
    for in_size, out_size in [((7, 9), (30, 41)), ((30, 41), (7, 9)), ((448, 448), (500, 375)), ((1, 1), (5, 3))]:
        x = torch.rand(2, *in_size, generator=gen)
        expected = F.interpolate(x[None], size=out_size, mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(resize_bilinear(x, out_size), expected, rtol=0, atol=1e-6)
    x = torch.randint(0, 256, (3, 50, 60), generator=gen, dtype=torch.uint8)
    expected = F.interpolate(x[None].float(), size=(23, 71), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(resize_bilinear(x, (23, 71)), expected, rtol=0, atol=1e-4)


def test_prepare_segmentation_input_resizes_rounds_and_normalises():
    rgb = np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    x = prepare_segmentation_input(rgb, short_side=448)
    assert x.shape == (3, 448, 597) and x.dtype == torch.float32
    resized = F.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), size=(448, 597), mode="bilinear",
                            align_corners=False)[0].round().clamp(0, 255)
    mean = torch.tensor(IMAGENET_MEAN_255).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255).view(3, 1, 1)
    expected = (resized - mean) / std
    # Values landing on .5 may round either way with another summation order: one grey level at most.
    torch.testing.assert_close(x, expected, rtol=0, atol=1.01 / 57.12)
    assert ((x - expected).abs() > 1e-5).sum() < 20
    # Already at the target scale: no resampling, only normalisation.
    same = np.full((448, 500, 3), 123, dtype=np.uint8)
    torch.testing.assert_close(prepare_segmentation_input(same)[:, 0, 0], (123 - mean.view(3)) / std.view(3))
