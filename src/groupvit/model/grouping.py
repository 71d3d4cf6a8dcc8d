"""The grouping block: image tokens are assigned to group tokens and merged into segment tokens; the chained
assignment maps of several stages, and a recorder of what each grouping stage computed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from groupvit.model.layers import CrossAttentionBlock, FusedLinear, Mlp, TokenMlp


class Assignment(NamedTuple):
    """Assignment of ``L`` input tokens to ``S`` groups, each ``[B, S, L]``.

    ``soft`` is the noise-free softmax over the group axis (every column sums to 1); ``hard`` is
    the assignment actually used to pool (one-hot per token when hard, Gumbel-perturbed in training).
    """

    soft: torch.Tensor
    hard: torch.Tensor


def straight_through_one_hot(y_soft: torch.Tensor, dim: int) -> torch.Tensor:
    """One-hot of ``argmax(y_soft, dim)`` in the forward pass, gradient of ``y_soft`` backward."""
    index = y_soft.argmax(dim, keepdim=True)
    y_hard = torch.zeros_like(y_soft).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


def sample_gumbel(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise of ``shape`` (same draw as ``torch.distributions.Gumbel``)."""
    dist = torch.distributions.Gumbel(
        torch.tensor(0.0, device=like.device, dtype=like.dtype),
        torch.tensor(1.0, device=like.device, dtype=like.dtype),
    )
    return dist.sample(shape)


class AssignAttention(nn.Module):
    """Single-head assignment attention (official ``AssignAttention``).

    Each image token distributes over the groups (softmax over the **group** axis); with hard
    assignment it picks one group (straight-through one-hot; Gumbel noise in training only). Groups
    then average the values of their tokens with denominator ``count + assign_eps`` (official 1).
    """

    def __init__(self, dim: int, hard: bool = True, gumbel: bool = True, gumbel_tau: float = 1.0,
                 assign_eps: float = 1.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.hard = hard
        self.gumbel = gumbel
        self.gumbel_tau = gumbel_tau
        self.assign_eps = assign_eps
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def logits(self, groups: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Raw assignment logits ``[B, S, L]`` of groups ``[B, S, C]`` and tokens ``[B, L, C]``."""
        return self.logits_projected(groups, self.k_proj(tokens))

    def logits_projected(self, groups: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` with the tokens' keys ``k = k_proj(tokens) [B, L, C]`` already computed."""
        return (self.q_proj(groups) @ k.transpose(1, 2)) * self.scale

    def forward(self, groups: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, Assignment]:
        """Pool ``tokens [B, L, C]`` into ``groups [B, S, C]``; returns ``([B, S, C], Assignment)``."""
        return self.assign_projected(groups, self.k_proj(tokens), self.v_proj(tokens))

    def assign_projected(
        self, groups: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, Assignment]:
        """:meth:`forward` with ``k = k_proj(tokens)``, ``v = v_proj(tokens)`` ``[B, L, C]`` already computed."""
        raw = self.logits_projected(groups, k)
        if raw.dtype in (torch.float16, torch.bfloat16):
            # Softmax, Gumbel noise and the straight-through one-hot in float32: under autocast the logits come
            # in half precision, whose Gumbel draws would be coarse and cut off (near 5 in bfloat16).
            raw = raw.float()
        soft = raw.softmax(dim=1)
        if self.gumbel and self.training:
            noisy = ((raw + sample_gumbel(raw.shape, raw)) / self.gumbel_tau).softmax(dim=1)
            attn = straight_through_one_hot(noisy, dim=1) if self.hard else noisy
        elif self.hard:
            attn = straight_through_one_hot(soft, dim=1)
        else:
            attn = soft
        pooled = (attn / (attn.sum(dim=-1, keepdim=True) + self.assign_eps)) @ v
        return self.proj(pooled), Assignment(soft=soft, hard=attn)


class GroupingBlock(nn.Module):
    """Merges image tokens ``[B, L, C]`` into ``num_output_group`` segment tokens ``[B, S_out, C]``.

    Official ``GroupingBlock`` (reference §1.6): LayerNorm both inputs; token-mixing MLP
    ``S_in -> S_out`` over the group tokens + LayerNorm; a 6-head cross-attention block with post-norm
    from the projected groups to the image tokens (absent from the paper, present in the released
    model); the assignment attention; residual with the projected groups (``residual=False`` drops it: the
    segments are then made of their pooled tokens only); channel MLP residual.
    """

    def __init__(
        self, dim: int, num_heads: int, num_group_token: int, num_output_group: int,
        mlp_ratio: tuple[float, float] = (0.5, 4.0), hard: bool = True, gumbel: bool = True,
        gumbel_tau: float = 1.0, assign_eps: float = 1.0, eps: float = 1e-5, residual: bool = True,
    ) -> None:
        super().__init__()
        self.residual = residual
        tokens_dim, channels_dim = int(mlp_ratio[0] * dim), int(mlp_ratio[1] * dim)
        self.norm_tokens = nn.LayerNorm(dim, eps=eps)
        self.mlp_inter = TokenMlp(num_group_token, tokens_dim, num_output_group)
        self.norm_post_tokens = nn.LayerNorm(dim, eps=eps)
        self.norm_x = nn.LayerNorm(dim, eps=eps)
        self.pre_assign_attn = CrossAttentionBlock(dim, num_heads, mlp_ratio=mlp_ratio[1], eps=eps)
        self.assign = AssignAttention(dim, hard=hard, gumbel=gumbel, gumbel_tau=gumbel_tau,
                                      assign_eps=assign_eps)
        self.norm_new_x = nn.LayerNorm(dim, eps=eps)
        self.mlp_channels = Mlp(dim, channels_dim, dim)
        # The cross-attention and the assignment both read the normalised image tokens: their four
        # projections (attention k, v; assignment k, v) run as one matrix multiply.
        self.token_proj = FusedLinear([
            self.pre_assign_attn.attn.k_proj, self.pre_assign_attn.attn.v_proj, self.assign.k_proj, self.assign.v_proj,
        ])

    def forward(self, x: torch.Tensor, group_tokens: torch.Tensor) -> tuple[torch.Tensor, Assignment]:
        """``x [B, L, C]``, ``group_tokens [B, S_in, C]`` -> ``([B, S_out, C], Assignment [B, S_out, L])``."""
        group_tokens = self.norm_tokens(group_tokens)
        x = self.norm_x(x)
        projected = self.norm_post_tokens(self.mlp_inter(group_tokens))
        attn_k, attn_v, assign_k, assign_v = self.token_proj(x).chunk(4, dim=-1)
        projected = self.pre_assign_attn.attend(projected, attn_k, attn_v)
        new_x, assignment = self.assign.assign_projected(projected, assign_k, assign_v)
        if self.residual:
            new_x = new_x + projected
        return new_x + self.mlp_channels(self.norm_new_x(new_x)), assignment


def chain_assignments(soft_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Patch-to-group maps of every stage from the soft assignments ``[B, S_i, L_i]``.

    Stage ``i``'s map is ``soft_0ᵀ @ soft_1ᵀ @ ... @ soft_iᵀ``: ``[B, L_0, S_i]``, the probability
    that a patch ends in group ``j`` of stage ``i``.
    """
    chains: list[torch.Tensor] = []
    for soft in soft_maps:
        step = soft.float().transpose(1, 2)
        chains.append(step if not chains else chains[-1] @ step)
    return chains


@dataclass
class StageCapture:
    """What one grouping stage computed in a forward pass.

    Attributes:
        tokens: the stage's input image tokens as the grouping block receives them ``[B, L, C]``.
        segments: the segment tokens the block returns ``[B, S, C]``.
        queries: the assignment queries of the groups ``[B, S, C]`` (``q_proj`` of the projected groups).
    """

    tokens: torch.Tensor | None = None
    segments: torch.Tensor | None = None
    queries: torch.Tensor | None = None


@dataclass
class GroupingCapture:
    """Per grouping stage, a :class:`StageCapture` (filled by :func:`capture_grouping`)."""

    stages: list[StageCapture] = field(default_factory=list)


@contextlib.contextmanager
def capture_grouping(vision: nn.Module) -> Iterator[GroupingCapture]:
    """Record every grouping stage's input tokens, segments and assignment queries during the block.

    ``vision`` is a :class:`~groupvit.model.vision.VisionEncoder`; the last forward pass inside the block
    wins. Forward hooks only: the computation and its gradients are unchanged.
    """
    capture = GroupingCapture()
    handles = []
    for stage in vision.stages:
        if stage.grouping is None:
            continue
        record = StageCapture()
        capture.stages.append(record)

        def on_block(_module: nn.Module, inputs: tuple, output: tuple, record: StageCapture = record) -> None:
            record.tokens, record.segments = inputs[0], output[0]

        def on_query(_module: nn.Module, _inputs: tuple, output: torch.Tensor, record: StageCapture = record) -> None:
            record.queries = output

        handles.append(stage.grouping.register_forward_hook(on_block))
        handles.append(stage.grouping.assign.q_proj.register_forward_hook(on_query))
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()
