"""Inference settings carried by the weights: the resolver, checkpoints, training configs, exports and Segmenter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import groupvit
from groupvit.cli import main as cli_main
from groupvit.errors import ConfigError, InputError, WeightsError
from groupvit.inference import OFFICIAL, check_settings, resolve_settings
from groupvit.keymaps import OFFICIAL as OFFICIAL_KEYS
from groupvit.keymaps import export_state_dict
from groupvit.pretrained import BUNDLED
from groupvit.segment import Segmenter
from groupvit.train.config import TrainConfig
from groupvit.train.random_data import RandomPairsLoader
from groupvit.train.trainer import Trainer

CARRIED = {"short_side": 64, "mode": "whole", "background_rule": "mutual", "best_group_classes": 3, "refine": "pamr"}


def test_typed_beats_weights_beats_defaults_beats_official():
    resolved = resolve_settings(CARRIED, {"refine": "none", "bg_thresh": None}, {"short_side": 32, "bg_thresh": 0.35})
    assert resolved.values == {**OFFICIAL, **CARRIED, "refine": "none", "bg_thresh": 0.35}
    assert resolved.origins == {"short_side": "weights", "mode": "weights", "window": "official", "stride": "official",
                                "background_rule": "weights", "best_group_classes": "weights", "bg_thresh": "default",
                                "refine": "typed", "templates": "official"}
    assert resolved.describe_origins() == ("from the weights: short side, mode, background rule, classes per rule; "
                                           "typed: refine")
    nothing = resolve_settings({}, {})
    assert nothing.values == {**OFFICIAL, "best_group_classes": 1}
    assert nothing.describe_origins() == "the official protocol"


def test_a_typed_rule_never_inherits_another_rules_class_count():
    assert resolve_settings(CARRIED, {"background_rule": "best-group"}).values["best_group_classes"] == 1
    assert resolve_settings(CARRIED, {"background_rule": "mutual"}).values["best_group_classes"] == 3
    assert resolve_settings({"background_rule": "mutual"}, {}).values["best_group_classes"] == 2
    assert resolve_settings(CARRIED, {"background_rule": "best-group", "best_group_classes": 2}).values[
        "best_group_classes"] == 2


@pytest.mark.parametrize(("settings", "message"), [
    ({"shortside": 64}, "unknown keys ['shortside']"),
    ({"short_side": 0}, "short_side must be a positive integer, got 0"),
    ({"short_side": True}, "short_side must be a positive integer, got True"),
    ({"mode": "tiles"}, "mode must be one of slide, whole, got 'tiles'"),
    ({"background_rule": "names"}, "background_rule must be one of threshold, best-group, mutual"),
    ({"refine": "crf"}, "refine must be one of none, superpixel, pamr"),
    ({"bg_thresh": float("nan")}, "bg_thresh must be a finite number"),
    ({"templates": ["a photo of"]}, "or a list of strings with '{}', got ['a photo of']"),
    ([1, 2], "must be a mapping of inference settings, got list"),
])
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(ConfigError, match="^the section") as info:
        check_settings(settings, "the section", ConfigError)
    assert message in str(info.value)


def test_checkpoints_carry_the_settings_and_official_weights_none(tmp_path):
    model = groupvit.create_model("tiny")
    model.inference = check_settings({**CARRIED, "templates": ["a {}."], "refine": None}, "test")
    path = groupvit.save_checkpoint(model, tmp_path / "tiny.pt")
    loaded = groupvit.load_pretrained(path)
    assert loaded.inference == {**CARRIED, "templates": ["a {}."], "refine": "none"}
    assert cli_main(["convert", str(path), str(tmp_path / "copy.pt")]) == 0
    assert groupvit.load_pretrained(tmp_path / "copy.pt").inference == loaded.inference
    # An official NVlabs checkpoint and a Hugging Face folder carry nothing: the official protocol.
    torch.save({"model": export_state_dict(model.state_dict(), OFFICIAL_KEYS)}, tmp_path / "official.pth")
    assert groupvit.load_pretrained(tmp_path / "official.pth", config=model.config).inference == {}
    groupvit.save_pretrained(model, tmp_path / "hf")  # the Hugging Face format has no place for them
    assert groupvit.load_pretrained(tmp_path / "hf").inference == {}
    # A damaged section is refused when the weights are read, naming the file and the key.
    ckpt = torch.load(path, weights_only=True)
    ckpt["inference"]["mode"] = "tiles"
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"inference settings of .*bad\.pt: mode must be one of slide, whole"):
        groupvit.load_pretrained(tmp_path / "bad.pt")


def test_the_bundled_model_carries_the_demos_settings():
    from groupvit.commands.demo import DEFAULT_BACKGROUND, DEFAULT_REFINE

    carried = groupvit.load_pretrained(BUNDLED).inference
    assert carried["background_rule"] == DEFAULT_BACKGROUND and carried["refine"] == DEFAULT_REFINE
    assert (carried["short_side"], carried["mode"]) == (64, "whole")


def test_the_segmenter_segments_with_the_models_settings_unless_told_otherwise():
    model = groupvit.create_model("tiny")
    model.inference = dict(CARRIED)
    seg = Segmenter(model, ["circle", "star"])
    assert (seg.short_side, seg.mode, seg.background_rule, seg.best_group_classes, seg.refine) == (
        64, "whole", "mutual", 3, "pamr")
    typed = Segmenter(model, ["circle", "star"], mode="slide", refine="none", background_rule="threshold")
    assert (typed.mode, typed.refine, typed.background_rule, typed.best_group_classes) == ("slide", None,
                                                                                         "threshold", 1)
    official = Segmenter(groupvit.create_model("tiny"), ["circle", "star"], defaults={"bg_thresh": 0.35})
    assert (official.short_side, official.mode, official.window, official.stride, official.bg_thresh,
            official.background_rule, official.refine) == (448, "slide", 448, 224, 0.35, "threshold", None)
    with pytest.raises(InputError, match="short_side must be a positive integer, got 0"):
        Segmenter(model, ["circle"], short_side=0)
    # Same labels as the settings typed out in full.
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    torch.manual_seed(0)
    first = groupvit.create_model("tiny")
    torch.manual_seed(0)
    second = groupvit.create_model("tiny")
    second.inference = dict(CARRIED)
    spelled = Segmenter(first, ["circle", "star"], **CARRIED)
    np.testing.assert_array_equal(Segmenter(second, ["circle", "star"])(image).labels, spelled(image).labels)


class TwoBatches:
    """A loader of the trainer's protocol: one generated batch of 8 pairs, twice."""

    num_batches = 2

    def __iter__(self):
        batch = next(iter(RandomPairsLoader(size=8, batch_size=8, image_size=32, multi_label=3, seed=1)))
        return iter([batch] * self.num_batches)


def test_a_config_inference_section_is_written_into_every_checkpoint(tmp_path):
    section = {"short_side": 32, "mode": "whole", "background_rule": "best-group", "refine": "none"}
    config = {
        "model": {"preset": "tiny"}, "data": {"batch_size": 8}, "inference": section,
        "train": {"epochs": 1, "amp": "none", "device": "cpu", "log_every": 1, "ckpt_every": 1,
                  "output": str(tmp_path / "run"), "tensorboard": False, "progress": False},
    }
    Trainer(TrainConfig.from_dict(config), loader_factory=lambda epoch, start: TwoBatches()).fit()
    assert groupvit.load_pretrained(tmp_path / "run" / "latest.pt").inference == section
    # A run fine-tuning those weights without a section of its own keeps theirs.
    tuned = {**config, "model": {"init": str(tmp_path / "run" / "latest.pt")}, "inference": None,
             "train": {**config["train"], "output": str(tmp_path / "tuned")}}
    Trainer(TrainConfig.from_dict(tuned), loader_factory=lambda epoch, start: TwoBatches()).fit()
    assert groupvit.load_pretrained(tmp_path / "tuned" / "latest.pt").inference == section
    with pytest.raises(ConfigError, match="config section 'inference': refine must be one of"):
        TrainConfig.from_dict({**config, "inference": {"refine": "crf"}})


def test_segment_uses_the_weights_settings_and_says_so(tmp_path, capsys):
    from PIL import Image

    from groupvit.data.synthetic import SHAPES, SceneGenerator

    scene = SceneGenerator(image_size=64, seed=5, split="eval-all").sample(0)
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    argv = ["segment", str(tmp_path / "scene.png"), "--weights", BUNDLED, "--classes", ",".join(SHAPES), "--quiet"]
    assert cli_main([*argv, "--out", str(tmp_path / "a")]) == 0
    recorded = json.loads((tmp_path / "a" / "segment-settings.json").read_text())
    assert (recorded["short_side"], recorded["mode"], recorded["refine"], recorded["background_rule"]) == (
        64, "whole", "pamr", "mutual")
    expected = Segmenter(groupvit.load_pretrained(BUNDLED), SHAPES)(scene.image).labels
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "scene_labels.png")), expected)
    assert cli_main([*argv[:-1], "--refine", "none", "--out", str(tmp_path / "b")]) == 0
    assert ("refine none; precision fp32 (settings from the weights: short side, mode, window, stride, background "
            "rule, classes per rule; typed: refine)") in capsys.readouterr().err
