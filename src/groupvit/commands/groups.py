"""``groupvit groups``: grouping health of any model on any images.

Per grouping stage: groups used per image, assignment entropy against uniform, assignment margin and the
share of near-copy assignment queries; on a VOC-layout root (a ``classes.json`` and label maps, e.g. from
``groupvit synth eval``) also the patch-level group oracle and how often object groups are named right. The
last line is the verdict: ``grouping``, ``collapsed`` (the final groups are copies, or one group takes every
patch) or ``no grouping`` (a flat assignment). :mod:`groupvit.evaluate.grouping` defines the numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from groupvit.errors import InputError

if TYPE_CHECKING:
    from groupvit.evaluate.grouping import GroupingReport

HELP = "grouping health of a model on images: groups used, copies, entropy, oracle on labelled scenes; a verdict"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="image files or folders, or one VOC-layout root with classes.json (adds the oracle)")
    parser.add_argument("--synthetic", type=int, default=None, metavar="N",
                        help="instead of PATHs: N fresh synthetic eval-all scenes at the model's size (exact pixels, "
                             "labels and shape names: oracle and naming)")
    parser.add_argument("--seed", type=int, default=11, help="seed of the --synthetic scenes (default 11)")
    parser.add_argument("--weights", default="synthetic-small",
                        help="anything load_pretrained takes (default: the bundled synthetic-small)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the numbers as JSON")


def run(args: argparse.Namespace) -> int:
    from groupvit.evaluate.grouping import grouping_health, labelled_batches, synthetic_health, voc_layout_health
    from groupvit.segment.inputs import collect_inputs
    from groupvit.weights import load_pretrained

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if (args.synthetic is None) == (not args.paths):
        raise InputError("give image PATHs or --synthetic N, not both and not neither")
    if args.synthetic is not None and args.synthetic < 1:
        raise InputError(f"--synthetic must be at least 1, got {args.synthetic}")
    root = Path(args.paths[0]) if args.paths else None
    labelled = root is not None and len(args.paths) == 1 and (root / "classes.json").is_file()
    items: list[tuple[Path, Path | None]] = []
    if args.synthetic is None and not labelled:
        items = [(item.path, None) for item in collect_inputs(args.paths) if item.member is None][:args.limit]
        if not items:
            raise InputError("groups reads image files and folders; unpack shards first")
    model = load_pretrained(args.weights).eval()
    if args.synthetic is not None:
        report = synthetic_health(model, args.synthetic, args.seed, args.batch_size)
    elif labelled:
        report = voc_layout_health(model, root, args.limit, args.batch_size)
    else:
        report = grouping_health(model, labelled_batches(items, model.config.vision.image_size, args.batch_size))
    return _print(report, args)


def _print(report: GroupingReport, args: argparse.Namespace) -> int:
    for line in report.lines():
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"weights": args.weights, "images": report.images,
                                               "verdict": report.verdict, **report.metrics()}, indent=2) + "\n")
    return 0
