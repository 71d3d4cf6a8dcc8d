"""Numeric precision of inference and training: float32, or bfloat16 autocast where the hardware runs it natively.

``bf16`` runs the matrix multiplies and convolutions in bfloat16 under :func:`torch.autocast` (weights stay
float32; the assignment softmax and its Gumbel noise, the soft maps, class scores, contrastive logits and
losses are computed in float32 by the model, the segmenter and the training objective). It pays
only where bfloat16 arithmetic is native: CUDA devices that report it, and CPUs with AVX-512 BF16 or AMX
(x86) or the BF16 extension (Arm). Elsewhere PyTorch emulates it, slower than float32, so a ``bf16``
request falls back to float32 with one warning line.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from groupvit.errors import InputError

PRECISIONS = ("fp32", "bf16", "auto")
# /proc/cpuinfo flags of native bfloat16 arithmetic: x86 AVX-512 BF16 and AMX, Arm's BF16 extension.
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Feature flags of the first CPU in ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on Arm); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def bf16_native(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively (a CUDA device that reports it, or a CPU with the flags)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & _BF16_CPU_FLAGS) or (platform.system() == "Darwin" and platform.machine() == "arm64"
                                                       and _darwin_bf16())
    return False


@functools.lru_cache(maxsize=1)
def _darwin_bf16() -> bool:
    """Apple silicon with the BF16 extension (M2 and later)."""
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.strip() == "1"


def check_precision(precision: str) -> str:
    """``precision`` itself when it is one of :data:`PRECISIONS`; else :class:`~groupvit.errors.InputError`."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device | str = "cpu", warn: bool = True) -> str:
    """``'fp32'`` or ``'bf16'``: what a request of ``precision`` runs as on ``device``.

    ``auto`` is bf16 where the device runs it natively, else fp32; ``bf16`` on a device without native
    bfloat16 falls back to fp32 with one warning (emulated bfloat16 is slower than float32).

    Raises:
        InputError: ``precision`` is not one of ``fp32``, ``bf16``, ``auto``.
    """
    if check_precision(precision) == "fp32":
        return "fp32"
    if bf16_native(device):
        return "bf16"
    if precision == "bf16" and warn:
        warnings.warn(f"bf16 is not native on this {torch.device(device).type} (no AVX-512 BF16, AMX or Arm BF16): "
                      "running in fp32", RuntimeWarning, stacklevel=2)
    return "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str = "cpu") -> Iterator[None]:
    """Autocast to bfloat16 on ``device`` for a resolved ``precision`` of ``'bf16'``; nothing for ``'fp32'``."""
    device = torch.device(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
