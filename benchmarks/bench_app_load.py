"""The web page under load and abuse: requests per second, latency percentiles, memory, files left behind.

Run from the repository root (needs ``pip install -e ".[app]"``; prints a Markdown block for BENCHMARKS.md)::

    PYTHONPATH=src python benchmarks/bench_app_load.py [--clients 8] [--seconds 60] [--requests 1000]

The page (bundled model, the safe defaults) runs in this process on 127.0.0.1; ``app_load`` drives it:
``--clients`` concurrent clients send a valid 64 px scene for ``--seconds`` seconds, then ``--requests``
requests cycle through new class lists, uploads that are not images, a 20000x20000 header (a decompression
bomb's), weights the server does not offer and too many classes. Every answer is checked; memory is the
process's resident set after warm-up and at the end; files are counted at the end and after closing.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import app_load
import machine
import torch
from gradio_client import Client
from PIL import Image

from groupvit.app import KEPT_RESULTS, App
from groupvit.data.synthetic import SHAPES, SceneGenerator
from groupvit.pretrained import BUNDLED
from groupvit.segment import Segmenter
from groupvit.weights import load_pretrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    start = time.perf_counter()
    classes = ", ".join(SHAPES)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scene = root / "scene.png"
        Image.fromarray(SceneGenerator(image_size=64, seed=0, split="eval-all").sample(0).image).save(scene)
        labels = Segmenter(load_pretrained(BUNDLED), classes, mode="whole", short_side=64, window=64, stride=32,
                           background_rule="threshold", refine="none")(str(scene)).labels
        valid, make = app_load.scenario(root / "abuse", scene, labels, classes, SHAPES, BUNDLED)
        app = App([BUNDLED])
        app.launch(port=None, prevent_thread_lock=True, quiet=True)
        url = f"http://127.0.0.1:{app.blocks.server_port}/"
        client = Client(url, verbose=False)
        for _ in range(3):
            app_load.ask(client, valid)
        warm = machine.rss_mib()
        load = app_load.LoadReport()
        app_load.valid_load(url, valid, args.clients, args.seconds, load)
        after_load = machine.rss_mib()
        abuse = app_load.LoadReport()
        abuse_start = time.perf_counter()
        app_load.abuse(url, make, args.requests, abuse)
        abuse.seconds = time.perf_counter() - abuse_start
        still = app_load.ask(client, valid)
        end = machine.rss_mib()
        own = len(list(app.files.rglob("labels.png")))
        created = [Path(f) for files in app.blocks.temp_file_sets for f in files]
        alive = sum(f.exists() for f in created)
        app.close()
        left = sum(f.exists() for f in created) + app.files.exists()
    flags = machine.cpu_flags()
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16") if f in flags)
    lines = [
        "## The web page under load and abuse", "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in "
        f"{time.perf_counter() - start:.0f} s.", "",
        f"* Machine: {machine.cpu_model()} ({isa or 'n/a'}), {machine.usable_cores()} usable cores; "
        f"Python {platform.python_version()}, torch {torch.__version__}; server and clients in one process.",
        f"* Command: `PYTHONPATH=src python benchmarks/bench_app_load.py {' '.join(sys.argv[1:])}`".rstrip(), "",
        "| phase | requests | per second | latency p50 / p90 / p99 / max | wrong answers |", "|---|---|---|---|---|",
    ]
    for name, report in ((f"{args.clients} clients, valid 64 px scene, {args.seconds:.0f} s", load),
                         ("abuse, one client", abuse)):
        count = sum(report.answers.values())
        rate = count / report.seconds if report.seconds else float("nan")
        lat = (" / ".join(f"{report.percentile(q):.3f}" for q in (50, 90, 99)) + f" / {max(report.latencies):.3f} s"
               if report.latencies else "not timed")
        lines.append(f"| {name} | {count} | {rate:.1f} | {lat} | {len(report.wrong)} |")
    lines += [
        "", f"Abuse answers: {dict(abuse.answers)}; after them a valid request was "
        f"{'answered right' if still is None else 'wrong: ' + still}.",
        f"Memory (resident set): {warm:.0f} MiB after warm-up, {after_load:.0f} MiB after the load, {end:.0f} MiB "
        f"after the abuse ({end - warm:+.0f} MiB).",
        f"Files: {own} label maps of the page's own on disk at the end (at most {KEPT_RESULTS} are kept), "
        f"{alive} of "
        f"Gradio's {len(created)} copies of uploads and results still present; after closing the server, {left} "
        "files left.",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
