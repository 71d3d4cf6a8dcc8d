"""Grouping health: are a model's groups real segments, copies of each other, or no grouping at all?

For each grouping stage, over a set of images: the groups used per image (distinct arg-max groups of the
soft assignment), the mean entropy of the soft assignment against the uniform ``ln S``, the assignment
margin (how far the best group's probability stands above ``1/S``, 0 for a flat assignment and 1 for a
one-hot one), and how alike the groups' assignment queries are (mean pairwise cosine, share of pairs above
0.95: near-copies). With label maps also the patch-level group oracle (each final group of the chained
patch-level map given its most frequent label, mIoU) and, given the class names, how often an object group
(a final group whose pixels are mostly one non-background class) has that class as its best prompt.

The verdict (:func:`verdict`) reads these numbers: ``"collapsed"`` when the final groups are copies, ``"no
grouping"`` when some stage's assignment is flat, ``"collapsed"`` when one final group takes (nearly) every
patch, else ``"grouping"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from groupvit.data.images import normalize, read_image, read_label_map
from groupvit.data.synthetic import SceneGenerator
from groupvit.data.transforms import center_crop, resize_short_side
from groupvit.evaluate.miou import IoUAccumulator, group_oracle_labels
from groupvit.model import GroupViT
from groupvit.model.grouping import capture_grouping, chain_assignments

# Thresholds of the verdict (see :func:`verdict`).
FLAT_MARGIN = 0.05  # a stage whose mean assignment margin is below this does not group
COPY_COSINE = 0.95  # two assignment queries above this cosine are near-copies
COLLAPSED_COPIES = 0.5  # final stage: this share of query pairs are copies
COLLAPSED_USED = 1.5  # final groups used per image below this: one group takes (nearly) every patch


@dataclass
class StageHealth:
    """Means over images of one grouping stage with ``groups`` groups."""

    groups: int
    used: float
    entropy: float
    margin: float
    query_cosine: float
    copies: float

    @property
    def uniform(self) -> float:
        """Entropy of a flat assignment, ``ln groups``."""
        return math.log(self.groups)


@dataclass
class GroupingReport:
    """Grouping health of a model on ``images`` images; ``oracle`` (mIoU %) and ``named`` (% of ``named_count``
    object groups) are ``None`` without label maps (resp. class names)."""

    images: int
    stages: list[StageHealth]
    final_used: float
    oracle: float | None = None
    named: float | None = None
    named_count: int = 0
    verdict: str = field(default="")

    def lines(self) -> list[str]:
        """Human-readable report, one line per stage, then the oracle and naming, the verdict last."""
        out = []
        for i, s in enumerate(self.stages):
            out.append(f"stage {i + 1}: {s.groups} groups, {s.used:.2f} used per image, assignment entropy "
                       f"{s.entropy:.3f} (uniform {s.uniform:.3f}), margin {s.margin:.3f}, query cosine "
                       f"{s.query_cosine:.2f} ({100 * s.copies:.1f} % of pairs above {COPY_COSINE})")
        out.append(f"final groups per image (patch level): {self.final_used:.2f}")
        if self.oracle is not None:
            out.append(f"group oracle (patch-level final groups): mIoU {self.oracle:.1f} ({self.images} images)")
        if self.named is not None:
            out.append(f"object groups named right: {self.named:.1f} % of {self.named_count}")
        out.append(f"verdict: {self.verdict}")
        return out

    def metrics(self, prefix: str = "grp") -> dict[str, float]:
        """Flat numbers for a training log: ``{prefix}_s{i}_used``, ``_margin``, ``_copies``, oracle, naming."""
        out: dict[str, float] = {}
        for i, s in enumerate(self.stages):
            out.update({f"{prefix}_s{i + 1}_used": s.used, f"{prefix}_s{i + 1}_margin": s.margin,
                        f"{prefix}_s{i + 1}_copies": 100 * s.copies})
        out[f"{prefix}_final_used"] = self.final_used
        if self.oracle is not None:
            out[f"{prefix}_oracle"] = self.oracle
        if self.named is not None:
            out[f"{prefix}_named"] = self.named
        return out


def verdict(stages: Sequence[StageHealth], final_used: float) -> str:
    """``"no grouping (...)"``, ``"collapsed (...)"`` or ``"grouping (...)"``, with the numbers that decided."""
    if not stages:
        return "no grouping (the model has no grouping stage)"
    last = stages[-1]
    if last.copies >= COLLAPSED_COPIES:
        return f"collapsed (the final groups are copies: {100 * last.copies:.0f} % of query pairs above {COPY_COSINE})"
    for i, s in enumerate(stages):
        if s.margin < FLAT_MARGIN:
            return f"no grouping (stage {i + 1} assignment is flat: margin {s.margin:.3f} < {FLAT_MARGIN})"
    if final_used < COLLAPSED_USED:
        return f"collapsed (one final group takes nearly every patch: {final_used:.2f} used per image)"
    return f"grouping ({final_used:.2f} final groups per image)"


def grouping_health(
    model: GroupViT, batches: Iterable[tuple[torch.Tensor, list[np.ndarray] | None]],
    num_classes: int | None = None, class_embeds: torch.Tensor | None = None,
) -> GroupingReport:
    """Measure a model's grouping on ``batches`` of ``(images [B, 3, H, W] normalised, label maps or None)``.

    Args:
        model: in eval mode (the caller's choice; no Gumbel noise in eval mode).
        batches: label maps are ``[H, W]`` integer arrays at the images' size (0 = background, 255 ignored).
        num_classes: classes of the label maps, background included; needed for the oracle.
        class_embeds: ``[num_classes - 1, D]`` L2-normalised text embeddings of the non-background classes;
            adds "object groups named right".
    """
    sums: list[np.ndarray] = []
    final_used: list[float] = []
    named: list[bool] = []
    oracle = IoUAccumulator(num_classes) if num_classes else None
    images_seen = 0
    for images, labels in batches:
        with torch.no_grad(), capture_grouping(model.vision) as capture:
            encoding = model.encode_image_groups(images)
        images_seen += images.shape[0]
        for stage, (assignment, record) in enumerate(zip(encoding.assignments, capture.stages, strict=True)):
            soft = assignment.soft.float()  # [B, S, L]
            groups = soft.shape[1]
            used = torch.tensor([len(torch.unique(row)) for row in soft.argmax(dim=1)], dtype=torch.float32)
            entropy = -(soft.clamp_min(1e-9).log() * soft).sum(dim=1).mean(dim=1)  # [B]
            margin = ((soft.amax(dim=1) - 1 / groups) / (1 - 1 / groups)).mean(dim=1)  # [B]
            q = F.normalize(record.queries.float(), dim=-1)
            cosine = (q @ q.transpose(1, 2))[:, ~torch.eye(groups, dtype=torch.bool)]  # [B, S*(S-1)]
            rows = torch.stack([used, entropy, margin, cosine.mean(dim=1), (cosine > COPY_COSINE).float().mean(1)],
                               dim=1).sum(dim=0).numpy()
            if len(sums) <= stage:
                sums.append(np.zeros(5))
            sums[stage] += rows
        if not encoding.assignments:
            continue
        chain = chain_assignments([a.soft for a in encoding.assignments])[-1]  # [B, L, G]
        final = chain.argmax(dim=2)  # [B, L]
        final_used += [float(len(torch.unique(row))) for row in final]
        if labels is None or oracle is None:
            continue
        grid = encoding.grid
        maps = final.reshape(-1, 1, *grid).float()
        best = None
        if class_embeds is not None:
            best = (encoding.group_embeds.float() @ class_embeds.float().t()).argmax(dim=-1)  # [B, G]
        for b, label in enumerate(labels):
            group_map = F.interpolate(maps[b:b + 1], size=label.shape, mode="nearest")[0, 0].long().numpy()
            oracle.update(group_oracle_labels(group_map, label), label)
            if best is None:
                continue
            for group in np.unique(group_map):
                pixels = label[(group_map == group) & (label != 255)]
                if pixels.size == 0:
                    continue
                majority = np.bincount(pixels, minlength=num_classes).argmax()
                if majority > 0:
                    named.append(int(best[b, group]) + 1 == int(majority))
    return _report(model, sums, images_seen, final_used, oracle, named)


def _report(model: GroupViT, sums: list[np.ndarray], images: int, final_used: list[float],
            oracle: IoUAccumulator | None, named: list[bool]) -> GroupingReport:
    sizes = list(model.config.vision.num_output_groups)[: len(sums)]
    stages = [StageHealth(int(size), *(float(x) for x in total / max(images, 1)))
              for size, total in zip(sizes, sums, strict=True)]
    used = float(np.mean(final_used)) if final_used else 0.0
    report = GroupingReport(
        images=images, stages=stages, final_used=used,
        oracle=100 * oracle.compute().miou if oracle is not None and oracle.label_area.sum() > 0 else None,
        named=100 * float(np.mean(named)) if named else None, named_count=len(named),
    )
    report.verdict = verdict(stages, used)
    return report


def _square(image: np.ndarray, size: int, resample: int) -> np.ndarray:
    """Short side resized to ``size``, then the central ``size x size`` crop (the evaluation transform)."""
    return np.asarray(center_crop(resize_short_side(Image.fromarray(image), size, resample), size))


def labelled_batches(items: Sequence[tuple[Path, Path | None]], size: int, batch_size: int,
                     ) -> Iterator[tuple[torch.Tensor, list[np.ndarray] | None]]:
    """Batches of ``(images [B, 3, size, size] normalised, label maps [size, size] or None)`` from
    ``(image path, label path or None)`` pairs: short side to ``size`` (labels: nearest), central crop."""
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        images = [_square(read_image(path), size, Image.Resampling.BILINEAR) for path, _ in chunk]
        tensor = torch.stack([normalize(torch.from_numpy(im.copy()).permute(2, 0, 1).float()) for im in images])
        labels = None
        if all(label is not None for _, label in chunk):
            labels = [_square(read_label_map(label), size, Image.Resampling.NEAREST).astype(np.int64)
                      for _, label in chunk]
        yield tensor, labels


def synthetic_batches(num: int, seed: int, size: int, batch_size: int,
                      ) -> Iterator[tuple[torch.Tensor, list[np.ndarray]]]:
    """Batches of ``num`` fresh synthetic ``eval-all`` scenes of ``seed`` at ``size`` px: exact pixels (no file
    round trip) and label maps over ``THING_CLASSES``."""
    generator = SceneGenerator(image_size=size, seed=seed, split="eval-all")
    for start in range(0, num, batch_size):
        scenes = [generator.sample(i) for i in range(start, min(num, start + batch_size))]
        images = torch.stack([normalize(torch.from_numpy(s.image).permute(2, 0, 1).float()) for s in scenes])
        yield images, [s.labels.astype(np.int64) for s in scenes]


def synthetic_health(model: GroupViT, num: int, seed: int = 11, batch_size: int = 32) -> GroupingReport:
    """:func:`grouping_health` on ``num`` fresh synthetic ``eval-all`` scenes of ``seed``, with oracle and naming."""
    from groupvit.data.synthetic import THING_CLASSES
    from groupvit.segment.segmenter import encode_class_names

    batches = synthetic_batches(num, seed, model.config.vision.image_size, batch_size)
    return grouping_health(model, batches, len(THING_CLASSES), encode_class_names(model, THING_CLASSES[1:]))


def voc_layout_health(model: GroupViT, root: str | Path, limit: int | None = None,
                      batch_size: int = 32) -> GroupingReport:
    """:func:`grouping_health` on a VOC-layout root with ``classes.json``: oracle, and naming when it has a
    background label."""
    from groupvit.data.benchmarks import voc_layout
    from groupvit.segment.segmenter import encode_class_names

    data = voc_layout(root)
    items = [(s.image, s.label) for s in data.samples[:limit]]
    batches = labelled_batches(items, model.config.vision.image_size, batch_size)
    embeds = encode_class_names(model, data.class_names) if data.background else None
    return grouping_health(model, batches, len(data.class_names) + int(data.background), embeds)
