"""``groupvit app``: the zero-shot segmentation web page on this machine (Gradio, offline).

Open the printed address, upload an image, type the classes, press Segment: the page shows the
prediction with class names, the group maps of both stages, a table of the classes found with their
share of the pixels, and a download of the label map. Needs ``pip install -e ".[app]"``.
"""

from __future__ import annotations

import argparse

from groupvit.errors import InputError

HELP = "serve the zero-shot segmentation web page (Gradio) on this machine; needs the [app] extra"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", action="append", default=None,
                        help="weights the page offers, repeatable; the first is selected when it opens: a name "
                             "(synthetic-small, gcc-yfcc, ...) or a local path (default: the bundled synthetic-small, "
                             "which is always offered)")
    parser.add_argument("--allow-any-weights", action="store_true",
                        help="let visitors type any weights name, local path or hub id (the server then reads any "
                             "file and starts any download a visitor names: for a trusted machine only)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine; 0.0.0.0: every network, safe "
                             "with the default limits)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--examples", default=None, help="folder of images to offer as examples")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError('groupvit app needs Gradio: pip install -e ".[app]"') from None
    from groupvit.app import App
    from groupvit.pretrained import BUNDLED

    App(args.weights or [BUNDLED], args.examples, args.device, args.allow_any_weights).launch(args.host, args.port)
    return 0
