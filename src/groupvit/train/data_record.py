"""What a checkpoint records of its training data, so that a resumed run can tell that the data changed.

Resuming continues the data order exactly only on the same data (docs/training.md): every checkpoint records
each shard (and caption table) of ``data.sources`` by path and size, and ``--resume`` refuses, in one line
naming what changed, a data set with shards added, removed or rewritten since.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from groupvit.data.sources import shard_urls
from groupvit.errors import ConfigError

LISTED = 3  # changed files named in the message, per kind


def data_record(sources: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """``[[path, size in bytes], ...]`` of the files the sources read (random sources have none).

    Shard patterns are expanded (missing shards are left out, as the loader leaves them out); a folder source
    is recorded by its caption table.
    """
    files: list[Path] = []
    for spec in sources:
        if spec.get("type") == "shards":
            files += [Path(url) for url in shard_urls(spec["pattern"])]
        elif spec.get("type") == "folder":
            files.append(Path(spec["captions"]))
    return [[str(path), path.stat().st_size] for path in files if path.is_file()]


def check_same_data(recorded: Sequence[Sequence[Any]] | None, current: Sequence[Sequence[Any]], where: str) -> None:
    """Refuse to resume on other data than the checkpoint ``where`` was trained on.

    Raises:
        ConfigError: one line with the shards added, removed and rewritten (another size), and the way out.
    """
    if not recorded:
        return  # written before checkpoints recorded their data, or by a run on generated pairs
    before = {str(path): int(size) for path, size in recorded}
    now = {str(path): int(size) for path, size in current}
    if before == now:
        return
    changes = []
    for word, names in (("added", sorted(now.keys() - before.keys())), ("removed", sorted(before.keys() - now.keys())),
                        ("rewritten", sorted(p for p in now.keys() & before.keys() if now[p] != before[p]))):
        if names:
            listed = ", ".join(Path(p).name for p in names[:LISTED]) + (", ..." if len(names) > LISTED else "")
            changes.append(f"{len(names)} {word} ({listed})")
    raise ConfigError(f"the training data changed since {where} was written: {'; '.join(changes)}; resuming needs "
                      f"the same data: restore it, or start a new run in another --output (model.init={where} "
                      "fine-tunes those weights on the new data)")
