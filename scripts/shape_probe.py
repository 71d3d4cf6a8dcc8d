"""Learnability probe: can a vision tower learn *which shapes are present* from direct labels?

Trains the GroupViT vision tower of a preset (with a linear head on its pooled feature) and a small CNN
reference on the same synthetic scenes, with binary cross-entropy on the shape-presence vector, and scores
both on fresh ``eval-all`` scenes:

* ``top1``: the highest-scoring shape is present in the image (chance: the mean share of shapes present);
* per-shape accuracy of the present / absent decision at probability 0.5.

A tower that cannot learn shapes from labels will not learn them from captions, so this gates every
text-supervised run on the synthetic scenes. Usage::

    python scripts/shape_probe.py --preset synthetic --steps 400                 # both models
    python scripts/shape_probe.py --preset synthetic --set vision.stem=patch     # the patch stem instead
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from groupvit.config import apply_overrides, get_config
from groupvit.data.images import normalize
from groupvit.data.synthetic import SHAPES, SceneGenerator
from groupvit.model.vision import VisionEncoder


def make_scenes(count: int, size: int, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` scenes as normalised float images ``[N, 3, size, size]`` and presence labels ``[N, S]``."""
    generator = SceneGenerator(image_size=size, seed=seed, split=split)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.zeros((count, len(SHAPES)), dtype=np.float32)
    for i in tqdm(range(count), desc=f"{split} scenes", unit="img", leave=False):
        scene = generator.sample(i)
        images[i] = scene.image
        for obj in scene.objects:
            if obj.area > 0:
                labels[i, SHAPES.index(obj.shape)] = 1.0
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return normalize(pixels), torch.from_numpy(labels)


class TowerProbe(nn.Module):
    """GroupViT vision tower + linear head: ``[B, 3, H, W] -> [B, S]`` logits."""

    def __init__(self, tower: VisionEncoder, classes: int) -> None:
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(tower.cfg.width, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(images).pooled)


def small_cnn(classes: int) -> nn.Sequential:
    """Reference: four 3x3 conv + BatchNorm + ReLU + 2x2 max-pool blocks (32-64-96-128), global average."""
    layers: list[nn.Module] = []
    channels = 3
    for out in (32, 64, 96, 128):
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


@torch.no_grad()
def score(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> dict[str, float]:
    """top-1-present accuracy, mean per-shape accuracy and per-shape accuracy (in %)."""
    model.eval()
    logits = torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])
    model.train()
    top1 = labels.gather(1, logits.argmax(1, keepdim=True)).mean().item()
    per_shape = ((logits > 0).float() == labels).float().mean(0)
    result = {"top1": 100 * top1, "per_shape_mean": 100 * per_shape.mean().item()}
    result.update({shape: 100 * acc.item() for shape, acc in zip(SHAPES, per_shape, strict=True)})
    return result


def train(
    name: str, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], evaluation: tuple[torch.Tensor, torch.Tensor],
    args: argparse.Namespace,
) -> list[dict]:
    """AdamW with 10 % linear warm-up and cosine decay; scores every ``--eval-every`` steps."""
    images, labels = data
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    warmup = max(1, args.steps // 10)
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(args.seed)
    history, start, loss_sum = [], time.perf_counter(), 0.0
    for step in tqdm(range(1, args.steps + 1), desc=name, unit="step"):
        index = torch.randint(len(images), (args.batch,), generator=generator)
        loss = F.binary_cross_entropy_with_logits(model(images[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.item()
        if step % args.eval_every == 0 or step == args.steps:
            row = {"model": name, "step": step, "loss": loss_sum / args.eval_every,
                   "seconds": time.perf_counter() - start, **score(model, *evaluation)}
            loss_sum = 0.0
            tqdm.write(f"{name} step {step}: loss {row['loss']:.3f} top-1-present {row['top1']:.1f} %"
                       f" per-shape {row['per_shape_mean']:.1f} %")
            history.append(row)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="synthetic", help="model preset whose vision tower is probed")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the preset, e.g. vision.stem=patch (values as JSON)")
    parser.add_argument("--models", default="tower,cnn", help="comma list of tower, cnn (default both)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-scenes", type=int, default=12000)
    parser.add_argument("--eval-scenes", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="training scenes and batches")
    parser.add_argument("--eval-seed", type=int, default=1, help="evaluation scenes")
    parser.add_argument("--out", default=None, help="JSON file for the score history")
    args = parser.parse_args()

    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    config = apply_overrides(get_config(args.preset), overrides)
    size = config.vision.image_size
    torch.manual_seed(args.seed)
    data = make_scenes(args.train_scenes, size, args.seed, "train")
    evaluation = make_scenes(args.eval_scenes, size, args.eval_seed, "eval-all")
    chance = evaluation[1].mean().item() * 100
    print(f"{size} px scenes, {len(SHAPES)} shapes; chance top-1-present {chance:.1f} %, "
          f"always-absent per-shape {100 - chance:.1f} %; threads {torch.get_num_threads()}")
    history: list[dict] = []
    for name in args.models.split(","):
        model = TowerProbe(VisionEncoder(config.vision), len(SHAPES)) if name == "tower" else small_cnn(len(SHAPES))
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params / 1e6:.2f} M parameters")
        history += train(name, model, data, evaluation, args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "chance_top1": chance, "history": history}, f, indent=1)


if __name__ == "__main__":
    main()
