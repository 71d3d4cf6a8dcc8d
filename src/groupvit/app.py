"""A web page for zero-shot segmentation: upload a photo, name the classes, see the masks (Gradio).

``groupvit app`` serves it on 127.0.0.1:7860 (``pip install -e ".[app]"``); ``app.py`` at the repository
root serves the same page as a Hugging Face Space. :class:`SegmentationService` holds everything the page
does apart from Gradio: models are loaded once per weights, segmenters (and so the class embeddings) are
kept per vocabulary and settings, uploads are checked and resized, and the results are turned into
pictures and a table. The page works offline: no analytics, no web fonts, nothing fetched at load.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from groupvit.data.images import ImageSource, read_image
from groupvit.errors import GroupViTError, InputError
from groupvit.fileio import storage_error
from groupvit.inference import BACKGROUND_RULES, REFINE_METHODS, ResolvedSettings, model_settings, resolve_settings
from groupvit.precision import PRECISIONS
from groupvit.pretrained import BUNDLED, WEIGHTS, local_path
from groupvit.segment.segmenter import Segmenter, normalize_class_names
from groupvit.segment.visualize import group_maps_image, label_image, overlay, save_png

MIN_SIDE = 8  # smaller uploads are refused: nothing to segment
DISPLAY_SIDE = 384  # small images (the bundled model's 64 px scenes) are enlarged to this for the pictures
OFFICIAL_SHORT_SIDE = 448
# Bounds of what one visitor can make the server hold or do (each refusal is one line in the page).
CACHED_SEGMENTERS = 8  # segmenters (class embeddings of a vocabulary) kept, least recently used dropped
CACHED_MODELS = 2  # models kept in memory, least recently used dropped
MAX_CLASSES = 150  # class names per request (ADE20K has 150)
MAX_NAME_CHARS = 80  # characters per class name
MAX_UPLOAD_PIXELS = 40_000_000  # uploads with more pixels are refused from their header, before decoding
MAX_UPLOAD_MB = 25  # larger uploads are refused by the server before they reach the page
QUEUE_SIZE = 16  # requests waiting beyond this are refused ("queue full"); one runs at a time
REQUEST_TIME_S = 60.0  # a request still segmenting after this many seconds is stopped with a one-line error
# Results (pictures and label map) kept on disk as files: a client fetches them after the answer, while the
# queue goes on, so they stay for this many later requests (twice the queue) and the disk use stays bounded.
KEPT_RESULTS = 2 * QUEUE_SIZE
CACHE_S = (60, 600)  # Gradio's copies of uploads and results: checked every 60 s, deleted after 600 s and at exit

@dataclass
class PageResult:
    """What the page shows for one request.

    Attributes:
        overlay: ``uint8 [H, W, 3]`` prediction over the image, with class names.
        groups: ``uint8 [h, w, 3]`` group maps of every grouping stage, side by side.
        table: ``[class name, % of pixels]`` rows, largest first.
        labels: ``[H0, W0]`` label map at the size the image was segmented at (0 = background when on).
        label_names: name of each label id.
        command: the ``groupvit segment`` call that gives the same label map for an image of at most
            ``max(448, the model's short side)`` pixels a side (larger uploads are shrunk to that first).
    """

    overlay: np.ndarray
    groups: np.ndarray
    table: list[list[Any]]
    labels: np.ndarray
    label_names: tuple[str, ...]
    command: str


def segment_command(weights: str, segmenter: Segmenter, precision: str, image: str = "IMAGE") -> str:
    """The command line that runs ``segmenter`` (weights, classes, background rule, window, refinement, precision),
    every setting spelled out."""
    words = ["groupvit", "segment", image, "--weights", _key(weights), "--classes",
             ",".join(segmenter.class_names), "--mode", segmenter.mode, "--short-side", str(segmenter.short_side),
             "--window", str(segmenter.window), "--stride", str(segmenter.stride)]
    if not segmenter.background:
        words += ["--no-background"]
    elif segmenter.background_rule == "threshold":
        words += ["--background-rule", "threshold", "--bg-thresh", f"{segmenter.bg_thresh:g}"]
    else:
        words += ["--background-rule", segmenter.background_rule, "--best-group-classes",
                  str(segmenter.best_group_classes)]
    words += ["--refine", segmenter.refine or "none", "--precision", precision]
    return shlex.join(words)


def default_classes(weights: str) -> str:
    """The class list the page starts with: the synthetic shapes for the bundled model, else a street scene."""
    if weights == BUNDLED:
        from groupvit.data.synthetic import SHAPES

        return ", ".join(SHAPES)
    return "person, car, tree, road, building, sky"


def weight_choices(weights: Sequence[str], allow_any: bool = False) -> list[str]:
    """Weights offered in the page: the given ones and the bundled model (and, where any weights are allowed,
    the named weights already downloaded)."""
    names = [*map(_key, weights), BUNDLED]
    if allow_any:
        names += [name for name in WEIGHTS if name != BUNDLED and local_path(name).is_file()]
    return list(dict.fromkeys(names))


def _key(weights: str | Path) -> str:
    return str(weights).strip()


def check_class_list(classes: str) -> tuple[str, ...]:
    """The validated class names of a request: at most :data:`MAX_CLASSES`, each of at most :data:`MAX_NAME_CHARS`."""
    if len(str(classes)) > MAX_CLASSES * (MAX_NAME_CHARS + 2):
        raise InputError(f"the class list is {len(str(classes))} characters long; give at most {MAX_CLASSES} names "
                         f"of at most {MAX_NAME_CHARS} characters")
    names = normalize_class_names(classes)
    if len(names) > MAX_CLASSES:
        raise InputError(f"{len(names)} classes given; this page takes at most {MAX_CLASSES}")
    longest = max(names, key=len)
    if len(longest) > MAX_NAME_CHARS:
        raise InputError(f"a class name is {len(longest)} characters long ({longest[:20]!r}...); this page takes at "
                         f"most {MAX_NAME_CHARS}")
    return names


def check_upload_pixels(path: Path) -> None:
    """Refuse an image file of more than :data:`MAX_UPLOAD_PIXELS` pixels from its header, before decoding it."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        raise InputError(f"the image has over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels (a "
                         f"decompression bomb?); this page takes at most {MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels") \
            from None
    except (OSError, ValueError):
        return  # not an image Pillow can size: :func:`read_image` names the problem
    if width * height > MAX_UPLOAD_PIXELS:
        raise InputError(f"the image is {width}x{height} pixels; this page takes at most "
                         f"{MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels")


def _enlarge(array: np.ndarray, factor: int) -> np.ndarray:
    return array if factor == 1 else np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


class SegmentationService:
    """Segments uploads with cached models and segmenters; every bad input raises a one-line :class:`InputError`.

    What a request can make the service hold is bounded: :data:`CACHED_MODELS` models and
    :data:`CACHED_SEGMENTERS` vocabularies (least recently used dropped), :data:`MAX_CLASSES` class names of at
    most :data:`MAX_NAME_CHARS` characters, uploads of at most :data:`MAX_UPLOAD_PIXELS` pixels (checked from
    the file's header, before decoding) shrunk to the protocol's short side before segmentation, and
    :data:`REQUEST_TIME_S` seconds of segmentation per request.

    Args:
        device: torch device for every model (default: CPU).
        weights: the weights a request may name (the bundled model is always among them); ``None`` allows any
            name, path or hub id that :func:`groupvit.load_pretrained` takes (for a trusted machine only: a
            request could then read local files or start downloads).
    """

    def __init__(self, device: str = "cpu", weights: Sequence[str] | None = None) -> None:
        self.device = device
        self.allowed = None if weights is None else tuple(dict.fromkeys([*map(_key, weights), BUNDLED]))
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._segmenters: OrderedDict[tuple, Segmenter] = OrderedDict()

    def model(self, weights: str) -> Any:
        """The model of ``weights`` (an allowed name or path), loaded on first use."""
        from groupvit.weights import load_pretrained

        key = _key(weights)
        if not key:
            raise InputError("no weights given; pick a name from the list")
        if self.allowed is not None and key not in self.allowed:
            # The same answer whether or not such a file or name exists: nothing is probed.
            raise InputError(f"these weights are not offered here; pick one of: {', '.join(self.allowed)}")
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        model = load_pretrained(key, device=self.device)
        self._models[key] = model
        while len(self._models) > CACHED_MODELS:
            dropped, _ = self._models.popitem(last=False)
            for cached in [k for k in self._segmenters if k[0] == dropped]:
                del self._segmenters[cached]
        return model

    def short_side(self, weights: str) -> int:
        """The model's evaluation scale: 448 (official protocol), or the training size of a smaller model."""
        size = int(self.model(weights).config.vision.image_size)
        return OFFICIAL_SHORT_SIDE if size >= 224 else size

    def page_defaults(self, weights: str) -> dict[str, int]:
        """The page's own defaults for ``weights``: windows at the model's scale (:meth:`short_side`)."""
        side = self.short_side(weights)
        return {"short_side": side, "window": side, "stride": max(1, side // 2)}

    def settings(self, weights: str) -> ResolvedSettings:
        """The settings a request with nothing chosen gets: the weights' own (:mod:`groupvit.inference`), else the
        page's defaults (:meth:`page_defaults`), else the official protocol."""
        return resolve_settings(model_settings(self.model(weights)), {}, self.page_defaults(weights))

    def segmenter(
        self, weights: str, classes: str, background: bool, bg_thresh: float | None, mode: str | None,
        refine: str | None, precision: str = "fp32", background_rule: str | None = None,
    ) -> Segmenter:
        """A segmenter for these settings (``None``: :meth:`settings`); the last few are kept, so a vocabulary is
        encoded once."""
        names = check_class_list(classes)
        threshold = None if bg_thresh is None else float(bg_thresh)
        key = (_key(weights), names, bool(background), threshold, mode, refine, precision, background_rule)
        if key in self._segmenters:
            self._segmenters.move_to_end(key)
            return self._segmenters[key]
        segmenter = Segmenter(self.model(weights), names, background=background, bg_thresh=threshold, mode=mode,
                              refine=refine, precision=precision, background_rule=background_rule,
                              defaults=self.page_defaults(weights))
        self._segmenters[key] = segmenter
        while len(self._segmenters) > CACHED_SEGMENTERS:
            self._segmenters.popitem(last=False)
        return segmenter

    def read(self, image: ImageSource | None, short_side: int) -> np.ndarray:
        """The upload as ``uint8 [H, W, 3]``, shrunk to ``short_side`` (never below the official 448) if larger."""
        if image is None:
            raise InputError("no image: upload one first")
        if isinstance(image, str | Path):
            check_upload_pixels(Path(image))
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
        bg_thresh: float | None = None, mode: str | None = None, refine: str | None = None, precision: str = "fp32",
        background_rule: str | None = None,
    ) -> PageResult:
        """Segment one upload and make the page's pictures and table (the segmenter checks mode, refine, precision
        and the rule; a setting left ``None`` is the weights' own, else the official one: :meth:`settings`).

        Stopped with :class:`~groupvit.errors.TimeLimitError` when the segmentation is still running
        :data:`REQUEST_TIME_S` seconds after the request started (checked between batches of crops).
        """
        deadline = time.monotonic() + REQUEST_TIME_S
        segmenter = self.segmenter(weights, classes, background, bg_thresh, mode, refine, precision, background_rule)
        rgb = self.read(image, segmenter.short_side)
        result = segmenter(rgb, deadline=deadline)
        factor = max(1, DISPLAY_SIDE // min(rgb.shape[:2]))
        shown = _enlarge(rgb, factor)
        picture = overlay(shown, _enlarge(result.labels, factor), result.label_names, background=background)
        maps = [_enlarge(m, max(1, DISPLAY_SIDE // min(m.shape))) for m in result.group_maps]
        groups = np.asarray(group_maps_image(shown, maps)) if maps else np.zeros_like(shown)
        counts = np.bincount(result.labels.ravel(), minlength=len(result.label_names))
        order = np.argsort(-counts, kind="stable")
        table = [[result.label_names[i], round(100 * counts[i] / counts.sum(), 2)] for i in order if counts[i] > 0]
        return PageResult(np.asarray(picture), groups, table, result.labels, result.label_names,
                          segment_command(weights, segmenter, precision))


class App:
    """The Gradio page around a :class:`SegmentationService`.

    Safe to expose by default: visitors pick only among ``weights`` and the bundled model, and every request is
    bounded (:class:`SegmentationService`; uploads of at most :data:`MAX_UPLOAD_MB` MB). Requests run one at a
    time in arrival order, at most :data:`QUEUE_SIZE` waiting; the page's files are deleted as it goes
    (:data:`KEPT_RESULTS`, :data:`CACHE_S`) and all of them at :meth:`close`.

    Args:
        weights: the weights offered (a name or path, or several); the first is selected when the page opens
            and loaded at start.
        examples: a folder whose images are offered as examples, beside a few generated synthetic scenes.
        device: torch device.
        allow_any_weights: let visitors type any name, local path or hub id (a trusted machine only).
    """

    def __init__(self, weights: str | Sequence[str] = BUNDLED, examples: str | Path | None = None, device: str = "cpu",
                 allow_any_weights: bool = False) -> None:
        import gradio as gr

        offered = [weights] if isinstance(weights, str | Path) else list(weights) or [BUNDLED]
        weights = _key(offered[0])
        self.service = SegmentationService(device, None if allow_any_weights else offered)
        self.service.model(weights)  # fail at start, not at the first request
        self.files = Path(tempfile.mkdtemp(prefix="groupvit-app-"))
        self._results: deque[Path] = deque()  # one folder per answer, oldest first
        example_paths = self._examples(examples)
        hint = "a name, or a local .pt / .pth / Hugging Face folder" if allow_any_weights else "offered by this server"
        with gr.Blocks(title="GroupViT: zero-shot segmentation", analytics_enabled=False,
                       delete_cache=CACHE_S) as self.blocks:
            gr.Markdown("# GroupViT: zero-shot segmentation\nUpload an image, name the classes (comma-separated), "
                        "press **Segment**. Every group of the image is given the class whose text matches it best.")
            with gr.Row():
                with gr.Column():
                    # A file box, not an image box: every upload reaches our reader, which names what is wrong.
                    image = gr.File(type="filepath", label="image", file_types=["image"], elem_id="image")
                    classes = gr.Textbox(value=default_classes(weights), label="classes", elem_id="classes")
                    start = self.service.settings(weights).values  # the weights' own settings, else official
                    with gr.Row():
                        background = gr.Checkbox(value=True, label="background")
                        threshold = gr.Slider(0.0, 1.0, value=start["bg_thresh"], step=0.01,
                                              label="background threshold (rule threshold)")
                    rule = gr.Radio(list(BACKGROUND_RULES), value=start["background_rule"], elem_id="rule",
                                    label="background rule (threshold: official; best-group: the image's best class "
                                          "on its best group; mutual: groups and classes that are each other's best "
                                          "match)")
                    mode = gr.Radio(["whole", "slide"], value=start["mode"],
                                    label="inference (whole image, or 448 px windows every 224 px)")
                    refine = gr.Radio(list(REFINE_METHODS), value=start["refine"], label="refine the masks")
                    precision = gr.Radio(list(PRECISIONS), value="fp32",
                                         label="precision (bf16: faster where the CPU or GPU has native bfloat16)")
                    chosen = gr.Dropdown(weight_choices(offered, allow_any_weights), value=weights,
                                         allow_custom_value=allow_any_weights, label=f"weights ({hint})")
                    button = gr.Button("Segment", variant="primary", elem_id="segment")
                with gr.Column():
                    shown = gr.Image(label="segmentation", interactive=False, elem_id="overlay")
                    groups = gr.Image(label="groups of each stage", interactive=False, elem_id="groups")
                    table = gr.Dataframe(headers=["class", "% of pixels"], label="classes found", interactive=False,
                                         elem_id="table")
                    download = gr.File(label="label map (PNG, VOC palette)", elem_id="download")
                    command = gr.Textbox(label="the same on the command line", interactive=False,
                                         elem_id="command")
            if example_paths:
                gr.Examples([[str(p)] for p in example_paths], inputs=[image], label="examples")
            button.click(self.handle, inputs=[image, classes, chosen, background, threshold, mode, refine,
                                                 precision, rule],
                         outputs=[shown, groups, table, download, command], api_name="segment")
            # Other weights bring their own settings into the page (or the official ones).
            chosen.change(self.settings_for, inputs=[chosen], outputs=[threshold, rule, mode, refine],
                          api_name=False)
        self.blocks.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)

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

    @staticmethod
    def _refuse(err: BaseException) -> Exception:
        """The page's answer to a refused request: the visitor sees the message, the console gets one line."""
        import gradio as gr

        print(f"groupvit app: refused a request: {err}", file=sys.stderr, flush=True)
        return gr.Error(str(err), print_exception=False)

    def settings_for(self, weights: str) -> tuple[Any, ...]:
        """The weights menu's callback: the threshold, rule, mode and refinement those weights segment with (the
        page's choices unchanged when the weights cannot be loaded: the Segment button then says why)."""
        try:
            values = self.service.settings(weights).values
        except GroupViTError:
            import gradio as gr

            return tuple(gr.update() for _ in range(4))
        return values["bg_thresh"], values["background_rule"], values["mode"], values["refine"]

    def handle(self, image: str | None, classes: str, weights: str, background: bool, bg_thresh: float, mode: str,
               refine: str, precision: str = "fp32",
               background_rule: str = "threshold") -> tuple[str, str, list[list[Any]], str, str]:
        """The button's callback: page outputs, or the error shown in the page."""

        try:
            result = self.service.run(image, classes, weights, background, bg_thresh, mode, refine, precision,
                                      background_rule)
        except GroupViTError as err:
            raise self._refuse(err) from None
        # Every output goes out as a file of its own: Gradio copies files into its cache atomically, whereas it
        # writes pictures given as arrays in place, under a name taken from their content, so two identical
        # answers in flight would truncate each other's download.
        try:
            folder = Path(tempfile.mkdtemp(dir=self.files))
        except OSError as err:
            raise self._refuse(storage_error(err, self.files / "result") or err) from None
        self._results.append(folder)
        files = [folder / name for name in ("overlay.png", "groups.png", "labels.png")]
        try:
            for path, picture in zip(files, (Image.fromarray(result.overlay), Image.fromarray(result.groups),
                                             label_image(result.labels)), strict=True):
                save_png(picture, path)
        except GroupViTError as err:  # a full disk: the visitor and the console get one line, the server goes on
            raise self._refuse(err) from None
        while len(self._results) > KEPT_RESULTS:
            shutil.rmtree(self._results.popleft(), ignore_errors=True)
        overlay, groups, labels = map(str, files)
        return overlay, groups, result.table, labels, result.command

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
                                    max_file_size=f"{MAX_UPLOAD_MB}mb", prevent_thread_lock=True, **kwargs)
        if announce:  # one line of our own instead of Gradio's banner and its public-link hint
            print(f"groupvit app: serving {self.blocks.local_url} (Ctrl-C stops)", flush=True)
        if block:
            self.blocks.block_thread()
        return result

    def close(self) -> None:
        """Stop the server; Gradio deletes its copies of uploads and results, and the page's own folder goes too."""
        self.blocks.close()
        shutil.rmtree(self.files, ignore_errors=True)
