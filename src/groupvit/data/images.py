"""Reading images into RGB uint8 arrays, and the resize / normalisation steps of evaluation.

Everything returns or takes plain ``numpy`` / ``torch`` data; no torchvision.

* :func:`read_image`: path, PIL image or array -> ``uint8 [H, W, 3]`` RGB. Grayscale is replicated,
  alpha is composited over white, palette images are expanded, 16-bit data is scaled to 8 bits
  (``round(v / 257)``), EXIF orientation is applied (as OpenCV's decoder does for the official
  pipeline). An unreadable, truncated or non-image file raises :class:`~groupvit.errors.InputError`.
* :func:`read_label_map`: a segmentation label PNG (palette indices or gray values) -> ``[H, W]``.
* :func:`resize_bilinear`: separable bilinear resize identical in formula to
  ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)`` (and OpenCV's
  ``INTER_LINEAR``), computed from the two source rows / columns each output needs, so a
  10000x10000 uint8 image is shrunk without first being converted to float.
* :func:`rescale_size`, :func:`prepare_segmentation_input`: mmseg's keep-ratio resize to
  ``(2048, 448)`` and ImageNet normalisation on the 0-255 scale.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from groupvit.errors import InputError

# ImageNet statistics on the 0-255 scale (mmseg ``img_norm_cfg``; timm's 0-1 values times 255).
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

ImageSource = str | os.PathLike | Image.Image | np.ndarray


def read_image(source: ImageSource) -> np.ndarray:
    """Any supported image -> ``uint8 [H, W, 3]`` RGB (C-contiguous).

    Args:
        source: a file path; a PIL image (any mode); or an array ``[H, W]``, ``[H, W, 1]``,
            ``[H, W, 3]`` or ``[H, W, 4]`` of dtype uint8 or uint16 (uint16 is scaled by 1/257).
            Float arrays are refused: their range (0-1 or 0-255) is ambiguous.

    Raises:
        InputError: missing file, not an image, truncated / corrupt data, unsupported array.
    """
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, str | os.PathLike):
        return _pil_to_rgb(_open(Path(source)))
    raise InputError(
        f"cannot read an image from {type(source).__name__}; pass a file path, a PIL image or a uint8 array [H, W, 3]"
    )


def _open(path: Path, exif: bool = True) -> Image.Image:
    if not path.exists():
        raise InputError(f"no such image file: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an image file")
    try:
        with warnings.catch_warnings():
            # Large photos are legitimate input; Pillow still refuses the absurd ones (bomb error).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
            if exif:
                ImageOps.exif_transpose(image, in_place=True)
            return image
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image file Pillow can read") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None
    except Image.DecompressionBombError as err:
        raise InputError(f"{path} is too large to decode safely: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path} is truncated or corrupt: {err}") from None


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}:
        return np.ascontiguousarray(np.repeat(_high_depth_gray(image)[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode == "P":
        image = image.convert("RGB")
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        image = _composite_on_white(image.convert("RGBA"))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _high_depth_gray(image: Image.Image) -> np.ndarray:
    """16-bit / 32-bit / float gray -> uint8. Pillow's own ``convert('L')`` clips instead of scaling."""
    values = np.asarray(image)
    if image.mode == "F":
        # Float images are taken as 0-1 when they fit that range, else as 0-255.
        values = values.astype(np.float64)
        finite = values[np.isfinite(values)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return np.clip(np.nan_to_num(values) * scale, 0, 255).round().astype(np.uint8)
    values = values.astype(np.int64)
    if image.mode == "I" and values.size and values.max() <= 255:
        # Mode "I" also holds 8-bit data promoted by some decoders; only rescale when it is 16-bit.
        return np.clip(values, 0, 255).astype(np.uint8)
    return np.clip((np.clip(values, 0, 65535) + 128) // 257, 0, 255).astype(np.uint8)


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Transparent pixels show what a viewer shows on a light page, not the hidden colour under alpha 0."""
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint16:
        array = ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise InputError(
            f"image arrays must be uint8 (or uint16), got {array.dtype}; convert with "
            "(x * 255).round().astype(np.uint8) for 0-1 floats"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = np.asarray(_composite_on_white(Image.fromarray(np.ascontiguousarray(array), "RGBA")))
    elif not (array.ndim == 3 and array.shape[2] == 3):
        raise InputError(f"image arrays must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"image array is empty, shape {array.shape}")
    return np.ascontiguousarray(array)


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """A label PNG -> ``[H, W]`` integer array of the stored values (palette indices for mode P).

    Raises:
        InputError: missing / corrupt file, or a colour (RGB) image that holds no class indices.
    """
    image = _open(Path(path), exif=False)
    if image.mode in {"RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA"}:
        raise InputError(
            f"label map {path} is a {image.mode} image; expected one channel of class ids (palette or gray PNG)"
        )
    labels = np.asarray(image)
    return labels.astype(np.int32) if labels.dtype != np.uint8 else labels


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by extension, case-insensitive) directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


# ----------------------------------------------------------------------------------------------
# Resizing


def bilinear_taps(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices ``i0, i1 [n_out]`` and weight ``w1 [n_out]`` of bilinear resampling along one axis.

    Half-pixel centres (``align_corners=False``): ``src = (dst + 0.5) * n_in / n_out - 0.5``,
    clamped at 0, as in PyTorch and OpenCV.
    """
    # A float32 scale and a fused multiply-add rounded once to float32, as PyTorch's CPU kernel does,
    # so indices and weights equal those of F.interpolate bit for bit.
    scale = float(torch.tensor(n_in / n_out, dtype=torch.float32))
    dst = torch.arange(n_out, device=device, dtype=torch.float64)
    src = (scale * (dst + 0.5) - 0.5).float().clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, src - i0


def resize_rows(
    x: torch.Tensor, size: tuple[int, int], chunk_rows: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Bilinear resize of ``x [C, H, W]`` (any dtype) to ``size = (H', W')``, yielded in row strips.

    Yields ``(first_row, strip [C, rows, W'] float32)``; only the source rows a strip needs are read
    and converted to float, so memory stays ``O(C * chunk_rows * (W + W'))``.
    """
    out_h, out_w = size
    if out_h < 1 or out_w < 1:
        raise InputError(f"resize target must be positive, got {size}")
    y0, y1, wy = bilinear_taps(x.shape[1], out_h, x.device)
    step = chunk_rows or out_h
    for start in range(0, out_h, step):
        rows = slice(start, min(start + step, out_h))
        top = x.index_select(1, y0[rows]).float()
        bottom = x.index_select(1, y1[rows]).float()
        strip = torch.lerp(top, bottom, wy[rows].view(1, -1, 1))
        # Horizontal pass with PyTorch's kernel: the height is unchanged, so rows map onto themselves
        # (weight 0) and the result equals the 2-D bilinear resize.
        yield start, F.interpolate(strip[None], size=(strip.shape[1], out_w), mode="bilinear", align_corners=False)[0]


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x [C, H, W]`` -> ``[C, H', W']`` float32, bilinear, ``align_corners=False``, no antialiasing."""
    out = torch.empty(x.shape[0], *size, dtype=torch.float32, device=x.device)
    for start, strip in resize_rows(x, size, chunk_rows=max(1, (1 << 24) // max(1, x.shape[0] * size[1]))):
        out[:, start:start + strip.shape[1]] = strip
    return out


def rescale_size(height: int, width: int, short_side: int = 448, max_long_side: int = 2048) -> tuple[int, int]:
    """Keep-ratio target size of mmcv ``imrescale(img, (max_long_side, short_side))``.

    ``factor = min(max_long_side / long, short_side / short)``; each side ``int(side * factor + 0.5)``
    (at least 1). Returns ``(H', W')``.
    """
    factor = min(max_long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def normalize(image: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` or ``[B, 3, H, W]`` on the 0-255 scale -> ImageNet-normalised float32."""
    mean = torch.tensor(IMAGENET_MEAN_255, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255, device=image.device).view(3, 1, 1)
    return (image.float() - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`: normalised ``[3, H, W]`` or ``[B, 3, H, W]`` -> float32 on the 0-255 scale."""
    mean = torch.tensor(IMAGENET_MEAN_255, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255, device=image.device).view(3, 1, 1)
    return image.float() * std + mean


def prepare_segmentation_input(
    image: np.ndarray, short_side: int = 448, max_long_side: int = 2048
) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> ImageNet-normalised ``float32 [3, H', W']`` at the evaluation scale.

    mmseg test pipeline: keep-ratio bilinear resize to short side ``short_side`` (long side at most
    ``max_long_side``) producing uint8 like OpenCV (rounded), then normalisation.
    """
    with warnings.catch_warnings():
        # Arrays from Pillow are read-only; they are only read here, so no copy is needed.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        chw = torch.from_numpy(image).permute(2, 0, 1)
    size = rescale_size(image.shape[0], image.shape[1], short_side, max_long_side)
    resized = chw.float() if size == tuple(image.shape[:2]) else resize_bilinear(chw, size).round_().clamp_(0, 255)
    return normalize(resized)


def is_image_path(path: Path) -> bool:
    """Whether ``path`` has an image file extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


__all__ = [
    "IMAGENET_MEAN_255", "IMAGENET_STD_255", "IMAGE_EXTENSIONS", "bilinear_taps", "denormalize", "is_image_path",
    "list_images", "normalize", "prepare_segmentation_input", "read_image", "read_label_map", "rescale_size",
    "resize_bilinear", "resize_rows",
]
