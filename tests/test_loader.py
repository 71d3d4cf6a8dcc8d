"""Training loader and sources: epoch partitioning, exact resume, corrupt data, shards, folders."""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from groupvit.data.loader import DataConfig, _shuffle_buffer, build_train_loader, split_units
from groupvit.data.sources import (
    FolderSource,
    SampleError,
    ShardSource,
    decode_sample,
    iter_tar_groups,
    split_member_name,
)
from groupvit.data.transforms import ImageAugConfig
from groupvit.errors import ConfigError, InputError
from groupvit.text.tokenizer import tokenize

SMALL_IMAGES = ImageAugConfig(image_size=8, re_prob=1.0)  # every random step in use, tiny tensors


def png_bytes(value: int, size: tuple[int, int] = (12, 10)) -> bytes:
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[..., 0] = value % 256
    array[..., 1] = np.arange(size[0], dtype=np.uint8)[None, :] * 20
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(index: int, caption: str | None = None) -> list[tuple[str, bytes]]:
    key = f"{index:06d}"
    text = caption if caption is not None else f"a dog number {index} running on the beach"
    return [(f"{key}.png", png_bytes(index)), (f"{key}.txt", text.encode())]


def make_shards(root: Path, num_shards: int, per_shard: int, prefix: str = "s") -> str:
    index = 0
    for shard in range(num_shards):
        members = []
        for _ in range(per_shard):
            members += sample_members(index)
            index += 1
        write_shard(root / f"{prefix}-{shard:06d}.tar", members)
    return str(root / f"{prefix}-{{000000..{num_shards - 1:06d}}}.tar")


def config(sources: list[dict], **overrides) -> DataConfig:
    settings = dict(batch_size=3, num_workers=2, image=SMALL_IMAGES, shuffle_buffer=4, seed=5)
    settings.update(overrides)
    return DataConfig(sources=sources, **settings)


def epoch_keys(cfg: DataConfig, world_size: int, epoch: int = 0) -> list[str]:
    keys = []
    for rank in range(world_size):
        for batch in build_train_loader(cfg, epoch=epoch, rank=rank, world_size=world_size):
            keys += batch["keys"]
    return keys


# --------------------------------------------------------------------------- partitioning


def test_split_units_deals_whole_units_then_shares_the_rest():
    whole, shared = split_units(list(range(10)), 4)
    assert whole == [[0, 4], [1, 5], [2, 6], [3, 7]] and shared == [8, 9]
    whole, shared = split_units(list(range(3)), 4)
    assert whole == [[], [], [], []] and shared == [0, 1, 2]


def test_shuffle_buffer_is_a_seeded_permutation():
    out = list(_shuffle_buffer(iter(range(50)), 8, random.Random(1)))
    assert sorted(out) == list(range(50)) and out != list(range(50))
    assert out == list(_shuffle_buffer(iter(range(50)), 8, random.Random(1)))
    assert list(_shuffle_buffer(iter(range(5)), 0, random.Random(1))) == list(range(5))


def test_every_sample_once_over_two_ranks_and_two_workers(tmp_path):
    # 4 shards of 6 for 4 streams: shards dealt whole; 24 // (3 * 2) = 4 batches per rank.
    cfg = config([{"type": "shards", "pattern": make_shards(tmp_path, 4, 6), "length": 24}])
    keys = epoch_keys(cfg, world_size=2)
    assert Counter(keys) == Counter(f"s-{i // 6:06d}.tar/{i:06d}" for i in range(24))


def test_every_sample_once_when_fewer_shards_than_streams(tmp_path):
    # One shard and a folder for 4 streams: all samples split by number across the streams.
    pattern = make_shards(tmp_path, 1, 8)
    folder = tmp_path / "images"
    folder.mkdir()
    rows = ["file,caption"]
    for i in range(4):
        (folder / f"im{i}.png").write_bytes(png_bytes(100 + i))
        rows.append(f'im{i}.png,"a cat, sitting on mat {i}"')
    (folder / "captions.csv").write_text("\n".join(rows) + "\n")
    sources = [
        {"type": "shards", "pattern": pattern, "length": 8},
        {"type": "folder", "root": str(folder), "captions": "captions.csv"},
    ]
    keys = epoch_keys(config(sources), world_size=2)
    expected = [f"s-000000.tar/{i:06d}" for i in range(8)] + [f"im{i}.png" for i in range(4)]
    assert Counter(keys) == Counter(expected)


def test_order_depends_on_seed_and_epoch_only(tmp_path):
    cfg = config([{"type": "shards", "pattern": make_shards(tmp_path, 4, 6)}], num_workers=0)
    assert epoch_keys(cfg, 1) == epoch_keys(cfg, 1)
    assert epoch_keys(cfg, 1) != epoch_keys(cfg, 1, epoch=1)
    assert sorted(epoch_keys(cfg, 1)) == sorted(epoch_keys(cfg, 1, epoch=1))


# --------------------------------------------------------------------------- batches and resume


def test_batch_contents(tmp_path):
    cfg = config([{"type": "shards", "pattern": make_shards(tmp_path, 2, 6)}], multi_label=2, tagger="simple")
    loader = build_train_loader(cfg, epoch=0)
    assert loader.num_batches == len(loader) == 4 and loader.total_length == 12
    batches = list(loader)
    assert len(batches) == 4
    batch = batches[0]
    assert batch["images"].shape == (3, 3, 8, 8) and batch["images"].dtype == torch.float32
    assert batch["texts"].shape == (3, 3, 77) and batch["texts"].dtype == torch.long
    assert torch.equal(batch["texts"][:, 0], tokenize(batch["captions"]))
    assert batch["skipped"] == 0 and loader.skipped == 0 and loader.problems == []
    single = build_train_loader(config(cfg.sources), epoch=0)
    assert next(iter(single))["texts"].shape == (3, 1, 77)


@pytest.mark.parametrize("start", [3, 4])
def test_resume_reproduces_the_remaining_batches(tmp_path, start):
    cfg = config(
        [{"type": "shards", "pattern": make_shards(tmp_path, 3, 7)}], batch_size=2, multi_label=2, tagger="simple"
    )
    full = list(build_train_loader(cfg, epoch=2))
    resumed_loader = build_train_loader(cfg, epoch=2, start_batch=start)
    resumed = list(resumed_loader)
    assert len(full) == 10 and len(resumed) == len(resumed_loader) == 10 - start
    for a, b in zip(full[start:], resumed, strict=True):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["texts"], b["texts"])


# --------------------------------------------------------------------------- bad data


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_and_empty_caption_are_skipped(tmp_path, workers):
    members = []
    for i in range(10):
        members += sample_members(i, caption="   " if i == 6 else None)
    members[6] = ("000003.png", b"\x89PNG\r\n\x1a\n this is not an image")
    pattern = str(write_shard(tmp_path / "bad.tar", members))
    # 8 usable samples make exactly the 10 // 4 = 2 batches, so every sample is read (no drop-last tail).
    cfg = config([{"type": "shards", "pattern": pattern}], batch_size=4, num_workers=workers, shuffle_buffer=0)
    loader = build_train_loader(cfg, epoch=0)
    keys = [key for batch in loader for key in batch["keys"]]
    assert sorted(keys) == [f"bad.tar/{i:06d}" for i in (0, 1, 2, 4, 5, 7, 8, 9)]
    assert loader.skipped == 2
    assert any("bad.tar/000003: cannot decode image" in line for line in loader.problems)
    assert any("bad.tar/000006: empty caption" in line for line in loader.problems)


def truncated_shard(path: Path, num_samples: int, cut_in: str, header: bool = False) -> Path:
    """A shard cut 10 bytes into the data (or 100 bytes into the header) of member ``cut_in``."""
    members = [m for i in range(num_samples) for m in sample_members(i)]
    write_shard(path, members)
    with tarfile.open(path) as tar:
        member = tar.getmember(cut_in)
        cut = member.offset + 100 if header else member.offset_data + 10
    path.write_bytes(path.read_bytes()[:cut])
    return path


def test_truncated_tar_yields_its_readable_samples(tmp_path):
    path = truncated_shard(tmp_path / "cut.tar", 6, cut_in="000004.png")
    reports: list[str] = []
    groups = list(iter_tar_groups(path, reports.append))
    assert [g[0] for g in groups] == [0, 1, 2, 3, 4]
    assert all(g[3] is None and set(g[2]) == {"png", "txt"} for g in groups[:4])
    assert "000004.png is unreadable" in groups[4][3]
    assert len(reports) == 1 and "cut.tar is truncated" in reports[0]
    # A cut inside a header: the samples before it are kept, the shard is reported.
    path = truncated_shard(tmp_path / "cut2.tar", 3, cut_in="000002.png", header=True)
    reports.clear()
    assert [g[1] for g in iter_tar_groups(path, reports.append)] == ["000000", "000001"]
    assert len(reports) == 1 and "cut2.tar is truncated" in reports[0]


def test_loader_trains_through_a_truncated_shard(tmp_path):
    path = truncated_shard(tmp_path / "cut.tar", 6, cut_in="000004.png")
    # The declared length (6) exceeds the 4 readable samples: the stream skips the broken one, then repeats.
    cfg = config([{"type": "shards", "pattern": str(path), "length": 6}], batch_size=5, num_workers=0, shuffle_buffer=0)
    loader = build_train_loader(cfg, epoch=0)
    (batch,) = list(loader)
    assert batch["keys"] == [f"cut.tar/{i:06d}" for i in (0, 1, 2, 3, 0)]
    assert loader.skipped == 1
    assert any("cut.tar is truncated" in line for line in loader.problems)


def test_unopenable_and_missing_shards_are_reported(tmp_path):
    make_shards(tmp_path, 1, 4, prefix="good")
    (tmp_path / "good-000001.tar").write_bytes(b"this is not a tar archive at all" * 40)
    pattern = str(tmp_path / "good-{000000..000002}.tar")  # 000002 does not exist
    cfg = config([{"type": "shards", "pattern": pattern, "length": 4}], batch_size=2, num_workers=0)
    loader = build_train_loader(cfg, epoch=0)
    assert any("1 of 3 shards" in line and "good-000002.tar" in line for line in loader.problems)
    keys = [key for batch in loader for key in batch["keys"]]
    assert sorted(keys) == [f"good-000000.tar/{i:06d}" for i in range(4)]
    assert any(line.startswith("cannot open shard") and "good-000001.tar" in line for line in loader.problems)


def test_all_unusable_data_raises_instead_of_looping(tmp_path):
    members = [m for i in range(3) for m in sample_members(i, caption="")]
    pattern = str(write_shard(tmp_path / "empty.tar", members))
    loader = build_train_loader(config([{"type": "shards", "pattern": pattern}], batch_size=1, num_workers=0), epoch=0)
    with pytest.raises(InputError, match="no usable sample"):
        list(loader)


# --------------------------------------------------------------------------- sources


def test_member_names_split_like_webdataset():
    assert split_member_name("a/b/000042.seg.PNG") == ("a/b/000042", "seg.png")
    assert split_member_name("000042.txt") == ("000042", "txt")
    assert split_member_name("README") is None and split_member_name(".hidden") is None


def test_shard_length_is_counted_when_absent(tmp_path):
    source = ShardSource(make_shards(tmp_path, 3, 5))
    assert source.length == 15 and len(source.shards) == 3 and source.missing == []
    with pytest.raises(ConfigError):
        ShardSource(str(tmp_path / "nothing-{0..3}.tar"))


def test_folder_source_with_jsonl_and_bad_rows(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(1))
    (tmp_path / "c.png").write_bytes(png_bytes(3))
    lines = [
        json.dumps({"image": "a.png", "caption": "a red ball"}),
        json.dumps({"image": "missing.png", "caption": "a ghost"}),
        "{not json",
        json.dumps({"image": "c.png", "caption": ""}),
    ]
    (tmp_path / "caps.jsonl").write_text("\n".join(lines) + "\n\n")
    source = FolderSource(tmp_path, "caps.jsonl")
    assert source.length == 4
    (unit,) = source.units(0, seed=0, epoch=0)
    outcomes = {}
    for raw in source.read(unit, None, print):
        try:
            outcomes[raw.sample_id[2]] = decode_sample(raw)[1]
        except SampleError as err:
            outcomes[raw.sample_id[2]] = str(err)
    assert outcomes[0] == "a red ball"
    assert outcomes[1].startswith("cannot read image file")
    assert "line 3 is not a valid record" in outcomes[2]
    assert outcomes[3] == "empty caption"
    with pytest.raises(InputError):
        FolderSource(tmp_path, "nope.csv")


# --------------------------------------------------------------------------- configuration


def test_config_errors_and_round_trip(tmp_path):
    sources = [{"type": "shards", "pattern": make_shards(tmp_path, 1, 4)}]
    cfg = config(sources)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="no full batch"):
        build_train_loader(config(sources, batch_size=5), epoch=0)
    with pytest.raises(ConfigError, match="start_batch"):
        build_train_loader(cfg, epoch=0, start_batch=3)
    with pytest.raises(ConfigError):
        build_train_loader(cfg, epoch=0, rank=2, world_size=2)
    with pytest.raises(ConfigError):
        build_train_loader(config([{"type": "shards", "patern": "x.tar"}]), epoch=0)
    with pytest.raises(ConfigError):
        DataConfig.from_dict({"sources": sources, "batchsize": 4})
    with pytest.raises(ConfigError):
        config(sources, tagger="flair")
