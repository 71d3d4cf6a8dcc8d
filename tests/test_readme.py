"""The README's Python blocks run as written (a small checkpoint placed in the cache stands in for the download)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import groupvit
from groupvit import pretrained

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_blocks():
    assert python_blocks()


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
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
    exec(compile(python_blocks()[index], f"README.md python block {index}", "exec"), namespace)  # noqa: S102
    if "result" in namespace:
        assert namespace["result"].labels.shape == (120, 160)
        assert namespace["images"].shape == (1, 3, 224, 224)
