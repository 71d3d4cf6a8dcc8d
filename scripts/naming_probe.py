"""Why does a group take the wrong name? Object and background groups of synthetic scenes, side by side.

For every scene whose final groups include an object group (most of its pixels are one shape) and a
background group (most of its pixels are background), on fresh ``eval-all`` scenes:

* **prompt winner**: which of the two scores higher on the prompt of the object group's shape
  (``a photo of a {shape}.``); a model that names the right group has the object group win;
* **confidence**: each group's best official score ``Q`` over the six shapes (what the background rule reads:
  a group whose best score is below ``min(0.95, the image's best Q)`` becomes background, so with two groups
  only the more confident one gets a shape name);
* **global read-out**: the cosine of each group's embedding with the image embedding (a group whose token
  read the whole image before and after assignment resembles the image);
* **pooled share**: in the last grouping block, the norm of the assignment's pooled output over the norm of
  the projected group token it is added to (how much of a group's token comes from the patches it holds);
* **object pixels alone**: the image embedding of the scene with every pixel outside the object group painted
  in the background group's mean colour: its best shape prompt is the object's shape (the tower can name
  the object from its own pixels) or not.

Usage::

    python scripts/naming_probe.py output/long/latest.pt --num 64 --seed 11
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

import groupvit
from groupvit.data.images import normalize
from groupvit.data.synthetic import THING_CLASSES, SceneGenerator
from groupvit.segment.segmenter import chain_assignments, encode_class_names, group_class_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights")
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    model = groupvit.load_pretrained(args.weights).eval()
    size = model.config.vision.image_size
    generator = SceneGenerator(image_size=size, seed=args.seed, split="eval-all")
    scenes = [generator.sample(i) for i in range(args.num)]
    pixels = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() for s in scenes])  # [B, 3, S, S]
    parts: dict[str, torch.Tensor] = {}
    block = [stage.grouping for stage in model.vision.stages if stage.grouping is not None][-1]
    attend, assign = block.pre_assign_attn.attend, block.assign.assign_projected

    def record_attend(*inputs: torch.Tensor) -> torch.Tensor:
        parts["projected"] = attend(*inputs)
        return parts["projected"]

    def record_assign(*inputs: torch.Tensor) -> tuple:
        out = assign(*inputs)
        parts["pooled"] = out[0]
        return out

    block.pre_assign_attn.attend, block.assign.assign_projected = record_attend, record_assign
    with torch.no_grad():
        encoding = model.encode_image_groups(normalize(pixels))
    del block.pre_assign_attn.attend, block.assign.assign_projected
    shapes = encode_class_names(model, THING_CLASSES[1:])  # [6, D]
    confidence = group_class_scores(encoding.group_embeds.float(), encoding.image_embeds.float(), shapes,
                                    float(model.scale().detach())).amax(dim=-1)  # [B, G]
    grid = encoding.grid
    chain = chain_assignments([a.soft for a in encoding.assignments])[-1]  # [B, L, G]
    maps = F.interpolate(chain.transpose(1, 2).reshape(len(scenes), -1, *grid), size=(size, size), mode="nearest")
    groups = maps.argmax(dim=1).numpy()  # [B, S, S]
    share = (parts["pooled"].norm(dim=-1) / parts["projected"].norm(dim=-1).clamp_min(1e-9)).numpy()  # [B, G]
    rows = []
    masked = []
    for b, scene in enumerate(scenes):
        found: dict[str, tuple[int, int]] = {}
        for group in np.unique(groups[b]):
            majority = int(np.bincount(scene.labels[groups[b] == group], minlength=len(THING_CLASSES)).argmax())
            key = "object" if majority > 0 else "background"
            if key not in found or (groups[b] == group).sum() > (groups[b] == found[key][0]).sum():
                found[key] = (int(group), majority)
        if len(found) < 2:
            continue
        (obj, shape), (bg, _) = found["object"], found["background"]
        scores = encoding.group_embeds[b].float() @ shapes[shape - 1]
        rows.append([float(scores[obj] > scores[bg]),
                     float(encoding.group_embeds[b, obj].float() @ encoding.image_embeds[b].float()),
                     float(encoding.group_embeds[b, bg].float() @ encoding.image_embeds[b].float()),
                     float(share[b, obj]), float(share[b, bg]),
                     float(confidence[b, obj]), float(confidence[b, bg]),
                     float(confidence[b, bg] > confidence[b, obj])])
        outside = torch.from_numpy(groups[b] != obj)
        fill = pixels[b][:, outside].mean(dim=1)  # the mean colour outside the object group
        image = torch.where(outside[None], fill[:, None, None], pixels[b])
        masked.append((image, shape))
    if not rows:
        print("no scene has both an object group and a background group: nothing to compare")
        return
    with torch.no_grad():
        embeds = model.encode_image(normalize(torch.stack([m for m, _ in masked])))
    alone = [(int(i) + 1 == shape) for i, (_, shape) in zip((embeds @ shapes.t()).argmax(dim=-1), masked,
                                                           strict=True)]
    r = np.array(rows)
    print(f"{len(rows)} of {len(scenes)} scenes have an object group and a background group")
    print(f"prompt winner: the object group scores its own shape higher than the background group in "
          f"{100 * r[:, 0].mean():.1f} % of them")
    print(f"global read-out: cosine with the image embedding, object group {r[:, 1].mean():.3f}, background group "
          f"{r[:, 2].mean():.3f}")
    print(f"confidence (best shape score Q): object group {r[:, 5].mean():.3f}, background group {r[:, 6].mean():.3f}; "
          f"the background group is the more confident (and takes the shape name) in {100 * r[:, 7].mean():.1f} %")
    print(f"pooled share in the last grouping block: object group {r[:, 3].mean():.3f}, background group "
          f"{r[:, 4].mean():.3f}")
    print(f"object pixels alone: the image embedding names the object's shape in {100 * np.mean(alone):.1f} % "
          f"(chance {100 / (len(THING_CLASSES) - 1):.1f} %)")


if __name__ == "__main__":
    main()
