"""Zero-shot image classification accuracy (official ``validate_cls``, reference §5.1).

Class embeddings: the 7 ``subset`` templates per class, un-normalised projected text features
averaged then L2-normalised. Images: resize 256 (short side, bilinear) + centre crop 224, ImageNet
normalisation, L2-normalised image embedding; logits = ``image @ classesᵀ`` (the temperature does
not change the ranking). Every image is evaluated once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from groupvit.data.benchmarks import ClassificationDataset
from groupvit.data.images import read_image
from groupvit.data.transforms import EvalTransform
from groupvit.segment.segmenter import encode_class_names, eval_mode, model_device_dtype


@dataclass
class ClassificationReport:
    """Top-1 / top-k accuracy (0-1) over ``num_images``; ``k = min(5, num_classes)``."""

    top1: float
    top5: float
    k: int
    num_images: int
    num_classes: int
    seconds: float

    def to_dict(self) -> dict:
        """JSON-ready dict with percentages."""
        return {
            "top1": round(100 * self.top1, 4), f"top{self.k}": round(100 * self.top5, 4),
            "num_images": self.num_images, "num_classes": self.num_classes, "seconds": round(self.seconds, 3),
        }

    def table(self) -> str:
        """One summary line."""
        return (f"top-1 {100 * self.top1:.2f}  top-{self.k} {100 * self.top5:.2f}  "
                f"({self.num_images} images, {self.num_classes} classes, {self.seconds:.1f} s)")


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> int:
    """Number of rows of ``logits [B, N]`` whose ``targets [B]`` is among the ``k`` highest."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return int((top == targets[:, None]).any(dim=1).sum())


def evaluate_classification(
    model: nn.Module,
    dataset: ClassificationDataset,
    templates: str | Sequence[str] = "subset",
    batch_size: int = 32,
    limit: int | None = None,
    progress: bool = True,
) -> ClassificationReport:
    """Zero-shot top-1 / top-5 accuracy of ``model`` on ``dataset``.

    Args:
        model: a GroupViT (``encode_image``, ``encode_text``), run in eval mode.
        dataset: class-folder images.
        templates: prompt templates for the class embeddings (official ``'subset'``).
        batch_size: images per forward.
        limit: evaluate only the first ``limit`` images (folder order: classes sorted).
        progress: show a tqdm bar on stderr.

    Under ``torchrun`` each rank classifies its slice of the images and the counts are summed over ranks.
    """
    start = time.perf_counter()
    device, dtype = model_device_dtype(model)
    classes = encode_class_names(model, dataset.class_names, templates)
    samples = dataset.samples[:limit] if limit is not None else dataset.samples
    k = min(5, len(dataset.class_names))
    transform = EvalTransform(image_size=224)
    from groupvit.parallel import GlobalProgress, my_rounds, sum_counts

    correct = np.zeros(2, dtype=np.int64)  # top-1, top-k
    bar = GlobalProgress(len(samples), "eval classification", disable=not progress)
    with torch.inference_mode(), eval_mode(model):
        for batch in my_rounds(samples, batch_size):
            if batch:
                images = torch.stack([transform(Image.fromarray(read_image(path))) for path, _ in batch])
                targets = torch.tensor([label for _, label in batch], device=device)
                logits = model.encode_image(images.to(device, dtype), normalize=True).float() @ classes.t()
                correct += [topk_correct(logits, targets, 1), topk_correct(logits, targets, k)]
            bar.advance(len(batch))
    bar.close()
    correct1, correct5 = (int(c) for c in sum_counts(correct))
    count = len(samples)
    return ClassificationReport(
        top1=correct1 / count if count else math.nan, top5=correct5 / count if count else math.nan, k=k,
        num_images=count, num_classes=len(dataset.class_names), seconds=time.perf_counter() - start,
    )
