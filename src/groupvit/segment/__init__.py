"""Zero-shot segmentation: the segmenter, sliding windows, and pictures of the results."""

from groupvit.segment.segmenter import (
    SegmentationResult,
    Segmenter,
    chain_assignments,
    encode_class_names,
    group_class_scores,
    pixel_class_scores,
)
from groupvit.segment.sliding import WindowMerger, coverage, upsample_argmax, window_grid
from groupvit.segment.visualize import group_maps_image, group_palette, label_image, overlay, voc_palette

__all__ = [
    "SegmentationResult", "Segmenter", "WindowMerger", "chain_assignments", "coverage", "encode_class_names",
    "group_class_scores", "group_maps_image", "group_palette", "label_image", "overlay", "pixel_class_scores",
    "upsample_argmax", "voc_palette", "window_grid",
]
