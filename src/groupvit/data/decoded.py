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
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

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
            key = shard_key(shard)
        except OSError:
            key = None
        index_file = self.root / f"{key}.json"
        if key is not None and index_file.is_file():
            try:
                yield from self._cached(index_file, self.root / f"{key}.pixels", shard, source, index, want, report)
                return
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a damaged or foreign entry: decode the shard again and replace it
        if key is None or not self._writable:
            yield from self._decode(shard, source, index, want, report, None)
            return
        entry = _Entry(self.root, key)
        try:
            yield from self._decode(shard, source, index, want, entry.report(report), entry)
            entry.commit()
        finally:
            entry.discard()
        if entry.error is not None:
            self._writable = False
            warnings.warn(f"decoded-shard cache {self.root} cannot be written ({entry.error}); reading shards "
                          "without it", stacklevel=2)

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

    def _cached(self, index_file: Path, pixels_file: Path, shard: Path, source: int, index: int, want: Want | None,
                report: Report) -> Iterator[RawSample | None]:
        data = json.loads(index_file.read_text())
        if data.get("format") != FORMAT:
            raise ValueError("another format")
        samples = data["samples"]
        size = pixels_file.stat().st_size
        pixels = np.memmap(pixels_file, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        lines = iter(data["problems"] + [[len(samples), None]])
        before, line = next(lines)
        for position, (key, offset, height, width, caption, problem) in enumerate(samples):
            while line is not None and before <= position:
                report(line)
                before, line = next(lines)
            if want is not None and not want(position):
                yield None
            elif problem is not None:
                yield RawSample((source, index, position), f"{shard.name}/{key}", problem=problem)
            else:
                array = pixels[offset : offset + height * width * 3].reshape(height, width, 3)
                yield RawSample((source, index, position), f"{shard.name}/{key}", pixels=array, caption=caption)
        while line is not None:
            report(line)
            before, line = next(lines)


class _Entry:
    """A cache entry being written: pixels appended to a temporary file beside their target, samples and
    problem lines kept in memory; :meth:`commit` renames the pixels into place and writes the index. A write
    that fails (``error``) stops the recording; the read it belongs to goes on."""

    def __init__(self, root: Path, key: str) -> None:
        self.pixels_file, self.index_file = root / f"{key}.pixels", root / f"{key}.json"
        self.samples: list[list] = []
        self.lines: list[list] = []
        self.error: OSError | None = None
        self._tmp: Path | None = None
        self._handle = None
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=root)
            self._tmp = Path(name)
            self._handle = os.fdopen(fd, "wb")
        except OSError as err:
            self.error = err

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
                self.samples.append([key, self._handle.tell(), array.shape[0], array.shape[1], text, None])
                self._handle.write(array.tobytes())
        except OSError as err:
            self.error = err

    def commit(self) -> None:
        """Put the pixels and then the index into place (nothing when a write failed)."""
        if self.error is not None:
            return
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            os.replace(self._tmp, self.pixels_file)
            with atomic_path(self.index_file) as tmp:
                tmp.write_text(json.dumps({"format": FORMAT, "problems": self.lines, "samples": self.samples}))
        except OSError as err:
            self.error = err

    def discard(self) -> None:
        """Close and remove the temporary file, if it is still there."""
        if self._handle is not None and not self._handle.closed:
            self._handle.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
