"""``groupvit segment`` and ``groupvit eval`` end to end with a tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import groupvit
import groupvit.cli
from groupvit.data.benchmarks import voc_layout
from groupvit.evaluate.miou import IoUAccumulator, group_oracle_labels
from groupvit.segment import Segmenter


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    groupvit.save_checkpoint(groupvit.create_model("tiny", vision__patch_size=16), path)
    return path


def write_image(path, shape=(30, 40)):
    rgb = np.random.default_rng(len(str(path))).integers(0, 256, (*shape, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_outputs_are_named_after_the_inputs(tmp_path, weights, capsys):
    write_image(tmp_path / "street.jpg")
    out = tmp_path / "out"
    status = groupvit.cli.main(["segment", str(tmp_path / "street.jpg"), "--classes", "cat,dog,grass",
                                "--weights", str(weights), "--out", str(out), "--mode", "whole"])
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["segment-settings.json", "street_groups.png", "street_labels.png",
                                                     "street_overlay.png"]  # the settings: for a later resume
    labels = Image.open(out / "street_labels.png")
    assert labels.mode == "P" and labels.size == (40, 30)
    assert np.asarray(labels).max() <= 3
    overlay = Image.open(out / "street_overlay.png")
    assert overlay.height == 30 and overlay.width > 40  # the legend is on the right
    assert str(out / "street_labels.png") in capsys.readouterr().out


def test_labels_equal_the_python_api(tmp_path, weights):
    write_image(tmp_path / "a.png", (50, 35))
    groupvit.cli.main(["segment", str(tmp_path / "a.png"), "--classes", "cat,dog", "--weights", str(weights),
                       "--out", str(tmp_path), "--no-background", "--no-groups", "--quiet"])
    expected = Segmenter(groupvit.load_pretrained(weights), ["cat", "dog"], background=False)(tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a_labels.png")), expected.labels)
    assert not (tmp_path / "a_groups.png").exists()


def test_folder_mode_skips_a_bad_file(tmp_path, weights, capsys):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "good.png")
    write_image(images / "x.jpg")
    write_image(images / "x.png")  # same stem: both keep their extension in the output names
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    (images / "notes.txt").write_text("ignored: not an image extension")
    out = tmp_path / "out"
    status = groupvit.cli.main(["segment", str(images), "--classes", "sky", "--weights", str(weights),
                                "--out", str(out), "--mode", "whole", "--batch-size", "2"])
    assert status == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.jpg" in err and "1 of 4 images failed" in err
    names = {p.name for p in out.iterdir()}
    assert {"good_labels.png", "x_jpg_labels.png", "x_png_overlay.png"} <= names
    assert not any(n.startswith("broken") for n in names)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jpg", "--classes", "cat"], "no such image file or folder"),
        (["IMAGE", "--classes", ""], "class list is empty"),
        (["IMAGE", "--classes", "cat,,dog"], "empty class name"),
        (["IMAGE", "--classes", "cat,Cat"], "given twice"),
        (["IMAGE"], "give the class names"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, weights, capsys, args, message):
    write_image(tmp_path / "a.png")
    args = [str(tmp_path / "a.png") if a == "IMAGE" else a for a in args]
    assert groupvit.cli.main(["segment", *args, "--weights", str(weights), "--out", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert line.startswith("groupvit segment: error:") and message in line


def test_missing_or_corrupt_weights_exit_2(tmp_path, capsys):
    write_image(tmp_path / "a.png")
    out = ["--out", str(tmp_path / "out")]
    assert groupvit.cli.main(["segment", str(tmp_path / "a.png"), "--classes", "cat",
                              "--weights", str(tmp_path / "none.pt"), *out]) == 2
    assert "no such file" in one_error_line(capsys)
    (tmp_path / "bad.pt").write_bytes(b"garbage" * 10)
    assert groupvit.cli.main(["segment", str(tmp_path / "a.png"), "--classes", "cat",
                              "--weights", str(tmp_path / "bad.pt"), *out]) == 2
    assert "bad.pt" in one_error_line(capsys)


def test_eval_on_synthetic_scenes(tmp_path, weights, capsys):
    from groupvit.data.synthetic import write_voc_scenes

    root = write_voc_scenes(tmp_path / "scenes", 3, image_size=64, progress=False)
    out = tmp_path / "results.json"
    status = groupvit.cli.main(["eval", "--root", str(root), "--weights", str(weights), "--out", str(out),
                                "--limit", "2", "--quiet", "--group-oracle", "--short-side", "32"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "circle" in printed
    data = json.loads(out.read_text())
    assert data["dataset"] == "voc-layout" and data["results"]["num_images"] == 2
    assert data["settings"]["bg_thresh"] == 0.95 and data["settings"]["mode"] == "slide"
    assert "group oracle mIoU" in printed
    # The same numbers through the Python API; the group maps (32 x 32) are enlarged 2x to the labels.
    dataset = voc_layout(root)
    segmenter = Segmenter(groupvit.load_pretrained(weights), dataset.class_names, short_side=32)
    accumulator, oracle = IoUAccumulator(len(dataset.label_names)), IoUAccumulator(len(dataset.label_names))
    for index in range(2):
        image, labels = dataset.load(index)
        result = segmenter(image)
        accumulator.update(result.labels, labels)
        groups = result.group_maps[-1].repeat(2, axis=0).repeat(2, axis=1)
        oracle.update(group_oracle_labels(groups, labels), labels)
    assert data["results"]["mIoU"] == pytest.approx(100 * accumulator.compute().miou, abs=1e-3)
    assert data["results"]["group_oracle_mIoU"] == pytest.approx(100 * oracle.compute().miou, abs=1e-3)


def test_eval_bad_arguments(tmp_path, weights, capsys):
    assert groupvit.cli.main(["eval", "--root", str(tmp_path), "--weights", str(weights)]) == 2
    assert "no classes.json" in one_error_line(capsys)
    assert groupvit.cli.main(["eval", "--dataset", "voc", "--root", str(tmp_path), "--weights", str(weights)]) == 2
    assert "JPEGImages" in one_error_line(capsys)
    assert groupvit.cli.main(["eval", "--root", str(tmp_path / "nope"), "--weights", str(weights)]) == 2
    assert "not a directory" in one_error_line(capsys)
