"""Generated image-caption batches (data source ``type: random``) for smoke tests and runs without data.

Sample ``i`` shows two flat colours, one above the other, with a little pixel noise; its caption
names them (``"a red square above a blue square."``) and its ``K`` prompts are
``"a photo of red."``, ``"a photo of blue."``, then copies of the caption (the official padding).
Everything is a function of ``(seed, epoch, rank, batch index)``, so a loader started at any batch
yields exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import permutations
from typing import Any

import numpy as np
import torch

from groupvit.errors import ConfigError
from groupvit.text.tokenizer import tokenize

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1), "green": (0.1, 0.75, 0.25), "blue": (0.1, 0.25, 0.9), "yellow": (0.95, 0.9, 0.1),
    "purple": (0.55, 0.15, 0.7), "orange": (0.95, 0.55, 0.1), "white": (0.95, 0.95, 0.95), "black": (0.05, 0.05, 0.05),
}
PAIRS: list[tuple[str, str]] = list(permutations(COLOURS, 2))  # 56 (top, bottom) combinations
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomPairsLoader:
    """Train-loader interface (``num_batches``, ``skipped``, iteration) over generated samples.

    Args:
        size: samples per epoch (over all ranks); each rank gets ``size // world_size`` of them.
        batch_size: samples per batch and rank.
        image_size: side ``S`` of the square images.
        multi_label: prompts per sample ``K``.
        context_length: tokens per text.
        seed, epoch, rank, world_size: the sample order is a permutation seeded by ``(seed, epoch)``,
            split ``perm[rank::world_size]``.
        start_batch: first batch to yield.

    Batches are ``{"images": FloatTensor [B, 3, S, S] (ImageNet-normalised), "texts": LongTensor
    [B, 1+K, context_length], "captions": list[str]}``.
    """

    def __init__(self, size: int, batch_size: int, image_size: int, multi_label: int = 0, context_length: int = 77,
                 seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1, start_batch: int = 0) -> None:
        if size < batch_size * world_size:
            raise ConfigError(
                f"random data source of size {size} cannot fill one batch of {batch_size} on {world_size} rank(s)"
            )
        self.size, self.batch_size, self.image_size = size, batch_size, image_size
        self.multi_label, self.context_length = multi_label, context_length
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.start_batch = start_batch
        self.num_batches = (size // world_size) // batch_size
        self.skipped = 0

    @classmethod
    def from_data_config(cls, data: dict[str, Any], image_size: int, *, epoch: int, rank: int = 0,
                         world_size: int = 1, start_batch: int = 0) -> RandomPairsLoader:
        """Build from a ``data`` config section whose only source is ``{type: random, size: N}``."""
        (source,) = data["sources"]
        return cls(int(source.get("size", 64)), int(data.get("batch_size", 8)), image_size,
                   int(data.get("multi_label", 0)), int(data.get("context_length", 77)), int(data.get("seed", 0)),
                   epoch=epoch, rank=rank, world_size=world_size, start_batch=start_batch)

    def sample(self, index: int) -> tuple[torch.Tensor, list[str]]:
        """Image ``[3, S, S]`` and texts ``[caption, prompt_1..K]`` of sample ``index`` in this epoch."""
        top, bottom = PAIRS[index % len(PAIRS)]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        s = self.image_size
        image = np.empty((3, s, s), dtype=np.float32)
        image[:, : s // 2] = np.asarray(COLOURS[top], dtype=np.float32)[:, None, None]
        image[:, s // 2:] = np.asarray(COLOURS[bottom], dtype=np.float32)[:, None, None]
        image += rng.normal(0.0, 0.05, size=image.shape).astype(np.float32)
        mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
        std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
        caption = f"a {top} square above a {bottom} square."
        prompts = [f"a photo of {top}.", f"a photo of {bottom}."][: self.multi_label]
        prompts += [caption] * (self.multi_label - len(prompts))
        return torch.from_numpy((image - mean) / std), [caption, *prompts]

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)[self.rank::self.world_size]
        for b in range(self.start_batch, self.num_batches):
            indices = order[b * self.batch_size:(b + 1) * self.batch_size].tolist()
            images, texts = zip(*(self.sample(i) for i in indices), strict=True)
            flat = [t for sample in texts for t in sample]
            tokens = tokenize(flat, self.context_length).reshape(len(indices), 1 + self.multi_label, -1)
            yield {"images": torch.stack(images), "texts": tokens, "captions": [t[0] for t in texts]}
