"""Screen group objectives cheaply: the synthetic recipe to step N on several data seeds, then grouping health.

Each variant is ``configs/synthetic.yaml`` with a few overrides, trained with ``groupvit train`` to
``train.max_steps`` (the schedule of the full run, stopped there; ``--resume auto``, so a killed screen
continues and a finished one is skipped), for each data seed (``data.seed``: the order of shards and
samples, augmentation and prompt draws). The training log carries the grouping hook every 100 steps; at the
end ``groupvit groups --synthetic 64 --seed 11`` scores the last checkpoint (patch-level group oracle on the
choice seed). Prints a Markdown table and writes it with the numbers as JSON. Usage::

    python scripts/screen_grouping.py --variants recipe affinity --seeds 0 1 --steps 300 --out output/screens
    python scripts/screen_grouping.py --variants affinity --amp bf16 --out output/screens   # bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# name -> overrides of configs/synthetic.yaml
VARIANTS: dict[str, list[str]] = {
    "recipe": [],
    "affinity": ["train.group_objectives={affinity: 1.0}"],
    "anti-copy": ["train.group_objectives={anti_copy: 1.0}"],
    "prototype": ["train.group_objectives={prototype: 1.0}"],
    "mix": ["train.group_objectives={mix: 1.0}"],
    "affinity+anti-copy": ["train.group_objectives={affinity: 1.0, anti_copy: 1.0}"],
    "affinity+prototype": ["train.group_objectives={affinity: 1.0, prototype: 1.0}"],
    "affinity+mix": ["train.group_objectives={affinity: 1.0, mix: 1.0}"],
    "affinity+phrases": ["train.group_objectives={affinity: 1.0}", "data.prompt_phrases=true"],
    "affinity+pooled": ["train.group_objectives={affinity: 1.0}", "model.vision.group_residual=false"],
}


def _groups(weights: Path, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "groupvit.cli", "groups", "--weights", str(weights), "--synthetic", "64",
                    "--seed", "11", "--json", str(out)], check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def _curve(log: Path) -> dict[int, float]:
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return {r["step"]: r["grp_oracle"] for r in records if r.get("kind") == "eval" and "grp_oracle" in r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["recipe", "affinity"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--out", default="output/screens")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"],
                        help="train.amp of every run; bf16 runs are named VARIANT-bf16")
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    table_file = root / "screens.json"
    rows = json.loads(table_file.read_text()) if table_file.is_file() else []  # earlier screens stay in the table
    for variant in args.variants:
        name = variant if args.amp == "none" else f"{variant}-{args.amp}"
        for seed in args.seeds:
            run = root / f"{name}-seed{seed}"
            command = [sys.executable, "-m", "groupvit.cli", "train", "--config", args.config, "--output", str(run),
                       "--resume", "auto", f"train.max_steps={args.steps}", f"data.seed={seed}",
                       f"train.amp={args.amp}", *VARIANTS[variant]]
            print("$", " ".join(command), flush=True)
            subprocess.run(command, check=True)
            health = _groups(run / "latest.pt", run / f"groups-{args.steps}.json")
            rows = [r for r in rows if (r["variant"], r["seed"], r["steps"]) != (name, seed, args.steps)]
            rows.append({"variant": name, "seed": seed, "steps": args.steps,
                         "curve": {str(k): v for k, v in _curve(run / "log.jsonl").items()}, **health})
            table_file.write_text(json.dumps(rows, indent=2) + "\n")
    header = ["variant", "data seed", "steps", "oracle at 100 / 200 / last (hook)", "oracle at the end",
              "final groups", "stage-2 copies", "object groups named right", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for r in rows:
        curve = " / ".join(f"{r['curve'][str(s)]:.1f}" if str(s) in r["curve"] else "-"
                           for s in (100, 200, r["steps"]))
        cells = [r["variant"], r["seed"], r["steps"], curve, f"{r['grp_oracle']:.1f}", f"{r['grp_final_used']:.2f}",
                 f"{r.get('grp_s2_copies', float('nan')):.0f} %", f"{r.get('grp_named', float('nan')):.0f} %",
                 r["verdict"].split(" (")[0]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    table = "\n".join(lines)
    (root / "screens.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
