"""Weight formats: official .pth, our checkpoint, Hugging Face directory; detection and bad input."""

from __future__ import annotations

import pickle
import time

import pytest
import torch

import groupvit
from groupvit.cli import main as cli_main
from groupvit.keymaps import OFFICIAL, export_state_dict
from groupvit.weights import config_from_official, load_pretrained


class ForeignConfig:
    """Stands for the OmegaConf object pickled into official checkpoints."""

    def __init__(self) -> None:
        self.lr = 1.6e-3


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = groupvit.create_model("tiny").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 40, 56, generator=gen)
    tokens = groupvit.tokenize(["a red circle on grass", "two blue stars"])
    return images, tokens


def outputs(model, images, tokens):
    with torch.no_grad():
        enc = model.encode_image_groups(images)
        return enc.image_embeds, enc.group_embeds, model.encode_text(tokens), [a.soft for a in enc.assignments]


def assert_same(a, b):
    for x, y in zip(a[:3], b[:3], strict=True):
        assert torch.equal(x, y)
    for x, y in zip(a[3], b[3], strict=True):
        assert torch.equal(x, y)


def official_checkpoint(model, path, extra_model_keys=None, drop=None):
    state = export_state_dict(model.state_dict(), OFFICIAL)
    state = {k: v.clone() for k, v in state.items()}
    state.update(extra_model_keys or {})
    for key in drop or []:
        del state[key]
    torch.save({"model": state, "epoch": 29, "config": ForeignConfig(), "metrics": {"max_miou": 52.3}}, path)
    return path


def test_official_checkpoint_loads_with_identical_outputs(tiny, inputs, tmp_path):
    path = official_checkpoint(tiny, tmp_path / "group_vit.pth")
    # Head counts are not stored in official weights (64-dim heads assumed); tiny uses 16-dim heads.
    loaded = load_pretrained(path, config=tiny.config)
    assert_same(outputs(loaded, *inputs), outputs(tiny, *inputs))
    assert torch.equal(loaded.multi_label_logit_scale, tiny.multi_label_logit_scale)


def test_official_architecture_read_from_shapes(tiny):
    config = config_from_official(export_state_dict(tiny.state_dict(), OFFICIAL))
    v, t = config.vision, config.text
    assert (v.width, v.patch_size, v.image_size) == (32, 8, 32)
    assert v.depths == (1, 1, 1) and v.num_group_tokens == (8, 4, 0) and v.num_output_groups == (8, 4)
    assert (t.width, t.layers, t.context_length) == (32, 1, 77)
    assert config.projection_dim == 16 and config.projection_hidden_dim == 64 and config.has_multi_label_scale


def test_official_full_size_parameter_count(tmp_path):
    yfcc, redcaps = groupvit.create_model("gcc-yfcc"), groupvit.create_model("gcc-redcaps")
    assert sum(p.numel() for p in yfcc.parameters()) == 55_726_610
    assert sum(p.numel() for p in redcaps.parameters()) == 55_726_609
    official = export_state_dict(yfcc.state_dict(), OFFICIAL)
    assert len(official) == 407
    assert official["img_projector.linear_hidden.0.weight"].shape == (4096, 384, 1)
    assert official["text_encoder.transformer.resblocks.0.attn.in_proj_weight"].shape == (768, 256)
    assert official["img_encoder.layers.1.group_projector.1.fc2.weight"].shape == (8, 192)
    assert config_from_official(official) == yfcc.config


def test_unexpected_and_missing_keys_are_listed(tiny, tmp_path):
    extra = {"img_encoder.head.weight": torch.ones(2)}
    path = official_checkpoint(tiny, tmp_path / "extra.pth", extra_model_keys=extra, drop=["img_encoder.norm.bias"])
    with pytest.raises(groupvit.WeightsError, match=r"missing keys \['img_encoder.norm.bias'\].*img_encoder.head"):
        load_pretrained(path)


def test_own_checkpoint_and_hf_roundtrip(tiny, inputs, tmp_path):
    own = groupvit.save_checkpoint(tiny, tmp_path / "own.pt")
    assert_same(outputs(load_pretrained(own), *inputs), outputs(tiny, *inputs))
    hf_dir = groupvit.save_pretrained(tiny, tmp_path / "hf")
    assert (hf_dir / "config.json").is_file() and (hf_dir / "model.safetensors").is_file()
    from_hf = load_pretrained(hf_dir)
    assert from_hf.multi_label_logit_scale is None  # no counterpart in the Hugging Face format
    assert_same(outputs(from_hf, *inputs), outputs(tiny, *inputs))
    assert_same(outputs(load_pretrained(hf_dir / "model.safetensors"), *inputs), outputs(tiny, *inputs))


def test_cli_convert_official_to_hf_and_back(inputs, tmp_path, capsys):
    # 64-dim heads, as official checkpoints (whose head counts are not stored) are read.
    tiny = groupvit.create_model("tiny", vision__width=64, vision__num_heads=(1, 1, 1), text__width=64,
                                 text__heads=1).eval()
    src = official_checkpoint(tiny, tmp_path / "official.pth")
    assert cli_main(["convert", str(src), str(tmp_path / "hf")]) == 0
    assert cli_main(["convert", str(tmp_path / "hf"), str(tmp_path / "back.pt")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert_same(outputs(load_pretrained(tmp_path / "back.pt"), *inputs), outputs(tiny, *inputs))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.pth", r"no such file or directory: .*missing.pth \(weights by name: gcc-yfcc, "),
        (lambda p: "gcc-yfc", r"unknown weights 'gcc-yfc': not one of the names gcc-yfcc, gcc-redcaps, synthetic-"),
        (lambda p: (p / "corrupt.pth").write_bytes(b"PK\x03\x04garbage") and p / "corrupt.pth",
         r"cannot read .*corrupt.pth: a zip archive \(11 bytes\), not a PyTorch checkpoint"),
        (lambda p: (p / "text.pth").write_text("hello") and p / "text.pth", "a text file .5 bytes., not a PyTorch"),
        (lambda p: (p / "photo.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256))) and p / "photo.pt",
         "a PNG image .264 bytes., not a PyTorch checkpoint"),
        (lambda p: (p / "empty.pt").write_bytes(b"") or p / "empty.pt", "an empty file, not a PyTorch checkpoint"),
        (lambda p: torch.save({"state_dict": {"fc.weight": torch.ones(2)}}, p / "resnet.pth") or p / "resnet.pth",
         "not a GroupViT checkpoint"),
        (lambda p: (p / "dir").mkdir() or p / "dir", "without config.json"),
    ],
)
def test_bad_sources_give_one_clear_error(tmp_path, make, message):
    with pytest.raises(groupvit.WeightsError, match=message) as info:
        load_pretrained(make(tmp_path))
    assert "\n" not in str(info.value)


def test_truncated_checkpoint_is_refused(tiny, tmp_path):
    path = groupvit.save_checkpoint(tiny, tmp_path / "full.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(groupvit.WeightsError, match="cannot read"):
        load_pretrained(tmp_path / "cut.pt")


def test_foreign_pickle_objects_are_not_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": Boom()}, handle)
    with pytest.raises(groupvit.WeightsError):
        load_pretrained(path)


def test_hub_id_offline_fails_fast_with_clear_message(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(groupvit.WeightsError, match="cannot download 'nvidia/groupvit-gcc-yfcc'.*--local-dir"):
        load_pretrained("nvidia/groupvit-gcc-yfcc")
    assert time.monotonic() - start < 30  # a hang would be caught here, not a timing benchmark


def test_bad_tensors_give_clear_errors(tiny):
    with pytest.raises(groupvit.InputError, match="4 dimensions"):
        tiny.encode_image(torch.randn(3, 32, 32))
    with pytest.raises(groupvit.InputError, match="3 channels"):
        tiny.encode_image(torch.randn(1, 4, 32, 32))
    with pytest.raises(groupvit.InputError, match="float"):
        tiny.encode_image(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(groupvit.InputError, match="at least 8x8"):
        tiny.encode_image(torch.randn(1, 3, 4, 32))
    with pytest.raises(groupvit.InputError, match="integer tensor"):
        tiny.encode_text(torch.randn(2, 77))
    with pytest.raises(groupvit.InputError, match="context length"):
        tiny.encode_text(torch.zeros(2, 80, dtype=torch.long))


def test_cli_reports_bad_weights_with_status_2(tmp_path, capsys):
    assert cli_main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]


def test_cli_convert_half_precision(tiny, inputs, tmp_path):
    src = groupvit.save_checkpoint(tiny, tmp_path / "full.pt")
    assert cli_main(["convert", str(src), str(tmp_path / "half.pt"), "--half"]) == 0
    raw = torch.load(tmp_path / "half.pt", weights_only=True)
    assert {t.dtype for t in raw["model"].values() if t.is_floating_point()} == {torch.float16}
    loaded = load_pretrained(tmp_path / "half.pt")
    assert next(loaded.parameters()).dtype == torch.float32
    ours, ref = outputs(loaded, *inputs), outputs(tiny, *inputs)
    assert (ours[2] - ref[2]).abs().max() < 1e-2


def test_the_model_package_does_not_import_the_weights_module():
    """The model is built by groupvit.weights, never the other way round (no import circle, lazy or not)."""
    import ast
    from pathlib import Path

    package = Path(groupvit.__file__).parent / "model"
    imported = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert "groupvit.model" in {name.rsplit(".", 1)[0] for name in imported}  # the scan sees the package's imports
    assert not {name for name in imported if name.startswith(("groupvit.weights", "groupvit.pretrained"))}
    assert not hasattr(groupvit.GroupViT, "save_pretrained")
