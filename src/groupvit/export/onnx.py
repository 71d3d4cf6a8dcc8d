"""Export a GroupViT to ONNX: an image graph and a text graph, plus a JSON description.

The image graph takes ImageNet-normalised ``images float32 [B, 3, H, W]`` (``B``, ``H``, ``W`` dynamic;
the position table is resized inside the graph) and gives the projected, **un-normalised**
``image_embeds [B, D]`` and ``group_embeds [B, G, D]`` and each grouping stage's soft assignment
``soft_i [B, S_i, L_i]`` (``L_0 = h * w`` patches, row-major). The text graph takes ``tokens int64 [B, T]``
(``T`` = the model's context length, ids from :func:`groupvit.tokenize`) and gives the projected,
un-normalised ``text_embeds [B, D]``. Cosine similarities need L2-normalised embeddings; the
temperature is in the JSON (``logit_scale``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groupvit.errors import ExportError
from groupvit.fileio import atomic_path, storage_error
from groupvit.model.groupvit import GroupViT

META_FILE = "groupvit-onnx.json"
IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"
FORMAT_VERSION = 1
OPSET = 18


def int8_name(file: str) -> str:
    """File name of the int8 variant of an exported graph: ``image.onnx`` -> ``image.int8.onnx``."""
    return file.replace(".onnx", ".int8.onnx")


class ImageGraph(nn.Module):
    """``images [B, 3, H, W]`` -> ``(image_embeds [B, D], group_embeds [B, G, D], *soft_i [B, S_i, L_i])``."""

    def __init__(self, model: GroupViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.vision(images)
        projector = self.model.image_projector
        return (projector(out.pooled), projector(out.tokens), *(a.soft for a in out.assignments))


class TextGraph(nn.Module):
    """``tokens int64 [B, T]`` -> ``text_embeds [B, D]`` (every position computed)."""

    def __init__(self, model: GroupViT) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.text_projector(self.model.text.pool(tokens, tokens.argmax(dim=-1)))


def check_exportable(model: nn.Module) -> None:
    """Raise :class:`ExportError` unless ``model`` is a float32 :class:`GroupViT` in eval mode."""
    if not isinstance(model, GroupViT):
        raise ExportError(f"only a groupvit.GroupViT can be exported, got {type(model).__name__}")
    if model.training:
        raise ExportError(
            "the model is in training mode (Gumbel noise, dropout, batch statistics would be traced); "
            "call model.eval() before exporting"
        )
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ExportError("export traces on the CPU; move the model there first (model.cpu())")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise ExportError(f"export needs float32 weights, got {sorted(map(str, dtypes))}; call model.float() first")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporter's and the quantiser's progress prints, warnings and log lines for the block."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx"), logging.getLogger("torch.export")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_name: str,
            output_names: list[str], dynamic: dict[int, Any], opset: int) -> None:
    """Trace ``module`` with ``torch.export`` and write one self-contained ONNX file atomically."""
    with atomic_path(path) as tmp, quiet():
        try:
            torch.onnx.export(
                module, args, str(tmp), dynamo=True, opset_version=opset, input_names=[input_name],
                output_names=output_names, dynamic_shapes={input_name: dynamic}, external_data=False,
                verbose=False, report=False,
            )
        except Exception as err:  # the exporter raises many types; one line names the graph and the cause
            fault = storage_error(err, path)
            if fault is not None:
                raise fault from None
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"ONNX export of {path.name} failed: {first}") from err


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation (weights int8, activations quantised per call) of an exported graph."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ExportError("--int8 needs onnxruntime; pip install 'groupvit[onnx]'") from None
    with atomic_path(target) as tmp, quiet():
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)


def export_onnx(
    model: GroupViT, directory: str | os.PathLike[str], int8: bool = False, opset: int = OPSET
) -> Path:
    """Write ``image.onnx``, ``text.onnx`` (and ``*.int8.onnx`` when ``int8``) and ``groupvit-onnx.json``.

    Args:
        model: a float32 GroupViT in eval mode (its BatchNorm running statistics are folded in).
        directory: created if missing; files are replaced atomically, the JSON last.
        int8: also write dynamically int8-quantised graphs.
        opset: ONNX opset (18 or newer).

    Returns:
        The path of the JSON description.

    Raises:
        ExportError: the model is not exportable (training mode, not float32) or the exporter failed.
    """
    check_exportable(model)
    import groupvit

    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx and onnxscript packages; pip install 'groupvit[onnx]'") from None
    if opset < OPSET:
        raise ExportError(f"opset {opset} is too old: bicubic resize and the attention need opset >= {OPSET}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    side = cfg.vision.image_size
    soft_names = [f"soft_{i}" for i in range(sum(1 for n in cfg.vision.num_group_tokens if n > 0))]
    batch = torch.export.Dim("batch", min=1, max=4096)
    height = torch.export.Dim("height", min=cfg.vision.patch_size, max=8192)
    width = torch.export.Dim("width", min=cfg.vision.patch_size, max=8192)
    images = torch.zeros(2, 3, side, side)
    _export(ImageGraph(model), (images,), out / IMAGE_FILE, "images", ["image_embeds", "group_embeds", *soft_names],
            {0: batch, 2: height, 3: width}, opset)
    tokens = torch.zeros(2, cfg.text.context_length, dtype=torch.int64)
    tokens[:, 0], tokens[:, 1] = 49406, 49407
    _export(TextGraph(model), (tokens,), out / TEXT_FILE, "tokens", ["text_embeds"], {0: batch}, opset)
    files = {"image": IMAGE_FILE, "text": TEXT_FILE}
    if int8:
        for file in files.values():
            quantize_int8(out / file, out / int8_name(file))
    meta = {
        "groupvit_onnx_format": FORMAT_VERSION,
        "opset": opset,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "groupvit": groupvit.__version__},
        "config": cfg.to_dict(),
        "logit_scale": float(model.scale().detach()),
        "files": files,
        "int8": int8,
        "image": {"inputs": {"images": "float32 [B, 3, H, W], ImageNet-normalised"},
                  "outputs": ["image_embeds", "group_embeds", *soft_names]},
        "text": {"inputs": {"tokens": f"int64 [B, {cfg.text.context_length}]"}, "outputs": ["text_embeds"]},
    }
    if getattr(model, "inference", None):
        meta["inference"] = dict(model.inference)
    with atomic_path(out / META_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return out / META_FILE
