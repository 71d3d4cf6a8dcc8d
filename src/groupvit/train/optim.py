"""AdamW with the official weight-decay groups, linear learning-rate scaling and the warm-up + cosine schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# Official learning rates are quoted for this global batch and rescaled linearly to the actual one.
REFERENCE_BATCH = 4096


def is_decayed(name: str, param: torch.Tensor) -> bool:
    """Official rule: no decay for 1-D parameters or names ending in ``.bias``; everything else decays.

    0-dim parameters (both logit scales) therefore *are* decayed, as are position embeddings,
    group tokens and the token embedding.
    """
    return not (param.ndim == 1 or name.endswith(".bias"))


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW parameter groups, ``decay`` (``weight_decay``) then ``no_decay`` (0), trainable parameters only.

    Each group also carries ``"name"`` and ``"param_names"`` (for logs and checks). On the
    ``gcc-yfcc`` model this gives 138 decayed tensors and 263 without decay, the official split.
    """
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if is_decayed(name, param) else no_decay).append((name, param))
    return [
        {"name": "decay", "params": [p for _, p in decay], "param_names": [n for n, _ in decay],
         "weight_decay": weight_decay},
        {"name": "no_decay", "params": [p for _, p in no_decay], "param_names": [n for n, _ in no_decay],
         "weight_decay": 0.0},
    ]


# Devices with a fused (single-kernel) AdamW in PyTorch.
FUSED_DEVICES = frozenset({"cpu", "cuda"})


def can_fuse(model: nn.Module) -> bool:
    """Whether every trainable parameter is a floating-point tensor on a device with fused AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    return bool(params) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8, fused: bool | None = None,
) -> torch.optim.AdamW:
    """Official optimiser: AdamW over :func:`weight_decay_groups` (lr is then driven by the schedule).

    ``fused=None`` uses PyTorch's fused AdamW wherever :func:`can_fuse` allows: the same update
    (parameters agree with the per-tensor loop to ~3e-8 after a step), in one pass over all
    tensors: 33 ms instead of 220 ms per step for the 55.7 M parameters of ``gcc-yfcc`` on two CPU
    threads. Its state dict is the same, so checkpoints move freely between the two.
    """
    if fused is None:
        fused = can_fuse(model)
    return torch.optim.AdamW(
        weight_decay_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused or None
    )


def scale_lr(
    lr: float, global_batch: int, accumulation_steps: int = 1, reference_batch: int = REFERENCE_BATCH
) -> float:
    """Linear scaling: ``lr * global_batch / reference_batch``, times ``accumulation_steps`` when > 1.

    ``global_batch`` = per-rank batch x world size (official ``batch_size * world_size / 4096``).
    """
    scaled = lr * global_batch / reference_batch
    return scaled * accumulation_steps if accumulation_steps > 1 else scaled


@dataclass(frozen=True)
class WarmupCosineSchedule:
    """Per-step learning rate of timm 0.4 ``CosineLRScheduler`` (``t_in_epochs=False``, one cycle).

    With ``t`` the optimizer step counted from 0:

    * ``t < warmup_steps``: ``warmup_lr + t * (base_lr - warmup_lr) / warmup_steps`` (step 0 uses ``warmup_lr``);
    * ``warmup_steps <= t < total_steps``: ``min_lr + 0.5 * (base_lr - min_lr) * (1 + cos(pi * t / total_steps))``
      with ``t`` still counted from 0, not from the end of warm-up (hence a small drop at the boundary);
    * ``t >= total_steps``: ``min_lr``.
    """

    base_lr: float
    warmup_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + step * (self.base_lr - self.warmup_lr) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_lr
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * step / self.total_steps))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's ``lr`` to the value for ``step``; returns it."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
