"""Inputs of bulk segmentation: image files, folders of images, and webdataset shards.

An argument is a shard pattern when it names ``.tar`` files (brace patterns such as
``shards/data-{000000..000099}.tar`` are expanded); every image member of a shard (``{key}.jpg|jpeg|png|webp``)
is one input, named ``<shard file>/<key>``, and its outputs are named after the key. A folder stands for
the image files directly inside it. Inputs keep the order of the arguments (folders and shards in name
order), which makes the split between ``torchrun`` ranks deterministic.
"""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import braceexpand
import numpy as np
from PIL import Image

from groupvit.data.images import list_images, read_image
from groupvit.data.sources import IMAGE_EXTENSIONS, split_member_name
from groupvit.errors import InputError


@dataclass(frozen=True)
class ImageInput:
    """One image to segment.

    Attributes:
        path: the image file, or the shard holding it.
        member: the tar member name (shards only).
        name: how messages and the manifest call it: the path, or ``<shard>/<key>``.
        stem: output file stem (``<stem>_labels.png``).
    """

    path: Path
    member: str | None
    name: str
    stem: str


def is_shard_argument(argument: str) -> bool:
    """Whether ``argument`` names webdataset shards (``.tar`` files, maybe as a brace pattern)."""
    return argument.endswith(".tar")


def _shard_inputs(pattern: str) -> list[ImageInput]:
    inputs = []
    for url in braceexpand.braceexpand(pattern):
        path = Path(url)
        if not path.is_file():
            raise InputError(f"no such shard: {path} (from {pattern!r}); check the path and the brace pattern")
        try:
            with tarfile.open(path, mode="r:") as tar:
                members = [m.name for m in tar.getmembers() if m.isfile()]
        except (OSError, tarfile.TarError) as err:
            raise InputError(f"cannot read shard {path}: {err}") from None
        for member in members:
            parts = split_member_name(member)
            if parts is not None and parts[1].lower() in IMAGE_EXTENSIONS:
                key = parts[0]
                inputs.append(ImageInput(path, member, f"{path}/{key}", key.replace("/", "_")))
    if not inputs:
        raise InputError(f"shards {pattern!r} hold no images ({', '.join(IMAGE_EXTENSIONS)} members)")
    return inputs


def collect_inputs(arguments: list[str]) -> list[ImageInput]:
    """The images named by the arguments: files, folders (images directly inside), shard patterns.

    Output stems are the file stems (or shard keys); where two collide, files keep their extension
    (``x_jpg``) and shard images get their shard's name as prefix.

    Raises:
        InputError: a missing path, an empty folder or shard, or two inputs that would share outputs.
    """
    inputs: list[ImageInput] = []
    for argument in arguments:
        path = Path(argument)
        if is_shard_argument(argument):
            inputs.extend(_shard_inputs(argument))
        elif path.is_dir():
            images = list_images(path)
            if not images:
                raise InputError(f"folder {path} holds no image files")
            inputs.extend(ImageInput(p, None, str(p), p.stem) for p in images)
        elif path.is_file():
            inputs.append(ImageInput(path, None, str(path), path.stem))
        else:
            raise InputError(f"no such image file or folder: {path}")
    counts = Counter(item.stem for item in inputs)

    def unique(item: ImageInput) -> ImageInput:
        if counts[item.stem] == 1:
            return item
        alternative = f"{item.path.stem}_{item.stem}" if item.member else f"{item.stem}_{item.path.suffix.lstrip('.')}"
        return ImageInput(item.path, item.member, item.name, alternative)

    inputs = [unique(item) for item in inputs]
    repeated = [stem for stem, count in Counter(item.stem for item in inputs).items() if count > 1]
    if repeated:
        raise InputError(f"two inputs would both be written as {repeated[0]}_*.png; segment them in separate runs")
    return inputs


class InputReader:
    """Reads :class:`ImageInput` pixels (``uint8 [H, W, 3]``); shards stay open until :meth:`close`."""

    def __init__(self) -> None:
        self._tars: dict[Path, tarfile.TarFile] = {}

    def read(self, item: ImageInput) -> np.ndarray:
        """The image of ``item``; InputError when it cannot be decoded."""
        if item.member is None:
            return read_image(item.path)
        tar = self._tars.get(item.path)
        if tar is None:
            tar = self._tars[item.path] = tarfile.open(item.path, mode="r:")
        try:
            handle = tar.extractfile(item.member)
            data = handle.read() if handle is not None else b""
            return read_image(Image.open(io.BytesIO(data)))
        except (OSError, tarfile.TarError, KeyError) as err:
            raise InputError(f"cannot decode {item.name}: {err}") from None

    def close(self) -> None:
        for tar in self._tars.values():
            tar.close()
        self._tars.clear()
