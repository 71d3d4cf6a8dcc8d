"""``groupvit train --config FILE [key=value ...] [--resume auto|PATH] [--output DIR]``.

Runs in one process, or one process per GPU under ``torchrun --nproc_per_node N -m groupvit.cli train ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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


def _threads_of_run(output: str) -> int | None:
    """The thread count an earlier run in ``output`` recorded in its ``config.yaml``, if any."""
    from groupvit.train.config import load_yaml

    path = Path(output) / "config.yaml"
    try:
        return int(load_yaml(path).get("train", {}).get("threads") or 0) or None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


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
    recorded = None if config.train.threads or not args.resume else _threads_of_run(config.train.output)
    choice = apply_threads(config.train.threads or recorded)
    # The count goes into <output>/config.yaml: a resumed run uses it again, so its sums (and so its weights)
    # are those of an uninterrupted run whatever the load when it restarts.
    config.train.threads = choice.threads
    if os.environ.get("RANK", "0") == "0":
        origin = "as recorded by the run" if recorded else "requested"
        print(f"groupvit train: CPU: {choice.describe(origin)}", file=sys.stderr)
    try:
        result = Trainer(config).fit(resume=args.resume)
    except TrainingStopped as stop:
        if stop.checkpoint is not None:
            print(f"groupvit train: {stop}; checkpoint {stop.checkpoint}; continue with --resume auto", file=sys.stderr)
        return 128 + stop.signum
    if result.checkpoint is not None:
        print(f"trained {result.step} steps; checkpoint {result.checkpoint}")
    return 0
