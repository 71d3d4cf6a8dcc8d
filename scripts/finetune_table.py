"""The fine-tuning table of docs/fine-tuning.md: synthetic-small fine-tuned to scenes with diamonds and hexagons.

Four runs of the same budget (``configs/finetune-synthetic-extended.yaml``: 2 epochs of 20,000 scenes, 312
steps of 128) — everything trainable, the group tokens only, the vision tower only, and the same budget from
scratch (the synthetic-affinity recipe's own learning rate) — then ``groupvit demo`` on the report seed for
the new vocabulary (eight shapes, ``--shapes extended``) and the old one (six shapes: forgetting), and the
bundled model before fine-tuning. Runs resume (``--resume auto``); finished ones are not repeated.

Usage (from the repository root; about 45 minutes on 2 cores with AVX-512 BF16)::

    python scripts/finetune_table.py [--seed 2027] [--num 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CONFIG = "configs/finetune-synthetic-extended.yaml"
DATA = Path("data/synth64-ext")
RUNS = {  # name: overrides of CONFIG
    "all": ["train.trainable=all"],
    "group-tokens": ["train.trainable=group-tokens"],
    "vision": ["train.trainable=vision"],
    "scratch": ["model.init=null", "model.preset=synthetic", "train.base_lr=0.032", "train.warmup_epochs=0.2"],
}


def run(command: list[str]) -> str:
    """Run a command (output shown as it goes), return its stdout."""
    print("$", " ".join(command), flush=True)
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    print(proc.stdout, flush=True)
    return proc.stdout


def score(weights: str, shapes: str, seed: int, num: int) -> dict[str, float]:
    """``groupvit demo``'s numbers (best-group rule) and the new shapes' own IoU, all in percent.

    Keys: ``all``, ``held-out`` (mIoU), ``oracle`` (group oracle on all pairs), and with ``shapes="extended"``
    ``diamond`` and ``hexagon`` (IoU of each on all pairs).
    """
    from groupvit.commands.demo import synthetic_segmenter
    from groupvit.data.synthetic import EXTENDED_THING_CLASSES, SHAPE_SETS, SceneGenerator
    from groupvit.evaluate.miou import IoUAccumulator, group_oracle_labels
    from groupvit.weights import load_pretrained

    model = load_pretrained(weights)
    size = model.config.vision.image_size
    segmenter, table = synthetic_segmenter(model, "best-group", 0.95, size, shapes=shapes)
    classes = len(SHAPE_SETS[shapes]) + 1
    result: dict[str, float] = {}
    for split, name in (("eval-all", "all"), ("eval-heldout", "held-out")):
        generator = SceneGenerator(image_size=size, seed=seed, split=split, shapes=shapes)
        scenes = [generator.sample(i) for i in range(num)]
        iou, oracle = IoUAccumulator(classes), IoUAccumulator(classes)
        for scene, out in zip(scenes, segmenter([s.image for s in scenes]), strict=True):
            iou.update(table[out.labels], scene.labels)
            oracle.update(group_oracle_labels(out.group_maps[-1], scene.labels), scene.labels)
        metrics = iou.compute()
        result[name] = 100 * metrics.miou
        if split == "eval-all":
            result["oracle"] = 100 * oracle.compute().miou
            for shape in SHAPE_SETS[shapes][6:]:
                result[shape] = 100 * float(metrics.iou[EXTENDED_THING_CLASSES.index(shape)])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2027, help="scene seed of the evaluation (default 2027)")
    parser.add_argument("--num", type=int, default=200, help="scenes per split (default 200)")
    parser.add_argument("--out", default="output/finetune-table", help="runs, pictures and results.json")
    args = parser.parse_args()
    out = Path(args.out)
    if not DATA.is_dir():
        run(["groupvit", "synth", "train", str(DATA), "--num", "20000", "--size", "64", "--twins", "--shapes",
             "extended", "--seed", "5", "--shard-size", "2000", "--workers", "2", "--quiet"])
    weights = {"before (synthetic-small)": "synthetic-small"}
    for name, overrides in RUNS.items():
        output = out / name
        run(["groupvit", "train", "--config", CONFIG, "--output", str(output), "--resume", "auto",
             "train.progress=false", *overrides])
        weights[name] = str(output / "latest.pt")
    results = {}
    for name, source in weights.items():
        results[name] = {shapes: score(source, shapes, args.seed, args.num) for shapes in ("extended", "standard")}
        (out / "results.json").write_text(json.dumps(results, indent=1))
    for name in ("before (synthetic-small)", "all"):  # contact sheets of the new vocabulary
        run(["groupvit", "demo", "--weights", weights[name], "--shapes", "extended", "--seed", str(args.seed),
             "--num", "8", "--show", "8", "--out", str(out / "demo" / name.split()[0])])
    print("| start, train.trainable | new vocabulary (8 shapes): mIoU all / held-out | diamond / hexagon IoU | "
          "group oracle | old vocabulary (6 shapes): mIoU all / held-out |")
    print("|---|---|---|---|---|")
    for name, scores in results.items():
        new, old = scores["extended"], scores["standard"]
        print(f"| {name} | {new['all']:.1f} / {new['held-out']:.1f} | {new['diamond']:.1f} / {new['hexagon']:.1f} | "
              f"{new['oracle']:.1f} | {old['all']:.1f} / {old['held-out']:.1f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
