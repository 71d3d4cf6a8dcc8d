"""``groupvit eval --dataset NAME --root DIR``: zero-shot benchmark numbers.

Segmentation (``voc``, ``context``, ``coco-object``, ``voc-layout``): dataset-level mIoU with the
official protocol (short side 448, 448/224 sliding windows, per-dataset background threshold,
``simple`` template). ``voc-layout`` reads the class names from ``<root>/classes.json`` and is chosen
automatically when that file exists and ``--dataset`` is not given. Classification
(``imagenet-folder``): top-1/top-5 with the 7 ``subset`` templates, resize 256 + centre crop 224.

Prints a per-class table and a summary; ``--out`` writes everything as JSON (atomically).
Missing image or label files stop the run with the first one named, unless ``--skip-missing``
(then they are counted in the JSON under ``skipped``).

Under ``torchrun --nproc-per-node N groupvit eval ...`` each process evaluates a slice of the images and
the counts are summed, so the numbers equal those of one process; rank 0 prints and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from groupvit.commands.segment import (
    add_model_arguments,
    describe_settings,
    load_model,
    recorded_settings,
    typed_settings,
    warn_if_out_of_domain,
)
from groupvit.errors import InputError, StorageError
from groupvit.fileio import check_writable
from groupvit.pretrained import DEFAULT_OFFICIAL

if TYPE_CHECKING:
    from groupvit.train.distributed import DistEnv

HELP = "zero-shot evaluation: segmentation mIoU (VOC, Context, COCO-Object, VOC layout) or classification accuracy"

DATASETS = ("voc", "context", "coco-object", "voc-layout", "imagenet-folder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, default=None,
                        help="benchmark (default: voc-layout when ROOT/classes.json exists)")
    parser.add_argument("--root", required=True, help="dataset folder")
    add_model_arguments(parser)
    parser.add_argument("--out", default=None, help="write the results to this JSON file")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--bg-thresh", type=float, default=None,
                        help="background threshold (default: the dataset's, 0.95 VOC / 0.35 Context / 0.95 COCO)")
    parser.add_argument("--split", default=None, help="split list to read (default val; val2017 for coco-object)")
    parser.add_argument("--classes-file", default=None, help="voc-layout: class file (default ROOT/classes.json)")
    parser.add_argument("--label-dir", default=None,
                        help="voc-layout: label folder in the VOC folder (default from the class file, else "
                             "SegmentationClass)")
    parser.add_argument("--names-file", default=None,
                        help="imagenet-folder: class names (text, one per line in folder order; or JSON)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="leave out samples whose image or label file is missing instead of stopping")
    parser.add_argument("--group-oracle", action="store_true",
                        help="segmentation: also report the group-oracle mIoU (each final group given its best "
                             "label: how well the groups follow objects, independently of naming)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _segmentation_dataset(args: argparse.Namespace, name: str):
    from groupvit.data import benchmarks

    split = {} if args.split is None else {"split": args.split}
    if name == "voc-layout":
        return benchmarks.voc_layout(args.root, args.classes_file, args.label_dir, skip_missing=args.skip_missing,
                                     **split)
    return benchmarks.SEGMENTATION_READERS[name](args.root, skip_missing=args.skip_missing, **split)


def run(args: argparse.Namespace) -> int:
    from groupvit.parallel import run_joined

    return run_joined(args.device, lambda env: _run(args, env))


def _run(args: argparse.Namespace, env: DistEnv) -> int:
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be positive, got {args.limit}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be positive, got {args.batch_size}")
    if args.out:  # a folder the results cannot be written to is found before the evaluation, not after it
        check_writable(Path(args.out).resolve().parent)
    root = Path(args.root)
    if not root.is_dir():
        raise InputError(f"dataset root {root} is not a directory")
    name = args.dataset
    if name is None:
        if not (root / "classes.json").is_file() and args.classes_file is None:
            raise InputError(f"{root} has no classes.json; say which benchmark it is with --dataset "
                             f"{{{','.join(DATASETS)}}}")
        name = "voc-layout"
    progress = not args.quiet
    skipped: list[tuple[str, Path]] = []
    if name == "imagenet-folder":
        from groupvit.data.benchmarks import imagenet_folder
        from groupvit.evaluate.classification import evaluate_classification

        dataset = imagenet_folder(root, args.names_file)
        model = load_model(args.weights, args.device, env, args.backend)
        settings = {"templates": args.templates or "subset", "resize": 256, "crop": 224, "backend": args.backend}
        report = evaluate_classification(model, dataset, templates=settings["templates"],
                                         batch_size=args.batch_size, limit=args.limit, progress=progress)
    else:
        from groupvit.evaluate.miou import evaluate_segmentation
        from groupvit.segment.segmenter import Segmenter

        dataset = _segmentation_dataset(args, name)
        skipped = dataset.skipped
        if skipped:
            print(f"groupvit eval: skipping {len(skipped)} samples with missing files (first: {skipped[0][1]})",
                  file=sys.stderr)
        typed = typed_settings(args)
        model = load_model(args.weights, args.device, env, args.backend)
        segmenter = Segmenter(model, dataset.class_names, background=dataset.background, batch_size=args.batch_size,
                              backend=args.backend, precision=args.precision,
                              defaults={"bg_thresh": dataset.bg_thresh}, **typed)
        warn_if_out_of_domain(args.weights, list(dataset.class_names), segmenter.short_side)
        if env.is_main:
            print(describe_settings("eval", segmenter), file=sys.stderr)
        settings = {
            **recorded_settings(segmenter), "background": segmenter.background,
            "background_rule": segmenter.background_rule, "best_group_classes": segmenter.best_group_classes,
            "top_k": segmenter.top_k, "backend": args.backend, "precision": segmenter.precision,
            "origins": segmenter.settings.origins,
        }
        report = evaluate_segmentation(segmenter, dataset, limit=args.limit, progress=progress,
                                       group_oracle=args.group_oracle)
    if not env.is_main:
        return 0
    print(report.table())
    if args.out:
        from groupvit.fileio import atomic_path

        payload = {
            "dataset": name, "root": str(root), "weights": args.weights or DEFAULT_OFFICIAL, "settings": settings,
            "results": report.to_dict(), "skipped": [{"sample": s, "missing": str(p)} for s, p in skipped],
        }
        try:
            with atomic_path(args.out) as tmp:
                tmp.write_text(json.dumps(payload, indent=1))
        except StorageError:
            raise
        except OSError as err:
            raise InputError(f"cannot write {args.out}: {err.strerror or err}") from None
        print(f"wrote {args.out}")
    return 0
