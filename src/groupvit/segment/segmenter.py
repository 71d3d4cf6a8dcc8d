"""Zero-shot semantic segmentation with a GroupViT: the official evaluation recipe (reference §5.2).

Per image: keep-ratio resize to short side 448 (long side <= 2048), ImageNet normalisation, 448 x 448
crops every 224 pixels (or the whole image). Per crop: the soft assignment maps of the grouping
stages are chained into a ``[pixels, groups]`` map, upsampled bilinearly and hard-assigned (argmax);
each group gets class scores from its embedding (restricted to the image's top-5 classes); a pixel
gets its group's scores, and background where its best score is below
``min(bg_thresh, best score in the crop)``. Crop scores are averaged where crops overlap, resized
to the original image and arg-maxed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from groupvit.data.images import ImageSource, bilinear_taps, denormalize, prepare_segmentation_input, read_image
from groupvit.errors import InputError, TimeLimitError
from groupvit.export.runtime import with_backend
from groupvit.inference import model_settings, resolve_settings
from groupvit.model.grouping import chain_assignments
from groupvit.model.groupvit import ImageEncoding
from groupvit.precision import autocast, check_precision, resolve_precision
from groupvit.segment.refine import check_refine, refine_scores
from groupvit.segment.sliding import WindowMerger, upsample_argmax, window_grid
from groupvit.text.templates import get_templates
from groupvit.text.tokenizer import tokenize

BACKGROUND = "background"


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block (BatchNorm running statistics), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's first parameter (CPU float32 for a model without parameters)."""
    param = next(model.parameters(), None)
    return (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)


def _context_length(model: nn.Module) -> int:
    text_config = getattr(getattr(model, "config", None), "text", None)
    return int(getattr(text_config, "context_length", 77))


def normalize_class_names(class_names: str | Sequence[str], unique: bool = True) -> tuple[str, ...]:
    """Validated class names: a comma-separated string or a sequence of names, whitespace collapsed.

    Raises:
        InputError: no names, an empty name, or (when ``unique``) the same name twice (compared
            case-insensitively, as the tokenizer lower-cases text).
    """
    if isinstance(class_names, str):
        class_names = class_names.split(",")
    names = tuple(" ".join(str(name).split()) for name in class_names)
    if not names or names == ("",):
        raise InputError("the class list is empty; give at least one class name, e.g. 'cat,dog,grass'")
    if "" in names:
        raise InputError(f"empty class name in {list(names)}; remove stray commas")
    seen: dict[str, str] = {}
    for name in names:
        if unique and name.lower() in seen:
            raise InputError(f"class {name!r} is given twice (as {seen[name.lower()]!r} and {name!r}); remove one")
        seen[name.lower()] = name
    return names


def encode_class_names(
    model: nn.Module, class_names: Sequence[str], templates: str | Sequence[str] = "simple", batch_size: int = 256
) -> torch.Tensor:
    """Zero-shot class embeddings ``float32 [N, D]`` (official ``build_text_embedding``).

    Every ``template.format(name)`` is encoded and projected; the **un-normalised** projected
    features are averaged over templates, then L2-normalised (CLIP normalises each template first).
    Repeated names are allowed here (ImageNet has two "crane"s); the :class:`Segmenter` refuses them.

    Args:
        model: a GroupViT (anything with ``encode_text(tokens [B, T], normalize=False) -> [B, D]``).
        class_names: ``N`` names.
        templates: ``'simple'`` (1), ``'subset'`` (7), ``'full'`` (80) or a list of strings with ``'{}'``.
        batch_size: prompts per text forward.
    """
    names = normalize_class_names(class_names, unique=False)
    template_list = get_templates(templates)
    prompts = [template.format(name) for name in names for template in template_list]
    tokens = tokenize(prompts, context_length=_context_length(model))
    device, _ = model_device_dtype(model)
    with torch.inference_mode(), eval_mode(model):
        features = torch.cat([
            model.encode_text(tokens[start:start + batch_size].to(device), normalize=False).float()
            for start in range(0, len(prompts), batch_size)
        ])
    features = features.view(len(names), len(template_list), -1).mean(dim=1)
    return F.normalize(features, dim=-1)


def group_index_map(chain: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Hard group of each pixel: ``chain [B, L, G]`` on the ``grid`` of patches -> ``int64 [B, H, W]``.

    The ``G`` soft maps are resized bilinearly (``align_corners=False``) to ``size`` and arg-maxed
    (official: soft maps evaluate better than the hard ones).
    """
    batch, tokens, groups = chain.shape
    if tokens != grid[0] * grid[1]:
        raise InputError(f"assignment map has {tokens} tokens but the patch grid {grid} has {grid[0] * grid[1]}")
    maps = chain.transpose(1, 2).reshape(batch, groups, *grid)
    # One sample at a time: G full-size planes of a batch can be large (64 x 448 x 448 per crop).
    return torch.stack([
        F.interpolate(maps[b:b + 1], size=size, mode="bilinear", align_corners=False)[0].max(dim=0).indices
        for b in range(batch)
    ])


def patch_index_map(grid: tuple[int, int], size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Pixel -> patch id ``int64 [H, W]`` for a model without grouping (every patch is its own group).

    Equal to :func:`group_index_map` on identity maps, without building ``h*w`` full-size planes:
    the argmax of bilinear weights is, per axis, the nearer of the two source taps (the lower on a tie).
    """

    def nearest(n_in: int, n_out: int) -> torch.Tensor:
        i0, i1, w1 = bilinear_taps(n_in, n_out, device)
        return torch.where(w1 > 0.5, i1, i0)

    return nearest(grid[0], size[0])[:, None] * grid[1] + nearest(grid[1], size[1])[None, :]


def group_class_scores(
    group_embeds: torch.Tensor, image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: float, top_k: int = 5
) -> torch.Tensor:
    """Official group-to-class scores ``Q [B, G, N]``.

    ``A = s * groups @ textᵀ``, ``P = softmax_N(A)``; the image embedding's ``softmax_N(s * image @ textᵀ)``
    selects its top ``min(top_k, N)`` classes; ``Q = softmax_N(A masked to those classes) * P``
    (zero outside them).

    Args:
        group_embeds: ``[B, G, D]`` L2-normalised.
        image_embeds: ``[B, D]`` L2-normalised.
        text_embeds: ``[N, D]`` L2-normalised.
        scale: the clamped temperature ``min(exp(logit_scale), 100)``.
    """
    logits = scale * group_embeds @ text_embeds.t()
    probs = logits.softmax(dim=-1)
    image_probs = (scale * image_embeds @ text_embeds.t()).softmax(dim=-1)
    k = min(top_k, text_embeds.shape[0])
    keep = torch.zeros_like(image_probs, dtype=torch.bool).scatter_(1, image_probs.topk(k, dim=-1).indices, True)
    restricted = logits.masked_fill(~keep[:, None, :], float("-inf")).softmax(dim=-1)
    return restricted * probs


def check_deadline(deadline: float | None) -> None:
    """Raise :class:`~groupvit.errors.TimeLimitError` when ``deadline`` (``time.monotonic()`` seconds) has passed."""
    if deadline is not None and time.monotonic() > deadline:
        raise TimeLimitError("the request ran past its time limit and was stopped; try a smaller image, fewer "
                             "classes, whole-image mode or no refinement")


def best_group_scores(
    group_embeds: torch.Tensor, image_embeds: torch.Tensor, text_embeds: torch.Tensor, classes: int = 1
) -> torch.Tensor:
    """Class-to-group scores ``Q [B, G, N]``: the image's best classes each given to the group that matches it best.

    The image embedding ranks the classes; its ``min(classes, N, G)`` best ones, best first, each take the
    group with the highest cosine to the class among the groups not yet taken, with score 1 there; every
    other entry is 0, so every group that takes no class is background under :func:`pixel_class_scores`. The
    inference counterpart of max-group multi-label pooling (each prompt scored against its best group);
    not the official rule.
    """
    batch, groups, _ = group_embeds.shape
    similarity = group_embeds @ text_embeds.t()  # [B, G, N]
    ranked = (image_embeds @ text_embeds.t()).argsort(dim=-1, descending=True)  # [B, N]
    scores = torch.zeros_like(similarity)
    for b in range(batch):
        free = torch.ones(groups, dtype=torch.bool, device=scores.device)
        for c in ranked[b, :min(classes, text_embeds.shape[0], groups)].tolist():
            g = int(similarity[b, :, c].masked_fill(~free, float("-inf")).argmax())
            scores[b, g, c], free[g] = 1.0, False
    return scores


def mutual_best_scores(
    group_embeds: torch.Tensor, image_embeds: torch.Tensor, text_embeds: torch.Tensor, classes: int = 2
) -> torch.Tensor:
    """Class-to-group scores ``Q [B, G, N]``: each group named when it and a class are each other's best match.

    Group ``g`` takes class ``c`` (score 1) when ``c`` is the class with the highest cosine to ``g``, ``g`` is the
    group of its image with the highest cosine to ``c``, and ``c`` is among the image embedding's ``classes``
    best classes; every other entry is 0 (background under :func:`pixel_class_scores`). An image where no group
    qualifies falls back to :func:`best_group_scores` with one class, so every image names at least one group.
    Several objects of an image can be named, each on the group that holds it; not the official rule.
    """
    similarity = group_embeds @ text_embeds.t()  # [B, G, N]
    group_best = similarity.argmax(dim=2)  # [B, G]: each group's best class
    class_best = similarity.argmax(dim=1)  # [B, N]: each class's best group
    k = min(classes, text_embeds.shape[0])
    top = (image_embeds @ text_embeds.t()).topk(k, dim=-1).indices  # [B, k]
    allowed = torch.zeros_like(class_best, dtype=torch.bool).scatter_(1, top, True)  # [B, N]
    groups = torch.arange(group_embeds.shape[1], device=group_embeds.device)[None]  # [1, G]
    keep = (class_best.gather(1, group_best) == groups) & allowed.gather(1, group_best)  # [B, G]
    scores = torch.zeros_like(similarity).scatter_(2, group_best[:, :, None], keep[:, :, None].to(similarity.dtype))
    empty = ~keep.any(dim=1)
    if bool(empty.any()):
        scores[empty] = best_group_scores(group_embeds[empty], image_embeds[empty], text_embeds, 1)
    return scores


def pixel_class_scores(
    group_index: torch.Tensor, scores: torch.Tensor, background: bool, bg_thresh: float
) -> torch.Tensor:
    """Per-pixel scores ``[B, C, H, W]`` from hard groups ``[B, H, W]`` and group scores ``Q [B, G, N]``.

    Classes sit in channels ``1..N`` after a background channel 0 when ``background``: it is 1 where the
    pixel's best class score is below ``min(bg_thresh, Q.max())`` (per crop), else 0.
    """
    if background:
        # A pixel's best score is its group's: background is decided per group, before the lookup.
        threshold = scores.amax(dim=(1, 2)).clamp(max=bg_thresh)[:, None]
        is_background = (scores.amax(dim=2) < threshold).to(scores.dtype)
        scores = torch.cat([is_background[:, :, None], scores], dim=2)
    table = scores.transpose(1, 2).contiguous()  # [B, C, G]: per image, one lookup writes the C planes
    batch, height, width = group_index.shape
    out = scores.new_empty(batch, table.shape[1], height, width)
    for b in range(batch):
        torch.index_select(table[b], 1, group_index[b].reshape(-1), out=out[b].view(table.shape[1], -1))
    return out


@dataclass
class CropOutput:
    """What one batch of crops gives: ``scores [B, C, h, w]``; per stage ``group_maps [B, h, w]``."""

    scores: torch.Tensor
    group_maps: list[torch.Tensor]


@dataclass
class SegmentationResult:
    """Segmentation of one image.

    Attributes:
        labels: ``[H, W]`` label map at the original resolution (uint8 when there are at most 256
            labels, else int32). With background, 0 is background and class ``i`` of the vocabulary
            is ``i + 1``; without, class ``i`` is ``i``.
        scores: ``float32 [C, h, w]`` per-pixel scores (``C`` = number of labels) at the resolution the
            model saw (short side ``short_side``), averaged over the sliding windows (then refined, if
            asked); ``labels`` is the argmax of their bilinear resize to ``(H, W)``.
        group_maps: per grouping stage, ``int32 [h, w]`` id of the group each pixel is assigned to
            (argmax of the chained, upsampled soft maps), ids ``< S`` for a stage of ``S`` groups. In
            sliding mode they come from one extra pass over the whole pre-processed image (the groups
            of different windows are unrelated). Empty when not requested or the model has no grouping
            stage.
        label_names: name of each label id (``'background'`` first when there is a background).
        image_size: ``(H, W)`` of the input image.
    """

    labels: np.ndarray
    scores: torch.Tensor
    group_maps: list[np.ndarray]
    label_names: tuple[str, ...]
    image_size: tuple[int, int]


class Segmenter:
    """Zero-shot segmentation of images into a fixed vocabulary; class text embeddings are cached.

    Example::

        seg = Segmenter(groupvit.load_pretrained(src), ["cat", "dog", "grass"])
        result = seg("street.jpg")       # SegmentationResult; result.labels: [H, W], 0 = background
        results = seg([img1, img2])      # windows of all images share batched forwards

    Every setting left ``None`` (short side, mode, window, stride, background rule and its classes, threshold,
    refinement, templates) comes from the model's ``inference`` settings (weights of this package may carry
    them: :mod:`groupvit.inference`), else from ``defaults``, else from the official protocol; ``settings``
    tells which came from where.

    Args:
        model: a GroupViT (``encode_image_groups``, ``encode_text``, ``scale``); used in eval mode
            (its mode is restored after each call).
        class_names: the vocabulary (list, or comma-separated string); ``'background'`` is never
            prompted: with ``background=True`` it is label 0, decided by the threshold.
        background: add the thresholded background label 0 (official for VOC, Context, COCO-Object).
        bg_thresh: background threshold (official: VOC and COCO-Object 0.95, Context 0.35).
        templates: prompt templates, ``'simple'`` (official for segmentation), ``'subset'``,
            ``'full'`` or a list.
        mode: ``'slide'`` (official: windows of ``window`` every ``stride`` pixels) or ``'whole'`` (one pass).
        short_side: the image is resized (keep ratio, bilinear) so its short side is this (official 448) ...
        max_long_side: ... unless the long side would exceed this (mmseg scale ``(2048, 448)``).
        window: crop side in pixels (slide mode; official 448).
        stride: crop step in pixels (slide mode; official 224), at most ``window``.
        top_k: classes kept from the image-level prediction (official 5).
        batch_size: crops per forward, and images prepared together by :meth:`iter_segment`.
        refine: ``'none'`` (official), ``'pamr'`` or ``'superpixel'``: the merged scores are snapped to the
            colour edges of the pre-processed image before the arg-max (:mod:`groupvit.segment.refine`).
        backend: ``'torch'``, ``'onnxruntime'`` or ``'onnxruntime-int8'`` (:func:`groupvit.export.with_backend`:
            ``model`` may then also be an export folder or an :class:`~groupvit.export.OnnxGroupViT`).
        background_rule: with ``background``, how groups become background: ``'threshold'`` (official: a group
            whose best score is below ``min(bg_thresh, the crop's best score)``) or ``'best-group'`` (the image's
            ``best_group_classes`` best classes each go to the group that matches them best, every other group is
            background: :func:`best_group_scores`; scores are then one-hot) or ``'mutual'`` (a group takes a class
            when each is the other's best match and the class is among the image's ``best_group_classes`` best:
            :func:`mutual_best_scores`; one-hot).
        best_group_classes: classes given out per crop by ``'best-group'`` (default 1), or the image's best
            classes that ``'mutual'`` may give out (default 2): ``RULE_CLASSES``.
        precision: ``'fp32'`` (official), ``'bf16'`` (the image tower under bfloat16 autocast; float32 with one
            warning where the device has no native bfloat16) or ``'auto'`` (bf16 where native, else fp32):
            :mod:`groupvit.precision`. Class embeddings, scores and soft maps stay float32. The ONNX backends
            run in float32.
        defaults: the caller's own defaults for the settings above (e.g. a benchmark's ``bg_thresh``), used where
            neither a keyword nor the model's settings give a value.
    """

    def __init__(
        self,
        model: nn.Module,
        class_names: str | Sequence[str],
        background: bool = True,
        bg_thresh: float | None = None,
        templates: str | Sequence[str] | None = None,
        mode: str | None = None,
        short_side: int | None = None,
        window: int | None = None,
        stride: int | None = None,
        top_k: int = 5,
        max_long_side: int = 2048,
        batch_size: int = 4,
        refine: str | None = None,
        backend: str = "torch",
        background_rule: str | None = None,
        best_group_classes: int | None = None,
        precision: str = "fp32",
        defaults: Mapping[str, object] | None = None,
    ) -> None:
        self.class_names = normalize_class_names(class_names)
        if background and any(name.lower() == BACKGROUND for name in self.class_names):
            raise InputError(
                "'background' is label 0 and decided by the threshold, not prompted; drop it from the class "
                "list or pass background=False"
            )
        for name, value in (("max_long_side", max_long_side), ("top_k", top_k), ("batch_size", batch_size)):
            if int(value) < 1:
                raise InputError(f"{name} must be a positive integer, got {value}")
        if backend != "torch" and check_precision(precision) == "bf16":
            raise InputError(f"precision 'bf16' runs on the torch backend only, not {backend!r}; use precision "
                             "'fp32' (or 'auto') with it")
        typed = {"short_side": short_side, "mode": mode, "window": window, "stride": stride,
                 "background_rule": background_rule, "best_group_classes": best_group_classes,
                 "bg_thresh": bg_thresh, "refine": refine, "templates": templates}
        self.model = model = with_backend(model, backend)
        self.settings = resolve_settings(model_settings(model), typed, defaults)
        values = self.settings.values
        window_grid(values["window"], values["window"], values["window"], values["stride"])  # validates both
        self.refine = check_refine(values["refine"])
        self.background = bool(background)
        self.bg_thresh = float(values["bg_thresh"])
        self.background_rule, self.best_group_classes = values["background_rule"], int(values["best_group_classes"])
        self.templates = get_templates(values["templates"])
        self.mode = values["mode"]
        self.short_side, self.max_long_side = int(values["short_side"]), int(max_long_side)
        self.window, self.stride = int(values["window"]), int(values["stride"])
        self.top_k, self.batch_size = int(top_k), int(batch_size)
        vision = getattr(getattr(model, "config", None), "vision", None)
        self._min_side = int(getattr(vision, "patch_size", 1))
        self.device, self.dtype = model_device_dtype(model)
        self.precision = resolve_precision(precision, self.device) if backend == "torch" else "fp32"
        self.text_embeds = encode_class_names(model, self.class_names, self.templates).to(self.device)

    @property
    def label_names(self) -> tuple[str, ...]:
        """Name of each label id: ``('background', *class_names)`` with background, else the class names."""
        return ((BACKGROUND,) if self.background else ()) + self.class_names

    @property
    def num_labels(self) -> int:
        """Number of label ids (score channels)."""
        return len(self.label_names)

    def __call__(
        self, images: ImageSource | Sequence[ImageSource], groups: bool = True, deadline: float | None = None
    ) -> SegmentationResult | list[SegmentationResult]:
        """Segment one image (path, PIL image, uint8 array ``[H, W, 3]``) or a list of them.

        Returns a :class:`SegmentationResult`, or a list of them for a list input. ``groups=False``
        skips the per-stage group maps (faster; evaluation does not need them). ``deadline`` (a
        ``time.monotonic()`` value) stops the work with :class:`~groupvit.errors.TimeLimitError` when it has
        passed before a batch of crops or a refinement starts (so at most one such step runs past it).
        """
        if isinstance(images, list | tuple):
            return list(self.iter_segment(images, groups=groups, deadline=deadline))
        return self._segment_batch([images], groups, deadline)[0]

    def iter_segment(
        self, images: Iterable[ImageSource], groups: bool = True, deadline: float | None = None
    ) -> Iterator[SegmentationResult]:
        """Lazily segment a stream of images, ``batch_size`` images prepared (and batched) at a time."""
        pending: list[ImageSource] = []
        for image in images:
            pending.append(image)
            if len(pending) == self.batch_size:
                yield from self._segment_batch(pending, groups, deadline)
                pending = []
        if pending:
            yield from self._segment_batch(pending, groups, deadline)

    def prepare(self, image: ImageSource) -> tuple[torch.Tensor, tuple[int, int]]:
        """Read and pre-process: ``(normalised float32 [3, h, w] at the evaluation scale, (H, W) original)``."""
        rgb = read_image(image)
        x = prepare_segmentation_input(rgb, self.short_side, self.max_long_side)
        if min(x.shape[1:]) < self._min_side:
            raise InputError(
                f"image of {rgb.shape[0]}x{rgb.shape[1]} pixels is too elongated: resized to short side "
                f"{self.short_side} with long side <= {self.max_long_side} it is {x.shape[1]}x{x.shape[2]}, "
                f"smaller than one {self._min_side}-pixel patch"
            )
        return x, (rgb.shape[0], rgb.shape[1])

    def windows(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """Crops ``(y1, y2, x1, x2)`` of a pre-processed ``height x width`` image in the current mode."""
        if self.mode == "whole":
            return [(0, height, 0, width)]
        return window_grid(height, width, self.window, self.stride)

    def segment_crops(self, crops: torch.Tensor, groups: bool = True) -> CropOutput:
        """The official per-crop step (``encode_decode``) on a batch of normalised crops ``[B, 3, h, w]``."""
        size = (crops.shape[2], crops.shape[3])
        encoding = self.encode(crops)
        group_embeds = encoding.group_embeds.float()
        chains = chain_assignments([a.soft for a in encoding.assignments])
        expected = chains[-1].shape[-1] if chains else encoding.grid[0] * encoding.grid[1]
        if group_embeds.shape[1] != expected:
            raise InputError(
                f"model gives {group_embeds.shape[1]} group embeddings but its last assignment has {expected} groups"
            )
        maps = [group_index_map(chain, encoding.grid, size) for chain in (chains if groups else chains[-1:])]
        if chains:
            final = maps[-1]
        else:
            final = patch_index_map(encoding.grid, size, group_embeds.device).expand(crops.shape[0], -1, -1)
        scale = float(self.model.scale())
        image_embeds = encoding.image_embeds.float()
        if self.background and self.background_rule == "best-group":
            q = best_group_scores(group_embeds, image_embeds, self.text_embeds, self.best_group_classes)
        elif self.background and self.background_rule == "mutual":
            q = mutual_best_scores(group_embeds, image_embeds, self.text_embeds, self.best_group_classes)
        else:
            q = group_class_scores(group_embeds, image_embeds, self.text_embeds, scale, self.top_k)
        scores = pixel_class_scores(final, q, self.background, self.bg_thresh)
        return CropOutput(scores, maps if groups else [])

    def encode(self, crops: torch.Tensor) -> ImageEncoding:
        """The image tower on normalised crops ``[B, 3, h, w]`` at the segmenter's precision (embeddings normalised)."""
        with autocast(self.precision, self.device):
            return self.model.encode_image_groups(crops.to(self.device, self.dtype), normalize=True)

    def whole_image_group_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per grouping stage, ``int64 [h, w]`` group ids of a pre-processed image ``x [3, h, w]`` from one pass."""
        encoding = self.encode(x[None])
        chains = chain_assignments([a.soft for a in encoding.assignments])
        return [group_index_map(chain, encoding.grid, (x.shape[1], x.shape[2]))[0] for chain in chains]

    def _segment_batch(
        self, images: Sequence[ImageSource], groups: bool, deadline: float | None = None
    ) -> list[SegmentationResult]:
        with torch.inference_mode(), eval_mode(self.model):
            prepared = [self.prepare(image) for image in images]
            mergers, jobs = [], []
            group_maps: list[list[torch.Tensor]] = [[] for _ in prepared]
            for index, (x, _) in enumerate(prepared):
                height, width = x.shape[1:]
                mergers.append(WindowMerger(self.num_labels, height, width, self.device))
                jobs.extend((index, window) for window in self.windows(height, width))
            # Crops of one image all have the same size; images of different sizes batch separately.
            by_size: dict[tuple[int, int], list[tuple[int, tuple[int, int, int, int]]]] = {}
            for job in jobs:
                y1, y2, x1, x2 = job[1]
                by_size.setdefault((y2 - y1, x2 - x1), []).append(job)
            whole = self.mode == "whole"
            for size_jobs in by_size.values():
                for start in range(0, len(size_jobs), self.batch_size):
                    batch = size_jobs[start:start + self.batch_size]
                    check_deadline(deadline)
                    crops = torch.stack([prepared[i][0][:, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in batch])
                    out = self.segment_crops(crops, groups and whole)
                    for b, (i, window) in enumerate(batch):
                        mergers[i].add(window, out.scores[b])
                        if out.group_maps:
                            group_maps[i] = [m[b] for m in out.group_maps]
            if groups and not whole:
                # Window groups are unrelated to each other; the maps come from one pass over the image.
                group_maps = [self.whole_image_group_maps(x) for x, _ in prepared]
            results = []
            for (x, original), merger, maps in zip(prepared, mergers, group_maps, strict=True):
                scores = merger.mean_scores()
                if self.refine is not None:
                    check_deadline(deadline)
                    scores = refine_scores(self.refine, denormalize(x), scores)
                results.append(SegmentationResult(
                    labels=upsample_argmax(scores, original),
                    scores=scores.cpu(),
                    group_maps=[g.to(torch.int32).cpu().numpy() for g in maps],
                    label_names=self.label_names,
                    image_size=original,
                ))
            return results
