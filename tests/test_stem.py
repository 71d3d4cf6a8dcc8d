"""The vision stem option: the convolutional stem's grid, layers and validation; checkpoints that carry it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import groupvit
from groupvit.config import VisionConfig
from groupvit.errors import ConfigError, WeightsError
from groupvit.model.vision import ConvStem, PatchEmbed
from groupvit.weights import load_pretrained


@pytest.mark.parametrize("size", [(64, 64), (40, 56), (72, 24)])
def test_conv_stem_gives_the_patch_grid(size):
    images = torch.randn(2, 3, *size)
    tokens, grid = ConvStem(8, 3, 48)(images)
    _, patch_grid = PatchEmbed(8, 3, 48)(images)
    assert grid == patch_grid == (size[0] // 8, size[1] // 8)
    assert tokens.shape == (2, grid[0] * grid[1], 48)


def test_conv_stem_layers_and_receptive_field():
    torch.manual_seed(0)
    stem = ConvStem(8, 3, 128)
    convs = [m for m in stem.convs if isinstance(m, nn.Conv2d)]
    # per scale: a stride-2 then a stride-1 3x3 convolution, channels 32 -> 64 -> 128
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (3, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1)
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in stem.convs) == 6
    # A token depends on input pixels 43 wide: perturb one pixel and count the tokens that change.
    stem.eval()
    image = torch.zeros(1, 3, 128, 128)
    base = stem(image)[0]
    image[0, :, 64, 64] = 1.0
    changed = (stem(image)[0] - base).abs().amax(-1).reshape(16, 16) > 0
    rows = changed.any(1).nonzero().flatten().tolist()
    # Token i of the last 3x3 layer sees input pixels [8i - 21, 8i + 21] (43 wide): pixel 64 reaches i = 6..10.
    assert rows == [6, 7, 8, 9, 10]


def test_stem_option_is_validated():
    with pytest.raises(ConfigError, match="stem must be 'patch' or 'conv'"):
        VisionConfig(stem="resnet")
    with pytest.raises(ConfigError, match="power-of-two patch_size"):
        groupvit.create_model("tiny", vision__stem="conv", vision__patch_size=6, vision__image_size=36)


def test_official_presets_keep_the_patch_stem():
    for name in ("gcc-yfcc", "gcc-redcaps", "small", "tiny"):
        assert groupvit.get_config(name).vision.stem == "patch"
    assert groupvit.get_config("synthetic").vision.stem == "conv"


def test_conv_stem_checkpoint_roundtrip_and_hf_refusal(tmp_path):
    torch.manual_seed(0)
    model = groupvit.create_model("tiny", vision__stem="conv").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    images = torch.randn(2, 3, 40, 48)
    path = groupvit.save_checkpoint(model, tmp_path / "conv.pt")
    loaded = load_pretrained(path)
    assert loaded.config.vision.stem == "conv" and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
    with pytest.raises(WeightsError, match="cannot hold a 'conv' vision stem") as err:
        groupvit.save_pretrained(model, tmp_path / "hf")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "hf").exists()
