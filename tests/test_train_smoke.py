"""Short CPU training runs (logs, checkpoints, evaluation hooks, the command line) and config loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from test_resume import write_caption_shards

import groupvit
import groupvit.cli
from groupvit.errors import ConfigError
from groupvit.train.checkpoint import load_training_checkpoint
from groupvit.train.config import TrainConfig, apply_overrides, load_config
from groupvit.train.random_data import RandomPairsLoader
from groupvit.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    # The tiny model's ops are too small to gain from threads; on a busy 2-core machine they only lose.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(output: Path, data: dict, **train) -> TrainConfig:
    return TrainConfig.from_dict({
        "model": {"preset": "tiny"},
        "data": data,
        "train": {"epochs": 2, "warmup_epochs": 1, "base_lr": 1.0, "warmup_lr": 0.01, "min_lr": 0.1,
                  "amp": "none", "device": "cpu", "log_every": 1, "ckpt_every": 0, "output": str(output),
                  "tensorboard": False, "progress": False, **train},
    })


def _log(output: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (output / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_tiny_run_on_shards_writes_log_checkpoint_and_config(tmp_path):
    # 20 samples, one of them corrupt; batches of 4 -> 5 steps per epoch, 10 in all.
    pattern = write_caption_shards(tmp_path / "shards", 20, per_shard=5, corrupt=(3,))
    data = {"sources": [{"type": "shards", "pattern": pattern}], "batch_size": 4, "num_workers": 0,
            "tagger": "simple", "shuffle_buffer": 8}
    cfg = _config(tmp_path / "run", data)
    result = Trainer(cfg).fit()
    assert result.step == 10

    records = _log(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(1, 11))
    for r in records:
        assert {"step", "epoch", "batch", "loss", "itc", "multi_label", "lr", "scale", "multi_label_scale",
                "grad_norm", "images_per_s", "skipped"} <= r.keys()
        assert all(math.isfinite(r[k]) for k in ("loss", "itc", "multi_label", "scale", "images_per_s"))
        assert r["loss"] == pytest.approx(r["itc"] + r["multi_label"], rel=1e-5)
    assert records[-1]["skipped"] >= 1  # the corrupt sample was skipped and counted
    # The lr logged with step n is the one its update used: lr(n - 1), scaled by 4 / 4096.
    # Warm-up: 5 steps from 0.01 to 1.0; cosine over 10 steps, t counted from 0.
    scale = 4 / 4096
    assert records[0]["lr"] == pytest.approx(0.01 * scale)
    assert records[2]["lr"] == pytest.approx((0.01 + 2 * 0.99 / 5) * scale)
    assert records[5]["lr"] == pytest.approx((0.1 + 0.45 * (1 + math.cos(math.pi * 5 / 10))) * scale)
    assert records[9]["lr"] == pytest.approx((0.1 + 0.45 * (1 + math.cos(math.pi * 9 / 10))) * scale)

    ckpt = load_training_checkpoint(tmp_path / "run" / "latest.pt")
    assert ckpt["train_state"] == {"epoch": 2, "batch": 0, "step": 10, "best_metric": None}
    assert len(ckpt["rng"]) == 1 and ckpt["scheduler"] == {"step": 10}
    model = groupvit.load_pretrained(tmp_path / "run" / "latest.pt")
    for name, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    reloaded = load_config(tmp_path / "run" / "config.yaml")
    assert reloaded.to_dict() == cfg.to_dict()


class _RepeatedPairs:
    """A loader of the protocol: the same 8 generated pairs, ``num_batches`` times per epoch."""

    def __init__(self, num_batches: int) -> None:
        self.num_batches = num_batches
        self.batch = next(iter(RandomPairsLoader(size=8, batch_size=8, image_size=32, multi_label=3, seed=1)))

    def __iter__(self):
        return iter([self.batch] * self.num_batches)


def test_loss_decreases_on_a_handful_of_pairs(tmp_path):
    cfg = _config(tmp_path / "run", {"batch_size": 8}, epochs=1, warmup_epochs=0.2, base_lr=4.0, min_lr=0.4,
                  log_every=1)
    result = Trainer(cfg, loader_factory=lambda epoch, start: _RepeatedPairs(15)).fit()
    losses = [r["loss"] for r in _log(tmp_path / "run")]
    assert len(losses) == 15 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert result.losses["loss"] == losses[-1]


def test_eval_hooks_and_best_checkpoint(tmp_path):
    calls = []
    scores = {2: 0.5, 4: 0.9, 6: 0.7, 8: 0.6}  # eval every 2 steps and at the ends of epochs (4, 8)

    def hook(model, step):
        calls.append((step, model.training, torch.is_grad_enabled()))
        return {"score": scores[step]}

    cfg = _config(tmp_path / "run", {"sources": [{"type": "random", "size": 16}], "batch_size": 4},
                  eval_every=2)
    cfg.evaluate.best_metric = "score"
    Trainer(cfg, hooks=[hook]).fit()
    assert calls == [(2, False, False), (4, False, False), (6, False, False), (8, False, False)]
    assert [(r["step"], r["score"]) for r in _log(tmp_path / "run", "eval")] == sorted(scores.items())
    best = load_training_checkpoint(tmp_path / "run" / "best.pt")
    assert best["train_state"]["step"] == 4 and best["train_state"]["best_metric"] == 0.9
    assert load_training_checkpoint(tmp_path / "run" / "latest.pt")["train_state"]["best_metric"] == 0.9


def test_train_command(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    args = ["train", "--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--output", str(out),
            "train.epochs=1", "data.sources.0.size=16", "train.progress=false"]
    assert groupvit.cli.main(args) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["output"] == str(out) and saved["data"]["sources"] == [{"type": "random", "size": 16}]
    # Resuming a finished run does nothing more; a missing checkpoint is one clear error line.
    assert groupvit.cli.main([*args, "--resume", "auto"]) == 0
    assert groupvit.cli.main([*args, "--resume", str(tmp_path / "missing.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_resuming_a_finished_run_prints_one_line_and_no_progress_bar(tmp_path, capsys):
    args = ["train", "--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--output", str(tmp_path / "run"),
            "train.epochs=1", "data.sources.0.size=16"]
    assert groupvit.cli.main(args) == 0
    assert "%|" in capsys.readouterr().err  # the first run shows its bar
    assert groupvit.cli.main([*args, "--resume", "auto"]) == 0
    err = capsys.readouterr().err
    assert "nothing to do:" in err and "%|" not in err, err


# ----------------------------------------------------------------------------------------------
# configuration files


def test_base_merge_and_dotted_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "model": {"preset": "tiny", "vision": {"drop_path_rate": 0.1}},
        "data": {"sources": [{"type": "random", "size": 8}], "batch_size": 4},
        "train": {"epochs": 3, "base_lr": 1.0},
    }))
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain: {epochs: 5}\nmodel: {vision: {gumbel: false}}\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.base_lr=8e-4", "train.amp=none", "model.multi_label=0",
                                                "data.sources.0.size=32", "train.betas=[0.8, 0.9]"])
    assert cfg.train.epochs == 5 and cfg.train.base_lr == 8e-4 and isinstance(cfg.train.base_lr, float)
    assert cfg.train.betas == (0.8, 0.9)
    model = cfg.model_config()
    assert (model.vision.drop_path_rate, model.vision.gumbel, model.multi_label) == (0.1, False, 0)
    assert cfg.data["sources"] == [{"type": "random", "size": 32}]
    assert cfg.data_config()["multi_label"] == 0


def test_yaml_numbers_without_a_dot_are_coerced(tmp_path):
    (tmp_path / "c.yaml").write_text("train: {base_lr: 1e-3, epochs: 4.0}\nmodel: {preset: tiny}\n")
    cfg = load_config(tmp_path / "c.yaml")  # YAML reads 1e-3 as a string
    assert cfg.train.base_lr == 1e-3 and cfg.train.epochs == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epoch=3"], "unknown train keys"),
        (["train.epochs=many"], "train.epochs must be an integer"),
        (["train.amp=fp8"], "train.amp"),
        (["model.preset=huge"], "unknown preset"),
        (["model.vision.depth=3"], "unknown vision config keys"),
        (["trian.epochs=3"], "unknown config sections"),
        (["train.epochs"], "section.key=value"),
        (["data.sources.5.size=1"], "not an index"),
    ],
)
def test_bad_configs_raise_one_line_errors(tmp_path, overrides, message):
    (tmp_path / "c.yaml").write_text("model: {preset: tiny}\ndata: {sources: [{type: random}]}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "c.yaml", overrides)


def test_data_must_agree_with_the_model(tmp_path):
    (tmp_path / "c.yaml").write_text("model: {preset: tiny}\ndata: {sources: [{type: random}]}\n")
    with pytest.raises(ConfigError, match="data.multi_label=0 but the model has multi_label=3"):
        load_config(tmp_path / "c.yaml", ["data.multi_label=0"]).data_config()
    with pytest.raises(ConfigError, match="image_size=224 but the model trains at 32"):
        load_config(tmp_path / "c.yaml", ["data.image.image_size=224"]).data_config()


def test_apply_overrides_creates_sections():
    assert apply_overrides({}, ["a.b.c=[1, 2]", "a.d=null", "e=text"]) == {"a": {"b": {"c": [1, 2]}, "d": None},
                                                                           "e": "text"}


@pytest.mark.parametrize(
    ("name", "preset", "k", "lengths", "output"),
    [
        ("gcc-yfcc", "gcc-yfcc", 3, [2891445, 11156203, 14615499], "output/gcc-yfcc"),
        ("gcc-redcaps", "gcc-redcaps", 0, [2891445, 11156203, 11866987], "output/gcc-redcaps"),
    ],
)
def test_official_configs(name, preset, k, lengths, output):
    from groupvit.data.loader import DataConfig

    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.model["preset"] == preset and cfg.model_config().multi_label == k
    data = DataConfig.from_dict(cfg.data_config())
    assert [s["length"] for s in data.sources] == lengths
    assert sum(lengths) // (data.batch_size * 16) == {"gcc-yfcc": 6997, "gcc-redcaps": 6326}[name]
    assert (data.batch_size, data.multi_label, data.image.image_size) == (256, k, 224)
    t = cfg.train
    assert (t.epochs, t.warmup_epochs, t.base_lr, t.warmup_lr, t.min_lr) == (30, 2, 1.6e-3, 4e-6, 4e-5)
    assert (t.weight_decay, t.clip_grad, t.betas, t.eps, t.lr_reference_batch) == (0.05, 5.0, (0.9, 0.999), 1e-8, 4096)
    assert t.output == output


def test_other_configs_load():
    from groupvit.data.loader import DataConfig

    synthetic = load_config(ROOT / "configs" / "synthetic.yaml")
    data = DataConfig.from_dict(synthetic.data_config())
    assert data.image.image_size == synthetic.model_config().vision.image_size == 64
    assert synthetic.model_config().vision.stem == "conv" and "photo" in data.prompt_stopwords
    affinity = load_config(ROOT / "configs" / "synthetic-affinity.yaml").to_dict()
    expected = synthetic.to_dict()
    expected["train"].update(epochs=5, amp="bf16", group_objectives={"affinity": 1.0},
                             output="output/synthetic-affinity")
    assert affinity == expected  # the faithful synthetic recipe plus the extension, nothing else
    tiny = load_config(ROOT / "configs" / "tiny-cpu.yaml")
    assert tiny.train.device == "cpu" and tiny.data["sources"][0]["type"] == "random"


def test_segmentation_hook_reports_the_evaluation_numbers(tmp_path):
    from groupvit.data.benchmarks import voc_layout
    from groupvit.data.synthetic import write_voc_scenes
    from groupvit.evaluate.miou import evaluate_segmentation
    from groupvit.segment import Segmenter
    from groupvit.train.hooks import segmentation

    root = write_voc_scenes(tmp_path / "scenes", 4, image_size=32, progress=False)
    model = groupvit.create_model("tiny")
    metrics = segmentation(str(root), short_side=32, mode="whole")(model, 0)
    data = voc_layout(root)
    report = evaluate_segmentation(
        Segmenter(model, data.class_names, bg_thresh=data.bg_thresh, mode="whole", short_side=32), data,
        progress=False, group_oracle=True)
    expected = {"seg_miou": report.metrics.miou, "seg_acc": report.metrics.pixel_accuracy,
                "seg_oracle": report.oracle.miou}
    assert metrics == pytest.approx({key: 100 * value for key, value in expected.items()})


def test_an_evaluation_after_fused_optimizer_steps_sees_the_new_weights():
    # Fused AdamW updates parameters in place without bumping their version counters; the fused
    # projection cache of an earlier evaluation must not survive into the next one.
    from groupvit.train.optim import build_optimizer

    torch.manual_seed(0)
    model = groupvit.create_model("tiny", vision__gumbel=False)
    images, tokens = torch.randn(2, 3, 32, 32), groupvit.tokenize(["a red square.", "a blue circle."])
    optimizer = build_optimizer(model, lr=1e-2)
    model.eval()
    with torch.no_grad():
        model.encode_image(images)  # fills the cache
    model.train()
    out = model(images, tokens)
    out.logits_per_image.diagonal().sum().backward()
    optimizer.step()
    model.eval()
    fresh = groupvit.create_model("tiny", vision__gumbel=False)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), fresh.encode_image(images))
