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
import re
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
MIOU = re.compile(r"(all|held-out) colour-shape pairs: mIoU\s+([\d.]+).*group oracle\s+([\d.]+)")


def run(command: list[str]) -> str:
    """Run a command (output shown as it goes), return its stdout."""
    print("$", " ".join(command), flush=True)
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    print(proc.stdout, flush=True)
    return proc.stdout


def demo(weights: str, shapes: str, seed: int, num: int, out: Path) -> dict[str, float]:
    """mIoU and group oracle on all / held-out pairs of one vocabulary."""
    text = run(["groupvit", "demo", "--weights", weights, "--shapes", shapes, "--seed", str(seed), "--num", str(num),
                "--out", str(out)])
    scores = {}
    for split, miou, oracle in MIOU.findall(text):
        scores[f"{split} mIoU"], scores[f"{split} oracle"] = float(miou), float(oracle)
    return scores


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
        results[name] = {shapes: demo(source, shapes, args.seed, args.num, out / "demo" / f"{name.split()[0]}-{shapes}")
                         for shapes in ("extended", "standard")}
        (out / "results.json").write_text(json.dumps(results, indent=1))
    print("| start, train.trainable | new vocabulary (8 shapes) all / held-out | its group oracle | "
          "old vocabulary (6 shapes) all / held-out: forgetting |")
    print("|---|---|---|---|")
    for name, scores in results.items():
        new, old = scores["extended"], scores["standard"]
        print(f"| {name} | {new['all mIoU']:.1f} / {new['held-out mIoU']:.1f} | {new['all oracle']:.1f} | "
              f"{old['all mIoU']:.1f} / {old['held-out mIoU']:.1f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
