"""A released NVlabs checkpoint's layout, written down from the official model definition, loads as is.

The key names and shapes below follow the official code (``models/group_vit.py``, ``transformer.py``,
``builder.py`` of NVlabs/GroupViT; summarised in the project's reference notes): 407 entries for the
GCC+YFCC checkpoint, 406 for GCC+RedCaps (no ``multi_label_logit_scale``). They are independent of this
package's key maps and exporter.
"""

from __future__ import annotations

import pytest
import torch

import groupvit

WIDTH, TEXT_WIDTH, HIDDEN, EMBED = 384, 256, 4096, 256


def official_key_shapes(multi_label_scale: bool) -> dict[str, tuple[int, ...]]:
    """Every state-dict entry of the released model: name -> shape."""
    shapes: dict[str, tuple[int, ...]] = {"logit_scale": ()}
    if multi_label_scale:
        shapes["multi_label_logit_scale"] = ()

    def linear(prefix: str, out: int, inp: int) -> None:
        shapes[f"{prefix}.weight"], shapes[f"{prefix}.bias"] = (out, inp), (out,)

    def norm(prefix: str, dim: int = WIDTH) -> None:
        shapes[f"{prefix}.weight"], shapes[f"{prefix}.bias"] = (dim,), (dim,)

    image = "img_encoder"
    shapes[f"{image}.pos_embed"] = (1, 196, WIDTH)
    shapes[f"{image}.patch_embed.proj.weight"], shapes[f"{image}.patch_embed.proj.bias"] = (WIDTH, 3, 16, 16), (WIDTH,)
    norm(f"{image}.patch_embed.norm")
    norm(f"{image}.norm")
    for stage, depth in enumerate((6, 3, 3)):
        for block in range(depth):
            prefix = f"{image}.layers.{stage}.blocks.{block}"
            norm(f"{prefix}.norm1")
            linear(f"{prefix}.attn.qkv", 3 * WIDTH, WIDTH)
            linear(f"{prefix}.attn.proj", WIDTH, WIDTH)
            norm(f"{prefix}.norm2")
            linear(f"{prefix}.mlp.fc1", 4 * WIDTH, WIDTH)
            linear(f"{prefix}.mlp.fc2", WIDTH, 4 * WIDTH)
    for stage, (groups_in, groups_out) in enumerate(((64, 64), (8, 8))):
        shapes[f"{image}.layers.{stage}.group_token"] = (1, groups_in, WIDTH)
        prefix = f"{image}.layers.{stage}.downsample"
        norm(f"{prefix}.norm_tokens")
        linear(f"{prefix}.mlp_inter.fc1", WIDTH // 2, groups_in)
        linear(f"{prefix}.mlp_inter.fc2", groups_out, WIDTH // 2)
        norm(f"{prefix}.norm_post_tokens")
        norm(f"{prefix}.norm_x")
        norm(f"{prefix}.pre_assign_attn.norm_post")
        for name in ("q_proj", "k_proj", "v_proj", "proj"):
            linear(f"{prefix}.pre_assign_attn.attn.{name}", WIDTH, WIDTH)
            linear(f"{prefix}.assign.{name}", WIDTH, WIDTH)
        norm(f"{prefix}.pre_assign_attn.norm2")
        linear(f"{prefix}.pre_assign_attn.mlp.fc1", 4 * WIDTH, WIDTH)
        linear(f"{prefix}.pre_assign_attn.mlp.fc2", WIDTH, 4 * WIDTH)
        norm(f"{prefix}.norm_new_x")
        linear(f"{prefix}.mlp_channels.fc1", 4 * WIDTH, WIDTH)
        linear(f"{prefix}.mlp_channels.fc2", WIDTH, 4 * WIDTH)
    norm(f"{image}.layers.1.group_projector.0")
    linear(f"{image}.layers.1.group_projector.1.fc1", WIDTH // 2, 64)
    linear(f"{image}.layers.1.group_projector.1.fc2", 8, WIDTH // 2)

    text = "text_encoder"
    shapes[f"{text}.token_embedding.weight"] = (49408, TEXT_WIDTH)
    shapes[f"{text}.positional_embedding"] = (77, TEXT_WIDTH)
    norm(f"{text}.ln_final", TEXT_WIDTH)
    for block in range(12):
        prefix = f"{text}.transformer.resblocks.{block}"
        shapes[f"{prefix}.attn.in_proj_weight"], shapes[f"{prefix}.attn.in_proj_bias"] = (768, 256), (768,)
        linear(f"{prefix}.attn.out_proj", TEXT_WIDTH, TEXT_WIDTH)
        norm(f"{prefix}.ln_1", TEXT_WIDTH)
        norm(f"{prefix}.ln_2", TEXT_WIDTH)
        linear(f"{prefix}.mlp.c_fc", 4 * TEXT_WIDTH, TEXT_WIDTH)
        linear(f"{prefix}.mlp.c_proj", TEXT_WIDTH, 4 * TEXT_WIDTH)

    for name, inp in (("img_projector", WIDTH), ("text_projector", TEXT_WIDTH)):
        shapes[f"{name}.linear_hidden.0.weight"], shapes[f"{name}.linear_hidden.0.bias"] = (HIDDEN, inp, 1), (HIDDEN,)
        for buffer in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.linear_hidden.1.{buffer}"] = (HIDDEN,)
        shapes[f"{name}.linear_hidden.1.num_batches_tracked"] = ()
        shapes[f"{name}.linear_out.weight"], shapes[f"{name}.linear_out.bias"] = (EMBED, HIDDEN, 1), (EMBED,)
    return shapes


def parameter_count(shapes: dict[str, tuple[int, ...]]) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(torch.Size(shape).numel() for key, shape in shapes.items() if not key.endswith(buffers))


def test_the_written_down_layout_has_the_documented_size():
    assert len(official_key_shapes(True)) == 407
    assert parameter_count(official_key_shapes(True)) == 55_726_610
    assert parameter_count(official_key_shapes(False)) == 55_726_609


@pytest.mark.parametrize("multi_label_scale, preset", [(True, "gcc-yfcc"), (False, "gcc-redcaps")])
def test_a_checkpoint_of_that_layout_loads_into_the_official_architecture(tmp_path, multi_label_scale, preset):
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in official_key_shapes(multi_label_scale).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.02
    path = tmp_path / "official.pth"
    torch.save({"model": state, "epoch": 30}, path)
    model = groupvit.load_pretrained(path)
    assert model.config == groupvit.get_config(preset)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(official_key_shapes(multi_label_scale))
    assert len(state) == (407 if multi_label_scale else 406)
    ours = model.state_dict()
    # Spot checks of the mapping, independent of the key maps: values land where the official code uses them.
    assert torch.equal(ours["text.token_embedding.weight"], state["text_encoder.token_embedding.weight"])
    assert torch.equal(ours["vision.stages.0.blocks.0.attn.qkv.weight"],
                       state["img_encoder.layers.0.blocks.0.attn.qkv.weight"])
    assert torch.equal(ours["logit_scale"], state["logit_scale"])
    assert torch.equal(ours["image_projector.fc2.weight"], state["img_projector.linear_out.weight"][:, :, 0])
    assert torch.equal(ours["image_projector.bn.running_var"], state["img_projector.linear_hidden.1.running_var"])
