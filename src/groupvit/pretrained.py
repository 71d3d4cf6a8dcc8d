"""Weights shipped inside the package: a small GroupViT trained on the synthetic captioned scenes."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from groupvit.errors import WeightsError

DEFAULT_WEIGHTS = "groupvit-synthetic.pt"
# Background threshold used with the shipped model: the official VOC value.
DEFAULT_BG_THRESH = 0.95


def default_weights_path() -> Path:
    """Path of the shipped checkpoint (our format, float16 tensors).

    Raises:
        WeightsError: when the package was installed without its assets.
    """
    path = Path(str(resources.files("groupvit") / "assets" / DEFAULT_WEIGHTS))
    if not path.is_file():
        raise WeightsError(
            f"the shipped weights {DEFAULT_WEIGHTS} are missing from this installation; reinstall groupvit "
            "or pass --weights"
        )
    return path
