"""The synthetic recipe's whole training loop against its bare step, this tree against a baseline commit.

Run from the repository root, with the synthetic scenes written (``configs/synthetic.yaml``) and nothing else
running (prints a Markdown block for BENCHMARKS.md)::

    PYTHONPATH=src python benchmarks/bench_train_loop.py [--baseline 66968a7] [--steps 50] [--threads 2]

For each version (the source tree of ``--baseline``, extracted with ``git archive``, and this one) and each
precision (fp32; bf16 autocast where the CPU computes it natively), in child processes with that version's
``src`` first on the path and its own ``configs``:

* **loop**: ``groupvit train --config configs/synthetic-affinity.yaml`` for ``--steps`` steps, logging every 10,
  evaluation hooks and checkpoints off, the recipe's one loader worker; images/s is the median of the logged
  windows after the first. This tree runs twice on a fresh cache folder: the first run tags every caption with
  spaCy ("cold"), the second reads the tags from the cache ("warm", every later epoch and run).
* **step**: the bare optimizer step (both towers, the recipe's loss and group objective, backward, clipping,
  AdamW) on one real batch of the same loader, median of ``--repeats`` steps after one warm-up; and the
  official architecture's step (``gcc-yfcc``, 8 random 224² images with the first 8 rows of that batch's texts).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import machine

RECIPE = "configs/synthetic-affinity.yaml"
LOOP_OVERRIDES = ["train.log_every=10", "train.eval_every=0", "train.ckpt_every=100000", "evaluate.hooks=[]",
                  "evaluate.at_epoch_end=false", "train.progress=false"]


def child_loop(args: argparse.Namespace) -> dict:
    """Run ``groupvit train`` in this process; the median images/s of the logged windows after the first."""
    from groupvit.cli import main as cli

    with tempfile.TemporaryDirectory() as out:
        status = cli(["train", "--config", args.recipe, "--threads", str(args.threads), f"train.amp={args.amp}",
                      f"train.max_steps={args.steps}", f"train.output={out}", *LOOP_OVERRIDES])
        if status:
            raise SystemExit(f"groupvit train exited with {status}")
        records = [json.loads(line) for line in Path(out, "log.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records if r.get("kind") == "train"][1:]
    return {"images_per_s": statistics.median(rates), "windows": [round(r, 1) for r in rates]}


def _step_seconds(model, config, images, texts, words, amp: str, repeats: int) -> float:
    import torch

    from groupvit.train.losses import ContrastiveObjective
    from groupvit.train.optim import build_optimizer

    t = config.train if config is not None else None
    objective = (ContrastiveObjective(model, t.multi_label_loss_weight, t.multi_label_pooling, t.group_objectives)
                 if t is not None else ContrastiveObjective(model))
    optimizer = build_optimizer(model, 1e-4)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=amp == "bf16"):
            out = objective(images, texts, words)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def child_step(args: argparse.Namespace) -> dict:
    """Bare steps of the recipe on a real loader batch and of the official architecture."""
    import torch

    import groupvit
    from groupvit.data.loader import DataConfig, build_train_loader
    from groupvit.model.groupvit import GroupViT
    from groupvit.train.config import load_config

    torch.set_num_threads(args.threads)
    config = load_config(args.recipe, ["data.num_workers=0"])
    batch = next(iter(build_train_loader(DataConfig.from_dict(dict(config.data_config())), epoch=0)))
    words = batch["prompt_words"] if config.train.multi_label_targets == "words" else None
    torch.manual_seed(0)
    model = GroupViT(config.model_config()).train()
    recipe = _step_seconds(model, config, batch["images"], batch["texts"], words, args.amp, args.repeats)
    official = groupvit.create_model("gcc-yfcc").train()
    images = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    texts = batch["texts"][:8, :1 + official.config.multi_label]
    gcc = _step_seconds(official, None, images, texts, None, args.amp, max(2, args.repeats // 2))
    return {"recipe_images_per_s": 128 / recipe, "recipe_s": recipe, "gcc_s": gcc}


def run_child(src: Path, kind: str, amp: str, args: argparse.Namespace, cache: Path) -> dict:
    """One measurement in a fresh interpreter with ``src`` first on the path and its version of the recipe
    (``src/../configs``); its JSON result."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{Path(__file__).parent}", "GROUPVIT_CACHE": str(cache)}
    recipe = src.parent / RECIPE
    command = [sys.executable, __file__, "--child", kind, "--amp", amp, "--threads", str(args.threads),
               "--recipe", str(recipe),
               "--steps", str(args.steps), "--repeats", str(args.repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{kind} {amp} with {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def extract(ref: str, into: Path) -> Path:
    """The ``src`` and ``configs`` trees of git ``ref`` under ``into``; the path of its ``src``."""
    archive = subprocess.run(["git", "archive", ref, "src", "configs"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="66968a7", help="git commit measured as 'before'")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=6, help="bare steps measured per set-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["loop", "step"], help=argparse.SUPPRESS)
    parser.add_argument("--amp", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", default=RECIPE, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = (child_loop if args.child == "loop" else child_step)(args)
        print(json.dumps(result))
        return

    from groupvit.precision import bf16_native

    amps = ["none", "bf16"] if bf16_native("cpu") else ["none"]
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        versions = {f"before ({args.baseline})": extract(args.baseline, Path(tmp, "baseline")),
                    "after (this tree)": Path("src").resolve()}
        for amp in amps:
            for name, src in versions.items():
                cache = Path(tmp, f"cache-{amp}-{len(rows)}")
                step = run_child(src, "step", amp, args, cache)
                cold = run_child(src, "loop", amp, args, cache)
                warm = run_child(src, "loop", amp, args, cache) if "after" in name else None
                rows.append((amp, name, step, cold, warm))
                print(f"{amp} {name}: step {step} loop {cold} warm {warm}", file=sys.stderr)
    flags = machine.cpu_flags()
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags)
    lines = [
        "## Training loop against its bare step (synthetic recipe)", "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in "
        f"{time.perf_counter() - start:.0f} s.", "",
        f"* Machine: {machine.cpu_model()} ({isa or 'n/a'}), {machine.usable_cores()} usable cores.",
        f"* Software: Python {platform.python_version()}; {args.threads} threads.",
        f"* Command: `PYTHONPATH=src python benchmarks/bench_train_loop.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"* Loop: `groupvit train --config {RECIPE}`, {args.steps} steps, median images/s of the 10-step windows "
        "after the first (hooks and checkpoints off); cold: fresh cache folder, warm: the same run again.",
        f"* Step: median of {args.repeats} optimizer steps on one real batch of the same loader.", "",
        "| precision | version | bare step, recipe | loop, cold | loop, warm | loop / step | "
        "bare step, gcc-yfcc (batch 8, 224²) |",
        "|---|---|---|---|---|---|---|",
    ]
    for amp, name, step, cold, warm in rows:
        steady = (warm or cold)["images_per_s"]
        lines.append(
            f"| {'bf16' if amp == 'bf16' else 'fp32'} | {name} | {step['recipe_images_per_s']:.0f} img/s "
            f"({step['recipe_s']:.2f} s) | {cold['images_per_s']:.0f} img/s | "
            f"{f'{steady:.0f} img/s' if warm else '(no cache)'} | {steady / step['recipe_images_per_s']:.0%} | "
            f"{step['gcc_s']:.2f} s |"
        )
    for amp in amps:
        before, after = [r for r in rows if r[0] == amp]
        step_gain = after[2]["recipe_images_per_s"] / before[2]["recipe_images_per_s"]
        warm_gain = (after[4] or after[3])["images_per_s"] / before[3]["images_per_s"]
        cold_gain = after[3]["images_per_s"] / before[3]["images_per_s"]
        lines.append(
            f"\n{'bf16' if amp == 'bf16' else 'fp32'}: bare step {step_gain:.2f}× faster, loop {warm_gain:.2f}× "
            f"(warm) and {cold_gain:.2f}× (cold), gcc-yfcc step {before[2]['gcc_s'] / after[2]['gcc_s']:.2f}×."
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
