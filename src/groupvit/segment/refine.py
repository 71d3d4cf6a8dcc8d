"""Mask refinement: per-pixel class scores snapped to the image's colour edges.

GroupViT's scores come from group maps on 8- or 16-pixel patches, upsampled bilinearly, so their edges are
blocky. Two post-processing methods move them onto the edges of the image itself:

* ``"pamr"``: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020). Each pixel's scores are
  replaced, a few times over, by a weighted mean of its neighbours' scores on dilated 3 x 3 rings; the
  weights are a softmax over the neighbours of minus their colour distance to the pixel, measured in units
  of the local colour spread, so scores flow along regions of one colour and not across edges.
* ``"superpixel"``: SLIC superpixels (scikit-image, an optional dependency); the scores are averaged
  inside each superpixel, which follows colour edges.

Both keep the shape and dtype of the scores; scores that are constant over the image stay unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from groupvit.errors import InputError
from groupvit.inference import REFINE_METHODS

# PAMR as published: 10 iterations over rings at these dilations, colour distances in units of 0.1 local
# standard deviations (a ring pixel one spread away from the centre gets e^-10 of the weight of a twin).
PAMR_DILATIONS = (1, 2, 4, 8, 12, 24)
PAMR_ITERATIONS = 10
PAMR_SIGMA = 0.1
# SLIC: about this many pixels per superpixel (an 8 x 8 patch at the model's resolution) and the
# scikit-image default compactness for RGB input on the 0-255 scale.
SUPERPIXEL_SIZE = 64
SUPERPIXEL_COMPACTNESS = 10.0


def check_refine(method: str | None) -> str | None:
    """``None`` for no refinement, else the validated method name (``'none'`` reads as ``None``).

    Raises:
        InputError: an unknown method, or ``'superpixel'`` without scikit-image installed.
    """
    if method is None or method == "none":
        return None
    if method not in REFINE_METHODS:
        raise InputError(f"refine must be one of {', '.join(REFINE_METHODS)}, got {method!r}")
    if method == "superpixel":
        try:
            import skimage.segmentation  # noqa: F401
        except ImportError as error:
            raise InputError(
                "refine='superpixel' needs scikit-image: pip install scikit-image (or pip install -e \".[refine]\")"
            ) from error
    return method


def _ring_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """The 8 neighbours of a dilated 3 x 3 kernel for every dilation, as ``(dy, dx)``."""
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _shifted(padded: torch.Tensor, pad: int, offset: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``padded [B, C, H + 2 pad, W + 2 pad]`` read at ``(y + dy, x + dx)`` for every pixel: ``[B, C, H, W]``."""
    dy, dx = offset
    return padded[:, :, pad + dy:pad + dy + size[0], pad + dx:pad + dx + size[1]]


def pamr_affinity(
    image: torch.Tensor, dilations: Sequence[int] = PAMR_DILATIONS, sigma: float = PAMR_SIGMA
) -> torch.Tensor:
    """Neighbour weights ``[B, K, H, W]`` of ``image [B, 3, H, W]`` (``K = 8 * len(dilations)``; sum 1 over ``K``).

    Weight of neighbour ``k`` of pixel ``p``: softmax over ``k`` of ``-mean_c |I_c(p) - I_c(k)| / (sigma * s_c(p)
    + 1e-8)``, where ``s_c(p)`` is the standard deviation of channel ``c`` over ``p``'s neighbours. Borders
    repeat the edge pixels. The scale of ``image`` does not matter.
    """
    size = (image.shape[2], image.shape[3])
    pad = max(dilations)
    padded = F.pad(image.float(), (pad, pad, pad, pad), mode="replicate")
    neighbours = torch.stack([_shifted(padded, pad, o, size) for o in _ring_offsets(dilations)], dim=2)
    spread = neighbours.std(dim=2, keepdim=True)  # [B, 3, 1, H, W]
    distance = (image.float()[:, :, None] - neighbours).abs() / (sigma * spread + 1e-8)
    return (-distance.mean(dim=1)).softmax(dim=1)


def pamr(
    image: torch.Tensor, scores: torch.Tensor, iterations: int = PAMR_ITERATIONS,
    dilations: Sequence[int] = PAMR_DILATIONS, sigma: float = PAMR_SIGMA,
) -> torch.Tensor:
    """Refined scores ``[B, C, H, W]`` (dtype of ``scores``) from ``image [B, 3, H, W]`` and ``scores [B, C, H, W]``.

    ``iterations`` times: ``scores(p) <- sum_k w_k(p) * scores(k)`` with the weights of :func:`pamr_affinity`.
    A convex combination per pixel: constant scores stay constant, score ranges never widen.
    """
    if image.shape[0] != scores.shape[0] or image.shape[2:] != scores.shape[2:]:
        raise InputError(f"image {tuple(image.shape)} and scores {tuple(scores.shape)} differ in batch or size")
    weights = pamr_affinity(image, dilations, sigma)
    size = (scores.shape[2], scores.shape[3])
    pad = max(dilations)
    offsets = _ring_offsets(dilations)
    out = scores.float()
    for _ in range(iterations):
        padded = F.pad(out, (pad, pad, pad, pad), mode="replicate")
        out = torch.zeros_like(out)
        for k, offset in enumerate(offsets):
            out.addcmul_(weights[:, k:k + 1], _shifted(padded, pad, offset, size))
    return out.to(scores.dtype)


def superpixels(
    rgb: np.ndarray, size: int = SUPERPIXEL_SIZE, compactness: float = SUPERPIXEL_COMPACTNESS
) -> np.ndarray:
    """SLIC superpixel ids ``int64 [H, W]`` (0-based, consecutive) of ``uint8 [H, W, 3]``, ~``size`` pixels each."""
    from skimage.segmentation import slic

    segments = max(1, round(rgb.shape[0] * rgb.shape[1] / size))
    labels = slic(rgb, n_segments=segments, compactness=compactness, start_label=0, channel_axis=-1)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


def superpixel_mean(scores: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """``scores [C, H, W]`` averaged inside each region of ``segments int64 [H, W]`` (ids ``0..S-1``)."""
    channels = scores.shape[0]
    flat = segments.reshape(-1).to(scores.device)
    count = int(flat.max()) + 1
    values = scores.reshape(channels, -1).float()
    sums = torch.zeros(channels, count, device=scores.device).index_add_(1, flat, values)
    sizes = torch.bincount(flat, minlength=count).clamp_(min=1)
    return (sums / sizes)[:, flat].reshape(scores.shape).to(scores.dtype)


def refine_scores(method: str | None, rgb: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Apply ``method`` (``None``, ``'superpixel'``, ``'pamr'``) to ``scores [C, H, W]`` of ``rgb [3, H, W]``, 0-255."""
    if method is None:
        return scores
    if method == "pamr":
        return pamr(rgb[None].to(scores.device), scores[None])[0]
    if method == "superpixel":
        image = rgb.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return superpixel_mean(scores, torch.from_numpy(superpixels(image)))
    raise InputError(f"refine must be one of {', '.join(REFINE_METHODS)}, got {method!r}")
