"""Reusable transformer layers: MLPs, stochastic depth, self- and cross-attention blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FusedLinear(nn.Module):
    """Runs several ``nn.Linear`` layers that read the same input as one matrix multiply.

    ``[..., in] -> [..., sum(out_i)]``, the outputs concatenated in the order of ``layers``. The layers
    keep their own parameters (and state-dict keys); the concatenated weight is rebuilt on every call
    while gradients are recorded and cached otherwise. The cache follows in-place updates through the
    parameters' version counters and is dropped whenever the module's mode changes (``train()`` /
    ``eval()``): fused optimizer steps (AdamW ``fused=True``) update parameters without bumping their version
    counters, and an evaluation after training steps must not see the weights of an earlier evaluation.
    """

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        if len({layer.bias is None for layer in layers}) > 1:
            raise ValueError("FusedLinear needs all layers with a bias or all without")
        # A plain list: the layers are registered by their owners, not here (no duplicate state-dict keys).
        self._layers = list(layers)
        self._cache: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        # While recording gradients the concatenation must be part of the graph; a cached tensor
        # (possibly made under inference mode) could not be saved for backward.
        if torch.is_grad_enabled():
            return self._concat()
        key = tuple(
            (p.data_ptr(), p._version, p.dtype, p.device)
            for layer in self._layers for p in (layer.weight, layer.bias) if p is not None
        )
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, *self._concat())
        return self._cache[1], self._cache[2]

    def _concat(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = torch.cat([layer.weight for layer in self._layers])
        biases = [layer.bias for layer in self._layers]
        bias = None if biases[0] is None else torch.cat(biases)
        return weight, bias

    def train(self, mode: bool = True) -> FusedLinear:
        self._cache = None
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._weights()
        return F.linear(x, weight, bias)


class QuickGELU(nn.Module):
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)`` (text tower)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(x)`` written over ``x`` where the activation has an in-place form (GELU, QuickGELU); same values."""
    if isinstance(act, nn.GELU):
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    if isinstance(act, QuickGELU):
        return x.mul_(torch.sigmoid(1.702 * x))
    return act(x)


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))`` over the last axis: ``[..., in] -> [..., out]``."""

    def __init__(
        self, in_features: int, hidden_features: int, out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        # Without autograd the activation overwrites fc1's fresh output: one wide buffer fewer to
        # allocate and fill (about -3 % on an image embedding).
        hidden = self.act(hidden) if torch.is_grad_enabled() else activation_(self.act, hidden)
        return self.drop(self.fc2(self.drop(hidden)))


class TokenMlp(Mlp):
    """An :class:`Mlp` that mixes the token axis: ``[B, N_in, C] -> [B, N_out, C]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample factor ``[B, 1, ..., 1]``: 0 for a dropped sample, ``1 / (1 - p)`` for a kept one."""
        keep = 1.0 - self.p
        return x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        return x * self._scale(x)

    def add(self, residual: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """``residual + self(branch)`` in one pass over the tensors (``addcmul`` with the per-sample factor)."""
        if self.p == 0.0 or not self.training:
            return residual + branch
        return torch.addcmul(residual, branch, self._scale(branch))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              dropout_p: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention ``q [B, h, S, d], k, v [B, h, L, d] -> [B, h, S, d]`` (scale ``d ** -0.5``).

    ``F.scaled_dot_product_attention`` everywhere except one case: training on a CPU (gradients recorded, no
    dropout). There the fused kernel's backward is the slowest part of a small model's step (40 % of the
    synthetic recipe's bf16 step, BENCHMARKS.md), and the plain form runs the whole step 1.5x faster: scores
    and softmax in float32 or wider (under bf16 autocast this is closer to the float32 gradients than the fused
    kernel), then the weighted sum of ``v`` in ``v``'s dtype. ``causal`` masks every key after the query
    (``S == L``).
    """
    if not (q.device.type == "cpu" and dropout_p == 0.0 and torch.is_grad_enabled() and q.requires_grad):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    with torch.autocast("cpu", enabled=False):
        dtype = torch.promote_types(q.dtype, torch.float32)
        scores = (q.to(dtype) * q.shape[-1] ** -0.5) @ k.to(dtype).transpose(-2, -1)
        if causal:
            n = scores.shape[-1]
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        weights = scores.softmax(dim=-1).to(v.dtype)
        return weights @ v


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection: ``[B, N, C] -> [B, N, C]``.

    Uses :func:`attention` (scale ``head_dim ** -0.5``); ``causal=True`` masks every key after the query
    (text tower).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        B, N, C = x.shape
        h = self.num_heads
        # Split along heads of a [B, 3h, N, d] view: in backward the three gradients are joined by a
        # single concatenation (unbinding a permuted [3, B, h, N, d] view costs a stack and a copy).
        q, k, v = self.qkv(x).view(B, N, 3 * h, C // h).transpose(1, 2).split(h, dim=1)
        out = attention(q, k, v, causal=causal, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``[B, S, C]`` over keys/values ``[B, L, C]`` -> ``[B, S, C]``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.kv_proj = FusedLinear([self.k_proj, self.v_proj])

    def attend(self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of ``query [B, S, C]`` over already projected ``k, v [B, L, C]`` -> ``[B, S, C]``."""
        B, S, C = query.shape
        L = k.shape[1]
        h, d = self.num_heads, C // self.num_heads
        q = self.q_proj(query).view(B, S, h, d).transpose(1, 2)
        k = k.reshape(B, L, h, d).transpose(1, 2)
        v = v.reshape(B, L, h, d).transpose(1, 2)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, S, C))

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        k, v = self.kv_proj(key).chunk(2, dim=-1)
        return self.attend(query, k, v)


class TransformerBlock(nn.Module):
    """Pre-norm block ``x + DropPath(attn(norm1(x)))`` then ``x + DropPath(mlp(norm2(x)))``.

    Shape ``[B, N, C] -> [B, N, C]``. The vision tower uses exact GELU; the text tower QuickGELU
    and a causal mask.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
        drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU, eps: float = 1e-5, causal: bool = False,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop_path.add(x, self.attn(self.norm1(x), causal=self.causal))
        return self.drop_path.add(x, self.mlp(self.norm2(x)))


class CrossAttentionBlock(nn.Module):
    """Cross-attention block with post-norm (the grouping block's ``pre_assign_attn``).

    ``q = q + attn(q, x)``; ``q = q + mlp(norm2(q))``; ``q = norm_post(q)``. No norm on the inputs:
    they are already normalised by the grouping block. ``[B, S, C], [B, L, C] -> [B, S, C]``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.attn = CrossAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_post = nn.LayerNorm(dim, eps=eps)

    def attend(self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The block with keys/values already projected by ``attn.k_proj`` / ``attn.v_proj``: ``[B, L, C]``."""
        x = query + self.attn.attend(query, k, v)
        x = x + self.mlp(self.norm2(x))
        return self.norm_post(x)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        k, v = self.attn.kv_proj(key).chunk(2, dim=-1)
        return self.attend(query, k, v)
