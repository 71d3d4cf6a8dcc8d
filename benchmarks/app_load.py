"""Load and abuse of the web page through its API, bounded in count and time, against 127.0.0.1 only.

Used by ``bench_app_load.py`` (large numbers, for BENCHMARKS.md) and ``tests/test_app_public.py`` (small ones).
Phase 1: ``clients`` threads, each with its own ``gradio_client.Client``, send a valid image for ``seconds``
seconds; every answer's label map must equal the expected one. Phase 2: ``requests`` requests in turn: new
class lists (each answered with a label map of that vocabulary), uploads that are not images, images above
the pixel limit, weights the server does not offer, too many classes; every refusal must be one line that
names the problem. Then one more valid request: the server still answers right.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file

from groupvit.data.images import read_label_map


@dataclass
class Case:
    """One request: the upload, the class list, the weights, and what must come back."""

    kind: str
    image: Path
    classes: str
    weights: str
    refusal: str | None = None  # a substring of the one-line error, or None for a label map
    labels: np.ndarray | None = None  # the exact label map expected, when known
    max_label: int | None = None  # else: the highest label id a valid answer may hold


@dataclass
class LoadReport:
    """What the run saw: latencies of valid requests, answers per kind, and every wrong answer."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    answers: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else float("nan")

    def summary(self) -> str:
        return (f"{len(self.latencies)} valid requests in {self.seconds:.1f} s ({self.requests_per_s:.2f}/s), latency "
                f"p50 {self.percentile(50):.3f} s, p90 {self.percentile(90):.3f} s, p99 {self.percentile(99):.3f} s, "
                f"max {max(self.latencies, default=float('nan')):.3f} s; answers {dict(self.answers)}; "
                f"{len(self.wrong)} wrong")


def ask(client: Client, case: Case) -> str | None:
    """Send one case; ``None`` when the answer is right, else what was wrong with it."""
    try:
        out = client.predict(handle_file(str(case.image)), case.classes, case.weights, True, 0.95, "whole", "none",
                             "fp32", "threshold", api_name="/segment")
    except Exception as err:  # gradio_client raises the server's message as an exception
        message = str(err).strip()
        if case.refusal is None:
            return f"{case.kind}: refused with {message!r}"
        if "\n" in message or case.refusal not in message:
            return f"{case.kind}: refusal {message!r} does not name the problem ({case.refusal!r})"
        return None
    if case.refusal is not None:
        return f"{case.kind}: answered where {case.refusal!r} was due"
    labels = read_label_map(out[3])
    if case.labels is not None and not np.array_equal(labels, case.labels):
        return f"{case.kind}: label map differs from the expected one"
    if case.max_label is not None and int(labels.max()) > case.max_label:
        return f"{case.kind}: label {int(labels.max())} beyond the {case.max_label} classes"
    return None


def valid_load(url: str, case: Case, clients: int, seconds: float, report: LoadReport) -> None:
    """``clients`` threads sending ``case`` until ``seconds`` have passed (each finishes its last request)."""
    deadline = time.perf_counter() + seconds
    lock = threading.Lock()

    def worker() -> None:
        client = Client(url, verbose=False)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            problem = ask(client, case)
            with lock:
                report.latencies.append(time.perf_counter() - start)
                report.answers[case.kind] += 1
                if problem:
                    report.wrong.append(problem)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    report.seconds = time.perf_counter() - start


def abuse(url: str, make: Callable[[int], Case], requests: int, report: LoadReport) -> None:
    """``requests`` requests from one client, request ``i`` being ``make(i)``."""
    client = Client(url, verbose=False)
    for i in range(requests):
        case = make(i)
        problem = ask(client, case)
        report.answers[case.kind] += 1
        if problem:
            report.wrong.append(problem)


def distinct_vocabulary(i: int, shapes: tuple[str, ...]) -> str:
    """A class list not seen before (request ``i``): the shapes rotated, plus a made-up name."""
    names = list(shapes[i % len(shapes):] + shapes[:i % len(shapes)]) + [f"thing {i}"]
    return ", ".join(names)


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header claims ``width x height`` pixels (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def scenario(root: Path, scene: Path, expected: np.ndarray, classes: str, shapes: tuple[str, ...],
             weights: str) -> tuple[Case, Callable[[int], Case]]:
    """The valid case (``scene`` segmented into ``classes`` gives ``expected``) and the abuse cases, by index."""
    root.mkdir(parents=True, exist_ok=True)
    text = root / "notes.png"
    text.write_text("not an image")
    bomb = bomb_png(root / "bomb.png", 20_000, 20_000)
    valid = Case("valid", scene, classes, weights, labels=expected)
    refused_weights = ("gcc-yfcc", "/etc/passwd", "nvidia/groupvit-gcc-yfcc", str(root / "missing.pt"))
    many = ", ".join(f"class {i}" for i in range(151))

    def make(i: int) -> Case:
        kind = i % 5
        if kind == 0:
            vocabulary = distinct_vocabulary(i, shapes)
            return Case("new vocabulary", scene, vocabulary, weights, max_label=len(vocabulary.split(",")))
        if kind == 1:
            return Case("not an image", text, classes, weights, refusal="is not an image file Pillow can read")
        if kind == 2:
            return Case("oversized image", bomb, classes, weights, refusal="this page takes at most 40 megapixels")
        if kind == 3:
            return Case("weights not offered", scene, classes, refused_weights[(i // 5) % len(refused_weights)],
                        refusal="is not in the list of choices")  # the page's list refuses it first
        return Case("too many classes", scene, many, weights, refusal="151 classes given; this page takes at most 150")

    return valid, make
