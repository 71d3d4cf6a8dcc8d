"""Text embeddings of a frozen text tower, computed once per distinct token row.

When ``train.trainable`` freezes the text tower and its projection head (whose BatchNorm then keeps its
running statistics), a text's embedding no longer changes during training: the prompts, drawn from a small
vocabulary, and repeated captions are encoded once. Entries are kept least recently used first, at most
``max_entries`` (one float32 vector of ``projection_dim`` each: 1 KiB at 256).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from groupvit.model import GroupViT


def text_tower_frozen(model: GroupViT) -> bool:
    """Whether no parameter of the text tower or its projection head trains."""
    params = [*model.text.parameters(), *model.text_projector.parameters()]
    return not any(p.requires_grad for p in params)


class TextCache:
    """``cache(tokens [..., T]) -> float32 [..., D]``: un-normalised text embeddings, each distinct row encoded once.

    Rows are encoded without gradient and outside any autocast (float32), in one batch of the rows not seen yet.
    """

    def __init__(self, model: GroupViT, max_entries: int = 200_000) -> None:
        self.model = model
        self.max_entries = max_entries
        self.entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        lead, rows = tokens.shape[:-1], tokens.reshape(-1, tokens.shape[-1])
        keys = [row.tobytes() for row in rows.cpu().numpy()]
        missing = list(dict.fromkeys(k for k in keys if k not in self.entries))
        if missing:
            index = {k: i for i, k in enumerate(keys)}
            batch = rows[[index[k] for k in missing]]
            with torch.no_grad(), torch.autocast(tokens.device.type, enabled=False):
                embeds = self.model.encode_text(batch, normalize=False).float()
            for key, embed in zip(missing, embeds, strict=True):
                self.entries[key] = embed
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        out = torch.stack([self.entries[k] for k in keys])
        for key in keys:
            self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return out.reshape(*lead, -1)
