"""``groupvit convert SRC DST``: convert weights between formats."""

from __future__ import annotations

import argparse
from pathlib import Path

from groupvit.errors import InputError
from groupvit.weights import load_pretrained, save_checkpoint, save_pretrained

HELP = "convert weights: official .pth / own checkpoint -> Hugging Face directory, or any source -> own .pt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="official NVlabs .pth, own checkpoint, Hugging Face directory or hub id")
    parser.add_argument("dst", help="output: a directory (Hugging Face layout) or a file ending in .pt/.pth (own)")
    parser.add_argument(
        "--to", choices=["hf", "own"], default=None,
        help="output format (default: 'own' when DST ends in .pt/.pth, else 'hf')",
    )
    parser.add_argument("--half", action="store_true", help="store float tensors as float16 (half the size)")


def run(args: argparse.Namespace) -> int:
    dst = Path(args.dst)
    fmt = args.to or ("own" if dst.suffix in {".pt", ".pth"} else "hf")
    if fmt == "hf" and dst.suffix in {".pt", ".pth"}:
        raise InputError(f"{dst} looks like a file, but the Hugging Face format is a directory; drop the suffix")
    model = load_pretrained(args.src)
    if args.half:
        model = model.half()
    written = save_pretrained(model, dst) if fmt == "hf" else save_checkpoint(model, dst)
    print(f"wrote {'Hugging Face directory' if fmt == 'hf' else 'checkpoint'} {written}")
    return 0
