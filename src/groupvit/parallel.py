"""Inference on one process or many (``torchrun``): deterministic slices, summed counts, one progress bar.

Every rank takes ``items[rank::world]`` of the same ordered list and works through it in *rounds* of at
most ``per_round`` items; the number of rounds is the same on every rank (a rank with fewer items runs
empty rounds), so each round can end with one collective: :class:`GlobalProgress` sums the items done by
all ranks and rank 0 shows them on one bar. Integer counts are summed exactly with :func:`sum_counts`.
Without torchrun every helper answers for a world of one and no process group is created.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from groupvit.train.distributed import DistEnv, env_int, init_distributed, rank, shutdown, world

T = TypeVar("T")


def join(device: str | None = None) -> DistEnv:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (gloo on CPU, NCCL on GPU), else a world of one.

    ``device``: ``None`` / ``'auto'`` (a GPU per rank when visible), ``'cpu'`` or ``'cuda'`` (``cuda:N`` keeps
    only the kind: each rank uses the GPU of its local rank).
    """
    kind = "auto" if device is None else ("cuda" if str(device).startswith("cuda") else str(device))
    if env_int("WORLD_SIZE", 1) > 1 or (dist.is_available() and dist.is_initialized()):
        return init_distributed(kind)
    return DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)


def run_joined(device: str | None, body: Callable[[DistEnv], int]) -> int:
    """``body(env)`` inside the process group of :func:`join` (left afterwards, also on errors)."""
    env = join(device)
    try:
        return body(env)
    finally:
        shutdown()


def my_slice(items: Sequence[T]) -> list[T]:
    """This rank's items: ``items[rank::world]`` (disjoint across ranks, together all of them)."""
    return list(items[rank()::world()])


def num_rounds(total: int, per_round: int) -> int:
    """Rounds every rank runs for ``total`` items split over the ranks, ``per_round`` items a round."""
    per_rank = math.ceil(total / world())
    return math.ceil(per_rank / per_round)


def my_rounds(items: Sequence[T], per_round: int) -> Iterator[list[T]]:
    """This rank's items, ``per_round`` at a time, for :func:`num_rounds` rounds (empty lists at the end)."""
    mine = my_slice(items)
    for first in range(0, num_rounds(len(items), per_round) * per_round, per_round):
        yield mine[first:first + per_round]


def sum_counts(values: np.ndarray) -> np.ndarray:
    """Integer ``values`` summed over ranks, exactly (int64); a copy in a single process."""
    out = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)).clone()
    if world() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.numpy()


class LineStream:
    """A stream for tqdm where stderr is not a terminal (a log file, a pipe): each refresh of the bar becomes one
    whole line, and the blanking writes around :meth:`tqdm.write` vanish, so messages never share a line with it.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for part in text.replace("\n", "\r").split("\r"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


# Seconds between two progress lines when stderr is not a terminal.
LINE_INTERVAL_S = 30.0


class GlobalProgress:
    """One tqdm bar on rank 0 counting the items of all ranks.

    :meth:`advance` is a collective: every rank calls it once per round, with the items it finished. On a
    terminal the bar redraws in place; elsewhere it prints a line at most every :data:`LINE_INTERVAL_S`
    seconds and at the end (:class:`LineStream`).
    """

    def __init__(self, total: int, desc: str, disable: bool = False) -> None:
        interactive = sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, unit="img", disable=disable or rank() != 0,
                        file=sys.stderr if interactive else LineStream(sys.stderr),
                        mininterval=0.1 if interactive else LINE_INTERVAL_S)
        self.done = 0

    def advance(self, count: int) -> int:
        """Add this rank's ``count``; returns the number of items finished by all ranks so far."""
        step = int(sum_counts(np.array([count]))[0])
        self.done += step
        self.bar.update(step)
        return self.done

    def write(self, message: str, file: TextIO | None = None) -> None:
        """Print a line through the bar (any rank), to stdout or ``file``."""
        tqdm.write(message, file=file)

    def close(self) -> None:
        self.bar.close()
