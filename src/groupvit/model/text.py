"""The CLIP-style causal text transformer, pooled at the end-of-text token."""

from __future__ import annotations

import torch
from torch import nn

from groupvit.config import TextConfig
from groupvit.errors import InputError
from groupvit.model.layers import QuickGELU, TransformerBlock


class TextEncoder(nn.Module):
    """Token ids ``[B, T]`` (``T <= context_length``) -> pooled text feature ``[B, width]``.

    Pooling takes the token at ``argmax(ids)`` of each row: the end-of-text id 49407 is the largest
    in the vocabulary. Because attention is causal, positions after a row's end-of-text token cannot
    influence its result, and rows do not interact: :meth:`forward` encodes each distinct row once and
    groups the rows by length (:func:`length_buckets`), each group cut at its longest row. A training batch
    of captions and short noun prompts (synthetic recipe: 512 rows, captions up to 39 tokens, prompts
    around 8, many prompts repeated) then costs a fraction of the padded batch, with the same result.
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.width, cfg.heads, cfg.mlp_ratio, act_layer=QuickGELU,
                             eps=cfg.layer_norm_eps, causal=True)
            for _ in range(cfg.layers)
        )
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CLIP initialisation (official ``TextTransformer``)."""
        width, layers = self.cfg.width, self.cfg.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std = width ** -0.5
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=attn_std)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.normal_(block.attn.proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.proj.bias)
            nn.init.normal_(block.mlp.fc1.weight, std=fc_std)
            nn.init.normal_(block.mlp.fc2.weight, std=proj_std)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        """Raise :class:`InputError` unless ``tokens`` is an integer ``[B, T]`` tensor of valid ids."""
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise InputError(f"tokens must be an integer tensor [B, T], got {shape}; use groupvit.tokenize(texts)")
        if tokens.shape[1] > self.cfg.context_length:
            raise InputError(
                f"tokens have {tokens.shape[1]} positions, more than the context length "
                f"{self.cfg.context_length}; tokenize with context_length={self.cfg.context_length}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size):
            raise InputError(f"token ids must lie in [0, {self.cfg.vocab_size}); use groupvit.tokenize(texts)")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, T]`` int64 -> ``[B, width]``."""
        self.check_tokens(tokens)
        if not tokens.numel():
            return self.pool(tokens[:, :0], tokens.new_zeros(tokens.shape[0]))
        rows, inverse = torch.unique(tokens, dim=0, return_inverse=True)
        eot = rows.argmax(dim=-1)
        order = eot.argsort(stable=True)
        lengths = (eot[order] + 1).tolist()
        pooled, start = [], 0
        for end in length_buckets(lengths):
            index = order[start:end]
            pooled.append(self.pool(rows[index, :lengths[end - 1]], eot[index]))
            start = end
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        return torch.cat(pooled)[rank[inverse]]

    def pool(self, tokens: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Unchecked forward: ``tokens [B, T]`` read at positions ``eot [B]`` -> ``[B, width]``.

        Every position is computed (no data-dependent shapes: what an exported graph needs).
        """
        x = self.token_embedding(tokens) + self.positional_embedding[:tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), eot]


def length_buckets(lengths: list[int], max_buckets: int = 3, overhead: int = 256) -> list[int]:
    """End indices of at most ``max_buckets`` consecutive groups of sorted ``lengths`` (ascending).

    Minimises the padded token count ``sum(len(group) * max(group))`` plus ``overhead`` tokens per extra
    group (the fixed cost of running the tower once more), by dynamic programming over the distinct lengths.
    ``[2, 2, 3, 9, 9]`` with no overhead and two groups -> ``[3, 5]`` (9 + 18 tokens instead of 45).
    """
    ends = [i + 1 for i in range(len(lengths)) if i + 1 == len(lengths) or lengths[i + 1] != lengths[i]]
    inf = float("inf")
    # best[b][j]: cheapest cost of the rows before ends[j] in b + 1 groups; back[b][j]: the previous group's end.
    best = [[inf] * len(ends) for _ in range(max_buckets)]
    back = [[-1] * len(ends) for _ in range(max_buckets)]
    for j, end in enumerate(ends):
        best[0][j] = end * lengths[end - 1]
    for b in range(1, max_buckets):
        for j, end in enumerate(ends):
            for i in range(j):
                cost = best[b - 1][i] + (end - ends[i]) * lengths[end - 1] + overhead
                if cost < best[b][j]:
                    best[b][j], back[b][j] = cost, i
    b = min(range(max_buckets), key=lambda n: best[n][-1])
    out, j = [], len(ends) - 1
    while b >= 0:
        out.append(ends[j])
        j, b = back[b][j], b - 1
    return out[::-1]
