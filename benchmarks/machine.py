"""What the benchmark needs to know about the machine: CPU, load from other processes, memory, matmul rate.

Linux only for the load and memory probes (``/proc``); elsewhere they report ``None``.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from groupvit import precision


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    """The CPU feature flags (``avx2``, ``fma``, ``avx512f`` ...); empty when unknown."""
    return set(precision.cpu_flags())


def cpu_kind() -> str:
    """``'avx512'`` when the CPU has AVX-512 (F), else ``'avx2'`` (or ``'other'``): timings differ by kind."""
    flags = cpu_flags()
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), the thread count the benchmark uses."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def total_memory_gib() -> float | None:
    """Physical memory in GiB (``MemTotal``)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _host_jiffies() -> tuple[int, int, int] | None:
    """``(busy, total, cpus)`` jiffies summed over all CPUs since boot."""
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return None
    values = [int(v) for v in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3].isdigit())
    return sum(values) - idle, sum(values), cpus


@dataclass
class CpuShare:
    """CPU use over an interval, in cores: this process and every other process on the host."""

    wall_s: float
    own_cores: float
    other_cores: float | None


@contextmanager
def cpu_share() -> Iterator[list[CpuShare]]:
    """Measures the block: yields a list that holds one :class:`CpuShare` once the block has finished.

    ``other_cores`` = host busy time (``/proc/stat``) minus this process's CPU time, per second of
    wall time: how much of the machine other tenants took while we measured.
    """
    result: list[CpuShare] = []
    host0, own0, wall0 = _host_jiffies(), os.times(), time.perf_counter()
    yield result
    host1, own1, wall1 = _host_jiffies(), os.times(), time.perf_counter()
    wall = max(wall1 - wall0, 1e-9)
    own = (own1.user - own0.user + own1.system - own0.system) / wall
    other = None
    if host0 is not None and host1 is not None and host1[1] > host0[1]:
        busy_fraction = (host1[0] - host0[0]) / (host1[1] - host0[1])
        other = max(0.0, busy_fraction * host1[2] - own)
    result.append(CpuShare(wall, own, other))


def other_load(seconds: float = 1.0) -> float | None:
    """Cores used by other processes over the next ``seconds`` (this process idles meanwhile)."""
    with cpu_share() as share:
        time.sleep(seconds)
    return share[0].other_cores


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.2) -> float | None:
    """Sleep until other processes use less than ``threshold_cores`` (or ``max_wait_s`` passed).

    Returns the last measured load of other processes, in cores.
    """
    deadline = time.monotonic() + max_wait_s
    load = other_load()
    while load is not None and load >= threshold_cores and time.monotonic() < deadline:
        load = other_load()
    return load


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) of this process; False where that is unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mib() -> float | None:
    """Current resident set size in MiB."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mib() -> float:
    """Peak resident set size in MiB since the last :func:`reset_peak_rss` (since start without one)."""
    kib = _status_kib("VmHWM")
    if kib is None:  # ru_maxrss is KiB on Linux, bytes on macOS
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if platform.system() == "Darwin":
            kib //= 1024
    return kib / 1024


@dataclass
class MatmulRate:
    """fp32 ``n x n @ n x n`` matrix-multiply rate, GFLOP/s (``2 n^3`` per product)."""

    n: int
    median_gflops: float
    best_gflops: float


def matmul_rate(
    n: int = 2048, warmup: int = 2, runs: int = 10, clock: Callable[[], float] = time.perf_counter,
    dtype: torch.dtype = torch.float32,
) -> MatmulRate:
    """Time ``runs`` ``torch.mm`` of ``n x n`` matrices of ``dtype`` with the current thread count and ``clock``."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen).to(dtype), torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    times = []
    for _ in range(runs):
        start = clock()
        torch.mm(a, b, out=out)
        times.append(clock() - start)
    flop = 2 * n**3
    return MatmulRate(n, flop / statistics.median(times) / 1e9, flop / min(times) / 1e9)
