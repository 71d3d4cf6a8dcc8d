"""Memory and time of one fine-tuning step of the official architecture on CPU, per ``train.trainable`` choice.

Run from the repository root (prints a Markdown block for docs/fine-tuning.md)::

    PYTHONPATH=src python benchmarks/bench_finetune_memory.py [--batches 8 32] [--threads 2]

Each cell is a fresh process: the ``gcc-yfcc`` architecture (the released weights' shapes; the values do not
change memory or time), ``train.trainable`` applied, fused AdamW, and 3 optimizer steps on a fixed batch of
224² images with a caption and 3 prompts each (the step of ``benchmarks/bench_train_step.py``, float32).
Reported: the process's peak resident memory after the steps (weights, gradients, optimiser state,
activations) and the median step time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import machine
import torch

WORKER = r"""
import json, resource, statistics, sys, time
sys.path.insert(0, {bench!r})
import torch
torch.set_num_threads({threads})
import groupvit
from bench_train_step import Runner
torch.manual_seed(0)
model = groupvit.create_model("gcc-yfcc").train()
texts = torch.randint(1, 400, ({batch}, 1 + model.config.multi_label, model.config.text.context_length))
texts[:, :, 12:] = 0
runner = Runner(model, "image", {{}}, False, torch.randn({batch}, 3, 224, 224), texts, {trainable!r})
times = []
for _ in range(3):
    start = time.perf_counter()
    runner.step()
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
print(json.dumps({{"peak_gib": peak, "step_s": statistics.median(times)}}))
"""
TRAINABLE = ("all", "vision", "group-tokens")


def measure(batch: int, trainable: str, threads: int) -> dict[str, float]:
    """Peak memory (GiB) and median step time (s) of one configuration, in a fresh process."""
    code = WORKER.format(bench=str(Path(__file__).parent), batch=batch, trainable=trainable, threads=threads)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--threads", type=int, default=machine.usable_cores())
    args = parser.parse_args()
    flags = machine.cpu_flags()
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags)
    lines = [
        "## Fine-tuning the official architecture on CPU: memory and time per step", "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
        f"* Machine: {machine.cpu_model()} ({isa or 'n/a'}), {args.threads} threads.",
        f"* Software: Python {platform.python_version()}, torch {torch.__version__}; float32.",
        f"* Command: `PYTHONPATH=src python benchmarks/bench_finetune_memory.py {' '.join(sys.argv[1:])}`".rstrip(),
        "", "| batch | train.trainable | peak resident memory | seconds per step |", "|---|---|---|---|",
    ]
    for batch in args.batches:
        for trainable in TRAINABLE:
            result = measure(batch, trainable, args.threads)
            lines.append(f"| {batch} | {trainable} | {result['peak_gib']:.2f} GiB | {result['step_s']:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
