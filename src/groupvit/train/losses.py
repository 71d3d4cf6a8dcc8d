"""GroupViT's training losses: image-text contrastive and multi-label (noun prompt) contrastive.

Distributed layout (official ``dist_collect`` + per-rank loss), with ``W`` ranks of ``B`` samples:

* **What is gathered**: image embeddings ``[B, D]`` and text embeddings ``[B, 1+K, D]`` (caption and
  ``K`` prompts) of every rank, with :func:`gather_with_grad`, concatenated in rank order into
  ``[W*B, ...]``. Row ``r*B + b`` of a gathered tensor is sample ``b`` of rank ``r``.
* **Local rows, global columns**: each rank scores only its own ``B`` images (and ``B`` captions,
  ``B*K`` prompts) against all gathered columns, so its targets sit at column offset ``rank*B``.
  Each loss is a mean over the local rows; the global loss is the mean over ranks.
* **Where gradients flow**: the gather is differentiable (:func:`gather_with_grad`, the semantics of
  the official diffdist gather): its backward sums, over ranks, the gradients every rank computed for
  a slice and hands rank ``r`` the total for its own slice. Local features therefore receive the
  gradient of the *sum* of all ranks' losses, both through the rows they own and through the columns
  other ranks used; DDP's gradient averaging then turns this into the gradient of the mean loss, the
  same value one process computes on the concatenated batch.

Single process (no process group): ``W = 1``, rank 0, the gather is the identity.

**Multi-label pooling** (``train.multi_label_pooling``): officially the prompts are scored against the
pooled image embedding (the mean of the final groups). ``"max-group"`` scores each prompt against the
image's best-matching final group instead (multiple-instance max pooling): the mean of identical groups
matches every prompt word of an image equally well, while under the max a group is rewarded for matching
one word strongly, which pays only when different groups take different parts of the image. It is an
option for small-scale training (docs/synthetic-experiments.md), not part of the official recipe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from groupvit.errors import ConfigError, InputError
from groupvit.model import GroupViT
from groupvit.model.grouping import StageCapture, capture_grouping, chain_assignments
from groupvit.model.groupvit import ImageEncoding
from groupvit.train.distributed import all_gather_with_grad, rank, world
from groupvit.train.group_objectives import (
    affinity_loss,
    anti_copy_loss,
    check_group_objectives,
    mix_images,
    mix_loss,
    mix_masks,
    mix_partner,
    patch_colours,
    prototype_loss,
    word_group_loss,
)
from groupvit.train.text_cache import TextCache, text_tower_frozen


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x [B, ...]`` concatenated in rank order: ``[W*B, ...]``, differentiable.

    Every rank must pass the same shape. Backward gives each rank the sum over ranks of the
    gradients of its own slice (see :func:`~groupvit.train.distributed.all_gather_with_grad`).
    The identity in a single process.
    """
    return all_gather_with_grad(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x [B, ...]`` concatenated in rank order, without gradient (e.g. integer word ids)."""
    if world() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_rows( sum_cols( -targets * log_softmax(logits) ) )`` for ``logits, targets [N, M]``."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def contrastive_labels(batch: int, rank: int, device: torch.device | None = None) -> torch.Tensor:
    """Column of each local row's positive among the gathered columns: ``arange(batch) + batch*rank``."""
    return torch.arange(batch, device=device) + batch * rank


def image_text_loss(
    image: torch.Tensor, text: torch.Tensor, all_image: torch.Tensor, all_text: torch.Tensor,
    scale: torch.Tensor, rank: int,
) -> torch.Tensor:
    """Official image-text contrastive loss of one rank (section 2.2 of the reference).

    Args:
        image, text: local L2-normalised embeddings ``[B, D]`` (text = captions).
        all_image, all_text: the gathered ones ``[W*B, D]`` (rank-major).
        scale: clamped temperature ``min(exp(logit_scale), 100)``, a 0-dim tensor.
        rank: this process's rank (labels are offset by ``B*rank``).

    Returns ``0.5 * (CE(s * image @ all_text.T, y) + CE(s * text @ all_image.T, y))`` with
    ``y = arange(B) + B*rank``, CE a mean over the ``B`` local rows.
    """
    labels = contrastive_labels(image.shape[0], rank, image.device)
    logits_per_image = scale * image @ all_text.t()
    logits_per_text = scale * text @ all_image.t()
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))


def multi_label_targets(
    batch: int, k: int, rank: int, world_size: int, device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft targets of the multi-label loss for one rank.

    Gathered prompts are flattened as ``(w, b, k)``: column ``(w*B + b)*K + k`` is prompt ``k`` of
    sample ``b`` of rank ``w``.

    Returns:
        image_targets ``[B, W*B*K]``: ``1/K`` on the image's own ``K`` prompts, 0 elsewhere (other
            images' prompts are negatives even when their words are the same).
        text_targets ``[B*K, W*B]``: 1 on the prompt's own image (row ``b*K + k`` -> column
            ``rank*B + b``).
    """
    own = torch.arange(batch, device=device) + batch * rank  # [B], gathered index of each local sample
    image_targets = torch.zeros(batch, world_size * batch * k, device=device, dtype=dtype)
    columns = own[:, None] * k + torch.arange(k, device=device)[None, :]  # [B, K]
    image_targets.scatter_(1, columns, 1.0 / k)
    text_targets = torch.zeros(batch * k, world_size * batch, device=device, dtype=dtype)
    text_targets.scatter_(1, own.repeat_interleave(k)[:, None], 1.0)
    return image_targets, text_targets


def word_multi_label_targets(
    words: torch.Tensor, all_words: torch.Tensor, rank: int, dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft targets of the multi-label loss when prompts of the same word are positives for each other.

    The official targets treat another image's prompt as a negative even when it names the same word;
    with a small vocabulary (e.g. eight shape nouns) most prompts of a batch repeat, and those targets
    contradict each other. Here image ``i`` and prompt ``(j, k)`` match when ``all_words[j, k]`` is one
    of image ``i``'s prompt words, or when the prompt is image ``i``'s own; each row is normalised to sum 1.

    Args:
        words: local word ids ``[B, K]`` (-1: a caption copy used as padding, matching its own image only).
        all_words: gathered word ids ``[W*B, K]`` (rank-major).

    Returns ``image_targets [B, W*B*K]`` and ``text_targets [B*K, W*B]``; with all words distinct they
    equal :func:`multi_label_targets`.
    """
    batch, k = words.shape
    own = contrastive_labels(batch, rank, words.device)  # [B]
    flat = all_words.reshape(-1)  # [W*B*K], column (j, k) -> j*K + k
    # image i <-> prompt column c: the column's word is one of image i's words (padding never matches) ...
    same = (words[:, :, None] == flat[None, None, :]) & (words[:, :, None] >= 0)  # [B, K, W*B*K]
    image_match = same.any(dim=1)
    # ... or the column is one of image i's own prompts.
    own_columns = own[:, None] * k + torch.arange(k, device=words.device)[None, :]
    image_match.scatter_(1, own_columns, True)
    # prompt (i, k) <-> image j: image j has the prompt's word among its words, or j is the prompt's own image.
    text_match = ((words.reshape(-1)[:, None, None] == all_words[None]) & (words.reshape(-1)[:, None, None] >= 0))
    text_match = text_match.any(dim=2)  # [B*K, W*B]
    text_match.scatter_(1, own.repeat_interleave(k)[:, None], True)
    image_targets = image_match.to(dtype)
    text_targets = text_match.to(dtype)
    return image_targets / image_targets.sum(1, keepdim=True), text_targets / text_targets.sum(1, keepdim=True)


def multi_label_loss(
    image: torch.Tensor, prompts: torch.Tensor, all_image: torch.Tensor, all_prompts: torch.Tensor,
    scale: torch.Tensor, rank: int, world_size: int,
    targets: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Official multi-label contrastive loss of one rank (section 2.3 of the reference).

    Args:
        image: local L2-normalised image embeddings ``[B, D]``, or group embeddings ``[B, G, D]``: an
            image's score for a prompt is then the best of its groups' (max over ``G``).
        prompts: local L2-normalised prompt embeddings ``[B, K, D]``.
        all_image: gathered images ``[W*B, D]`` (or ``[W*B, G, D]``); all_prompts: gathered prompts
            ``[W*B, K, D]``.
        scale: the multi-label temperature (clamped), 0-dim.

    Image side: ``B`` rows against all ``W*B*K`` prompts, soft target ``1/K`` on the own prompts.
    Text side: ``B*K`` local prompts against the ``W*B`` images, target 1 on the own image.
    ``targets`` replaces these official targets (e.g. by :func:`word_multi_label_targets`).
    Returns ``0.5 * (SoftCE(image side) + SoftCE(text side))``.
    """
    batch, k, dim = prompts.shape
    if targets is None:
        targets = multi_label_targets(batch, k, rank, world_size, image.device, image.dtype)
    image_targets, text_targets = targets
    flat_prompts = all_prompts.reshape(-1, dim)
    if image.dim() == 3:
        logits_image = scale * (image @ flat_prompts.t()).amax(dim=1)  # [B, G, W*B*K] -> [B, W*B*K]
        logits_text = scale * torch.einsum("pd,ngd->png", prompts.reshape(-1, dim), all_image).amax(dim=2)
    else:
        logits_image = scale * image @ flat_prompts.t()  # [B, W*B*K]
        logits_text = scale * prompts.reshape(-1, dim) @ all_image.t()  # [B*K, W*B]
    return 0.5 * (
        soft_target_cross_entropy(logits_image, image_targets) + soft_target_cross_entropy(logits_text, text_targets)
    )


@dataclass
class LossOutput:
    """Losses of one step (0-dim tensors): ``total = itc + weight * multi_label + sum_n w_n * groups[n]``.

    ``multi_label`` is ``None`` when the batch carries no prompts (``K = 0``); ``groups`` holds the unweighted
    value of each enabled group objective (:mod:`groupvit.train.group_objectives`), empty by default.
    """

    total: torch.Tensor
    itc: torch.Tensor
    multi_label: torch.Tensor | None
    groups: dict[str, torch.Tensor] = field(default_factory=dict)


class GroupViTLoss(nn.Module):
    """Image-text plus multi-label contrastive loss over all ranks (see the module docstring).

    Args:
        multi_label_weight: weight of the multi-label term (official 1.0).
    """

    def __init__(self, multi_label_weight: float = 1.0) -> None:
        super().__init__()
        self.multi_label_weight = multi_label_weight

    def forward(
        self, image: torch.Tensor, texts: torch.Tensor, scale: torch.Tensor,
        multi_label_scale: torch.Tensor | None = None, prompt_words: torch.Tensor | None = None,
        groups: torch.Tensor | None = None,
    ) -> LossOutput:
        """``image [B, D]`` and ``texts [B, 1+K, D]`` (index 0 the caption), both L2-normalised.

        ``multi_label_scale`` defaults to ``scale`` (shared temperature). ``prompt_words [B, K]`` (word ids,
        gathered without gradient) switches the multi-label targets to :func:`word_multi_label_targets`.
        ``groups [B, G, D]`` (L2-normalised group embeddings) scores the prompts against each image's best
        group instead of the image embedding.
        """
        if texts.dim() != 3 or texts.shape[0] != image.shape[0]:
            raise InputError(
                f"expected text embeddings [B, 1+K, D] with B={image.shape[0]}, got {tuple(texts.shape)}"
            )
        r, w = rank(), world()
        all_image = gather_with_grad(image)  # [W*B, D]
        all_texts = gather_with_grad(texts)  # [W*B, 1+K, D]
        itc = image_text_loss(image, texts[:, 0], all_image, all_texts[:, 0], scale, r)
        if texts.shape[1] == 1:
            return LossOutput(itc, itc, None)
        ml_scale = scale if multi_label_scale is None else multi_label_scale
        targets = None
        if prompt_words is not None:
            targets = word_multi_label_targets(prompt_words, gather_no_grad(prompt_words), r, image.dtype)
        if groups is not None:
            image, all_image = groups, gather_with_grad(groups)
        ml = multi_label_loss(image, texts[:, 1:], all_image, all_texts[:, 1:], ml_scale, r, w, targets)
        return LossOutput(itc + self.multi_label_weight * ml, itc, ml)


def float32(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on ``device`` for the block: its matrix multiplies run in the inputs' own dtype."""
    return torch.autocast(device.type, enabled=False)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class ContrastiveObjective(nn.Module):
    """The model and its loss as one module, so that DDP wraps a single forward.

    ``forward(images [B, 3, S, S] float, texts [B, 1+K, T] int64)`` encodes both towers (under the
    caller's autocast), L2-normalises in float32 (float64 stays float64) and returns
    :class:`LossOutput`. ``K`` must equal ``model.config.multi_label``; the text tower and its
    projection head see all ``B*(1+K)`` texts
    in one batch, as in the official model.

    ``group_objectives`` (``{name: weight}``, see :mod:`groupvit.train.group_objectives`) adds group-level
    terms, each computed on this rank's batch; ``mix`` runs the image tower a second time, on mixed images.
    """

    def __init__(self, model: GroupViT, multi_label_weight: float = 1.0, multi_label_pooling: str = "image",
                 group_objectives: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss = GroupViTLoss(multi_label_weight)
        self.max_group = multi_label_pooling == "max-group"
        self.group_weights = {n: w for n, w in check_group_objectives(group_objectives or {}).items() if w > 0}
        # Text embeddings of a frozen text tower and head (train.trainable, applied before): see text_cache.
        self.text_cache = TextCache(model) if text_tower_frozen(model) else None

    def forward(
        self, images: torch.Tensor, texts: torch.Tensor, prompt_words: torch.Tensor | None = None
    ) -> LossOutput:
        k = self.model.config.multi_label
        if texts.dim() == 2:
            texts = texts[:, None]
        if texts.dim() != 3 or texts.shape[1] != 1 + k or texts.shape[0] != images.shape[0]:
            raise InputError(
                f"expected texts [B, 1+K, T] with B={images.shape[0]} and K=model multi_label={k}, got "
                f"{tuple(texts.shape)}; set data.multi_label to the model's multi_label"
            )
        groups = None
        encoding = None
        recording = capture_grouping(self.model.vision) if self.group_weights else contextlib.nullcontext()
        with recording as capture:
            if (self.max_group and k > 0) or self.group_weights:
                encoding = self.model.encode_image_groups(images, normalize=False)
                image = F.normalize(_at_least_fp32(encoding.image_embeds), dim=-1)
                if self.max_group and k > 0:
                    groups = F.normalize(_at_least_fp32(encoding.group_embeds), dim=-1)
            else:
                image = F.normalize(_at_least_fp32(self.model.encode_image(images, normalize=False)), dim=-1)
        raw = self.text_cache(texts) if self.text_cache is not None else self.model.encode_text(texts, normalize=False)
        text = F.normalize(_at_least_fp32(raw), dim=-1)
        scale = self.model.scale()
        ml_scale = self.model.scale(multi_label=True) if k > 0 else None
        with float32(images.device):  # the logits and losses, under a caller's bf16 autocast too
            out = self.loss(image, text, scale, ml_scale, prompt_words, groups)
        if not self.group_weights:
            return out
        assert encoding is not None
        terms = self.group_terms(images, encoding, capture.stages, text, scale, ml_scale, prompt_words)
        total = out.total + sum(self.group_weights[name] * value for name, value in terms.items())
        return LossOutput(total, out.itc, out.multi_label, terms)

    def group_terms(self, images: torch.Tensor, encoding: ImageEncoding, stages: list[StageCapture],
                    text: torch.Tensor, scale: torch.Tensor, ml_scale: torch.Tensor | None,
                    prompt_words: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The unweighted value of each enabled group objective (stage terms averaged over the stages).

        ``text [B, 1+K, D]``: L2-normalised caption (index 0) and prompt embeddings; ``prompt_words [B, K]``
        their word ids (the ``words`` objective needs them: ``train.multi_label_targets: words``).
        """
        if not encoding.assignments:
            raise InputError("group objectives need a model with grouping stages (model.vision.num_group_tokens)")
        captions = text[:, 0]
        terms: dict[str, torch.Tensor] = {}
        mixed = masks = partner = None
        if "mix" in self.group_weights:  # the second image-tower pass runs under the caller's autocast
            masks = mix_masks(images.shape[0], encoding.grid, device=images.device)
            partner = mix_partner(images.shape[0], images.device)
            mixed = self.model.encode_image_groups(mix_images(images, masks, partner), normalize=False)
        with float32(images.device):
            chain = None
            if {"affinity", "object_words"} & set(self.group_weights):
                chain = chain_assignments([a.soft for a in encoding.assignments])[-1]  # [B, L, G]
            if "affinity" in self.group_weights:
                terms["affinity"] = affinity_loss(chain, patch_colours(images, encoding.grid))
            if "anti_copy" in self.group_weights:
                terms["anti_copy"] = torch.stack([anti_copy_loss(s.queries) for s in stages]).mean()
            if "prototype" in self.group_weights:
                terms["prototype"] = torch.stack([prototype_loss(s.tokens, s.segments) for s in stages]).mean()
            if mixed is not None:
                terms["mix"] = mix_loss(chain_assignments([a.soft for a in mixed.assignments])[-1],
                                        F.normalize(_at_least_fp32(mixed.group_embeds), dim=-1), captions, masks,
                                        partner, scale)
            word_objectives = [name for name in ("words", "object_words") if name in self.group_weights]
            if word_objectives and (prompt_words is None or ml_scale is None):
                raise ConfigError(f"the {word_objectives[0]} group objective needs prompt words: set "
                                  "train.multi_label_targets: words and a model with multi_label > 0")
            groups = F.normalize(_at_least_fp32(encoding.group_embeds), dim=-1) if word_objectives else None
            for name in word_objectives:
                available = None
                if name == "object_words":  # the group holding the most patches takes no word
                    mass = chain.detach().sum(dim=1)  # [B, G]
                    available = torch.ones_like(mass, dtype=torch.bool).scatter_(1, mass.argmax(1, keepdim=True),
                                                                                 False)
                terms[name] = word_group_loss(groups, text[:, 1:], prompt_words, ml_scale, available)
        return terms
