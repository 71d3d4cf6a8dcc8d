"""Sliding-window inference helpers with mmseg ``slide_inference`` semantics.

An image of ``H x W`` (after the short-side resize) is covered by ``window x window`` crops placed
every ``stride`` pixels; the last crop of a row or column is moved back so it ends at the border
(and a crop larger than the image is cut to it). Each pixel's scores are the mean over the crops
covering it. Labels are the per-pixel argmax after a bilinear resize to the original image size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from groupvit.data.images import resize_rows
from groupvit.errors import InputError

# A crop as (y1, y2, x1, x2): rows y1..y2-1, columns x1..x2-1.
Window = tuple[int, int, int, int]


def grid_size(length: int, window: int, stride: int) -> int:
    """Crop positions along an axis of ``length`` pixels: ``max(length - window + stride - 1, 0) // stride + 1``."""
    return max(length - window + stride - 1, 0) // stride + 1


def window_grid(height: int, width: int, window: int = 448, stride: int = 224) -> list[Window]:
    """Crops covering an ``height x width`` image, row-major, as ``(y1, y2, x1, x2)``.

    Example: ``448 x 700`` with window 448, stride 224 gives 1 x 3 crops with columns
    ``[0, 448)``, ``[224, 672)`` and ``[252, 700)`` (the last one clamped to the right border).
    """
    if window < 1 or stride < 1:
        raise InputError(f"window and stride must be positive, got window={window}, stride={stride}")
    if stride > window:
        raise InputError(f"stride {stride} is larger than the window {window}: pixels between crops would be missed")
    windows = []
    for row in range(grid_size(height, window, stride)):
        y2 = min(row * stride + window, height)
        y1 = max(y2 - window, 0)
        for col in range(grid_size(width, window, stride)):
            x2 = min(col * stride + window, width)
            x1 = max(x2 - window, 0)
            windows.append((y1, y2, x1, x2))
    return windows


def coverage(height: int, width: int, windows: list[Window]) -> torch.Tensor:
    """``int64 [H, W]``: how many of ``windows`` cover each pixel."""
    count = torch.zeros(height, width, dtype=torch.int64)
    for y1, y2, x1, x2 in windows:
        count[y1:y2, x1:x2] += 1
    return count


class WindowMerger:
    """Accumulates the scores ``[C, h, w]`` of the crops of one image: summed into place, divided by the coverage.

    A single crop covering the whole image is kept as it is (no accumulation buffers, no copies).
    """

    def __init__(self, channels: int, height: int, width: int, device: torch.device) -> None:
        self.size = (height, width)
        self.channels, self.device = channels, device
        self.whole: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def add(self, window: Window, scores: torch.Tensor) -> None:
        """Add the ``scores [C, y2 - y1, x2 - x1]`` of the crop ``window = (y1, y2, x1, x2)``."""
        y1, y2, x1, x2 = window
        if self.whole is None and self.scores is None and window == (0, self.size[0], 0, self.size[1]):
            self.whole = scores
            return
        if self.scores is None or self.count is None:
            self.scores = torch.zeros(self.channels, *self.size, device=self.device)
            self.count = torch.zeros(*self.size, device=self.device)
            if self.whole is not None:
                self.scores += self.whole
                self.count += 1
                self.whole = None
        self.scores[:, y1:y2, x1:x2] += scores
        self.count[y1:y2, x1:x2] += 1

    def mean_scores(self) -> torch.Tensor:
        """``[C, H, W]``: summed scores over the covering count."""
        if self.whole is not None:
            return self.whole
        if self.scores is None or self.count is None or bool((self.count == 0).any()):
            raise InputError("some pixels are covered by no crop; check the window and stride")
        return self.scores / self.count


def upsample_argmax(scores: torch.Tensor, size: tuple[int, int], max_elements: int = 1 << 25) -> np.ndarray:
    """Label map ``[H, W]`` = argmax over classes of ``scores [C, h, w]`` bilinearly resized to ``size``.

    ``align_corners=False`` (mmseg). Outputs of more than ``max_elements`` values are resized in row
    strips, so a 10000 x 10000 label map never holds all ``C`` score planes at once. dtype uint8 when
    ``C <= 256``, else int32. Ties go to the lower class id.
    """
    channels = scores.shape[0]
    height, width = size
    dtype = np.uint8 if channels <= 256 else np.int32
    if channels * height * width <= max_elements:
        if (height, width) != tuple(scores.shape[1:]):
            scores = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
        # max(dim).indices: first maximum, like argmax, and several times faster over the leading dim.
        return scores.max(dim=0).indices.cpu().numpy().astype(dtype)
    labels = np.empty((height, width), dtype=dtype)
    rows = max(1, max_elements // max(1, channels * width))
    for start, strip in resize_rows(scores, size, chunk_rows=rows):
        labels[start:start + strip.shape[1]] = strip.max(dim=0).indices.cpu().numpy()
    return labels
