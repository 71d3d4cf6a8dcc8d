"""GroupViT: semantic segmentation emerging from text supervision (Xu et al., CVPR 2022).

Public API::

    model = groupvit.create_model("gcc-yfcc")                 # random weights, official architecture
    model = groupvit.load_pretrained("gcc-yfcc")               # official weights, downloaded once; or a path
    images = groupvit.load_image("photo.jpg")                  # float32 [1, 3, 224, 224], normalised
    tokens = groupvit.tokenize(["a photo of a cat."])          # LongTensor [B, 77]
    image_embeds = model.encode_image(images)                  # [B, D], L2-normalised
    text_embeds = model.encode_text(tokens)                    # [B, D]
    groupvit.save_pretrained(model, "out_dir")                 # Hugging Face layout
    groupvit.export_onnx(model, "onnx_dir")                    # image.onnx + text.onnx for onnxruntime
"""

from __future__ import annotations

from typing import Any

from groupvit.config import PRESETS, GroupViTConfig, TextConfig, VisionConfig, apply_overrides, get_config
from groupvit.data.images import read_image
from groupvit.data.transforms import load_image
from groupvit.errors import ConfigError, DivergenceError, ExportError, GroupViTError, InputError, WeightsError
from groupvit.export import OnnxGroupViT, export_onnx
from groupvit.model import GroupViT, ImageEncoding
from groupvit.segment import SegmentationResult, Segmenter
from groupvit.text.templates import TEMPLATES, get_templates
from groupvit.text.tokenizer import Tokenizer, tokenize
from groupvit.weights import load_pretrained, save_checkpoint, save_pretrained

__version__ = "0.1.0"


def create_model(preset_or_config: str | GroupViTConfig = "gcc-yfcc", **overrides: Any) -> GroupViT:
    """Build a randomly initialised GroupViT (official initialisation).

    Args:
        preset_or_config: a preset name (``gcc-yfcc``, ``gcc-redcaps``, ``small``, ``synthetic``, ``tiny``) or a
            config.
        **overrides: config fields; nested ones with ``__`` (``vision__depths=(2, 2, 1)``,
            ``multi_label=0``).
    """
    config = get_config(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    if not isinstance(config, GroupViTConfig):
        raise ConfigError(f"expected a preset name or GroupViTConfig, got {type(preset_or_config).__name__}")
    if overrides:
        config = apply_overrides(config, overrides)
    return GroupViT(config)


__all__ = [
    "PRESETS", "TEMPLATES", "ConfigError", "DivergenceError", "ExportError", "GroupViT", "GroupViTConfig",
    "GroupViTError", "ImageEncoding", "InputError", "OnnxGroupViT", "SegmentationResult", "Segmenter", "TextConfig",
    "Tokenizer", "VisionConfig", "WeightsError", "create_model", "export_onnx", "get_config", "get_templates",
    "load_image", "load_pretrained", "read_image", "save_checkpoint", "save_pretrained", "tokenize",
]
