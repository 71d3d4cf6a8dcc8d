"""Image-text and multi-label contrastive losses against hand-computed values (single process)."""

from __future__ import annotations

import math

import pytest
import torch

import groupvit
from groupvit.errors import InputError
from groupvit.train.losses import (
    ContrastiveObjective,
    GroupViTLoss,
    image_text_loss,
    multi_label_loss,
    multi_label_targets,
    soft_target_cross_entropy,
)


def _ce(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], written out."""
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


IMAGES = [[1.0, 0.0], [0.0, 1.0]]
CAPTIONS = [[0.6, 0.8], [1.0, 0.0]]


def test_image_text_loss_matches_hand_computation():
    # s * I.T^T = 10 * [[0.6, 1.0], [0.8, 0.0]] -> image rows [6, 10], [8, 0]; text rows [6, 8], [10, 0].
    expected_image = (_ce([6.0, 10.0], 0) + _ce([8.0, 0.0], 1)) / 2
    expected_text = (_ce([6.0, 8.0], 0) + _ce([10.0, 0.0], 1)) / 2
    expected = 0.5 * (expected_image + expected_text)
    image, text = torch.tensor(IMAGES), torch.tensor(CAPTIONS)
    got = image_text_loss(image, text, image, text, torch.tensor(10.0), rank=0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.5 * ((4.01815 + 8.00034) / 2 + (2.12693 + 10.00005) / 2), abs=1e-4)


def test_image_text_loss_rank_offset():
    # Rank 1 of 2 with B = 1: its row is sample 1 of the gathered batch, so its label is column 1.
    image, text = torch.tensor(IMAGES), torch.tensor(CAPTIONS)
    got = image_text_loss(image[1:], text[1:], image, text, torch.tensor(10.0), rank=1)
    assert got.item() == pytest.approx(0.5 * (_ce([8.0, 0.0], 1) + _ce([10.0, 0.0], 1)), rel=1e-6)
    # The mean over the two ranks' losses is the loss of one process holding both samples.
    rank0 = image_text_loss(image[:1], text[:1], image, text, torch.tensor(10.0), rank=0)
    full = image_text_loss(image, text, image, text, torch.tensor(10.0), rank=0)
    assert ((rank0 + got) / 2).item() == pytest.approx(full.item(), rel=1e-6)


def test_multi_label_targets_rank1_of_2():
    image_targets, text_targets = multi_label_targets(batch=2, k=2, rank=1, world_size=2)
    # Gathered prompt columns (w, b, k): rank 1's samples are global 2 and 3 -> columns 4,5 and 6,7.
    assert image_targets.tolist() == [
        [0, 0, 0, 0, 0.5, 0.5, 0, 0],
        [0, 0, 0, 0, 0, 0, 0.5, 0.5],
    ]
    # Prompt rows (b, k) -> their own image among the 4 gathered images.
    assert text_targets.tolist() == [
        [0, 0, 1, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 1],
        [0, 0, 0, 1],
    ]


def test_multi_label_targets_k3_single_process():
    image_targets, _ = multi_label_targets(batch=2, k=3, rank=0, world_size=1)
    third = 1 / 3
    expected = torch.tensor([[third] * 3 + [0] * 3, [0] * 3 + [third] * 3])
    torch.testing.assert_close(image_targets, expected)


def test_multi_label_loss_matches_hand_computation():
    prompts = [[[0.0, 1.0], [0.6, 0.8]], [[1.0, 0.0], [0.8, 0.6]]]  # [B=2, K=2, D=2]
    s = 5.0
    flat = [p for sample in prompts for p in sample]  # columns in (b, k) order
    image_rows = []
    for b, img in enumerate(IMAGES):
        logits = [s * _dot(img, p) for p in flat]
        log_norm = math.log(sum(math.exp(v) for v in logits))
        image_rows.append(sum(-0.5 * (logits[b * 2 + k] - log_norm) for k in range(2)))
    text_rows = []
    for b, sample in enumerate(prompts):
        for p in sample:
            text_rows.append(_ce([s * _dot(p, img) for img in IMAGES], b))
    expected = 0.5 * (sum(image_rows) / 2 + sum(text_rows) / 4)
    image, prompt_t = torch.tensor(IMAGES), torch.tensor(prompts)
    got = multi_label_loss(image, prompt_t, image, prompt_t, torch.tensor(s), rank=0, world_size=1)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_max_group_multi_label_loss_matches_hand_computation():
    # Two images of two groups each; an image's score for a prompt is its best group's.
    groups = [[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [-1.0, 0.0]]]  # [B=2, G=2, D=2]
    prompts = [[[0.0, 1.0], [0.6, 0.8]], [[1.0, 0.0], [0.8, 0.6]]]  # [B=2, K=2, D=2]
    s = 5.0
    flat = [p for sample in prompts for p in sample]

    def score(b: int, p: list[float]) -> float:
        return s * max(_dot(g, p) for g in groups[b])

    image_rows = []
    for b in range(2):
        logits = [score(b, p) for p in flat]
        log_norm = math.log(sum(math.exp(v) for v in logits))
        image_rows.append(sum(-0.5 * (logits[b * 2 + k] - log_norm) for k in range(2)))
    text_rows = [_ce([score(i, p) for i in range(2)], b) for b, sample in enumerate(prompts) for p in sample]
    expected = 0.5 * (sum(image_rows) / 2 + sum(text_rows) / 4)
    group_t, prompt_t = torch.tensor(groups), torch.tensor(prompts)
    got = multi_label_loss(group_t, prompt_t, group_t, prompt_t, torch.tensor(s), rank=0, world_size=1)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Identical groups reduce to the image-embedding loss of that group.
    same = torch.tensor(IMAGES)[:, None].expand(2, 2, 2)
    plain = multi_label_loss(torch.tensor(IMAGES), prompt_t, torch.tensor(IMAGES), prompt_t, torch.tensor(s), 0, 1)
    assert multi_label_loss(same, prompt_t, same, prompt_t, torch.tensor(s), 0, 1).item() == pytest.approx(plain.item())


def test_max_group_objective_keeps_the_image_text_loss_and_reaches_the_groups():
    torch.manual_seed(0)
    model = groupvit.create_model("tiny", vision__gumbel=False)
    images, texts = _tiny_batch()
    official, max_group = ContrastiveObjective(model)(images, texts), ContrastiveObjective(model, 1.0, "max-group")
    out = max_group(images, texts)
    assert out.itc.item() == pytest.approx(official.itc.item(), rel=1e-5)
    assert out.multi_label.item() != pytest.approx(official.multi_label.item(), rel=1e-3)
    out.multi_label.backward()
    assert model.vision.stages[-1].blocks[0].attn.qkv.weight.grad.abs().sum().item() > 0


def test_soft_target_cross_entropy_equals_hard_labels_for_one_hot():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    targets = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    expected = (_ce([1.0, 2.0, 0.5], 1) + _ce([0.0, -1.0, 3.0], 0)) / 2
    assert soft_target_cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_total_is_itc_plus_weighted_multi_label():
    image = torch.tensor(IMAGES)
    texts = torch.tensor([[CAPTIONS[0], [0.0, 1.0], [0.6, 0.8]], [CAPTIONS[1], [1.0, 0.0], [0.8, 0.6]]])
    out = GroupViTLoss(multi_label_weight=0.25)(image, texts, torch.tensor(10.0), torch.tensor(5.0))
    itc = image_text_loss(image, texts[:, 0], image, texts[:, 0], torch.tensor(10.0), 0)
    ml = multi_label_loss(image, texts[:, 1:], image, texts[:, 1:], torch.tensor(5.0), 0, 1)
    assert out.itc.item() == pytest.approx(itc.item())
    assert out.multi_label.item() == pytest.approx(ml.item())
    assert out.total.item() == pytest.approx(itc.item() + 0.25 * ml.item())
    # Without prompts (K = 0) there is no multi-label term.
    only = GroupViTLoss()(image, texts[:, :1], torch.tensor(10.0))
    assert only.multi_label is None and only.total.item() == pytest.approx(itc.item())


def _tiny_batch(k: int = 3, batch: int = 4):
    torch.manual_seed(0)
    images = torch.randn(batch, 3, 32, 32)
    texts = torch.randint(1, 49000, (batch, 1 + k, 77))
    texts[..., 10] = 49407  # EOT
    texts[..., 11:] = 0
    return images, texts


def test_objective_gradients_reach_both_temperatures_and_group_tokens():
    model = groupvit.create_model("tiny", vision__gumbel=False)
    images, texts = _tiny_batch()
    out = ContrastiveObjective(model)(images, texts)
    assert torch.isfinite(out.total)
    out.total.backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs().item() > 0
    assert model.multi_label_logit_scale.grad.abs().item() > 0
    assert model.vision.stages[0].group_token.grad.abs().sum().item() > 0


def test_objective_uses_each_temperature_for_its_own_loss():
    model = groupvit.create_model("tiny", vision__gumbel=False)
    images, texts = _tiny_batch()
    base = ContrastiveObjective(model)(images, texts)
    with torch.no_grad():
        model.multi_label_logit_scale.fill_(math.log(50.0))
    changed = ContrastiveObjective(model)(images, texts)
    assert changed.itc.item() == pytest.approx(base.itc.item(), rel=1e-6)
    assert changed.multi_label.item() != pytest.approx(base.multi_label.item(), rel=1e-3)


def test_objective_refuses_prompt_count_other_than_model():
    model = groupvit.create_model("tiny")
    images, texts = _tiny_batch(k=2)
    with pytest.raises(InputError, match="multi_label"):
        ContrastiveObjective(model)(images, texts)


def test_word_targets_hand_worked():
    from groupvit.train.losses import word_multi_label_targets

    a, b = 11, 22
    words = torch.tensor([[a, b], [a, -1]])
    image_targets, text_targets = word_multi_label_targets(words, words, rank=0)
    third = 1 / 3
    assert torch.allclose(image_targets, torch.tensor([[third, third, third, 0], [third, 0, third, third]]))
    assert torch.allclose(text_targets, torch.tensor([[0.5, 0.5], [1, 0], [0.5, 0.5], [0, 1]]))


def test_word_targets_with_distinct_words_are_the_official_ones():
    from groupvit.train.losses import multi_label_targets, word_multi_label_targets

    local = torch.tensor([[5, 6, -1], [7, 8, 9]])
    gathered = torch.cat([torch.tensor([[1, 2, 3], [4, -1, -1]]), local])  # rank 1 of 2
    ours = word_multi_label_targets(local, gathered, rank=1)
    official = multi_label_targets(2, 3, rank=1, world_size=2)
    for x, y in zip(ours, official, strict=True):
        assert torch.equal(x, y)
