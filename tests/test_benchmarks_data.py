"""Benchmark readers on tiny datasets written in each layout; missing files; the evaluation loops."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import groupvit
from groupvit.data.benchmarks import (
    COCO_OBJECT_CLASSES,
    CONTEXT_CLASSES,
    VOC_CLASSES,
    coco_object,
    imagenet_folder,
    pascal_context,
    pascal_voc,
    read_classes_file,
    voc_layout,
)
from groupvit.errors import InputError
from groupvit.evaluate import evaluate_classification, evaluate_segmentation


def write_image(path, shape=(6, 8), value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*shape, 3), value, dtype=np.uint8)).save(path)


def write_label(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette([0] * 768)
    image.save(path)


def labels_for(index, shape=(6, 8)):
    labels = np.zeros(shape, dtype=np.uint8)
    labels[:, : index + 1] = index + 1
    labels[0, 0] = 255
    return labels


def make_voc(folder, ids, label_dir="SegmentationClass", split_dir="Segmentation"):
    for i, name in enumerate(ids):
        write_image(folder / "JPEGImages" / f"{name}.jpg")
        write_label(folder / label_dir / f"{name}.png", labels_for(i))
    split = folder / "ImageSets" / split_dir / "val.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("\n".join(ids) + "\n")


def test_class_lists_and_thresholds():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[11] == "table" and VOC_CLASSES[-1] == "monitor"
    assert len(CONTEXT_CLASSES) == 60 and CONTEXT_CLASSES[:2] == ("background", "airplane")
    assert CONTEXT_CLASSES[40] == "plant" and CONTEXT_CLASSES[55] == "monitor"
    assert len(COCO_OBJECT_CLASSES) == 81 and COCO_OBJECT_CLASSES[1] == "person"
    assert COCO_OBJECT_CLASSES[61] == "dining table" and COCO_OBJECT_CLASSES[-1] == "toothbrush"
    assert len(set(CONTEXT_CLASSES)) == 60 and len(set(COCO_OBJECT_CLASSES)) == 81


def test_pascal_voc_reader(tmp_path):
    make_voc(tmp_path / "VOCdevkit" / "VOC2012", ["2007_000032", "2007_000039"])
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        dataset = pascal_voc(root)
        assert [s.name for s in dataset.samples] == ["2007_000032", "2007_000039"]
    assert dataset.label_names == VOC_CLASSES and dataset.background and dataset.bg_thresh == 0.95
    assert dataset.class_names == VOC_CLASSES[1:]
    image, labels = dataset.load(1)
    assert image.shape == (6, 8, 3)
    np.testing.assert_array_equal(labels, labels_for(1))


def test_pascal_context_reader(tmp_path):
    make_voc(tmp_path / "VOCdevkit" / "VOC2010", ["2008_000002"], "SegmentationClassContext", "SegmentationContext")
    dataset = pascal_context(tmp_path)
    assert len(dataset) == 1 and dataset.bg_thresh == 0.35 and len(dataset.label_names) == 60
    assert dataset.samples[0].label.parent.name == "SegmentationClassContext"


def test_coco_object_reader_lists_every_image(tmp_path):
    root = tmp_path / "coco"
    for i, stem in enumerate(["000000000285", "000000000139"]):
        write_image(root / "images" / "val2017" / f"{stem}.jpg")
        write_label(root / "annotations" / "val2017" / f"{stem}_instanceTrainIds.png", labels_for(i))
    dataset = coco_object(tmp_path)
    assert [s.name for s in dataset.samples] == ["000000000139", "000000000285"]  # sorted
    assert dataset.label_names == COCO_OBJECT_CLASSES and dataset.bg_thresh == 0.95
    np.testing.assert_array_equal(dataset.load(1)[1], labels_for(0))


def test_missing_label_file_is_named_or_skipped(tmp_path):
    folder = tmp_path / "VOC2012"
    make_voc(folder, ["a", "b", "c"])
    (folder / "SegmentationClass" / "b.png").unlink()
    with pytest.raises(InputError, match=r"SegmentationClass/b\.png \(1 of 3 samples incomplete\).*--skip-missing"):
        pascal_voc(tmp_path)
    dataset = pascal_voc(tmp_path, skip_missing=True)
    assert [s.name for s in dataset.samples] == ["a", "c"]
    assert dataset.skipped == [("b", folder / "SegmentationClass" / "b.png")]


def test_missing_folders_and_split(tmp_path):
    with pytest.raises(InputError, match="no JPEGImages/ folder"):
        pascal_voc(tmp_path)
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(InputError, match="split file"):
        pascal_voc(tmp_path)


def test_voc_layout_with_classes_json(tmp_path):
    make_voc(tmp_path / "VOC2012", ["x", "y"])
    (tmp_path / "classes.json").write_text(json.dumps({"classes": ["background", "circle", "square"],
                                                       "background": True}))
    dataset = voc_layout(tmp_path)
    assert dataset.label_names == ("background", "circle", "square") and dataset.class_names == ("circle", "square")
    assert dataset.name == "voc-layout" and len(dataset) == 2
    # Plain list form; the label folder and threshold can come from the class file.
    make_voc(tmp_path / "VOC2012", ["x", "y"], label_dir="SegmentationClassStuff")
    (tmp_path / "stuff.json").write_text(json.dumps({"classes": ["circle", "grass"], "background": False,
                                                     "label_dir": "SegmentationClassStuff", "bg_thresh": 0.5}))
    stuff = voc_layout(tmp_path, classes_file=tmp_path / "stuff.json")
    assert not stuff.background and stuff.class_names == ("circle", "grass") and stuff.bg_thresh == 0.5
    assert stuff.samples[0].label.parent.name == "SegmentationClassStuff"
    (tmp_path / "list.json").write_text(json.dumps(["background", "a"]))
    assert read_classes_file(tmp_path / "list.json")[:2] == (("background", "a"), True)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_classes_file(tmp_path / "bad.json")
    with pytest.raises(InputError, match="non-empty list"):
        (tmp_path / "empty.json").write_text("[]")
        read_classes_file(tmp_path / "empty.json")


def test_voc_layout_reads_the_synthetic_scenes(tmp_path):
    from groupvit.data.synthetic import THING_CLASSES, write_voc_scenes

    write_voc_scenes(tmp_path, 2, image_size=64, progress=False)
    dataset = voc_layout(tmp_path)
    assert dataset.label_names == THING_CLASSES and dataset.background and len(dataset) == 2
    image, labels = dataset.load(0)
    assert image.shape == (64, 64, 3) and labels.shape == (64, 64) and labels.max() <= len(THING_CLASSES) - 1


def test_image_and_label_sizes_must_agree(tmp_path):
    folder = tmp_path / "VOC2012"
    make_voc(folder, ["a"])
    write_label(folder / "SegmentationClass" / "a.png", np.zeros((3, 3)))
    with pytest.raises(InputError, match="a.jpg is 6x8 but its label map .*a.png is 3x3"):
        pascal_voc(tmp_path).load(0)


class PerfectSegmenter:
    """Stands in for a Segmenter: returns the ground truth (with ignore pixels as background)."""

    batch_size = 2

    def __init__(self, dataset):
        self.num_labels, self.background = len(dataset.label_names), dataset.background
        self.truth = {s.image: s.label for s in dataset.samples}

    def iter_segment(self, images, groups=True):
        from groupvit.data.images import read_label_map

        for image in images:
            labels = read_label_map(self.truth[image]).copy()
            labels[labels == 255] = 0
            yield SimpleNamespace(labels=labels)


def test_evaluate_segmentation_loop(tmp_path):
    make_voc(tmp_path / "VOC2012", ["a", "b", "c"])
    dataset = pascal_voc(tmp_path)
    report = evaluate_segmentation(PerfectSegmenter(dataset), dataset, progress=False)
    assert report.num_images == 3 and report.metrics.miou == pytest.approx(1.0)
    assert np.isnan(report.metrics.iou[4:]).all()  # classes 4..20 absent: excluded from the mean
    assert evaluate_segmentation(PerfectSegmenter(dataset), dataset, limit=1, progress=False).num_images == 1
    wrong = SimpleNamespace(num_labels=3, background=True)
    with pytest.raises(InputError, match="segmenter has 3 labels"):
        evaluate_segmentation(wrong, dataset, progress=False)


def make_imagenet(root, folders):
    colours = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
    for folder, colour in folders.items():
        for i in range(2):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((40, 60, 3), colours[colour], dtype=np.uint8)).save(root / folder / f"{i}.png")


def test_imagenet_folder_names(tmp_path):
    make_imagenet(tmp_path, {"n01_red_thing": "red", "n02_blue": "blue"})
    (tmp_path / "n02_blue" / "readme.txt").write_text("not an image")
    dataset = imagenet_folder(tmp_path)
    assert dataset.class_names == ("n01 red thing", "n02 blue") and len(dataset) == 4
    assert [label for _, label in dataset.samples] == [0, 0, 1, 1]
    (tmp_path / "names.txt").write_text("red thing\nblue\n")
    assert imagenet_folder(tmp_path, tmp_path / "names.txt").class_names == ("red thing", "blue")
    (tmp_path / "names.json").write_text(json.dumps({"n02_blue": "azure", "n01_red_thing": "crimson"}))
    assert imagenet_folder(tmp_path, tmp_path / "names.json").class_names == ("crimson", "azure")
    (tmp_path / "short.txt").write_text("one\n")
    with pytest.raises(InputError, match="1 names for 2 class folders"):
        imagenet_folder(tmp_path, tmp_path / "short.txt")
    with pytest.raises(InputError, match="no class sub-folders"):
        imagenet_folder(tmp_path / "n01_red_thing")


class ColourModel(nn.Module):
    """Image embedding = mean colour of the normalised crop; text embedding = the colour named in the prompt."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.prompts = []

    def encode_image(self, images, normalize=True):
        out = images.mean(dim=(2, 3))
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, tokens, normalize=True):
        rows = []
        for row in tokens:
            text = None
            for name, vector in (("red", [1.0, -1, -1]), ("green", [-1, 1.0, -1]), ("blue", [-1, -1, 1.0])):
                for template in groupvit.get_templates("subset"):
                    if torch.equal(groupvit.tokenize([template.format(name)])[0], row):
                        text = vector
            rows.append(torch.tensor(text))
        return torch.stack(rows)


def test_zero_shot_classification(tmp_path):
    make_imagenet(tmp_path, {"red": "red", "green": "green", "blue": "blue"})
    report = evaluate_classification(ColourModel(), imagenet_folder(tmp_path), progress=False, batch_size=4)
    assert report.top1 == 1.0 and report.k == 3 and report.top5 == 1.0 and report.num_images == 6
    # Swap the names of two folders (sorted: blue, green, red): their 4 images are wrong at top-1.
    (tmp_path / "names.txt").write_text("blue\nred\ngreen\n")
    report = evaluate_classification(ColourModel(), imagenet_folder(tmp_path, tmp_path / "names.txt"),
                                     progress=False)
    assert report.top1 == pytest.approx(2 / 6) and report.top5 == 1.0
    assert report.to_dict()["top3"] == 100.0
