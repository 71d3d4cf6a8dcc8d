"""Zero-shot segmenter: hand-built assignment maps and embeddings with label maps worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import groupvit
from groupvit.errors import InputError
from groupvit.model.grouping import Assignment
from groupvit.model.groupvit import ImageEncoding
from groupvit.segment import (
    Segmenter,
    WindowMerger,
    chain_assignments,
    coverage,
    encode_class_names,
    group_class_scores,
    pixel_class_scores,
    upsample_argmax,
    window_grid,
)
from groupvit.segment.segmenter import group_index_map, patch_index_map

E = torch.eye(3)  # text embeddings: cat = e0, dog = e1, sky = e2
CLASSES = ["cat", "dog", "sky"]


class FakeModel(nn.Module):
    """Exposes the three methods the segmenter uses, with outputs fixed by the test.

    Every crop gets ``soft_maps`` (per stage ``[S_i, L_i]``) and ``groups`` (``[G, D]``) unless
    ``per_crop(crop) -> (groups, image)`` picks them from the crop's content. Class ``name``'s text
    embedding for prompt ``template.format(name)`` is ``texts[prompt]``.
    """

    def __init__(self, soft_maps, groups, image=None, texts=None, scale=100.0, patch=16, per_crop=None):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the segmenter a device and dtype
        self.soft_maps = [torch.as_tensor(s, dtype=torch.float32) for s in soft_maps]
        self.groups = torch.as_tensor(groups, dtype=torch.float32) if groups is not None else None
        self.image = torch.as_tensor(image if image is not None else np.ones(3) / math.sqrt(3), dtype=torch.float32)
        default = {f"a photo of a {n}.": E[i] for i, n in enumerate(CLASSES)}
        self.texts = texts or default
        self._scale = scale
        self.patch = patch
        self.per_crop = per_crop
        self.crop_batches: list[tuple[int, ...]] = []

    def scale(self):
        return torch.tensor(self._scale)

    def encode_text(self, tokens, normalize=True):
        rows = []
        for row in tokens:
            matches = [v for prompt, v in self.texts.items() if torch.equal(groupvit.tokenize([prompt])[0], row)]
            assert len(matches) == 1, "unknown prompt"
            rows.append(matches[0])
        out = torch.stack(rows)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_image_groups(self, images, normalize=True):
        self.crop_batches.append(tuple(images.shape))
        batch = images.shape[0]
        grid = (images.shape[2] // self.patch, images.shape[3] // self.patch)
        if self.per_crop is not None:
            pairs = [self.per_crop(crop) for crop in images]
            groups = torch.stack([torch.as_tensor(g, dtype=torch.float32) for g, _ in pairs])
            image = torch.stack([torch.as_tensor(i, dtype=torch.float32) for _, i in pairs])
        else:
            groups = self.groups.expand(batch, -1, -1)
            image = self.image.expand(batch, -1)
        assignments = [Assignment(s.expand(batch, -1, -1), s.expand(batch, -1, -1)) for s in self.soft_maps]
        if normalize:
            groups, image = F.normalize(groups, dim=-1), F.normalize(image, dim=-1)
        return ImageEncoding(image, groups, assignments, grid)


def two_stage_maps():
    """32x32 image, 16-px patches (grid 2x2): stage 0 sends the top patches to groups 0/1, the bottom
    ones to group 2; stage 1 merges groups 0 and 1 into final group A, group 2 into B.

    Chained maps: top patches (0.9, 0.1) over (A, B), bottom ones (0.1, 0.9); upsampled bilinearly,
    A wins exactly on rows 0-15 (source row (y + 0.5) / 16 - 0.5 < 0.5).
    """
    soft0 = torch.tensor([
        [0.9, 0.0, 0.1, 0.0],  # group 0: patch 0 (top left) ...
        [0.0, 0.9, 0.0, 0.1],  # group 1: patch 1 (top right)
        [0.1, 0.1, 0.9, 0.9],  # group 2: the bottom patches
    ])
    soft1 = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # [S1 = 2, S0 = 3]
    return [soft0, soft1]


def image32():
    return np.zeros((32, 32, 3), dtype=np.uint8)


def test_two_stage_grouping_labels_by_hand():
    # A = cat, B = dog, both confident (scale 100): top half cat (1), bottom half dog (2).
    model = FakeModel(two_stage_maps(), groups=[[1, 0, 0], [0, 1, 0]])
    seg = Segmenter(model, CLASSES, mode="whole", short_side=32)
    result = seg(image32())
    expected = np.zeros((32, 32), dtype=np.uint8)
    expected[:16], expected[16:] = 1, 2
    np.testing.assert_array_equal(result.labels, expected)
    assert result.label_names == ("background", "cat", "dog", "sky")
    # Group maps per stage: stage 1 (3 groups) and the final stage (2 groups).
    assert len(result.group_maps) == 2
    np.testing.assert_array_equal(result.group_maps[1], (expected == 2).astype(np.int32))
    assert set(np.unique(result.group_maps[0])) == {0, 1, 2}
    assert (result.group_maps[0][16:] == 2).all() and (result.group_maps[0][:16, :8] == 0).all()


def test_background_threshold_by_hand():
    # B halfway between dog and sky: P = (~0, .5, .5), Q = P * softmax over the kept classes = (0, .25, .25).
    model = FakeModel(two_stage_maps(), groups=[[1, 0, 0], [0, 1, 1]])
    labels = Segmenter(model, CLASSES, mode="whole", short_side=32)(image32()).labels
    assert (labels[:16] == 1).all() and (labels[16:] == 0).all()
    # Threshold below 0.25: B stays foreground (dog; the dog/sky tie goes to the lower id).
    labels = Segmenter(model, CLASSES, mode="whole", short_side=32, bg_thresh=0.2)(image32()).labels
    assert (labels[16:] == 2).all()
    # Both groups ambiguous: Q.max() = 0.25 < 0.95 caps the threshold, so the best groups stay foreground.
    model = FakeModel(two_stage_maps(), groups=[[1, 1, 0], [0, 1, 1]])
    labels = Segmenter(model, CLASSES, mode="whole", short_side=32)(image32()).labels
    assert (labels[:16] == 1).all() and (labels[16:] == 2).all()
    # Without background, class i is label i.
    model = FakeModel(two_stage_maps(), groups=[[1, 0, 0], [0, 1, 1]])
    result = Segmenter(model, CLASSES, mode="whole", short_side=32, background=False)(image32())
    assert result.label_names == ("cat", "dog", "sky")
    assert (result.labels[:16] == 0).all() and (result.labels[16:] == 1).all()


def test_top_k_filter_by_hand():
    # The image embedding is dog: with top_k = 1 only dog survives; group A (cat) keeps
    # Q_A = P_A(dog) ~ e^-100 < 0.95 -> background, group B stays dog.
    model = FakeModel(two_stage_maps(), groups=[[1, 0, 0], [0, 1, 0]], image=[0, 1, 0])
    labels = Segmenter(model, CLASSES, mode="whole", short_side=32, top_k=1)(image32()).labels
    assert (labels[:16] == 0).all() and (labels[16:] == 2).all()
    labels = Segmenter(model, CLASSES, mode="whole", short_side=32, top_k=3)(image32()).labels
    assert (labels[:16] == 1).all() and (labels[16:] == 2).all()


def test_group_class_scores_formula_by_hand():
    # s = 1, group logits (2, 1, 0); the image keeps its top 2 classes (0 and 1).
    groups = torch.tensor([[[2.0, 1.0, 0.0]]])
    image = torch.tensor([[1.0, 0.5, 0.0]])
    q = group_class_scores(groups, image, torch.eye(3), scale=1.0, top_k=2)[0, 0]
    total = math.exp(2) + math.exp(1) + 1
    p = [math.exp(2) / total, math.exp(1) / total, 1 / total]
    kept = [math.exp(2) / (math.exp(2) + math.exp(1)), math.exp(1) / (math.exp(2) + math.exp(1))]
    torch.testing.assert_close(q, torch.tensor([kept[0] * p[0], kept[1] * p[1], 0.0]))


def test_pixel_scores_background_channel_by_hand():
    q = torch.tensor([[[0.3, 0.6], [0.2, 0.1]]])  # [B=1, G=2, N=2]
    index = torch.tensor([[[0, 1]]])  # two pixels: groups 0 and 1
    out = pixel_class_scores(index, q, background=True, bg_thresh=0.95)
    assert out.shape == (1, 3, 1, 2)
    # threshold = min(0.95, Q.max() = 0.6): pixel 0 (best 0.6) stays, pixel 1 (best 0.2) is background.
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.0, 0.3, 0.6]))
    torch.testing.assert_close(out[0, :, 0, 1], torch.tensor([1.0, 0.2, 0.1]))
    out = pixel_class_scores(index, q, background=True, bg_thresh=0.15)
    assert out[0, 0, 0].tolist() == [0.0, 0.0]
    torch.testing.assert_close(pixel_class_scores(index, q, background=False, bg_thresh=0.95), out[:, 1:])


def test_pixel_scores_equal_the_per_pixel_formula():
    # Per pixel: gather the group's scores, background where their max is below min(thresh, Q.max()).
    gen = torch.Generator().manual_seed(0)
    q = torch.rand(2, 5, 4, generator=gen)
    index = torch.randint(0, 5, (2, 7, 9), generator=gen)
    out = pixel_class_scores(index, q, background=True, bg_thresh=0.9)
    gathered = torch.stack([q[b][index[b]] for b in range(2)]).permute(0, 3, 1, 2)
    threshold = q.amax(dim=(1, 2)).clamp(max=0.9).view(2, 1, 1)
    assert out.is_contiguous()
    assert torch.equal(out[:, 1:], gathered)
    assert torch.equal(out[:, 0], (gathered.amax(dim=1) < threshold).float())


def test_window_grid_and_counts_by_hand_448x700():
    windows = window_grid(448, 700, window=448, stride=224)
    # Columns: max(700 - 448 + 223, 0) // 224 + 1 = 3 positions; the last is clamped to the border.
    assert windows == [(0, 448, 0, 448), (0, 448, 224, 672), (0, 448, 252, 700)]
    count = coverage(448, 700, windows)
    assert (count[:, :224] == 1).all() and (count[:, 224:252] == 2).all() and (count[:, 252:448] == 3).all()
    assert (count[:, 448:672] == 2).all() and (count[:, 672:] == 1).all()
    # Rows: one position; a crop larger than the image is cut to it.
    assert window_grid(300, 300) == [(0, 300, 0, 300)]
    assert window_grid(449, 448) == [(0, 448, 0, 448), (1, 449, 0, 448)]
    with pytest.raises(InputError, match="stride"):
        window_grid(448, 448, window=100, stride=200)


def test_multi_window_averaging_at_borders():
    """448x700 image (no resize at short side 448): crops at x = 0, 224, 252 see different groups.

    One group per crop, so every pixel of crop k has Q_k = P_k * P_k (all 3 classes kept), with
    P_k = softmax(s * normalised group embedding · class embeddings). Merged scores are the mean of
    the Q_k of the crops covering the column, worked out per column range.
    """
    width, scale = 700, 10.0
    image = np.zeros((448, width, 3), dtype=np.uint8)
    image[:, :, 0] = (np.arange(width) // 4).astype(np.uint8)  # the crop's first column tells where it is
    embeds = {0: [3.0, 1.0, 0.0], 224: [0.0, 2.0, 1.5], 252: [0.0, 0.5, 2.5]}  # crop x1 -> group embedding

    def per_crop(crop):
        red = crop[0, 0, 0] * 58.395 + 123.675
        return [embeds[int(round(red.item())) * 4]], [1.0, 1.0, 1.0]

    model = FakeModel([torch.ones(1, 28 * 28)], groups=None, scale=scale, per_crop=per_crop)
    result = Segmenter(model, CLASSES, background=False, top_k=3, mode="slide")(image, groups=False)
    q = {x1: (scale * F.normalize(torch.tensor(v), dim=0)).softmax(0) ** 2 for x1, v in embeds.items()}
    ranges = {(0, 224): [0], (224, 252): [0, 224], (252, 448): [0, 224, 252], (448, 672): [224, 252],
              (672, 700): [252]}
    assert result.scores.shape == (3, 448, width)
    for (a, b), crops in ranges.items():
        expected = torch.stack([q[c] for c in crops]).mean(0)
        torch.testing.assert_close(result.scores[:, 100, a], expected)
        torch.testing.assert_close(result.scores[:, 300, b - 1], expected)
        assert (result.labels[:, a:b] == int(expected.argmax())).all()
    # Crop 1 alone says dog, but nowhere is it alone: averaged, cat wins left of 252, sky right of it.
    assert list(result.labels[0, [0, 230, 251, 252, 300, 500, 690]]) == [0, 0, 0, 2, 2, 2, 2]
    assert model.crop_batches == [(3, 3, 448, 448)]  # all three crops in one batched forward


def test_slide_group_maps_come_from_one_pass_without_window_seams():
    torch.manual_seed(0)
    model = groupvit.create_model("tiny", vision__patch_size=16)
    image = np.random.default_rng(3).integers(0, 256, (60, 100, 3), dtype=np.uint8)
    slide = Segmenter(model, CLASSES, short_side=64, window=64, stride=32)(image)
    whole = Segmenter(model, CLASSES, short_side=64, mode="whole")(image)
    assert len(slide.group_maps) == len(whole.group_maps) == 2
    for stage, groups in enumerate(model.config.vision.num_output_groups):
        np.testing.assert_array_equal(slide.group_maps[stage], whole.group_maps[stage])
        assert slide.group_maps[stage].max() < groups
    assert not np.array_equal(slide.scores.numpy(), whole.scores.numpy())  # the labels did come from windows


def test_batching_across_images_gives_the_same_results():
    model = groupvit.create_model("tiny", vision__patch_size=16)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 70), (64, 64), (50, 30)]]
    seg = Segmenter(model, CLASSES, short_side=64, window=64, stride=32, batch_size=4)
    together = seg(images)
    alone = [Segmenter(model, CLASSES, short_side=64, window=64, stride=32, batch_size=1)(im) for im in images]
    for a, b in zip(together, alone, strict=True):
        assert a.labels.shape == b.labels.shape
        np.testing.assert_array_equal(a.labels, b.labels)
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)
    assert together[0].labels.shape == (40, 70)


def test_model_mode_is_restored():
    model = groupvit.create_model("tiny", vision__patch_size=16).train()
    seg = Segmenter(model, CLASSES, short_side=32, window=32, stride=16)
    seg(np.zeros((10, 10, 3), dtype=np.uint8))
    assert model.training


def test_tiny_image_and_input_kinds(tmp_path):
    from PIL import Image

    model = groupvit.create_model("tiny", vision__patch_size=16)
    seg = Segmenter(model, "cat, dog", short_side=64, window=64, stride=32)
    assert seg.class_names == ("cat", "dog")
    assert seg(np.zeros((1, 1, 3), dtype=np.uint8)).labels.shape == (1, 1)
    Image.fromarray(np.full((20, 30), 128, dtype=np.uint8)).save(tmp_path / "gray.png")
    assert seg(tmp_path / "gray.png").labels.shape == (20, 30)
    assert seg(Image.new("RGBA", (9, 5))).labels.shape == (5, 9)
    with pytest.raises(InputError, match="too elongated"):
        seg(np.zeros((1, 200, 3), dtype=np.uint8))


def test_models_with_one_stage_or_none():
    # One stage, one group per patch (0.7 on its own patch, 0.1 elsewhere): the argmax of the
    # upsampled maps is the nearest patch, so the 2x2 patch quadrants get cat, dog / sky, cat.
    expected = np.array([[1, 2], [3, 1]]).repeat(16, 0).repeat(16, 1)
    soft0 = 0.1 + 0.6 * torch.eye(4)
    model = FakeModel([soft0], groups=[[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    result = Segmenter(model, CLASSES, mode="whole", short_side=32)(image32())
    np.testing.assert_array_equal(result.labels, expected)
    assert len(result.group_maps) == 1
    np.testing.assert_array_equal(result.group_maps[0], np.array([[0, 1], [2, 3]]).repeat(16, 0).repeat(16, 1))
    # No grouping (plain ViT): every patch is its own group, the same quadrants.
    model = FakeModel([], groups=[[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    result = Segmenter(model, CLASSES, mode="whole", short_side=32)(image32())
    np.testing.assert_array_equal(result.labels, expected)
    assert result.group_maps == []


@pytest.mark.parametrize(("grid", "size"), [((2, 2), (32, 32)), ((3, 4), (37, 50)), ((7, 9), (112, 150)),
                                            ((5, 3), (5, 3)), ((2, 3), (9, 4)), ((6, 5), (97, 83))])
def test_patch_index_map_equals_argmax_of_upsampled_identity(grid, size):
    count = grid[0] * grid[1]
    identity = torch.eye(count)[None]
    expected = group_index_map(identity, grid, size)[0]
    torch.testing.assert_close(patch_index_map(grid, size, torch.device("cpu")), expected)


def test_chain_assignments_multiplies_stage_maps():
    soft0, soft1 = two_stage_maps()
    chains = chain_assignments([soft0[None], soft1[None]])
    torch.testing.assert_close(chains[0][0], soft0.t())
    torch.testing.assert_close(chains[1][0], torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]]))


def test_class_embeddings_average_unnormalised_features():
    texts = {"a {}.".format("cat"): torch.tensor([3.0, 0.0]), "the {}.".format("cat"): torch.tensor([0.0, 1.0])}
    model = FakeModel([], groups=[[1, 0]], texts=texts)
    out = encode_class_names(model, ["cat"], templates=["a {}.", "the {}."])
    # mean (1.5, 0.5) then L2: (0.9487, 0.3162); normalising each template first would give (0.707, 0.707).
    torch.testing.assert_close(out, torch.tensor([[1.5, 0.5]]) / math.sqrt(2.5))


def test_bad_vocabularies_and_settings():
    model = groupvit.create_model("tiny", vision__patch_size=16)
    with pytest.raises(InputError, match="empty"):
        Segmenter(model, [])
    with pytest.raises(InputError, match="empty"):
        Segmenter(model, "")
    with pytest.raises(InputError, match="twice"):
        Segmenter(model, ["Cat", "dog", "cat"])
    with pytest.raises(InputError, match="background"):
        Segmenter(model, ["background", "dog"])
    assert Segmenter(model, ["background", "dog"], background=False).num_labels == 2
    with pytest.raises(InputError, match="mode"):
        Segmenter(model, ["dog"], mode="tiles")
    with pytest.raises(InputError, match="stride"):
        Segmenter(model, ["dog"], window=64, stride=128)


def test_upsample_argmax_in_strips_equals_full_resize():
    scores = torch.rand(4, 13, 17, generator=torch.Generator().manual_seed(3))
    full = F.interpolate(scores[None], size=(101, 77), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    strips = upsample_argmax(scores, (101, 77), max_elements=4 * 77 * 3)  # 3 rows per strip
    assert strips.dtype == np.uint8
    np.testing.assert_array_equal(strips, full)


def test_window_merger_averages_and_refuses_gaps():
    merger = WindowMerger(1, 2, 3, torch.device("cpu"))
    merger.add((0, 2, 0, 2), torch.full((1, 2, 2), 2.0))
    merger.add((0, 2, 1, 3), torch.full((1, 2, 2), 4.0))
    torch.testing.assert_close(merger.mean_scores(), torch.tensor([[[2.0, 3.0, 4.0], [2.0, 3.0, 4.0]]]))
    whole = WindowMerger(2, 2, 3, torch.device("cpu"))
    scores = torch.rand(2, 2, 3)
    whole.add((0, 2, 0, 3), scores)
    assert whole.mean_scores() is scores  # one window over the whole image: kept as it is
    whole.add((0, 2, 0, 3), torch.ones(2, 2, 3))
    torch.testing.assert_close(whole.mean_scores(), (scores + 1) / 2)
    gap = WindowMerger(1, 2, 3, torch.device("cpu"))
    gap.add((0, 2, 0, 2), torch.ones(1, 2, 2))
    with pytest.raises(InputError, match="covered by no crop"):
        gap.mean_scores()


def test_palettes():
    from groupvit.segment import group_palette, voc_palette

    voc = voc_palette()
    assert voc.shape == (256, 3)
    assert voc[0].tolist() == [0, 0, 0] and voc[1].tolist() == [128, 0, 0] and voc[15].tolist() == [192, 128, 128]
    assert voc[255].tolist() == [224, 224, 192]
    groups = group_palette().astype(float)
    assert len({tuple(c) for c in groups}) == 256
    distance = np.linalg.norm(groups[:64, None] - groups[None, :64], axis=-1) + 1e9 * np.eye(64)
    assert distance.min() > 60


def test_label_png_and_overlay():
    from groupvit.segment import label_image, overlay

    labels = np.zeros((40, 60), dtype=np.uint8)
    labels[10:30, 20:50] = 2
    png = label_image(labels)
    assert png.mode == "P" and png.getpalette()[6:9] == [0, 128, 0]
    np.testing.assert_array_equal(np.asarray(png), labels)
    assert label_image(np.full((2, 2), 300)).mode.startswith("I")  # too many ids for a palette
    image = np.empty((40, 60, 3), dtype=np.uint8)
    image[:] = (200, 100, 50)
    out = np.asarray(overlay(image, labels, ("background", "cat", "dog"), legend=False))
    assert out.shape == (40, 60, 3)
    # Background in grey levels: luma (200 * 19595 + 100 * 38470 + 50 * 7471 + 32768) >> 16 = 124.
    np.testing.assert_array_equal(out[0, 0], (124, 124, 124))
    np.testing.assert_array_equal(out[29, 49], (100, 114, 25))  # 50 % of (200, 100, 50) and dog's (0, 128, 0)
    assert (out[19, 34] == (0, 128, 0)).all()  # the name box, filled with the class colour, at the centroid
    with_legend = overlay(image, labels, ("background", "cat", "dog"))
    assert with_legend.width > 60 and with_legend.height >= 40  # grows when the legend needs it
    np.testing.assert_array_equal(np.asarray(with_legend)[:40, :60], out)
    with pytest.raises(InputError, match="no name"):
        overlay(image, labels, ("background", "cat"))


def test_best_group_scores_give_the_image_best_classes_to_their_best_groups():
    from groupvit.segment.segmenter import best_group_scores

    text = torch.eye(3)  # classes along the axes
    groups = torch.tensor([[[0.9, 0.1, 0.0], [0.2, 0.8, 0.1]]])  # group 0 ~ class 0, group 1 ~ class 1
    image = torch.tensor([[0.1, 0.7, 0.3]])  # the image ranks class 1, then 2, then 0
    one = best_group_scores(groups, image, text, classes=1)
    assert one.tolist() == [[[0, 0, 0], [0, 1, 0]]]  # class 1 -> group 1; group 0 stays background
    two = best_group_scores(groups, image, text, classes=2)
    # class 2 prefers group 1 (0.1 > 0.0) but it is taken: it goes to group 0
    assert two.tolist() == [[[0, 0, 1], [0, 1, 0]]]
    assert best_group_scores(groups, image, text, classes=5).sum() == 2  # at most one class per group


def test_mutual_best_scores_name_groups_that_and_whose_class_are_each_others_best():
    from groupvit.segment.segmenter import mutual_best_scores

    text = torch.eye(3)
    # group 0 ~ class 0, group 1 ~ class 1, group 2 also prefers class 1 but less than group 1 does
    groups = torch.tensor([[[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.1, 0.5, 0.4]]])
    image = torch.tensor([[0.3, 0.7, 0.1]])  # ranks class 1, then 0, then 2
    two = mutual_best_scores(groups, image, text, classes=2)
    assert two.tolist() == [[[1, 0, 0], [0, 1, 0], [0, 0, 0]]]  # group 2 is not class 1's best: background
    one = mutual_best_scores(groups, image, text, classes=1)
    assert one.tolist() == [[[0, 0, 0], [0, 1, 0], [0, 0, 0]]]  # class 0 is not among the image's best one
    # no mutual pair among the allowed classes: the image's best class goes to its best group
    lonely = torch.tensor([[[0.9, 0.1, 0.0], [0.8, 0.2, 0.1]]])
    fallback = mutual_best_scores(lonely, torch.tensor([[0.0, 0.0, 1.0]]), text, classes=1)
    assert fallback.tolist() == [[[0, 0, 0], [0, 0, 1]]]


def test_best_group_rule_labels_only_the_best_group():
    model = groupvit.create_model("tiny").eval()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    seg = Segmenter(model, ["red", "blue", "green"], mode="whole", short_side=32, background_rule="best-group")
    result = seg(image)
    final = result.group_maps[-1]
    labelled = {int(g) for g in np.unique(final) if (result.labels[final == g] > 0).any()}
    assert len(labelled) <= 1 and len(np.unique(result.labels)) <= 2
    with pytest.raises(InputError, match="background_rule must be one of threshold, best-group"):
        Segmenter(model, ["red"], background_rule="closest")
    mutual = Segmenter(model, ["red", "blue", "green"], mode="whole", short_side=32, background_rule="mutual",
                       best_group_classes=3)(image)
    final = mutual.group_maps[-1]
    for g in np.unique(final):  # one label per group: a group is all background or all one class
        assert len(np.unique(mutual.labels[final == g])) == 1
