"""Thread counts on an idle and on a half-busy machine: the automatic choice against fixed counts.

Run from the repository root (prints a Markdown block for BENCHMARKS.md)::

    PYTHONPATH=src python benchmarks/bench_threads.py [--repeats 2]

Every measurement is a fresh process, so each chooses its threads as a user's command would
(:mod:`groupvit.threads`; ``auto`` samples the load when it starts). "Half-busy" is one competing process
that spins on the CPU for the whole measurement (about one core taken on a 2-core machine). Workloads:

* ``groupvit train --config configs/tiny-cpu.yaml`` (the README's smoke run, 2 epochs of 2 steps, its
  2 loader workers): wall time of the command;
* one optimizer step of the synthetic recipe (batch 128 of 64² images, affinity objective; the step of
  ``benchmarks/bench_train_step.py``): median of 3 after 1 warm-up step;
* ``Segmenter`` on a uint8 448² image, official architecture, 21 classes (the step of ``groupvit segment``,
  ``groupvit eval`` and the page: one per image): median of 5 after 1 warm-up.

Counts compared: ``auto`` (the default now), and 1 and all cores fixed (all cores is PyTorch's own default,
the behaviour before the automatic choice). Timings vary by host; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import machine
import torch

ROOT = Path(__file__).resolve().parents[1]
GROUPVIT = Path(sys.executable).parent / "groupvit"

# Runs inside a fresh process: chooses threads like a command, times the workload, prints JSON.
WORKER = r"""
import json, statistics, sys, time
sys.path.insert(0, {bench!r})
import torch
from groupvit.threads import apply_threads
choice = apply_threads({threads})
workload = {workload!r}
if workload == "train step":
    import groupvit
    from bench_train_step import Runner
    torch.manual_seed(0)
    model = groupvit.create_model("synthetic").train()
    texts = torch.randint(1, 400, (128, 1 + model.config.multi_label, model.config.text.context_length))
    texts[:, :, 12:] = 0
    runner = Runner(model, "max-group", {{"affinity": 1.0}}, False, torch.randn(128, 3, 64, 64), texts)
    step, warm, count = runner.step, 1, 3
else:
    import workloads
    step, warm, count = workloads.ours_segment_pixels(workloads.build_ours()), 1, 5
times = []
for i in range(warm + count):
    start = time.perf_counter()
    step()
    if i >= warm:
        times.append(time.perf_counter() - start)
print(json.dumps({{"threads": choice.threads, "seconds": statistics.median(times)}}))
"""


@contextlib.contextmanager
def competing_load(busy: bool) -> Iterator[None]:
    """One process spinning on the CPU for the block (nothing when ``busy`` is false)."""
    if not busy:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        spinner.kill()
        spinner.wait()


def run_worker(workload: str, threads: int | None) -> tuple[int, float]:
    """``(threads used, seconds)`` of one workload in a fresh process (``threads=None``: automatic)."""
    code = WORKER.format(bench=str(Path(__file__).parent), threads=threads, workload=workload)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["threads"], result["seconds"]


def run_tiny(threads: int | None) -> tuple[int, float]:
    """``(threads used, wall seconds)`` of the tiny training command."""
    with tempfile.TemporaryDirectory() as out:
        args = [str(GROUPVIT), "train", "--config", "configs/tiny-cpu.yaml", "--output", out,
                "--threads", str(threads or 0), "train.progress=false"]
        start = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT)
        wall = time.perf_counter() - start
    line = next(line for line in proc.stderr.splitlines() if "intra-op thread" in line)
    return int(line.split("CPU: ")[1].split()[0]), wall


WORKLOADS = {
    "tiny training run (command)": run_tiny,
    "synthetic recipe step (batch 128)": lambda threads: run_worker("train step", threads),
    "segment one 448² image": lambda threads: run_worker("segment", threads),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="measurements per cell (median)")
    args = parser.parse_args()
    cores = machine.usable_cores()
    counts: list[int | None] = [None, 1, cores] if cores > 1 else [None, 1]
    start = time.perf_counter()
    rows = []
    for title, work in WORKLOADS.items():
        for busy in (False, True):
            cells = []
            for threads in counts:
                with competing_load(busy):
                    results = [work(threads) for _ in range(args.repeats)]
                cells.append((results[0][0], statistics.median(r[1] for r in results)))
            rows.append((title, busy, cells))
    flags = machine.cpu_flags()
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags)
    names = ["auto"] + [f"{n} fixed" for n in counts[1:]]
    lines = [
        "## Thread counts on an idle and a half-busy machine", "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in "
        f"{time.perf_counter() - start:.0f} s.", "",
        f"* Machine: {machine.cpu_model()} ({isa or 'n/a'}), {cores} usable cores.",
        f"* Software: Python {platform.python_version()}, torch {torch.__version__}.",
        f"* Command: `PYTHONPATH=src python benchmarks/bench_threads.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"* Each cell: median of {args.repeats} fresh processes; half-busy = one process spinning beside it. "
        f"`{cores} fixed` is PyTorch's default (one thread per CPU), the behaviour before the automatic choice.",
        "",
        "| workload | machine | " + " | ".join(names) + f" | {cores} fixed / auto |",
        "|---|---|" + "---|" * (len(names) + 1),
    ]
    for title, busy, cells in rows:
        text = [f"{seconds:.2f} s" + (f" ({used} thr.)" if n == 0 else "") for n, (used, seconds) in enumerate(cells)]
        ratio = cells[-1][1] / cells[0][1]
        lines.append(f"| {title} | {'half-busy' if busy else 'idle'} | " + " | ".join(text) + f" | {ratio:.2f}× |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
