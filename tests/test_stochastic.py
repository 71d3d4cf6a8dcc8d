"""The stochastic training path: hard Gumbel assignment, straight-through gradients, drop-path, clipping, divergence."""

from __future__ import annotations

import json

import pytest
import torch

from groupvit.errors import DivergenceError
from groupvit.model.grouping import AssignAttention, straight_through_one_hot
from groupvit.model.layers import DropPath
from groupvit.train.checkpoint import load_training_checkpoint
from groupvit.train.config import TrainConfig
from groupvit.train.losses import GroupViTLoss
from groupvit.train.trainer import Trainer


def assign_module(gumbel: bool = True) -> AssignAttention:
    torch.manual_seed(0)
    return AssignAttention(16, hard=True, gumbel=gumbel)


def test_training_assignments_are_one_hot_over_the_group_axis():
    module = assign_module().train()
    groups, tokens = torch.randn(2, 5, 16), torch.randn(2, 30, 16)
    _, assignment = module(groups, tokens)
    hard = assignment.hard.detach()
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(hard.sum(dim=1), torch.ones(2, 30))
    torch.testing.assert_close(assignment.soft.sum(dim=1), torch.ones(2, 30))


def test_gumbel_noise_is_drawn_in_training_and_off_in_eval():
    module = assign_module()
    groups = torch.randn(1, 4, 16) * 0.01  # near-tied logits: the noise decides
    tokens = torch.randn(1, 200, 16) * 0.01
    module.train()
    draws = [module(groups, tokens)[1].hard.argmax(dim=1) for _ in range(2)]
    assert not torch.equal(draws[0], draws[1])
    module.eval()
    first, second = module(groups, tokens)[1], module(groups, tokens)[1]
    assert torch.equal(first.hard, second.hard)
    torch.testing.assert_close(first.hard.argmax(dim=1), first.soft.argmax(dim=1), rtol=0, atol=0)


def test_straight_through_gradient_equals_the_soft_gradient():
    logits = torch.randn(3, 6, 10, requires_grad=True)
    weights = torch.randn(3, 6, 10)
    soft = logits.softmax(dim=1)
    hard = straight_through_one_hot(soft, dim=1)
    assert torch.equal(hard.detach(), torch.zeros_like(soft).scatter_(1, soft.argmax(1, keepdim=True), 1.0))
    (grad_hard,) = torch.autograd.grad((hard * weights).sum(), logits)
    (grad_soft,) = torch.autograd.grad((logits.softmax(dim=1) * weights).sum(), logits)
    torch.testing.assert_close(grad_hard, grad_soft)


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_scaled_in_training():
    layer = DropPath(0.25)
    x = torch.randn(4000, 3, 5) + 2.0
    assert torch.equal(layer.eval()(x), x)
    torch.manual_seed(0)
    out = layer.train()(x)
    ratio = out / x
    per_sample = ratio.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample))  # one factor per sample
    factor = per_sample[:, 0]
    dropped, kept_rows = factor == 0, factor != 0
    torch.testing.assert_close(factor[kept_rows], torch.full_like(factor[kept_rows], 1 / 0.75))
    assert dropped.any()
    kept = kept_rows.float().mean().item()
    assert kept == pytest.approx(0.75, abs=0.03)  # 4000 samples: 3 standard deviations ~ 0.02
    residual = torch.randn_like(x)
    torch.manual_seed(1)
    fused = layer.add(residual, x)
    torch.manual_seed(1)
    torch.testing.assert_close(fused, residual + layer(x))


def _config(output, **train) -> TrainConfig:
    return TrainConfig.from_dict({
        "model": {"preset": "tiny"},
        "data": {"sources": [{"type": "random", "size": 16}], "batch_size": 4, "seed": 0},
        "train": {"epochs": 1, "warmup_epochs": 0, "base_lr": 1.0, "warmup_lr": 0.01, "min_lr": 0.1, "amp": "none",
                  "device": "cpu", "log_every": 1, "ckpt_every": 0, "output": str(output), "tensorboard": False,
                  "progress": False, **train},
    })


def test_gradient_clipping_bounds_the_norm_the_optimizer_sees(tmp_path, monkeypatch):
    seen = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    Trainer(_config(tmp_path / "run", clip_grad=1e-3)).fit()
    records = map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
    logged = [r["grad_norm"] for r in records if r["kind"] == "train"]
    assert len(seen) == len(logged) == 4
    assert all(norm > 1e-3 for norm in logged)  # the logged norm is the one before clipping ...
    assert all(norm == pytest.approx(1e-3, rel=1e-4) for norm in seen)  # ... the optimizer gets the clipped one


def test_a_non_finite_loss_stops_training_at_that_step_before_the_update(tmp_path, monkeypatch):
    forward = GroupViTLoss.forward
    calls = []

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(GroupViTLoss, "forward", poisoned)
    trainer = Trainer(_config(tmp_path / "run", ckpt_every=1))
    with pytest.raises(DivergenceError, match="loss is nan at step 3;"):
        trainer.fit()
    last = load_training_checkpoint(tmp_path / "run" / "latest.pt")
    assert last["train_state"]["step"] == 2
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
