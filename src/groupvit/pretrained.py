"""Weights by name: the released GroupViT checkpoints (downloaded once, verified, cached) and the bundled model.

``resolve("gcc-yfcc")`` returns the path of the cached official checkpoint, downloading it on first use
into :func:`cache_dir` (``$GROUPVIT_CACHE``, else ``$XDG_CACHE_HOME/groupvit``, else ``~/.cache/groupvit``).
A download goes to a temporary file beside its final name, with a progress bar; it is renamed only once
complete and its SHA-256 starts with the 8 hex digits in the file name (the torch.hub convention), so the
cache never holds a partial or corrupt file. ``resolve("synthetic-small")`` is the model shipped inside
the package, trained on the synthetic captioned scenes.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tqdm import tqdm

from groupvit.errors import WeightsError
from groupvit.fileio import atomic_path, cache_dir

RELEASE_URL = "https://github.com/xvjiarui/GroupViT/releases/download/v1.0.0/"
BUNDLED = "synthetic-small"
DEFAULT_OFFICIAL = "gcc-yfcc"
# Background threshold used with the bundled model: the official VOC value.
DEFAULT_BG_THRESH = 0.95
# How to use weights without a name: the end of every message about missing named weights.
USE_A_FILE = "use a local file instead (--weights FILE on segment, eval and demo; load_pretrained(FILE) in Python)"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.[A-Za-z0-9]+$")


@dataclass(frozen=True)
class NamedWeights:
    """One entry of the weight table.

    Attributes:
        name: what users type (``--weights gcc-yfcc``).
        filename: the file's name in the cache (or in the package's assets when ``url`` is None).
        url: where it is downloaded from; None for the bundled model.
        description: one line for ``groupvit weights``.
    """

    name: str
    filename: str
    url: str | None
    description: str

    @property
    def sha256_prefix(self) -> str | None:
        """The hash prefix in the file name (``...-879422e0.pth``), or None when the name has none."""
        match = _HASH_IN_NAME.search(self.filename)
        return match.group(1) if match else None


WEIGHTS: dict[str, NamedWeights] = {
    entry.name: entry
    for entry in (
        NamedWeights("gcc-yfcc", "group_vit_gcc_yfcc_30e-879422e0.pth",
                     RELEASE_URL + "group_vit_gcc_yfcc_30e-879422e0.pth",
                     "official GroupViT, trained 30 epochs on CC3M + CC12M + YFCC14M (VOC 52.3 mIoU)"),
        NamedWeights("gcc-redcaps", "group_vit_gcc_redcap_30e-3dd09a76.pth",
                     RELEASE_URL + "group_vit_gcc_redcap_30e-3dd09a76.pth",
                     "official GroupViT, trained 30 epochs on CC3M + CC12M + RedCaps12M (VOC 51.6 mIoU)"),
        NamedWeights(BUNDLED, "groupvit-synthetic.pt", None,
                     "bundled: 64 px synthetic scenes of 6 shapes, 8 colours, 6 backgrounds (offline demo)"),
    )
}


def local_path(name: str) -> Path:
    """Where the weights called ``name`` are (or would be) on this machine; raises WeightsError for unknown names."""
    entry = _entry(name)
    if entry.url is None:
        return Path(str(resources.files("groupvit") / "assets" / entry.filename))
    return cache_dir() / entry.filename


def resolve(name: str, progress: bool = True) -> Path:
    """The local file of the weights called ``name``, downloading and verifying it on first use.

    Raises:
        WeightsError: unknown name; bundled file missing from the installation; download impossible
            (the message names the URL and where to place the file by hand) or hash mismatch.
    """
    entry = _entry(name)
    path = local_path(name)
    if path.is_file():
        return path
    if entry.url is None:
        raise WeightsError(f"the bundled weights {entry.filename} are missing from this installation; reinstall "
                           f"groupvit or {USE_A_FILE}")
    download(entry.url, path, entry.sha256_prefix, progress=progress)
    return path


def default_weights_path() -> Path:
    """Path of the bundled checkpoint (our format, float16 tensors)."""
    return resolve(BUNDLED)


def download(url: str, path: Path, sha256_prefix: str | None, progress: bool = True, timeout: float = 30.0) -> None:
    """Fetch ``url`` to ``path`` atomically, checking the SHA-256 prefix before the file appears.

    Raises:
        WeightsError: network failure (with how to place the file by hand) or hash mismatch; in both
            cases ``path`` is left as it was.
    """
    digest, received = hashlib.sha256(), 0
    manual = f"download {url} elsewhere and place it at {path}, or {USE_A_FILE}"
    try:
        with atomic_path(path) as tmp, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                              desc=path.name, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise WeightsError(f"download of {url} stopped after {received} of {total} bytes; try again, or "
                                   f"{manual}")
            if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
                raise WeightsError(f"{url} has SHA-256 {digest.hexdigest()[:12]}..., expected {sha256_prefix}...: "
                                   f"the file is corrupt or was replaced; nothing was cached; {manual}")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or type(err).__name__
        raise WeightsError(f"cannot download {url} ({reason}); {manual}") from None


def _entry(name: str) -> NamedWeights:
    if name not in WEIGHTS:
        raise WeightsError(f"unknown weights name {name!r}; known names: {', '.join(WEIGHTS)} (or pass a file path)")
    return WEIGHTS[name]
