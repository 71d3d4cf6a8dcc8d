"""Training checkpoints: atomic writes, exact resumption, and still loadable as plain model weights.

A training checkpoint is our weights format (:func:`groupvit.save_checkpoint`: ``groupvit_format``,
``config``, ``model``) plus::

    train_state   {"epoch", "batch", "step", "best_metric"}: the data position (epoch to continue,
                  micro-batches of it already consumed) and optimizer steps done
    optimizer     AdamW state dict          scheduler  {"step": optimizer steps done}
    scaler        GradScaler state or None  rng        one capture_rng_state() per rank
    train_config  the resolved TrainConfig as a dict
    data          [[path, size], ...] of the shards trained on (a resume on other data is refused)

Files in the output directory: ``latest.pt`` (rewritten every ``ckpt_every`` steps and at each
epoch end) and ``best.pt`` (a copy of it whenever the configured metric improves). Every write goes
to a temporary file that is renamed over the target only when complete, so a crash mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groupvit.errors import WeightsError
from groupvit.fileio import atomic_path
from groupvit.model import GroupViT
from groupvit.weights import read_torch_file, save_checkpoint

LATEST = "latest.pt"
BEST = "best.pt"


@dataclass
class TrainState:
    """Where training stands: continue in ``epoch`` after its first ``batch`` micro-batches; ``step``
    optimizer steps are done; ``best_metric`` is the best evaluation value seen (or None)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_metric: float | None = None


def capture_rng_state() -> dict[str, Any]:
    """This process's random generators: Python, NumPy (global), torch CPU and every CUDA device.

    DropPath and the Gumbel noise of the grouping blocks draw from torch's generator, so restoring
    it makes a resumed run repeat the exact noise of an uninterrupted one.
    """
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": (name, key.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(
    path: str | os.PathLike[str], model: GroupViT, *, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None, state: TrainState, rng: list[dict[str, Any]], config: dict[str, Any],
    data: list[list[Any]] | None = None,
) -> Path:
    """Write a training checkpoint atomically (see the module docstring for the content).

    ``model`` is the bare :class:`GroupViT` (not a DDP wrapper); ``rng`` holds one
    :func:`capture_rng_state` per rank, in rank order; ``data`` the files trained on
    (:func:`groupvit.train.data_record.data_record`).
    """
    return save_checkpoint(
        model, path,
        train_state=asdict(state),
        optimizer=optimizer.state_dict(),
        scheduler={"step": state.step},
        scaler=scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        rng=rng,
        train_config=config,
        data=data or [],
    )


def load_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_checkpoint` (safely: no code runs on load).

    Raises WeightsError for unreadable files and for weight-only files (nothing to resume).
    """
    ckpt = read_torch_file(Path(path))
    if not isinstance(ckpt, dict) or "train_state" not in ckpt or "groupvit_format" not in ckpt:
        raise WeightsError(f"{path} holds no training state to resume from; it can only be loaded as weights")
    return ckpt


def resolve_resume(resume: str | os.PathLike[str] | None, output_dir: str | os.PathLike[str]) -> Path | None:
    """``None`` -> start fresh; ``"auto"`` -> ``<output_dir>/latest.pt`` if it exists, else fresh; else the path.

    Raises WeightsError when an explicit path does not exist.
    """
    if resume is None or str(resume) == "":
        return None
    if str(resume) == "auto":
        latest = Path(output_dir) / LATEST
        return latest if latest.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise WeightsError(f"--resume {resume}: no such checkpoint file (use --resume auto to find {LATEST})")
    return path


class CheckpointManager:
    """``latest.pt`` / ``best.pt`` in ``directory``; ``best_metric`` decides what "best" means.

    Args:
        directory: output directory of the run.
        best_metric: key of the evaluation results to track (None: never write ``best.pt``).
        best_mode: ``"max"`` (accuracy, mIoU) or ``"min"`` (a loss).
    """

    def __init__(self, directory: str | os.PathLike[str], best_metric: str | None = None,
                 best_mode: str = "max") -> None:
        self.directory = Path(directory)
        self.best_metric = best_metric
        self.best_mode = best_mode

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary files left by a process killed while writing a checkpoint; returns them."""
        stale = [p for name in (LATEST, BEST) for p in self.directory.glob(f".{name}.*.tmp")]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    @property
    def latest(self) -> Path:
        return self.directory / LATEST

    @property
    def best(self) -> Path:
        return self.directory / BEST

    def is_improvement(self, metrics: Mapping[str, float], best: float | None) -> bool:
        """Whether ``metrics[best_metric]`` beats ``best`` (always, when nothing was recorded yet)."""
        if self.best_metric is None or self.best_metric not in metrics:
            return False
        value = float(metrics[self.best_metric])
        return best is None or (value > best if self.best_mode == "max" else value < best)

    def save(self, model: GroupViT, *, best: bool = False, **kwargs: Any) -> Path:
        """Write ``latest.pt`` (keyword arguments of :func:`save_training_checkpoint`); copy it to ``best.pt`` if
        ``best``. Returns the path of ``latest.pt``."""
        path = save_training_checkpoint(self.latest, model, **kwargs)
        if best:
            with atomic_path(self.best) as tmp:
                shutil.copyfile(path, tmp)
        return path
