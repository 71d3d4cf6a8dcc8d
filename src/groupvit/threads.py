"""Intra-op thread counts from the cores a process can actually use.

PyTorch starts one intra-op thread per logical CPU of the machine. On a small or shared machine that
oversubscribes the cores: when another process holds a core, every parallel region waits for the thread
that is not running (on 2 cores with one busy elsewhere, a training step and a segmentation took 1.5x
longer with 2 threads than with 1, and a short training run 15x longer on another host; BENCHMARKS.md).
:func:`choose_threads` counts what is really available:

* the CPUs the process may run on (``os.sched_getaffinity``: ``taskset``, ``docker --cpuset-cpus``);
* the cgroup CPU quota (``docker --cpus``, Kubernetes limits: cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``);
* the share of one process when ``torchrun`` starts several on the machine (``LOCAL_WORLD_SIZE``);
* the cores other processes keep busy, sampled from ``/proc/stat`` over a fraction of a second at start.

``--threads N`` on the command line (``train.threads`` in a training config) overrides the choice.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from groupvit.errors import InputError

# How long the CPUs are watched for other processes' load at start, in seconds.
LOAD_SAMPLE_SECONDS = 0.25
_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count chosen for this process, and why.

    Attributes:
        threads: intra-op threads to use (at least 1).
        cpus: CPUs in the affinity mask.
        quota: cgroup CPU quota in cores, ``None`` when unlimited.
        busy: cores kept busy by other processes during the sample (0 when not sampled).
        processes: processes of this job sharing the machine (``LOCAL_WORLD_SIZE``).
        requested: whether ``threads`` was given by the user rather than chosen.
    """

    threads: int
    cpus: int
    quota: float | None
    busy: float
    processes: int
    requested: bool

    def describe(self, origin: str = "requested") -> str:
        """One line: the count and what it was derived from (``origin``: who gave a requested count)."""
        if self.requested:
            return f"{self.threads} intra-op thread{'s' * (self.threads != 1)} ({origin})"
        parts = [f"{self.cpus} CPU{'s' * (self.cpus != 1)} allowed"]
        if self.quota is not None:
            parts.append(f"quota {self.quota:g} cores")
        if self.busy >= 0.05:
            parts.append(f"{self.busy:.1f} busy elsewhere")
        if self.processes > 1:
            parts.append(f"{self.processes} processes of this job")
        return (f"{self.threads} intra-op thread{'s' * (self.threads != 1)} ({', '.join(parts)}; "
                "--threads N overrides)")


def affinity_cpus() -> list[int]:
    """CPU ids this process may run on (all of ``os.cpu_count()`` where affinity is not supported)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def cgroup_quota(root: Path = _CGROUP) -> float | None:
    """The cgroup CPU quota in cores (``quota / period``), ``None`` when there is none or it cannot be read."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        if quota != "max":
            return int(quota) / int(period or 100000)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _cpu_times(cpus: set[int], stat: Path) -> tuple[float, float]:
    """Summed ``(busy, total)`` jiffies of ``cpus`` from a ``/proc/stat`` file."""
    busy = total = 0.0
    for line in stat.read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [float(v) for v in fields[:8]]
        idle = values[3] + values[4]  # idle + iowait
        total += sum(values)
        busy += sum(values) - idle
    return busy, total


def busy_cores(cpus: list[int], seconds: float = LOAD_SAMPLE_SECONDS, stat: Path = Path("/proc/stat")) -> float:
    """Cores of ``cpus`` kept busy by other processes over ``seconds`` (this process sleeps meanwhile); 0 if unknown."""
    wanted = set(cpus)
    try:
        busy0, total0 = _cpu_times(wanted, stat)
        own0 = time.process_time()
        time.sleep(seconds)
        busy1, total1 = _cpu_times(wanted, stat)
        own = time.process_time() - own0
    except (OSError, ValueError):
        return 0.0
    if total1 <= total0:
        return 0.0
    fraction = (busy1 - busy0) / (total1 - total0)  # share of all the CPUs' time that was busy
    return max(0.0, fraction * len(wanted) - own / seconds)


def check_threads(threads: int | None) -> int | None:
    """``threads`` as given, after checking it is ``None`` (choose) or a positive count."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise InputError(f"threads must be a positive count, or 0 to choose from the free cores; got {threads!r}")
    return threads or None


def choose_threads(requested: int | None = None, sample: bool = True) -> ThreadChoice:
    """The intra-op thread count for this process (see the module docstring).

    ``floor(min(CPUs allowed, cgroup quota) - cores busy elsewhere + 0.5) / LOCAL_WORLD_SIZE``, at least 1.
    ``requested`` (a positive count) is returned as is; ``sample=False`` skips the load sample.
    """
    cpus = affinity_cpus()
    quota = cgroup_quota()
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    requested = check_threads(requested)
    if requested is not None:
        return ThreadChoice(requested, len(cpus), quota, 0.0, processes, True)
    cores = min(float(len(cpus)), quota) if quota is not None else float(len(cpus))
    busy = busy_cores(cpus) if sample else 0.0
    free = math.floor(cores - busy + 0.5)
    return ThreadChoice(max(1, free // processes), len(cpus), quota, busy, processes, False)


def apply_threads(requested: int | None = None, sample: bool = True) -> ThreadChoice:
    """Choose (:func:`choose_threads`) and set ``torch.set_num_threads``; returns the choice."""
    choice = choose_threads(requested, sample)
    torch.set_num_threads(choice.threads)
    return choice
