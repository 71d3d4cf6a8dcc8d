"""``--background-rule`` on ``segment`` and ``eval``: the demo's rules, with the same names as the Segmenter."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import groupvit
from groupvit.cli import main as cli_main
from groupvit.commands.demo import synthetic_segmenter
from groupvit.data.synthetic import THING_CLASSES, SceneGenerator
from groupvit.evaluate.miou import IoUAccumulator
from groupvit.inference import RULE_CLASSES
from groupvit.pretrained import BUNDLED
from groupvit.segment.segmenter import Segmenter


@pytest.mark.parametrize("rule", ["mutual", "best-group", "threshold", None])
def test_eval_with_a_rule_scores_what_the_demo_scores_on_the_same_scenes(tmp_path, capsys, rule):
    """Each rule typed (unrefined), and nothing typed: the bundled weights' own settings, the demo's defaults."""
    root = tmp_path / "scenes"
    assert cli_main(["synth", "eval", str(root), "--num", "12", "--size", "64", "--seed", "7"]) == 0
    out = tmp_path / "eval.json"
    typed = [] if rule is None else ["--short-side", "64", "--mode", "whole", "--background-rule", rule,
                                     "--refine", "none"]
    argv = ["eval", "--root", str(root), "--weights", BUNDLED, *typed, "--out", str(out), "--quiet"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().err
    expected_line = {"mutual": "background rule mutual (2 classes); refine none",
                     "best-group": "background rule best-group (1 classes); refine none",
                     "threshold": "background threshold 0.95; refine none",
                     None: "background rule mutual (2 classes); refine pamr"}[rule]
    typed_origins = "typed: short side, mode, background rule, refine"
    origins = {"mutual": f"from the weights: window, stride, classes per rule; {typed_origins}",  # mutual's count
               "best-group": f"from the weights: window, stride; {typed_origins}",
               "threshold": f"from the weights: window, stride; {typed_origins}",
               None: "from the weights: short side, mode, window, stride, background rule, classes per rule, "
                     "refine"}[rule]
    assert (f"groupvit eval: whole image, short side 64; {expected_line}; precision fp32 (settings "
            f"{origins})") in printed
    payload = json.loads(out.read_text())
    assert payload["settings"]["background_rule"] == (rule or "mutual")
    assert payload["settings"]["best_group_classes"] == RULE_CLASSES[rule or "mutual"]
    assert payload["settings"]["origins"]["background_rule"] == ("weights" if rule is None else "typed")

    model = groupvit.load_pretrained(BUNDLED)
    # the demo's segmenter (its defaults when no rule is typed) on the scenes as written (JPEG images, PNG labels)
    segmenter, table = synthetic_segmenter(model, rule, None, 64, "none" if rule else None)
    assert (segmenter.background_rule, segmenter.refine) == ((rule, None) if rule else ("mutual", "pamr"))
    folder = root / "VOC2012"
    images = [np.asarray(Image.open(folder / "JPEGImages" / f"all_{i:06d}.jpg").convert("RGB")) for i in range(12)]
    labels = [np.asarray(Image.open(folder / "SegmentationClass" / f"all_{i:06d}.png")) for i in range(12)]
    iou = IoUAccumulator(len(THING_CLASSES))
    for truth, result in zip(labels, segmenter(images, groups=False), strict=True):
        iou.update(table[result.labels], truth)
    assert abs(payload["results"]["mIoU"] - 100 * iou.compute().miou) < 0.01


def test_segment_takes_the_rule_and_records_it(tmp_path, capsys):
    scene = SceneGenerator(image_size=64, seed=3, split="eval-all").sample(0)
    image = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(image)
    out = tmp_path / "out"
    argv = ["segment", str(image), "--weights", BUNDLED, "--classes", ",".join(THING_CLASSES[1:]), "--short-side", "64",
            "--mode", "whole", "--background-rule", "mutual", "--best-group-classes", "3", "--out", str(out)]
    assert cli_main(argv) == 0
    assert "background rule mutual (3 classes)" in capsys.readouterr().err
    settings = json.loads((out / "segment-settings.json").read_text())
    assert settings["background_rule"] == "mutual" and settings["best_group_classes"] == 3
    labels = np.asarray(Image.open(out / "scene_labels.png"))
    model = groupvit.load_pretrained(BUNDLED)
    expected = Segmenter(model, THING_CLASSES[1:], mode="whole", short_side=64, window=64, stride=64,
                         background_rule="mutual", best_group_classes=3)(scene.image).labels
    assert np.array_equal(labels, expected)
    assert cli_main([*argv[:-2], "--best-group-classes", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--best-group-classes must be a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before the output folder is made


def test_segmenter_gives_each_rule_its_class_count():
    model = groupvit.load_pretrained(BUNDLED)
    assert Segmenter(model, ["red", "blue"], background_rule="mutual").best_group_classes == 2
    assert Segmenter(model, ["red", "blue"], background_rule="best-group").best_group_classes == 1
