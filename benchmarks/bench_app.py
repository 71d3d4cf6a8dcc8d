"""Latency of the web page through its API: the first request of a vocabulary against the next ones.

Run from the repository root (needs ``pip install -e ".[app]"``; prints a Markdown table for BENCHMARKS.md)::

    PYTHONPATH=src python benchmarks/bench_app.py [--vocabularies 3]

The page runs in this process on 127.0.0.1; ``gradio_client`` sends each request as a user's browser would
(upload, segment, download of the results). Per model, for each of ``--vocabularies`` new class lists: the
first request (the class prompts are encoded) and the second with the same list (embeddings reused).
Models: the bundled ``synthetic-small`` on a 64 px scene, and the official architecture with random
weights (``gcc-yfcc`` preset) on a 448 x 448 image in whole-image mode.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import machine
from gradio_client import Client, handle_file
from PIL import Image

import groupvit
from groupvit.app import App
from groupvit.data.benchmarks import VOC_CLASSES
from groupvit.data.synthetic import SHAPES, SceneGenerator
from groupvit.pretrained import BUNDLED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocabularies", type=int, default=3, help="class lists per model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small = root / "scene64.png"
        Image.fromarray(SceneGenerator(image_size=64, seed=0, split="eval-all").sample(0).image).save(small)
        large = root / "scene448.png"
        Image.fromarray(SceneGenerator(image_size=448, seed=0, split="eval-all").sample(0).image).save(large)
        official = groupvit.save_checkpoint(groupvit.create_model("gcc-yfcc"), root / "gcc-yfcc-random.pt")
        app = App([BUNDLED, str(official)])  # the page offers these two
        app.launch(port=None, prevent_thread_lock=True, quiet=True)  # the server binds a free port itself
        client = Client(f"http://127.0.0.1:{app.blocks.server_port}/", verbose=False)
        cases = [("synthetic-small, 64 px scene", BUNDLED, small, list(SHAPES)),
                 ("official architecture, 448² whole image", str(official), large, list(VOC_CLASSES[1:]))]
        rows = []
        for title, weights, image, names in cases:
            client.predict(handle_file(str(image)), ", ".join(names), weights, True, 0.95, "whole", "none", "fp32",
                           api_name="/segment")  # loads the model
            first, second = [], []
            for v in range(args.vocabularies):
                classes = ", ".join(names[v:] + names[:v])  # a new list each time: its prompts are encoded anew
                for times in (first, second):
                    start = time.perf_counter()
                    client.predict(handle_file(str(image)), classes, weights, True, 0.95, "whole", "none", "fp32",
                                   api_name="/segment")
                    times.append(time.perf_counter() - start)
            rows.append((title, len(names), statistics.median(first), statistics.median(second)))
        app.blocks.close()
    flags = sorted(machine.cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_tile"})
    print(f"CPU: {machine.cpu_model()}, {machine.usable_cores()} usable cores, flags {' '.join(flags)}; "
          f"medians of {args.vocabularies} vocabularies")
    print("| model, image | classes | first request of a vocabulary (ms) | next request (ms) | ratio |")
    print("|---|---|---|---|---|")
    for title, count, first_s, second_s in rows:
        print(f"| {title} | {count} | {1000 * first_s:.0f} | {1000 * second_s:.0f} | {first_s / second_s:.2f}x |")


if __name__ == "__main__":
    main()
