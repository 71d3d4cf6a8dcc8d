"""Exact resumption after SIGKILL, and checkpoints that survive a crash while being written.

The training runs are separate processes started the way a user would (``groupvit train --config
... --resume auto``) on the ``tiny`` model with DropPath and Gumbel noise on (both draw from torch's
generator), gradient accumulation, and the webdataset loader (one worker process, RandAugment,
multi-label prompts) reading a few tar shards written here.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import groupvit
from groupvit.errors import WeightsError
from groupvit.train.checkpoint import (
    CheckpointManager,
    TrainState,
    capture_rng_state,
    load_training_checkpoint,
    resolve_resume,
)
from groupvit.train.optim import build_optimizer
from groupvit.train.random_data import COLOURS, PAIRS

ROOT = Path(__file__).resolve().parents[1]
# `python -m groupvit.cli train ...`
LAUNCH = "import sys, groupvit.cli as cli; sys.exit(cli.main())"


def write_caption_shards(directory: Path, count: int, per_shard: int = 8, size: int = 40,
                         corrupt: tuple[int, ...] = ()) -> str:
    """Webdataset shards of two-colour images (``{key}.png``) and captions naming the colours
    (``{key}.txt``); samples listed in ``corrupt`` get bytes that are no image. Returns the brace pattern."""
    directory.mkdir(parents=True, exist_ok=True)
    shards = range(0, count, per_shard)
    for shard, start in enumerate(shards):
        with tarfile.open(directory / f"pairs-{shard:06d}.tar", "w") as tar:
            for i in range(start, min(start + per_shard, count)):
                top, bottom = PAIRS[i % len(PAIRS)]
                image = Image.new("RGB", (size, size), tuple(int(255 * c) for c in COLOURS[top]))
                image.paste(tuple(int(255 * c) for c in COLOURS[bottom]), (0, size // 2, size, size))
                png = io.BytesIO()
                image.save(png, format="PNG")
                caption = f"a {top} square above a {bottom} square."
                members = {f"{i:06d}.png": b"not an image" if i in corrupt else png.getvalue(),
                           f"{i:06d}.txt": caption.encode()}
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(directory / f"pairs-{{000000..{len(shards) - 1:06d}}}.tar")


def blocking_hook(marker: str, at_step: int, seconds: float = 600):
    """Evaluation hook that, once (no marker file yet), writes ``marker`` at ``at_step`` and sleeps ``seconds``."""

    def hook(model, step):
        if step == at_step and not Path(marker).exists():
            Path(marker).write_text("blocked")
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:  # a signal handler's return does not cut a sleep short
                time.sleep(0.05)
        return {}

    return hook


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _config(path: Path, shards: str, output: Path, marker: Path, seconds: float = 600) -> Path:
    # One intra-op thread, pinned: the reference and the interrupted run start side by side, and each would
    # otherwise choose its count from the load it sees at start, and sums over other thread counts differ in bits.
    config = {
        "model": {"preset": "tiny", "vision": {"drop_path_rate": 0.1}},
        # 32 samples, 4 per batch, 2 batches per optimizer step: 4 steps per epoch, 8 in all.
        "data": {"sources": [{"type": "shards", "pattern": shards}], "batch_size": 4, "num_workers": 1,
                 "tagger": "simple", "shuffle_buffer": 16, "seed": 5},
        "train": {"epochs": 2, "warmup_epochs": 1, "base_lr": 2.0, "warmup_lr": 0.01, "min_lr": 0.1,
                  "accumulation_steps": 2, "amp": "none", "device": "cpu", "threads": 1, "log_every": 1,
                  "ckpt_every": 2, "eval_every": 1, "seed": 7, "output": str(output), "tensorboard": False,
                  "progress": False},
        "evaluate": {"hooks": [{"target": "test_resume:blocking_hook", "marker": str(marker), "at_step": 3,
                                "seconds": seconds}]},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config: Path, *extra: str, own_group: bool = False) -> subprocess.Popen:
    """``groupvit train`` as a child process; ``own_group``: in a process group of its own (with its workers)."""
    return subprocess.Popen([sys.executable, "-c", LAUNCH, "train", "--config", str(config), *extra],
                            env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=own_group)


def _finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out


def _records(output: Path) -> dict[int, dict]:
    lines = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    assert len(train) == len({r["step"] for r in train}), "duplicate steps in the log"
    return {r["step"]: {k: v for k, v in r.items() if k != "images_per_s"} for r in train}


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path):
    reference_out, resumed_out = tmp_path / "reference", tmp_path / "resumed"
    done = tmp_path / "never-block"
    done.write_text("")
    marker = tmp_path / "blocked"
    shards = write_caption_shards(tmp_path / "shards", 32)

    reference = _train(_config(tmp_path / "reference.yaml", shards, reference_out, done), "--resume", "auto")
    config = _config(tmp_path / "resumed.yaml", shards, resumed_out, marker)
    killed = _train(config)
    deadline = time.monotonic() + 600  # a hang guard; a loaded machine can be slow
    while not marker.exists():
        assert killed.poll() is None, killed.communicate()[0]
        assert time.monotonic() < deadline, "training never reached step 3"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    _finish(reference)

    # Killed at step 3 (checkpoints every 2 steps): latest.pt is step 2, half-way through epoch 0.
    interrupted = load_training_checkpoint(resumed_out / "latest.pt")
    assert interrupted["train_state"] == {"epoch": 0, "batch": 4, "step": 2, "best_metric": None}

    _finish(_train(config, "--resume", "auto"))

    expected = torch.load(reference_out / "latest.pt", weights_only=True)
    got = torch.load(resumed_out / "latest.pt", weights_only=True)
    assert got["train_state"]["step"] == expected["train_state"]["step"] == 8
    assert got["model"].keys() == expected["model"].keys()
    for name, value in expected["model"].items():
        assert torch.equal(got["model"][name], value), name
    for index, state in expected["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(got["optimizer"]["state"][index][key], value), (index, key)
    # The log of the resumed run repeats the reference, step for step, bit for bit.
    assert _records(resumed_out) == _records(reference_out)
    # A training checkpoint is also a weights file.
    model = groupvit.load_pretrained(resumed_out / "latest.pt")
    assert torch.equal(model.logit_scale, expected["model"]["logit_scale"])


# "group": the signal reaches the loader worker too, as Ctrl-C in a terminal or `kill -- -PGID` (a job scheduler's
# cancel) send it; the worker must leave the stop to the main process instead of dying of it.
@pytest.mark.parametrize(("signum", "target"), [(signal.SIGTERM, "process"), (signal.SIGTERM, "group"),
                                                (signal.SIGINT, "group")])
def test_a_stop_signal_checkpoints_the_current_step_and_the_resume_is_exact(tmp_path, signum, target):
    reference_out, resumed_out = tmp_path / "reference", tmp_path / "resumed"
    done = tmp_path / "never-block"
    done.write_text("")
    marker = tmp_path / "blocked"
    shards = write_caption_shards(tmp_path / "shards", 32)
    reference = _train(_config(tmp_path / "reference.yaml", shards, reference_out, done))
    config = _config(tmp_path / "stopped.yaml", shards, resumed_out, marker, seconds=2)
    stopped = _train(config, own_group=True)
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert stopped.poll() is None, stopped.communicate()[0]
        assert time.monotonic() < deadline, "training never reached step 3"
        time.sleep(0.05)
    if target == "group":
        os.killpg(stopped.pid, signum)
    else:
        stopped.send_signal(signum)
    out, _ = stopped.communicate(timeout=300)
    assert stopped.returncode == 128 + signum, out
    assert f"stopped by {signal.Signals(signum).name} at step 3" in out and "--resume auto" in out
    _finish(reference)

    # Checkpoints are due every 2 steps; the signal adds one at step 3, the step it arrived in.
    state = load_training_checkpoint(resumed_out / "latest.pt")["train_state"]
    assert state == {"epoch": 0, "batch": 6, "step": 3, "best_metric": None}
    resumed = _train(config, "--resume", "auto")
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out
    assert f"resuming from step 3 of 8 ({resumed_out / 'latest.pt'})" in out
    expected = torch.load(reference_out / "latest.pt", weights_only=True)
    got = torch.load(resumed_out / "latest.pt", weights_only=True)
    for name, value in expected["model"].items():
        assert torch.equal(got["model"][name], value), name
    assert _records(resumed_out) == _records(reference_out)

    again = _train(config, "--resume", "auto")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "nothing to do" in out and "at step 8, the run ends at step 8" in out


def _save(manager: CheckpointManager, model: groupvit.GroupViT, step: int) -> None:
    optimizer = build_optimizer(model, lr=1e-3)
    manager.save(model, optimizer=optimizer, scaler=None, state=TrainState(step=step),
                 rng=[capture_rng_state()], config={"train": {"seed": 0}})


def _partial_then(action):
    """A torch.save that writes half a checkpoint to its target, then ``action()``."""

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04" + b"\0" * 4096)  # save_checkpoint hands torch.save an open file
        f.flush()
        action()

    return broken_save


def test_failed_checkpoint_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    model = groupvit.create_model("tiny")
    _save(manager, model, step=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    with torch.no_grad():
        model.logit_scale.add_(1.0)

    def fail():
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", _partial_then(fail))
    with pytest.raises(OSError, match="No space"):
        _save(manager, model, step=2)
    monkeypatch.undo()

    ckpt = load_training_checkpoint(tmp_path / "latest.pt")
    assert ckpt["train_state"]["step"] == 1
    assert all(torch.equal(ckpt["model"][k], v) for k, v in before.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]  # no temporary file left


KILL_DURING_WRITE = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
import groupvit
from test_resume import _partial_then, _save
from groupvit.train.checkpoint import CheckpointManager
manager = CheckpointManager({out!r})
model = groupvit.create_model("tiny")
_save(manager, model, step=1)
torch.save = _partial_then(lambda: os.kill(os.getpid(), signal.SIGKILL))
_save(manager, model, step=2)
"""


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    script = KILL_DURING_WRITE.format(tests=str(ROOT / "tests"), out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), cwd=ROOT, capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    stale = [p.name for p in tmp_path.glob(".latest.pt.*.tmp")]
    assert len(stale) == 1  # the half-written file died with the process ...
    assert load_training_checkpoint(tmp_path / "latest.pt")["train_state"]["step"] == 1  # ... the old one is intact
    groupvit.load_pretrained(tmp_path / "latest.pt")
    assert [p.name for p in CheckpointManager(tmp_path).remove_stale_temporaries()] == stale


def test_resume_resolution(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # nothing to resume: start fresh
    (tmp_path / "latest.pt").write_bytes(b"x")
    assert resolve_resume("auto", tmp_path) == tmp_path / "latest.pt"
    with pytest.raises(WeightsError, match="no such checkpoint"):
        resolve_resume(tmp_path / "missing.pt", tmp_path)


def test_weights_only_file_cannot_be_resumed(tmp_path):
    path = groupvit.save_checkpoint(groupvit.create_model("tiny"), tmp_path / "weights.pt")
    with pytest.raises(WeightsError, match="no training state"):
        load_training_checkpoint(path)
