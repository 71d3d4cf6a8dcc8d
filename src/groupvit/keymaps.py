"""State-dict key maps between this package and the official NVlabs and Hugging Face layouts.

Pure functions of state dicts (no model construction, no I/O). Each of our keys maps to one or
three foreign keys with a tensor rule:

* ``same``: copied as is;
* ``qkv``: our fused ``[3C, ...]`` projection is split into three ``[C, ...]`` thirds (q, k, v);
* ``conv1d``: our ``Linear`` weight ``[out, in]`` is the official 1x1 ``Conv1d`` weight ``[out, in, 1]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from groupvit.errors import WeightsError

OFFICIAL = "official"
HF = "hf"

# (pattern on our key, replacement) — first match wins.
_OFFICIAL_RULES: list[tuple[str, str]] = [
    (r"^vision\.stages\.(\d+)\.grouping\.", r"img_encoder.layers.\1.downsample."),
    (r"^vision\.stages\.(\d+)\.", r"img_encoder.layers.\1."),
    (r"^vision\.", "img_encoder."),
    (r"^text\.blocks\.(\d+)\.norm1\.", r"text_encoder.transformer.resblocks.\1.ln_1."),
    (r"^text\.blocks\.(\d+)\.norm2\.", r"text_encoder.transformer.resblocks.\1.ln_2."),
    (r"^text\.blocks\.(\d+)\.attn\.qkv\.weight$", r"text_encoder.transformer.resblocks.\1.attn.in_proj_weight"),
    (r"^text\.blocks\.(\d+)\.attn\.qkv\.bias$", r"text_encoder.transformer.resblocks.\1.attn.in_proj_bias"),
    (r"^text\.blocks\.(\d+)\.attn\.proj\.", r"text_encoder.transformer.resblocks.\1.attn.out_proj."),
    (r"^text\.blocks\.(\d+)\.mlp\.fc1\.", r"text_encoder.transformer.resblocks.\1.mlp.c_fc."),
    (r"^text\.blocks\.(\d+)\.mlp\.fc2\.", r"text_encoder.transformer.resblocks.\1.mlp.c_proj."),
    (r"^text\.", "text_encoder."),
    (r"^image_projector\.fc1\.", "img_projector.linear_hidden.0."),
    (r"^image_projector\.bn\.", "img_projector.linear_hidden.1."),
    (r"^image_projector\.fc2\.", "img_projector.linear_out."),
    (r"^text_projector\.fc1\.", "text_projector.linear_hidden.0."),
    (r"^text_projector\.bn\.", "text_projector.linear_hidden.1."),
    (r"^text_projector\.fc2\.", "text_projector.linear_out."),
]

_HF_RULES: list[tuple[str, str]] = [
    (r"^vision\.pos_embed$", "vision_model.embeddings.position_embeddings"),
    (r"^vision\.patch_embed\.proj\.", "vision_model.embeddings.patch_embeddings.projection."),
    (r"^vision\.patch_embed\.norm\.", "vision_model.embeddings.layernorm."),
    (r"^vision\.stages\.(\d+)\.blocks\.(\d+)\.norm(\d)\.", r"vision_model.encoder.stages.\1.layers.\2.layer_norm\3."),
    (r"^vision\.stages\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.", r"vision_model.encoder.stages.\1.layers.\2.self_attn.qkv."),
    (r"^vision\.stages\.(\d+)\.blocks\.(\d+)\.attn\.proj\.",
     r"vision_model.encoder.stages.\1.layers.\2.self_attn.out_proj."),
    (r"^vision\.stages\.(\d+)\.blocks\.(\d+)\.mlp\.", r"vision_model.encoder.stages.\1.layers.\2.mlp."),
    (r"^vision\.stages\.(\d+)\.grouping\.pre_assign_attn\.attn\.proj\.",
     r"vision_model.encoder.stages.\1.downsample.pre_assign_attn.attn.out_proj."),
    (r"^vision\.stages\.(\d+)\.grouping\.", r"vision_model.encoder.stages.\1.downsample."),
    (r"^vision\.stages\.(\d+)\.", r"vision_model.encoder.stages.\1."),
    (r"^vision\.norm\.", "vision_model.layernorm."),
    (r"^text\.token_embedding\.", "text_model.embeddings.token_embedding."),
    (r"^text\.positional_embedding$", "text_model.embeddings.position_embedding.weight"),
    (r"^text\.blocks\.(\d+)\.norm(\d)\.", r"text_model.encoder.layers.\1.layer_norm\2."),
    (r"^text\.blocks\.(\d+)\.attn\.qkv\.", r"text_model.encoder.layers.\1.self_attn.qkv."),
    (r"^text\.blocks\.(\d+)\.attn\.proj\.", r"text_model.encoder.layers.\1.self_attn.out_proj."),
    (r"^text\.blocks\.(\d+)\.mlp\.", r"text_model.encoder.layers.\1.mlp."),
    (r"^text\.ln_final\.", "text_model.final_layer_norm."),
    (r"^image_projector\.fc1\.", "visual_projection.0."),
    (r"^image_projector\.bn\.", "visual_projection.1."),
    (r"^image_projector\.fc2\.", "visual_projection.3."),
    (r"^text_projector\.fc1\.", "text_projection.0."),
    (r"^text_projector\.bn\.", "text_projection.1."),
    (r"^text_projector\.fc2\.", "text_projection.3."),
]

# Our keys with no counterpart in a format: dropped on export, absent on import.
_DROPPED = {HF: {"multi_label_logit_scale"}, OFFICIAL: set()}


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def foreign_keys(key: str, fmt: str) -> tuple[list[str], str]:
    """The foreign key(s) of one of our keys in ``fmt`` and the tensor rule (``same|qkv|conv1d``)."""
    if fmt == OFFICIAL:
        name = _rename(key, _OFFICIAL_RULES)
        conv = re.match(r"^(img|text)_projector\.linear_(hidden\.0|out)\.weight$", name)
        return [name], "conv1d" if conv else "same"
    if fmt == HF:
        name = _rename(key, _HF_RULES)
        if ".self_attn.qkv." in name:
            return [name.replace(".qkv.", f".{p}_proj.") for p in "qkv"], "qkv"
        return [name], "same"
    raise ValueError(f"unknown state-dict format {fmt!r}")


def export_state_dict(state: Mapping[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """Our state dict -> ``fmt`` (``"official"`` or ``"hf"``) state dict."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in _DROPPED[fmt]:
            continue
        names, rule = foreign_keys(key, fmt)
        if rule == "qkv":
            out.update(zip(names, (t.contiguous() for t in tensor.chunk(3, dim=0)), strict=True))
        elif rule == "conv1d":
            out[names[0]] = tensor.unsqueeze(-1)
        else:
            out[names[0]] = tensor
    return out


def import_state_dict(
    foreign: Mapping[str, torch.Tensor], fmt: str, expected: Iterable[str],
    ignore: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """A ``fmt`` state dict -> ours, for a model whose state dict has the keys ``expected``.

    Raises :class:`WeightsError` listing every missing and unexpected foreign key (keys in ``ignore``
    may be absent or present).
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    ignored = set(ignore) | {k for key in _DROPPED[fmt] for k in foreign_keys(key, fmt)[0]}
    for key in expected:
        if key in _DROPPED[fmt]:
            continue
        names, rule = foreign_keys(key, fmt)
        absent = [n for n in names if n not in foreign]
        if absent:
            missing.extend(absent)
            continue
        used.update(names)
        if rule == "qkv":
            out[key] = torch.cat([foreign[n] for n in names], dim=0)
        elif rule == "conv1d":
            out[key] = foreign[names[0]].squeeze(-1)
        else:
            out[key] = foreign[names[0]]
    unexpected = sorted(set(foreign) - used - ignored)
    missing = [m for m in missing if m not in ignored]
    if missing or unexpected:
        raise WeightsError(
            f"checkpoint does not fit the {fmt} GroupViT layout: "
            f"missing keys {_shorten(missing)}; unexpected keys {_shorten(unexpected)}"
        )
    return out


def _shorten(keys: list[str], limit: int = 12) -> str:
    if len(keys) <= limit:
        return str(keys)
    return f"{keys[:limit]} and {len(keys) - limit} more"
