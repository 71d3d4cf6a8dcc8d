"""``groupvit groups`` and the grouping hook: the numbers, the verdicts on known models, stopping at a step."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import groupvit
import groupvit.cli
from groupvit.evaluate.grouping import StageHealth, grouping_health, synthetic_batches, verdict
from groupvit.model.grouping import Assignment
from groupvit.model.groupvit import ImageEncoding
from groupvit.train.config import TrainConfig
from groupvit.train.hooks import grouping
from groupvit.train.trainer import Trainer
from groupvit.weights import save_checkpoint


def _stage(groups=4, used=2.0, margin=0.2, copies=0.0) -> StageHealth:
    return StageHealth(groups, used, 1.0, margin, 0.1, copies)


def test_verdict_rules():
    assert verdict([_stage(16), _stage()], 2.0).startswith("grouping")
    assert verdict([_stage(16), _stage(copies=0.75)], 2.0).startswith("collapsed (the final groups are copies")
    assert verdict([_stage(16, margin=0.01), _stage()], 2.0).startswith("no grouping (stage 1")
    assert verdict([_stage(16), _stage()], 1.2).startswith("collapsed (one final group")
    assert verdict([], 1.0).startswith("no grouping")


class _Stub(torch.nn.Module):
    """A model whose one grouping stage gives fixed soft assignments ``[B, S, 4]`` (2 x 2 patches) and queries."""

    def __init__(self, soft: torch.Tensor, queries: torch.Tensor) -> None:
        super().__init__()
        self.q_proj = torch.nn.Identity()  # the recorder hooks it, as it hooks the real assignment queries
        block = torch.nn.Module()  # stands for the grouping block (hooked too, never called here)
        block.assign = SimpleNamespace(q_proj=self.q_proj)
        stage = SimpleNamespace(grouping=block)
        self.vision = SimpleNamespace(stages=[stage])
        self.config = SimpleNamespace(vision=SimpleNamespace(num_output_groups=(soft.shape[1],)))
        self.soft, self.queries = soft, queries

    def encode_image_groups(self, images: torch.Tensor) -> ImageEncoding:
        self.q_proj(self.queries)
        return ImageEncoding(None, None, [Assignment(self.soft, self.soft)], (2, 2))


def test_health_numbers_by_hand_on_a_controlled_model():
    # 2 images, 2 groups over 4 patches; patch 3 ties (0.5 / 0.5) and arg-max takes group 0.
    soft = torch.tensor([[[0.9, 0.9, 0.1, 0.5], [0.1, 0.1, 0.9, 0.5]]]).repeat(2, 1, 1)
    queries = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]]).repeat(2, 1, 1)  # the two queries are copies
    labels = [np.array([[1, 1], [2, 2]]), np.array([[1, 1], [2, 0]])]
    report = grouping_health(_Stub(soft, queries), [(torch.zeros(2, 3, 2, 2), labels)], num_classes=3)
    stage = report.stages[0]
    assert stage.used == 2.0 and report.final_used == 2.0
    expected_entropy = (3 * -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) + np.log(2)) / 4
    assert stage.entropy == pytest.approx(expected_entropy, rel=1e-5)
    assert stage.margin == pytest.approx(0.6, rel=1e-5)  # (max - 1/2) / (1 - 1/2): 0.8, 0.8, 0.8, 0
    assert stage.query_cosine == pytest.approx(1.0) and stage.copies == 1.0
    # Group map [[0, 0], [1, 0]]; oracle labels [[1, 1], [2, 1]] in both images. IoU: class 0 0/1, class 1 4/6,
    # class 2 2/3 -> mIoU 4/9.
    assert report.oracle == pytest.approx(100 * 4 / 9, rel=1e-5)
    assert report.verdict.startswith("collapsed (the final groups are copies")


def test_groups_command_verdicts_on_bundled_random_and_copied_models(tmp_path, capsys):
    assert groupvit.cli.main(["groups", "--synthetic", "32", "--json", str(tmp_path / "g.json")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("verdict: grouping")
    numbers = json.loads((tmp_path / "g.json").read_text())
    assert numbers["grp_oracle"] > 25 and numbers["grp_final_used"] > 1.5  # all-one-group scores 12

    torch.manual_seed(0)
    random_model = groupvit.create_model("synthetic")
    save_checkpoint(random_model, tmp_path / "random.pt")
    assert groupvit.cli.main(["groups", "--synthetic", "16", "--weights", str(tmp_path / "random.pt")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("verdict: no grouping")

    copied = groupvit.load_pretrained("synthetic-small")
    q = copied.vision.stages[1].grouping.assign.q_proj  # every final group asks the same query
    with torch.no_grad():
        q.weight.zero_()
        q.bias.fill_(0.1)
    save_checkpoint(copied, tmp_path / "copied.pt")
    assert groupvit.cli.main(["groups", "--synthetic", "16", "--weights", str(tmp_path / "copied.pt")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("verdict: collapsed (the final groups are copies")


def test_groups_command_on_a_voc_layout_root_and_on_plain_images(tmp_path, capsys):
    assert groupvit.cli.main(["synth", "eval", str(tmp_path / "scenes"), "--num", "8", "--size", "64"]) == 0
    capsys.readouterr()
    assert groupvit.cli.main(["groups", str(tmp_path / "scenes")]) == 0
    out = capsys.readouterr().out
    assert "group oracle" in out and "object groups named right" in out and "(8 images)" in out
    folder = tmp_path / "scenes" / "VOC2012" / "JPEGImages"
    assert groupvit.cli.main(["groups", str(folder), "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "group oracle" not in out and out.splitlines()[-1].startswith("verdict:")


@pytest.mark.parametrize("argv, message", [
    (["groups"], "give image PATHs or --synthetic N"),
    (["groups", "--synthetic", "0"], "--synthetic must be at least 1"),
    (["groups", "no/such/dir"], "no such image file or folder"),
])
def test_groups_command_bad_arguments(argv, message, capsys):
    assert groupvit.cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_grouping_hook_gives_the_command_numbers():
    model = groupvit.load_pretrained("synthetic-small").eval()
    metrics = grouping(synthetic=16, seed=3)(model, 0)
    from groupvit.data.synthetic import THING_CLASSES
    from groupvit.segment.segmenter import encode_class_names

    report = grouping_health(model, synthetic_batches(16, 3, 64, 32), len(THING_CLASSES),
                             encode_class_names(model, THING_CLASSES[1:]))
    assert metrics == report.metrics()
    assert {"grp_s1_used", "grp_s2_copies", "grp_final_used", "grp_oracle", "grp_named"} <= set(metrics)


def test_max_steps_stops_with_a_checkpoint_and_a_later_run_continues(tmp_path):
    def config(max_steps: int) -> TrainConfig:
        return TrainConfig.from_dict({
            "model": {"preset": "tiny"},
            "data": {"sources": [{"type": "random", "size": 24}], "batch_size": 4},
            "train": {"epochs": 2, "warmup_epochs": 0, "amp": "none", "device": "cpu", "log_every": 1,
                      "ckpt_every": 0, "output": str(tmp_path), "tensorboard": False, "progress": False,
                      "max_steps": max_steps},
        })

    first = Trainer(config(4)).fit()
    assert first.step == 4 and first.checkpoint is not None
    again = Trainer(config(4)).fit(resume="auto")
    assert again.step == 4  # nothing left to do below max_steps
    rest = Trainer(config(0)).fit(resume="auto")
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert rest.step == 12 and steps == list(range(1, 13))
