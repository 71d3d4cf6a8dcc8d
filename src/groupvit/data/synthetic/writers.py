"""Writers of generated scenes: webdataset training shards and an evaluation set in the PASCAL VOC layout."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from groupvit.data.synthetic.scenes import SceneGenerator
from groupvit.data.synthetic.vocabulary import (
    EXTENDED_STUFF_AND_THING_CLASSES,
    EXTENDED_THING_CLASSES,
    STUFF_AND_THING_CLASSES,
    THING_CLASSES,
)
from groupvit.errors import InputError
from groupvit.fileio import atomic_path, check_writable
from groupvit.segment.visualize import voc_palette


def _png_bytes(array: np.ndarray, palette: list[int] | None = None) -> bytes:
    image = Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _prepare_dir(path: Path) -> Path:
    """Create ``path`` and check it is writable, else raise :class:`~groupvit.errors.StorageError`."""
    return check_writable(path)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_shard(
    path: Path,
    generator: SceneGenerator,
    start: int,
    count: int,
    progress: Callable[[int], object] | None = None,
) -> Path:
    """Write scenes ``start .. start + count - 1`` into one tar; readers never see a partial shard."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for scene in generator.iter_scenes(start, count):
            key = f"{scene.index:09d}"
            _add_member(tar, f"{key}.png", _png_bytes(scene.image))
            _add_member(tar, f"{key}.txt", scene.caption.encode("utf-8"))
            if progress is not None:
                progress(1)
    return path


def _write_shard_job(job: tuple[Path, dict, int, int]) -> Path:
    path, settings, start, count = job
    return _write_shard(path, SceneGenerator(**settings), start, count)


def write_shards(
    out_dir: str | os.PathLike,
    num_samples: int,
    samples_per_shard: int = 1000,
    seed: int = 0,
    image_size: int = 128,
    *,
    split: str = "train",
    min_objects: int = 1,
    max_objects: int = 3,
    caption_drop_rate: float = 0.05,
    prefix: str = "synth",
    workers: int = 1,
    progress: bool = True,
    twins: bool = False,
    twin_shapes: str = "all",
    shapes: str = "standard",
) -> list[Path]:
    """Write scenes ``0 .. num_samples - 1`` as webdataset tar shards ``<prefix>-000000.tar``, ...

    Each shard holds up to ``samples_per_shard`` samples, each as ``{key}.png`` (RGB image) and
    ``{key}.txt`` (UTF-8 caption) with ``key`` the 9-digit scene index. A shard is written to a
    temporary file beside it and renamed when complete. ``workers`` > 1 writes shards in parallel processes
    (the bytes do not depend on it). ``twins`` makes every odd scene the shape twin of the one before,
    with ``twin_shapes`` of its shapes replaced; ``shapes`` picks the shape set (see :class:`SceneGenerator`).
    Returns the shard paths in order.
    """
    if num_samples < 1:
        raise InputError(f"number of samples must be positive, got {num_samples}")
    if samples_per_shard < 1:
        raise InputError(f"samples per shard must be positive, got {samples_per_shard}")
    settings = dict(
        image_size=image_size,
        seed=seed,
        min_objects=min_objects,
        max_objects=max_objects,
        caption_drop_rate=caption_drop_rate,
        split=split,
        twins=twins,
        twin_shapes=twin_shapes,
        shapes=shapes,
    )
    generator = SceneGenerator(**settings)  # validates the settings before anything is written
    out = _prepare_dir(Path(out_dir))
    jobs = [
        (out / f"{prefix}-{shard:06d}.tar", settings, start, min(samples_per_shard, num_samples - start))
        for shard, start in enumerate(range(0, num_samples, samples_per_shard))
    ]
    with tqdm(total=num_samples, desc="synth shards", unit="img", disable=not progress) as bar:
        if workers <= 1:
            return [_write_shard(path, generator, start, count, bar.update) for path, _, start, count in jobs]
        paths = []
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for job, path in zip(jobs, pool.map(_write_shard_job, jobs), strict=True):
                bar.update(job[3])
                paths.append(path)
        return paths


def write_voc_scenes(
    root: str | os.PathLike,
    num_images: int,
    seed: int = 1,
    split: str = "eval-all",
    image_size: int = 128,
    *,
    min_objects: int = 1,
    max_objects: int = 3,
    progress: bool = True,
    shapes: str = "standard",
) -> Path:
    """Write scenes ``0 .. num_images - 1`` of ``split`` in the PASCAL VOC 2012 layout under ``root``.

    Files written (``<id>`` = ``<split>_<6-digit index>``, e.g. ``heldout_000003``)::

        VOC2012/JPEGImages/<id>.jpg                  RGB image, JPEG quality 95
        VOC2012/SegmentationClass/<id>.png           palette PNG, THING_CLASSES ids (0 = background)
        VOC2012/SegmentationClassStuff/<id>.png      palette PNG, STUFF_AND_THING_CLASSES ids
        VOC2012/ImageSets/Segmentation/val.txt       one id per line
        classes.json, classes_stuff.json             {"classes": [...], "background": bool, ...}
        captions.json                                {id: caption}
        objects.json                                 {id: [{colour, shape, box, area, mentioned, heldout}]}

    Labels are exact (a pixel belongs to the object covering its centre), so no pixel carries the ignore value 255.
    Captions mention every object (no caption drop). ``shapes="extended"`` adds the new shapes (their ids
    in ``EXTENDED_THING_CLASSES`` / ``EXTENDED_STUFF_AND_THING_CLASSES``, which the class files then list).
    Returns ``root``.
    """
    if num_images < 1:
        raise InputError(f"number of images must be positive, got {num_images}")
    generator = SceneGenerator(
        image_size=image_size,
        seed=seed,
        min_objects=min_objects,
        max_objects=max_objects,
        caption_drop_rate=0.0,
        split=split,
        shapes=shapes,
    )
    extended = shapes == "extended"
    root = _prepare_dir(Path(root))
    voc = root / "VOC2012"
    folders = {
        name: _prepare_dir(voc / name)
        for name in ("JPEGImages", "SegmentationClass", "SegmentationClassStuff")
    }
    sets = _prepare_dir(voc / "ImageSets" / "Segmentation")
    palette = voc_palette().reshape(-1).tolist()
    ids: list[str] = []
    captions: dict[str, str] = {}
    objects: dict[str, list[dict]] = {}
    tag = split.removeprefix("eval-")
    for scene in tqdm(
        generator.iter_scenes(0, num_images),
        total=num_images,
        desc="synth scenes",
        unit="img",
        disable=not progress,
    ):
        scene_id = f"{tag}_{scene.index:06d}"
        Image.fromarray(scene.image).save(
            folders["JPEGImages"] / f"{scene_id}.jpg", quality=95, subsampling=0
        )
        (folders["SegmentationClass"] / f"{scene_id}.png").write_bytes(_png_bytes(scene.labels, palette))
        (folders["SegmentationClassStuff"] / f"{scene_id}.png").write_bytes(
            _png_bytes(scene.stuff_labels, palette)
        )
        ids.append(scene_id)
        captions[scene_id] = scene.caption
        objects[scene_id] = [
            {
                "colour": o.colour,
                "shape": o.shape,
                "box": list(o.box) if o.box else None,
                "area": o.area,
                "mentioned": o.mentioned,
                "heldout": o.heldout,
            }
            for o in scene.objects
        ]
    (sets / "val.txt").write_text("".join(f"{i}\n" for i in ids))
    settings = {
        "seed": seed,
        "split": split,
        "image_size": image_size,
        "num_images": num_images,
        "ignore_index": 255,
    }
    (root / "classes.json").write_text(
        json.dumps({"classes": list(EXTENDED_THING_CLASSES if extended else THING_CLASSES), "background": True,
                    **settings}, indent=1)
    )
    (root / "classes_stuff.json").write_text(
        json.dumps({"classes": list(EXTENDED_STUFF_AND_THING_CLASSES if extended else STUFF_AND_THING_CLASSES),
                    "background": False, **settings}, indent=1)
    )
    (root / "captions.json").write_text(json.dumps(captions, indent=1))
    (root / "objects.json").write_text(json.dumps(objects))
    return root
