"""Atomic file writing: a reader never sees a half-written file, a crash never destroys a good one.

Storage faults (a full disk, an exceeded quota, a folder that is read-only, was deleted or is a file) become one
:class:`~groupvit.errors.StorageError` line that names the folder, the space where it is known and what was
kept (:func:`storage_error`); every writer of this package goes through :func:`atomic_path` or
:func:`append_line`.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from groupvit.errors import StorageError

FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded"}
DENIED = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
          errno.EROFS: "the file system is read-only"}
GONE = {errno.ENOENT: "the folder does not exist (deleted while running?)",
        errno.ENOTDIR: "a file stands where a folder should be"}


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


def mib(size: float) -> str:
    """``size`` bytes as ``"12.3 MB"`` (MiB)."""
    return f"{size / 2**20:.1f} MB"


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err``: itself, or the one a library raised it while handling (torch.save turns
    the OSError of a Python file object into a RuntimeError whose context it is)."""
    seen: BaseException | None = err
    for _ in range(4):
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        if seen is None:
            return None
        seen = seen.__cause__ or seen.__context__
    return None


def _free(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def storage_error(
    err: BaseException, target: str | os.PathLike[str] | None = None, written: int | None = None
) -> StorageError | None:
    """A one-line :class:`StorageError` for a failed write of ``target``, or None when ``err`` is no storage fault.

    Full disk and quota: the folder, its free space, the bytes ``written`` before the failure and the size of
    the previous ``target`` (about what the write needs). Permission, read-only, vanished folder, a file in
    a folder's place: the folder and the reason. Every message says that the previous file is kept.
    ``target`` None: the file the OSError names (else the current folder).
    """
    if isinstance(err, StorageError):
        return err
    cause = _os_error(err)
    if cause is None or cause.errno not in (*FULL, *DENIED, *GONE):
        return None
    named = cause.filename if isinstance(cause.filename, str | os.PathLike) else None
    path = Path(target if target is not None else named or Path.cwd() / "?")
    folder = path.parent
    if cause.errno not in FULL and named is not None and Path(named) != folder and Path(named).parent != folder:
        return None  # a file read elsewhere is missing or unreadable: not this write's fault
    kept = f"{path.name} keeps its previous content" if path.is_file() else f"nothing was written to {path.name}"
    if cause.errno in FULL:
        free = _free(folder)
        known = [f"{mib(free)} free" if free is not None else None,
                 f"{mib(written)} written when it failed" if written else None,
                 f"the previous {path.name} is {mib(path.stat().st_size)}" if path.is_file() else None]
        detail = "; ".join(k for k in known if k)
        return StorageError(f"cannot write {path}: {FULL[cause.errno]} of {folder}" + (f" ({detail})" if detail else "")
                            + f"; {kept}: free space or write elsewhere, then run again")
    reason = DENIED.get(cause.errno) or GONE[cause.errno]
    return StorageError(f"cannot write {path}: {reason} ({folder}); {kept}: choose a folder you can write to")


def check_writable(folder: str | os.PathLike[str]) -> Path:
    """Make ``folder`` (and its parents) and check that a file can be created in it, before any work is done.

    Raises:
        StorageError: one line naming the folder and the reason (permission, read-only, a file in its place).
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".groupvit-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        code = err.errno
        if code in FULL:
            raise StorageError(f"cannot write to {path}: {FULL[code]}; free space or choose another folder") from None
        if code == errno.EEXIST:  # mkdir of a path that is a file
            code = errno.ENOTDIR
        if code in DENIED or code in GONE:
            reason = DENIED.get(code) or GONE[code]
            raise StorageError(f"cannot write to {path}: {reason}; choose a folder you can write to") from None
        raise
    return path


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsync-ed and renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` keeps its previous content; a storage fault
    (full disk, quota, permission, vanished folder) is raised as one :class:`StorageError` line. The file
    gets the permissions of a file created with ``open`` under the current umask (0644 under 022).
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; the result gets the mode of an ordinary new file
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except (OSError, RuntimeError) as err:
        written = tmp.stat().st_size if tmp is not None and tmp.is_file() else None
        fault = storage_error(err, target, written)
        free = _free(target.parent) if fault is None and isinstance(err, RuntimeError) else None
        if free is not None and free < 2**20:  # a C++ writer (torch, onnx) that failed on a full disk says no more
            fault = storage_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), target, written)
        if fault is None:
            raise
        raise fault from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one whole line to ``path`` with one write (lines of several processes never interleave).

    Raises:
        StorageError: a storage fault, in one line (a line cut short by it is skipped by this package's readers).
    """
    data = line.encode() if line.endswith("\n") else (line + "\n").encode()
    target = Path(path)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError as err:
        raise (storage_error(err, target) or err) from None
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as err:
        raise (storage_error(err, target) or err) from None
    finally:
        os.close(fd)
