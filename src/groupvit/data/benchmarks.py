"""Readers for the zero-shot benchmarks: PASCAL VOC 2012, PASCAL Context, COCO-Object, any VOC-layout
folder described by a ``classes.json``, and ImageNet-style class folders.

Layouts (the official GroupViT / mmseg ones)::

    voc          VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
                 ImageSets/Segmentation/<split>.txt}                         21 labels, 255 = ignore
    context      VOCdevkit/VOC2010/{JPEGImages/<id>.jpg, SegmentationClassContext/<id>.png,
                 ImageSets/SegmentationContext/<split>.txt}                  60 labels (mmseg 59 + background)
    coco-object  coco/{images/val2017/<stem>.jpg, annotations/val2017/<stem>_instanceTrainIds.png}
                 every image of the folder, sorted                           81 labels
    voc-layout   <root>/classes.json + <root>/VOC2012/... (or the VOC folders directly in <root>)
    imagenet     <root>/<class folder>/<image>, class = folder name with '_' -> ' '

``root`` may point at the dataset folder itself or at a parent holding it (``VOCdevkit``, ``VOC2012``).

Missing files: building a dataset checks that every listed image and label exists. By default the
first missing file raises :class:`~groupvit.errors.InputError` naming it (and how many are missing);
with ``skip_missing=True`` the incomplete samples are left out and listed in ``dataset.skipped``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from groupvit.data.images import is_image_path, read_image, read_label_map
from groupvit.errors import InputError

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "table",
    "dog", "horse", "motorbike", "person", "plant", "sheep", "sofa", "train", "monitor",
)

# mmseg's 59 PASCAL Context classes with GroupViT's prompt-friendly renames (airplane, plant, monitor).
CONTEXT_CLASSES: tuple[str, ...] = (
    "background", "airplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain",
    "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "plant", "road", "rock", "sheep", "shelves", "sidewalk",
    "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "monitor", "wall", "water", "window",
    "wood",
)

COCO_OBJECT_CLASSES: tuple[str, ...] = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

# Official test_cfg background thresholds (released code; the paper text says 0.9 / 0.5).
BG_THRESH = {"voc": 0.95, "context": 0.35, "coco-object": 0.95}
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Sample:
    """One image and its label map."""

    name: str
    image: Path
    label: Path


@dataclass
class SegmentationDataset:
    """A labelled segmentation set.

    Attributes:
        name: dataset kind (``voc``, ``context``, ``coco-object``, ``voc-layout``).
        root: folder holding the images and labels.
        label_names: name of each label id (``'background'`` first when ``background``).
        background: label 0 is the background (not prompted; decided by the threshold).
        bg_thresh: the official background threshold of this dataset.
        samples: images and labels, in evaluation order.
        skipped: samples left out for a missing file (``skip_missing=True``), as ``(name, missing path)``.
        ignore_index: label value excluded from the metrics.
    """

    name: str
    root: Path
    label_names: tuple[str, ...]
    background: bool
    bg_thresh: float
    samples: list[Sample]
    skipped: list[tuple[str, Path]] = field(default_factory=list)
    ignore_index: int = IGNORE_INDEX

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names to prompt: ``label_names`` without the background."""
        return self.label_names[1:] if self.background else self.label_names

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image uint8 [H, W, 3], labels [H, W])`` of sample ``index``; sizes are checked to agree."""
        sample = self.samples[index]
        image, labels = read_image(sample.image), read_label_map(sample.label)
        if image.shape[:2] != labels.shape:
            raise InputError(
                f"image {sample.image} is {image.shape[0]}x{image.shape[1]} but its label map {sample.label} is "
                f"{labels.shape[0]}x{labels.shape[1]}"
            )
        return image, labels


def _find_folder(root: Path, marker: str, candidates: Sequence[str]) -> Path:
    """The first of ``root``, ``root/<candidate>`` that contains ``marker``."""
    if not root.is_dir():
        raise InputError(f"dataset root {root} is not a directory")
    for folder in (root, *(root / c for c in candidates)):
        if (folder / marker).is_dir():
            return folder
    tried = ", ".join(str(root / c) for c in ("", *candidates))
    raise InputError(f"no {marker}/ folder found in {tried}; point --root at the dataset folder")


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"split file {path} not found")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise InputError(f"split file {path} lists no images")
    return names


def _check_files(
    pairs: list[tuple[str, Path, Path]], skip_missing: bool
) -> tuple[list[Sample], list[tuple[str, Path]]]:
    samples, skipped = [], []
    for name, image, label in pairs:
        missing = next((p for p in (image, label) if not p.is_file()), None)
        if missing is None:
            samples.append(Sample(name, image, label))
        else:
            skipped.append((name, missing))
    if skipped and not skip_missing:
        raise InputError(
            f"missing file {skipped[0][1]} ({len(skipped)} of {len(pairs)} samples incomplete); restore it, or "
            "pass --skip-missing to evaluate the others"
        )
    if not samples:
        raise InputError("the dataset has no complete image/label pair")
    return samples, skipped


def _voc_style(
    name: str, folder: Path, label_dir: str, split_path: Path, label_names: tuple[str, ...], background: bool,
    bg_thresh: float, skip_missing: bool,
) -> SegmentationDataset:
    pairs = [(i, folder / "JPEGImages" / f"{i}.jpg", folder / label_dir / f"{i}.png") for i in _read_split(split_path)]
    samples, skipped = _check_files(pairs, skip_missing)
    return SegmentationDataset(name, folder, label_names, background, bg_thresh, samples, skipped)


def pascal_voc(root: str | os.PathLike, split: str = "val", skip_missing: bool = False) -> SegmentationDataset:
    """PASCAL VOC 2012 (21 labels incl. background, bg_thresh 0.95); ``root``: ``VOC2012`` or a parent."""
    folder = _find_folder(Path(root), "JPEGImages", ["VOC2012", "VOCdevkit/VOC2012"])
    split_path = folder / "ImageSets" / "Segmentation" / f"{split}.txt"
    return _voc_style("voc", folder, "SegmentationClass", split_path, VOC_CLASSES, True, BG_THRESH["voc"],
                      skip_missing)


def pascal_context(root: str | os.PathLike, split: str = "val", skip_missing: bool = False) -> SegmentationDataset:
    """PASCAL Context, mmseg 60-label protocol (0 = background, bg_thresh 0.35); ``root``: ``VOC2010`` or a parent."""
    folder = _find_folder(Path(root), "JPEGImages", ["VOC2010", "VOCdevkit/VOC2010"])
    split_path = folder / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    return _voc_style("context", folder, "SegmentationClassContext", split_path, CONTEXT_CLASSES, True,
                      BG_THRESH["context"], skip_missing)


def coco_object(root: str | os.PathLike, split: str = "val2017", skip_missing: bool = False) -> SegmentationDataset:
    """COCO-Object (81 labels, 0 = background incl. stuff, bg_thresh 0.95): every ``images/<split>/*.jpg``."""
    folder = _find_folder(Path(root), "images", ["coco"])
    image_dir, label_dir = folder / "images" / split, folder / "annotations" / split
    if not image_dir.is_dir():
        raise InputError(f"image folder {image_dir} not found")
    images = sorted(p for p in image_dir.iterdir() if p.suffix == ".jpg")
    if not images:
        raise InputError(f"no .jpg images in {image_dir}")
    pairs = [(p.stem, p, label_dir / f"{p.stem}_instanceTrainIds.png") for p in images]
    samples, skipped = _check_files(pairs, skip_missing)
    return SegmentationDataset("coco-object", folder, COCO_OBJECT_CLASSES, True, BG_THRESH["coco-object"], samples,
                               skipped)


def read_classes_file(path: str | os.PathLike) -> tuple[tuple[str, ...], bool, dict]:
    """Label names, background flag and the whole document of a ``classes.json``.

    Accepted forms: ``{"classes": [...], "background": bool, ...}`` or a plain list of names (background
    then means ``names[0] == 'background'``). Index in the list = label id.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"class file {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"class file {path} is not valid JSON: {err}") from None
    document = data if isinstance(data, dict) else {}
    names = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise InputError(f"class file {path} must hold a non-empty list of names (or {{'classes': [...]}})")
    background = document.get("background", names[0].strip().lower() == "background")
    if not isinstance(background, bool):
        raise InputError(f"'background' in {path} must be true or false, got {background!r}")
    if background and len(names) < 2:
        raise InputError(f"class file {path} has only the background class")
    return tuple(n.strip() for n in names), background, document


def voc_layout(
    root: str | os.PathLike, classes_file: str | os.PathLike | None = None, label_dir: str | None = None,
    split: str = "val", bg_thresh: float = 0.95, skip_missing: bool = False,
) -> SegmentationDataset:
    """Any dataset in the VOC 2012 layout whose labels are described by a ``classes.json``.

    Args:
        root: folder with ``classes.json`` and ``VOC2012/`` (or the VOC folders directly).
        classes_file: the class file (default ``<root>/classes.json``).
        label_dir: label folder inside the VOC folder (default: the class file's ``label_dir`` entry,
            else ``SegmentationClass``).
        split: list ``ImageSets/Segmentation/<split>.txt``.
        bg_thresh: background threshold (the class file's ``bg_thresh`` entry wins when present).
    """
    root = Path(root)
    names, background, document = read_classes_file(classes_file or root / "classes.json")
    folder = _find_folder(root, "JPEGImages", ["VOC2012", "VOCdevkit/VOC2012"])
    labels = label_dir or document.get("label_dir", "SegmentationClass")
    split_path = folder / "ImageSets" / "Segmentation" / f"{split}.txt"
    threshold = float(document.get("bg_thresh", bg_thresh))
    return _voc_style("voc-layout", folder, labels, split_path, names, background, threshold, skip_missing)


@dataclass
class ClassificationDataset:
    """Images in class folders: ``samples[i] = (path, class id)``, ``class_names[id]``."""

    root: Path
    class_names: tuple[str, ...]
    samples: list[tuple[Path, int]]

    def __len__(self) -> int:
        return len(self.samples)


def _read_names_file(path: Path, folders: list[str]) -> tuple[str, ...]:
    """Names for ``folders`` from a text file (one per line, folder order) or JSON (list, or {folder: name})."""
    if not path.is_file():
        raise InputError(f"class names file {path} not found")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"class names file {path} is not valid JSON: {err}") from None
        if isinstance(data, dict):
            missing = [f for f in folders if f not in data]
            if missing:
                raise InputError(f"class names file {path} has no name for folder {missing[0]!r}")
            return tuple(str(data[f]) for f in folders)
        names = [str(n) for n in data] if isinstance(data, list) else []
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != len(folders):
        raise InputError(f"class names file {path} has {len(names)} names for {len(folders)} class folders")
    return tuple(names)


def imagenet_folder(root: str | os.PathLike, names_file: str | os.PathLike | None = None) -> ClassificationDataset:
    """ImageNet-style classification set: one sub-folder per class (sorted), images inside.

    Class names are the folder names with ``_`` -> space, unless ``names_file`` gives them (text:
    one per line in sorted-folder order; JSON: a list, or ``{folder: name}``, e.g. for WordNet ids).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset root {root} is not a directory")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(f"{root} has no class sub-folders")
    names = _read_names_file(Path(names_file), folders) if names_file else tuple(f.replace("_", " ") for f in folders)
    samples = [
        (path, label)
        for label, folder in enumerate(folders)
        for path in sorted((root / folder).iterdir())
        if path.is_file() and is_image_path(path)
    ]
    if not samples:
        raise InputError(f"no images found in the class folders of {root}")
    return ClassificationDataset(root, names, samples)


SEGMENTATION_READERS = {"voc": pascal_voc, "context": pascal_context, "coco-object": coco_object,
                        "voc-layout": voc_layout}
