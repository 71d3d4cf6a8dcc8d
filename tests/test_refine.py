"""Mask refinement (PAMR, superpixels) and the boundary F-score, on hand-built images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_segmenter import FakeModel, two_stage_maps

from groupvit.errors import InputError
from groupvit.evaluate.boundary import BoundaryCounts, dilate, label_boundaries
from groupvit.segment import Segmenter
from groupvit.segment.refine import check_refine, pamr, pamr_affinity, refine_scores, superpixel_mean, superpixels

RED, BLUE = (200, 40, 40), (40, 40, 200)


def two_colour_image(edge: int, size: int = 32) -> np.ndarray:
    """``uint8 [size, size, 3]``: red on rows ``< edge``, blue below."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:edge], image[edge:] = RED, BLUE
    return image


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("method", ["pamr", "superpixel"])
def test_offset_mask_snaps_to_the_colour_edge(method):
    # The fake model labels rows 0-15 cat and 16-31 dog (16-pixel patches); the colour edge is at row 12,
    # so the unrefined cat mask covers 16 rows for 12 true ones: IoU 0.75.
    image = two_colour_image(edge=12)
    truth = np.zeros((32, 32), dtype=bool)
    truth[:12] = True
    model = FakeModel(two_stage_maps(), groups=[[1, 0, 0], [0, 1, 0]])
    plain = Segmenter(model, ["cat", "dog", "sky"], background=False, mode="whole", short_side=32)(image)
    assert iou(plain.labels == 0, truth) == pytest.approx(0.75)
    refined = Segmenter(model, ["cat", "dog", "sky"], background=False, mode="whole", short_side=32,
                        refine=method)(image)
    assert iou(refined.labels == 0, truth) > 0.95
    assert refined.labels.dtype == plain.labels.dtype and refined.labels.shape == plain.labels.shape
    assert refined.scores.dtype == plain.scores.dtype and refined.scores.shape == plain.scores.shape
    # The segmenter refines the merged scores of the pre-processed image, before the arg-max.
    rgb = torch.from_numpy(image).permute(2, 0, 1).float()
    torch.testing.assert_close(refined.scores, refine_scores(method, rgb, plain.scores), rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["pamr", "superpixel"])
def test_uniform_scores_stay_unchanged(method):
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, 24, 40))).float()
    scores = torch.empty(4, 24, 40)
    scores[:] = torch.tensor([0.1, 0.5, 0.3, 0.1])[:, None, None]
    out = refine_scores(method, image, scores)
    assert out.shape == scores.shape and out.dtype == scores.dtype
    torch.testing.assert_close(out, scores, rtol=0, atol=1e-5)  # float rounding of 10 x 48-term sums


def test_pamr_is_a_convex_combination_that_ignores_the_image_scale():
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.integers(0, 256, (2, 3, 20, 20))).float()
    weights = pamr_affinity(image)
    assert weights.shape == (2, 48, 20, 20)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 20, 20))
    torch.testing.assert_close(pamr_affinity(image / 255), weights, rtol=0, atol=1e-5)
    scores = torch.rand(2, 5, 20, 20)
    out = pamr(image, scores, iterations=3)
    assert out.min() >= scores.min() - 1e-6 and out.max() <= scores.max() + 1e-6
    with pytest.raises(InputError, match="differ"):
        pamr(image, scores[:, :, :10])


def test_pamr_keeps_a_region_of_one_colour_apart_from_its_neighbour():
    # A pixel's weight on a neighbour of another colour is ~e^-10 of that on one of its own colour.
    image = torch.from_numpy(two_colour_image(edge=16)).permute(2, 0, 1).float()[None]
    scores = torch.zeros(1, 2, 32, 32)
    scores[0, 0, :16], scores[0, 1, 16:] = 1.0, 1.0
    torch.testing.assert_close(pamr(image, scores), scores, rtol=0, atol=1e-3)


def test_superpixels_and_their_means():
    image = two_colour_image(edge=12)
    segments = superpixels(image, size=64)
    assert segments.shape == (32, 32) and segments.dtype == np.int64
    assert set(np.unique(segments)) == set(range(int(segments.max()) + 1))
    # No superpixel straddles the colour edge.
    assert not set(np.unique(segments[:12])) & set(np.unique(segments[12:]))
    # Means by hand: regions {0: left column, 1: the rest} of a 2 x 2 map.
    scores = torch.tensor([[[1.0, 2.0], [3.0, 6.0]]])
    out = superpixel_mean(scores, torch.tensor([[0, 1], [0, 1]]))
    torch.testing.assert_close(out, torch.tensor([[[2.0, 4.0], [2.0, 4.0]]]))


def test_refine_names():
    assert check_refine(None) is None and check_refine("none") is None
    assert check_refine("pamr") == "pamr"
    with pytest.raises(InputError, match="refine must be one of"):
        check_refine("crf")
    with pytest.raises(InputError, match="refine must be one of"):
        Segmenter(FakeModel(two_stage_maps(), groups=[[1, 0, 0], [0, 1, 0]]), ["cat"], refine="crf")


def test_boundaries_and_f_score_by_hand():
    truth = np.zeros((8, 8), dtype=np.uint8)
    truth[:, 4:] = 1  # edge between columns 3 and 4: boundary pixels in both columns (16)
    shifted = np.zeros_like(truth)
    shifted[:, 5:] = 1  # one pixel to the right: boundary columns 4 and 5
    np.testing.assert_array_equal(np.where(label_boundaries(truth).any(axis=0))[0], [3, 4])
    exact = BoundaryCounts()
    exact.update(shifted, truth, tolerance=0)
    # Column 4 is on both boundaries: 8 of 16 predicted pixels are matched, and 8 of 16 true ones.
    assert (exact.predicted_matched, exact.predicted, exact.true_matched, exact.true) == (8, 16, 8, 16)
    assert exact.f_score() == pytest.approx(0.5)
    near = BoundaryCounts()
    near.update(shifted, truth, tolerance=1)
    assert near.f_score() == pytest.approx(1.0)
    flat = BoundaryCounts()
    flat.update(np.zeros_like(truth), truth)
    assert flat.f_score() == 0.0
    empty = BoundaryCounts()
    empty.update(np.zeros_like(truth), np.zeros_like(truth))
    assert empty.f_score() == 1.0


def test_ignored_pixels_have_no_boundary_and_dilation_by_hand():
    truth = np.zeros((4, 4), dtype=np.uint8)
    truth[:, 2:] = 255
    counts = BoundaryCounts()
    counts.update(truth.copy(), truth)
    assert counts.true == 4 and counts.predicted == 4  # only the label-0 side of the edge counts
    mask = np.zeros((5, 5), dtype=bool)
    mask[2, 2] = True
    assert dilate(mask, 1).sum() == 9 and dilate(mask, 2).sum() == 25
    with pytest.raises(InputError, match="non-negative"):
        dilate(mask, -1)


def test_refine_option_of_the_commands(tmp_path, capsys):
    from groupvit.cli import main as cli_main
    from groupvit.data.synthetic import SHAPES

    out = tmp_path / "demo"
    assert cli_main(["demo", "--refine", "pamr", "--num", "2", "--show", "0", "--seed", "5", "--out", str(out)]) == 0
    assert "mIoU" in capsys.readouterr().out
    image = tmp_path / "scene.png"
    from PIL import Image

    Image.fromarray(two_colour_image(edge=20, size=64)).save(image)
    for refine in ("none", "superpixel"):
        assert cli_main(["segment", str(image), "--classes", ",".join(SHAPES), "--weights", "synthetic-small",
                         "--mode", "whole", "--short-side", "64", "--refine", refine, "--out",
                         str(tmp_path / refine), "--quiet"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["segment", str(image), "--classes", "circle", "--refine", "crf"])
    assert exit_info.value.code == 2 and "invalid choice: 'crf'" in capsys.readouterr().err


def test_boundary_counts_add_up_over_images():
    truth = np.zeros((8, 8), dtype=np.uint8)
    truth[:, 4:] = 1
    shifted = np.zeros_like(truth)
    shifted[:, 5:] = 1
    counts = BoundaryCounts()
    counts.update(shifted, truth, tolerance=0)  # (8, 16, 8, 16), see above
    counts.update(truth.copy(), truth, tolerance=0)  # a perfect map: (16, 16, 16, 16)
    assert (counts.predicted_matched, counts.predicted, counts.true_matched, counts.true) == (24, 32, 24, 32)
    assert counts.f_score() == pytest.approx(0.75)


def test_segment_and_eval_apply_the_refinement_they_are_given(tmp_path, capsys):
    import json

    from PIL import Image

    from groupvit.cli import main as cli_main
    from groupvit.data.images import read_label_map
    from groupvit.data.synthetic import SHAPES, SceneGenerator
    from groupvit.weights import load_pretrained

    scene = SceneGenerator(image_size=64, seed=4, split="eval-all").sample(0).image
    Image.fromarray(scene).save(tmp_path / "scene.png")
    model = load_pretrained("synthetic-small")
    common = ["--weights", "synthetic-small", "--mode", "whole", "--short-side", "64"]
    for refine in ("none", "pamr"):
        assert cli_main(["segment", str(tmp_path / "scene.png"), "--classes", ",".join(SHAPES), *common,
                         "--refine", refine, "--out", str(tmp_path / refine), "--quiet", "--no-groups"]) == 0
        expected = Segmenter(model, SHAPES, mode="whole", short_side=64, refine=refine)(scene).labels
        np.testing.assert_array_equal(read_label_map(tmp_path / refine / "scene_labels.png"), expected)
    assert cli_main(["synth", "eval", str(tmp_path / "scenes"), "--num", "4", "--size", "64"]) == 0
    mious = {}
    for refine in ("none", "pamr"):
        out = tmp_path / f"eval-{refine}.json"
        assert cli_main(["eval", "--dataset", "voc-layout", "--root", str(tmp_path / "scenes"), *common,
                         "--refine", refine, "--out", str(out), "--quiet"]) == 0
        report = json.loads(out.read_text())
        assert report["settings"]["refine"] == refine
        mious[refine] = report["results"]["mIoU"]
    capsys.readouterr()
    assert mious["none"] != mious["pamr"]  # the refinement reached the segmenter
