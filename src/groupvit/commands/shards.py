"""``groupvit shards --images DIR --captions FILE --out OUTDIR``: pack captioned images into webdataset shards.

Reads a caption table (CSV with ``file,caption`` columns or JSONL of ``{"image": ..., "caption": ...}``; image
paths relative to ``--images``) and writes ``OUTDIR/<prefix>-000000.tar, ...`` with ``--shard-size`` samples
each: ``{key}.jpg|png|webp`` (the original bytes; other formats re-encoded as PNG) and ``{key}.txt``, with
``key`` the 9-digit index of the sample among those written. Rows whose image is missing or undecodable or
whose caption is empty are skipped and listed. Each shard is written to a temporary file and renamed when
complete. The last line printed is the source entry to put in a training config.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from groupvit.data.sources import read_caption_table
from groupvit.errors import InputError
from groupvit.fileio import atomic_path, check_writable

HELP = "pack a folder of images and a CSV/JSONL caption table into webdataset tar shards"
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
MAX_LISTED_SKIPS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, metavar="DIR", help="folder the caption table's paths start from")
    parser.add_argument("--captions", required=True, metavar="FILE", help="caption table: .csv or .jsonl")
    parser.add_argument("--out", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--prefix", default="shard", help="shard file name prefix (default 'shard')")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace shards with the same prefix already in OUTDIR"
    )


def _encode_sample(path: Path) -> tuple[str, bytes]:
    """``(extension, bytes)`` of an image file, checked to decode; raises OSError/ValueError when it does not."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.format in KEPT_FORMATS:
            return KEPT_FORMATS[image.format], data
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return "png", buffer.getvalue()


def _usable_samples(rows: list[tuple[str, str, str | None]], root: Path, skips: list[str]) -> Iterator[tuple]:
    """``(extension, image bytes, caption)`` of each usable row; every other row is described in ``skips``."""
    for image, caption, problem in rows:
        name = image or "(no image path)"
        if problem:
            skips.append(problem)
        elif not caption.strip():
            skips.append(f"{name}: empty caption")
        else:
            try:
                ext, data = _encode_sample(root / image)
            except Exception as err:  # unreadable file or any Pillow decoding error: skip the row
                skips.append(f"{name}: cannot read image: {type(err).__name__}: {err}")
                continue
            yield ext, data, caption.strip()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def run(args: argparse.Namespace) -> int:
    """Write the shards and print what was written and skipped."""
    root, out = Path(args.images), Path(args.out)
    if args.shard_size < 1:
        raise InputError(f"--shard-size must be positive, got {args.shard_size}")
    if not root.is_dir():
        raise InputError(f"--images {root} is not a folder")
    if "/" in args.prefix or not args.prefix:
        raise InputError(f"--prefix must be a plain file name prefix, got {args.prefix!r}")
    existing = sorted(out.glob(f"{args.prefix}-*.tar")) if out.is_dir() else []
    if existing and not args.overwrite:
        raise InputError(f"{out} already holds {len(existing)} '{args.prefix}-*.tar' shards; pass --overwrite")
    check_writable(out)  # before any image is read
    rows = read_caption_table(args.captions)
    skips: list[str] = []
    samples = _usable_samples(rows, root, skips)
    written: list[Path] = []
    count = 0
    while chunk := list(itertools.islice(samples, args.shard_size)):
        path = out / f"{args.prefix}-{len(written):06d}.tar"
        with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
            for ext, data, caption in chunk:
                key = f"{count:09d}"
                _add_member(tar, f"{key}.{ext}", data)
                _add_member(tar, f"{key}.txt", caption.encode("utf-8"))
                count += 1
        written.append(path)
    for stale in set(existing) - set(written):
        stale.unlink()
    for line in skips[:MAX_LISTED_SKIPS]:
        print(f"skipped {line}")
    if len(skips) > MAX_LISTED_SKIPS:
        print(f"... and {len(skips) - MAX_LISTED_SKIPS} more skipped rows")
    if not written:
        raise InputError(f"no usable image-caption pair among the {len(rows)} rows of {args.captions}")
    print(f"wrote {count} samples in {len(written)} shards to {out} (skipped {len(skips)} of {len(rows)} rows)")
    last = len(written) - 1
    pattern = str(written[0]) if last == 0 else str(out / f"{args.prefix}-{{000000..{last:06d}}}.tar")
    print("source: " + json.dumps({"type": "shards", "pattern": pattern, "length": count}))
    return 0
