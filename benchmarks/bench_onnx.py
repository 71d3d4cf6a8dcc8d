"""onnxruntime (fp32, int8) against eager PyTorch and transformers, side by side in one run.

Run from the repository root (prints a Markdown block for BENCHMARKS.md)::

    PYTHONPATH=src python benchmarks/bench_onnx.py [--threads 2] [--runs 9] [--scenes 200]

Speed: the official architecture with random weights (``gcc-redcaps`` preset, as
``bench_vs_transformers.py``), exported once with ``groupvit export onnx --int8``. Workloads: image
embedding 224² at batch 1 and 8; segmentation of one 448² uint8 image with the official protocol
(``Segmenter``, whole image, 21 classes, background on, class embeddings cached, no group maps) on
each backend, beside transformers' ``output_segmentation=True`` forward (its only segmentation API:
it also encodes the 21 prompts). Variants run interleaved, in a rotating order; medians.

Accuracy: the bundled synthetic model, exported the same way, segments ``--scenes`` fresh synthetic
scenes (seed 2027, all pairs) on every backend: agreement of the label maps with eager PyTorch and
zero-shot mIoU.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import machine
import numpy as np
import torch
import workloads

from groupvit.data.synthetic import THING_CLASSES, SceneGenerator
from groupvit.evaluate.miou import IoUAccumulator
from groupvit.export import OnnxGroupViT, export_onnx
from groupvit.segment import Segmenter
from groupvit.weights import load_pretrained

BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")


def timed(variants: dict[str, Callable[[], Any]], runs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each variant: ``warmup`` untimed rounds, then ``runs`` rounds in rotating order."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def speed(args: argparse.Namespace, folder: Path) -> dict[str, dict[str, list[float]]]:
    """Per workload, the timings of every backend and of transformers."""
    model = workloads.build_ours()
    export_onnx(model, folder, int8=True)
    hf_dir = folder / "hf"
    model.save_pretrained(hf_dir)
    reference = workloads.load_reference(hf_dir)
    runtimes = {"onnxruntime": OnnxGroupViT(folder, threads=args.threads),
                "onnxruntime-int8": OnnxGroupViT(folder, int8=True, threads=args.threads)}
    towers = {"torch": model, **runtimes}
    results = {}
    for batch in (1, 8):
        x = workloads.images(batch, 224)

        def embed(tower: Any, x: torch.Tensor = x) -> Callable[[], Any]:
            def step() -> Any:
                with torch.inference_mode():
                    return tower.encode_image(x)
            return step

        variants = {name: embed(tower) for name, tower in towers.items()}
        variants["transformers"] = workloads.reference_embed(batch)(reference)
        results[f"image embedding 224², batch {batch}"] = timed(variants, args.runs, args.warmup)
    image = np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    variants = {}
    for name, tower in towers.items():
        segmenter = Segmenter(tower, workloads.CLASS_NAMES, mode="whole", backend=name)
        variants[name] = lambda s=segmenter: s(image, groups=False)
    variants["transformers"] = workloads.reference_segment(reference)
    results["segmentation 448², 21 classes (from uint8 pixels)"] = timed(variants, args.runs, args.warmup)
    return results


def accuracy(args: argparse.Namespace, folder: Path) -> dict[str, tuple[float, float]]:
    """Per backend: (label agreement with eager PyTorch %, mIoU %) on fresh synthetic scenes."""
    model = load_pretrained("synthetic-small")
    export_onnx(model, folder, int8=True)
    scenes = [SceneGenerator(image_size=64, seed=2027, split="eval-all").sample(i) for i in range(args.scenes)]
    labels: dict[str, list[np.ndarray]] = {}
    out = {}
    for backend in BACKENDS:
        tower = model if backend == "torch" else folder
        segmenter = Segmenter(tower, THING_CLASSES[1:], mode="whole", short_side=64, backend=backend)
        labels[backend] = [r.labels for r in segmenter([s.image for s in scenes], groups=False)]
        iou = IoUAccumulator(len(THING_CLASSES))
        for pred, scene in zip(labels[backend], scenes, strict=True):
            iou.update(pred, scene.labels)
        agree = np.mean([np.mean(a == b) for a, b in zip(labels[backend], labels["torch"], strict=True)])
        out[backend] = (100 * float(agree), 100 * iou.compute().miou)
    return out


def render(args: argparse.Namespace, times: dict[str, dict[str, list[float]]],
           quality: dict[str, tuple[float, float]], elapsed: float) -> str:
    import onnxruntime
    import transformers

    flags = machine.cpu_flags()
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags)
    lines = [
        "## onnxruntime export vs PyTorch vs transformers",
        "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in {elapsed:.0f} s.",
        "",
        f"* Machine: {machine.cpu_model()} ({isa or 'n/a'}), {machine.usable_cores()} usable cores; no GPU.",
        f"* Software: Python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, transformers {transformers.__version__}; {args.threads} threads everywhere.",
        f"* Command: `PYTHONPATH=src python benchmarks/bench_onnx.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"* {args.warmup} warm-up + {args.runs} timed calls per variant, interleaved; median (best) wall-clock.",
        "",
        "| workload | " + " | ".join(("PyTorch (eager)", "onnxruntime fp32", "onnxruntime int8", "transformers"))
        + " | fp32 / eager | int8 / eager | eager vs transformers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for workload, runs in times.items():
        med = {name: statistics.median(t) for name, t in runs.items()}
        cells = [f"{1000 * med[name]:.0f} ({1000 * min(runs[name]):.0f}) ms" for name in (*BACKENDS, "transformers")]
        lines.append(f"| {workload} | " + " | ".join(cells)
                     + f" | {med['torch'] / med['onnxruntime']:.2f}× | {med['torch'] / med['onnxruntime-int8']:.2f}×"
                     + f" | {med['transformers'] / med['torch']:.2f}× |")
    lines += ["", "Ratios are speed-ups (time of the slower over time of the faster side).", "",
              f"Accuracy on {args.scenes} fresh synthetic scenes (bundled model, 64 px, seed 2027, all pairs):", "",
              "| backend | label agreement with eager | mIoU |", "|---|---|---|"]
    for backend, (agree, miou) in quality.items():
        lines.append(f"| {backend} | {agree:.2f} % | {miou:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=200, help="synthetic scenes for the accuracy table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        quality = accuracy(args, Path(tmp) / "synthetic")
        times = speed(args, Path(tmp) / "official")
    print(render(args, times, quality, time.perf_counter() - start))


if __name__ == "__main__":
    main()
