"""Training logs: one JSON object per line in ``log.jsonl``, mirrored to TensorBoard when it is installed."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from groupvit.errors import StorageError
from groupvit.fileio import append_line, atomic_path

LOG_FILE = "log.jsonl"


class MetricLogger:
    """Append records to ``<directory>/log.jsonl`` (flushed per line) and, optionally, TensorBoard.

    Each record is a flat dict with at least ``step``; numeric values other than ``step`` and
    ``epoch`` also go to TensorBoard as ``<kind>/<key>``. A disabled logger (ranks other than 0)
    does nothing.

    Args:
        directory: output directory of the run.
        enabled: write anything at all.
        tensorboard: also write TensorBoard events under ``<directory>/tensorboard`` if the
            ``tensorboard`` package is importable.
    """

    def __init__(self, directory: str | os.PathLike[str], enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(directory) / LOG_FILE
        self.enabled = enabled
        self._unwritable = False  # set at the first storage fault: one warning, then no more writes
        self._writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
            else:
                self._writer = SummaryWriter(str(Path(directory) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step`` > ``step`` (a resumed run repeats the steps after its checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                record_step = json.loads(line).get("step", 0)
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write
            if record_step <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(kept), encoding="utf-8")

    def log(self, record: Mapping[str, Any], kind: str = "train") -> None:
        """Write one record (``kind`` is stored as ``"kind"`` and prefixes TensorBoard tags)."""
        if not self.enabled:
            return
        if not self._unwritable:
            try:
                append_line(self.path, json.dumps({"kind": kind, **record}))
            except StorageError as err:
                # The run goes on: its next checkpoint write stops it on every rank if the disk stays full.
                self._unwritable = True
                warnings.warn(f"{err}; the log stops here, training goes on", stacklevel=2)
        if self._writer is not None:
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key not in ("step", "epoch") and isinstance(value, int | float) and math.isfinite(value):
                    self._writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        """Flush and close the files."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
