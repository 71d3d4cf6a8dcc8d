"""Decoded-shard cache: the same samples, problems and batches as reading the tar shards, cold and warm."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from groupvit.data.decoded import DecodedShards, shard_key
from groupvit.data.loader import build_train_loader
from groupvit.data.sources import SampleError, ShardSource, decode_sample
from tests.test_loader import config, make_shards, sample_members, truncated_shard, write_shard


def outcomes(source: ShardSource, want=None) -> list:
    """Every sample and report of shard 0 in reading order: ``("report", line)``, ``None`` or
    ``(sample_id, key, pixels, caption or error)``."""
    events: list = []
    for raw in source.read(source.units(0, 0, 0)[0], want, lambda line: events.append(("report", line))):
        if raw is None:
            events.append(None)
            continue
        try:
            image, caption = decode_sample(raw)
            events.append((raw.sample_id, raw.key, np.asarray(image).tobytes(), caption))
        except SampleError as err:
            events.append((raw.sample_id, raw.key, None, str(err)))
    return events


def bad_shard(path):
    members = []
    for i in range(6):
        members += sample_members(i, caption="  " if i == 2 else f"  a cat number {i} asleep ")
    members[8] = ("000004.png", b"\x89PNG\r\n\x1a\n not an image")
    return write_shard(path, members + [("000009.png", b"")])  # a sample without its caption


@pytest.mark.parametrize("shard", ["bad", "truncated"])
def test_cached_reads_match_the_shard_cold_and_warm(tmp_path, shard):
    path = bad_shard(tmp_path / "s.tar") if shard == "bad" else truncated_shard(tmp_path / "s.tar", 6, "000004.png")
    plain = outcomes(ShardSource(str(path)))
    assert any(event and event[0] == "report" for event in plain) == (shard == "truncated")
    assert any(event and event[0] != "report" and event[2] is None for event in plain)
    cached = ShardSource(str(path))
    cached.decoded = DecodedShards(tmp_path / "cache")
    assert outcomes(cached) == plain  # cold: decoded and written
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    assert outcomes(cached) == plain  # warm: read from the cache
    want = lambda position: position % 2 == 1  # noqa: E731
    assert outcomes(cached, want) == outcomes(ShardSource(str(path)), want)


def test_a_read_cut_short_leaves_no_entry_and_a_rewritten_shard_is_decoded_again(tmp_path):
    make_shards(tmp_path, 1, 5)
    path = tmp_path / "s-000000.tar"
    source = ShardSource(str(path))
    source.decoded = DecodedShards(tmp_path / "cache")
    reader = source.read(source.units(0, 0, 0)[0], None, lambda _: None)
    next(reader)
    reader.close()
    assert not any((tmp_path / "cache").iterdir())
    before = outcomes(source)
    old_key = shard_key(path)
    write_shard(path, sample_members(7) + sample_members(8))
    os.utime(path, ns=(1, 1))
    assert shard_key(path) != old_key
    after = outcomes(source)
    assert after == outcomes(ShardSource(str(path))) and after != before


def test_unwritable_cache_warns_and_reads_the_shard(tmp_path):
    make_shards(tmp_path, 1, 3)
    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    source = ShardSource(str(tmp_path / "s-000000.tar"))
    source.decoded = DecodedShards(tmp_path / "blocked" / "decoded")
    with pytest.warns(UserWarning, match="cannot be written"):
        events = outcomes(source)
    assert events == outcomes(ShardSource(str(tmp_path / "s-000000.tar")))


def epoch(cfg, index: int) -> list[dict]:
    return list(build_train_loader(cfg, epoch=index))


@pytest.mark.parametrize("workers, nice", [(0, 0), (2, 19)])
def test_batches_are_bit_identical_with_the_cache(tmp_path, workers, nice):
    pattern = make_shards(tmp_path, 3, 7)
    bad_shard(tmp_path / "s-000003.tar")
    pattern = str(tmp_path / "s-{000000..000003}.tar")
    reference = config([{"type": "shards", "pattern": pattern}], num_workers=workers, multi_label=2, tagger="simple")
    cached = config([{"type": "shards", "pattern": pattern}], num_workers=workers, multi_label=2, tagger="simple",
                    decoded_cache=True, worker_nice=nice)
    for index in (0, 1):
        expected = epoch(reference, index)
        for got in (epoch(cached, index), epoch(cached, index)):  # cold, then warm
            assert len(got) == len(expected)
            for a, b in zip(expected, got, strict=True):
                assert a.keys() == b.keys()
                for name, value in a.items():
                    assert torch.equal(value, b[name]) if torch.is_tensor(value) else value == b[name], name
    resumed = list(build_train_loader(cached, epoch=1, start_batch=2))  # a resume reads the cache too
    assert [batch["keys"] for batch in resumed] == [batch["keys"] for batch in expected[2:]]
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(resumed, expected[2:], strict=True))


def test_worker_nice_is_checked():
    with pytest.raises(Exception, match="worker_nice"):
        config([{"type": "shards", "pattern": "x"}], worker_nice=20)


def test_a_full_disk_mid_shard_keeps_reading_and_leaves_no_entry(tmp_path, monkeypatch):
    import errno

    import groupvit.data.decoded as decoded

    class FullDisk:
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data: bytes) -> int:
            if self.written + len(data) > 2 * len(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    original = decoded._Entry.__init__

    def init(self, pixels):
        original(self, FullDisk(pixels))

    monkeypatch.setattr(decoded._Entry, "__init__", init)
    make_shards(tmp_path, 1, 5)
    path = str(tmp_path / "s-000000.tar")
    source = ShardSource(path)
    source.decoded = DecodedShards(tmp_path / "cache")
    with pytest.warns(UserWarning, match="no space left on the device"):
        events = outcomes(source)
    assert events == outcomes(ShardSource(path))
    assert not any((tmp_path / "cache").iterdir())


def test_a_damaged_entry_is_decoded_again_without_repeating_a_sample(tmp_path):
    make_shards(tmp_path, 1, 4)
    path = str(tmp_path / "s-000000.tar")
    source = ShardSource(path)
    source.decoded = DecodedShards(tmp_path / "cache")
    plain = outcomes(ShardSource(path))
    assert outcomes(source) == plain
    (pixels,) = (tmp_path / "cache").glob("*.pixels")
    pixels.write_bytes(pixels.read_bytes()[:100])  # pixels cut short: the index points past them
    assert outcomes(source) == plain
    assert pixels.stat().st_size > 100  # the entry was written again
    (index,) = (tmp_path / "cache").glob("*.json")
    index.write_text('{"format": 1, "samples": [["x", 0]], "problems": []}')  # a row of the wrong shape
    assert outcomes(source) == plain
