"""Reading and writing GroupViT weights: our checkpoint, official NVlabs ``.pth``, Hugging Face.

The format of a source is detected from its content, not its name:

* our checkpoint: a ``torch.save`` dict with ``groupvit_format`` (model config + state dict; training
  checkpoints add optimizer and loop state to the same dict);
* official: a ``torch.save`` dict whose ``"model"`` holds ``img_encoder.*`` / ``text_encoder.*``
  keys (the architecture is read from the tensor shapes);
* Hugging Face: a directory with ``config.json`` (``model_type: groupvit``) and
  ``model.safetensors`` or ``pytorch_model.bin``, or a hub id such as ``nvidia/groupvit-gcc-yfcc``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from groupvit.config import GroupViTConfig, TextConfig, VisionConfig
from groupvit.errors import ConfigError, WeightsError
from groupvit.fileio import atomic_path
from groupvit.inference import check_settings
from groupvit.keymaps import HF, OFFICIAL, export_state_dict, import_state_dict
from groupvit.model import GroupViT
from groupvit.pretrained import WEIGHTS, resolve

FORMAT_VERSION = 1
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_HOST = "huggingface.co"


# ----------------------------------------------------------------------------------------------
# Reading raw checkpoint files


class _Opaque:
    """Stand-in for pickled objects of foreign classes (e.g. an OmegaConf config in official files)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _opaque_globals(path: Path) -> list[type]:
    """Stand-in classes for every global of ``path`` that ``weights_only`` loading refuses."""
    classes = []
    for name in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)):
        module, _, qualname = name.rpartition(".")
        classes.append(type(qualname, (_Opaque,), {"__module__": module, "__qualname__": qualname}))
    return classes


def read_torch_file(path: Path) -> Any:
    """``torch.load`` without executing code: foreign objects become inert stand-ins."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            if not zipfile.is_zipfile(path):
                raise
            with torch.serialization.safe_globals(_opaque_globals(path)):
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch.load raises many types (KeyError, EOFError, ...) for a bad file
        raise WeightsError(f"cannot read {path}: {describe_file(path)}, not a PyTorch checkpoint; pass a .pt/.pth "
                           "checkpoint, a Hugging Face directory or a known weights name") from None


# Leading bytes of common files that are passed as weights by mistake.
_SIGNATURES = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
               (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"PK\x03\x04", "a zip archive"),
               (b"<", "an HTML or XML page"), (b"{", "a JSON document"))


def describe_file(path: Path) -> str:
    """What a file that is not a checkpoint looks like, for an error message: ``"a PNG image"``, ``"a text file"``."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as err:
        return f"an unreadable file ({err.strerror or err})"
    if size == 0:
        return "an empty file"
    stripped = head.lstrip()
    for signature, kind in _SIGNATURES:
        if stripped.startswith(signature):
            return f"{kind} ({size:,} bytes)"
    try:
        head.decode("utf-8")
        return f"a text file ({size:,} bytes)"
    except UnicodeDecodeError:
        return f"{size:,} bytes of unrecognised data"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"cannot read {path}: corrupt safetensors file ({err})") from None


# ----------------------------------------------------------------------------------------------
# Configs: Hugging Face config.json <-> ours, and official architecture from tensor shapes


def config_to_hf(config: GroupViTConfig) -> dict[str, Any]:
    """Our config -> a ``config.json`` dict readable by ``transformers.GroupViTConfig``."""
    v, t = config.vision, config.text
    if len(set(v.num_heads)) != 1:
        raise ConfigError(f"the Hugging Face format needs one head count for all stages, got {v.num_heads}")
    if not v.hard_assignment or not v.gumbel or v.gumbel_tau != 1.0:
        raise ConfigError("the Hugging Face format supports only hard Gumbel assignment with tau 1")
    outputs = list(v.num_output_groups) + [v.num_output_groups[-1] if v.num_output_groups else 0] * (
        len(v.depths) - len(v.num_output_groups))
    return {
        "architectures": ["GroupViTModel"],
        "model_type": "groupvit",
        "projection_dim": config.projection_dim,
        "projection_intermediate_dim": config.projection_hidden_dim,
        "logit_scale_init_value": math.log(1.0 / config.contrast_temperature),
        "text_config": {
            "model_type": "groupvit_text_model",
            "vocab_size": t.vocab_size, "hidden_size": t.width, "intermediate_size": int(t.width * t.mlp_ratio),
            "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length, "hidden_act": "quick_gelu",
            "layer_norm_eps": t.layer_norm_eps, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "groupvit_vision_model",
            "hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio), "depths": list(v.depths),
            "num_hidden_layers": sum(v.depths), "num_group_tokens": list(v.num_group_tokens),
            "num_output_groups": outputs, "num_attention_heads": v.num_heads[0], "image_size": v.image_size,
            "patch_size": v.patch_size, "num_channels": v.in_channels, "hidden_act": "gelu",
            "layer_norm_eps": v.layer_norm_eps, "dropout": v.drop_rate, "attention_dropout": v.attn_drop_rate,
            "assign_eps": v.assign_eps, "assign_mlp_ratio": list(v.assign_mlp_ratio),
        },
    }


def config_from_hf(data: Mapping[str, Any]) -> GroupViTConfig:
    """A ``config.json`` dict of ``transformers.GroupViTModel`` -> our config (missing keys: HF defaults)."""
    v = dict(data.get("vision_config") or {})
    t = dict(data.get("text_config") or {})
    if v.get("hidden_act", "gelu") != "gelu" or t.get("hidden_act", "quick_gelu") != "quick_gelu":
        raise WeightsError("unsupported activations in config.json: GroupViT uses gelu (vision), quick_gelu (text)")
    width = v.get("hidden_size", 384)
    depths = tuple(v.get("depths", (6, 3, 3)))
    group_tokens = tuple(v.get("num_group_tokens", (64, 8, 0)))
    n_grouping = sum(1 for g in group_tokens if g > 0)
    heads = v.get("num_attention_heads", 6)
    text_width = t.get("hidden_size", 256)
    return GroupViTConfig(
        vision=VisionConfig(
            image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 16),
            in_channels=v.get("num_channels", 3), width=width, depths=depths, num_heads=(heads,) * len(depths),
            num_group_tokens=group_tokens,
            num_output_groups=tuple(v.get("num_output_groups", (64, 8, 8)))[:n_grouping],
            mlp_ratio=v.get("intermediate_size", 1536) / width,
            assign_mlp_ratio=tuple(v.get("assign_mlp_ratio", (0.5, 4.0))),
            drop_rate=v.get("dropout", 0.0), attn_drop_rate=v.get("attention_dropout", 0.0),
            assign_eps=v.get("assign_eps", 1.0), layer_norm_eps=v.get("layer_norm_eps", 1e-5),
        ),
        text=TextConfig(
            context_length=t.get("max_position_embeddings", 77), vocab_size=t.get("vocab_size", 49408),
            width=text_width, layers=t.get("num_hidden_layers", 12), heads=t.get("num_attention_heads", 4),
            mlp_ratio=t.get("intermediate_size", 1024) / text_width, layer_norm_eps=t.get("layer_norm_eps", 1e-5),
        ),
        projection_dim=data.get("projection_dim", 256),
        projection_hidden_dim=data.get("projection_intermediate_dim", 4096),
        contrast_temperature=math.exp(-data.get("logit_scale_init_value", 2.6592)),
    )


def config_from_official(state: Mapping[str, torch.Tensor]) -> GroupViTConfig:
    """Read the architecture of an official state dict from its tensor shapes.

    Head counts are not stored in the weights; the official configs use 64-dimensional heads
    (6 vision heads at width 384, ``width // 64`` text heads), which is assumed here.
    """
    try:
        width = state["img_encoder.pos_embed"].shape[-1]
        patch = state["img_encoder.patch_embed.proj.weight"]
        grid = int(round(state["img_encoder.pos_embed"].shape[1] ** 0.5))
        stages = sorted({int(m.group(1)) for k in state if (m := re.match(r"img_encoder\.layers\.(\d+)\.", k))})
        depths, tokens, outputs = [], [], []
        for s in stages:
            prefix = f"img_encoder.layers.{s}."
            depths.append(len({k.split(".")[4] for k in state if k.startswith(prefix + "blocks.")}))
            tokens.append(state[prefix + "group_token"].shape[1] if prefix + "group_token" in state else 0)
            if prefix + "downsample.mlp_inter.fc2.weight" in state:
                outputs.append(state[prefix + "downsample.mlp_inter.fc2.weight"].shape[0])
        first = "img_encoder.layers.0."
        token_hidden = state[first + "downsample.mlp_inter.fc1.weight"].shape[0] if outputs else width // 2
        channel_hidden = state[first + "downsample.mlp_channels.fc1.weight"].shape[0] if outputs else 4 * width
        text_emb = state["text_encoder.token_embedding.weight"]
        text_width = text_emb.shape[1]
        text_layers = len({k.split(".")[3] for k in state if k.startswith("text_encoder.transformer.resblocks.")})
        return GroupViTConfig(
            vision=VisionConfig(
                image_size=grid * patch.shape[-1], patch_size=patch.shape[-1], in_channels=patch.shape[1],
                width=width, depths=tuple(depths), num_heads=(max(1, width // 64),) * len(depths),
                num_group_tokens=tuple(tokens), num_output_groups=tuple(outputs),
                mlp_ratio=state[first + "blocks.0.mlp.fc1.weight"].shape[0] / width,
                assign_mlp_ratio=(token_hidden / width, channel_hidden / width),
            ),
            text=TextConfig(
                context_length=state["text_encoder.positional_embedding"].shape[0], vocab_size=text_emb.shape[0],
                width=text_width, layers=text_layers, heads=max(1, text_width // 64),
                mlp_ratio=state["text_encoder.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
            ),
            projection_dim=state["img_projector.linear_out.weight"].shape[0],
            projection_hidden_dim=state["img_projector.linear_hidden.0.weight"].shape[0],
            # The official multi-label runs use K = 3 prompts; only the extra temperature is stored.
            multi_label=3 if "multi_label_logit_scale" in state else 0,
        )
    except (KeyError, IndexError, ConfigError) as err:
        raise WeightsError(f"not an official GroupViT checkpoint: cannot read the architecture ({err})") from None


# ----------------------------------------------------------------------------------------------
# Building models from each format


def _build(config: GroupViTConfig, state: Mapping[str, torch.Tensor], source: str) -> GroupViT:
    model = GroupViT(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{source}: state dict does not fit the model: missing {missing}, unexpected {unexpected}")
    wrong = [k for k, t in state.items() if t.shape != expected[k].shape]
    if wrong:
        raise WeightsError(
            f"{source}: tensor shapes do not fit the config: "
            + ", ".join(f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in wrong[:5])
        )
    model.load_state_dict({k: t.to(expected[k].dtype) for k, t in state.items()}, strict=True)
    return model.eval()


def _strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _load_hf_dir(path: Path) -> GroupViT:
    config_file = path / "config.json"
    try:
        data = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"cannot read {config_file}: {err}") from None
    if data.get("model_type") != "groupvit":
        raise WeightsError(
            f"{path} holds a {data.get('model_type')!r} model, not GroupViT (config.json model_type must be 'groupvit')"
        )
    config = config_from_hf(data)
    weights = next((path / f for f in HF_WEIGHT_FILES if (path / f).is_file()), None)
    if weights is None:
        raise WeightsError(f"{path} has config.json but no weights: expected one of {list(HF_WEIGHT_FILES)}")
    foreign = _read_safetensors(weights) if weights.suffix == ".safetensors" else read_torch_file(weights)
    expected = GroupViT(config).state_dict().keys()
    # transformers < 5 saved the position ids buffer.
    state = import_state_dict(foreign, HF, expected, ignore=["text_model.embeddings.position_ids"])
    return _build(config, state, str(path))


def _load_torch_file(path: Path, config: GroupViTConfig | None) -> GroupViT:
    ckpt = read_torch_file(path)
    if isinstance(ckpt, dict) and "groupvit_format" in ckpt:
        model_config = config or GroupViTConfig.from_dict(ckpt["config"])
        model = _build(model_config, ckpt["model"], str(path))
        model.inference = check_settings(ckpt.get("inference"), f"the inference settings of {path}", WeightsError)
        return model
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), Mapping):
        state = _strip_module_prefix(ckpt["model"])
        if any(k.startswith("img_encoder.") for k in state):
            model_config = config or config_from_official(state)
            expected = GroupViT(model_config).state_dict().keys()
            return _build(model_config, import_state_dict(state, OFFICIAL, expected), str(path))
    if isinstance(ckpt, Mapping) and any(str(k).startswith("vision_model.") for k in ckpt):
        if (path.parent / "config.json").is_file():
            return _load_hf_dir(path.parent)
        raise WeightsError(f"{path} is a Hugging Face weight file without config.json beside it; add the config")
    raise WeightsError(
        f"{path} is not a GroupViT checkpoint (expected our checkpoint, an official NVlabs .pth with a 'model' "
        "entry, or a Hugging Face directory)"
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection within ``timeout`` seconds (never hangs)."""
    import socket

    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((_HUB_HOST, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise WeightsError(
            f"{repo_id!r} looks like a Hugging Face hub id, but huggingface_hub is not installed; "
            "pip install 'groupvit[hub]' or pass a local directory"
        ) from None
    patterns = ["config.json", *HF_WEIGHT_FILES]
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    try:
        if offline or not _hub_reachable():
            return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # the hub client raises many unrelated types for one condition
        reason = "no network connection to the Hugging Face Hub and no cached copy" if offline or \
            not _hub_reachable(0.5) else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise WeightsError(
            f"cannot download {repo_id!r}: {reason}; download it where the hub is reachable "
            f"(huggingface-cli download {repo_id} --local-dir DIR) and pass DIR"
        ) from None


def load_pretrained(
    source: str | os.PathLike[str], config: GroupViTConfig | None = None, device: str | torch.device = "cpu",
) -> GroupViT:
    """Load a GroupViT from any supported source, in eval mode.

    Args:
        source: a name from :data:`groupvit.pretrained.WEIGHTS` (``"gcc-yfcc"``, ``"gcc-redcaps"``:
            downloaded once and cached; ``"synthetic-small"``: bundled), our checkpoint file, an
            official NVlabs ``.pth``, a Hugging Face model directory (or
            its weight file), or a hub id like ``"nvidia/groupvit-gcc-yfcc"`` (needs network or a cached copy).
        config: override the architecture read from the source (e.g. other head counts for an
            official checkpoint); by default it is read from the source.
        device: where to put the model.

    Raises:
        WeightsError: missing, corrupt or non-GroupViT source, or a state dict that does not fit
            (missing and unexpected keys are listed).
    """
    if isinstance(source, str) and source in WEIGHTS:
        source = resolve(source)
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WeightsError(f"{path} is a directory without config.json; pass a checkpoint file or a HF model dir")
        model = _load_hf_dir(path)
    elif path.is_file():
        if path.suffix == ".safetensors":
            if not (path.parent / "config.json").is_file():
                raise WeightsError(f"{path} needs config.json beside it (Hugging Face layout)")
            model = _load_hf_dir(path.parent)
        else:
            model = _load_torch_file(path, config)
    elif isinstance(source, str) and _HUB_ID.match(source) and not path.suffix:
        model = _load_hf_dir(_download_from_hub(source))
    else:
        known = ", ".join(WEIGHTS)
        if isinstance(source, str) and not any(sep in source for sep in ("/", "\\", ".")):
            raise WeightsError(f"unknown weights {source!r}: not one of the names {known}, nor a file or directory")
        raise WeightsError(f"no such file or directory: {source} (weights by name: {known})")
    return model.to(device)


# ----------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(model: GroupViT, path: str | os.PathLike[str], **extra: Any) -> Path:
    """Write our checkpoint format atomically: ``{"groupvit_format", "config", "model", **extra}``.

    ``model.inference`` (:mod:`groupvit.inference`), when not empty, is written as ``inference``.
    """
    payload = {"groupvit_format": FORMAT_VERSION, "config": model.config.to_dict(), "model": model.state_dict()}
    if model.inference:
        payload["inference"] = dict(model.inference)
    payload.update(extra)
    # Through a Python file object: a full disk surfaces as its OSError (atomic_path names it), not as torch's
    # "unexpected pos" of a write its C++ writer could not finish.
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)
    return Path(path)


def save_pretrained(model: GroupViT, directory: str | os.PathLike[str]) -> Path:
    """Write ``directory`` in the Hugging Face layout (``config.json`` + ``model.safetensors``).

    ``transformers.GroupViTModel.from_pretrained(directory)`` loads it. The multi-label temperature
    has no counterpart in that format and is not written.
    """
    from safetensors.torch import save_file

    if model.config.vision.stem != "patch":
        raise WeightsError(
            f"the Hugging Face format cannot hold a {model.config.vision.stem!r} vision stem (transformers' GroupViT "
            "has a patch embedding only); save this model with save_checkpoint / `groupvit convert SRC DST.pt`"
        )
    if not model.config.vision.group_residual:
        raise WeightsError("the Hugging Face format cannot hold vision.group_residual=false (transformers' GroupViT "
                           "always adds the group tokens to their segments); save this model with save_checkpoint")
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise WeightsError(f"{out} exists and is not a directory; choose another output path")
    out.mkdir(parents=True, exist_ok=True)
    hf_config = config_to_hf(model.config)
    state = {k: t.detach().cpu().contiguous() for k, t in export_state_dict(model.state_dict(), HF).items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(hf_config, indent=2) + "\n")
    return out
