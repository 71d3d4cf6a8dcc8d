"""The GroupViT image encoder: patch tokens -> stage-1 groups -> stage-2 groups -> pooled feature."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from groupvit.config import VisionConfig
from groupvit.errors import ConfigError, InputError
from groupvit.model.grouping import Assignment, GroupingBlock
from groupvit.model.layers import TokenMlp, TransformerBlock


@dataclass
class VisionOutput:
    """Result of :meth:`VisionEncoder.forward`.

    Attributes:
        pooled: ``[B, C]`` mean of the final tokens (the image feature).
        tokens: ``[B, G, C]`` final (LayerNorm-ed) segment tokens, ``G`` = last stage's output groups.
        assignments: one :class:`Assignment` per grouping stage, stage ``i`` of shape
            ``[B, S_i, L_i]`` (``L_0`` = number of patches, ``L_i`` = ``S_{i-1}``).
        grid: ``(h, w)`` patch grid of the input.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    assignments: list[Assignment]
    grid: tuple[int, int]


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution then LayerNorm: ``[B, 3, H, W] -> [B, h*w, C]``."""

    def __init__(self, patch_size: int, in_channels: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(images)
        grid = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


class ConvStem(nn.Module):
    """Convolutional stem (Xiao et al. 2021): ``[B, 3, H, W] -> [B, h*w, C]`` on the same patch grid.

    ``log2(patch)`` scales, each a stride-2 then a stride-1 3x3 convolution (channels 32, 64, ... capped at
    ``dim``), every one followed by BatchNorm and ReLU; then a 1x1 convolution to ``dim`` and LayerNorm.
    Unlike a single patch convolution it sees detail inside a patch and across patch borders (receptive
    field 43 pixels at patch 8), which small vision towers trained from scratch need to tell shapes apart.
    """

    def __init__(self, patch_size: int, in_channels: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        steps = patch_size.bit_length() - 1
        if patch_size < 2 or 1 << steps != patch_size:
            raise ConfigError(f"a conv stem needs a power-of-two patch_size >= 2, got {patch_size}")
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(steps):
            out = min(dim, 32 << i)
            for stride in (2, 1):
                layers += [nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                channels = out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, dim, kernel_size=1)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(self.convs(images))
        grid = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a square position table ``[1, n*n, C]`` to ``grid`` bicubically: ``[1, h*w, C]``.

    Same as the official eval-time ``get_pos_embed`` (``align_corners=False``); the identity when
    the grid already matches. An exported graph always resizes: bicubic resampling to the same size
    is exactly the identity (weights 0, 1, 0, 0), and the graph stays valid for every image size.
    """
    n = int(round(pos_embed.shape[1] ** 0.5))
    if not torch.compiler.is_exporting() and grid == (n, n):
        return pos_embed
    table = pos_embed.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
    return table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)


class GroupingStage(nn.Module):
    """One stage: transformer blocks over ``[image tokens ; group tokens]``, then optional grouping.

    Stage ``i > 0`` with group tokens has a ``group_projector`` (LayerNorm + token MLP) that turns
    the previous stage's group tokens into this stage's, added to zero-initialised learned tokens.
    """

    def __init__(
        self, cfg: VisionConfig, index: int, drop_path: list[float], prev_group_tokens: int,
    ) -> None:
        super().__init__()
        dim, eps = cfg.width, cfg.layer_norm_eps
        self.num_group_tokens = cfg.num_group_tokens[index]
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, cfg.num_heads[index], cfg.mlp_ratio, drop=cfg.drop_rate,
                             attn_drop=cfg.attn_drop_rate, drop_path=p, eps=eps)
            for p in drop_path
        )
        self.group_token: nn.Parameter | None = None
        self.group_projector: nn.Sequential | None = None
        self.grouping: GroupingBlock | None = None
        if self.num_group_tokens > 0:
            self.group_token = nn.Parameter(torch.zeros(1, self.num_group_tokens, dim))
            if prev_group_tokens > 0:
                self.group_projector = nn.Sequential(
                    nn.LayerNorm(dim, eps=eps), TokenMlp(prev_group_tokens, dim // 2, self.num_group_tokens)
                )
            self.grouping = GroupingBlock(
                dim, cfg.num_heads[index], self.num_group_tokens, cfg.num_output_groups[index],
                mlp_ratio=cfg.assign_mlp_ratio, hard=cfg.hard_assignment, gumbel=cfg.gumbel,
                gumbel_tau=cfg.gumbel_tau, assign_eps=cfg.assign_eps, eps=eps, residual=cfg.group_residual,
            )

    def forward(
        self, x: torch.Tensor, prev_group_tokens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, Assignment | None]:
        """``x [B, L, C]`` -> ``(next tokens [B, S_out or L, C], group tokens [B, S, C] or None, assignment)``.

        The group tokens returned are those leaving the transformer blocks (before the grouping
        block's norms): the next stage's projector reads them.
        """
        if self.group_token is None:
            for block in self.blocks:
                x = block(x)
            return x, None, None
        groups = self.group_token.expand(x.shape[0], -1, -1)
        if self.group_projector is not None and prev_group_tokens is not None:
            groups = groups + self.group_projector(prev_group_tokens)
        length = x.shape[1]
        joint = torch.cat([x, groups], dim=1)
        for block in self.blocks:
            joint = block(joint)
        x, groups = joint[:, :length], joint[:, length:]
        assert self.grouping is not None
        x, assignment = self.grouping(x, groups)
        return x, groups, assignment


class VisionEncoder(nn.Module):
    """GroupViT image encoder (official ``GroupViT``, no CLS token, mean-pooled output).

    Input ``[B, 3, H, W]`` ImageNet-normalised; ``H`` and ``W`` need not match ``image_size``: the
    position table is resized bicubically to the actual patch grid.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        stem = ConvStem if cfg.stem == "conv" else PatchEmbed
        self.patch_embed = stem(cfg.patch_size, cfg.in_channels, cfg.width, cfg.layer_norm_eps)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid_size ** 2, cfg.width))
        self.pos_drop = nn.Dropout(cfg.drop_rate) if cfg.drop_rate > 0 else nn.Identity()
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        stages, start, prev = [], 0, 0
        for i, depth in enumerate(cfg.depths):
            stages.append(GroupingStage(cfg, i, rates[start:start + depth], prev))
            start += depth
            prev = cfg.num_group_tokens[i]
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation: trunc-normal(.02) linears and tables, zero stage-2 group tokens."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # timm's trunc_normal_ bounds (+-2) are absolute, i.e. effectively untruncated at std .02.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for stage in self.stages:
            if stage.group_token is not None:
                if stage.group_projector is None:
                    nn.init.trunc_normal_(stage.group_token, std=0.02)
                else:
                    nn.init.zeros_(stage.group_token)

    def check_images(self, images: torch.Tensor) -> None:
        """Raise :class:`InputError` unless ``images`` is ``[B, C, H, W]`` float with H, W >= patch."""
        if not isinstance(images, torch.Tensor):
            raise InputError(f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
        if images.ndim != 4:
            raise InputError(
                f"images must have 4 dimensions [B, 3, H, W], got shape {tuple(images.shape)}; "
                "add a batch axis with images[None]"
            )
        if images.shape[1] != self.cfg.in_channels:
            raise InputError(
                f"images must have {self.cfg.in_channels} channels in axis 1, got shape {tuple(images.shape)}; "
                "convert grayscale/RGBA to RGB and use channels-first [B, C, H, W]"
            )
        if min(images.shape[2:]) < self.cfg.patch_size:
            raise InputError(
                f"images must be at least {self.cfg.patch_size}x{self.cfg.patch_size} pixels, "
                f"got {tuple(images.shape[2:])}; resize them first"
            )
        if not images.is_floating_point():
            raise InputError(f"images must be a float tensor (normalised), got {images.dtype}")

    def forward(self, images: torch.Tensor) -> VisionOutput:
        """Encode ``images [B, 3, H, W]`` into a :class:`VisionOutput`."""
        self.check_images(images)
        x, grid = self.patch_embed(images)
        x = self.pos_drop(x + interpolate_pos_embed(self.pos_embed, grid).to(x.dtype))
        groups: torch.Tensor | None = None
        assignments: list[Assignment] = []
        for stage in self.stages:
            x, groups, assignment = stage(x, groups)
            if assignment is not None:
                assignments.append(assignment)
        tokens = self.norm(x)
        return VisionOutput(pooled=tokens.mean(dim=1), tokens=tokens, assignments=assignments, grid=grid)
