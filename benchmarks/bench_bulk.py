"""Bulk segmentation throughput: ``groupvit segment`` on 1 and 2 processes (one thread each) under torchrun.

Beside them, one process with 2 threads (torchrun with ``OMP_NUM_THREADS=2``): what threads alone give.

Run from the repository root (prints a Markdown table for BENCHMARKS.md)::

    PYTHONPATH=src python benchmarks/bench_bulk.py [--images 24] [--repeats 2]

The official architecture with random weights (``gcc-yfcc`` preset) segments ``--images`` synthetic
scenes of 448 x 448 with the official protocol (one 448 window each, 21 VOC classes, background on, no
group maps); each run is a fresh ``torchrun --standalone`` launch and the throughput is the images/s
``segment`` reports (model loading and process start excluded). Runs of 1 and 2 processes alternate;
medians are reported with the CPU flags of the host.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import machine
from PIL import Image

import groupvit
from groupvit.data.benchmarks import VOC_CLASSES
from groupvit.data.synthetic import SceneGenerator

TORCHRUN = Path(sys.executable).parent / "torchrun"
SCRIPT = Path(sys.executable).parent / "groupvit"


def run_once(nproc: int, threads: int, folder: Path, weights: Path, out: Path) -> float:
    """Images/s of one torchrun launch of ``groupvit segment`` with ``nproc`` processes of ``threads`` threads."""
    command = [str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", str(SCRIPT), "segment", str(folder),
               "--classes", ",".join(VOC_CLASSES[1:]), "--weights", str(weights), "--no-groups",
               "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    match = re.search(r"([0-9.]+) images/s", proc.stderr)
    if match is None:
        raise RuntimeError(f"no throughput in the output of {' '.join(command)}:\n{proc.stderr}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24, help="scenes to segment per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per process count")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "images"
        folder.mkdir()
        generator = SceneGenerator(image_size=448, seed=0, split="eval-all")
        for i in range(args.images):
            Image.fromarray(generator.sample(i).image).save(folder / f"scene{i:03d}.png")
        weights = groupvit.save_checkpoint(groupvit.create_model("gcc-yfcc"), root / "gcc-yfcc-random.pt")
        layouts = [(1, 1), (2, 1), (1, 2)]  # (processes, threads each)
        rates: dict[tuple[int, int], list[float]] = {layout: [] for layout in layouts}
        for repeat in range(args.repeats):
            for nproc, threads in layouts if repeat % 2 == 0 else layouts[::-1]:
                out = root / f"out{nproc}x{threads}-{repeat}"
                rates[nproc, threads].append(run_once(nproc, threads, folder, weights, out))
    flags = sorted(machine.cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_tile"})
    print(f"CPU: {machine.cpu_model()}, {machine.usable_cores()} usable cores, flags {' '.join(flags)}; "
          f"{args.images} images of 448 x 448, {args.repeats} runs each")
    print("| processes x threads | images/s (median) | runs | vs 1 x 1 |")
    print("|---|---|---|---|")
    base = statistics.median(rates[1, 1])
    for (nproc, threads), values in rates.items():
        median = statistics.median(values)
        print(f"| {nproc} x {threads} | {median:.2f} | {', '.join(f'{v:.2f}' for v in values)} | "
              f"{median / base:.2f}x |")


if __name__ == "__main__":
    main()
