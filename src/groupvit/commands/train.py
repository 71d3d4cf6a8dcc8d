"""``groupvit train --config FILE [key=value ...] [--resume auto|PATH] [--output DIR]``.

Runs in one process, or one process per GPU under ``torchrun --nproc_per_node N -m groupvit.cli train ...``.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "train GroupViT on image-caption data (one process, or one per GPU under torchrun)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config YAML (e.g. configs/gcc-yfcc.yaml)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dotted config overrides, values read as YAML (e.g. train.epochs=10 model.vision.gumbel=false)",
    )
    parser.add_argument(
        "--resume", default=None, metavar="auto|PATH",
        help="continue a run: 'auto' picks latest.pt in the output directory if present, or give a checkpoint",
    )
    parser.add_argument("--output", default=None, metavar="DIR", help="output directory (overrides train.output)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="intra-op CPU threads (overrides train.threads; 0: chosen from the free cores)")


def run(args: argparse.Namespace) -> int:
    from groupvit.threads import apply_threads
    from groupvit.train.config import load_config
    from groupvit.train.trainer import Trainer, TrainingStopped

    overrides = list(args.overrides)
    if args.output is not None:
        overrides.append(f"train.output={args.output}")
    if args.threads is not None:
        overrides.append(f"train.threads={args.threads}")
    config = load_config(args.config, overrides)
    choice = apply_threads(config.train.threads or None)
    if os.environ.get("RANK", "0") == "0":
        print(f"groupvit train: CPU: {choice.describe()}", file=sys.stderr)
    try:
        result = Trainer(config).fit(resume=args.resume)
    except TrainingStopped as stop:
        if stop.checkpoint is not None:
            print(f"groupvit train: {stop}; checkpoint {stop.checkpoint}; continue with --resume auto", file=sys.stderr)
        return 128 + stop.signum
    if result.checkpoint is not None:
        print(f"trained {result.step} steps; checkpoint {result.checkpoint}")
    return 0
