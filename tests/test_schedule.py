"""Learning-rate schedule, linear scaling and weight-decay groups against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import groupvit
from groupvit.train.optim import WarmupCosineSchedule, build_optimizer, scale_lr, weight_decay_groups

# Official recipe at global batch 4096 with 10 iterations per epoch: 2 warm-up epochs of 30.
OFFICIAL = WarmupCosineSchedule(base_lr=1.6e-3, warmup_lr=4e-6, min_lr=4e-5, warmup_steps=20, total_steps=300)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 4e-6),  # step 0 uses warmup_lr
        (10, 4e-6 + 10 * (1.6e-3 - 4e-6) / 20),  # = 8.02e-4, half way up
        (19, 4e-6 + 19 * (1.6e-3 - 4e-6) / 20),  # = 1.5202e-3, last warm-up step
        # Cosine with t counted from 0: 4e-5 + 0.78e-3 * (1 + cos(pi/15)), cos(pi/15) = 0.9781476007
        (20, 4e-5 + 0.78e-3 * 1.9781476007),
        (150, 4e-5 + 0.78e-3),  # cos(pi/2) = 0: half way between base and min
        (225, 4e-5 + 0.78e-3 * (1 - 0.7071067812)),  # cos(3pi/4)
        (299, 4e-5 + 0.78e-3 * (1 - 0.9999451694)),  # cos(299pi/300)
        (300, 4e-5),  # end of the cycle
        (1000, 4e-5),  # beyond: min_lr
    ],
)
def test_official_schedule_values(step, expected):
    assert OFFICIAL(step) == pytest.approx(expected, rel=1e-8)


def test_warmup_boundary_drops_below_base():
    # The cosine does not restart at the end of warm-up, so the first cosine step is below base_lr.
    assert OFFICIAL(20) == pytest.approx(1.58295513e-3, rel=1e-7)
    assert OFFICIAL(20) < 1.6e-3


def test_no_warmup_starts_at_base():
    schedule = WarmupCosineSchedule(base_lr=1.0, warmup_lr=0.0, min_lr=0.0, warmup_steps=0, total_steps=4)
    assert [schedule(t) for t in range(5)] == pytest.approx([1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5,
                                                             0.5 - 0.5 * math.cos(math.pi / 4), 0.0])


def test_apply_sets_every_group():
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, lr=1.0)
    assert OFFICIAL.apply(optimizer, 10) == pytest.approx(8.02e-4)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([8.02e-4, 8.02e-4])


def test_linear_lr_scaling():
    assert scale_lr(1.6e-3, 256 * 16) == pytest.approx(1.6e-3)  # the official 16 x 256
    assert scale_lr(1.6e-3, 256 * 8) == pytest.approx(8e-4)
    assert scale_lr(1.6e-3, 256) == pytest.approx(1e-4)
    assert scale_lr(1.6e-3, 256 * 8, accumulation_steps=2) == pytest.approx(1.6e-3)
    assert scale_lr(4e-6, 8) == pytest.approx(4e-6 * 8 / 4096)
    assert scale_lr(1.6e-3, 4096, accumulation_steps=1) == scale_lr(1.6e-3, 4096, accumulation_steps=0)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 3)  # weight 2-D: decay; bias: none
        self.norm = nn.LayerNorm(3)  # 1-D weight and bias: none
        self.scale = nn.Parameter(torch.tensor(2.0))  # 0-dim: decay
        self.embed = nn.Embedding(5, 3)  # 2-D: decay
        self.pos = nn.Parameter(torch.zeros(1, 4, 3))  # 3-D: decay
        self.odd = nn.Module()
        self.odd.bias = nn.Parameter(torch.zeros(2, 2))  # 2-D but named *.bias: none
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)  # not trained: in no group


def test_weight_decay_rule_on_a_toy_module():
    decay, no_decay = weight_decay_groups(_Toy(), 0.05)
    assert decay["param_names"] == ["scale", "pos", "fc.weight", "embed.weight"]
    assert no_decay["param_names"] == ["fc.bias", "norm.weight", "norm.bias", "odd.bias"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)


def test_official_weight_decay_split():
    model = groupvit.create_model("gcc-yfcc")
    decay, no_decay = weight_decay_groups(model, 0.05)
    # Official count on MultiLabelContrastive (Conv1d heads): 138 decayed tensors, 263 not.
    # Our Linear heads hold the same tensors (2-D instead of [out, in, 1]), so the split is identical.
    assert (len(decay["params"]), len(no_decay["params"])) == (138, 263)
    for name in ("logit_scale", "multi_label_logit_scale", "vision.pos_embed", "vision.stages.0.group_token",
                 "vision.stages.1.group_token", "text.positional_embedding", "text.token_embedding.weight",
                 "image_projector.fc1.weight", "text_projector.fc2.weight"):
        assert name in decay["param_names"]
    for name in ("image_projector.bn.weight", "image_projector.bn.bias", "vision.norm.weight",
                 "text.ln_final.weight", "image_projector.fc1.bias"):
        assert name in no_decay["param_names"]
    redcaps = weight_decay_groups(groupvit.create_model("gcc-redcaps"), 0.05)
    assert (len(redcaps[0]["params"]), len(redcaps[1]["params"])) == (137, 263)  # no multi_label_logit_scale


def test_optimizer_is_official_adamw():
    optimizer = build_optimizer(_Toy(), lr=1e-3)
    assert isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:
        assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]


def test_first_adamw_step_by_hand_fused_and_per_tensor():
    # Step 1 of AdamW: m_hat = g and v_hat = g^2, so p <- p * (1 - lr * wd) - lr * g / (|g| + eps).
    lr, eps = 0.1, 1e-8
    for fused in (None, False):
        model = _Toy()
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p.copy_(torch.linspace(-1.0, 1.0, p.numel()).reshape(p.shape) + i)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = build_optimizer(model, lr=lr, weight_decay=0.05, eps=eps, fused=fused)
        assert bool(optimizer.defaults["fused"]) is (fused is None)
        grads = {n: torch.full_like(p, -0.5 if i % 2 else 2.0) for i, (n, p) in enumerate(model.named_parameters())}
        for n, p in model.named_parameters():
            p.grad = grads[n].clone() if p.requires_grad else None
        optimizer.step()
        decayed = set(optimizer.param_groups[0]["param_names"])
        for n, p in model.named_parameters():
            if not p.requires_grad:
                assert torch.equal(p, before[n])
                continue
            wd = 0.05 if n in decayed else 0.0
            g = grads[n]
            expected = before[n] * (1 - lr * wd) - lr * g / (g.abs() + eps)
            assert torch.allclose(p.detach(), expected, atol=1e-6), n
