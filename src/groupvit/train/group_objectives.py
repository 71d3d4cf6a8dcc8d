"""Group-level training objectives: opt-in signals that supervise the groups themselves.

GroupViT's two losses supervise only the pooled image (image-text) and the image's prompts (multi-label):
nothing asks the groups to differ or to follow image structure, and at small scale the group tokens turn
into copies (docs/synthetic-experiments.md). GroupViT's successors add group-level signals; these are our
formulations of them, enabled by ``train.group_objectives: {name: weight, ...}`` (the official configs have
none, and the official loss is then unchanged):

* ``affinity`` — bottom-up colour affinity (after SegCLIP's superpixel consistency): two patches of similar
  mean colour should share a final group, two dissimilar ones (the farther half of the image's pairs) should
  not. :func:`affinity_loss`.
* ``anti_copy`` — the assignment queries of one image's groups should not be copies of each other.
  :func:`anti_copy_loss`.
* ``prototype`` — after PGSeg: non-learnable prototypes, the k-means centres of a grouping stage's input
  tokens (no gradient), are matched one-to-one to the stage's output segments, and each segment must be
  closer to its own prototype than to the others (contrastive). :func:`prototype_loss`.
* ``mix`` — after MixReorg: patches of two scenes of the batch are mixed into one image (a block of the
  patch grid comes from a partner scene), and each patch's final group must match the caption of the scene
  the patch came from. :func:`mix_loss`; the mixed images are built by :func:`mix_images`.
* ``words`` — after PGSeg's diagnosis (groups are aligned all-to-one in training, one-to-one at inference):
  the prompt words of an image are matched one-to-one to its final groups, and each matched group must
  name its own word before the other words of the batch, those of its own caption included.
  :func:`word_group_loss`. ``object_words`` is the same with the group that holds the most patches (the
  scene's background, where objects are smaller than it) left out of the match.

None reads labels, masks or object positions: only the images, their captions and the model's own
features (the mixing mask is one that training itself draws).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from groupvit.errors import ConfigError

GROUP_OBJECTIVES = ("affinity", "anti_copy", "prototype", "mix", "words", "object_words")


def check_group_objectives(weights: Mapping[str, float]) -> dict[str, float]:
    """Validate ``{name: weight}``: known names, finite non-negative weights. Returns a plain dict."""
    unknown = sorted(set(weights) - set(GROUP_OBJECTIVES))
    if unknown:
        raise ConfigError(f"unknown train.group_objectives {unknown}; known: {list(GROUP_OBJECTIVES)}")
    out: dict[str, float] = {}
    for name, weight in weights.items():
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise ConfigError(f"train.group_objectives.{name} must be a number, got {weight!r}") from None
        if not value >= 0 or value == float("inf"):
            raise ConfigError(f"train.group_objectives.{name} must be a finite weight >= 0, got {weight!r}")
        out[str(name)] = value
    return out


# ----------------------------------------------------------------------------------------------------
# the objectives


def patch_colours(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Mean colour of each patch: ``images [B, 3, H, W]`` -> ``[B, h*w, 3]`` (row-major patch order)."""
    pooled = F.adaptive_avg_pool2d(images.float(), grid)  # [B, 3, h, w]
    return pooled.flatten(2).transpose(1, 2)


def colour_affinity(colours: torch.Tensor) -> torch.Tensor:
    """Target affinity of every pair of patches: ``colours [B, L, 3]`` -> ``[B, L, L]``.

    ``d`` is the distance between two patches' mean colours and ``m`` the median of ``d²`` over the
    off-diagonal pairs of each image (at least 1e-6), so the scale adapts to the image's contrast: the target
    is ``exp(-d² / m)`` for pairs at most as far apart as the median, and 0 for the farther (dissimilar) half.
    The diagonal is 1.
    """
    d2 = torch.cdist(colours, colours).square()  # [B, L, L]
    length = colours.shape[1]
    off = ~torch.eye(length, dtype=torch.bool, device=colours.device)
    median = d2[:, off].median(dim=1).values.clamp_min(1e-6)[:, None, None]  # [B, 1, 1]
    return torch.where(d2 <= median, torch.exp(-d2 / median), torch.zeros_like(d2))


def affinity_loss(chain: torch.Tensor, colours: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Binary cross-entropy between "same final group" probabilities and the colour affinity.

    Args:
        chain: patch-to-final-group probabilities ``[B, L, G]`` (rows sum to 1).
        colours: mean colour of each patch ``[B, L, 3]``.

    ``P_ij = sum_g chain[i, g] chain[j, g]`` is the probability that patches ``i`` and ``j`` end in the same
    group; the target ``w_ij`` is :func:`colour_affinity` (no gradient). Returns the mean over images and
    ordered pairs ``i != j`` of ``-(w log P + (1 - w) log(1 - P))``: similar patches are pulled together,
    dissimilar ones (``w`` near 0) pushed apart.
    """
    same = (chain @ chain.transpose(1, 2)).clamp(eps, 1 - eps)  # [B, L, L]
    target = colour_affinity(colours).detach()
    length = chain.shape[1]
    off = ~torch.eye(length, dtype=torch.bool, device=chain.device)
    bce = -(target * same.log() + (1 - target) * (1 - same).log())
    return bce[:, off].mean()


def anti_copy_loss(queries: torch.Tensor) -> torch.Tensor:
    """Mean over images and ordered pairs ``s != t`` of ``max(0, cos(q_s, q_t))²``: ``queries [B, S, C]`` -> 0-dim.

    Zero when the queries are orthogonal or opposed; 1 when they are all copies.
    """
    q = F.normalize(queries.float(), dim=-1)
    cosine = q @ q.transpose(1, 2)  # [B, S, S]
    off = ~torch.eye(q.shape[1], dtype=torch.bool, device=q.device)
    return cosine[:, off].clamp_min(0).square().mean()


def kmeans(points: torch.Tensor, k: int, iterations: int = 10) -> torch.Tensor:
    """Batched spherical k-means without gradient: ``points [B, L, C]`` -> centres ``[B, k, C]`` (unit norm).

    Deterministic farthest-point start: the first centre is the point closest to the mean direction, each
    next one the point least similar to the centres so far. Each iteration assigns every point to its most
    similar centre and moves each centre to the normalised mean of its points (an empty centre stays put).
    """
    with torch.no_grad():
        x = F.normalize(points.float(), dim=-1)
        batch, length, _ = x.shape
        if k > length:
            raise ConfigError(f"k-means with {k} centres needs at least {k} points, got {length}")
        rows = torch.arange(batch, device=x.device)
        first = (x @ F.normalize(x.mean(dim=1), dim=-1)[:, :, None]).squeeze(-1).argmax(dim=1)  # [B]
        centres = [x[rows, first]]
        closest = (x @ centres[0][:, :, None]).squeeze(-1)  # [B, L] best similarity to any centre
        for _ in range(1, k):
            nxt = closest.argmin(dim=1)
            centres.append(x[rows, nxt])
            closest = torch.maximum(closest, (x @ centres[-1][:, :, None]).squeeze(-1))
        c = torch.stack(centres, dim=1)  # [B, k, C]
        for _ in range(iterations):
            member = F.one_hot((x @ c.transpose(1, 2)).argmax(dim=2), k).float()  # [B, L, k]
            sums = member.transpose(1, 2) @ x  # [B, k, C]
            counts = member.sum(dim=1)[:, :, None]
            c = torch.where(counts > 0, F.normalize(sums, dim=-1), c)
        return c


def greedy_match(similarity: torch.Tensor) -> torch.Tensor:
    """One-to-one matching of rows to columns by repeatedly taking the most similar free pair.

    ``similarity [B, S, K]`` with ``S <= K`` -> ``[B, S]`` column index of each row.
    """
    with torch.no_grad():
        sim = similarity.detach().float().clone()
        batch, rows, _ = sim.shape
        match = torch.full((batch, rows), -1, dtype=torch.long, device=sim.device)
        index = torch.arange(batch, device=sim.device)
        low = torch.finfo(sim.dtype).min
        for _ in range(rows):
            flat = sim.flatten(1).argmax(dim=1)  # [B]
            r, c = flat // sim.shape[2], flat % sim.shape[2]
            match[index, r] = c
            sim[index, r, :] = low
            sim[index, :, c] = low
        return match


def prototype_loss(tokens: torch.Tensor, segments: torch.Tensor, temperature: float = 0.1,
                   iterations: int = 10) -> torch.Tensor:
    """Prototype contrast of one grouping stage (after PGSeg).

    Args:
        tokens: the stage's input tokens ``[B, L, C]``; their ``S``-means centres are the prototypes
            (:func:`kmeans`, no gradient).
        segments: the stage's output segments ``[B, S, C]``.
        temperature: of the softmax over prototypes.

    Each segment is matched one-to-one to a prototype (:func:`greedy_match` on cosine similarity) and scored
    against all ``S`` prototypes of its image: returns the mean cross-entropy of
    ``cos(segment, prototypes) / temperature`` with the matched prototype as the target.
    """
    centres = kmeans(tokens, segments.shape[1], iterations)  # [B, S, C]
    logits = F.normalize(segments.float(), dim=-1) @ centres.transpose(1, 2) / temperature  # [B, S, S]
    target = greedy_match(logits)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def mix_masks(batch: int, grid: tuple[int, int], generator: torch.Generator | None = None,
              device: torch.device | None = None) -> torch.Tensor:
    """A random block of the patch grid per image, ``[B, h, w]`` bool (True: the patch comes from the partner).

    Each block is an axis-aligned rectangle of ``ceil(h/4)..ceil(3h/4)`` rows and as many columns (a quarter to
    three quarters of each side), placed uniformly.
    """
    h, w = grid
    masks = torch.zeros(batch, h, w, dtype=torch.bool)
    low_h, high_h = max(1, -(-h // 4)), max(1, -(-3 * h // 4))
    low_w, high_w = max(1, -(-w // 4)), max(1, -(-3 * w // 4))
    draws = torch.rand(batch, 4, generator=generator)
    for b in range(batch):
        bh = low_h + int(draws[b, 0] * (high_h - low_h + 1))
        bw = low_w + int(draws[b, 1] * (high_w - low_w + 1))
        top = int(draws[b, 2] * (h - bh + 1))
        left = int(draws[b, 3] * (w - bw + 1))
        masks[b, top:top + bh, left:left + bw] = True
    return masks.to(device)


def mix_images(images: torch.Tensor, masks: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """``images [B, 3, H, W]`` with the masked patches (``masks [B, h, w]``) taken from ``images[partner]``."""
    pixel_mask = F.interpolate(masks[:, None].float(), size=images.shape[-2:], mode="nearest").bool()
    return torch.where(pixel_mask, images[partner], images)


def mix_partner(batch: int, device: torch.device | None = None) -> torch.Tensor:
    """Partner of each scene: half a batch away (``(b + B // 2) mod B``), never a neighbour (a shape twin)."""
    return (torch.arange(batch, device=device) + max(1, batch // 2)) % batch


def mix_loss(chain: torch.Tensor, groups: torch.Tensor, captions: torch.Tensor, masks: torch.Tensor,
             partner: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Patch reorganisation by source caption (after MixReorg).

    Args:
        chain: patch-to-final-group probabilities of the mixed images ``[B, L, G]``.
        groups: L2-normalised final group embeddings of the mixed images ``[B, G, D]``.
        captions: L2-normalised caption embeddings of the original scenes ``[B, D]`` (no gradient).
        masks: ``[B, h, w]`` True where the patch came from the partner scene.
        partner: ``[B]`` index of each image's partner scene.
        scale: the image-text temperature, 0-dim.

    A patch's logit for caption ``c`` is ``scale * sum_g chain[p, g] * <groups[g], c>``; each patch chooses
    between its own scene's caption and the partner's: returns the mean two-way cross-entropy with the
    patch's true source as the target.
    """
    pair = torch.stack([captions, captions[partner]], dim=1).detach()  # [B, 2, D]: own, partner
    group_scores = groups.float() @ pair.float().transpose(1, 2)  # [B, G, 2]
    logits = scale * (chain @ group_scores)  # [B, L, 2]
    target = masks.flatten(1).long()  # [B, L]: 1 = partner
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def first_words(words: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` bool: the prompt is a word (id >= 0) that no earlier prompt of its image already names."""
    earlier = (words[:, :, None] == words[:, None, :]).tril(diagonal=-1).any(dim=2)  # [B, K]
    return (words >= 0) & ~earlier


def word_group_loss(groups: torch.Tensor, prompts: torch.Tensor, words: torch.Tensor,
                    scale: torch.Tensor, available: torch.Tensor | None = None) -> torch.Tensor:
    """One group per prompt word, each naming its own word (after PGSeg's one-to-one alignment).

    Args:
        groups: L2-normalised final group embeddings ``[B, G, D]``.
        prompts: L2-normalised prompt embeddings ``[B, K, D]`` (``K <= G``).
        words: word id of each prompt ``[B, K]`` (-1: a caption copy used as padding).
        scale: the multi-label temperature, 0-dim.
        available: ``[B, G]`` bool, the groups that may take a word (default all); a word left without an
            available group is not scored.

    The distinct words of each image are matched to distinct groups (:func:`greedy_match` on the cosine
    ``<z_g, t_k>``, no gradient). A matched group's logits are ``scale * <z_g, t>`` over all ``B*K``
    prompts of the batch; every prompt of the same word is a positive (soft target, uniform over them),
    every other word's prompt a negative — the other words of the same caption included, which is what the
    max-group multi-label loss lacks (there one group may hold every word of its image). Returns the mean
    soft cross-entropy over the matched words (0 when the batch has none).
    """
    batch, k, _ = prompts.shape
    if k > groups.shape[1]:
        raise ConfigError(f"the words objective matches each of the {k} prompts of an image to its own final group, "
                          f"but the model has {groups.shape[1]} final groups; lower data.multi_label")
    valid = first_words(words)  # [B, K]
    similarity = prompts.float() @ groups.float().transpose(1, 2)  # [B, K, G]
    similarity = similarity.masked_fill(~valid[:, :, None], -2.0)  # invalid rows go after the valid ones ...
    if available is not None:  # ... and unavailable groups after every available one
        similarity = similarity.masked_fill(~available[:, None, :], -3.0)
    match = greedy_match(similarity)  # [B, K]
    if available is not None:
        valid = valid & available.gather(1, match)
    chosen = torch.gather(groups.float(), 1, match[:, :, None].expand(-1, -1, groups.shape[2]))  # [B, K, D]
    flat_words = words.reshape(-1)  # [B*K]
    targets = ((words[:, :, None] == flat_words[None, None, :]) & (flat_words >= 0)).float()  # [B, K, B*K]
    logits = scale * chosen @ prompts.reshape(-1, prompts.shape[2]).float().t()  # [B, K, B*K]
    if not bool(valid.any()):
        return logits.sum() * 0.0
    rows = valid.reshape(-1)
    row_targets = targets.reshape(batch * k, -1)[rows]
    row_targets = row_targets / row_targets.sum(dim=1, keepdim=True)
    return -(row_targets * logits.reshape(batch * k, -1)[rows].log_softmax(dim=-1)).sum(dim=-1).mean()
