"""Run exported graphs with onnxruntime behind the interface of :class:`groupvit.GroupViT` used for inference.

:class:`OnnxGroupViT` has ``config``, ``scale()``, ``encode_text``, ``encode_image`` and
``encode_image_groups``; the :class:`~groupvit.segment.Segmenter` and zero-shot evaluation accept it in
place of the PyTorch model and apply the same post-processing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from groupvit.config import GroupViTConfig
from groupvit.errors import ExportError, InputError
from groupvit.export.onnx import FORMAT_VERSION, META_FILE, int8_name
from groupvit.inference import check_settings
from groupvit.model.grouping import Assignment
from groupvit.model.groupvit import ImageEncoding


def is_export_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder written by :func:`groupvit.export.export_onnx`."""
    return (Path(path) / META_FILE).is_file()


def one_hot_argmax(soft: torch.Tensor) -> torch.Tensor:
    """Eval-mode hard assignment: one-hot of the arg-max over the group axis of ``soft [B, S, L]``."""
    return torch.zeros_like(soft).scatter_(1, soft.argmax(dim=1, keepdim=True), 1.0)


class OnnxGroupViT:
    """The exported image and text graphs of a GroupViT, run by onnxruntime on the CPU.

    Args:
        directory: a folder written by :func:`~groupvit.export.export_onnx` (or ``groupvit export onnx``).
        int8: run the int8-quantised graphs (the folder must hold them: export with ``int8=True``).
        threads: intra-op threads (default: ``torch.get_num_threads()``).

    Raises:
        ExportError: missing or incomplete folder, unknown format, missing int8 graphs, or onnxruntime
            not installed.
    """

    training = False

    def __init__(self, directory: str | os.PathLike[str], int8: bool = False, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("the onnxruntime backend needs onnxruntime; pip install 'groupvit[onnx]'") from None
        folder = Path(directory)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise ExportError(f"{folder} holds no {META_FILE}; write it with: groupvit export onnx --out {folder}")
        try:
            meta = json.loads(meta_path.read_text())
            version = meta["groupvit_onnx_format"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ExportError(f"{meta_path} is not a groupvit ONNX description; export again") from None
        if version != FORMAT_VERSION:
            raise ExportError(f"{meta_path} has format {version}, this version reads {FORMAT_VERSION}; export again")
        if int8 and not meta.get("int8"):
            raise ExportError(f"{folder} has no int8 graphs; export with --int8")
        self.directory, self.int8 = folder, bool(int8)
        self.config = GroupViTConfig.from_dict(meta["config"])
        self.logit_scale = float(meta["logit_scale"])
        self.inference = check_settings(meta.get("inference"), f"the inference settings of {meta_path}", ExportError)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        # Idle worker threads sleep instead of spinning: the post-processing that follows each run is PyTorch's.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {}
        for role, file in meta["files"].items():
            path = folder / (int8_name(file) if int8 else file)
            if not path.is_file():
                raise ExportError(f"{path} is missing; export {folder} again")
            self.sessions[role] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def eval(self) -> OnnxGroupViT:
        """No-op: exported graphs are always in eval mode."""
        return self

    def train(self, mode: bool = True) -> OnnxGroupViT:
        """Exported graphs cannot train: ``mode=True`` raises :class:`InputError`."""
        if mode:
            raise InputError("an exported ONNX model cannot be trained; train the PyTorch model")
        return self

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """None: the weights live in the graphs (device and dtype resolve to CPU float32)."""
        return iter(())

    def scale(self, multi_label: bool = False) -> torch.Tensor:
        """The clamped temperature recorded at export."""
        return torch.tensor(self.logit_scale)

    def _run(self, role: str, name: str, array: np.ndarray) -> list[torch.Tensor]:
        return [torch.from_numpy(out) for out in self.sessions[role].run(None, {name: array})]

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``tokens [B, T]`` (``T`` up to the context length; padded to it) -> ``[B, D]`` text embeddings."""
        length = self.config.text.context_length
        if tokens.ndim != 2 or tokens.shape[1] > length:
            raise InputError(f"tokens must be [B, T<={length}], got {tuple(tokens.shape)}; use groupvit.tokenize")
        padded = F.pad(tokens.to(torch.int64).cpu(), (0, length - tokens.shape[1]))
        (embeds,) = self._run("text", "tokens", padded.numpy())
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def _images(self, images: torch.Tensor) -> list[torch.Tensor]:
        patch = self.config.vision.patch_size
        if images.ndim != 4 or images.shape[1] != 3 or min(images.shape[2:]) < patch:
            raise InputError(f"images must be [B, 3, H, W] with H, W >= {patch}, got {tuple(images.shape)}")
        return self._run("image", "images", images.detach().to(torch.float32).cpu().contiguous().numpy())

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``images [B, 3, H, W]`` -> image embeddings ``[B, D]``."""
        embeds = self._images(images)[0]
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_image_groups(self, images: torch.Tensor, normalize: bool = True) -> ImageEncoding:
        """Image and group embeddings and each stage's soft (and eval-mode hard) assignment maps."""
        image_embeds, group_embeds, *softs = self._images(images)
        if normalize:
            image_embeds, group_embeds = F.normalize(image_embeds, dim=-1), F.normalize(group_embeds, dim=-1)
        grid = self.config.vision.patch_grid(images.shape[2], images.shape[3])
        assignments = [Assignment(soft=soft, hard=one_hot_argmax(soft)) for soft in softs]
        return ImageEncoding(image_embeds, group_embeds, assignments, grid)


BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")


def with_backend(model: torch.nn.Module | OnnxGroupViT | str | os.PathLike[str], backend: str = "torch"):
    """``model`` ready to run on ``backend``: ``'torch'``, ``'onnxruntime'`` or ``'onnxruntime-int8'``.

    ``model`` is a GroupViT, an :class:`OnnxGroupViT` or an export folder. A PyTorch model asked to run
    on onnxruntime is exported into a temporary folder first (seconds to minutes; export once with
    ``groupvit export onnx`` and pass the folder to skip it).

    Raises:
        InputError: unknown backend, or an exported model asked to run on ``'torch'``.
        ExportError: as :func:`~groupvit.export.export_onnx` and :class:`OnnxGroupViT`.
    """
    import tempfile

    from groupvit.export.onnx import export_onnx

    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    int8 = backend == "onnxruntime-int8"
    if isinstance(model, str | os.PathLike):
        if not is_export_dir(model):
            raise ExportError(f"{model} is not an ONNX export folder (no {META_FILE}); run groupvit export onnx")
        model = OnnxGroupViT(model, int8=int8)
    if backend == "torch":
        if isinstance(model, OnnxGroupViT):
            raise InputError("an ONNX export runs on onnxruntime: use backend 'onnxruntime' or the PyTorch weights")
        return model
    if isinstance(model, OnnxGroupViT):
        if model.int8 != int8:
            return OnnxGroupViT(model.directory, int8=int8)
        return model
    with tempfile.TemporaryDirectory(prefix="groupvit-onnx-") as tmp:
        export_onnx(model, tmp, int8=int8)
        return OnnxGroupViT(tmp, int8=int8)
