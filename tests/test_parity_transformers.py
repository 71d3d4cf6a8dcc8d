"""Numerical parity with ``transformers.GroupViTModel`` (the reference port of the official model).

Both directions are checked: transformers weights -> ``load_pretrained``, and our weights ->
``save_pretrained`` -> ``GroupViTModel.from_pretrained``. Eval mode, fp32, tolerance 1e-5.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

import groupvit
from groupvit.config import GroupViTConfig, TextConfig, VisionConfig

transformers = pytest.importorskip("transformers")

TOL = 1e-5

SMALL = GroupViTConfig(
    vision=VisionConfig(
        image_size=64, patch_size=16, width=64, depths=(2, 1, 1), num_heads=(4, 4, 4),
        num_group_tokens=(16, 4, 0), num_output_groups=(16, 4), drop_path_rate=0.0,
    ),
    text=TextConfig(width=64, layers=2, heads=2),
    projection_dim=32,
    projection_hidden_dim=128,
)


def randomize_buffers(model: torch.nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial running statistics and every zero table random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
        for name, param in model.named_parameters():
            if "group_token" in name or "position_embedding" in name or "pos_embed" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)


def make_tokens(batch: int, vocab: int, context: int = 77, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch, context, dtype=torch.long)
    for i in range(batch):
        n = 3 + 7 * i % 20
        tokens[i, 0] = 49406
        tokens[i, 1:n + 1] = torch.randint(0, 49406, (n,), generator=gen)
        tokens[i, n + 1] = 49407
    return tokens


@contextlib.contextmanager
def interpolating(hf_model) -> Iterator[None]:
    """transformers never threads interpolate_pos_encoding through to the embeddings: force it."""
    embeddings = hf_model.vision_model.embeddings
    original = embeddings.forward
    embeddings.forward = lambda pixel_values, interpolate_pos_encoding=False: original(
        pixel_values, interpolate_pos_encoding=True
    )
    try:
        yield
    finally:
        embeddings.forward = original


def hf_outputs(hf_model, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    with interpolating(hf_model), torch.no_grad():
        out = hf_model(input_ids=tokens, pixel_values=images, output_attentions=True)
    return {
        "image": out.image_embeds, "text": out.text_embeds, "logits": out.logits_per_image,
        "soft": list(out.vision_model_output.attentions),
    }


def our_outputs(model: groupvit.GroupViT, images: torch.Tensor, tokens: torch.Tensor) -> dict:
    with torch.no_grad():
        enc = model.encode_image_groups(images)
        out = model(images, tokens)
    return {
        "image": out.image_embeds, "text": out.text_embeds, "logits": out.logits_per_image,
        "soft": [a.soft for a in enc.assignments], "hard": [a.hard for a in enc.assignments],
        "groups": enc.group_embeds,
    }


def assert_parity(ours: dict, ref: dict) -> None:
    for key in ("image", "text", "logits"):
        err = (ours[key] - ref[key]).abs().max().item()
        assert err <= TOL, f"{key}: max abs error {err:.2e}"
    assert len(ours["soft"]) == len(ref["soft"]) == 2
    for stage, (soft, ref_soft, hard) in enumerate(zip(ours["soft"], ref["soft"], ours["hard"], strict=True)):
        assert soft.shape == ref_soft.shape
        err = (soft - ref_soft).abs().max().item()
        assert err <= TOL, f"soft map stage {stage}: max abs error {err:.2e}"
        ref_hard = torch.nn.functional.one_hot(ref_soft.argmax(1), ref_soft.shape[1]).transpose(1, 2)
        assert torch.equal(hard, ref_hard.to(hard.dtype)), f"hard assignment stage {stage} differs"


@pytest.fixture(scope="module", params=["small", "default"])
def pair(request, tmp_path_factory):
    """(ours, transformers) with identical random weights, built from transformers' side."""
    config = SMALL if request.param == "small" else groupvit.get_config("gcc-redcaps")
    hf_config = transformers.GroupViTConfig(**groupvit.weights.config_to_hf(config))
    torch.manual_seed(0)
    hf = transformers.GroupViTModel(hf_config).eval()
    randomize_buffers(hf, seed=1)
    directory = tmp_path_factory.mktemp(f"hf-{request.param}")
    hf.save_pretrained(directory)
    ours = groupvit.load_pretrained(directory)
    return request.param, ours, hf


@pytest.mark.parametrize("size", [(224, 224), (448, 672)])
def test_transformers_weights_load_with_identical_outputs(pair, size):
    name, ours, hf = pair
    scale = 1 if name == "default" else 64 / 224
    h, w = int(size[0] * scale) // 16 * 16, int(size[1] * scale) // 16 * 16
    images = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(2))
    tokens = make_tokens(3, 49408)
    assert_parity(our_outputs(ours, images, tokens), hf_outputs(hf, images, tokens))


def test_save_pretrained_roundtrip_through_transformers(pair, tmp_path):
    name, ours, _ = pair
    torch.manual_seed(3)
    fresh = groupvit.create_model(ours.config).eval()
    randomize_buffers(fresh, seed=4)
    groupvit.save_pretrained(fresh, tmp_path)
    hf = transformers.GroupViTModel.from_pretrained(tmp_path).eval()
    size = 224 if name == "default" else 64
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    tokens = make_tokens(2, 49408, seed=6)
    assert_parity(our_outputs(fresh, images, tokens), hf_outputs(hf, images, tokens))


def test_interpolated_position_table_is_direct_bicubic():
    model = groupvit.create_model(SMALL).eval()
    table = model.vision.pos_embed  # [1, 16, C] on a 4x4 grid
    grid = (6, 9)
    expected = torch.nn.functional.interpolate(
        table.reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=grid, mode="bicubic", align_corners=False
    ).permute(0, 2, 3, 1).reshape(1, 54, -1)
    got = groupvit.model.interpolate_pos_embed(table, grid)
    assert torch.equal(got, expected)
    assert groupvit.model.interpolate_pos_embed(table, (4, 4)) is table


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_group_embeddings_and_segmentation_logits_equal_transformers_output_segmentation(size, tmp_path):
    config = SMALL
    hf_config = transformers.GroupViTConfig(**groupvit.weights.config_to_hf(config))
    torch.manual_seed(0)
    hf = transformers.GroupViTModel(hf_config).eval()
    randomize_buffers(hf, seed=7)
    hf.save_pretrained(tmp_path)
    ours = groupvit.load_pretrained(tmp_path)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(8))
    tokens = make_tokens(3, 49408, seed=9)
    with interpolating(hf), torch.no_grad():
        ref = hf(input_ids=tokens, pixel_values=images, output_segmentation=True)
        ref_groups = torch.nn.functional.normalize(
            hf.visual_projection(ref.vision_model_output.last_hidden_state.flatten(0, 1)), dim=-1
        ).reshape(2, -1, config.projection_dim)
    with torch.no_grad():
        enc = ours.encode_image_groups(images)
        text = ours.encode_text(tokens)
    assert (enc.group_embeds - ref_groups).abs().max().item() <= TOL
    from groupvit.segment.segmenter import chain_assignments

    chain = chain_assignments([a.soft for a in enc.assignments])[-1]  # [B, L, G]
    maps = chain.transpose(1, 2).reshape(2, -1, *enc.grid)
    maps = torch.nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)  # [B, G, H, W]
    logits = ours.scale() * enc.group_embeds @ text.t()  # [B, G, T]
    # transformers multiplies by the temperature a second time after the grouping (its segmentation_logits
    # are scale^2 * similarity); the arg-max over classes, what segmentation uses, is the same.
    seg = ours.scale() * torch.einsum("bgt,bghw->bthw", logits, maps)
    assert seg.shape == ref.segmentation_logits.shape
    err = (seg - ref.segmentation_logits).abs().max().item()
    assert err <= TOL * max(1.0, ref.segmentation_logits.abs().max().item()), f"max abs error {err:.2e}"

