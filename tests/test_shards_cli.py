"""``groupvit shards``: folder + caption table -> webdataset shards that the training loader reads."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import groupvit.cli
from groupvit.data.loader import DataConfig, build_train_loader
from groupvit.data.sources import RawSample, decode_sample, iter_tar_groups
from groupvit.data.transforms import ImageAugConfig


def save(path: Path, value: int, fmt: str) -> None:
    array = np.full((10, 14, 3), value, np.uint8)
    Image.fromarray(array).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    save(images / "a.png", 10, "PNG")
    save(images / "sub" / "b.jpg", 20, "JPEG")
    save(images / "c.bmp", 30, "BMP")  # re-encoded as PNG
    save(images / "d.png", 40, "PNG")
    save(images / "e.png", 50, "PNG")
    (images / "broken.png").write_bytes(b"not an image")
    rows = [
        ("a.png", "a small red square"),
        ("sub/b.jpg", "a photo, with a comma"),
        ("missing.png", "nobody home"),
        ("c.bmp", "a bitmap"),
        ("broken.png", "bad bytes"),
        ("d.png", "   "),
        ("e.png", "the last one"),
    ]
    csv_lines = ["file,caption"] + [f'{name},"{caption}"' for name, caption in rows]
    (tmp_path / "captions.csv").write_text("\n".join(csv_lines) + "\n")
    jsonl = [json.dumps({"image": name, "caption": caption}) for name, caption in rows]
    (tmp_path / "captions.jsonl").write_text("\n".join(jsonl) + "\n")
    return tmp_path


def read_back(out: Path) -> list[tuple[str, str, str, tuple[int, ...]]]:
    samples = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
        for _, key, files, problem in iter_tar_groups(shard, print):
            assert problem is None
            image, caption = decode_sample(RawSample((0, 0, 0), key, files))
            ext = next(name.split(".", 1)[1] for name in names if name.startswith(key + "."))
            samples.append((f"{shard.name}/{key}", ext, caption, image.getpixel((0, 0))))
    return samples


@pytest.mark.parametrize("table", ["captions.csv", "captions.jsonl"])
def test_writes_usable_pairs_and_reports_skips(folder, table, capsys):
    out = folder / "out"
    argv = ["shards", "--images", str(folder / "images"), "--captions", str(folder / table), "--out", str(out)]
    assert groupvit.cli.main([*argv, "--shard-size", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    samples = read_back(out)
    assert [s[:3] for s in samples] == [
        ("shard-000000.tar/000000000", "png", "a small red square"),
        ("shard-000000.tar/000000001", "jpg", "a photo, with a comma"),
        ("shard-000001.tar/000000002", "png", "a bitmap"),
        ("shard-000001.tar/000000003", "png", "the last one"),
    ]
    assert samples[0][3] == (10, 10, 10) and samples[2][3] == (30, 30, 30)
    assert abs(samples[1][3][0] - 20) <= 2  # JPEG bytes kept as they were
    skipped = [line for line in printed if line.startswith("skipped ")]
    assert len(skipped) == 3
    assert any("missing.png" in line for line in skipped) and any("broken.png" in line for line in skipped)
    assert any("d.png: empty caption" in line for line in skipped)
    assert "wrote 4 samples in 2 shards" in printed[-2] and "skipped 3 of 7 rows" in printed[-2]
    source = json.loads(printed[-1].removeprefix("source: "))
    assert source == {"type": "shards", "pattern": str(out / "shard-{000000..000001}.tar"), "length": 4}
    cfg = DataConfig([source], batch_size=2, num_workers=0, image=ImageAugConfig(image_size=8))
    loader = build_train_loader(cfg, epoch=0)
    assert sorted(c for batch in loader for c in batch["captions"]) == sorted(s[2] for s in samples)


def test_refuses_to_mix_with_existing_shards_unless_overwriting(folder, capsys):
    out = folder / "out"
    argv = ["shards", "--images", str(folder / "images"), "--captions", str(folder / "captions.csv"), "--out", str(out)]
    assert groupvit.cli.main([*argv, "--shard-size", "1"]) == 0
    assert len(list(out.glob("shard-*.tar"))) == 4
    assert groupvit.cli.main(argv) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert groupvit.cli.main([*argv, "--overwrite"]) == 0
    assert [p.name for p in out.iterdir()] == ["shard-000000.tar"]  # the stale shards are gone, no temp files
    assert len(read_back(out)) == 4


def test_bad_arguments_exit_with_one_line(folder, capsys):
    base = ["shards", "--images", str(folder / "images"), "--out", str(folder / "out")]
    assert groupvit.cli.main([*base, "--captions", str(folder / "nope.csv")]) == 2
    assert "nope.csv does not exist" in capsys.readouterr().err
    assert groupvit.cli.main([*base, "--captions", str(folder / "captions.csv"), "--shard-size", "0"]) == 2
    (folder / "plain.txt").write_text("hello\n")
    assert groupvit.cli.main([*base, "--captions", str(folder / "plain.txt")]) == 2
    assert "must end in .csv or .jsonl" in capsys.readouterr().err
    (folder / "none.csv").write_text("file,caption\nmissing.png,a cat\n")
    assert groupvit.cli.main([*base, "--captions", str(folder / "none.csv")]) == 2
    assert "no usable image-caption pair" in capsys.readouterr().err
