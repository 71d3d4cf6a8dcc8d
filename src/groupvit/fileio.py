"""Atomic file writing: a reader never sees a half-written file, a crash never destroys a good one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """This package's cache (downloaded weights, caption tags): ``$GROUPVIT_CACHE``, else
    ``$XDG_CACHE_HOME/groupvit``, else ``~/.cache/groupvit``."""
    if os.environ.get("GROUPVIT_CACHE"):
        return Path(os.environ["GROUPVIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "groupvit"


def _umask() -> int:
    """The process's file-creation mask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsync-ed and renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` keeps its previous content. The file
    gets the permissions of a file created with ``open`` under the current umask (0644 under 022).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; the result gets the mode of an ordinary new file
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
