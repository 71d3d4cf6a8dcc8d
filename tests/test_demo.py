"""The offline demo and the shipped model."""

from __future__ import annotations

import re

import pytest
import torch

import groupvit
from groupvit.cli import main as cli_main
from groupvit.pretrained import default_weights_path


@pytest.mark.parametrize("background", ["names", "threshold", "mutual"])
def test_demo_writes_pictures_and_reports_miou(tmp_path, capsys, background):
    torch.manual_seed(0)
    weights = groupvit.save_checkpoint(groupvit.create_model("tiny"), tmp_path / "tiny.pt")
    out = tmp_path / "demo"
    assert cli_main(["demo", "--weights", str(weights), "--out", str(out), "--num", "3", "--show", "2",
                     "--seed", "5", "--background", background]) == 0
    printed = capsys.readouterr().out
    assert ("textures named: grass" in printed) == (background == "names")
    assert ("each other's best match" in printed) == (background == "mutual")
    assert len(re.findall(r"mIoU +\d+\.\d", printed)) == 2
    assert len(re.findall(r"group oracle +\d+\.\d  groups \d\.\d", printed)) == 2
    for split in ("all", "heldout"):
        for i in range(2):
            for kind in ("overlay", "truth", "groups"):
                assert (out / f"{split}_{i:02d}_{kind}.png").is_file()
    assert not (out / "all_02_overlay.png").exists()
    assert "seed 5 (the same scenes again: groupvit demo --seed 5)" in printed and "earlier run" not in printed


def test_demo_prints_its_random_seed_and_says_when_it_replaces_pictures(tmp_path, capsys):
    torch.manual_seed(0)
    weights = groupvit.save_checkpoint(groupvit.create_model("tiny"), tmp_path / "tiny.pt")
    argv = ["demo", "--weights", str(weights), "--out", str(tmp_path / "demo"), "--num", "2", "--show", "1"]
    assert cli_main(argv) == 0
    seed = int(re.search(r"seed (\d+) \(the same scenes again: groupvit demo --seed \1\)", capsys.readouterr().out)[1])
    assert cli_main([*argv, "--seed", str(seed)]) == 0
    assert f"pictures of an earlier run in {tmp_path / 'demo'} are replaced" in capsys.readouterr().out


def test_demo_bad_arguments_exit_2(tmp_path, capsys):
    assert cli_main(["demo", "--num", "0", "--out", str(tmp_path)]) == 2
    assert "--num" in capsys.readouterr().err


def test_shipped_model_is_small_half_precision_and_loads():
    path = default_weights_path()
    assert path.stat().st_size <= 25 * 2**20
    raw = torch.load(path, weights_only=True)
    assert {t.dtype for t in raw["model"].values() if t.is_floating_point()} == {torch.float16}
    model = groupvit.load_pretrained(path)
    assert model.config.vision.image_size == 64 and model.config.vision.stem == "conv" and not model.training
    with torch.no_grad():
        text = model.encode_text(groupvit.tokenize(["a photo of a star.", "a photo of a heart."]))
    assert torch.isfinite(text).all()


def test_demo_on_the_extended_shapes(tmp_path, capsys):
    from groupvit.commands.demo import synthetic_segmenter

    torch.manual_seed(0)
    model = groupvit.create_model("tiny")
    weights = groupvit.save_checkpoint(model, tmp_path / "tiny.pt")
    assert cli_main(["demo", "--weights", str(weights), "--out", str(tmp_path / "demo"), "--num", "2", "--show", "1",
                     "--seed", "3", "--shapes", "extended"]) == 0
    printed = capsys.readouterr().out
    assert "vocabulary: circle, square, triangle, star, heart, cross, diamond, hexagon + background" in printed
    assert len(re.findall(r"mIoU +\d+\.\d", printed)) == 2
    size = model.config.vision.image_size
    _, table = synthetic_segmenter(model, "names", 0.95, size, shapes="extended")
    assert table.tolist() == [1, 2, 3, 4, 5, 6, 7, 8] + [0] * 6  # the eight shapes, then six textures as background
    _, table = synthetic_segmenter(model, "threshold", 0.95, size, shapes="standard")
    assert table.tolist() == [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("refine", [None, "none", "pamr"])
def test_demo_refines_masks_with_pamr_unless_told(tmp_path, capsys, refine):
    from groupvit.commands.demo import synthetic_segmenter
    from groupvit.data.synthetic import THING_CLASSES, SceneGenerator
    from groupvit.evaluate.miou import IoUAccumulator

    torch.manual_seed(0)
    model = groupvit.create_model("tiny")
    weights = groupvit.save_checkpoint(model, tmp_path / "tiny.pt")
    argv = ["demo", "--weights", str(weights), "--out", str(tmp_path / "demo"), "--num", "3", "--show", "0",
            "--seed", "4"]
    assert cli_main(argv if refine is None else [*argv, "--refine", refine]) == 0
    printed = capsys.readouterr().out
    method = refine or "pamr"
    assert ("masks not refined" in printed) == (method == "none")
    assert (f"masks refined by {method}" in printed) == (method != "none")
    # The printed score is that of the mutual rule with the chosen refinement on the same scenes.
    model = groupvit.load_pretrained(weights)
    size = model.config.vision.image_size
    segmenter, table = synthetic_segmenter(model, "mutual", 0.95, size, None if method == "none" else method)
    scenes = [SceneGenerator(image_size=size, seed=4, split="eval-all").sample(i) for i in range(3)]
    iou = IoUAccumulator(len(THING_CLASSES))
    for scene, result in zip(scenes, segmenter([s.image for s in scenes], groups=False), strict=True):
        iou.update(table[result.labels], scene.labels)
    assert f"all colour-shape pairs: mIoU {100 * iou.compute().miou:5.1f}" in printed
