"""Decoded shards kept on disk: a shard's images decoded once, then memory-mapped by every later epoch and run.

For a small data set of small images, reading a tar shard and decoding its PNGs is most of the loader's work
per sample (BENCHMARKS.md), and the loader workers are new processes every epoch. With ``data.decoded_cache``
on, the first read of a shard writes what decoding it gave, sample by sample, to
``cache_dir()/decoded/{key}.pixels`` (the RGB bytes of every image, one after the other) and ``{key}.json``
(per sample: key, byte offset, height, width, caption, or why it is unusable; and the shard's problem lines, each
with the number of samples read before it).
``key`` hashes the shard's real path, size and modification time, so a rewritten shard is decoded afresh.
Later reads map the pixels and build each image from its bytes: the same pixels and captions, the same
problems, in the same order, so batches are bit-identical with and without the cache.

Both files are written beside their target and renamed into place, the index last; a read that stops early
(end of an epoch) leaves nothing behind, and one that cannot write warns once and reads the shard as before.
The cache costs the raw pixels' size on disk: 60,000 scenes of 64 x 64 px take 740 MB.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from groupvit.data.sources import RawSample, Report, SampleError, Want, decode_sample, iter_tar_groups
from groupvit.fileio import atomic_path, cache_dir

FORMAT = 1


def shard_key(path: Path) -> str:
    """A file-name-safe name of the shard's content: a hash of its real path, size and modification time."""
    stat = os.stat(path)
    ident = f"{FORMAT}|{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:32]


class DecodedShards:
    """Readers of tar shards through the decoded cache in ``root`` (default ``cache_dir()/decoded``)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "decoded"
        self._writable = True

    def read(
        self, shard: Path, source: int, index: int, want: Want | None, report: Report
    ) -> Iterator[RawSample | None]:
        """The shard's samples in order, as :meth:`ShardSource.read` gives them: a RawSample holding decoded
        ``pixels`` (or the ``problem`` decoding met) where ``want(position)``, else None."""
        try:
            key: str | None = shard_key(shard)
        except OSError:
            key = None
        stored = self._load(key) if key is not None else None
        if stored is not None:
            yield from self._replay(shard, source, index, want, report, *stored)
            return
        if key is None or not self._writable:
            yield from self._decode(shard, source, index, want, report, None)
            return
        entry = None
        try:
            with atomic_path(self.root / f"{key}.pixels") as pixels_tmp, open(pixels_tmp, "wb") as pixels:
                entry = _Entry(pixels)
                yield from self._decode(shard, source, index, want, entry.report(report), entry)
                if entry.error is not None:
                    raise entry.error  # the pixels are incomplete: atomic_path removes them
            with atomic_path(self.root / f"{key}.json") as index_tmp:
                index_tmp.write_text(entry.index())
        except OSError as err:
            self._writable = False
            warnings.warn(f"decoded-shard cache {self.root} cannot be written ({err}); reading shards without it",
                          stacklevel=2)
            if entry is None:  # the folder or the pixel file could not be made: nothing was read yet
                yield from self._decode(shard, source, index, want, report, None)

    def _decode(self, shard: Path, source: int, index: int, want: Want | None, report: Report,
                entry: _Entry | None) -> Iterator[RawSample | None]:
        """Read and decode the shard; with an ``entry`` every sample is decoded and recorded in it."""
        for position, key, files, problem in iter_tar_groups(shard, report, want if entry is None else None):
            if files is None:
                yield None
                continue
            raw = RawSample((source, index, position), f"{shard.name}/{key}", files, problem=problem)
            if entry is not None:
                try:
                    image, caption = decode_sample(raw)
                    array = np.asarray(image, dtype=np.uint8)
                    entry.add(key, array, caption)
                    raw = RawSample(raw.sample_id, raw.key, pixels=array, caption=caption)
                except SampleError as err:
                    entry.add(key, None, str(err))
                    raw = RawSample(raw.sample_id, raw.key, problem=str(err))
                if want is not None and not want(position):
                    yield None
                    continue
            yield raw

    def _load(self, key: str) -> tuple[list[tuple], dict[int, list[str]], np.ndarray] | None:
        """The stored entry of ``key``: its sample rows, its problem lines by the number of samples read before
        them, and its pixels; None when there is none, or it is damaged or of another format."""
        try:
            data = json.loads((self.root / f"{key}.json").read_text())
            if data["format"] != FORMAT:
                return None
            samples = [(str(k), int(o), int(h), int(w), c, p) for k, o, h, w, c, p in data["samples"]]
            lines: dict[int, list[str]] = {}
            for count, line in data["problems"]:
                lines.setdefault(int(count), []).append(str(line))
            pixels_file = self.root / f"{key}.pixels"
            size = pixels_file.stat().st_size
            end = max((o + h * w * 3 for _, o, h, w, _, p in samples if p is None), default=0)
            if end > size:
                return None
            pixels = np.memmap(pixels_file, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return samples, lines, pixels

    def _replay(self, shard: Path, source: int, index: int, want: Want | None, report: Report,
                samples: list[tuple], lines: dict[int, list[str]], pixels: np.ndarray) -> Iterator[RawSample | None]:
        """The samples of a stored entry, each problem line reported where the shard's read reported it."""
        for position, (key, offset, height, width, caption, problem) in enumerate(samples):
            for line in lines.pop(position, ()):
                report(line)
            if want is not None and not want(position):
                yield None
            elif problem is not None:
                yield RawSample((source, index, position), f"{shard.name}/{key}", problem=problem)
            else:
                array = pixels[offset : offset + height * width * 3].reshape(height, width, 3)
                yield RawSample((source, index, position), f"{shard.name}/{key}", pixels=array, caption=caption)
        for count in sorted(lines):
            for line in lines[count]:
                report(line)


class _Entry:
    """The samples and problem lines of a shard being decoded, its pixels appended to ``pixels``; a write that
    fails (``error``) stops the recording, and the read it belongs to goes on."""

    def __init__(self, pixels: BinaryIO) -> None:
        self.pixels = pixels
        self.samples: list[list] = []
        self.lines: list[list] = []
        self.error: OSError | None = None

    def report(self, report: Report) -> Report:
        """``report`` that also records each line with the number of samples read before it."""
        def both(line: str) -> None:
            report(line)
            self.lines.append([len(self.samples), line])

        return both

    def add(self, key: str, array: np.ndarray | None, text: str) -> None:
        """Record a decoded sample (``array``, its caption ``text``) or an unusable one (``text``: why)."""
        if self.error is not None:
            return
        try:
            if array is None:
                self.samples.append([key, 0, 0, 0, None, text])
            else:
                self.samples.append([key, self.pixels.tell(), array.shape[0], array.shape[1], text, None])
                self.pixels.write(array.tobytes())
        except OSError as err:
            self.error = err

    def index(self) -> str:
        """The index file's JSON."""
        return json.dumps({"format": FORMAT, "problems": self.lines, "samples": self.samples})
