"""Zero-shot benchmarks: segmentation mIoU (mmseg semantics) and classification accuracy."""

from groupvit.evaluate.classification import ClassificationReport, evaluate_classification
from groupvit.evaluate.miou import IoUAccumulator, MIoUResult, SegmentationReport, evaluate_segmentation

__all__ = [
    "ClassificationReport", "IoUAccumulator", "MIoUResult", "SegmentationReport", "evaluate_classification",
    "evaluate_segmentation",
]
