"""The paper's ablations on the synthetic scenes, each trained with the same budget.

Every variant is the synthetic-scenes recipe (``configs/synthetic.yaml``) with a few overrides,
trained with ``groupvit train`` for the same number of epochs, then scored zero-shot on the
``eval-all`` and ``eval-heldout`` scenes (mIoU over background + 6 shapes). Writes a Markdown table and
a bar plot. Usage::

    python scripts/ablations.py --epochs 3 --out docs/ablations          # hours on a 2-core CPU
    python scripts/ablations.py --epochs 1 --limit-batches 2 --out /tmp/a # a smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import groupvit
from groupvit.data.benchmarks import voc_layout
from groupvit.evaluate.miou import evaluate_segmentation

# name -> (what it tests, overrides of the base config)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("hard assignment, max-group multi-label, conv stem, 2 stages, 16 -> 4 groups", []),
    "soft-assignment": ("soft instead of hard (Gumbel) assignment",
                        ["model.vision.hard_assignment=false", "model.vision.gumbel=false"]),
    "no-multi-label": ("image-text loss only", ["model.multi_label=0"]),
    "image-pooling": ("multi-label prompts scored against the image embedding (official)",
                      ["train.multi_label_pooling=image"]),
    "patch-stem": ("one 8x8 patch convolution instead of the convolutional stem", ["model.vision.stem=patch"]),
    "one-stage": ("one grouping stage (4 groups)",
                  ["model.vision.depths=[3,3]", "model.vision.num_heads=[4,4]", "model.vision.num_group_tokens=[4,0]",
                   "model.vision.num_output_groups=[4]"]),
    "groups-16-8": ("16 -> 8 group tokens", ["model.vision.num_group_tokens=[16,8,0]",
                                             "model.vision.num_output_groups=[16,8]"]),
    "groups-32-8": ("32 -> 8 group tokens", ["model.vision.num_group_tokens=[32,8,0]",
                                             "model.vision.num_output_groups=[32,8]"]),
    "groups-64-8": ("64 -> 8 group tokens", ["model.vision.num_group_tokens=[64,8,0]",
                                             "model.vision.num_output_groups=[64,8]"]),
    "no-grouping-vit": ("plain ViT of the same depth scoring patch tokens",
                        ["model.vision.depths=[6]", "model.vision.num_heads=[4]", "model.vision.num_group_tokens=[0]",
                         "model.vision.num_output_groups=[]"]),
}


def train(name: str, overrides: list[str], args: argparse.Namespace) -> Path:
    output = Path(args.out) / name
    command = [sys.executable, "-m", "groupvit.cli", "train", "--config", args.config, f"train.epochs={args.epochs}",
               f"train.output={output}", "evaluate.hooks=[]", "evaluate.best_metric=null", *overrides]
    if args.limit_batches:
        command.append(f"data.sources.0.length={args.limit_batches * 128}")
    subprocess.run(command, check=True)
    return output / "latest.pt"


def score(weights: Path, root: str, limit: int | None) -> float:
    model = groupvit.load_pretrained(weights)
    data = voc_layout(root)
    size = model.config.vision.image_size
    segmenter = groupvit.Segmenter(model, data.class_names, bg_thresh=data.bg_thresh, mode="whole",
                                   short_side=size, window=size, stride=size)
    return 100 * evaluate_segmentation(segmenter, data, limit=limit, progress=False).metrics.miou


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["variant"] for row in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar([i - 0.2 for i in x], [row["miou_all"] for row in rows], 0.4, label="all pairs")
    ax.bar([i + 0.2 for i in x], [row["miou_heldout"] for row in rows], 0.4, label="held-out pairs")
    ax.set_xticks(list(x), names, rotation=20, ha="right")
    ax.set_ylabel("zero-shot mIoU (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--epochs", type=int, default=3, help="training budget of every variant")
    parser.add_argument("--eval-all", default="data/eval64-all")
    parser.add_argument("--eval-heldout", default="data/eval64-heldout")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only this many scenes per split")
    parser.add_argument("--limit-batches", type=int, default=0, help="smoke runs: batches per epoch")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants")
    parser.add_argument("--out", default="docs/ablations")
    args = parser.parse_args()
    if importlib.util.find_spec("matplotlib") is None:  # checked before hours of training, not after
        parser.error("the plot needs matplotlib: pip install -e '.[plots]'")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (what, overrides) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        weights = train(name, overrides, args)
        rows.append({"variant": name, "what": what, "miou_all": score(weights, args.eval_all, args.limit),
                     "miou_heldout": score(weights, args.eval_heldout, args.limit)})
        print(json.dumps(rows[-1]), flush=True)
    lines = [f"Budget: {args.epochs} epochs each (`{' '.join(sys.argv)}`).", "",
             "| variant | what | mIoU all | mIoU held-out |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['what']} | {r['miou_all']:.1f} | {r['miou_heldout']:.1f} |" for r in rows]
    (out / "ablations.md").write_text("\n".join(lines) + "\n")
    (out / "ablations.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, out / "ablations.png")
    print(f"wrote {out}/ablations.md, ablations.json, ablations.png")


if __name__ == "__main__":
    main()
