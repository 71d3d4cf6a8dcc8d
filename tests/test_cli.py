"""The installed ``groupvit`` console script: every sub-command's ``--help`` and one real call each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import groupvit.cli
from groupvit.data.images import read_label_map

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "groupvit"


def groupvit_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the console script; returns the finished process (text output)."""
    if not SCRIPT.is_file():
        pytest.fail(f"the groupvit console script is not installed beside {sys.executable}; pip install -e .")
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("command", sorted(groupvit.cli.COMMANDS))
def test_help_of_every_command(command):
    proc = groupvit_cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: groupvit {command}")
    assert "exit status: 0 success; 1 some inputs failed" in " ".join(proc.stdout.split())


def test_top_level_help_lists_every_command():
    proc = groupvit_cli("--help")
    assert proc.returncode == 0
    for command in groupvit.cli.COMMANDS:
        assert command in proc.stdout


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    proc = groupvit_cli("segment", str(tmp_path / "missing.png"), "--classes", "circle")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"groupvit segment: error: no such image file or folder: "
                                                f"{tmp_path / 'missing.png'}"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    proc = groupvit_cli("synth", "eval", str(root), "--num", "3", "--size", "64")
    assert proc.returncode == 0, proc.stderr
    return root


def test_synth_demo_segment_and_eval(scenes, tmp_path):
    image = sorted((scenes / "VOC2012" / "JPEGImages").iterdir())[0]
    proc = groupvit_cli("segment", str(image), "--classes", "circle,square,triangle,star,heart,cross",
                        "--weights", "synthetic-small", "--mode", "whole", "--short-side", "64", "--out",
                        str(tmp_path / "seg"))
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr  # in the bundled model's domain
    labels = read_label_map(tmp_path / "seg" / f"{image.stem}_labels.png")
    assert labels.shape == (64, 64) and labels.max() <= 6
    two = sorted((scenes / "VOC2012" / "JPEGImages").iterdir())[:2]
    proc = groupvit_cli("segment", *map(str, two), "--classes", "circle,star", "--weights", "synthetic-small",
                        "--mode", "whole", "--short-side", "64", "--out", str(tmp_path / "two"), "--no-groups")
    assert proc.returncode == 0, proc.stderr
    assert "2/2" in proc.stderr  # one progress bar for a list of files, not only for folders
    out = tmp_path / "eval.json"
    proc = groupvit_cli("eval", "--root", str(scenes), "--weights", "synthetic-small", "--mode", "whole",
                        "--short-side", "64", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["weights"] == "synthetic-small" and 0 <= report["results"]["mIoU"] <= 100
    proc = groupvit_cli("demo", "--num", "2", "--show", "1", "--seed", "5", "--out", str(tmp_path / "demo"))
    assert proc.returncode == 0, proc.stderr
    assert "every pixel background" in proc.stdout
    assert (tmp_path / "demo" / "contact_sheet.png").is_file()


def test_skip_lines_never_share_a_line_with_the_progress_bar(scenes, tmp_path):
    """stderr is a pipe here, not a terminal: the bar prints whole lines, and each skipped input its own line."""
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((scenes / "VOC2012" / "JPEGImages").iterdir()):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    proc = groupvit_cli("segment", str(folder), "--classes", "circle,star", "--weights", "synthetic-small",
                        "--mode", "whole", "--short-side", "64", "--out", str(tmp_path / "seg"), "--no-groups")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert "\r" not in proc.stderr
    skipped = [line for line in lines if "broken.png" in line]
    assert len(skipped) == 1 and skipped[0].startswith(f"groupvit segment: skipped {folder / 'broken.png'}: "), lines
    bars = [line for line in lines if "%|" in line]
    assert bars and all(line.startswith("segment: ") for line in bars) and "4/4" in bars[-1], lines


def test_bundled_model_on_a_photo_vocabulary_warns(tmp_path):
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(tmp_path / "photo.png")
    proc = groupvit_cli("segment", str(tmp_path / "photo.png"), "--classes", "person,car", "--weights",
                        "synthetic-small", "--mode", "whole", "--out", str(tmp_path / "out"), "--no-groups")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "synthetic-small knows only 64 px synthetic scenes" in warnings[0]
    assert "(not person, car)" in warnings[0]


def test_out_of_domain_warning_marks_a_cut_list(capsys):
    from groupvit.commands.segment import warn_if_out_of_domain

    warn_if_out_of_domain("synthetic-small", ["person", "car", "tree", "road", "circle"], 64)
    line = capsys.readouterr().err
    assert "(not person, car, tree, …)" in line and "road" not in line


def test_shards_convert_train_and_weights(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(4):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
        rows.append(f"{i}.png,a grey square number {i}")
    (tmp_path / "captions.csv").write_text("file,caption\n" + "\n".join(rows) + "\n")
    proc = groupvit_cli("shards", "--images", str(images), "--captions", str(tmp_path / "captions.csv"), "--out",
                        str(tmp_path / "shards"), "--shard-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]

    proc = groupvit_cli("train", "--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--output",
                        str(tmp_path / "run"), "train.epochs=1", "data.sources.0.size=16", "train.progress=false")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "latest.pt").is_file()

    proc = groupvit_cli("convert", str(tmp_path / "run" / "latest.pt"), str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "hf" / "config.json").is_file()

    proc = groupvit_cli("weights", env={"GROUPVIT_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert f"cache: {tmp_path / 'cache'}" in proc.stdout and "gcc-yfcc" in proc.stdout
