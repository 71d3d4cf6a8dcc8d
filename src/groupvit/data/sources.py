"""Image-caption sources: webdataset tar shards, and a folder of images with a CSV or JSONL caption table.

Shards follow the webdataset layout of the official data: consecutive tar members sharing a key form one
sample, ``{key}.jpg|jpeg|png|webp`` for the image and ``{key}.txt`` for the caption (UTF-8); other members
(``.json`` metadata, ...) are ignored. The key is the member path up to the first dot of its file name.

A folder source is an image directory ``root`` plus a caption table: CSV with a header holding ``file`` (or
``image``) and ``caption`` columns, or JSONL of ``{"image": ..., "caption": ...}`` objects; image paths are
relative to ``root``.

Reading never stops on a bad sample. A sample with unreadable image bytes, an empty or missing caption or a
missing pair member comes out of :func:`decode_sample` as a :class:`SampleError` for the caller to count;
a shard that cannot be opened, or that is truncated (its readable samples are still read), is reported by
name through a ``report`` callback.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import braceexpand
import numpy as np
from PIL import Image, UnidentifiedImageError

from groupvit.errors import ConfigError, InputError

if TYPE_CHECKING:
    from groupvit.data.decoded import DecodedShards

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSIONS = ("txt", "text")
FOLDER_UNIT_SIZE = 1000  # rows of a folder source read as one unit (the counterpart of a shard)
Report = Callable[[str], None]
Want = Callable[[int], bool]


class SampleError(Exception):
    """A sample that cannot be used (message: why); the loader skips and counts it."""


@dataclass
class RawSample:
    """One sample before decoding.

    Attributes:
        sample_id: ``(source, a, b)`` ints naming the sample stably within a data configuration
            (shards: shard index, position in the shard; folders: 0, row of the caption table).
        key: readable name, ``"<shard file>/<key>"`` or the image path of the caption table.
        files: shard members of the sample, extension -> bytes (shards only).
        image_path: image file to read (folders only).
        caption: caption text (folders, and decoded samples).
        pixels: the decoded RGB image, uint8 ``[H, W, 3]`` (samples read through :mod:`groupvit.data.decoded`).
        problem: set when the sample is already known to be unusable.
    """

    sample_id: tuple[int, int, int]
    key: str
    files: dict[str, bytes] | None = None
    image_path: Path | None = None
    caption: str | None = None
    pixels: np.ndarray | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Unit:
    """A piece of a source read sequentially by one loader stream: a shard, or a chunk of folder rows."""

    source: int
    index: int
    rows: tuple[int, ...] = ()


def _decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def decode_sample(raw: RawSample) -> tuple[Image.Image, str]:
    """``(RGB PIL image, caption)`` of a raw sample; raises :class:`SampleError` naming what is wrong."""
    if raw.problem:
        raise SampleError(raw.problem)
    if raw.pixels is not None:
        return Image.fromarray(raw.pixels), raw.caption
    if raw.files is not None:
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in raw.files), None)
        text_ext = next((ext for ext in TEXT_EXTENSIONS if ext in raw.files), None)
        if image_ext is None:
            raise SampleError(f"no image member ({'/'.join(IMAGE_EXTENSIONS)})")
        if text_ext is None:
            raise SampleError(f"no caption member ({'/'.join(TEXT_EXTENSIONS)})")
        try:
            caption = raw.files[text_ext].decode("utf-8")
        except UnicodeDecodeError as err:
            raise SampleError(f"caption is not UTF-8 ({err})") from None
        data = raw.files[image_ext]
    else:
        caption = raw.caption or ""
        try:
            data = Path(raw.image_path).read_bytes()
        except OSError as err:
            raise SampleError(f"cannot read image file: {err.strerror or err}") from None
    caption = caption.strip()
    if not caption:
        raise SampleError("empty caption")
    try:
        image = _decode_image(data)
    except UnidentifiedImageError:  # its message names the in-memory buffer, different on every read
        raise SampleError("cannot decode image: the bytes are in no image format Pillow reads") from None
    except Exception as err:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...) on bad bytes
        raise SampleError(f"cannot decode image: {type(err).__name__}: {err}") from None
    return image, caption


# --------------------------------------------------------------------------- tar shards


def split_member_name(name: str) -> tuple[str, str] | None:
    """``'dir/000042.seg.png'`` -> ``('dir/000042', 'seg.png')`` (webdataset key and extension); None without a dot."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _ends_with_archive_marker(path: Path, offset: int) -> bool:
    """True when a zero block (the tar end-of-archive marker) starts at ``offset``."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            block = handle.read(tarfile.BLOCKSIZE)
    except OSError:
        return False
    return len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


def iter_tar_groups(
    path: str | os.PathLike, report: Report, want: Want | None = None
) -> Iterator[tuple[int, str, dict[str, bytes] | None, str | None]]:
    """Samples of a tar shard in order: ``(position, key, files, problem)``.

    Every sample yields once, in member order, with ``position`` counting from 0. ``files`` maps the image
    and caption extensions to bytes; it is None when ``want(position)`` is false (the data is then not read,
    only headers). ``problem`` names a member whose data could not be read. A shard that cannot be opened
    yields nothing; one that stops early (truncated, or garbage after a member) yields what it holds; both
    are reported through ``report``.
    """
    path = Path(path)
    try:
        tar = tarfile.open(path, mode="r:")
    except (OSError, tarfile.TarError) as err:
        report(f"cannot open shard {path}: {err}")
        return
    wanted_exts = IMAGE_EXTENSIONS + TEXT_EXTENSIONS
    with tar:
        position, key, files, problem = -1, None, None, None
        clean_end = True
        while True:
            try:
                member = tar.next()
            except (OSError, tarfile.TarError) as err:
                report(f"shard {path} is truncated or damaged after byte {tar.offset}: {err}")
                clean_end = False
                break
            if member is None:
                break
            split = split_member_name(member.name) if member.isfile() else None
            if split is None:
                continue
            if split[0] != key:
                if key is not None:
                    yield position, key, files, problem
                position, key, problem = position + 1, split[0], None
                files = {} if want is None or want(position) else None
            if files is not None and split[1] in wanted_exts:
                try:
                    files[split[1]] = tar.extractfile(member).read()
                except (OSError, tarfile.TarError) as err:
                    problem = f"member {member.name} is unreadable: {err}"
        if key is not None:
            yield position, key, files, problem
        if clean_end and not _ends_with_archive_marker(path, tar.offset):
            report(f"shard {path} is truncated: it ends inside or right after the member at byte {tar.offset}")


_COUNTS: dict[tuple[str, int, int], tuple[int, list[str]]] = {}


def count_tar_samples(path: str | os.PathLike, report: Report) -> int:
    """Number of samples (key groups) in a shard, reading headers only.

    The count and the problems reported are kept per (path, size, modification time), so a process that
    builds a loader every epoch reads each unchanged shard's headers once.
    """
    try:
        stat = os.stat(path)
        key: tuple[str, int, int] | None = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    except OSError:
        key = None
    if key in _COUNTS:
        count, lines = _COUNTS[key]
    else:
        lines = []
        count = sum(1 for _ in iter_tar_groups(path, lines.append, want=lambda _: False))
        if key is not None:
            _COUNTS[key] = count, lines
    for line in lines:
        report(line)
    return count


def shard_urls(pattern: str | Sequence[str]) -> list[str]:
    """Every shard a brace pattern (or a list of them) names, in order, whether it exists or not."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [url for item in patterns for url in braceexpand.braceexpand(str(item))]


class ShardSource:
    """Webdataset shards named by brace patterns, e.g. ``data/gcc-{000000..000436}.tar``.

    Shards that do not exist are left out (listed in ``missing``); if none exists, ConfigError. ``length``
    is the number of samples the epoch counts on (as the official ``length``); when None it is counted
    from the tar headers now. ``decoded`` (a :class:`groupvit.data.decoded.DecodedShards`, set by the loader
    when ``data.decoded_cache`` is on) reads the shards through the decoded-shard cache.
    """

    decoded: DecodedShards | None = None

    def __init__(self, pattern: str | Sequence[str], length: int | None = None, report: Report | None = None) -> None:
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        urls = shard_urls(patterns)
        self.pattern = patterns[0] if len(patterns) == 1 else patterns
        self.shards = [Path(url) for url in urls if Path(url).is_file()]
        self.missing = [url for url in urls if not Path(url).is_file()]
        if not self.shards:
            raise ConfigError(f"no shard of {self.pattern!r} exists; check the path and the brace pattern")
        if length is None:
            length = sum(count_tar_samples(shard, report or (lambda _: None)) for shard in self.shards)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ConfigError(f"length of shards {self.pattern!r} must be a positive int, got {length!r}")
        self.length = length

    def units(self, source: int, seed: int, epoch: int) -> list[Unit]:
        """One unit per existing shard."""
        return [Unit(source, index) for index in range(len(self.shards))]

    def read(self, unit: Unit, want: Want | None, report: Report) -> Iterator[RawSample | None]:
        """Every sample of the shard in order: a RawSample where ``want(position)``, else None."""
        shard = self.shards[unit.index]
        if self.decoded is not None:
            yield from self.decoded.read(shard, unit.source, unit.index, want, report)
            return
        for position, key, files, problem in iter_tar_groups(shard, report, want):
            if files is None:
                yield None
            else:
                yield RawSample((unit.source, unit.index, position), f"{shard.name}/{key}", files, problem=problem)


# --------------------------------------------------------------------------- image folder + caption table


def read_caption_table(path: str | os.PathLike) -> list[tuple[str, str, str | None]]:
    """Rows ``(image path, caption, problem)`` of a ``.csv`` or ``.jsonl`` caption table.

    Rows that cannot be parsed are kept with a problem (so they are counted as skipped, not lost silently).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"caption table {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            file_column = next((c for c in ("file", "image") if c in columns), None)
            if file_column is None or "caption" not in columns:
                raise InputError(f"{path} needs a header with 'file' and 'caption' columns, found {columns}")
            return [(row[file_column] or "", row["caption"] or "", None) for row in reader]
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    image = item.get("image", item.get("file"))
                    if not isinstance(image, str) or not isinstance(item.get("caption", ""), str):
                        raise ValueError("needs string fields 'image' and 'caption'")
                    rows.append((image, item.get("caption", ""), None))
                except (ValueError, AttributeError) as err:
                    rows.append(("", "", f"{path.name} line {number} is not a valid record: {err}"))
        return rows
    raise InputError(f"caption table {path} must end in .csv or .jsonl")


class FolderSource:
    """Images under ``root`` with captions from a table (``captions``: relative to ``root`` unless absolute).

    Each epoch the rows are permuted (seeded by seed and epoch) and cut into units of
    :data:`FOLDER_UNIT_SIZE` rows; ``length`` is the number of rows.
    """

    def __init__(self, root: str | os.PathLike, captions: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"image folder {self.root} does not exist")
        table = Path(captions)
        self.captions = table if table.is_absolute() else self.root / table
        self.rows = read_caption_table(self.captions)
        if not self.rows:
            raise ConfigError(f"caption table {self.captions} has no rows")
        self.length = len(self.rows)

    def units(self, source: int, seed: int, epoch: int) -> list[Unit]:
        """Chunks of a per-epoch permutation of the rows."""
        order = np.random.default_rng([seed, epoch, source, 0xF01D]).permutation(self.length).tolist()
        return [
            Unit(source, index, tuple(order[start : start + FOLDER_UNIT_SIZE]))
            for index, start in enumerate(range(0, self.length, FOLDER_UNIT_SIZE))
        ]

    def read(self, unit: Unit, want: Want | None, report: Report) -> Iterator[RawSample | None]:
        """The unit's rows in order: a RawSample where ``want(position)``, else None (no file is touched)."""
        for position, row in enumerate(unit.rows):
            if want is not None and not want(position):
                yield None
                continue
            image, caption, problem = self.rows[row]
            if not problem and not image:
                problem = "no image path"
            yield RawSample(
                (unit.source, 0, row), image, image_path=self.root / image, caption=caption, problem=problem
            )


Source = ShardSource | FolderSource
SOURCE_KEYS = {"shards": {"type", "pattern", "length"}, "folder": {"type", "root", "captions"}}


def build_source(spec: dict[str, Any], report: Report | None = None) -> Source:
    """A source from its config dict.

    ``{"type": "shards", "pattern": "dir/shard-{000000..000009}.tar", "length": N}`` (``pattern`` may be a
    list; ``length`` optional, counted when absent) or ``{"type": "folder", "root": DIR, "captions": FILE}``.
    """
    if not isinstance(spec, dict) or spec.get("type") not in SOURCE_KEYS:
        raise ConfigError(f"a data source must be a dict with type 'shards' or 'folder', got {spec!r}")
    kind = spec["type"]
    unknown = sorted(set(spec) - SOURCE_KEYS[kind])
    missing = sorted(SOURCE_KEYS[kind] - {"length"} - set(spec))
    if unknown or missing:
        raise ConfigError(
            f"{kind} source {spec!r}: unknown keys {unknown}, missing keys {missing}; "
            f"keys are {sorted(SOURCE_KEYS[kind])}"
        )
    if kind == "shards":
        return ShardSource(spec["pattern"], spec.get("length"), report)
    return FolderSource(spec["root"], spec["captions"])
