"""The web page: its service without Gradio, its API on 127.0.0.1, and a real browser (headless Chromium)."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from groupvit.app import SegmentationService
from groupvit.cli import main as cli_main
from groupvit.data.images import read_label_map
from groupvit.data.synthetic import SHAPES, SceneGenerator
from groupvit.errors import InputError
from groupvit.pretrained import BUNDLED
from groupvit.segment import Segmenter
from groupvit.weights import load_pretrained

CLASSES = ", ".join(SHAPES)
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "scene.png"
    Image.fromarray(SceneGenerator(image_size=64, seed=3, split="eval-all").sample(19).image).save(path)
    return path


def expected_labels(path: Path, **settings) -> np.ndarray:
    """The label map of the bundled model's own settings (mutual rule, PAMR), or of the ``settings`` given."""
    return Segmenter(load_pretrained(BUNDLED), SHAPES, **settings)(path).labels


# The settings the API tests type: the official rule, unrefined, at the bundled model's scale.
OFFICIAL_RULE = {"bg_thresh": 0.95, "mode": "whole", "refine": "none", "background_rule": "threshold"}


def bad_uploads(folder: Path) -> dict[str, Path]:
    """Uploads the page must answer with a message: not an image, truncated, 1 x 1."""
    folder.mkdir(exist_ok=True)
    text = folder / "notes.png"
    text.write_text("not an image")
    whole = folder / "whole.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    truncated = folder / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[:6000])
    tiny = folder / "tiny.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    return {"not an image": text, "truncated": truncated, "1x1": tiny}


def test_the_command_shown_beside_the_result_gives_the_same_labels(scene_file, tmp_path):
    """The page and ``groupvit segment`` agree on one image when run with the settings the page shows."""
    service = SegmentationService()
    result = service.run(str(scene_file), CLASSES, BUNDLED, bg_thresh=0.5, refine="pamr", background_rule="threshold")
    words = shlex.split(result.command)
    assert words[:3] == ["groupvit", "segment", "IMAGE"]
    assert {"--bg-thresh", "0.5", "--refine", "pamr", "--precision", "fp32"} <= set(words)
    assert cli_main([*words[1:2], str(scene_file), *words[3:], "--out", str(tmp_path), "--quiet"]) == 0
    np.testing.assert_array_equal(read_label_map(tmp_path / f"{scene_file.stem}_labels.png"), result.labels)
    off = service.run(str(scene_file), CLASSES, BUNDLED, background=False)
    assert "--no-background" in shlex.split(off.command) and "--bg-thresh" not in off.command


def test_service_segments_like_the_segmenter_and_caches(scene_file):
    service = SegmentationService()
    result = service.run(str(scene_file), CLASSES, BUNDLED)
    np.testing.assert_array_equal(result.labels, expected_labels(scene_file))
    assert {"--background-rule", "mutual", "--best-group-classes", "2", "--refine", "pamr"} <= set(
        shlex.split(result.command))  # the weights' own settings, spelled out
    official = service.run(str(scene_file), CLASSES, BUNDLED, **OFFICIAL_RULE)
    np.testing.assert_array_equal(official.labels, expected_labels(scene_file, **OFFICIAL_RULE))
    assert result.overlay.shape[0] == 384 and result.overlay.dtype == np.uint8  # 64 px shown at 384, legend beside
    assert sum(share for _, share in result.table) == pytest.approx(100, abs=0.05)
    assert {name for name, _ in result.table} <= {"background", *SHAPES}
    first = service.segmenter(BUNDLED, CLASSES, True, None, None, None)
    service.run(str(scene_file), CLASSES, BUNDLED)
    assert service.segmenter(BUNDLED, CLASSES, True, None, None, None) is first  # embeddings reused


# The service's own message for each bad upload (bad_uploads), as the page and its API must pass them on.
UPLOAD_ERRORS = {
    "not an image": "is not an image file Pillow can read", "truncated": "is truncated or corrupt",
    "1x1": "the image is 1x1 pixels; upload one of at least 8",
}


def test_service_reads_odd_images_and_refuses_bad_ones(tmp_path):
    service = SegmentationService()
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((40, 50, 4), 200, np.uint8)).save(rgba)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 50), 40000, np.uint16)).save(deep)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((900, 1200, 3), np.uint8)).save(big)
    assert service.run(str(rgba), CLASSES).labels.shape == (40, 50)
    assert service.run(str(deep), CLASSES).labels.shape == (40, 50)
    assert service.run(str(big), CLASSES).labels.shape == (448, 597)  # resized to the protocol's short side first
    for name, path in bad_uploads(tmp_path / "bad").items():
        with pytest.raises(InputError, match=UPLOAD_ERRORS[name]):
            service.run(str(path), CLASSES)
    with pytest.raises(InputError, match="class list is empty"):
        service.run(str(rgba), " ")
    with pytest.raises(InputError, match="no image"):
        service.run(None, CLASSES)


@pytest.fixture(scope="module")
def served():
    pytest.importorskip("gradio", reason='the page needs Gradio: pip install -e ".[app]"')
    from groupvit.app import App

    app = App(BUNDLED)
    app.launch(port=None, prevent_thread_lock=True, quiet=True)  # the server binds a free port itself
    yield f"http://127.0.0.1:{app.blocks.server_port}/"
    app.blocks.close()


def test_api_returns_the_segmenter_labels_and_survives_bad_uploads(served, scene_file, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False)

    def segment(path: Path):
        return client.predict(handle_file(str(path)), CLASSES, BUNDLED, True, 0.95, "whole", "none", "fp32",
                              "threshold", api_name="/segment")

    overlay, groups, table, labels, command = segment(scene_file)
    assert command.startswith(f"groupvit segment IMAGE --weights {BUNDLED} --classes ")
    np.testing.assert_array_equal(read_label_map(labels), expected_labels(scene_file, **OFFICIAL_RULE))
    assert Image.open(overlay).size[1] == 384 and Path(groups).is_file()
    assert table["headers"] == ["class", "% of pixels"] and table["data"][0][0] in {"background", *SHAPES}
    for name, path in bad_uploads(tmp_path).items():
        with pytest.raises(Exception) as info:
            segment(path)
        message = str(info.value).strip()
        assert "\n" not in message, f"more than one line for the {name} upload"
        assert UPLOAD_ERRORS[name] in message, f"the {name} upload got {message!r}, not the service's message"
        # The server keeps serving.
        np.testing.assert_array_equal(read_label_map(segment(scene_file)[3]),
                                      expected_labels(scene_file, **OFFICIAL_RULE))


def test_page_in_a_real_browser(served, scene_file, tmp_path):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no browser: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1500", f"--user-data-dir={tmp_path / 'profile'}",
                 # No network but this machine: the page must load and work offline.
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(served)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#image input[type=file]")))
        upload.send_keys(str(scene_file))
        box = driver.find_element(By.CSS_SELECTOR, "#classes textarea")
        box.clear()
        box.send_keys("circle, square, triangle, star, heart, cross")
        wait.until(lambda d: scene_file.stem in d.find_element(By.CSS_SELECTOR, "#image").text)
        # The page opens with the weights' own rule chosen.
        checked = driver.find_element(By.CSS_SELECTOR, "#rule input:checked").get_attribute("value")
        assert checked == "mutual", checked

        def segment(expected: np.ndarray, rule: str) -> None:
            before = driver.find_element(By.CSS_SELECTOR, "#command textarea").get_attribute("value")
            driver.find_element(By.CSS_SELECTOR, "#segment").click()
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#command textarea").get_attribute("value") != before)
            shown = driver.find_element(By.CSS_SELECTOR, "#command textarea").get_attribute("value")
            assert shown.startswith(f"groupvit segment IMAGE --weights {BUNDLED} --classes "), shown
            assert f"--background-rule {rule}" in shown, shown
            wait.until(lambda d: "background" in d.find_element(By.CSS_SELECTOR, "#table").text)
            table = driver.find_element(By.CSS_SELECTOR, "#table").text
            for label in np.unique(expected):
                name = ("background", *SHAPES)[label]
                assert name in table, f"{name} missing from the class table: {table!r}"

        segment(expected_labels(scene_file), "mutual")
        driver.find_element(By.CSS_SELECTOR, "#rule input[value='best-group']").click()
        segment(expected_labels(scene_file, background_rule="best-group"), "best-group")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#overlay img")))
        shot = Path(os.environ.get("GROUPVIT_APP_SCREENSHOT", tmp_path / "app.png"))
        driver.save_screenshot(str(shot))
        assert Image.open(shot).size[0] > 800
        print(f"screenshot: {shot}")
    finally:
        driver.quit()


def test_the_console_gets_one_line_per_refused_request_and_no_banner(tmp_path, capfd):
    pytest.importorskip("gradio", reason='the page needs Gradio: pip install -e ".[app]"')
    from gradio_client import Client, handle_file

    from groupvit.app import App

    app = App(BUNDLED)
    app.launch(port=None, prevent_thread_lock=True)
    try:
        client = Client(f"http://127.0.0.1:{app.blocks.server_port}/", verbose=False)
        path = bad_uploads(tmp_path)["not an image"]
        with pytest.raises(Exception, match="is not an image file Pillow can read"):
            client.predict(handle_file(str(path)), CLASSES, BUNDLED, True, 0.95, "whole", "none", "fp32",
                           "threshold", api_name="/segment")
    finally:
        app.blocks.close()
    out, err = capfd.readouterr()
    assert f"groupvit app: serving {app.blocks.local_url}" in out and "share=True" not in out + err
    refused = [line for line in err.splitlines() if "groupvit app: refused a request" in line]
    assert len(refused) == 1 and "is not an image file Pillow can read" in refused[0]
    assert "Traceback" not in err
