"""Storage faults: a full disk, an exceeded quota, a folder that cannot be written or the data changed under a resume.

Every writer stops with one line and exit status 3, keeps the last good output, leaves no temporary file, and a
run started again once the fault is gone finishes exactly. A fake disk (files opened for writing under a folder
share a byte budget; a write beyond it fails with ENOSPC) runs on Linux; a real small tmpfs runs where the tests
run as root and may mount one (reported as an expected failure with the reason elsewhere).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import groupvit
from groupvit.cli import main as cli_main
from groupvit.errors import StorageError
from groupvit.fileio import append_line, atomic_path, check_writable
from groupvit.train.checkpoint import load_training_checkpoint
from groupvit.train.logging import MetricLogger

ROOT = Path(__file__).resolve().parents[1]


class FakeDisk:
    """``free`` bytes shared by every file opened for writing under ``root`` (None: no limit)."""

    def __init__(self, root: Path, free: int | None = None) -> None:
        self.root, self.free = Path(root).resolve(), free

    def covers(self, file: object) -> bool:
        try:
            return isinstance(file, str | os.PathLike) and Path(file).resolve().is_relative_to(self.root)
        except OSError:
            return False

    def take(self, size: int) -> int:
        if self.free is None:
            return size
        if size > self.free:
            self.free = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.free -= size
        return size


class LimitedFile:
    """A writable file whose writes draw on a :class:`FakeDisk`."""

    def __init__(self, handle, disk: FakeDisk) -> None:
        self._handle, self._disk = handle, disk

    def write(self, data):
        self._disk.take(len(data) if not isinstance(data, str) else len(data.encode()))
        return self._handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __iter__(self):
        return iter(self._handle)

    def __getattr__(self, name):
        return getattr(self._handle, name)


@pytest.fixture
def fake_disk(monkeypatch, tmp_path):
    """A :class:`FakeDisk` over ``tmp_path / "disk"``: Python's ``open`` (also Pillow's, tarfile's, pathlib's and
    the file objects torch.save writes to) and ``os.write`` on files there draw on its budget."""
    disk = FakeDisk(tmp_path / "disk")
    disk.root.mkdir()
    real_open, real_write = builtins.open, os.write

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return LimitedFile(handle, disk) if any(c in mode for c in "wax+") and disk.covers(file) else handle

    def fake_write(fd, data):
        try:
            path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            path = None
        if path is not None and disk.covers(path):
            disk.take(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(tarfile, "bltn_open", fake_open)
    monkeypatch.setattr(os, "write", fake_write)
    return disk


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


def one_error_line(captured: str, command: str) -> str:
    lines = [line for line in captured.splitlines() if line.startswith(f"groupvit {command}: error: ")]
    assert len(lines) == 1 and "Traceback" not in captured, captured
    return lines[0]


def test_a_checkpoint_on_a_full_disk_keeps_the_previous_one(fake_disk):
    model = groupvit.create_model("tiny")
    path = groupvit.save_checkpoint(model, fake_disk.root / "model.pt")
    before = path.read_bytes()
    fake_disk.free = len(before) // 3
    with torch.no_grad():
        model.logit_scale += 1
    with pytest.raises(StorageError) as info:
        groupvit.save_checkpoint(model, path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write {path}: no space left on the device of {path.parent} (")
    assert f"the previous model.pt is {len(before) / 2**20:.1f} MB" in message
    assert "model.pt keeps its previous content: free space or write elsewhere, then run again" in message
    assert path.read_bytes() == before and leftovers(fake_disk.root) == []
    fake_disk.free = None
    groupvit.save_checkpoint(model, path)
    assert torch.equal(groupvit.load_pretrained(path).logit_scale, model.logit_scale)


def test_quota_and_unwritable_folders_name_the_folder(tmp_path):
    target = tmp_path / "out" / "x.json"

    def failing(code):
        def body(tmp):
            raise OSError(code, os.strerror(code))
        return body

    for code, words in ((errno.EDQUOT, "the disk quota is exceeded of"), (errno.EROFS, "the file system is read-only"),
                        (errno.EACCES, "permission denied")):
        with pytest.raises(StorageError, match=f"^cannot write {target}: {words}"), atomic_path(target) as tmp:
            failing(code)(tmp)
    assert not target.exists() and leftovers(tmp_path) == []
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(StorageError, match=f"^cannot write to {blocker / 'run'}: a file stands where a folder"):
        check_writable(blocker / "run")


def test_a_line_that_does_not_fit_fails_in_one_line_and_the_log_warns_once(fake_disk):
    log = fake_disk.root / "log.jsonl"
    append_line(log, '{"a": 1}')
    fake_disk.free = 3
    with pytest.raises(StorageError, match="no space left on the device"):
        append_line(log, '{"b": 2}')
    logger = MetricLogger(fake_disk.root, tensorboard=False)
    with pytest.warns(UserWarning, match="the log stops here, training goes on") as caught:
        logger.log({"step": 1})
        logger.log({"step": 2})
    assert len(caught) == 1 and log.read_text() == '{"a": 1}\n'


def tiny_run(folder: Path, output: Path) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "tiny-cpu.yaml").read_text())
    config["train"].update(output=str(output), progress=False, threads=1)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return groupvit.load_pretrained(run / "latest.pt").state_dict()


def test_training_that_cannot_checkpoint_stops_and_resumes_exactly(fake_disk, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert cli_main(["train", "--config", str(tiny_run(tmp_path, reference))]) == 0
    size = (reference / "latest.pt").stat().st_size
    run = fake_disk.root / "run"
    config = tiny_run(tmp_path, run)
    fake_disk.free = int(1.5 * size)  # the first checkpoint (step 4) fits, the second (step 8) does not
    capsys.readouterr()
    assert cli_main(["train", "--config", str(config)]) == 3
    line = one_error_line(capsys.readouterr().err, "train")
    assert line.startswith("groupvit train: error: training stopped at step 8: cannot write ")
    assert line.endswith("--resume auto continues from the last checkpoint")
    assert load_training_checkpoint(run / "latest.pt")["train_state"]["step"] == 4
    assert leftovers(run) == []
    fake_disk.free = None
    assert cli_main(["train", "--config", str(config), "--resume", "auto"]) == 0
    for name, value in final_weights(reference).items():
        assert torch.equal(final_weights(run)[name], value), name


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    runs = {
        "train": ["train", "--config", str(tiny_run(tmp_path, blocker / "run"))],
        "segment": ["segment", str(image), "--classes", "circle", "--weights", "synthetic-small", "--out",
                    str(blocker / "out")],
        "eval": ["eval", "--root", str(tmp_path), "--weights", "synthetic-small", "--out", str(blocker / "r.json")],
        "synth": ["synth", "eval", str(blocker / "scenes"), "--num", "2"],
        "shards": ["shards", "--images", str(tmp_path), "--captions", str(image), "--out", str(blocker / "shards")],
    }
    for command, argv in runs.items():
        assert cli_main(argv) == 3, command
        line = one_error_line(capsys.readouterr().err, command)
        assert "a file stands where a folder should be" in line and str(blocker) in line, line


def test_a_bulk_segment_on_a_full_disk_finishes_exactly_with_skip_existing(fake_disk, tmp_path, capsys):
    from groupvit.data.synthetic import SHAPES, SceneGenerator

    images = tmp_path / "images"
    images.mkdir()
    generator = SceneGenerator(image_size=64, seed=9, split="eval-all")
    for i in range(5):
        Image.fromarray(generator.sample(i).image).save(images / f"scene{i}.png")
    argv = ["segment", str(images), "--classes", ",".join(SHAPES), "--weights", "synthetic-small", "--skip-existing",
            "--quiet", "--batch-size", "1", "--refine", "none"]
    clean = tmp_path / "clean"
    assert cli_main([*argv, "--out", str(clean)]) == 0
    per_image = sum(p.stat().st_size for p in clean.glob("scene0_*.png"))
    out = fake_disk.root / "labels"
    fake_disk.free = int(2.5 * per_image) + 4096  # two images' outputs (and the settings), not the third's
    capsys.readouterr()
    assert cli_main([*argv, "--out", str(out)]) == 3
    assert "no space left on the device of" in one_error_line(capsys.readouterr().err, "segment")
    assert leftovers(out) == []
    done = sorted(p.name for p in out.glob("*_labels.png"))
    assert 1 <= len(done) < 5
    for name in done:  # every label map present is whole, with its overlay and groups beside it
        assert (out / name).read_bytes() == (clean / name).read_bytes()
        assert (out / name.replace("_labels", "_overlay")).is_file()
    fake_disk.free = None
    assert cli_main([*argv, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in clean.glob("*.png"))
    for path in clean.glob("*_labels.png"):
        assert (out / path.name).read_bytes() == path.read_bytes()
    statuses = [json.loads(line)["status"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert statuses.count("written") == 5 and statuses.count("skipped") == len(done)


def test_shards_convert_and_eval_out_on_a_full_disk(fake_disk, tmp_path, capsys):
    from groupvit.data.synthetic import SceneGenerator

    images = tmp_path / "images"
    images.mkdir()
    rows = ["file,caption"]
    for i in range(6):
        Image.fromarray(SceneGenerator(image_size=64, seed=1, split="train").sample(i).image).save(
            images / f"{i}.png")
        rows.append(f"{i}.png,a red circle")
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    fake_disk.free = 2000
    assert cli_main(["shards", "--images", str(images), "--captions", str(tmp_path / "captions.csv"), "--out",
                     str(fake_disk.root / "shards"), "--shard-size", "2"]) == 3
    assert "no space left on the device of" in one_error_line(capsys.readouterr().err, "shards")
    assert leftovers(fake_disk.root) == []
    model = tmp_path / "tiny.pt"
    groupvit.save_checkpoint(groupvit.create_model("tiny"), model)
    previous = fake_disk.root / "copy.pt"
    fake_disk.free = None
    shutil.copyfile(model, previous)
    fake_disk.free = 1000
    assert cli_main(["convert", str(model), str(previous)]) == 3
    assert "copy.pt keeps its previous content" in one_error_line(capsys.readouterr().err, "convert")
    assert previous.read_bytes() == model.read_bytes()
    fake_disk.free = None
    scenes = tmp_path / "scenes"
    assert cli_main(["synth", "eval", str(scenes), "--num", "2", "--size", "64"]) == 0
    fake_disk.free = 100
    assert cli_main(["eval", "--root", str(scenes), "--weights", "synthetic-small", "--quiet", "--out",
                     str(fake_disk.root / "results.json")]) == 3
    assert "nothing was written to results.json" in one_error_line(capsys.readouterr().err, "eval")


def test_resuming_on_changed_shards_is_refused_in_one_line(tmp_path, capsys):
    from test_resume import write_caption_shards

    pattern = write_caption_shards(tmp_path / "shards", 24, per_shard=8)
    config = {"model": {"preset": "tiny"},
              "data": {"sources": [{"type": "shards", "pattern": pattern}], "batch_size": 4, "num_workers": 0,
                       "tagger": "simple"},
              "train": {"epochs": 1, "amp": "none", "device": "cpu", "ckpt_every": 2, "max_steps": 2,
                        "output": str(tmp_path / "run"), "tensorboard": False, "progress": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli_main(["train", "--config", str(path)]) == 0
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    shards[1].write_bytes(shards[1].read_bytes()[:-1024])  # rewritten: another size
    more = dict(config, train=dict(config["train"], max_steps=4))
    path.write_text(yaml.safe_dump(more))
    capsys.readouterr()
    assert cli_main(["train", "--config", str(path), "--resume", "auto"]) == 2
    line = one_error_line(capsys.readouterr().err, "train")
    assert f"the training data changed since {tmp_path / 'run' / 'latest.pt'} was written: 1 rewritten " \
           f"({shards[1].name}); resuming needs the same data" in line


def small_tmpfs(path: Path, size: int) -> str | None:
    """Mount a tmpfs of ``size`` bytes at ``path``; the reason when that is not possible here."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "a real small file system needs root (mount -t tmpfs)"
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    return None if done.returncode == 0 else f"mount -t tmpfs failed here: {done.stderr.strip()}"


def test_training_on_a_real_full_disk(tmp_path, capsys):
    """The issue's case: the tiny preset on a small tmpfs fails at its second checkpoint, then resumes exactly."""
    reference = tmp_path / "reference"
    assert cli_main(["train", "--config", str(tiny_run(tmp_path, reference))]) == 0
    size = (reference / "latest.pt").stat().st_size
    disk = tmp_path / "small"
    reason = small_tmpfs(disk, int(1.5 * size) // 4096 * 4096)
    if reason is not None:  # reported as xfail (the fake disk above covers the same path everywhere)
        pytest.xfail(f"no real small file system here: {reason}")
    try:
        run = disk / "run"
        config = tiny_run(tmp_path, run)
        capsys.readouterr()
        assert cli_main(["train", "--config", str(config)]) == 3
        line = one_error_line(capsys.readouterr().err, "train")
        assert "no space left on the device of" in line and "--resume auto continues" in line
        assert leftovers(run) == []
        subprocess.run(["mount", "-o", f"remount,size={4 * size}", str(disk)], check=True)
        assert cli_main(["train", "--config", str(config), "--resume", "auto"]) == 0
        for name, value in final_weights(reference).items():
            assert torch.equal(final_weights(run)[name], value), name
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_synthetic_shards_export_and_the_page_on_a_full_disk(fake_disk, tmp_path, capsys):
    fake_disk.free = 50_000
    shards = fake_disk.root / "synth"
    assert cli_main(["synth", "train", str(shards), "--num", "64", "--size", "64", "--shard-size", "16",
                     "--quiet"]) == 3
    assert "no space left on the device of" in one_error_line(capsys.readouterr().err, "synth")
    assert leftovers(fake_disk.root) == []
    for shard in shards.glob("*.tar"):  # the shards that were written are whole
        with tarfile.open(shard) as tar:
            assert len(tar.getmembers()) > 0
    pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra")
    model = tmp_path / "tiny.pt"
    fake_disk.free = None
    groupvit.save_checkpoint(groupvit.create_model("tiny"), model)
    fake_disk.free = 10_000
    assert cli_main(["export", "onnx", "--weights", str(model), "--out", str(fake_disk.root / "onnx")]) == 3
    assert "no space left on the device of" in one_error_line(capsys.readouterr().err, "export")
    assert leftovers(fake_disk.root) == []


def test_the_page_answers_a_full_disk_with_one_line(fake_disk, tmp_path, capfd):
    pytest.importorskip("gradio", reason='the page needs Gradio: pip install -e ".[app]"')
    import gradio as gr

    from groupvit.app import App
    from groupvit.data.synthetic import SHAPES, SceneGenerator

    app = App("synthetic-small")
    own = app.files
    try:
        image = tmp_path / "scene.png"
        Image.fromarray(SceneGenerator(image_size=64, seed=2, split="eval-all").sample(0).image).save(image)
        app.files = fake_disk.root  # the page's per-request files go to the full disk
        fake_disk.free = 100
        capfd.readouterr()
        with pytest.raises(gr.Error) as info:
            app.handle(str(image), ", ".join(SHAPES), "synthetic-small", True, 0.95, "whole", "none")
        assert "no space left on the device of" in str(info.value) and "\n" not in str(info.value)
        printed = capfd.readouterr().err
        assert printed.count("groupvit app: refused a request: ") == 1 and "Traceback" not in printed
        fake_disk.free = None
        overlay = app.handle(str(image), ", ".join(SHAPES), "synthetic-small", True, 0.95, "whole", "none")[0]
        assert Path(overlay).is_file()
    finally:
        app.files = own
        app.close()
