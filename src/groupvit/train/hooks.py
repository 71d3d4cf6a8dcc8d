"""Zero-shot evaluation hooks for the trainer: ``hook(model, step) -> {metric: value}``.

Configured as ``evaluate.hooks: [{target: "groupvit.train.hooks:segmentation", root: DIR, ...}]``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from groupvit.data.benchmarks import voc_layout
from groupvit.data.images import read_image, read_label_map
from groupvit.errors import ConfigError
from groupvit.evaluate.miou import evaluate_segmentation
from groupvit.model import GroupViT
from groupvit.segment import Segmenter
from groupvit.segment.segmenter import eval_mode

EvalHook = Callable[[GroupViT, int], dict[str, float]]


def segmentation(
    root: str, prefix: str = "seg", limit: int | None = None,
    short_side: int = 448, window: int = 448, stride: int = 224, mode: str = "slide",
    bg_thresh: float | None = None, templates: str = "simple", background_rule: str = "threshold",
    refine: str = "none",
) -> EvalHook:
    """Zero-shot mIoU on a VOC-layout scene set with ``classes.json`` (e.g. ``groupvit synth eval``).

    Every setting is the one given here (official by default), never the model's ``inference`` section, so
    that the numbers of runs with and without one compare.

    Returns ``{f"{prefix}_miou": mIoU in %, f"{prefix}_acc": pixel accuracy in %, f"{prefix}_oracle": group-oracle
    mIoU in % (each final group given its most frequent true label: grouping quality apart from naming)}``.
    Synthetic scenes trained at 64 px evaluate with ``short_side=64, mode="whole"``.
    """
    data = voc_layout(root)
    thresh = data.bg_thresh if bg_thresh is None else bg_thresh

    def hook(model: GroupViT, step: int) -> dict[str, float]:
        segmenter = Segmenter(
            model, data.class_names, background=data.background,
            bg_thresh=thresh, templates=templates, mode=mode, short_side=short_side, window=window, stride=stride,
            background_rule=background_rule, refine=refine,
        )
        with torch.inference_mode():
            report = evaluate_segmentation(segmenter, data, limit=limit, progress=False, group_oracle=True)
        metrics = report.metrics
        return {f"{prefix}_miou": 100 * metrics.miou, f"{prefix}_acc": 100 * metrics.pixel_accuracy,
                f"{prefix}_oracle": 100 * report.oracle.miou}

    return hook


def naming(root: str, prefix: str = "name", limit: int | None = None, short_side: int = 448,
           templates: str = "simple") -> EvalHook:
    """Image-level zero-shot naming on a VOC-layout scene set: does the image embedding's best class occur?

    Returns ``{f"{prefix}_top1": % of images whose best-scoring class (background excluded) is present in the
    label map, f"{prefix}_chance": % a uniformly random class would reach}``. On the synthetic scenes it tells
    whether text supervision has taught the tower shapes, long before the segmentation mIoU moves.
    """
    data = voc_layout(root)
    samples = data.samples[:limit]
    offset = 1 if data.background else 0
    present = []
    for sample in samples:
        ids = np.unique(read_label_map(sample.label)) - offset
        present.append([int(i) for i in ids if 0 <= i < len(data.class_names)])
    images = [read_image(sample.image) for sample in samples]

    def hook(model: GroupViT, step: int) -> dict[str, float]:
        segmenter = Segmenter(model, data.class_names, background=False, templates=templates, mode="whole",
                              short_side=short_side, refine="none")
        with torch.inference_mode(), eval_mode(model):
            batch = torch.stack([segmenter.prepare(image)[0] for image in images])
            embeds = model.encode_image(batch.to(segmenter.device, segmenter.dtype))
            best = (embeds.float() @ segmenter.text_embeds.t()).argmax(dim=-1).tolist()
        hits = [b in p for b, p in zip(best, present, strict=True)]
        chance = [len(p) / len(data.class_names) for p in present]
        return {f"{prefix}_top1": 100 * float(np.mean(hits)), f"{prefix}_chance": 100 * float(np.mean(chance))}

    return hook


def grouping(root: str | None = None, synthetic: int | None = None, seed: int = 11, prefix: str = "grp",
             limit: int | None = None, batch_size: int = 32) -> EvalHook:
    """Grouping health (:mod:`groupvit.evaluate.grouping`) every evaluation: the numbers of ``groupvit groups``.

    Reads a VOC-layout ``root`` with ``classes.json`` (images taken at the model's size), or ``synthetic`` fresh
    synthetic ``eval-all`` scenes of ``seed`` (exact pixels). Returns per stage ``{prefix}_s{i}_used``,
    ``_margin`` and ``_copies`` (% of near-copy query pairs), ``{prefix}_final_used``, ``{prefix}_oracle``
    (patch-level group oracle mIoU %) and ``{prefix}_named`` (% of object groups named right).
    """
    from groupvit.evaluate.grouping import synthetic_health, voc_layout_health

    if (root is None) == (synthetic is None):
        raise ConfigError("the grouping hook needs either root or synthetic (a number of scenes)")

    def hook(model: GroupViT, step: int) -> dict[str, float]:
        if synthetic is not None:
            return synthetic_health(model, synthetic, seed, batch_size).metrics(prefix)
        return voc_layout_health(model, root, limit, batch_size).metrics(prefix)

    return hook
