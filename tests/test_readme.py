"""The README's Python blocks run as written (a small checkpoint placed in the cache stands in for the download)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import groupvit
from groupvit import pretrained
from groupvit.cli import COMMANDS, build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_blocks():
    assert python_blocks()


def listed_weights() -> list[str]:
    """The names the API block says ``load_pretrained`` takes: its own and those of its "also ..." comment."""
    block = python_blocks()[0]
    first = re.search(r'load_pretrained\("([^"]+)"\)', block)
    assert first, "the first Python block no longer loads weights by name"
    also = re.search(r"# also (.*?)(?:, an official)", block, flags=re.S)
    assert also, "the first Python block no longer lists the other weight names"
    return [first.group(1), *re.findall(r'"([a-z0-9-]+)"', also.group(1))]


def test_the_block_lists_every_named_weight():
    assert sorted(listed_weights()) == sorted(pretrained.WEIGHTS)


def _run_block(source: str, tmp_path: Path, monkeypatch) -> dict:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("GROUPVIT_CACHE", str(cache))
    torch.manual_seed(0)
    stand_in = groupvit.create_model("tiny", vision__patch_size=16)
    for name in ("gcc-yfcc", "gcc-redcaps"):
        groupvit.save_checkpoint(stand_in, pretrained.local_path(name))
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save("photo.jpg")
    namespace: dict = {}
    exec(compile(source, "README.md python block", "exec"), namespace)  # noqa: S102
    return namespace


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    source = python_blocks()[index]
    namespace = _run_block(source, tmp_path, monkeypatch)
    if "Segmenter(" in source:
        assert isinstance(namespace["result"].labels, np.ndarray)
        assert namespace["result"].labels.shape == (120, 160)
        size = namespace["model"].config.vision.image_size  # the stand-in's 32; the comments' S
        assert namespace["images"].shape == (1, 3, size, size)


@pytest.mark.parametrize("name", listed_weights()[1:])
def test_the_api_block_runs_with_every_listed_name(name, tmp_path, monkeypatch):
    block = python_blocks()[0]
    first = re.search(r'load_pretrained\("([^"]+)"\)', block).group(0)
    namespace = _run_block(block.replace(first, f'load_pretrained("{name}")', 1), tmp_path, monkeypatch)
    assert namespace["result"].labels.shape == (120, 160)
    assert groupvit.load_pretrained(tmp_path / "groupvit.pt").config == namespace["model"].config


def _bash_commands() -> list[list[str]]:
    """Every ``groupvit ...`` command of the README's bash blocks, as argv (continuations joined, comments,
    ``&&`` chains and ``[optional]`` parts split off)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            for part in line.split("#")[0].split("&&"):
                part = re.sub(r"\[[^\]]*\]", "", part.replace("$(which groupvit)", "groupvit"))
                if "groupvit " in part and "pip install" not in part:
                    commands.append(shlex.split(part[part.index("groupvit ") + len("groupvit "):]))
    return commands


def test_the_command_table_lists_every_command():
    listed = set(re.findall(r"^\| `groupvit ([a-z]+)", README.read_text(), flags=re.M))
    assert listed == set(COMMANDS)


@pytest.mark.parametrize("argv", _bash_commands(), ids=lambda argv: " ".join(argv[:2]))
def test_every_readme_command_parses(argv):
    build_parser().parse_args(argv)  # an unknown option or command exits with status 2


def test_the_readme_weights_command_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GROUPVIT_CACHE", str(tmp_path))
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in pretrained.WEIGHTS)
