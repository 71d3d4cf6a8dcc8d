"""Precisions and backends in one run: PyTorch fp32 and bf16, onnxruntime fp32 and int8, transformers.

Run from the repository root (prints a Markdown block for BENCHMARKS.md)::

    PYTHONPATH=src python benchmarks/bench_backends.py [--threads 2] [--runs 9] [--scenes 200]

Speed: the official architecture with random weights (``gcc-redcaps`` preset, as
``bench_vs_transformers.py``), exported once with ``groupvit export onnx --int8``. Workloads: image
embedding 224² at batch 1 and 8; segmentation of one 448² uint8 image with the official protocol
(``Segmenter``, whole image, 21 classes, background on, class embeddings cached, no group maps) on
each backend and precision, beside transformers' ``output_segmentation=True`` forward (its only
segmentation API: it also encodes the 21 prompts). Variants run interleaved, in a rotating order; medians.
The bf16 column (``Segmenter(precision="bf16")``, ``torch.autocast`` to bfloat16) is measured only where the
CPU computes bfloat16 natively (AVX-512 BF16 or AMX); the machine's fp32 and bf16 matmul rates are the
limit lines.

Accuracy: label and group-map agreement with eager fp32 PyTorch, and zero-shot mIoU, of (a) the bundled
synthetic model on ``--scenes`` fresh synthetic scenes (seed 2027, all pairs), and (b) the official
architecture with random weights and decisive assignments (the parity tests' set-up) on 448x560 images
segmented with the official protocol (21 classes, sliding windows); its class embeddings are the image's own
final group embeddings and random directions, since random text embeddings score all classes alike.
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
from groupvit.model.grouping import AssignAttention
from groupvit.precision import bf16_native
from groupvit.segment import Segmenter
from groupvit.weights import load_pretrained

# (name, Segmenter backend, precision)
VARIANTS = (("PyTorch fp32", "torch", "fp32"), ("PyTorch bf16", "torch", "bf16"),
            ("onnxruntime fp32", "onnxruntime", "fp32"), ("onnxruntime int8", "onnxruntime-int8", "fp32"))


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


def measured_variants() -> tuple[tuple[str, str, str], ...]:
    """The variants this machine runs: bf16 only where it is native (emulated bf16 is not a product path)."""
    return tuple(v for v in VARIANTS if v[2] != "bf16" or bf16_native("cpu"))


def decisive(model: torch.nn.Module) -> torch.nn.Module:
    """Sharpen random assignments as trained ones are (the parity tests' set-up): near-uniform soft maps would
    let float rounding alone flip an arg-max."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AssignAttention):
                module.q_proj.weight.mul_(30)
    return model


def decisive_classes(segmenter: Segmenter, image: np.ndarray, count: int) -> torch.Tensor:
    """``count`` class embeddings ``[count, D]`` that random weights score decisively, as a trained model's are:
    the final group embeddings of the image's first window (eager fp32), then random directions."""
    x, _ = segmenter.prepare(image)
    with torch.inference_mode():
        groups = segmenter.encode(x[None, :, :segmenter.window, :segmenter.window]).group_embeds[0].float()
    extra = torch.randn(count - groups.shape[0], groups.shape[1], generator=torch.Generator().manual_seed(0))
    return torch.cat([groups, torch.nn.functional.normalize(extra, dim=-1)])


def speed(args: argparse.Namespace, folder: Path) -> dict[str, dict[str, list[float]]]:
    """Per workload, the timings of every variant and of transformers."""
    model = workloads.build_ours()
    export_onnx(model, folder, int8=True)
    hf_dir = folder / "hf"
    model.save_pretrained(hf_dir)
    reference = workloads.load_reference(hf_dir)
    towers: dict[str, Any] = {"torch": model, "onnxruntime": OnnxGroupViT(folder, threads=args.threads),
                              "onnxruntime-int8": OnnxGroupViT(folder, int8=True, threads=args.threads)}
    results = {}
    for batch in (1, 8):
        x = workloads.images(batch, 224)

        def embed(tower: Any, precision: str, x: torch.Tensor = x) -> Callable[[], Any]:
            def step() -> Any:
                with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                    return tower.encode_image(x)
            return step

        variants = {name: embed(towers[backend], precision) for name, backend, precision in measured_variants()}
        variants["transformers"] = workloads.reference_embed(batch)(reference)
        results[f"image embedding 224², batch {batch}"] = timed(variants, args.runs, args.warmup)
    image = np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    variants = {}
    for name, backend, precision in measured_variants():
        segmenter = Segmenter(towers[backend], workloads.CLASS_NAMES, mode="whole", backend=backend,
                              precision=precision)
        variants[name] = lambda s=segmenter: s(image, groups=False)
    variants["transformers"] = workloads.reference_segment(reference)
    results["segmentation 448², 21 classes (from uint8 pixels)"] = timed(variants, args.runs, args.warmup)
    return results


def agreement(model: Any, folder: Path, names: tuple[str, ...], images: list[np.ndarray],
              truths: list[np.ndarray] | None, decisive_text: bool = False,
              **settings: Any) -> dict[str, tuple[float, float, float]]:
    """Per variant: (label agreement %, final-group-map agreement %, mIoU or nan) against eager fp32.

    ``decisive_text``: per image, the class embeddings are :func:`decisive_classes` (random weights' text
    embeddings score every class alike, so that any rounding would flip labels).
    """
    export_onnx(model, folder, int8=True)
    out: dict[str, tuple[float, float, float]] = {}
    reference: list[Any] = []
    for name, backend, precision in measured_variants():
        tower = model if backend == "torch" else folder
        segmenter = Segmenter(tower, names, backend=backend, precision=precision, **settings)
        if decisive_text:
            eager = Segmenter(model, names, **settings)
            results = []
            for image in images:
                segmenter.text_embeds = decisive_classes(eager, image, len(names))
                results.append(segmenter(image))
        else:
            results = segmenter(images)
        reference = reference or results
        labels = np.mean([np.mean(a.labels == b.labels) for a, b in zip(results, reference, strict=True)])
        groups = np.mean([np.mean(a.group_maps[-1] == b.group_maps[-1])
                          for a, b in zip(results, reference, strict=True)])
        miou = float("nan")
        if truths is not None:
            iou = IoUAccumulator(len(names) + 1)
            for result, truth in zip(results, truths, strict=True):
                iou.update(result.labels, truth)
            miou = 100 * iou.compute().miou
        out[name] = (100 * float(labels), 100 * float(groups), miou)
    return out


def accuracy(args: argparse.Namespace, folder: Path) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Agreement tables of the bundled model on synthetic scenes and of the official architecture at 448²."""
    scenes = [SceneGenerator(image_size=64, seed=2027, split="eval-all").sample(i) for i in range(args.scenes)]
    synthetic = agreement(load_pretrained("synthetic-small"), folder / "synthetic", THING_CLASSES[1:],
                          [s.image for s in scenes], [s.labels for s in scenes], mode="whole", short_side=64)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (448, 560, 3), dtype=np.uint8) for _ in range(args.official_images)]
    official = agreement(decisive(workloads.build_ours()), folder / "official", workloads.CLASS_NAMES, images, None,
                         decisive_text=True)
    return {f"bundled synthetic-small, {args.scenes} synthetic scenes (64 px, seed 2027)": synthetic,
            f"official architecture, random weights with decisive assignments and class embeddings (the image's "
            f"own final groups and random directions), {args.official_images} images 448x560 (slide mode, 21 "
            "classes)": official}


def render(args: argparse.Namespace, times: dict[str, dict[str, list[float]]],
           quality: dict[str, dict[str, tuple[float, float, float]]], rates: dict[str, machine.MatmulRate],
           elapsed: float) -> str:
    import onnxruntime
    import transformers

    flags = machine.cpu_flags()
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags)
    names = [name for name, _, _ in measured_variants()]
    limits = "; ".join(f"{dtype} {rate.median_gflops:.0f} GFLOP/s" for dtype, rate in rates.items())
    lines = [
        "## Precisions and backends: PyTorch fp32 / bf16, onnxruntime fp32 / int8, transformers",
        "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in {elapsed:.0f} s.",
        "",
        f"* Machine: {machine.cpu_model()} ({isa or 'n/a'}), {machine.usable_cores()} usable cores; no GPU; "
        f"bf16 {'native' if bf16_native('cpu') else 'not native: its column is skipped'}.",
        f"* Limit lines: 2048² matmul, {args.threads} threads: {limits}.",
        f"* Software: Python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, transformers {transformers.__version__}; {args.threads} threads everywhere.",
        f"* Command: `PYTHONPATH=src python benchmarks/bench_backends.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"* {args.warmup} warm-up + {args.runs} timed calls per variant, interleaved; median (best) wall-clock.",
        "",
        "| workload | " + " | ".join((*names, "transformers")) + " | "
        + " | ".join(f"{name} vs fp32" for name in names[1:]) + " | "
        + " | ".join(f"{name} vs transformers" for name in names[:2]) + " |",
        "|---" * (1 + len(names) + 1 + len(names) - 1 + 2) + "|",
    ]
    for workload, runs in times.items():
        med = {name: statistics.median(t) for name, t in runs.items()}
        cells = [f"{1000 * med[name]:.0f} ({1000 * min(runs[name]):.0f}) ms" for name in (*names, "transformers")]
        cells += [f"{med[names[0]] / med[name]:.2f}×" for name in names[1:]]
        cells += [f"{med['transformers'] / med[name]:.2f}×" for name in names[:2]]
        lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios are speed-ups (time of the slower over time of the faster side)."]
    for title, table in quality.items():
        lines += ["", f"Agreement with eager fp32, {title}:", "",
                  "| variant | label agreement | final-group agreement | mIoU |", "|---|---|---|---|"]
        for name, (labels, groups, miou) in table.items():
            lines.append(f"| {name} | {labels:.2f} % | {groups:.2f} % | {'-' if np.isnan(miou) else f'{miou:.1f}'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=200, help="synthetic scenes for the accuracy table")
    parser.add_argument("--official-images", type=int, default=4, help="448x560 images for the official model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rates = {"fp32": machine.matmul_rate()}
    if bf16_native("cpu"):
        rates["bf16"] = machine.matmul_rate(dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        quality = accuracy(args, Path(tmp))
        times = speed(args, Path(tmp) / "speed")
    print(render(args, times, quality, rates, time.perf_counter() - start))


if __name__ == "__main__":
    main()
