"""Training step time in float32 and under bf16 autocast, side by side in one run (CPU).

Run from the repository root (prints a Markdown block for BENCHMARKS.md)::

    PYTHONPATH=src python benchmarks/bench_train_step.py [--threads 2] [--rounds 5] [--steps 4]

One optimizer step of ``groupvit train`` (forward of both towers, the loss, backward, gradient clipping,
fused AdamW) on a fixed batch, for two set-ups: the synthetic recipe (``synthetic`` preset, batch 128 of
64² images, 1 + 3 texts per image, max-group multi-label pooling, the colour-affinity objective) and the
official architecture (``gcc-yfcc``, batch 8 of 224² images). fp32, bf16 and fp32 with the text tower frozen
(``train.trainable=vision``: on this fixed batch every text comes from the cache after the first step, the
bound of what the cache saves; with fresh captions every step only the prompts repeat) alternate in rounds of
``--steps`` steps on copies of the same model; medians per step. bf16 is measured only where the CPU computes
it natively (AVX-512 BF16 or AMX).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import sys
import time

import machine
import torch

import groupvit
from groupvit.precision import bf16_native
from groupvit.train.finetune import apply_trainable, keep_frozen_batchnorm
from groupvit.train.losses import ContrastiveObjective
from groupvit.train.optim import build_optimizer

# Fine-tuning with the text tower and its head frozen (train.trainable=vision): its embeddings are cached.
FROZEN = "fp32, text frozen (cached)"
SETUPS = {  # name: (preset, batch, image size, multi-label pooling, group objectives)
    "synthetic recipe (batch 128, 64², affinity)": ("synthetic", 128, 64, "max-group", {"affinity": 1.0}),
    "official architecture gcc-yfcc (batch 8, 224²)": ("gcc-yfcc", 8, 224, "image", {}),
}


class Runner:
    """One model, its objective and optimiser; :meth:`step` runs one optimizer step on the fixed batch."""

    def __init__(self, model: groupvit.GroupViT, pooling: str, objectives: dict[str, float], amp: bool,
                 images: torch.Tensor, texts: torch.Tensor, trainable: str = "all") -> None:
        apply_trainable(model, trainable)
        keep_frozen_batchnorm(model)
        self.objective = ContrastiveObjective(model, 1.0, pooling, objectives)
        self.optimizer = build_optimizer(model, 1e-4)
        self.amp, self.images, self.texts = amp, images, texts

    def step(self) -> float:
        with torch.autocast("cpu", torch.bfloat16, enabled=self.amp):
            out = self.objective(self.images, self.texts)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(self.objective.parameters(), 5.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(out.total)


def measure(setup: tuple, rounds: int, steps: int, variants: tuple[str, ...]) -> dict[str, list[float]]:
    """Seconds per step of each variant, ``steps`` steps a round, variants alternating; one warm-up round."""
    preset, batch, size, pooling, objectives = setup
    torch.manual_seed(0)
    model = groupvit.create_model(preset).train()
    k = model.config.multi_label
    images = torch.randn(batch, 3, size, size)
    texts = torch.randint(1, 400, (batch, 1 + k, model.config.text.context_length))
    texts[:, :, 12:] = 0
    runners = {name: Runner(copy.deepcopy(model), pooling, objectives, name.startswith("bf16"), images, texts,
                            "vision" if "text frozen" in name else "all") for name in variants}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds + 1):
        for name in variants[r % len(variants):] + variants[:r % len(variants)]:
            for _ in range(steps):
                start = time.perf_counter()
                runners[name].step()
                if r:
                    times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = ("fp32", "bf16") if bf16_native("cpu") else ("fp32",)
    variants += (FROZEN,)
    start = time.perf_counter()
    results = {title: measure(setup, args.rounds, args.steps, variants) for title, setup in SETUPS.items()}
    flags = machine.cpu_flags()
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags)
    lines = [
        "## Training step: fp32 vs bf16 autocast (CPU)", "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in "
        f"{time.perf_counter() - start:.0f} s.", "",
        f"* Machine: {machine.cpu_model()} ({isa or 'n/a'}), {machine.usable_cores()} usable cores; "
        f"bf16 {'native' if 'bf16' in variants else 'not native: not measured'}.",
        f"* Software: Python {platform.python_version()}, torch {torch.__version__}; {args.threads} threads.",
        f"* Command: `PYTHONPATH=src python benchmarks/bench_train_step.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"* {args.rounds} rounds of {args.steps} steps per variant after a warm-up round, alternating; "
        "median (best) seconds per step.", "",
        "| set-up | " + " | ".join(variants) + " | " + " | ".join(f"{v} vs fp32" for v in variants[1:]) + " |",
        "|---" * (2 * len(variants)) + "|",
    ]
    for title, times in results.items():
        med = {name: statistics.median(t) for name, t in times.items()}
        cells = [f"{med[name]:.2f} ({min(times[name]):.2f}) s" for name in variants]
        ratios = [f"{med['fp32'] / med[name]:.2f}×" for name in variants[1:]]
        lines.append(f"| {title} | " + " | ".join(cells + ratios) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
