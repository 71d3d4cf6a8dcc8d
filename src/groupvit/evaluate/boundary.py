"""Boundary F-score: do the edges of a label map fall where the true edges are?

A pixel is a boundary pixel when one of its 4 neighbours has another label. A predicted boundary pixel is
correct when a true boundary pixel lies within ``tolerance`` pixels (Chebyshev distance), and a true one is
found when a predicted one lies that close; the F-score is the harmonic mean of the two rates. Counts are
summed over a dataset before the rates are taken, like the confusion counts of mIoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from groupvit.errors import InputError


def label_boundaries(labels: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """``bool [H, W]``: pixels with a 4-neighbour of another label (never an ``ignore_index`` pixel)."""
    edges = np.zeros(labels.shape, dtype=bool)
    across = labels[:, 1:] != labels[:, :-1]
    edges[:, 1:] |= across
    edges[:, :-1] |= across
    down = labels[1:, :] != labels[:-1, :]
    edges[1:, :] |= down
    edges[:-1, :] |= down
    if ignore_index is not None:
        edges &= labels != ignore_index
    return edges


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``bool [H, W]``: pixels within Chebyshev distance ``radius`` of a true pixel of ``mask``."""
    if radius < 0:
        raise InputError(f"the boundary tolerance must be non-negative, got {radius}")
    padded = np.pad(mask, radius)
    height, width = mask.shape
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy:dy + height, dx:dx + width]
    return out


@dataclass
class BoundaryCounts:
    """Boundary pixels matched and in total, for the prediction and the truth; summed over images."""

    predicted_matched: int = 0
    predicted: int = 0
    true_matched: int = 0
    true: int = 0

    def update(self, prediction: np.ndarray, truth: np.ndarray, tolerance: int = 2,
               ignore_index: int | None = 255) -> None:
        """Add one image: label maps ``[H, W]`` of the same shape; pixels where ``truth`` is ``ignore_index`` skip."""
        if prediction.shape != truth.shape:
            raise InputError(f"prediction {prediction.shape} and truth {truth.shape} differ in size")
        valid = truth != ignore_index if ignore_index is not None else np.ones(truth.shape, dtype=bool)
        predicted = label_boundaries(prediction) & valid
        true = label_boundaries(truth, ignore_index)
        self.predicted_matched += int((predicted & dilate(true, tolerance)).sum())
        self.predicted += int(predicted.sum())
        self.true_matched += int((true & dilate(predicted, tolerance)).sum())
        self.true += int(true.sum())

    def f_score(self) -> float:
        """Harmonic mean of precision and recall; 1 when neither map has an edge, 0 when only one has."""
        if self.predicted == 0 and self.true == 0:
            return 1.0
        if self.predicted == 0 or self.true == 0:
            return 0.0
        precision = self.predicted_matched / self.predicted
        recall = self.true_matched / self.true
        return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
