"""ONNX export of the two towers and an onnxruntime stand-in for the PyTorch model."""

from groupvit.export.onnx import export_onnx
from groupvit.export.runtime import OnnxGroupViT, is_export_dir

__all__ = ["OnnxGroupViT", "export_onnx", "is_export_dir"]
