"""How sharp and how varied a model's groups are on synthetic scenes: a check of grouping, not of naming.

For each grouping stage: the groups used per image (distinct arg-max groups of the soft assignment), the
mean entropy of the soft assignment (``ln S`` is uniform, i.e. no grouping at all) and how alike the
assignment queries of the groups are (mean pairwise cosine, share of pairs above 0.95: near-copies);
then the group oracle (each final group given its best label, patch-level maps) over background +
shapes, and how well the object groups are named: for each final group whose pixels are mostly one shape,
whether its embedding's best shape prompt (``a photo of a {shape}.``) is that shape (chance 1 in 6).
Usage::

    python scripts/grouping_stats.py output/synthetic/latest.pt --num 64 --seed 11
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F

import groupvit
from groupvit.data.images import normalize
from groupvit.data.synthetic import THING_CLASSES, SceneGenerator
from groupvit.evaluate.miou import IoUAccumulator, group_oracle_labels
from groupvit.segment.segmenter import chain_assignments, encode_class_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights")
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    model = groupvit.load_pretrained(args.weights).eval()
    size = model.config.vision.image_size
    generator = SceneGenerator(image_size=size, seed=args.seed, split="eval-all")
    scenes = [generator.sample(i) for i in range(args.num)]
    images = torch.stack([normalize(torch.from_numpy(s.image).permute(2, 0, 1).float()) for s in scenes])
    queries: list[torch.Tensor] = []
    hooks = [stage.grouping.assign.q_proj.register_forward_hook(lambda _m, _i, out: queries.append(out))
             for stage in model.vision.stages if stage.grouping is not None]
    with torch.no_grad():
        encoding = model.encode_image_groups(images)
    for hook in hooks:
        hook.remove()
    for stage, assignment in enumerate(encoding.assignments):
        soft = assignment.soft  # [B, S, L]
        used = np.mean([len(torch.unique(row)) for row in soft.argmax(dim=1)])
        entropy = -(soft.clamp_min(1e-9).log() * soft).sum(dim=1).mean().item()
        q = F.normalize(queries[stage].float(), dim=-1)
        cosine = (q @ q.transpose(1, 2))[:, ~torch.eye(q.shape[1], dtype=torch.bool)]
        print(f"stage {stage + 1}: {soft.shape[1]} groups, {used:.2f} used per image, assignment entropy "
              f"{entropy:.3f} (uniform {math.log(soft.shape[1]):.3f}), query cosine {cosine.mean():.2f} "
              f"({100 * (cosine > 0.95).float().mean():.1f} % of pairs above 0.95)")
    if not encoding.assignments:
        return
    chain = chain_assignments([a.soft for a in encoding.assignments])[-1]  # [B, L, G]
    grid = (size // model.config.vision.patch_size,) * 2
    oracle = IoUAccumulator(len(THING_CLASSES))
    maps = chain.transpose(1, 2).reshape(len(scenes), -1, *grid)
    groups = F.interpolate(maps, size=(size, size), mode="nearest").argmax(dim=1).numpy()
    best_shape = (encoding.group_embeds.float() @ encode_class_names(model, THING_CLASSES[1:]).t()).argmax(dim=-1)
    named = []
    for scene, group_map, best in zip(scenes, groups, best_shape, strict=True):
        oracle.update(group_oracle_labels(group_map, scene.labels), scene.labels)
        for group in np.unique(group_map):
            majority = np.bincount(scene.labels[group_map == group], minlength=len(THING_CLASSES)).argmax()
            if majority > 0:
                named.append(int(best[group]) + 1 == majority)
    print(f"group oracle (patch-level final groups): mIoU {100 * oracle.compute().miou:.1f} ({args.num} scenes)")
    if named:
        print(f"object groups named right: {100 * np.mean(named):.1f} % of {len(named)} (chance 16.7 %)")
    else:
        print("object groups named right: no final group is mostly one shape")


if __name__ == "__main__":
    main()
