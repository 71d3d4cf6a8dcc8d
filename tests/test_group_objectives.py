"""Group-level objectives: each value computed by hand on a tiny case, their plumbing into the loss and the trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_losses import _tiny_batch

import groupvit
from groupvit.errors import ConfigError
from groupvit.model.grouping import capture_grouping, chain_assignments
from groupvit.train.config import TrainConfig
from groupvit.train.group_objectives import (
    affinity_loss,
    anti_copy_loss,
    colour_affinity,
    greedy_match,
    kmeans,
    mix_images,
    mix_loss,
    mix_masks,
    mix_partner,
    patch_colours,
    prototype_loss,
    word_group_loss,
)
from groupvit.train.losses import ContrastiveObjective
from groupvit.train.trainer import Trainer


def test_colour_affinity_uses_the_median_squared_distance_of_the_image():
    # Grey levels 0, 1, 3: squared distances 1 (0-1), 9 (0-2), 4 (1-2); the off-diagonal values sorted are
    # 1 1 4 4 9 9 and torch's median is the lower middle one, 4. Pairs farther than it get 0.
    colours = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0]]])
    w = colour_affinity(colours)[0]
    assert w[0, 1].item() == pytest.approx(math.exp(-1 / 4))
    assert w[0, 2].item() == 0.0
    assert w[1, 2].item() == pytest.approx(math.exp(-4 / 4))
    assert torch.allclose(w, w.t()) and torch.allclose(w.diagonal(), torch.ones(3))


def test_affinity_loss_hand_worked():
    # Two patches; patch 0 surely in group 0, patch 1 in group 0 with 0.8: P(same) = 0.8. Two patches have one
    # off-diagonal distance, its own median: w = exp(-1).
    chain = torch.tensor([[[1.0, 0.0], [0.8, 0.2]]])
    colours = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.2, 0.1]]])
    w = math.exp(-1)
    expected = -(w * math.log(0.8) + (1 - w) * math.log(0.2))
    assert affinity_loss(chain, colours).item() == pytest.approx(expected, rel=1e-5)


def test_affinity_loss_pulls_similar_patches_together_and_pushes_dissimilar_apart():
    colours = torch.tensor([[[0.0, 0, 0], [0.05, 0, 0], [1, 1, 1]]])  # patches 0 and 1 alike, 2 far
    logits = (0.1 * torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(0))).requires_grad_()
    affinity_loss(logits.softmax(-1), colours).backward()

    def same(x: torch.Tensor) -> torch.Tensor:
        p = x.softmax(-1).detach()
        return (p @ p.transpose(1, 2))[0]

    before, after = same(logits), same(logits - 0.5 * logits.grad)
    assert after[0, 1] > before[0, 1] and after[0, 2] < before[0, 2] and after[1, 2] < before[1, 2]


def test_patch_colours_are_patch_means_in_row_major_order():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    colours = patch_colours(images, (2, 2))
    assert colours.shape == (2, 4, 3)
    assert colours[1, 3, 2].item() == images[1, 2, 2:, 2:].mean().item()
    assert colours[0, 1, 0].item() == images[0, 0, :2, 2:].mean().item()


def test_the_final_chain_multiplies_the_stages():
    s1 = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]])  # 2 groups over 3 patches
    s2 = torch.tensor([[[0.25, 1.0]]])  # 1 group over the 2
    assert torch.allclose(chain_assignments([s1, s2])[-1], torch.tensor([[[0.25], [1.0], [0.625]]]))


def test_anti_copy_hand_worked():
    copies = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]])  # cosines: 1 (0-1), 0, 0
    assert anti_copy_loss(copies).item() == pytest.approx(2 / 6)
    assert anti_copy_loss(torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])).item() == 0.0
    half = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # cosine 1/sqrt(2) -> squared 1/2
    assert anti_copy_loss(half).item() == pytest.approx(0.5)


def test_kmeans_finds_two_clusters_and_greedy_match_is_greedy():
    points = torch.tensor([[[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]])
    centres = kmeans(points, 2)
    expected = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    found = sorted(centres[0].tolist())
    assert torch.allclose(torch.tensor(found), expected.flip(0), atol=1e-6)
    # The most similar free pair first: (0, 0) = 0.9, then row 1 takes the only free column.
    assert greedy_match(torch.tensor([[[0.9, 0.8], [0.85, 0.1]]])).tolist() == [[0, 1]]
    with pytest.raises(ConfigError, match="at least 3 points"):
        kmeans(points[:, :2], 3)


def test_prototype_loss_hand_worked():
    tokens = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    segments = torch.tensor([[[0.0, 2.0], [3.0, 0.0]]], requires_grad=True)
    loss = prototype_loss(tokens, segments, temperature=0.1)
    # Each segment equals one centre: logits 10 (own) and 0 (other).
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-10)), abs=1e-6)
    tilted = torch.tensor([[[0.6, 0.8], [0.8, 0.6]]])  # cosines 0.8 / 0.6 with the two centres
    assert prototype_loss(tokens, tilted, temperature=0.5).item() == pytest.approx(
        math.log(1 + math.exp((0.6 - 0.8) / 0.5)), rel=1e-5)
    loss.backward()
    assert segments.grad is not None


def test_mix_masks_are_blocks_within_bounds_and_mix_images_takes_the_partner():
    masks = mix_masks(64, (8, 8), generator=torch.Generator().manual_seed(0))
    for mask in masks:
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert 2 <= height <= 6 and 2 <= width <= 6
        assert mask.sum() == height * width and rows[-1] - rows[0] + 1 == height  # one solid rectangle
    assert mix_partner(4).tolist() == [2, 3, 0, 1]
    images = torch.stack([torch.full((3, 4, 4), float(b)) for b in range(4)])
    mask = torch.zeros(4, 2, 2, dtype=torch.bool)
    mask[0, 0, 1] = True
    mixed = mix_images(images, mask, mix_partner(4))
    assert (mixed[0, :, :2, 2:] == 2).all() and (mixed[0, :, 2:, :] == 0).all() and (mixed[0, :, :2, :2] == 0).all()
    assert torch.equal(mixed[1:], images[1:])


def test_mix_loss_hand_worked():
    # Two images of one patch and one group; image 0's patch came from its partner (image 1).
    groups = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])
    captions = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    chain = torch.ones(2, 1, 1)
    masks = torch.tensor([[[True]], [[False]]])
    loss = mix_loss(chain, groups, captions, masks, torch.tensor([1, 0]), torch.tensor(2.0))
    # image 0: logits 2*<g0, c0> = 0 (own), 2*<g0, c1> = 2 (partner), target partner;
    # image 1: logits 2*<g1, c1> = 1.2 (own), 2*<g1, c0> = 1.6 (partner), target own.
    expected = 0.5 * (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1.6 - 1.2)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def _unit(*xy):
    return torch.tensor(xy, dtype=torch.float32)


def test_word_group_loss_hand_worked_a_word_whose_best_group_is_taken_gets_the_next():
    z0, z1, z2 = _unit(1.0, 0.0), _unit(0.6, 0.8), _unit(0.0, 1.0)
    t0, t1, pad = _unit(1.0, 0.0), _unit(0.96, 0.28), _unit(0.0, 1.0)
    groups = torch.stack([z0, z1, z2])[None]  # [1, 3, 2]
    prompts = torch.stack([t0, t1, pad])[None]  # [1, 3, 2]; the third is a caption copy (padding)
    words = torch.tensor([[5, 7, -1]])
    # cosines: t0 -> z0 1.0, z1 0.6; t1 -> z0 0.96, z1 0.8, z2 0.28. Greedy: (t0, z0) first, then t1 can only
    # take z1 (its best, z0, is taken). Row t0: 10 * z0 . [t0, t1, pad] = [10, 9.6, 0], target t0;
    # row t1: 10 * z1 . [t0, t1, pad] = [6, 8, 8], target t1; the padding row is not scored.
    row0 = -math.log(math.exp(10) / (math.exp(10) + math.exp(9.6) + 1))
    row1 = -math.log(math.exp(8) / (math.exp(6) + 2 * math.exp(8)))
    value = word_group_loss(groups, prompts, words, torch.tensor(10.0))
    assert value.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_word_group_loss_leaves_unavailable_groups_out_hand_worked():
    z0, z1, z2 = _unit(1.0, 0.0), _unit(0.6, 0.8), _unit(0.0, 1.0)
    t0, t1, pad = _unit(1.0, 0.0), _unit(0.96, 0.28), _unit(0.0, 1.0)
    groups, prompts = torch.stack([z0, z1, z2])[None], torch.stack([t0, t1, pad])[None]
    words = torch.tensor([[5, 7, -1]])
    # z0 unavailable: the best available pair is (t1, z1) 0.8, then t0 takes z2 (0.0).
    # row t0: 10 * z2 . [t0, t1, pad] = [0, 2.8, 10]; row t1: [6, 8, 8] as before.
    row0 = -math.log(1 / (1 + math.exp(2.8) + math.exp(10)))
    row1 = -math.log(math.exp(8) / (math.exp(6) + 2 * math.exp(8)))
    available = torch.tensor([[False, True, True]])
    value = word_group_loss(groups, prompts, words, torch.tensor(10.0), available)
    assert value.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # one available group for two words: the word that matches it better (t1, 0.8) is the only row
    only = word_group_loss(groups, prompts, words, torch.tensor(10.0), torch.tensor([[False, True, False]]))
    assert only.item() == pytest.approx(row1, rel=1e-5)


def test_word_group_loss_same_word_prompts_are_positives_and_repeats_are_one_row():
    groups = torch.stack([_unit(1.0, 0.0), _unit(0.0, 1.0)])[None]  # [1, 2, 2]
    prompts = torch.stack([_unit(1.0, 0.0), _unit(0.8, 0.6)])[None]  # two prompts of the same word
    words = torch.tensor([[3, 3]])
    # one row (the repeat is not a second word): z0 against both prompts, both positive (target 1/2 each)
    logits = torch.tensor([2.0, 1.6])
    expected = -(0.5 * logits.log_softmax(0)).sum()
    assert word_group_loss(groups, prompts, words, torch.tensor(2.0)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_word_group_loss_gradients_and_edge_cases():
    torch.manual_seed(0)
    groups = torch.nn.functional.normalize(torch.randn(3, 4, 8), dim=-1).requires_grad_()
    prompts = torch.nn.functional.normalize(torch.randn(3, 3, 8), dim=-1).requires_grad_()
    words = torch.tensor([[0, 1, -1], [2, 0, 1], [1, -1, -1]])
    word_group_loss(groups, prompts, words, torch.tensor(10.0)).backward()
    assert groups.grad.abs().sum() > 0 and prompts.grad.abs().sum() > 0
    none = word_group_loss(groups, prompts, torch.full((3, 3), -1), torch.tensor(10.0))
    assert none.item() == 0.0
    with pytest.raises(ConfigError, match="final groups"):
        word_group_loss(groups[:, :2], prompts, words, torch.tensor(10.0))


def test_words_objective_needs_word_targets_and_reaches_both_towers():
    with pytest.raises(ConfigError, match="multi_label_targets: words") as err:
        TrainConfig.from_dict({"model": {"preset": "tiny"}, "train": {"group_objectives": {"words": 1.0}}})
    assert "\n" not in str(err.value)
    torch.manual_seed(0)
    model = groupvit.create_model("tiny")
    images, texts = _tiny_batch()
    words = torch.tensor([[0, 1, -1], [1, -1, -1], [2, 0, 1], [0, -1, -1]])
    out = ContrastiveObjective(model, multi_label_pooling="max-group", group_objectives={"words": 1.0})(
        images, texts, words)
    out.groups["words"].backward()
    assert model.vision.stages[0].group_token.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text.parameters())
    with pytest.raises(ConfigError, match="prompt words"):
        ContrastiveObjective(model, group_objectives={"words": 1.0})(images, texts)
    both = ContrastiveObjective(model, group_objectives={"words": 1.0, "object_words": 1.0})
    model.eval()  # no Gumbel noise: both terms see the same groups
    out = both(images, texts, words)
    assert set(out.groups) == {"words", "object_words"}
    assert torch.isfinite(out.groups["object_words"]) and out.groups["object_words"] > 0


def test_capture_grouping_records_every_stage_and_leaves_no_hook():
    model = groupvit.create_model("tiny")
    with capture_grouping(model.vision) as capture:
        out = model.vision(torch.randn(2, 3, 32, 32))
    sizes = [a.soft.shape for a in out.assignments]
    assert len(capture.stages) == len(sizes)
    for record, size in zip(capture.stages, sizes, strict=True):
        assert record.segments.shape[:2] == size[:2] and record.queries.shape[:2] == size[:2]
        assert record.tokens.shape[1] == size[2]
    assert not any(m._forward_hooks for m in model.modules())


def test_objective_without_group_objectives_is_the_official_loss_and_weights_add_up():
    torch.manual_seed(0)
    model = groupvit.create_model("tiny")
    images, texts = _tiny_batch()
    model.eval()  # no Gumbel noise or DropPath: two forwards give the same numbers
    plain = ContrastiveObjective(model)(images, texts)
    zero = ContrastiveObjective(model, group_objectives={"affinity": 0.0})(images, texts)
    assert torch.equal(plain.total, zero.total) and zero.groups == {}
    both = ContrastiveObjective(model, group_objectives={"affinity": 0.5, "anti_copy": 2.0, "prototype": 1.0})
    out = both(images, texts)
    assert set(out.groups) == {"affinity", "anti_copy", "prototype"}
    expected = plain.total + 0.5 * out.groups["affinity"] + 2.0 * out.groups["anti_copy"] + out.groups["prototype"]
    assert torch.allclose(out.total, expected)
    assert torch.equal(out.itc, plain.itc)


def test_mix_objective_reaches_the_image_tower_only():
    torch.manual_seed(0)
    model = groupvit.create_model("tiny")
    images, texts = _tiny_batch()
    out = ContrastiveObjective(model, group_objectives={"mix": 1.0})(images, texts)
    out.groups["mix"].backward()
    assert model.vision.stages[0].group_token.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.text.parameters())


@pytest.mark.parametrize("value, message", [
    ({"colour": 1.0}, "unknown train.group_objectives"),
    ({"affinity": -1.0}, "finite weight >= 0"),
    ({"affinity": "much"}, "must be a number"),
    ([1, 2], "must map objective names"),
])
def test_bad_group_objectives_are_one_line_errors(value, message):
    with pytest.raises(ConfigError, match=message) as err:
        TrainConfig.from_dict({"model": {"preset": "tiny"}, "train": {"group_objectives": value}})
    assert "\n" not in str(err.value)


def test_training_logs_each_group_objective(tmp_path):
    cfg = TrainConfig.from_dict({
        "model": {"preset": "tiny"},
        "data": {"sources": [{"type": "random", "size": 8}], "batch_size": 4},
        "train": {"epochs": 1, "warmup_epochs": 0, "amp": "none", "device": "cpu", "log_every": 1,
                  "ckpt_every": 0, "output": str(tmp_path), "tensorboard": False, "progress": False,
                  "group_objectives": {"affinity": 1.0, "anti_copy": 1.0}},
    })
    Trainer(cfg).fit()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train and all(0 < r["affinity"] < 10 and 0 <= r["anti_copy"] <= 1 for r in train)
    assert all(r["loss"] > r["itc"] + r["multi_label"] for r in train)


def test_group_residual_false_leaves_the_group_token_out_of_its_segment(tmp_path):
    from groupvit.errors import WeightsError
    from groupvit.model.grouping import GroupingBlock

    torch.manual_seed(0)
    with_token = GroupingBlock(16, 2, num_group_token=4, num_output_group=3, gumbel=False)
    pooled_only = GroupingBlock(16, 2, num_group_token=4, num_output_group=3, gumbel=False, residual=False)
    pooled_only.load_state_dict(with_token.state_dict())
    for block in (with_token, pooled_only):  # the channel MLP adds nothing: outputs are the segments themselves
        torch.nn.init.zeros_(block.mlp_channels.fc2.weight)
        torch.nn.init.zeros_(block.mlp_channels.fc2.bias)
    projected = {}
    attend = with_token.pre_assign_attn.attend

    def record(*inputs):
        projected["value"] = attend(*inputs)
        return projected["value"]

    with_token.pre_assign_attn.attend = record
    x, groups = torch.randn(2, 10, 16), torch.randn(2, 4, 16)
    (a, _), (b, _) = with_token.eval()(x, groups), pooled_only.eval()(x, groups)
    assert torch.allclose(a - b, projected["value"], atol=1e-6)

    model = groupvit.create_model("tiny", vision__group_residual=False)
    with pytest.raises(WeightsError, match="group_residual=false"):
        groupvit.save_pretrained(model, tmp_path / "hf")
