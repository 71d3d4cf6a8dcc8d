"""``groupvit demo``: segmentation emerging from text, offline, in seconds.

Generates fresh synthetic scenes (including colour-shape pairs never seen in training), segments them
with the shipped model and an open vocabulary of shape names, writes overlays and group maps, and prints
the zero-shot mIoU.
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from groupvit.commands.segment import add_precision_argument, add_refine_argument
from groupvit.errors import InputError
from groupvit.inference import BACKGROUND_RULES, RULE_CLASSES

if TYPE_CHECKING:
    from groupvit.model import GroupViT
    from groupvit.segment import Segmenter

HELP = "offline demo: segment fresh synthetic scenes with the shipped model; write overlays, print mIoU"
# Pictures are enlarged so that class names stay legible on 64-pixel scenes.
DISPLAY_SIZE = 384
# Chosen on scenes of a seed that is never reported (docs/synthetic-experiments.md, take 3): on seed 11 the
# bundled model scores 39.3 / 34.3 with mutual (2 classes), 38.2 / 30.4 with best-group, and a model shipped
# earlier 10.8 / 10.2 with the official threshold.
DEFAULT_BACKGROUND = "mutual"
# The image's best classes that the 'mutual' rule may give out, chosen on the same seed (3: 38.6 / 34.4).
# Masks snapped to the scenes' colour edges, chosen on seed 11 (docs/synthetic-experiments.md): with mutual,
# none 39.3 / 34.3, superpixel 42.2 / 35.9, pamr 46.6 / 38.8. The group maps (and the group oracle) are never refined.
DEFAULT_REFINE = "pamr"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="groupvit-demo", help="output folder (default ./groupvit-demo)")
    parser.add_argument("--num", type=int, default=100, help="scenes per split to score (default 100)")
    parser.add_argument("--show", type=int, default=6, help="scenes per split written as pictures (default 6)")
    parser.add_argument("--seed", type=int, default=None, help="scene seed (default: a fresh random one)")
    parser.add_argument("--weights", default=None, help="weights to use instead of the shipped model")
    parser.add_argument("--background", choices=("names", *BACKGROUND_RULES),
                        default=None,
                        help="how background pixels are found: 'names' prompts the background textures as extra "
                             "classes and maps them to background; 'threshold' is the official rule (a pixel whose "
                             "best class score is below --bg-thresh); 'best-group' gives the image's best shape to the "
                             "group that matches it best, the other groups are background; 'mutual' names every group "
                             "that and whose shape are each other's best match (among the image's "
                             f"{RULE_CLASSES['mutual']} best shapes), the other groups are background. "
                             f"Default: the weights' rule, else {DEFAULT_BACKGROUND}")
    parser.add_argument("--bg-thresh", type=float, default=None,
                        help="threshold of --background threshold (default: the official VOC value 0.95)")
    parser.add_argument("--shapes", choices=("standard", "extended"), default="standard",
                        help="scenes and vocabulary: standard (the six shapes of training) or extended (also diamond "
                             "and hexagon, the fine-tuning domain of docs/fine-tuning.md)")
    add_refine_argument(parser, DEFAULT_REFINE)
    add_precision_argument(parser)


def _enlarge(array: np.ndarray, size: int) -> np.ndarray:
    factor = max(1, size // array.shape[0])
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def synthetic_segmenter(
    model: GroupViT, background: str | None, bg_thresh: float | None, size: int, refine: str | None = "none",
    precision: str = "fp32", shapes: str = "standard",
) -> tuple[Segmenter, np.ndarray]:
    """Segmenter of a synthetic vocabulary for one background rule, and its label -> scene label table.

    ``shapes`` names the vocabulary (``SHAPE_SETS``: ``"standard"`` or ``"extended"``); scene labels are
    ``EXTENDED_THING_CLASSES`` ids (``THING_CLASSES`` for the standard shapes).
    ``background="threshold"``: the shapes with the official background threshold; ``"best-group"``: the
    image's best shape on its best-matching group; ``"mutual"``: every group paired with a shape by mutual best
    match (among the image's ``RULE_CLASSES['mutual']`` best); ``"names"``: the shapes and the background textures as
    classes, textures mapped to 0; ``None``: the weights' rule (:mod:`groupvit.inference`), else
    :data:`DEFAULT_BACKGROUND`. Returns ``(Segmenter, uint8 [num_labels] table)``; whole-image mode at short
    side ``size``, masks refined by ``refine`` (:mod:`groupvit.segment.refine`; ``None``: the weights'
    setting, else :data:`DEFAULT_REFINE`), the image tower at ``precision`` (:mod:`groupvit.precision`).
    """
    from groupvit.data.synthetic import ALL_SHAPES, BACKGROUNDS, SHAPE_SETS
    from groupvit.segment import Segmenter

    by_name = background == "names"
    names = SHAPE_SETS[shapes]
    vocabulary = (*names, *BACKGROUNDS) if by_name else names
    segmenter = Segmenter(model, vocabulary, background=not by_name, bg_thresh=bg_thresh, mode="whole",
                          short_side=size, window=size, stride=size, refine=refine,
                          background_rule=None if by_name else background, precision=precision,
                          defaults={"background_rule": DEFAULT_BACKGROUND, "refine": DEFAULT_REFINE})
    things = [1 + ALL_SHAPES.index(name) for name in names]
    table = things + [0] * len(BACKGROUNDS) if by_name else [0, *things]
    return segmenter, np.array(table, dtype=np.uint8)


def run(args: argparse.Namespace) -> int:
    from groupvit.data.synthetic import BACKGROUNDS, EXTENDED_THING_CLASSES, SHAPE_SETS, SceneGenerator
    from groupvit.evaluate.miou import IoUAccumulator, group_oracle_labels
    from groupvit.pretrained import BUNDLED
    from groupvit.segment import group_maps_image, overlay, voc_palette
    from groupvit.segment.visualize import colorize_groups, contact_sheet, save_png
    from groupvit.weights import load_pretrained

    if args.num < 1 or args.show < 0:
        raise InputError(f"--num must be positive and --show non-negative, got {args.num} and {args.show}")
    seed = secrets.randbelow(1 << 31) if args.seed is None else args.seed
    if seed < 0:
        raise InputError(f"--seed must be non-negative, got {seed}")
    model = load_pretrained(args.weights or BUNDLED)
    size = model.config.vision.image_size
    segmenter, to_things = synthetic_segmenter(model, args.background, args.bg_thresh, size, args.refine,
                                             args.precision, args.shapes)
    shapes = SHAPE_SETS[args.shapes]
    classes = EXTENDED_THING_CLASSES[:1 + len(shapes)]
    out = Path(args.out)
    earlier = out.is_dir() and any(out.glob("*_overlay.png"))
    out.mkdir(parents=True, exist_ok=True)
    if args.background == "names":
        rule = f"background textures named: {', '.join(BACKGROUNDS)}"
    else:
        rule = {"threshold": f"threshold {segmenter.bg_thresh:g}", "best-group": "the best shape on its best group",
                "mutual": "groups and shapes that are each other's best match"}[segmenter.background_rule]
    refined = "masks not refined" if segmenter.refine is None else f"masks refined by {segmenter.refine}"
    origins = segmenter.settings.origins
    carried = [name for key, name in (("background_rule", "rule"), ("refine", "refinement"))
               if origins[key] == "weights" and not (key == "background_rule" and args.background == "names")]
    source = f"; {' and '.join(carried)} from the weights" if carried else ""
    print(f"scenes: seed {seed} (the same scenes again: groupvit demo --seed {seed}), {size}x{size}; vocabulary: "
          f"{', '.join(shapes)} + background ({rule}; {refined}{source})")
    if earlier:
        print(f"pictures of an earlier run in {out} are replaced (--out DIR keeps them)")
    palette = voc_palette(len(classes))
    sheet: list[list[np.ndarray]] = []
    for split in ("eval-all", "eval-heldout"):
        generator = SceneGenerator(image_size=size, seed=seed, split=split, shapes=args.shapes)
        scenes = [generator.sample(i) for i in range(args.num)]
        results = segmenter([scene.image for scene in scenes])
        iou, oracle, baseline = (IoUAccumulator(len(classes)) for _ in range(3))
        groups_used = []
        for i, (scene, result) in enumerate(zip(scenes, results, strict=True)):
            labels = to_things[result.labels]
            iou.update(labels, scene.labels)
            baseline.update(np.zeros_like(scene.labels), scene.labels)
            if result.group_maps:
                oracle.update(group_oracle_labels(result.group_maps[-1], scene.labels), scene.labels)
                groups_used.append(len(np.unique(result.group_maps[-1])))
            if i >= args.show:
                continue
            stem = out / f"{split.removeprefix('eval-')}_{i:02d}"
            image = _enlarge(scene.image, DISPLAY_SIZE)
            save_png(overlay(image, _enlarge(labels, DISPLAY_SIZE), classes), f"{stem}_overlay.png")
            save_png(overlay(image, _enlarge(scene.labels, DISPLAY_SIZE), classes), f"{stem}_truth.png")
            maps = [_enlarge(m, DISPLAY_SIZE) for m in result.group_maps]
            save_png(group_maps_image(image, maps), f"{stem}_groups.png")
            sheet.append([scene.image, palette[scene.labels], palette[labels],
                          colorize_groups(result.group_maps[-1]) if result.group_maps else np.zeros_like(scene.image)])
        metrics = iou.compute()
        name = "all colour-shape pairs" if split == "eval-all" else "held-out colour-shape pairs"
        grouping = (f"  group oracle {100 * oracle.compute().miou:5.1f}  groups {np.mean(groups_used):.1f}"
                    if groups_used else "")
        print(f"{name:>28}: mIoU {100 * metrics.miou:5.1f} (every pixel background: "
              f"{100 * baseline.compute().miou:4.1f})  pixel accuracy {100 * metrics.pixel_accuracy:5.1f}"
              f"{grouping}  ({args.num} scenes)")
    if sheet:
        legend = [(name, tuple(int(c) for c in palette[i])) for i, name in enumerate(classes)]
        titles = ["scene", "truth", "prediction", "final groups"]
        save_png(contact_sheet(sheet, titles, legend), out / "contact_sheet.png")
    print(f"pictures: {out}/contact_sheet.png (all shown scenes), *_overlay.png prediction, *_truth.png ground "
          "truth, *_groups.png group maps")
    print("group oracle: the mIoU if every final group were given its best label (how well groups follow objects)")
    return 0
