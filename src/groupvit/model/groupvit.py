"""The dual encoder: GroupViT image tower, text tower, BatchNorm projection heads, temperatures."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from groupvit.config import GroupViTConfig
from groupvit.model.grouping import Assignment
from groupvit.model.text import TextEncoder
from groupvit.model.vision import VisionEncoder

# Official temperatures are learnable but clamped: exp(logit_scale) <= 100.
MAX_LOGIT_SCALE = 100.0


class ProjectionHead(nn.Module):
    """Official ``ProjectMLP`` with two layers: ``Linear -> BatchNorm1d -> ReLU -> Linear``.

    Accepts ``[B, C]`` or per-token ``[B, N, C]`` (BatchNorm statistics over all ``B*N`` rows, as
    the official 1x1 Conv1d layout) and returns ``[B, D]`` / ``[B, N, D]``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = self.fc2(F.relu(self.bn(self.fc1(x.reshape(-1, shape[-1])))))
        return x.reshape(*shape[:-1], x.shape[-1])


@dataclass
class ImageEncoding:
    """Everything the image tower gives, as used by segmentation.

    Attributes:
        image_embeds: ``[B, D]`` projected pooled image feature.
        group_embeds: ``[B, G, D]`` projected final segment tokens.
        assignments: per grouping stage, soft and hard maps ``[B, S_i, L_i]``.
        grid: ``(h, w)`` patch grid.
    All embeddings are L2-normalised when requested.
    """

    image_embeds: torch.Tensor
    group_embeds: torch.Tensor
    assignments: list[Assignment]
    grid: tuple[int, int]


@dataclass
class ContrastiveOutput:
    """Image-text similarity of a batch: ``logits_per_image [B_img, B_txt]`` (scaled cosine)."""

    logits_per_image: torch.Tensor
    logits_per_text: torch.Tensor
    image_embeds: torch.Tensor
    text_embeds: torch.Tensor


class GroupViT(nn.Module):
    """GroupViT dual encoder (official ``MultiLabelContrastive`` without the loss).

    Images are ``[B, 3, H, W]`` float, ImageNet-normalised; texts are token ids ``[B, T]`` from
    :func:`groupvit.tokenize`.
    """

    def __init__(self, config: GroupViTConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config.vision)
        self.text = TextEncoder(config.text)
        self.image_projector = ProjectionHead(
            config.vision.width, config.projection_hidden_dim, config.projection_dim
        )
        self.text_projector = ProjectionHead(config.text.width, config.projection_hidden_dim, config.projection_dim)
        init = math.log(1.0 / config.contrast_temperature)
        self.logit_scale = nn.Parameter(torch.tensor(init))
        self.multi_label_logit_scale = (
            nn.Parameter(torch.tensor(init)) if config.has_multi_label_scale else None
        )
        # The settings this model segments best with (groupvit.inference), written into its checkpoints;
        # empty for official and Hugging Face weights, which keep the official protocol.
        self.inference: dict[str, Any] = {}

    def scale(self, multi_label: bool = False) -> torch.Tensor:
        """Clamped temperature ``min(exp(logit_scale), 100)``; the multi-label one when asked and owned."""
        param = self.multi_label_logit_scale if multi_label and self.multi_label_logit_scale is not None \
            else self.logit_scale
        return param.exp().clamp(max=MAX_LOGIT_SCALE)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``images [B, 3, H, W]`` -> image embeddings ``[B, D]``."""
        embeds = self.image_projector(self.vision(images).pooled)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``tokens [B, T]`` -> text embeddings ``[B, D]``; also accepts ``[B, K, T]`` -> ``[B, K, D]``."""
        lead = tokens.shape[:-1]
        embeds = self.text_projector(self.text(tokens.reshape(-1, tokens.shape[-1])))
        embeds = embeds.reshape(*lead, -1)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_image_groups(self, images: torch.Tensor, normalize: bool = True) -> ImageEncoding:
        """Image embeddings, group embeddings ``[B, G, D]`` and the assignment maps of each stage.

        The same image projector embeds the pooled feature and each final segment token
        (official segmentation; BatchNorm uses its running statistics in eval mode).
        """
        out = self.vision(images)
        image_embeds = self.image_projector(out.pooled)
        group_embeds = self.image_projector(out.tokens)
        if normalize:
            image_embeds = F.normalize(image_embeds, dim=-1)
            group_embeds = F.normalize(group_embeds, dim=-1)
        return ImageEncoding(image_embeds, group_embeds, out.assignments, out.grid)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> ContrastiveOutput:
        """CLIP-style logits between every image ``[B_i, 3, H, W]`` and every text ``[B_t, T]``."""
        image_embeds = self.encode_image(images)
        text_embeds = self.encode_text(tokens)
        logits_per_image = self.scale() * image_embeds @ text_embeds.t()
        return ContrastiveOutput(logits_per_image, logits_per_image.t(), image_embeds, text_embeds)
