"""``groupvit synth``: write synthetic captioned scenes (see :mod:`groupvit.data.synthetic`).

``groupvit synth train OUT --num N`` writes webdataset training shards; ``groupvit synth eval OUT --num N
--split all|seen|heldout`` writes an evaluation set in the PASCAL VOC layout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from groupvit.errors import InputError

HELP = "write synthetic captioned scenes: training shards or a VOC-layout evaluation set"


def _common(parser: argparse.ArgumentParser, default_seed: int) -> None:
    parser.add_argument("out", metavar="OUT", help="output directory (created if missing)")
    parser.add_argument("--num", type=int, required=True, help="number of scenes to write")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=default_seed, help=f"base seed (default {default_seed})")
    parser.add_argument("--min-objects", type=int, default=1, help="fewest objects per scene (default 1)")
    parser.add_argument("--max-objects", type=int, default=4, help="most objects per scene (default 4)")
    parser.add_argument("--shapes", choices=("standard", "extended"), default="standard",
                        help="standard (six shapes) or extended (also diamond and hexagon, a domain to fine-tune to)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``train`` and ``eval`` targets and their options."""
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    train = targets.add_parser("train", help="webdataset tar shards of {key}.png + {key}.txt (split 'train')")
    _common(train, default_seed=0)
    train.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    train.add_argument(
        "--drop-rate", type=float, default=0.05, help="rate of objects left out of captions (default 0.05)"
    )
    train.add_argument("--workers", type=int, default=1, help="processes writing shards (default 1)")
    train.add_argument(
        "--twins", nargs="?", const="all", choices=("all", "one"), default=None,
        help="every odd scene repaints the one before with other shapes (same layout, colours, background): "
        "all of them (the default) or one named object's",
    )
    evaluation = targets.add_parser("eval", help="PASCAL VOC layout scenes with exact label maps")
    _common(evaluation, default_seed=1)
    evaluation.add_argument(
        "--split",
        choices=("all", "seen", "heldout"),
        default="all",
        help="colour-shape pairs: all, seen in training only, or a held-out one in every image (default all)",
    )


def _shard_pattern(paths: list[Path]) -> str:
    """Brace pattern naming every shard, as webdataset URLs take it: ``dir/synth-{000000..000009}.tar``."""
    if len(paths) == 1:
        return str(paths[0])
    head, first = paths[0].stem.rsplit("-", 1)
    last = paths[-1].stem.rsplit("-", 1)[1]
    return str(paths[0].with_name(f"{head}-{{{first}..{last}}}.tar"))


def run(args: argparse.Namespace) -> int:
    """Write the requested scenes and print where they went."""
    from groupvit.data.synthetic import MIN_IMAGE_SIZE, write_shards, write_voc_scenes

    if args.num < 1:
        raise InputError(f"--num must be a positive number of scenes, got {args.num}")
    if args.size < MIN_IMAGE_SIZE:
        raise InputError(f"--size must be at least {MIN_IMAGE_SIZE} pixels, got {args.size}")
    if args.seed < 0:
        raise InputError(f"--seed must be non-negative, got {args.seed}")
    if args.target == "train":
        if args.shard_size < 1:
            raise InputError(f"--shard-size must be positive, got {args.shard_size}")
        if not 0.0 <= args.drop_rate < 1.0:
            raise InputError(f"--drop-rate must be in [0, 1), got {args.drop_rate}")
        paths = write_shards(
            args.out,
            args.num,
            args.shard_size,
            seed=args.seed,
            image_size=args.size,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            caption_drop_rate=args.drop_rate,
            workers=max(1, args.workers),
            twins=args.twins is not None,
            twin_shapes=args.twins or "all",
            shapes=args.shapes,
            progress=not args.quiet,
        )
        print(f"wrote {args.num} scenes in {len(paths)} shard(s): {_shard_pattern(paths)}")
        return 0
    root = write_voc_scenes(
        args.out,
        args.num,
        seed=args.seed,
        split=f"eval-{args.split}",
        image_size=args.size,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        progress=not args.quiet,
        shapes=args.shapes,
    )
    print(
        f"wrote {args.num} {args.split} scenes to {root}: VOC2012/JPEGImages, VOC2012/SegmentationClass "
        f"(classes.json), VOC2012/SegmentationClassStuff (classes_stuff.json), captions.json, objects.json"
    )
    return 0
