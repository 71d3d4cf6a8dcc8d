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
    in the vocabulary. Because attention is causal, positions after the last end-of-text token in the
    batch cannot influence the result, so they are not computed.
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
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1 if tokens.numel() else 0
        return self.pool(tokens[:, :length], eot)

    def pool(self, tokens: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Unchecked forward: ``tokens [B, T]`` read at positions ``eot [B]`` -> ``[B, width]``.

        Every position is computed (no data-dependent shapes: what an exported graph needs).
        """
        x = self.token_embedding(tokens) + self.positional_embedding[:tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), eot]
