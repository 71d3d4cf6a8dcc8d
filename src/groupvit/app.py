"""A web page for zero-shot segmentation: upload a photo, name the classes, see the masks (Gradio).

``groupvit app`` serves it on 127.0.0.1:7860 (``pip install -e ".[app]"``); ``app.py`` at the repository
root serves the same page as a Hugging Face Space. :class:`SegmentationService` holds everything the page
does apart from Gradio: models are loaded once per weights, segmenters (and so the class embeddings) are
kept per vocabulary and settings, uploads are checked and resized, and the results are turned into
pictures and a table. The page works offline: no analytics, no web fonts, nothing fetched at load.
"""

from __future__ import annotations

import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from groupvit.data.images import ImageSource, read_image
from groupvit.errors import GroupViTError, InputError
from groupvit.precision import PRECISIONS
from groupvit.pretrained import BUNDLED, WEIGHTS, local_path
from groupvit.segment.refine import REFINE_METHODS
from groupvit.segment.segmenter import Segmenter, normalize_class_names
from groupvit.segment.visualize import group_maps_image, label_image, overlay, save_png

MIN_SIDE = 8  # smaller uploads are refused: nothing to segment
DISPLAY_SIDE = 384  # small images (the bundled model's 64 px scenes) are enlarged to this for the pictures
OFFICIAL_SHORT_SIDE = 448
CACHED_SEGMENTERS = 8


@dataclass
class PageResult:
    """What the page shows for one request.

    Attributes:
        overlay: ``uint8 [H, W, 3]`` prediction over the image, with class names.
        groups: ``uint8 [h, w, 3]`` group maps of every grouping stage, side by side.
        table: ``[class name, % of pixels]`` rows, largest first.
        labels: ``[H0, W0]`` label map at the size the image was segmented at (0 = background when on).
        label_names: name of each label id.
    """

    overlay: np.ndarray
    groups: np.ndarray
    table: list[list[Any]]
    labels: np.ndarray
    label_names: tuple[str, ...]


def default_classes(weights: str) -> str:
    """The class list the page starts with: the synthetic shapes for the bundled model, else a street scene."""
    if weights == BUNDLED:
        from groupvit.data.synthetic import SHAPES

        return ", ".join(SHAPES)
    return "person, car, tree, road, building, sky"


def weight_choices(weights: str) -> list[str]:
    """Weights offered in the page: the given ones, the bundled model, and named weights already downloaded."""
    names = [weights, BUNDLED] + [name for name in WEIGHTS if name != BUNDLED and local_path(name).is_file()]
    return list(dict.fromkeys(names))


def _enlarge(array: np.ndarray, factor: int) -> np.ndarray:
    return array if factor == 1 else np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


class SegmentationService:
    """Segments uploads with cached models and segmenters; every bad input raises a one-line :class:`InputError`.

    Args:
        device: torch device for every model (default: CPU).
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._models: dict[str, Any] = {}
        self._segmenters: OrderedDict[tuple, Segmenter] = OrderedDict()

    def model(self, weights: str) -> Any:
        """The model of ``weights`` (a name or a local path), loaded on first use."""
        from groupvit.weights import load_pretrained

        key = str(weights).strip()
        if not key:
            raise InputError("no weights given; pick a name from the list or give a local path")
        if key not in self._models:
            self._models[key] = load_pretrained(key, device=self.device)
        return self._models[key]

    def short_side(self, weights: str) -> int:
        """The model's evaluation scale: 448 (official protocol), or the training size of a smaller model."""
        size = int(self.model(weights).config.vision.image_size)
        return OFFICIAL_SHORT_SIDE if size >= 224 else size

    def segmenter(
        self, weights: str, classes: str, background: bool, bg_thresh: float, mode: str, refine: str,
        precision: str = "fp32",
    ) -> Segmenter:
        """A segmenter for these settings; the last few are kept, so a vocabulary is encoded once."""
        names = normalize_class_names(classes)
        key = (str(weights).strip(), names, bool(background), float(bg_thresh), mode, refine, precision)
        if key in self._segmenters:
            self._segmenters.move_to_end(key)
            return self._segmenters[key]
        side = self.short_side(weights)
        segmenter = Segmenter(self.model(weights), names, background=background, bg_thresh=bg_thresh, mode=mode,
                              short_side=side, window=side, stride=max(1, side // 2), refine=refine,
                              precision=precision)
        self._segmenters[key] = segmenter
        while len(self._segmenters) > CACHED_SEGMENTERS:
            self._segmenters.popitem(last=False)
        return segmenter

    def read(self, image: ImageSource | None, short_side: int) -> np.ndarray:
        """The upload as ``uint8 [H, W, 3]``, shrunk to ``short_side`` (never below the official 448) if larger."""
        if image is None:
            raise InputError("no image: upload one first")
        rgb = read_image(image)
        height, width = rgb.shape[:2]
        if min(height, width) < MIN_SIDE:
            raise InputError(f"the image is {width}x{height} pixels; upload one of at least {MIN_SIDE} pixels a side")
        target = max(short_side, OFFICIAL_SHORT_SIDE)
        if min(height, width) > target:
            scale = target / min(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
        return rgb

    def run(
        self, image: ImageSource | None, classes: str, weights: str = BUNDLED, background: bool = True,
        bg_thresh: float = 0.95, mode: str = "whole", refine: str = "none", precision: str = "fp32",
    ) -> PageResult:
        """Segment one upload and make the page's pictures and table (the segmenter checks mode, refine, precision)."""
        segmenter = self.segmenter(weights, classes, background, bg_thresh, mode, refine, precision)
        rgb = self.read(image, segmenter.short_side)
        result = segmenter(rgb)
        factor = max(1, DISPLAY_SIDE // min(rgb.shape[:2]))
        shown = _enlarge(rgb, factor)
        picture = overlay(shown, _enlarge(result.labels, factor), result.label_names, background=background)
        maps = [_enlarge(m, max(1, DISPLAY_SIDE // min(m.shape))) for m in result.group_maps]
        groups = np.asarray(group_maps_image(shown, maps)) if maps else np.zeros_like(shown)
        counts = np.bincount(result.labels.ravel(), minlength=len(result.label_names))
        order = np.argsort(-counts, kind="stable")
        table = [[result.label_names[i], round(100 * counts[i] / counts.sum(), 2)] for i in order if counts[i] > 0]
        return PageResult(np.asarray(picture), groups, table, result.labels, result.label_names)


class App:
    """The Gradio page around a :class:`SegmentationService`.

    Args:
        weights: the weights selected when the page opens (loaded at start).
        examples: a folder whose images are offered as examples, beside a few generated synthetic scenes.
        device: torch device.
    """

    def __init__(self, weights: str = BUNDLED, examples: str | Path | None = None, device: str = "cpu") -> None:
        import gradio as gr

        self.service = SegmentationService(device)
        self.service.model(weights)  # fail at start, not at the first request
        self.files = Path(tempfile.mkdtemp(prefix="groupvit-app-"))
        example_paths = self._examples(examples)
        with gr.Blocks(title="GroupViT: zero-shot segmentation", analytics_enabled=False) as self.blocks:
            gr.Markdown("# GroupViT: zero-shot segmentation\nUpload an image, name the classes (comma-separated), "
                        "press **Segment**. Every group of the image is given the class whose text matches it best.")
            with gr.Row():
                with gr.Column():
                    # A file box, not an image box: every upload reaches our reader, which names what is wrong.
                    image = gr.File(type="filepath", label="image", file_types=["image"], elem_id="image")
                    classes = gr.Textbox(value=default_classes(weights), label="classes", elem_id="classes")
                    with gr.Row():
                        background = gr.Checkbox(value=True, label="background")
                        threshold = gr.Slider(0.0, 1.0, value=0.95, step=0.01, label="background threshold")
                    mode = gr.Radio(["whole", "slide"], value="whole" if weights == BUNDLED else "slide",
                                    label="inference (whole image, or 448 px windows every 224 px)")
                    refine = gr.Radio(list(REFINE_METHODS), value="none", label="refine the masks")
                    precision = gr.Radio(list(PRECISIONS), value="fp32",
                                         label="precision (bf16: faster where the CPU or GPU has native bfloat16)")
                    chosen = gr.Dropdown(weight_choices(weights), value=weights, allow_custom_value=True,
                                         label="weights (a name, or a local .pt / .pth / Hugging Face folder)")
                    button = gr.Button("Segment", variant="primary", elem_id="segment")
                with gr.Column():
                    shown = gr.Image(label="segmentation", interactive=False, elem_id="overlay")
                    groups = gr.Image(label="groups of each stage", interactive=False, elem_id="groups")
                    table = gr.Dataframe(headers=["class", "% of pixels"], label="classes found", interactive=False,
                                         elem_id="table")
                    download = gr.File(label="label map (PNG, VOC palette)", elem_id="download")
            if example_paths:
                gr.Examples([[str(p)] for p in example_paths], inputs=[image], label="examples")
            button.click(self.handle, inputs=[image, classes, chosen, background, threshold, mode, refine,
                                                 precision],
                         outputs=[shown, groups, table, download], api_name="segment")
        self.blocks.queue(default_concurrency_limit=1)

    def _examples(self, folder: str | Path | None) -> list[Path]:
        from groupvit.data.images import list_images
        from groupvit.data.synthetic import SceneGenerator

        generator = SceneGenerator(image_size=64, seed=2024, split="eval-all")
        paths = []
        for i in range(3):
            path = self.files / f"scene{i}.png"
            Image.fromarray(generator.sample(i).image).save(path)
            paths.append(path)
        if folder is not None:
            if not Path(folder).is_dir():
                raise InputError(f"--examples {folder} is not a folder")
            paths.extend(list_images(folder))
        return paths

    def handle(self, image: str | None, classes: str, weights: str, background: bool, bg_thresh: float, mode: str,
               refine: str, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray, list[list[Any]], str]:
        """The button's callback: page outputs, or the error shown in the page."""
        import gradio as gr

        try:
            result = self.service.run(image, classes, weights, background, bg_thresh, mode, refine, precision)
        except GroupViTError as err:
            # The visitor sees the message in the page; the console gets one line, not a traceback.
            print(f"groupvit app: refused a request: {err}", file=sys.stderr, flush=True)
            raise gr.Error(str(err), print_exception=False) from None
        path = Path(tempfile.mkdtemp(dir=self.files)) / "labels.png"
        save_png(label_image(result.labels), path)
        return result.overlay, result.groups, result.table, str(path)

    def launch(self, host: str = "127.0.0.1", port: int | None = 7860, **kwargs: Any) -> Any:
        """Serve the page (blocking unless ``prevent_thread_lock=True``); system fonts only, errors shown.

        ``port=None`` takes the first free port from 7860 on, bound by the server itself (no window between
        finding a port and binding it); ``self.blocks.server_port`` tells which.
        """
        import gradio as gr

        system = ["ui-sans-serif", "system-ui", "sans-serif"]
        theme = gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])
        announce = not kwargs.pop("quiet", False)
        block = not kwargs.pop("prevent_thread_lock", False)
        result = self.blocks.launch(server_name=host, server_port=port, theme=theme, show_error=True, ssr_mode=False,
                                    allowed_paths=[str(self.files)], footer_links=[], quiet=True,
                                    prevent_thread_lock=True, **kwargs)
        if announce:  # one line of our own instead of Gradio's banner and its public-link hint
            print(f"groupvit app: serving {self.blocks.local_url} (Ctrl-C stops)", flush=True)
        if block:
            self.blocks.block_thread()
        return result
