"""Dataclass configurations of the GroupViT model and its named presets.

The official presets (``gcc-yfcc``, ``gcc-redcaps``) reproduce ``configs/group_vit_gcc_*_30e.yml`` of
the NVlabs release exactly; the small presets keep the same architecture at CPU-trainable sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from groupvit.errors import ConfigError


def check_keys(klass: type, data: dict[str, Any], what: str) -> None:
    """Raise :class:`ConfigError` naming the keys of ``data`` that are not fields of the dataclass ``klass``."""
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}; known keys are {sorted(known)}")


@dataclass
class VisionConfig:
    """The grouping vision transformer.

    Stage ``i`` runs ``depths[i]`` transformer blocks over its image tokens concatenated with
    ``num_group_tokens[i]`` learnable group tokens; a stage with group tokens ends in a grouping
    block that merges the image tokens into ``num_output_groups[i]`` segment tokens.
    """

    image_size: int = 224
    patch_size: int = 16
    # "patch": one patch_size x patch_size convolution (official); "conv": a convolutional stem with the
    # same patch grid (see groupvit.model.vision.ConvStem), for small towers trained from scratch.
    stem: str = "patch"
    in_channels: int = 3
    width: int = 384
    depths: tuple[int, ...] = (6, 3, 3)
    num_heads: tuple[int, ...] = (6, 6, 6)
    num_group_tokens: tuple[int, ...] = (64, 8, 0)
    num_output_groups: tuple[int, ...] = (64, 8)
    mlp_ratio: float = 4.0
    # (token-mixing MLP hidden / width, channel MLP hidden / width) inside each grouping block.
    assign_mlp_ratio: tuple[float, float] = (0.5, 4.0)
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    # Straight-through one-hot assignment (official); False gives the soft-assignment ablation.
    hard_assignment: bool = True
    # Gumbel noise on the assignment logits during training (official: same switch as hard).
    gumbel: bool = True
    gumbel_tau: float = 1.0
    # Group pooling divides by (assigned count + assign_eps): official value 1.
    assign_eps: float = 1.0
    # A segment token is its pooled patches plus the group token that pooled them (official). False keeps the
    # pooled patches only: what a group token read of the whole image does not reach the segment it makes.
    group_residual: bool = True
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        self.num_group_tokens = tuple(int(g) for g in self.num_group_tokens)
        self.num_output_groups = tuple(int(g) for g in self.num_output_groups)
        self.assign_mlp_ratio = tuple(float(r) for r in self.assign_mlp_ratio)  # type: ignore[assignment]
        n = len(self.depths)
        if n == 0 or min(self.depths) < 0:
            raise ConfigError(f"vision depths must be a non-empty list of counts, got {self.depths}")
        if len(self.num_heads) != n or len(self.num_group_tokens) != n:
            raise ConfigError(
                f"vision depths, num_heads and num_group_tokens need one entry per stage; got "
                f"{self.depths}, {self.num_heads}, {self.num_group_tokens}"
            )
        grouping = [i for i, g in enumerate(self.num_group_tokens) if g > 0]
        if grouping and grouping != list(range(len(grouping))):
            raise ConfigError(
                f"group tokens must sit in the leading stages, got num_group_tokens={self.num_group_tokens}"
            )
        if len(self.num_output_groups) != len(grouping):
            raise ConfigError(
                f"num_output_groups needs one entry per stage with group tokens ({len(grouping)}), "
                f"got {self.num_output_groups}"
            )
        if min(self.num_heads) < 1 or any(self.width % h for h in self.num_heads):
            raise ConfigError(f"width {self.width} must be divisible by every num_heads {self.num_heads}")
        if self.stem not in ("patch", "conv"):
            raise ConfigError(f"vision stem must be 'patch' or 'conv', got {self.stem!r}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")

    @property
    def grid_size(self) -> int:
        """Side of the square patch grid the position table is stored for."""
        return self.image_size // self.patch_size

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` patch grid of an ``height x width`` input.

        The patch stem floors (``H // patch``); each stride-2, padding-1 3x3 convolution of the conv stem
        rounds up (``ceil(H / 2)``, ``log2(patch)`` times).
        """
        if self.stem == "patch":
            return height // self.patch_size, width // self.patch_size
        for _ in range(self.patch_size.bit_length() - 1):
            height, width = -(-height // 2), -(-width // 2)
        return height, width


@dataclass
class TextConfig:
    """The CLIP-style causal text transformer (no projection matrix inside)."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 256
    layers: int = 12
    heads: int = 4
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"text width {self.width} must be divisible by heads {self.heads}")


@dataclass
class GroupViTConfig:
    """The dual encoder: vision and text towers, BatchNorm projection heads and temperatures."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection_dim: int = 256
    projection_hidden_dim: int = 4096
    contrast_temperature: float = 0.07
    # Number of noun prompts per caption (K) for the multi-label loss; 0 disables it.
    multi_label: int = 0
    # Share the image-text temperature with the multi-label loss instead of a second one.
    share_temperature: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = TextConfig(**self.text)

    @property
    def has_multi_label_scale(self) -> bool:
        """Whether the model owns a separate ``multi_label_logit_scale`` parameter."""
        return self.multi_label > 0 and not self.share_temperature

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for JSON/YAML."""

        def plain(v: Any) -> Any:
            if isinstance(v, tuple | list):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupViTConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused with their names."""
        data = dict(data)
        vision = dict(data.pop("vision", {}))
        text = dict(data.pop("text", {}))
        check_keys(VisionConfig, vision, "vision config")
        check_keys(TextConfig, text, "text config")
        check_keys(cls, data, "model config")
        return cls(vision=VisionConfig(**vision), text=TextConfig(**text), **data)


def _gcc_yfcc() -> GroupViTConfig:
    return GroupViTConfig(multi_label=3)


def _gcc_redcaps() -> GroupViTConfig:
    return GroupViTConfig(multi_label=0)


def _small() -> GroupViTConfig:
    # About 8.6 M parameters (6.3 M of them the token table): trains at 96x96 on a laptop CPU.
    return GroupViTConfig(
        vision=VisionConfig(
            image_size=96, patch_size=8, width=128, depths=(2, 2, 2), num_heads=(4, 4, 4),
            num_group_tokens=(32, 8, 0), num_output_groups=(32, 8), drop_path_rate=0.0,
        ),
        text=TextConfig(context_length=77, width=128, layers=3, heads=4),
        projection_dim=128,
        projection_hidden_dim=1024,
        multi_label=3,
    )


def _synthetic() -> GroupViTConfig:
    # The shipped synthetic-scenes model: `small` with a convolutional stem at 64 px (8 x 8 patch grid) and
    # 16 -> 4 groups (about four patches per stage-1 group, as the official 196 -> 64; at most 3 objects).
    config = _small()
    config.vision = VisionConfig(
        image_size=64, patch_size=8, stem="conv", width=128, depths=(2, 2, 2), num_heads=(4, 4, 4),
        num_group_tokens=(16, 4, 0), num_output_groups=(16, 4), drop_path_rate=0.0,
    )
    return config


def _tiny() -> GroupViTConfig:
    # A few hundred thousand parameters: for tests and smoke runs.
    return GroupViTConfig(
        vision=VisionConfig(
            image_size=32, patch_size=8, width=32, depths=(1, 1, 1), num_heads=(2, 2, 2),
            num_group_tokens=(8, 4, 0), num_output_groups=(8, 4), drop_path_rate=0.0,
        ),
        text=TextConfig(context_length=77, width=32, layers=1, heads=2),
        projection_dim=16,
        projection_hidden_dim=64,
        multi_label=3,
    )


PRESETS = {
    "gcc-yfcc": _gcc_yfcc,
    "gcc-redcaps": _gcc_redcaps,
    "small": _small,
    "synthetic": _synthetic,
    "tiny": _tiny,
}


def get_config(name: str) -> GroupViTConfig:
    """Return a fresh copy of the named preset (``gcc-yfcc``, ``gcc-redcaps``, ``small``, ``synthetic``, ``tiny``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def apply_overrides(config: GroupViTConfig, overrides: dict[str, Any]) -> GroupViTConfig:
    """Return ``config`` with dotted overrides applied, e.g. ``{"vision.depths": (2, 2, 1)}``."""
    data = config.to_dict()
    for key, value in overrides.items():
        node = data
        parts = key.replace("__", ".").split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key {key!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key {key!r}")
        node[parts[-1]] = value
    return GroupViTConfig.from_dict(data)
