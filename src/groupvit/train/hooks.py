"""Zero-shot evaluation hooks for the trainer: ``hook(model, step) -> {metric: value}``.

Configured as ``evaluate.hooks: [{target: "groupvit.train.hooks:segmentation", root: DIR, ...}]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from groupvit.data.benchmarks import voc_layout
from groupvit.evaluate.miou import evaluate_segmentation
from groupvit.model import GroupViT
from groupvit.segment import Segmenter

EvalHook = Callable[[GroupViT, int], dict[str, float]]


def segmentation(
    root: str, prefix: str = "seg", limit: int | None = None,
    short_side: int = 448, window: int = 448, stride: int = 224, mode: str = "slide",
    bg_thresh: float | None = None, templates: str = "simple",
) -> EvalHook:
    """Zero-shot mIoU on a VOC-layout scene set with ``classes.json`` (e.g. ``groupvit synth eval``).

    Returns ``{f"{prefix}_miou": mIoU in %, f"{prefix}_acc": pixel accuracy in %}``. Synthetic scenes
    trained at 96 px evaluate with ``short_side=96, mode="whole"``.
    """
    data = voc_layout(root)
    thresh = data.bg_thresh if bg_thresh is None else bg_thresh

    def hook(model: GroupViT, step: int) -> dict[str, float]:
        segmenter = Segmenter(
            model, data.class_names, background=data.background,
            bg_thresh=thresh, templates=templates, mode=mode, short_side=short_side, window=window, stride=stride,
        )
        with torch.inference_mode():
            report = evaluate_segmentation(segmenter, data, limit=limit, progress=False)
        metrics = report.metrics
        return {f"{prefix}_miou": 100 * metrics.miou, f"{prefix}_acc": 100 * metrics.pixel_accuracy}

    return hook
