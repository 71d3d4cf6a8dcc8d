"""Synthetic captioned scenes: rendering, labels, splits, captions, writers and the ``synth`` command."""

from __future__ import annotations

import argparse
import io
import json
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from groupvit.commands import synth as synth_command
from groupvit.data.synthetic import (
    ALL_SHAPES,
    BACKGROUNDS,
    COLOURS,
    EXTENDED_STUFF_AND_THING_CLASSES,
    EXTENDED_THING_CLASSES,
    HELDOUT_COMBINATIONS,
    SHADING,
    SHAPES,
    SIZE_RANGE,
    STUFF_AND_THING_CLASSES,
    THING_CLASSES,
    SceneGenerator,
    SceneObject,
    background_texture,
    render_scene,
    shape_mask,
    write_shards,
    write_voc_scenes,
)
from groupvit.data.synthetic_captions import (
    article,
    build_caption,
    direction_between,
    plural,
    region_of,
)
from groupvit.errors import ConfigError, InputError, StorageError
from groupvit.segment.visualize import voc_palette


def shape_word(shape: str, caption: str) -> bool:
    return re.search(rf"\b{shape}(s|es)?\b", caption) is not None


@pytest.fixture(scope="module")
def scenes() -> list:
    generator = SceneGenerator(image_size=96, seed=0)
    return list(generator.iter_scenes(0, 150))


# --------------------------------------------------------------------------- vocabularies


def test_vocabularies_and_heldout_pairs():
    assert len(SHAPES) >= 6 and len(COLOURS) >= 8 and len(BACKGROUNDS) >= 5
    assert THING_CLASSES == ("background", *SHAPES)
    assert STUFF_AND_THING_CLASSES == (*SHAPES, *BACKGROUNDS)
    pairs = len(SHAPES) * len(COLOURS)
    assert 0.05 * pairs <= len(HELDOUT_COMBINATIONS) <= 0.15 * pairs
    # Every colour and every shape still has seen pairs: at most one held-out pair uses each.
    colours = [c for c, _ in HELDOUT_COMBINATIONS]
    shapes = [s for _, s in HELDOUT_COMBINATIONS]
    assert len(set(colours)) == len(colours) and len(set(shapes)) == len(shapes)
    assert set(colours) <= set(COLOURS) and set(shapes) <= set(SHAPES)


def test_voc_palette_matches_the_voc_colour_map():
    palette = voc_palette().reshape(-1).tolist()
    assert len(palette) == 768
    assert palette[0:3] == [0, 0, 0]
    assert palette[3:6] == [128, 0, 0]
    assert palette[6:9] == [0, 128, 0]
    assert palette[15 * 3 : 16 * 3] == [192, 128, 128]  # VOC "person"
    assert palette[255 * 3 :] == [224, 224, 192]


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_shape_covers_its_centre_and_stays_inside_its_circle(shape):
    obj = SceneObject("red", shape, (50.0, 50.0), 40.0, angle=0.3)
    (rows, cols), mask = shape_mask(obj, 100)
    ys, xs = np.nonzero(mask)
    ys, xs = ys + rows.start + 0.5, xs + cols.start + 0.5
    assert mask[50 - rows.start, 50 - cols.start]
    assert np.hypot(xs - 50, ys - 50).max() <= 20 * 1.05
    # Each shape fills a sizeable part of its circle, so small objects stay recognisable.
    assert 0.3 < mask.sum() / (np.pi * 20**2) <= 1.02


def test_shape_areas_match_geometry():
    circle = shape_mask(SceneObject("red", "circle", (64.0, 64.0), 80.0), 128)[1]
    assert abs(circle.sum() - np.pi * 40**2) / (np.pi * 40**2) < 0.01
    square = shape_mask(SceneObject("red", "square", (64.0, 64.0), 80.0), 128)[1]
    assert abs(square.sum() - (0.72 * 80) ** 2) / (0.72 * 80) ** 2 < 0.03
    # A square turned by 90 degrees covers the same pixels.
    turned = shape_mask(SceneObject("red", "square", (64.0, 64.0), 80.0, angle=np.pi / 2), 128)[1]
    assert (turned == square).mean() > 0.995


def test_new_shapes_areas_match_geometry():
    # A rhombus of half-diagonals 0.55 r and r has area 2 * 0.55 r^2; a hexagon of circumradius r, 3 sqrt(3) / 2 r^2.
    window, diamond = shape_mask(SceneObject("red", "diamond", (64.0, 64.0), 80.0), 128)
    assert abs(diamond.sum() - 2 * 0.55 * 40**2) / (2 * 0.55 * 40**2) < 0.02
    full = np.zeros((128, 128), dtype=bool)
    full[window] = diamond
    assert full[64 - 30, 64] and not full[64, 64 - 30]  # tall, not wide: 30 px is 0.75 r, beyond 0.55 r across
    hexagon = shape_mask(SceneObject("red", "hexagon", (64.0, 64.0), 80.0), 128)[1]
    assert abs(hexagon.sum() - 1.5 * np.sqrt(3) * 40**2) / (1.5 * np.sqrt(3) * 40**2) < 0.02


def test_extended_scenes_hold_the_new_shapes_with_their_own_ids():
    assert EXTENDED_THING_CLASSES == ("background", *SHAPES, "diamond", "hexagon")
    assert EXTENDED_STUFF_AND_THING_CLASSES == (*STUFF_AND_THING_CLASSES, "diamond", "hexagon")
    scenes = list(SceneGenerator(image_size=64, seed=2, shapes="extended", twins=True).iter_scenes(0, 60))
    drawn = {obj.shape for scene in scenes for obj in scene.objects}
    assert drawn == set(ALL_SHAPES)
    for scene in scenes:
        for k, obj in enumerate(scene.objects, start=1):
            pixels = scene.instances == k
            thing = ALL_SHAPES.index(obj.shape) + 1
            assert (scene.labels[pixels] == thing).all()
            assert (scene.stuff_labels[pixels] == EXTENDED_STUFF_AND_THING_CLASSES.index(obj.shape)).all()
            if obj.mentioned and obj.area:
                assert shape_word(obj.shape, scene.caption)
        background = EXTENDED_STUFF_AND_THING_CLASSES.index(scene.background)
        assert (scene.stuff_labels[scene.instances == 0] == background).all()
    standard = SceneGenerator(image_size=64, seed=2).iter_scenes(0, 60)
    assert max(int(scene.labels.max()) for scene in standard) <= len(SHAPES)
    with pytest.raises(ConfigError, match="unknown shape set 'more'"):
        SceneGenerator(shapes="more")


def test_textures_are_textured_and_far_from_object_colours():
    colours = np.array(list(COLOURS.values()), dtype=np.float64)
    for name in BACKGROUNDS:
        for seed in range(4):
            texture = background_texture(name, 96, np.random.default_rng(seed))
            assert texture.shape == (96, 96, 3) and texture.dtype == np.uint8
            luminance = texture.astype(np.float64).mean(-1)
            assert luminance.std() > 6, name
            pixels = texture.reshape(-1, 3).astype(np.float64)
            distance = np.abs(pixels[:, None, :] - colours[None]).sum(-1)
            assert distance.min() > 60, name


def test_scene_arrays_and_deterministic_generation():
    generator = SceneGenerator(image_size=128, seed=7)
    first, again = generator.sample(3), SceneGenerator(image_size=128, seed=7).sample(3)
    assert first.image.shape == (128, 128, 3) and first.image.dtype == np.uint8
    for array in (first.labels, first.stuff_labels, first.instances):
        assert array.shape == (128, 128) and array.dtype == np.uint8
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.caption == again.caption and first.objects == again.objects
    other = generator.sample(4)
    assert not np.array_equal(first.image, other.image)
    assert not np.array_equal(first.image, SceneGenerator(image_size=128, seed=8).sample(3).image)
    big = SceneGenerator(image_size=256).sample(0)
    assert big.image.shape == (256, 256, 3)


def test_labels_agree_with_the_drawn_image(scenes):
    for scene in scenes:
        assert 1 <= len(scene.objects) <= 3
        bg_id = len(SHAPES) + BACKGROUNDS.index(scene.background)
        np.testing.assert_array_equal(scene.labels > 0, scene.instances > 0)
        expected_stuff = np.where(scene.labels > 0, scene.labels.astype(int) - 1, bg_id)
        np.testing.assert_array_equal(scene.stuff_labels, expected_stuff)
        for k, obj in enumerate(scene.objects, start=1):
            region = scene.instances == k
            assert region.sum() == obj.area > 0
            assert np.all(scene.labels[region] == SHAPES.index(obj.shape) + 1)
            # Shading is linear about the centre and anti-aliasing touches the rim only: the median stays
            # within the colour jitter (12) of the named colour.
            median = np.median(scene.image[region].astype(np.float64), axis=0)
            assert np.abs(median - COLOURS[obj.colour]).max() <= 16, (obj, median)
            ys, xs = np.nonzero(region)
            assert obj.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_objects_stay_at_least_half_visible_and_sized(scenes):
    for scene in scenes:
        side = scene.image.shape[0]
        for obj in scene.objects:
            assert SIZE_RANGE[0] * side <= obj.size <= SIZE_RANGE[1] * side
            full = shape_mask(obj, side)[1].sum()
            assert obj.area >= 0.5 * full


def test_occlusion_paints_later_objects_over_earlier_ones():
    hidden = SceneObject("red", "circle", (64.0, 64.0), 20.0)
    partly = SceneObject("green", "star", (30.0, 40.0), 40.0)
    cover = SceneObject("blue", "square", (64.0, 64.0), 80.0)
    scene = render_scene([hidden, partly, cover], "grass", image_size=128, seed=0)
    circle, star, square = scene.objects
    assert circle.area == 0 and circle.box is None
    assert not np.any(scene.labels == SHAPES.index("circle") + 1)
    assert not shape_word("circle", scene.caption)
    # The star loses exactly the pixels the square paints over it.
    (sr, sc), star_mask = shape_mask(partly, 128)
    star_full = np.zeros((128, 128), dtype=bool)
    star_full[sr, sc] = star_mask
    (qr, qc), square_mask = shape_mask(cover, 128)
    square_full = np.zeros((128, 128), dtype=bool)
    square_full[qr, qc] = square_mask
    assert 0 < star.area == (star_full & ~square_full).sum() < star_full.sum()
    assert square.area == square_full.sum()
    # Inside the square (its mask eroded by one pixel: no anti-aliased rim) only the square's blue shows,
    # shaded by at most SHADING of each channel.
    interior = np.zeros_like(square_full)
    interior[1:-1, 1:-1] = (square_full[1:-1, 1:-1] & square_full[:-2, 1:-1] & square_full[2:, 1:-1]
                            & square_full[1:-1, :-2] & square_full[1:-1, 2:])
    blue = np.array(COLOURS["blue"], dtype=np.float64)
    deviation = np.abs(scene.image[interior].astype(np.float64) - blue)
    assert interior.sum() > 0.8 * square_full.sum()
    assert np.all(deviation <= SHADING * blue + 1)


# --------------------------------------------------------------------------- splits


def test_heldout_pairs_never_appear_in_training():
    generator = SceneGenerator(image_size=48, seed=0, split="train")
    seen = set()
    for scene in generator.iter_scenes(0, 2000):
        for obj in scene.objects:
            assert not obj.heldout, (scene.index, obj)
            seen.add((obj.colour, obj.shape))
    assert len(seen) == len(COLOURS) * len(SHAPES) - len(HELDOUT_COMBINATIONS)


def test_evaluation_splits():
    heldout = SceneGenerator(image_size=48, seed=1, split="eval-heldout")
    for scene in heldout.iter_scenes(0, 200):
        assert any(obj.heldout and obj.area > 0 for obj in scene.objects), scene.index
    seen = SceneGenerator(image_size=48, seed=1, split="eval-seen")
    assert not any(obj.heldout for scene in seen.iter_scenes(0, 200) for obj in scene.objects)
    every = SceneGenerator(image_size=48, seed=1, split="eval-all")
    assert any(obj.heldout for scene in every.iter_scenes(0, 200) for obj in scene.objects)
    # Splits draw different scenes from the same seed and index.
    assert not np.array_equal(heldout.sample(0).image, seen.sample(0).image)


def test_generator_rejects_bad_settings():
    with pytest.raises(ConfigError):
        SceneGenerator(split="test")
    with pytest.raises(ConfigError):
        SceneGenerator(image_size=16)
    with pytest.raises(ConfigError):
        SceneGenerator(min_objects=3, max_objects=2)
    with pytest.raises(ConfigError):
        SceneGenerator(caption_drop_rate=1.0)
    with pytest.raises(InputError):
        SceneGenerator().sample(-1)


# --------------------------------------------------------------------------- captions


def test_captions_name_every_visible_mentioned_shape(scenes):
    for scene in scenes:
        mentioned = [obj for obj in scene.objects if obj.mentioned]
        assert mentioned, scene.index
        for obj in mentioned:
            assert shape_word(obj.shape, scene.caption), (scene.caption, obj)
        assert re.fullmatch(r"[a-z ,.]+", scene.caption), scene.caption


def test_caption_drop_rate_is_about_the_requested_rate():
    generator = SceneGenerator(image_size=48, seed=0, caption_drop_rate=0.05)
    flags = [obj.mentioned for scene in generator.iter_scenes(0, 1500) for obj in scene.objects]
    assert 0.03 < 1 - np.mean(flags) < 0.07
    exhaustive = SceneGenerator(image_size=48, seed=0, caption_drop_rate=0.0)
    assert all(obj.mentioned for scene in exhaustive.iter_scenes(0, 100) for obj in scene.objects)


def test_captions_are_varied(scenes):
    captions = [scene.caption for scene in scenes]
    assert len(set(captions)) > 0.9 * len(captions)
    text = " ".join(captions)
    for word in ("photo", "there", "left", "right", "two"):
        assert word in text
    assert any(bg in text for bg in BACKGROUNDS) and any(
        not any(b in c for b in BACKGROUNDS) for c in captions
    )


def obj(colour: str, shape: str, x: float, y: float) -> SceneObject:
    return SceneObject(colour, shape, (x, y), 30.0)


def test_caption_counts_and_plurals():
    objects = [obj("red", "circle", 20, 64), obj("red", "circle", 40, 30), obj("blue", "cross", 100, 64)]
    rng = np.random.default_rng(0)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        caption = build_caption(objects, "sand", 128, rng, form="list", use_colour=True, name_background=True)
        assert "two red circles" in caption and re.search(r"\b(a|one) blue cross\b", caption), caption
        assert "sand" in caption
        caption = build_caption(
            objects, "sand", 128, rng, form="there", use_colour=False, name_background=False
        )
        assert "two circles" in caption and re.search(r"\b(a|one) cross\b", caption), caption
        assert "red" not in caption and "sand" not in caption
    same_shape = [obj("red", "star", 20, 20), obj("blue", "star", 100, 100), obj("green", "star", 60, 60)]
    caption = build_caption(
        same_shape, "sky", 128, rng, form="photo", use_colour=False, name_background=False
    )
    assert "three stars" in caption
    assert plural("cross") == "crosses" and plural("hexagon") == "hexagons"
    assert article("orange") == "an" and article("red") == "a"


def test_caption_relations_follow_positions():
    left, right = obj("red", "circle", 20, 64), obj("blue", "star", 100, 64)
    allowed = {
        "a red circle to the left of a blue star",
        "a red circle left of a blue star",
        "a blue star to the right of a red circle",
        "a blue star right of a red circle",
        "a red circle next to a blue star",
        "a red circle beside a blue star",
        "a blue star next to a red circle",
        "a blue star beside a red circle",
    }
    found = set()
    for seed in range(40):
        caption = build_caption(
            [left, right],
            "grass",
            128,
            np.random.default_rng(seed),
            form="relation",
            use_colour=True,
            name_background=False,
        )
        core = re.sub(r"^(a photo of |there is )|\.$", "", caption.replace(" one ", " a ")).replace(
            "one ", "a "
        )
        assert core in allowed, caption
        found.add(core)
    assert any("left" in c for c in found) and any("right" in c for c in found)

    top, bottom = obj("red", "circle", 64, 15), obj("blue", "star", 60, 110)
    for seed in range(20):
        caption = build_caption([top, bottom], "grass", 128, np.random.default_rng(seed), form="relation")
        assert re.search(
            r"circle above (a|one) (blue )?star|star (below|under) (a|one) (red )?circle", caption
        )
    # Diagonal and far apart: no direction holds for the pair and they are not near.
    with pytest.raises(InputError):
        build_caption(
            [obj("red", "circle", 5, 5), obj("blue", "star", 123, 123)],
            "sky",
            128,
            np.random.default_rng(0),
            form="relation",
        )
    # A group relation must hold for every member.
    pair = [obj("red", "circle", 10, 60), obj("red", "circle", 25, 70)]
    assert direction_between(pair, [obj("blue", "star", 110, 64)], 128) == "left"
    assert (
        direction_between(pair + [obj("red", "circle", 120, 60)], [obj("blue", "star", 110, 64)], 128) is None
    )


def test_caption_positions_follow_positions():
    assert region_of((10, 64), 128) == (1, 0)
    assert region_of((64, 64), 128) == (1, 1)
    assert region_of((120, 5), 128) == (0, 2)
    cases = {
        (10, 64): r"on the left( side)?",
        (64, 10): r"(at|near) the top",
        (118, 118): r"in the (bottom|lower) right corner",
        (64, 64): r"in the (center|middle)",
    }
    for (x, y), pattern in cases.items():
        for seed in range(5):
            caption = build_caption(
                [obj("purple", "hexagon", x, y)], "brick", 128, np.random.default_rng(seed), form="position"
            )
            assert re.search(rf"hexagon {pattern}\b", caption), caption
    with pytest.raises(InputError):  # two circles in different regions have no single position
        build_caption(
            [obj("red", "circle", 5, 5), obj("red", "circle", 120, 120)],
            "sky",
            128,
            np.random.default_rng(0),
            form="position",
            use_colour=True,
        )


# --------------------------------------------------------------------------- writers


def test_shards_round_trip(tmp_path):
    paths = write_shards(tmp_path / "shards", 25, 10, seed=3, image_size=48, progress=False)
    assert [p.name for p in paths] == ["synth-000000.tar", "synth-000001.tar", "synth-000002.tar"]
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [p.name for p in paths]
    generator = SceneGenerator(image_size=48, seed=3)
    keys = []
    for path in paths:
        with tarfile.open(path) as tar:
            names = tar.getnames()
            shard_keys = sorted({name.split(".")[0] for name in names})
            assert sorted(names) == sorted(
                [f"{k}.png" for k in shard_keys] + [f"{k}.txt" for k in shard_keys]
            )
            for key in shard_keys:
                scene = generator.sample(int(key))
                image = np.array(Image.open(io.BytesIO(tar.extractfile(f"{key}.png").read())))
                np.testing.assert_array_equal(image, scene.image)
                assert tar.extractfile(f"{key}.txt").read().decode() == scene.caption
            keys += shard_keys
    assert keys == [f"{i:09d}" for i in range(25)]


def test_shards_read_with_webdataset_and_parallel_writes_match(tmp_path):
    wds = pytest.importorskip("webdataset")
    serial = write_shards(tmp_path / "a", 12, 5, seed=0, image_size=48, progress=False)
    parallel = write_shards(tmp_path / "b", 12, 5, seed=0, image_size=48, workers=2, progress=False)
    assert [p.read_bytes() for p in serial] == [p.read_bytes() for p in parallel]
    dataset = (
        wds.WebDataset([str(p) for p in serial], shardshuffle=False).decode("rgb8").to_tuple("__key__", "txt")
    )
    assert [key for key, _ in dataset] == [f"{i:09d}" for i in range(12)]


def test_voc_layout_round_trips(tmp_path):
    root = write_voc_scenes(tmp_path / "voc", 4, seed=2, split="eval-heldout", image_size=64, progress=False)
    voc = root / "VOC2012"
    ids = (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    assert ids == [f"heldout_{i:06d}" for i in range(4)]
    classes = json.loads((root / "classes.json").read_text())
    assert classes["classes"] == list(THING_CLASSES) and classes["background"] is True
    stuff = json.loads((root / "classes_stuff.json").read_text())
    assert stuff["classes"] == list(STUFF_AND_THING_CLASSES) and stuff["background"] is False
    captions = json.loads((root / "captions.json").read_text())
    objects = json.loads((root / "objects.json").read_text())
    generator = SceneGenerator(image_size=64, seed=2, split="eval-heldout", caption_drop_rate=0.0)
    for index, scene_id in enumerate(ids):
        scene = generator.sample(index)
        label = Image.open(voc / "SegmentationClass" / f"{scene_id}.png")
        assert label.mode == "P" and label.getpalette()[3:6] == [128, 0, 0]
        np.testing.assert_array_equal(np.array(label), scene.labels)
        np.testing.assert_array_equal(
            np.array(Image.open(voc / "SegmentationClassStuff" / f"{scene_id}.png")), scene.stuff_labels
        )
        image = np.array(Image.open(voc / "JPEGImages" / f"{scene_id}.jpg").convert("RGB"))
        assert image.shape == (64, 64, 3)
        assert np.abs(image.astype(int) - scene.image).mean() < 6
        assert captions[scene_id] == scene.caption
        assert any(o["heldout"] for o in objects[scene_id])


# --------------------------------------------------------------------------- command


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    synth_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_command_writes_shards_and_voc(tmp_path, capsys):
    assert (
        synth_command.run(
            parse(
                ["train", str(tmp_path / "t"), "--num", "7", "--shard-size", "3", "--size", "48", "--quiet"]
            )
        )
        == 0
    )
    assert "synth-{000000..000002}.tar" in capsys.readouterr().out
    assert len(list((tmp_path / "t").glob("*.tar"))) == 3
    assert (
        synth_command.run(
            parse(["eval", str(tmp_path / "e"), "--num", "2", "--split", "seen", "--size", "48", "--quiet"])
        )
        == 0
    )
    assert str(tmp_path / "e") in capsys.readouterr().out
    assert (tmp_path / "e/VOC2012/ImageSets/Segmentation/val.txt").read_text().split() == [
        "seen_000000",
        "seen_000001",
    ]


def test_command_twins_option_writes_the_generators_captions(tmp_path):
    assert parse(["train", "out", "--num", "2", "--twins"]).twins == "all"
    assert parse(["train", "out", "--num", "2"]).twins is None
    argv = ["train", str(tmp_path), "--num", "4", "--size", "48", "--twins", "one", "--quiet"]
    assert synth_command.run(parse(argv)) == 0
    with tarfile.open(tmp_path / "synth-000000.tar") as tar:
        captions = [tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt")]
    gen = SceneGenerator(image_size=48, twins=True, twin_shapes="one", max_objects=4)
    assert captions == [gen.sample(i).caption for i in range(4)]


def test_command_rejects_bad_arguments(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = [
        ["train", str(tmp_path / "t"), "--num", "-5"],
        ["eval", str(tmp_path / "e"), "--num", "0"],
        ["train", str(tmp_path / "t"), "--num", "5", "--shard-size", "0"],
        ["train", str(tmp_path / "t"), "--num", "5", "--size", "16"],
    ]
    for argv in bad:
        with pytest.raises(InputError):
            synth_command.run(parse(argv))
    for argv in (["train", str(blocker / "out"), "--num", "5", "--quiet"],
                 ["eval", str(blocker / "out"), "--num", "5", "--quiet"]):
        with pytest.raises(StorageError, match="a file stands where a folder should be"):
            synth_command.run(parse(argv))
    assert not (tmp_path / "t").exists() and not (tmp_path / "e").exists()


def test_shape_twins_share_layout_colours_and_background_but_not_shapes():
    gen = SceneGenerator(image_size=64, seed=3, twins=True)
    for index in range(0, 40, 2):
        scene, twin = gen.sample(index), gen.sample(index + 1)
        assert twin.background == scene.background
        assert [(o.colour, o.center, o.size, o.angle) for o in twin.objects] == [
            (o.colour, o.center, o.size, o.angle) for o in scene.objects
        ]
        assert all(a.shape != b.shape for a, b in zip(scene.objects, twin.objects, strict=True))
        assert not any(o.heldout for o in twin.objects)
        assert gen.sample(index + 1).caption == twin.caption  # deterministic


def test_one_shape_twins_change_one_named_object():
    gen = SceneGenerator(image_size=64, seed=3, twins=True, twin_shapes="one", max_objects=4)
    every = SceneGenerator(image_size=64, seed=3, twins=True, max_objects=4)
    for index in range(0, 60, 2):
        scene, twin = gen.sample(index), gen.sample(index + 1)
        first = every.sample(index)  # the first of a pair does not depend on twin_shapes
        assert scene.caption == first.caption and np.array_equal(scene.image, first.image)
        assert twin.background == scene.background
        assert [(o.colour, o.center, o.size, o.angle) for o in twin.objects] == [
            (o.colour, o.center, o.size, o.angle) for o in scene.objects
        ]
        changed = [n for n, (a, b) in enumerate(zip(scene.objects, twin.objects, strict=True)) if a.shape != b.shape]
        assert len(changed) == 1
        named = [n for n, o in enumerate(scene.objects) if o.mentioned and o.area > 0]
        assert changed[0] in named or not named
        assert not twin.objects[changed[0]].heldout


def _full_mask(obj, size: int) -> np.ndarray:
    (rows, cols), mask = shape_mask(obj, size)
    full = np.zeros((size, size), dtype=bool)
    full[rows, cols] = mask
    return full


@pytest.mark.parametrize("twin_shapes", ["all", "one"])
def test_a_twins_pixels_and_labels_follow_its_new_shapes(twin_shapes):
    size = 64
    gen = SceneGenerator(image_size=size, seed=5, twins=True, twin_shapes=twin_shapes, max_objects=4)
    for index in range(0, 40, 2):
        scene, twin = gen.sample(index), gen.sample(index + 1)
        masks = [_full_mask(obj, size) for obj in twin.objects]
        for n, obj in enumerate(twin.objects):
            visible = masks[n] & ~np.any(masks[n + 1:], axis=0) if n + 1 < len(masks) else masks[n]
            if visible.sum() < 10:
                continue
            # The twin's label map names the twin's shape where the object shows ...
            assert np.mean(twin.labels[visible] == THING_CLASSES.index(obj.shape)) > 0.9
            # ... and where the shape changed, the twin's pixels are repainted.
            if obj.shape != scene.objects[n].shape:
                assert not np.array_equal(twin.labels[visible], scene.labels[visible])
                changed = visible ^ (_full_mask(scene.objects[n], size) & visible)
                if changed.sum() >= 10:
                    assert np.abs(twin.image[changed].astype(int) - scene.image[changed].astype(int)).max() > 0
        if twin_shapes == "one" and any(o.mentioned and o.area > 0 for o in scene.objects):
            assert twin.caption != scene.caption  # the changed object is named: the captions tell the pair apart


def test_unknown_twin_shapes_is_a_config_error():
    with pytest.raises(ConfigError, match="twin_shapes"):
        SceneGenerator(twins=True, twin_shapes="some")


def _without_shapes(caption: str) -> str:
    words = [plural(s) for s in SHAPES] + list(SHAPES)
    return re.sub(r"\b(" + "|".join(words) + r")\b", "SHAPE", caption)


def test_shape_twin_captions_differ_in_shape_words_only():
    gen = SceneGenerator(image_size=64, seed=5, twins=True)
    same = 0
    for index in range(0, 200, 2):
        scene, twin = gen.sample(index), gen.sample(index + 1)
        mentioned = [o for o in scene.objects if o.mentioned and o.area > 0]
        if len(mentioned) == 1 and twin.objects[scene.objects.index(mentioned[0])].area > 0:
            # One object: nothing can regroup, the captions differ in the shape noun alone.
            assert _without_shapes(scene.caption) == _without_shapes(twin.caption), (scene.caption, twin.caption)
            assert scene.caption != twin.caption
        same += _without_shapes(scene.caption) == _without_shapes(twin.caption)
    assert same >= 60  # regrouping (two red circles -> a red star and a red heart) changes the rest


def test_scenes_shards_and_voc_files_are_byte_for_byte_those_of_the_single_module(tmp_path):
    """Scenes of every split, shape set and twin mode, a shard set and a VOC set hash to what the scene code
    gave before it became a package of one module per idea (recorded then)."""
    import hashlib

    digest = hashlib.sha256()
    for split in ("train", "eval-all", "eval-seen", "eval-heldout"):
        for shapes in ("standard", "extended"):
            for twins, twin_shapes in ((False, "all"), (True, "all"), (True, "one")):
                generator = SceneGenerator(image_size=48, seed=3, split=split, shapes=shapes, twins=twins,
                                           twin_shapes=twin_shapes)
                for index in range(4):
                    scene = generator.sample(index)
                    for array in (scene.image, scene.labels, scene.stuff_labels, scene.instances):
                        digest.update(array.tobytes())
                    digest.update(repr((scene.caption, scene.background, scene.objects)).encode())
    write_shards(tmp_path / "sh", 6, samples_per_shard=4, seed=2, image_size=32, twins=True)
    write_voc_scenes(tmp_path / "voc", 3, seed=5, image_size=32)
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(tmp_path)).encode())
        digest.update(path.read_bytes())
    assert digest.hexdigest() == "2a6adaaf441c3d6c81cb9de4afa07d95317ee6a5849472f4812ad4b0663b8807"
