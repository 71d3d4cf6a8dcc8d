"""Fine-tuning: model.init from every weight format, train.trainable, frozen BatchNorm, exact resume, errors."""

from __future__ import annotations

import pytest
import torch
from test_train_smoke import _config, _RepeatedPairs, one_thread  # noqa: F401 (autouse fixture)
from test_weights import official_checkpoint

import groupvit
from groupvit.errors import ConfigError
from groupvit.train.checkpoint import load_training_checkpoint
from groupvit.train.config import TrainConfig
from groupvit.train.distributed import DistEnv
from groupvit.train.finetune import apply_trainable
from groupvit.train.trainer import Trainer


def _tiny(path, seed=3):
    torch.manual_seed(seed)
    return groupvit.save_checkpoint(groupvit.create_model("tiny"), path)


def _run(tmp_path, name, steps=3, **train):
    init = train.pop("init", None)
    cfg = _config(tmp_path / name, {"batch_size": 8}, epochs=1, warmup_epochs=0, base_lr=4.0, min_lr=0.4, **train)
    if init is not None:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "model": {"init": str(init)}})
    Trainer(cfg, loader_factory=lambda epoch, start: _RepeatedPairs(steps)).fit(resume="auto")
    return load_training_checkpoint(tmp_path / name / "latest.pt")


def test_group_tokens_only_train_and_everything_else_stays_bit_identical(tmp_path, capsys):
    source = _tiny(tmp_path / "source.pt")
    before = groupvit.load_pretrained(source).state_dict()
    ckpt = _run(tmp_path, "run", init=source, trainable="group-tokens")
    after = ckpt["model"]
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"vision.stages.0.group_token", "vision.stages.1.group_token"}
    # BatchNorm running statistics of the frozen heads included (they ran in eval mode).
    assert any("bn.running_mean" in name for name in before)
    model = groupvit.create_model("tiny")
    tokens = model.vision.stages[0].group_token.numel() + model.vision.stages[1].group_token.numel()
    total = sum(p.numel() for p in model.parameters())
    assert f"training {tokens:,} of {total:,} parameters (train.trainable=group-tokens)" in capsys.readouterr().err
    # Optimiser state only for what trains: two tensors.
    assert len(ckpt["optimizer"]["state"]) == 2
    assert sum(len(group["params"]) for group in ckpt["optimizer"]["param_groups"]) == 2
    recorded = ckpt["train_config"]  # where the run started from
    assert recorded["model"] == {"init": str(source)} and recorded["train"]["trainable"] == "group-tokens"


def test_vision_trains_and_the_text_tower_stays(tmp_path):
    source = _tiny(tmp_path / "source.pt")
    before = groupvit.load_pretrained(source).state_dict()
    after = _run(tmp_path, "run", init=source, trainable="vision")["model"]
    for name, value in before.items():
        same = torch.equal(value, after[name])
        if name.startswith(("text.", "text_projector.")):
            assert same, name
    assert not torch.equal(before["vision.patch_embed.proj.weight"], after["vision.patch_embed.proj.weight"])
    assert not torch.equal(before["image_projector.fc1.weight"], after["image_projector.fc1.weight"])
    assert not torch.equal(before["logit_scale"], after["logit_scale"])


def test_patterns_and_their_errors():
    model = groupvit.create_model("tiny")
    trainable, total = apply_trainable(model, ["image_projector.*", "logit_scale"])
    expected = sum(p.numel() for p in model.image_projector.parameters()) + 1
    assert (trainable, total) == (expected, sum(p.numel() for p in model.parameters()))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "logit_scale" in names and "multi_label_logit_scale" not in names
    with pytest.raises(ConfigError, match="pattern 'vision.nothing.*' matches no parameter"):
        apply_trainable(model, ["vision.nothing.*"])
    with pytest.raises(ConfigError, match="train.trainable must be one of all, vision, group-tokens"):
        TrainConfig.from_dict({"model": {"preset": "tiny"}, "train": {"trainable": "text"}})
    with pytest.raises(ConfigError, match="empty list"):
        TrainConfig.from_dict({"model": {"preset": "tiny"}, "train": {"trainable": []}})


@pytest.mark.parametrize("fmt", ["own", "official", "hf"])
def test_init_from_every_weight_format(tmp_path, fmt):
    """The official architecture with random weights, written in each format, is where the run starts."""
    torch.manual_seed(0)
    model = groupvit.create_model("gcc-yfcc")
    if fmt == "own":
        source = groupvit.save_checkpoint(model, tmp_path / "weights.pt")
    elif fmt == "official":
        source = official_checkpoint(model, tmp_path / "group_vit.pth")
    else:
        source = groupvit.save_pretrained(model, tmp_path / "hf")
    cfg = TrainConfig.from_dict({"model": {"init": str(source), "vision": {"drop_path_rate": 0.0}},
                                 "train": {"device": "cpu"}})
    assert cfg.model_config().vision.depths == model.config.vision.depths
    assert cfg.model_config().vision.drop_path_rate == 0.0  # a key that changes no parameter may be set
    trainer = Trainer(cfg)
    trainer.env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    built = trainer._build_model(None).state_dict()
    expected = groupvit.load_pretrained(source).state_dict()  # the HF format drops the multi-label temperature
    assert set(built) >= set(expected)
    for name, value in expected.items():
        assert torch.equal(built[name], value), name


def test_keys_that_contradict_the_weights_are_one_line(tmp_path):
    source = _tiny(tmp_path / "source.pt")
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"model": {"init": str(source), "vision": {"depths": [2, 1, 1]}}})
    message = str(info.value)
    assert "\n" not in message and message.startswith("model.vision.depths=[2, 1, 1] contradicts the weights")
    with pytest.raises(ConfigError, match="model.preset and model.init are both given"):
        TrainConfig.from_dict({"model": {"preset": "tiny", "init": str(source)}})
    with pytest.raises(ConfigError, match=r"^model.init='.*missing.pt': "):
        TrainConfig.from_dict({"model": {"init": str(tmp_path / "missing.pt")}})


def test_a_resumed_finetune_run_continues_exactly(tmp_path):
    source = _tiny(tmp_path / "source.pt")
    straight = _run(tmp_path, "straight", steps=4, init=source, trainable="vision")
    _run(tmp_path, "resumed", steps=4, init=source, trainable="vision", max_steps=2)
    resumed = _run(tmp_path, "resumed", steps=4, init=source, trainable="vision")
    assert resumed["train_state"]["step"] == straight["train_state"]["step"] == 4
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


def test_a_frozen_text_tower_is_encoded_once_per_distinct_text():
    from groupvit.train.finetune import keep_frozen_batchnorm
    from groupvit.train.losses import ContrastiveObjective

    torch.manual_seed(0)
    model = groupvit.create_model("tiny").train()
    apply_trainable(model, "vision")
    keep_frozen_batchnorm(model)
    batch = _RepeatedPairs(1).batch
    rows = batch["texts"].reshape(-1, batch["texts"].shape[-1])
    distinct = len({tuple(r.tolist()) for r in rows})
    objective = ContrastiveObjective(model, 1.0)
    out = objective(batch["images"], batch["texts"])
    cache = objective.text_cache
    assert cache is not None and out.total.requires_grad  # the image tower still gets its gradient
    assert (cache.misses, cache.hits) == (distinct, len(rows) - distinct)
    objective(batch["images"], batch["texts"])
    assert (cache.misses, cache.hits) == (distinct, 2 * len(rows) - distinct)  # nothing encoded again
    with torch.no_grad():
        torch.testing.assert_close(cache(batch["texts"]), model.encode_text(batch["texts"], normalize=False),
                                   rtol=1e-5, atol=1e-6)
    training = ContrastiveObjective(groupvit.create_model("tiny"), 1.0)  # the text tower trains: no cache
    training(batch["images"], batch["texts"])
    assert training.text_cache is None
