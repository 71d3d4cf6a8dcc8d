"""The measured workloads, each for our GroupViT and for ``transformers.GroupViTModel`` with the same weights.

A workload factory takes a model and returns a zero-argument step; everything a step needs (inputs,
optimiser, cached class embeddings) is made once by the factory, outside the timed region.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

import groupvit
from groupvit.train.optim import build_optimizer

Step = Callable[[], Any]
Factory = Callable[[Any], Step]

OURS, REFERENCE = "ours", "transformers"

# Architecture of the released gcc-yfcc / gcc-redcaps checkpoints (the redcaps preset has no
# multi-label temperature, so the transformers port holds exactly the same parameters).
PRESET = "gcc-redcaps"

# 21 names, as many text queries on both sides (no background label: transformers has none).
CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table",
    "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor", "grass",
)
PROMPT = "a photo of a {}."

# Web-style captions of usual length (13-19 tokens with start and end of text).
CAPTIONS = (
    "a man riding a bicycle down a busy city street next to a red double decker bus",
    "close up of a golden retriever puppy lying on the grass in the garden",
    "aerial view of a small fishing village on the coast at sunset",
    "two children building a sandcastle on the beach during the summer holidays",
    "a plate of pasta with tomato sauce and fresh basil on a wooden table",
    "the interior of a modern kitchen with white cabinets and a large window",
    "a herd of elephants walking across the dry savanna in kenya",
    "portrait of a young woman wearing a blue hat and a yellow raincoat",
)


def build_ours(seed: int = 0) -> groupvit.GroupViT:
    """Our model with the official architecture and deterministic random weights, eval mode."""
    torch.manual_seed(seed)
    return groupvit.create_model(PRESET).eval()


def load_reference(directory: str | os.PathLike[str]) -> Any:
    """``transformers.GroupViTModel`` read from a directory written by ``GroupViT.save_pretrained``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers.GroupViTModel.from_pretrained(directory).eval()


def allow_any_resolution(reference: Any) -> None:
    """Make the transformers vision embeddings interpolate the position table to the input size.

    ``GroupViTModel.forward`` never passes ``interpolate_pos_encoding`` on, so a 448 input is
    refused; the test suite patches the embeddings the same way.
    """
    embeddings = reference.vision_model.embeddings
    original = embeddings.forward
    embeddings.forward = lambda pixel_values, interpolate_pos_encoding=False: original(
        pixel_values, interpolate_pos_encoding=True
    )


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Normalised-looking random images ``float32 [batch, 3, size, size]``."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- image embedding -----------------------------------------------------------------------------------


def ours_embed(batch: int) -> Factory:
    def factory(model: groupvit.GroupViT) -> Step:
        x = images(batch, 224)

        def step() -> torch.Tensor:
            with torch.inference_mode():
                return model.encode_image(x)

        return step

    return factory


def reference_embed(batch: int) -> Factory:
    def factory(model: Any) -> Step:
        x = images(batch, 224)

        def step() -> torch.Tensor:
            with torch.no_grad():
                return model.get_image_features(pixel_values=x).pooler_output

        return step

    return factory


# --- segmentation --------------------------------------------------------------------------------------


def _segmenter(model: groupvit.GroupViT) -> Any:
    from groupvit.segment import Segmenter

    return Segmenter(model, list(CLASS_NAMES), background=False, mode="whole")


def ours_segment_cached(model: groupvit.GroupViT) -> Step:
    """One 448 x 448 crop through the official per-crop step, class embeddings encoded once beforehand."""
    segmenter = _segmenter(model)
    x = images(1, 448)

    def step() -> torch.Tensor:
        with torch.inference_mode():
            return segmenter.segment_crops(x, groups=False).scores

    return step


def ours_segment_pixels(model: groupvit.GroupViT) -> Step:
    """The whole ``Segmenter`` call on a uint8 448 x 448 image: pre-processing, the crop step with background
    on, the label map (class embeddings cached, no group maps)."""
    from groupvit.segment import Segmenter

    segmenter = Segmenter(model, list(CLASS_NAMES), mode="whole")
    pixels = torch.randint(0, 256, (448, 448, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def step() -> Any:
        return segmenter(pixels.numpy(), groups=False).labels

    return step


def ours_segment_scratch(model: groupvit.GroupViT) -> Step:
    """The same, building the segmenter (tokenising and encoding the 21 prompts) on every call."""
    x = images(1, 448)

    def step() -> torch.Tensor:
        segmenter = _segmenter(model)
        with torch.inference_mode():
            return segmenter.segment_crops(x, groups=False).scores

    return step


def reference_segment(model: Any) -> Step:
    """transformers' ``output_segmentation=True`` forward: the 21 prompts (77 tokens each) encoded each call."""
    allow_any_resolution(model)
    tokens = groupvit.tokenize([PROMPT.format(name) for name in CLASS_NAMES])
    x = images(1, 448)

    def step() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=tokens, pixel_values=x, output_segmentation=True).segmentation_logits

    return step


# --- training step -------------------------------------------------------------------------------------

TRAIN_BATCH = 8
LEARNING_RATE = 1e-5


def _train_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return images(TRAIN_BATCH, 224, seed=1), groupvit.tokenize(list(CAPTIONS[:TRAIN_BATCH]))


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    # The like-for-like row: the same default AdamW on both sides (the trainer's own is timed beside it).
    return torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.05)


def ours_train(model: groupvit.GroupViT, trainer_optimizer: bool = False) -> Step:
    """Forward, symmetric image-text cross-entropy, backward, AdamW step (train mode).

    ``trainer_optimizer``: the optimiser ``groupvit train`` builds (official weight-decay groups,
    fused AdamW) instead of the default ``torch.optim.AdamW`` both sides share otherwise.
    """
    model.train()
    x, tokens = _train_inputs()
    labels = torch.arange(TRAIN_BATCH)
    if trainer_optimizer:
        optimizer = build_optimizer(model, lr=LEARNING_RATE, weight_decay=0.05)
    else:
        optimizer = _optimizer(model)

    def step() -> float:
        out = model(x, tokens)
        loss = (F.cross_entropy(out.logits_per_image, labels) + F.cross_entropy(out.logits_per_text, labels)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def ours_train_fused(model: groupvit.GroupViT) -> Step:
    """:func:`ours_train` with the trainer's optimiser."""
    return ours_train(model, trainer_optimizer=True)


def reference_train(model: Any) -> Step:
    """The same with transformers' ``return_loss=True`` (symmetric cross-entropy on the logits)."""
    model.train()
    x, tokens = _train_inputs()
    optimizer = _optimizer(model)

    def step() -> float:
        loss = model(input_ids=tokens, pixel_values=x, return_loss=True).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


# --- registry ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """Workloads timed together (interleaved); ``variants`` maps a label to ``(implementation, factory)``."""

    key: str
    title: str
    variants: dict[str, tuple[str, Factory]] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One line of the results table: our variant against the reference variant of a phase."""

    title: str
    phase: str
    ours: str
    reference: str
    target: float | None


PHASES = (
    Phase("embed_b1", "image embedding, 224x224, batch 1",
          {"ours": (OURS, ours_embed(1)), "transformers": (REFERENCE, reference_embed(1))}),
    Phase("embed_b8", "image embedding, 224x224, batch 8",
          {"ours": (OURS, ours_embed(8)), "transformers": (REFERENCE, reference_embed(8))}),
    Phase("segment", "segmentation, 448x448, 21 classes",
          {"ours cached": (OURS, ours_segment_cached), "ours pixels": (OURS, ours_segment_pixels),
           "ours scratch": (OURS, ours_segment_scratch), "transformers": (REFERENCE, reference_segment)}),
    Phase("train", "training step, 224x224, batch 8, 8 captions (77-token context)",
          {"ours": (OURS, ours_train), "ours trainer": (OURS, ours_train_fused),
           "transformers": (REFERENCE, reference_train)}),
)

ROWS = (
    Row("image embedding 224², batch 1", "embed_b1", "ours", "transformers", 1.15),
    Row("image embedding 224², batch 8", "embed_b8", "ours", "transformers", 1.15),
    Row("segmentation 448², 21 classes, class embeddings cached", "segment", "ours cached", "transformers", 2.0),
    Row("segmentation 448², 21 classes, from uint8 pixels to the label map (background on)", "segment",
        "ours pixels", "transformers", 2.5),
    Row("segmentation 448², 21 classes, texts encoded each call", "segment", "ours scratch", "transformers", None),
    Row("training step 224², batch 8, same AdamW both sides", "train", "ours", "transformers", None),
    Row("training step 224², batch 8, as `groupvit train` runs it (fused AdamW)", "train", "ours trainer",
        "transformers", 1.5),
)


def phase(key: str) -> Phase:
    """The phase called ``key``."""
    for p in PHASES:
        if p.key == key:
            return p
    raise KeyError(f"unknown phase {key!r}; known: {[p.key for p in PHASES]}")
