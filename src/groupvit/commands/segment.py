"""``groupvit segment IMAGE... --classes "cat,dog,grass"``: zero-shot segmentation to PNG files.

For every image ``<stem>.<ext>`` it writes into ``--out`` (default: the current directory):

* ``<stem>_labels.png``: the label map as a palette PNG (0 = background, class ``i`` -> ``i + 1``;
  VOC colours), the format of PASCAL VOC ground truth;
* ``<stem>_overlay.png``: the prediction blended over the image, class names and a legend;
* ``<stem>_groups.png``: the group map of each grouping stage (unless ``--no-groups``).

When two inputs share a stem the extension is kept in the name (``x_jpg_labels.png``). A folder
argument stands for the images directly inside it (by extension). A run of two or more images shows one
progress bar; per-image lines and skip messages are written through it.

Exit status: 0 when every image was segmented; 1 when some image could not be read or processed
(each is reported on stderr and skipped, the others are written); 2 on bad arguments (missing path,
empty class list, missing or unreadable weights), with one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from groupvit.data.benchmarks import BG_THRESH, COCO_OBJECT_CLASSES, CONTEXT_CLASSES, VOC_CLASSES
from groupvit.data.images import list_images, read_image
from groupvit.errors import InputError
from groupvit.text.templates import TEMPLATES

if TYPE_CHECKING:
    from groupvit.segment.segmenter import SegmentationResult

HELP = "zero-shot segmentation of images into named classes: label PNG, overlay with names, group maps"

PRESET_VOCABULARIES = {"voc": VOC_CLASSES, "context": CONTEXT_CLASSES, "coco-object": COCO_OBJECT_CLASSES}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images")
    parser.add_argument(
        "--classes", help="comma-separated class names ('cat,dog,grass'), or a text file with one name per line"
    )
    parser.add_argument(
        "--dataset", choices=sorted(PRESET_VOCABULARIES),
        help="use a benchmark's class names and background threshold (instead of --classes)",
    )
    add_model_arguments(parser)
    parser.add_argument("--out", default=".", help="output folder (default: current directory)")
    parser.add_argument("--no-background", action="store_true", help="no background label: every pixel gets a class")
    parser.add_argument("--bg-thresh", type=float, default=None,
                        help="background threshold (default 0.95, or the --dataset one)")
    parser.add_argument("--no-groups", action="store_true", help="do not write <stem>_groups.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-image lines")


def window_settings(args: argparse.Namespace) -> dict[str, int]:
    """The resize and sliding-window options as :class:`~groupvit.Segmenter` keywords."""
    return {"short_side": args.short_side, "window": args.window, "stride": args.stride}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``groupvit eval``: weights, device, inference mode, templates, batch size."""
    parser.add_argument(
        "--weights", help="a name (gcc-yfcc, gcc-redcaps: downloaded once and cached; synthetic-small: bundled; "
        "see `groupvit weights`), our .pt, an official NVlabs .pth, a Hugging Face directory or hub id "
        "(default: gcc-yfcc)",
    )
    parser.add_argument("--mode", choices=("slide", "whole"), default="slide",
                        help="448x448 windows every 224 px (official), or the whole image at once")
    parser.add_argument("--short-side", type=int, default=448,
                        help="resize the short side to this many pixels first (official 448; the bundled "
                        "synthetic-small model: 64 with --mode whole)")
    parser.add_argument("--window", type=int, default=448, help="sliding window side in pixels (default 448)")
    parser.add_argument("--stride", type=int, default=224, help="sliding window stride in pixels (default 224)")
    parser.add_argument("--templates", choices=sorted(TEMPLATES), default=None,
                        help="prompt templates (default: simple for segmentation, subset for classification)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="crops (segmentation) or images (classification) per forward pass (default 4)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def load_model(weights: str | None, device: str | None) -> torch.nn.Module:
    """The model of ``--weights`` (default: the official ``gcc-yfcc``); raises InputError / WeightsError."""
    from groupvit.pretrained import DEFAULT_OFFICIAL
    from groupvit.weights import load_pretrained

    try:
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise InputError(f"invalid --device {device!r}: {err}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} asked for, but CUDA is not available here; use --device cpu")
    return load_pretrained(weights or DEFAULT_OFFICIAL, device=target)


def warn_if_out_of_domain(weights: str | None, names: list[str], short_side: int) -> None:
    """One stderr line when the bundled synthetic-scenes model is asked about something it never saw."""
    from groupvit.config import get_config
    from groupvit.data.synthetic import BACKGROUNDS, SHAPES
    from groupvit.pretrained import BUNDLED, local_path

    if weights is None or (weights != BUNDLED and Path(weights).resolve() != local_path(BUNDLED).resolve()):
        return
    size = get_config("synthetic").vision.image_size
    unknown = [name for name in names if name not in (*SHAPES, *BACKGROUNDS)]
    if unknown or short_side != size:
        print(f"groupvit: warning: {BUNDLED} knows only {size} px synthetic scenes of {', '.join(SHAPES)} on "
              f"{', '.join(BACKGROUNDS)}" + (f" (not {', '.join(unknown[:3])})" if unknown else "")
              + "; for photos use --weights gcc-yfcc", file=sys.stderr)


def _read_classes(value: str) -> list[str]:
    path = Path(value)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return value.split(",")


def collect_inputs(arguments: list[str]) -> list[Path]:
    """Image paths named by the arguments (folders expanded to the images directly inside them)."""
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            images = list_images(path)
            if not images:
                raise InputError(f"folder {path} holds no image files")
            paths.extend(images)
        elif path.is_file():
            paths.append(path)
        else:
            raise InputError(f"no such image file or folder: {path}")
    return paths


def output_stems(paths: list[Path]) -> list[str]:
    """Output name stem per input: the file stem, with the extension added where stems collide."""
    stems = Counter(p.stem for p in paths)
    names = [p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.')}" for p in paths]
    repeated = [n for n, c in Counter(names).items() if c > 1]
    if repeated:
        raise InputError(f"two inputs would both be written as {repeated[0]}_*.png; segment them in separate runs")
    return names


def _write_outputs(result: SegmentationResult, image: np.ndarray, stem: str, out: Path, groups: bool) -> list[Path]:
    from groupvit.segment.visualize import group_maps_image, label_image, overlay, save_png

    written = [out / f"{stem}_labels.png", out / f"{stem}_overlay.png"]
    save_png(label_image(result.labels), written[0])
    background = result.label_names[0] == "background"
    save_png(overlay(image, result.labels, result.label_names, background=background), written[1])
    if groups and result.group_maps:
        written.append(out / f"{stem}_groups.png")
        save_png(group_maps_image(image, result.group_maps), written[2])
    return written


def run(args: argparse.Namespace) -> int:
    from groupvit.segment.segmenter import Segmenter, normalize_class_names

    if args.classes is None and args.dataset is None:
        raise InputError("give the class names with --classes 'cat,dog,grass' (or --dataset voc|context|coco-object)")
    if args.classes is not None and args.dataset is not None:
        raise InputError("give either --classes or --dataset, not both")
    if args.dataset is not None:
        names = list(PRESET_VOCABULARIES[args.dataset][1:])
        bg_thresh = BG_THRESH[args.dataset] if args.bg_thresh is None else args.bg_thresh
    else:
        names = list(normalize_class_names(_read_classes(args.classes)))
        bg_thresh = 0.95 if args.bg_thresh is None else args.bg_thresh
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be positive, got {args.batch_size}")
    paths = collect_inputs(args.images)
    stems = output_stems(paths)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {out}: {err.strerror or err}") from None

    warn_if_out_of_domain(args.weights, names, args.short_side)
    model = load_model(args.weights, args.device)
    segmenter = Segmenter(
        model, names, background=not args.no_background, bg_thresh=bg_thresh, templates=args.templates or "simple",
        mode=args.mode, batch_size=args.batch_size, **window_settings(args),
    )
    failures = 0

    def fail(path: Path, err: Exception) -> None:
        nonlocal failures
        failures += 1
        tqdm.write(f"groupvit segment: skipped {path}: {err}", file=sys.stderr)

    bar = tqdm(total=len(paths), unit="img", desc="segment", disable=args.quiet or len(paths) < 2)
    groups = not args.no_groups
    for start in range(0, len(paths), args.batch_size):
        chunk = []
        for path, stem in zip(paths[start:start + args.batch_size], stems[start:start + args.batch_size], strict=True):
            try:
                chunk.append((path, stem, read_image(path)))
            except InputError as err:
                fail(path, err)
                bar.update(1)
        try:
            done = list(zip(chunk, segmenter([image for _, _, image in chunk], groups=groups), strict=True))
        except InputError:
            # One image of the batch is at fault (e.g. too elongated): segment them one by one.
            done = []
            for item in chunk:
                try:
                    done.append((item, segmenter(item[2], groups=groups)))
                except InputError as err:
                    fail(item[0], err)
                    bar.update(1)
        for (path, stem, image), result in done:
            try:
                written = _write_outputs(result, image, stem, out, groups)
            except OSError as err:
                raise InputError(f"cannot write to {out}: {err.strerror or err}") from None
            if not args.quiet:
                tqdm.write(f"{path} -> {', '.join(str(p) for p in written)}")
            bar.update(1)
    bar.close()
    if failures:
        print(f"groupvit segment: {failures} of {len(paths)} images failed", file=sys.stderr)
        return 1
    return 0
