"""Dataset-level mean IoU with mmseg semantics, and the segmentation benchmark loop.

Intersection, union, predicted and ground-truth areas are summed per class over the whole dataset
(pixels labelled ``ignore_index`` excluded; values outside ``0..num_classes-1`` counted in no bin, as
``torch.histc`` does in mmseg); ``IoU_c = I_c / U_c`` and ``Acc_c = I_c / GT_c`` are NaN for a class
absent from both prediction and ground truth (resp. from the ground truth) and left out of the means.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from groupvit.data.benchmarks import SegmentationDataset
from groupvit.data.images import read_label_map
from groupvit.errors import InputError
from groupvit.segment.segmenter import Segmenter


@dataclass
class MIoUResult:
    """Metrics of a dataset. Per-class arrays are ``float64 [num_classes]`` with NaN for absent classes.

    Attributes:
        miou: nan-mean of ``iou`` (0-1).
        iou: per-class IoU.
        accuracy: per-class recall ``I / GT``.
        mean_accuracy: nan-mean of ``accuracy``.
        pixel_accuracy: correctly labelled pixels over all counted ground-truth pixels (mmseg ``aAcc``).
    """

    miou: float
    iou: np.ndarray
    accuracy: np.ndarray
    mean_accuracy: float
    pixel_accuracy: float


class IoUAccumulator:
    """Accumulates per-class areas over label maps; :meth:`compute` gives the dataset-level metrics.

    Args:
        num_classes: number of label ids ``0..num_classes-1`` (background included when labelled).
        ignore_index: ground-truth value excluded (255 in VOC, Context, COCO-Object).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise InputError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.intersection = np.zeros(num_classes, dtype=np.int64)
        self.union = np.zeros(num_classes, dtype=np.int64)
        self.pred_area = np.zeros(num_classes, dtype=np.int64)
        self.label_area = np.zeros(num_classes, dtype=np.int64)

    def _histogram(self, values: np.ndarray) -> np.ndarray:
        values = values[(values >= 0) & (values < self.num_classes)]
        return np.bincount(values, minlength=self.num_classes)[: self.num_classes]

    def update(self, pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor) -> None:
        """Add one image: integer ``pred [H, W]`` and ground truth ``label [H, W]`` of the same shape."""
        pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        label = label.cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        if pred.shape != label.shape:
            raise InputError(f"prediction {pred.shape} and label map {label.shape} differ in shape")
        keep = label != self.ignore_index
        pred, label = pred[keep].astype(np.int64), label[keep].astype(np.int64)
        intersection = self._histogram(pred[pred == label])
        pred_area, label_area = self._histogram(pred), self._histogram(label)
        self.intersection += intersection
        self.pred_area += pred_area
        self.label_area += label_area
        self.union += pred_area + label_area - intersection

    def merge_ranks(self) -> None:
        """Sum the areas of every rank into each one (exact integers; nothing to do in a single process)."""
        from groupvit.parallel import sum_counts

        areas = sum_counts(np.stack([self.intersection, self.union, self.pred_area, self.label_area]))
        self.intersection, self.union, self.pred_area, self.label_area = areas

    def compute(self) -> MIoUResult:
        """Metrics over everything added so far."""
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = self.intersection / self.union.astype(np.float64)
            accuracy = self.intersection / self.label_area.astype(np.float64)
        iou[self.union == 0] = np.nan
        accuracy[self.label_area == 0] = np.nan
        total = int(self.label_area.sum())
        return MIoUResult(
            miou=_nanmean(iou),
            iou=iou,
            accuracy=accuracy,
            mean_accuracy=_nanmean(accuracy),
            pixel_accuracy=float(self.intersection.sum() / total) if total else math.nan,
        )


def group_oracle_labels(groups: np.ndarray, label: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """The best label map a namer could make of ``groups``: each group gets its most frequent true label.

    Measures how well the groups follow objects, independently of how they are named.

    Args:
        groups: integer ``[H, W]`` group id of each pixel.
        label: ground truth ``[H, W]`` of the same shape; ``ignore_index`` pixels do not vote.

    Returns:
        int64 ``[H, W]``: per pixel, the label covering most of its group's pixels (ties: the smallest
        label; a group of ignored pixels only gets ``ignore_index``).
    """
    groups, label = np.asarray(groups), np.asarray(label)
    if groups.shape != label.shape:
        raise InputError(f"group map {groups.shape} and label map {label.shape} differ in shape")
    ids, index = np.unique(groups, return_inverse=True)
    index = index.reshape(-1)
    flat = label.reshape(-1).astype(np.int64)
    keep = flat != ignore_index
    width = int(flat[keep].max()) + 1 if keep.any() else 1
    votes = np.zeros((len(ids), width), dtype=np.int64)
    np.add.at(votes, (index[keep], flat[keep]), 1)
    best = np.where(votes.sum(1) > 0, votes.argmax(1), ignore_index)
    return best[index].reshape(label.shape)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


@dataclass
class SegmentationReport:
    """Result of :func:`evaluate_segmentation`: the metrics plus what was evaluated."""

    metrics: MIoUResult
    label_names: tuple[str, ...]
    num_images: int
    seconds: float
    oracle: MIoUResult | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict; percentages like the papers (NaN -> None)."""

        def pct(value: float) -> float | None:
            return None if math.isnan(value) else round(100 * float(value), 4)

        oracle = {} if self.oracle is None else {"group_oracle_mIoU": pct(self.oracle.miou)}
        return {
            "mIoU": pct(self.metrics.miou),
            **oracle,
            "mAcc": pct(self.metrics.mean_accuracy),
            "aAcc": pct(self.metrics.pixel_accuracy),
            "num_images": self.num_images,
            "seconds": round(self.seconds, 3),
            "per_class": {
                name: {"IoU": pct(iou), "Acc": pct(acc)}
                for name, iou, acc in zip(self.label_names, self.metrics.iou, self.metrics.accuracy, strict=True)
            },
        }

    def table(self) -> str:
        """Per-class IoU / accuracy table and the summary line, as text."""
        width = max(len("class"), *(len(n) for n in self.label_names))
        lines = [f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}"]
        for name, iou, acc in zip(self.label_names, self.metrics.iou, self.metrics.accuracy, strict=True):
            lines.append(f"{name:<{width}}  {_fmt(iou):>7}  {_fmt(acc):>7}")
        m = self.metrics
        lines.append(
            f"mIoU {_fmt(m.miou)}  mAcc {_fmt(m.mean_accuracy)}  aAcc {_fmt(m.pixel_accuracy)}  "
            f"({self.num_images} images, {self.seconds:.1f} s)"
        )
        if self.oracle is not None:
            lines.append(f"group oracle mIoU {_fmt(self.oracle.miou)} (each final group given its best label)")
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.2f}"


def evaluate_segmentation(
    segmenter: Segmenter, dataset: SegmentationDataset, limit: int | None = None, progress: bool = True,
    group_oracle: bool = False,
) -> SegmentationReport:
    """Zero-shot mIoU of ``segmenter`` (a :class:`~groupvit.segment.Segmenter` built for ``dataset``'s classes).

    Args:
        segmenter: its ``label_names`` must match the dataset's (same count and background setting).
        dataset: images and label maps.
        limit: evaluate only the first ``limit`` samples.
        progress: show a tqdm bar on stderr.
        group_oracle: also score :func:`group_oracle_labels` of the final group map (resized to the label
            map by nearest neighbour): how well the groups follow objects, independently of naming.

    Under ``torchrun`` each rank segments its slice of the samples (:mod:`groupvit.parallel`) and the areas
    are summed over ranks: every rank returns the report of the whole dataset, equal to one process's.
    """
    if segmenter.num_labels != len(dataset.label_names) or segmenter.background != dataset.background:
        raise InputError(
            f"segmenter has {segmenter.num_labels} labels (background={segmenter.background}) but the dataset has "
            f"{len(dataset.label_names)} (background={dataset.background})"
        )
    from groupvit.parallel import GlobalProgress, my_rounds, world

    samples = dataset.samples[:limit] if limit is not None else dataset.samples
    accumulator = IoUAccumulator(len(dataset.label_names), dataset.ignore_index)
    oracle = IoUAccumulator(len(dataset.label_names), dataset.ignore_index) if group_oracle else None
    start = time.perf_counter()
    bar = GlobalProgress(len(samples), f"eval {dataset.name}", disable=not progress)
    for part in my_rounds(samples, segmenter.batch_size):
        results = segmenter.iter_segment([sample.image for sample in part], groups=group_oracle)
        for sample, result in zip(part, results, strict=True):
            label = read_label_map(sample.label)
            if label.shape != result.labels.shape:
                raise InputError(
                    f"image {sample.image} is {result.labels.shape[0]}x{result.labels.shape[1]} but its label map "
                    f"{sample.label} is {label.shape[0]}x{label.shape[1]}"
                )
            accumulator.update(result.labels, label)
            if oracle is not None and result.group_maps:
                oracle.update(group_oracle_labels(resize_nearest(result.group_maps[-1], label.shape), label,
                                                  dataset.ignore_index), label)
        bar.advance(len(part))
        if world() == 1:
            bar.bar.set_postfix(mIoU=_fmt(accumulator.compute().miou))
    bar.close()
    accumulator.merge_ranks()
    if oracle is not None:
        oracle.merge_ranks()
    return SegmentationReport(accumulator.compute(), dataset.label_names, len(samples), time.perf_counter() - start,
                              oracle.compute() if oracle is not None else None)


def resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``[h, w]`` -> ``[H, W]`` by nearest neighbour (pixel centres, like PIL's NEAREST)."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * array.shape[0] / shape[0]).astype(np.int64), array.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * array.shape[1] / shape[1]).astype(np.int64), array.shape[1] - 1)
    return array[rows[:, None], cols[None, :]]
