"""The page in public: offered weights only, bounded requests and memory, concurrent clients, load and abuse."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import groupvit
from groupvit import app as page
from groupvit.app import SegmentationService
from groupvit.data.images import read_label_map
from groupvit.data.synthetic import SHAPES, SceneGenerator
from groupvit.errors import InputError, TimeLimitError
from groupvit.pretrained import BUNDLED
from groupvit.segment import Segmenter
from groupvit.segment import segmenter as segmenter_module
from groupvit.weights import load_pretrained

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import app_load  # noqa: E402
import machine  # noqa: E402

CLASSES = ", ".join(SHAPES)


def scene(path: Path, seed: int) -> Path:
    Image.fromarray(SceneGenerator(image_size=64, seed=seed, split="eval-all").sample(0).image).save(path)
    return path


def expected(path: Path, classes: str = CLASSES) -> np.ndarray:
    """The labels the API tests ask for: the official rule, unrefined, at the bundled model's scale."""
    segmenter = Segmenter(load_pretrained(BUNDLED), classes, mode="whole", short_side=64, window=64, stride=32,
                          background_rule="threshold", refine="none")
    return segmenter(str(path)).labels


def test_only_offered_weights_load_and_refusals_probe_nothing(tmp_path, monkeypatch):
    existing = groupvit.save_checkpoint(groupvit.create_model("tiny"), tmp_path / "tiny.pt")
    loads = []
    monkeypatch.setattr("groupvit.weights.load_pretrained", lambda key, device="cpu": loads.append(key) or object())
    service = SegmentationService(weights=[])
    assert service.allowed == (BUNDLED,)
    messages = set()
    for weights in (str(existing), str(tmp_path / "missing.pt"), "gcc-yfcc", "nvidia/groupvit-gcc-yfcc",
                    "/etc/passwd", "../" * 5 + "etc/passwd"):
        with pytest.raises(InputError) as info:
            service.model(weights)
        messages.add(str(info.value))
    # One answer whatever the name: an existing file and a missing one cannot be told apart; nothing was loaded.
    assert messages == {f"these weights are not offered here; pick one of: {BUNDLED}"} and loads == []
    service.model(BUNDLED)
    assert loads == [BUNDLED]
    offered = SegmentationService(weights=[f" {existing} "])
    assert offered.allowed == (str(existing), BUNDLED)
    offered.model(str(existing))
    anything = SegmentationService(weights=None)  # --allow-any-weights
    anything.model(str(tmp_path / "other.pt"))
    assert loads == [BUNDLED, str(existing), str(tmp_path / "other.pt")]


def test_models_are_kept_least_recently_used(tmp_path):
    paths = [str(groupvit.save_checkpoint(groupvit.create_model("tiny"), tmp_path / f"m{i}.pt")) for i in range(2)]
    service = SegmentationService(weights=paths)
    image = scene(tmp_path / "scene.png", 1)
    service.run(str(image), "circle, star", paths[0])
    first = service.model(paths[0])
    service.model(paths[1])
    assert service.model(paths[0]) is first  # still cached, now the most recent
    service.model(BUNDLED)  # a third model: the least recently used (paths[1]) goes
    assert list(service._models) == [paths[0], BUNDLED] and len(service._models) == page.CACHED_MODELS
    service.model(paths[1])  # paths[0] goes, with its segmenters
    assert list(service._models) == [BUNDLED, paths[1]]
    assert all(key[0] != paths[0] for key in service._segmenters)
    assert service.model(paths[0]) is not first  # loaded anew


def test_class_list_limits(tmp_path):
    service = SegmentationService(weights=[])
    image = str(scene(tmp_path / "scene.png", 2))
    names = [f"class {i}" for i in range(page.MAX_CLASSES)]
    assert len(service.run(image, ", ".join(names)).label_names) == page.MAX_CLASSES + 1
    with pytest.raises(InputError, match=f"^151 classes given; this page takes at most {page.MAX_CLASSES}$"):
        service.run(image, ", ".join(names + ["one more"]))
    with pytest.raises(InputError, match="a class name is 81 characters long .* at most 80$"):
        service.run(image, "circle, " + "x" * 81)
    with pytest.raises(InputError, match="the class list is 100000 characters long"):
        service.run(image, "a" * 100_000)


def test_uploads_above_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    service = SegmentationService(weights=[])
    bomb = app_load.bomb_png(tmp_path / "bomb.png", 20_000, 20_000)
    assert bomb.stat().st_size < 200

    def never(source):
        raise AssertionError("decoded")

    monkeypatch.setattr(page, "read_image", never)
    with pytest.raises(InputError, match=r"^the image has over 179 megapixels \(a decompression bomb\?\); this page "
                                         "takes at most 40 megapixels$"):
        service.run(str(bomb), CLASSES)
    large = app_load.bomb_png(tmp_path / "large.png", 8000, 6000)  # under Pillow's own limit, over the page's
    with pytest.raises(InputError, match="^the image is 8000x6000 pixels; this page takes at most 40 megapixels$"):
        service.run(str(large), CLASSES)
    monkeypatch.setattr(page, "MAX_UPLOAD_PIXELS", 64 * 64 - 1)
    with pytest.raises(InputError, match="the image is 64x64 pixels"):
        service.run(str(scene(tmp_path / "scene.png", 3)), CLASSES)


def test_requests_stop_at_the_time_limit(tmp_path, monkeypatch):
    service = SegmentationService(weights=[])
    generator = SceneGenerator(image_size=64, seed=4, split="eval-all")
    wide = np.concatenate([generator.sample(i).image for i in range(4)], axis=1)  # 64 x 256: 7 windows
    image = tmp_path / "wide.png"
    Image.fromarray(wide).save(image)
    slow = service.segmenter(BUNDLED, CLASSES, True, None, "slide", None)  # what run(mode="slide") asks for
    clock, crops = SimpleNamespace(now=0.0), []
    monkeypatch.setattr(page, "time", SimpleNamespace(monotonic=lambda: clock.now))
    monkeypatch.setattr(segmenter_module, "time", SimpleNamespace(monotonic=lambda: clock.now))
    step = slow.segment_crops

    def slow_crops(batch, groups=True):  # every batch of crops takes 0.3 s of the fake clock
        crops.append(batch.shape[0])
        clock.now += 0.3
        return step(batch, groups)

    monkeypatch.setattr(slow, "segment_crops", slow_crops)
    monkeypatch.setattr(slow, "batch_size", 1)
    monkeypatch.setattr(page, "REQUEST_TIME_S", 0.5)
    with pytest.raises(TimeLimitError, match="^the request ran past its time limit and was stopped; try a smaller "):
        service.run(str(image), CLASSES, mode="slide")
    assert crops == [1, 1]  # of the 7 windows: the one that crossed the limit ran, no later one started
    monkeypatch.setattr(page, "REQUEST_TIME_S", 60.0)
    reference = Segmenter(load_pretrained(BUNDLED), CLASSES, mode="slide", short_side=64, window=64, stride=32)
    assert (service.run(str(image), CLASSES, mode="slide").labels == reference(str(image)).labels).all()


@pytest.fixture
def served(tmp_path):
    pytest.importorskip("gradio", reason='the page needs Gradio: pip install -e ".[app]"')
    app = page.App([BUNDLED])
    app.launch(port=None, prevent_thread_lock=True, quiet=True)
    yield app, f"http://127.0.0.1:{app.blocks.server_port}/"
    app.close()


def test_concurrent_clients_get_their_own_answers(served, tmp_path):
    """Requests run one at a time (queue concurrency 1); four clients at once each get their own image's labels."""
    from gradio_client import Client, handle_file

    _, url = served
    jobs = []
    for i in range(4):
        classes = ", ".join(SHAPES[i:] + SHAPES[:i])
        path = scene(tmp_path / f"scene{i}.png", 10 + i)
        jobs.append((path, classes, expected(path, classes)))
    problems: list[str] = []

    def client(path: Path, classes: str, labels: np.ndarray) -> None:
        api = Client(url, verbose=False)
        for _ in range(3):
            out = api.predict(handle_file(str(path)), classes, BUNDLED, True, 0.95, "whole", "none", "fp32",
                              "threshold", api_name="/segment")
            if not np.array_equal(read_label_map(out[3]), labels):
                problems.append(f"{path.name}: wrong labels")

    threads = [threading.Thread(target=client, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not any(thread.is_alive() for thread in threads) and problems == []


def test_load_and_abuse(served, tmp_path):
    """Bounded in count (3 clients for 4 s, then 40 requests) and time; 127.0.0.1 only."""
    from gradio_client import Client

    app, url = served
    path = scene(tmp_path / "scene.png", 20)
    valid, make = app_load.scenario(tmp_path / "abuse", path, expected(path), CLASSES, SHAPES, BUNDLED)
    report = app_load.LoadReport()
    client = Client(url, verbose=False)
    assert app_load.ask(client, valid) is None  # warm-up
    warm = machine.rss_mib()
    app_load.valid_load(url, valid, clients=3, seconds=4, report=report)
    app_load.abuse(url, make, requests=40, report=report)
    assert app_load.ask(client, valid) is None  # still serving, still right
    after = machine.rss_mib()
    assert report.wrong == [], report.wrong
    assert report.answers["valid"] >= 3 and all(report.answers[k] == 8 for k in (
        "new vocabulary", "not an image", "oversized image", "weights not offered", "too many classes"))
    if warm is not None and after is not None:
        assert after - warm < 300, (warm, after)  # MiB: eight cached vocabularies and Gradio's buffers
    labels = list(app.files.rglob("labels.png"))
    assert 0 < len(labels) <= page.KEPT_RESULTS
    created = [Path(f) for files in app.blocks.temp_file_sets for f in files]
    assert created  # Gradio's copies of uploads and results ...
    app.close()
    assert not app.files.exists() and not any(f.exists() for f in created)  # ... are gone at exit
