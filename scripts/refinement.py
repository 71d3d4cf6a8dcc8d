"""Measure mask refinement (none / superpixel / pamr) on fresh synthetic scenes with a synthetic-scenes model.

Per split (all colour-shape pairs, held-out pairs) and method: zero-shot mIoU (background + shapes, a
background rule of ``groupvit demo``, by default the demo's), region-oracle mIoU (each connected region of
the predicted label map given its most frequent true label: boundaries apart from naming), boundary F-score
within 2 pixels, and milliseconds of refinement per scene. Then the cost of each method on one 448 x 448
image with 21 score channels (a VOC vocabulary), and a picture of the first scenes under each method. Usage::

    python scripts/refinement.py --num 200 --seed 2027 [--weights W] [--background threshold] [--picture P.png]
    python scripts/refinement.py --num 100 --seed 11 --superpixel-size 32 --pamr-iterations 20   # choices
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from skimage.measure import label as connected_regions

from groupvit.commands.demo import DEFAULT_BACKGROUND, synthetic_segmenter
from groupvit.data.synthetic import THING_CLASSES, SceneGenerator
from groupvit.evaluate.boundary import BoundaryCounts
from groupvit.evaluate.miou import IoUAccumulator, group_oracle_labels
from groupvit.inference import BACKGROUND_RULES
from groupvit.pretrained import BUNDLED, DEFAULT_BG_THRESH
from groupvit.segment.refine import pamr, superpixel_mean, superpixels
from groupvit.segment.sliding import upsample_argmax
from groupvit.segment.visualize import contact_sheet, save_png, voc_palette
from groupvit.weights import load_pretrained

Refiner = Callable[[np.ndarray, torch.Tensor], torch.Tensor]


def refiners(args: argparse.Namespace) -> dict[str, Refiner]:
    """Method name -> function of (uint8 [H, W, 3] image, scores [C, H, W]) -> refined scores."""

    def chw(rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(rgb).permute(2, 0, 1).float()

    return {
        "none": lambda rgb, scores: scores,
        "superpixel": lambda rgb, scores: superpixel_mean(
            scores, torch.from_numpy(superpixels(rgb, args.superpixel_size, args.compactness))),
        "pamr": lambda rgb, scores: pamr(chw(rgb)[None], scores[None], iterations=args.pamr_iterations)[0],
    }


def score_split(model, split: str, args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], list]:
    """Metrics per method on ``args.num`` scenes of ``split``, and picture rows of the first ``args.show``."""
    segmenter, table = synthetic_segmenter(model, args.background, DEFAULT_BG_THRESH, model.config.vision.image_size)
    generator = SceneGenerator(image_size=model.config.vision.image_size, seed=args.seed, split=split)
    scenes = [generator.sample(i) for i in range(args.num)]
    results = segmenter([scene.image for scene in scenes], groups=False)
    palette = voc_palette(len(THING_CLASSES))
    metrics, rows = {}, [[scene.image, palette[scene.labels]] for scene in scenes[:args.show]]
    for name, refine in refiners(args).items():
        iou, oracle, edges = IoUAccumulator(len(THING_CLASSES)), IoUAccumulator(len(THING_CLASSES)), BoundaryCounts()
        seconds = 0.0
        for i, (scene, result) in enumerate(zip(scenes, results, strict=True)):
            start = time.perf_counter()
            refined = refine(scene.image, result.scores)
            seconds += time.perf_counter() - start
            labels = table[upsample_argmax(refined, scene.labels.shape)]
            iou.update(labels, scene.labels)
            regions = connected_regions(labels, background=-1, connectivity=1)
            oracle.update(group_oracle_labels(regions, scene.labels), scene.labels)
            edges.update(labels, scene.labels, tolerance=2)
            if i < args.show:
                rows[i].append(palette[labels])
        metrics[name] = {"mIoU": 100 * iou.compute().miou, "oracle": 100 * oracle.compute().miou,
                         "boundary_F": 100 * edges.f_score(), "ms": 1000 * seconds / len(scenes)}
    return metrics, rows


def large_image_cost(args: argparse.Namespace, repeats: int = 3) -> dict[str, float]:
    """Median milliseconds of each method on a 448 x 448 scene with smooth 21-channel scores."""
    scene = SceneGenerator(image_size=448, seed=args.seed, split="eval-all").sample(0)
    scores = F.interpolate(torch.rand(1, 21, 28, 28), size=(448, 448), mode="bilinear", align_corners=False)[0]
    cost = {}
    for name, refine in refiners(args).items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            refine(scene.image, scores)
            times.append(time.perf_counter() - start)
        cost[name] = 1000 * float(np.median(times))
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=BUNDLED, help="a synthetic-scenes model (default: the bundled one)")
    parser.add_argument("--num", type=int, default=200, help="scenes per split")
    parser.add_argument("--seed", type=int, default=2027, help="scene seed")
    parser.add_argument("--background", choices=BACKGROUND_RULES, default=DEFAULT_BACKGROUND,
                        help=f"background rule of groupvit demo (default {DEFAULT_BACKGROUND})")
    parser.add_argument("--show", type=int, default=8, help="scenes of the all-pairs split in the picture")
    parser.add_argument("--picture", default=None, help="write the side-by-side picture here (PNG)")
    parser.add_argument("--superpixel-size", type=int, default=64, help="pixels per superpixel")
    parser.add_argument("--compactness", type=float, default=10.0, help="SLIC compactness")
    parser.add_argument("--pamr-iterations", type=int, default=10, help="PAMR iterations")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_pretrained(args.weights)
    print(f"torch threads {torch.get_num_threads()}; seed {args.seed}; {args.num} scenes per split; "
          f"background rule {args.background}; "
          f"superpixel size {args.superpixel_size}, compactness {args.compactness}; "
          f"pamr iterations {args.pamr_iterations}")
    print("| method | mIoU all / held-out | region oracle all / held-out | boundary F (2 px) all / held-out "
          "| ms per 64 px scene |")
    print("|---|---|---|---|---|")
    per_split = {}
    for split in ("eval-all", "eval-heldout"):
        per_split[split], rows = score_split(model, split, args)
        if split == "eval-all" and args.picture:
            legend = [(name, tuple(int(c) for c in voc_palette(len(THING_CLASSES))[i]))
                      for i, name in enumerate(THING_CLASSES)]
            save_png(contact_sheet(rows, ["scene", "truth", *refiners(args)], legend), args.picture)
    a, h = per_split["eval-all"], per_split["eval-heldout"]
    for name in a:
        print(f"| {name} | {a[name]['mIoU']:.1f} / {h[name]['mIoU']:.1f} | {a[name]['oracle']:.1f} / "
              f"{h[name]['oracle']:.1f} | {a[name]['boundary_F']:.1f} / {h[name]['boundary_F']:.1f} | "
              f"{(a[name]['ms'] + h[name]['ms']) / 2:.1f} |")
    cost = large_image_cost(args)
    print("448 x 448, 21 channels, ms: " + ", ".join(f"{name} {ms:.0f}" for name, ms in cost.items()))


if __name__ == "__main__":
    main()
