"""``groupvit segment IMAGE... --classes "cat,dog,grass"``: zero-shot segmentation to PNG files.

For every image ``<stem>.<ext>`` it writes into ``--out`` (default: the current directory):

* ``<stem>_labels.png``: the label map as a palette PNG (0 = background, class ``i`` -> ``i + 1``;
  VOC colours), the format of PASCAL VOC ground truth;
* ``<stem>_overlay.png``: the prediction blended over the image, class names and a legend;
* ``<stem>_groups.png``: the group map of each grouping stage (unless ``--no-groups``).

When two inputs share a stem the extension is kept in the name (``x_jpg_labels.png``). A folder
argument stands for the images directly inside it (by extension); a ``.tar`` argument (brace patterns
expanded) for the images of webdataset shards, written under their keys. A run of two or more images
shows one progress bar; per-image lines and skip messages are written through it. Each file is written
atomically, the label map last.

Bulk runs: ``--skip-existing`` leaves out inputs whose outputs all exist, so a killed run restarts where
it stopped without rewriting anything, and keeps ``manifest.jsonl`` in ``--out`` (one line per input and
run: written, skipped or failed). Every run records its settings in ``segment-settings.json`` (weights,
classes and options); a later ``--skip-existing`` run with other settings is refused, since outputs made
with other classes or thresholds carry the same names. Under ``torchrun
--nproc-per-node N groupvit segment ...`` each process takes a slice of the inputs (the same slices on
every run), rank 0 shows one bar counting all of them, and the exit status is that of the whole run.

Exit status: 0 when every image was segmented; 1 when some image could not be read or processed
(each is reported on stderr and skipped, the others are written); 2 on bad arguments (missing path,
empty class list, missing or unreadable weights), with one line on stderr; 3 on a storage fault (disk full,
quota, an output folder that cannot be written: checked before the model is loaded), with one line; the
outputs written before it are whole, and ``--skip-existing`` once it is fixed finishes the job.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from groupvit.data.benchmarks import BG_THRESH, COCO_OBJECT_CLASSES, CONTEXT_CLASSES, VOC_CLASSES
from groupvit.errors import InputError, StorageError
from groupvit.export.runtime import BACKENDS, OnnxGroupViT, is_export_dir, with_backend
from groupvit.fileio import append_line, check_writable
from groupvit.text.templates import TEMPLATES

if TYPE_CHECKING:
    from groupvit.segment.segmenter import SegmentationResult, Segmenter
    from groupvit.train.distributed import DistEnv

SETTINGS_FILE = "segment-settings.json"
MANIFEST_FILE = "manifest.jsonl"
HELP = "zero-shot segmentation of images into named classes: label PNG, overlay with names, group maps"

PRESET_VOCABULARIES = {"voc": VOC_CLASSES, "context": CONTEXT_CLASSES, "coco-object": COCO_OBJECT_CLASSES}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, folders of images, or webdataset shards ('data-{000000..000009}.tar')")
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
    parser.add_argument("--skip-existing", action="store_true",
                        help="leave out inputs whose outputs all exist (restart a killed run; the settings must "
                             "match those recorded in OUT/segment-settings.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-image lines")


def typed_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The inference settings typed on the command line (``None``: not typed; :mod:`groupvit.inference` fills
    them from the weights, then the official protocol) as :class:`~groupvit.Segmenter` keywords.

    Raises:
        InputError: a size or class count below 1, or a threshold that is not a finite number, naming the flag.
    """
    for flag, value in (("--short-side", args.short_side), ("--window", args.window), ("--stride", args.stride),
                        ("--best-group-classes", args.best_group_classes)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be a positive integer, got {value}")
    if args.bg_thresh is not None and not math.isfinite(args.bg_thresh):
        raise InputError(f"--bg-thresh must be a finite number, got {args.bg_thresh}")
    return {"short_side": args.short_side, "mode": args.mode, "window": args.window, "stride": args.stride,
            "background_rule": args.background_rule, "best_group_classes": args.best_group_classes,
            "bg_thresh": args.bg_thresh, "refine": args.refine, "templates": args.templates}


def describe_settings(command: str, segmenter: Segmenter) -> str:
    """One line naming what decides the masks (mode and sizes, background rule, refinement, precision) and where
    the settings came from (typed, the weights, the official protocol)."""
    if segmenter.mode == "slide":
        size = f"slide, short side {segmenter.short_side}, window {segmenter.window} stride {segmenter.stride}"
    else:
        size = f"whole image, short side {segmenter.short_side}"
    if not segmenter.background:
        rule = "no background"
    elif segmenter.background_rule == "threshold":
        rule = f"background threshold {segmenter.bg_thresh:g}"
    else:
        rule = f"background rule {segmenter.background_rule} ({segmenter.best_group_classes} classes)"
    return (f"groupvit {command}: {size}; {rule}; refine {segmenter.refine or 'none'}; "
            f"precision {segmenter.precision} (settings {segmenter.settings.describe_origins()})")


def recorded_settings(segmenter: Segmenter) -> dict[str, Any]:
    """The resolved inference settings as ``segment-settings.json`` and ``eval --out`` record them (the background
    rule aside: see the callers)."""
    values = segmenter.settings.values
    return {"mode": segmenter.mode, "short_side": segmenter.short_side, "window": segmenter.window,
            "stride": segmenter.stride, "bg_thresh": segmenter.bg_thresh, "refine": segmenter.refine or "none",
            "templates": values["templates"]}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with ``groupvit eval``: weights, device, inference mode, background rule, templates, batch
    size."""
    from groupvit.inference import BACKGROUND_RULES, RULE_CLASSES

    parser.add_argument(
        "--weights", help="a name (gcc-yfcc, gcc-redcaps: downloaded once and cached; synthetic-small: bundled; "
        "see `groupvit weights`), our .pt, an official NVlabs .pth, a Hugging Face directory or hub id "
        "(default: gcc-yfcc)",
    )
    # Inference settings default to None: the weights' own (groupvit.inference), else the official protocol.
    parser.add_argument("--mode", choices=("slide", "whole"), default=None,
                        help="448x448 windows every 224 px (official), or the whole image at once (default: the "
                             "weights' setting, else slide)")
    parser.add_argument("--short-side", type=int, default=None,
                        help="resize the short side to this many pixels first (default: the weights' setting, else "
                             "the official 448)")
    parser.add_argument("--window", type=int, default=None,
                        help="sliding window side in pixels (default: the weights' setting, else 448)")
    parser.add_argument("--stride", type=int, default=None,
                        help="sliding window stride in pixels (default: the weights' setting, else 224)")
    parser.add_argument("--background-rule", choices=BACKGROUND_RULES, default=None,
                        help="how groups become background: threshold (official: a group whose best score is below "
                             "--bg-thresh), best-group (the image's best class goes to the group that matches it "
                             "best, the other groups are background) or mutual (a group takes a class when each is "
                             "the other's best match). Default: the weights' rule, else threshold")
    parser.add_argument("--best-group-classes", type=int, default=None,
                        help="best-group: classes given out per image; mutual: the image's best classes a group may "
                             f"take (defaults: the weights', else {RULE_CLASSES['best-group']} and "
                             f"{RULE_CLASSES['mutual']})")
    parser.add_argument("--templates", choices=sorted(TEMPLATES), default=None,
                        help="prompt templates (default: the weights' setting, else simple for segmentation; subset "
                             "for classification)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="crops (segmentation) or images (classification) per forward pass (default 4)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="run the towers in PyTorch (default) or onnxruntime (fp32, or int8: --weights a folder "
                             "from `groupvit export onnx [--int8]`; other weights are exported on the fly)")
    add_refine_argument(parser)
    add_precision_argument(parser)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision fp32|bf16|auto`` (shared with ``groupvit demo``)."""
    from groupvit.precision import PRECISIONS

    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (official; default), bf16 (the image tower under bfloat16 autocast; falls back to "
                             "fp32 with a warning where the CPU or GPU has no native bfloat16) or auto (bf16 where "
                             "native, else fp32)")


def add_refine_argument(parser: argparse.ArgumentParser, default: str = "none") -> None:
    """``--refine none|superpixel|pamr`` (shared with ``groupvit demo``); absent, the weights' setting, else
    ``default`` (named in the help only: the value stays None for :mod:`groupvit.inference`)."""
    from groupvit.inference import REFINE_METHODS

    parser.add_argument("--refine", choices=REFINE_METHODS, default=None,
                        help="snap the masks to colour edges: pamr (local colour affinities), superpixel (SLIC, "
                             f"needs scikit-image) or none (official). Default: the weights' setting, else {default}")


def load_model(
    weights: str | None, device: str | None, env: DistEnv | None = None, backend: str = "torch"
) -> torch.nn.Module | OnnxGroupViT:
    """The model of ``--weights`` (default: the official ``gcc-yfcc``) on ``backend``.

    Under torchrun (``env`` of several ranks) each rank uses its own device, and rank 0 loads first so that
    a named model is downloaded once. Raises InputError / WeightsError / ExportError.
    """
    if weights is not None and is_export_dir(weights):
        if backend == "torch":
            raise InputError(f"{weights} is an ONNX export; add --backend onnxruntime (or onnxruntime-int8)")
        return with_backend(weights, backend)
    from groupvit.pretrained import DEFAULT_OFFICIAL
    from groupvit.train.distributed import barrier
    from groupvit.weights import load_pretrained

    if backend != "torch":
        if device not in (None, "cpu"):
            raise InputError(f"--backend {backend} runs on the CPU; drop --device {device}")
        print(f"groupvit: exporting {weights or 'the weights'} to ONNX for --backend {backend} (export once with "
              "`groupvit export onnx` and pass the folder as --weights to skip this)", file=sys.stderr)
        target = torch.device("cpu")
    elif env is not None and env.world_size > 1:
        target = env.device
    else:
        try:
            target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError as err:
            raise InputError(f"invalid --device {device!r}: {err}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} asked for, but CUDA is not available here; use --device cpu")
    if env is not None and not env.is_main:
        barrier()
    model = load_pretrained(weights or DEFAULT_OFFICIAL, device=target)
    if env is not None and env.is_main:
        barrier()
    return with_backend(model, backend)


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
        listed = ", ".join(unknown[:3]) + (", …" if len(unknown) > 3 else "")
        print(f"groupvit: warning: {BUNDLED} knows only {size} px synthetic scenes of {', '.join(SHAPES)} on "
              f"{', '.join(BACKGROUNDS)}" + (f" (not {listed})" if unknown else "")
              + "; for photos use --weights gcc-yfcc", file=sys.stderr)


def _read_classes(value: str) -> list[str]:
    path = Path(value)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return value.split(",")


def output_paths(out: Path, stem: str, groups: bool) -> list[Path]:
    """The files written for one input: labels, overlay, and the group maps unless ``groups`` is False."""
    names = ["labels", "overlay", "groups"] if groups else ["labels", "overlay"]
    return [out / f"{stem}_{name}.png" for name in names]


def _write_outputs(result: SegmentationResult, image: np.ndarray, paths: list[Path]) -> list[Path]:
    """Write the files of :func:`output_paths` (group maps only when the model has grouping stages).

    The label map is written last, so an image whose ``_labels.png`` exists has all its outputs.
    """
    from groupvit.segment.visualize import group_maps_image, label_image, overlay, save_png

    background = result.label_names[0] == "background"
    save_png(overlay(image, result.labels, result.label_names, background=background), paths[1])
    written = paths[1:2]
    if len(paths) > 2 and result.group_maps:
        save_png(group_maps_image(image, result.group_maps), paths[2])
        written.append(paths[2])
    save_png(label_image(result.labels), paths[0])
    return [paths[0], *written]


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the temporary files of outputs that a killed run was writing (``atomic_path``'s ``.NAME.*.tmp``).

    Called by rank 0 before any rank writes; returns what was deleted.
    """
    patterns = [f".*_{kind}.png.*.tmp" for kind in ("labels", "overlay", "groups")] + [f".{SETTINGS_FILE}.*.tmp"]
    stale = [path for pattern in patterns for path in out.glob(pattern)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def record_settings(out: Path, settings: dict, keep_existing: bool) -> None:
    """Record the run's settings in ``out/segment-settings.json`` (every run that writes outputs does).

    With ``keep_existing`` (``--skip-existing``) settings recorded before must match: finished outputs are
    only kept when they were made with the same weights, classes and options.
    """
    from groupvit.fileio import atomic_path

    path = out / SETTINGS_FILE
    if keep_existing and path.is_file():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read {path}: {err}; remove it or run without --skip-existing") from None
        if before != settings:
            changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
            raise InputError(f"--skip-existing: {out} was written with other settings ({', '.join(changed)}); "
                             "use another --out, or run without --skip-existing to overwrite")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(settings, indent=1, sort_keys=True))


class Manifest:
    """``out/manifest.jsonl``: one JSON line per input and run (``written``, ``skipped`` or ``failed``).

    Every rank appends whole lines with one write (:func:`~groupvit.fileio.append_line`), so lines of several
    ranks never interleave. With ``path=None`` nothing is recorded.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def add(self, name: str, status: str, outputs: list[Path] | None = None, error: str | None = None) -> None:
        if self.path is None:
            return
        entry = {"input": name, "status": status}
        if outputs is not None:
            entry["outputs"] = [p.name for p in outputs]
        if error is not None:
            entry["error"] = error
        append_line(self.path, json.dumps(entry))


def run(args: argparse.Namespace) -> int:
    from groupvit.parallel import run_joined

    return run_joined(args.device, lambda env: _run(args, env))


def _run(args: argparse.Namespace, env: DistEnv) -> int:
    from groupvit.parallel import GlobalProgress, my_rounds, sum_counts
    from groupvit.pretrained import DEFAULT_OFFICIAL
    from groupvit.segment.inputs import InputReader, collect_inputs
    from groupvit.segment.segmenter import Segmenter, normalize_class_names

    if args.classes is None and args.dataset is None:
        raise InputError("give the class names with --classes 'cat,dog,grass' (or --dataset voc|context|coco-object)")
    if args.classes is not None and args.dataset is not None:
        raise InputError("give either --classes or --dataset, not both")
    if args.dataset is not None:
        names = list(PRESET_VOCABULARIES[args.dataset][1:])
        defaults = {"bg_thresh": BG_THRESH[args.dataset]}
    else:
        names = list(normalize_class_names(_read_classes(args.classes)))
        defaults = {}
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be positive, got {args.batch_size}")
    typed = typed_settings(args)
    inputs = collect_inputs(args.images)
    out = check_writable(args.out)  # a folder that cannot be written is refused before the model is loaded

    model = load_model(args.weights, args.device, env, args.backend)
    segmenter = Segmenter(model, names, background=not args.no_background, batch_size=args.batch_size,
                          backend=args.backend, precision=args.precision, defaults=defaults, **typed)
    settings = {"weights": args.weights or DEFAULT_OFFICIAL, "classes": names, "background": not args.no_background,
                **recorded_settings(segmenter), "groups": not args.no_groups, "backend": args.backend,
                "precision": args.precision}
    if segmenter.background_rule != "threshold":  # folders written before the rules existed stay resumable
        settings.update(background_rule=segmenter.background_rule, best_group_classes=segmenter.best_group_classes)
    refusal: tuple[type[Exception], str] | None = None
    if env.is_main:
        try:
            record_settings(out, settings, keep_existing=args.skip_existing)
            remove_stale_temporaries(out)
        except StorageError as err:
            refusal = (StorageError, str(err))
        except OSError as err:
            refusal = (InputError, f"cannot write to {out}: {err.strerror or err}")
        except InputError as err:
            refusal = (InputError, str(err))
    from groupvit.train.distributed import broadcast_object

    refusal = broadcast_object(refusal)  # every rank leaves with rank 0's refusal: none waits in a collective for it
    if refusal is not None:
        raise refusal[0](refusal[1])
    warn_if_out_of_domain(args.weights, names, segmenter.short_side)
    if env.is_main and not args.quiet:
        print(describe_settings("segment", segmenter), file=sys.stderr)
    groups = not args.no_groups
    manifest, reader = Manifest(out / MANIFEST_FILE if args.skip_existing else None), InputReader()
    verbose = not args.quiet
    bar = GlobalProgress(len(inputs), "segment", disable=args.quiet or len(inputs) < 2)
    counts = np.zeros(3, dtype=np.int64)  # written, skipped, failed

    def fail(name: str, err: Exception) -> None:
        counts[2] += 1
        manifest.add(name, "failed", error=str(err))
        bar.write(f"groupvit segment: skipped {name}: {err}", file=sys.stderr)

    start = time.perf_counter()
    try:
        for part in my_rounds(inputs, args.batch_size):
            chunk = []
            for item in part:
                paths = output_paths(out, item.stem, groups)
                if args.skip_existing and paths[0].is_file():
                    counts[1] += 1
                    manifest.add(item.name, "skipped", [p for p in paths if p.is_file()])
                    continue
                try:
                    chunk.append((item, paths, reader.read(item)))
                except InputError as err:
                    fail(item.name, err)
            try:
                done = list(zip(chunk, segmenter([image for _, _, image in chunk], groups=groups), strict=True))
            except InputError:
                # One image of the batch is at fault (e.g. too elongated): segment them one by one.
                done = []
                for entry in chunk:
                    try:
                        done.append((entry, segmenter(entry[2], groups=groups)))
                    except InputError as err:
                        fail(entry[0].name, err)
            for (item, paths, image), result in done:
                try:
                    written = _write_outputs(result, image, paths)
                except StorageError:
                    raise  # one line naming the folder and the space; --skip-existing later finishes the job
                except OSError as err:
                    raise InputError(f"cannot write to {out}: {err.strerror or err}") from None
                counts[0] += 1
                manifest.add(item.name, "written", written)
                if verbose:
                    bar.write(f"{item.name} -> {', '.join(str(p) for p in written)}")
            bar.advance(len(part))
    finally:
        bar.close()
        reader.close()
    seconds = time.perf_counter() - start
    written, skipped, failures = (int(c) for c in sum_counts(counts))
    if env.is_main and verbose and len(inputs) > 1:
        rate = written / seconds if seconds > 0 else float("nan")
        print(f"groupvit segment: {written} written, {skipped} skipped (already done), {failures} failed; "
              f"{rate:.2f} images/s over {env.world_size} process{'es' if env.world_size > 1 else ''}",
              file=sys.stderr)
    if failures:
        if env.is_main:
            print(f"groupvit segment: {failures} of {len(inputs)} images failed", file=sys.stderr)
        return 1
    return 0
