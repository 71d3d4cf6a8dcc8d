"""``groupvit export onnx --weights W --out DIR``: the image and text towers as ONNX graphs."""

from __future__ import annotations

import argparse

from groupvit.export.onnx import OPSET

HELP = "export the image and text towers to ONNX (dynamic batch and image size) for onnxruntime"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["onnx"], help="output format")
    parser.add_argument("--weights", help="a name (see `groupvit weights`), our .pt, an official .pth or a Hugging "
                        "Face directory (default: gcc-yfcc)")
    parser.add_argument("--out", required=True, help="output folder (image.onnx, text.onnx, groupvit-onnx.json)")
    parser.add_argument("--int8", action="store_true",
                        help="also write dynamically int8-quantised graphs (*.int8.onnx; run them with "
                             "--backend onnxruntime-int8)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")


def run(args: argparse.Namespace) -> int:
    from groupvit.export.onnx import IMAGE_FILE, TEXT_FILE, export_onnx, int8_name
    from groupvit.fileio import check_writable
    from groupvit.pretrained import DEFAULT_OFFICIAL
    from groupvit.weights import load_pretrained

    model = load_pretrained(args.weights or DEFAULT_OFFICIAL).float().eval()
    check_writable(args.out)  # before the towers are traced
    meta_path = export_onnx(model, args.out, int8=args.int8, opset=args.opset)
    files = [IMAGE_FILE, TEXT_FILE] + ([int8_name(IMAGE_FILE), int8_name(TEXT_FILE)] if args.int8 else [])
    print(f"wrote {', '.join(files)} and {meta_path.name} to {meta_path.parent} (opset {args.opset})")
    return 0
