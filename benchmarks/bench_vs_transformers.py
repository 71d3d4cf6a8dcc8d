"""Side-by-side CPU benchmark: our GroupViT against ``transformers.GroupViTModel`` with the same weights.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_vs_transformers.py            # writes BENCHMARKS.md

Method: both models live in one process and their steps alternate run by run (A B, B A, ...), so
both see the same machine load; each phase has ``--warmup`` untimed runs then ``--runs`` timed ones
and reports the median. Peak memory is measured separately, one fresh subprocess per workload and
implementation: after the model is built the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``),
then the warm-up runs and one more run execute; the table gives that peak and its increase over the
resident size just before the first run. The CPU time other processes took during each round is
recorded from ``/proc/stat``: on a shared host, trust a run only where it is small, or pass
``--wait-quiet SECONDS`` to re-run the rounds they disturbed.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import machine
import torch
import workloads
from torch.utils.flop_counter import FlopCounterMode

import groupvit

REPO = Path(__file__).resolve().parent.parent
# Process CPU time is immune to time slices lost to other processes, but with several threads it
# also counts their spin-waiting: it is offered for single-threaded runs only.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def markers(args: argparse.Namespace) -> tuple[str, str]:
    """Start and end lines of the generated block; one block per clock, thread count and CPU kind."""
    tag = f"{args.clock}-{args.threads}t-{machine.cpu_kind()}"
    return f"<!-- results:{tag}:start -->", f"<!-- results:{tag}:end -->"

# Other tenants using more than this many cores during a phase make its numbers suspect.
BUSY_CORES = 0.25


@dataclass
class Timing:
    """Wall-clock seconds of each timed run."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


@dataclass
class PhaseResult:
    """Timings of every variant of a phase, and the machine's load meanwhile."""

    timings: dict[str, Timing]
    share: machine.CpuShare
    load_before: float | None
    discarded: int
    flops: dict[str, int]


@dataclass
class Memory:
    """Peak RSS of one workload in a fresh process (MiB) and its increase over the RSS before the first run."""

    peak_mib: float
    before_mib: float | None
    method: str

    @property
    def increase_mib(self) -> float | None:
        return None if self.before_mib is None else self.peak_mib - self.before_mib


@dataclass
class Results:
    args: argparse.Namespace
    phases: dict[str, PhaseResult] = field(default_factory=dict)
    memory: dict[tuple[str, str], Memory] = field(default_factory=dict)
    matmul: list[machine.MatmulRate] = field(default_factory=list)
    parity: float | None = None
    load_average: list[tuple[float, float, float] | None] = field(default_factory=list)
    elapsed_s: float = 0.0


# --- measuring -----------------------------------------------------------------------------------------


def time_interleaved(
    steps: dict[str, workloads.Step], warmup: int, runs: int, wait_s: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, Timing], machine.CpuShare, int]:
    """Run the steps in turn (order reversed every other round): ``warmup`` untimed rounds, ``runs`` timed ones.

    With ``wait_s > 0`` a round during which other processes took more than ``BUSY_CORES`` is thrown
    away and re-run after waiting (up to ``wait_s``) for them to go idle and one untimed call of each
    step, at most ``runs`` times.
    ``clock`` gives the seconds (wall clock, or process CPU time for single-threaded runs).
    Returns the timings, the CPU share over the kept rounds and the number of rounds thrown away.
    """
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    shares: list[machine.CpuShare] = []
    discarded = 0
    while len(shares) < runs:
        round_times = {}
        with machine.cpu_share() as share:
            for name in names if len(shares) % 2 == 0 else reversed(names):
                start = clock()
                steps[name]()
                round_times[name] = clock() - start
        other = share[0].other_cores
        if wait_s > 0 and other is not None and other > BUSY_CORES and discarded < runs:
            discarded += 1
            machine.wait_for_quiet(wait_s)
            # After idling, the first call pays for waking the worker threads: warm them again.
            for name in names:
                steps[name]()
            continue
        shares.append(share[0])
        for name, seconds in round_times.items():
            times[name].append(seconds)
    wall = sum(s.wall_s for s in shares)
    own = sum(s.own_cores * s.wall_s for s in shares) / wall
    others = [s.other_cores for s in shares]
    other = None if None in others else sum(o * s.wall_s for o, s in zip(others, shares, strict=True)) / wall
    return {name: Timing(t) for name, t in times.items()}, machine.CpuShare(wall, own, other), discarded


def _sdpa_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
               **kwargs: Any) -> int:
    """``q kᵀ`` and ``p v``: 2 FLOP per multiply-add (torch has no formula for the CPU kernel)."""
    b, h, lq, d = query_shape
    return 2 * b * h * lq * key_shape[2] * (d + value_shape[3])


def _sdpa_backward_flop(grad_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                        out_shape: Any = None, **kwargs: Any) -> int:
    """Backward: ``q kᵀ`` recomputed, then ``dv``, ``dp``, ``dq``, ``dk``."""
    b, h, lq, d = query_shape
    return 2 * b * h * lq * key_shape[2] * (3 * d + 2 * value_shape[3])


def count_flops(step: workloads.Step) -> int:
    """Matrix-multiply, convolution and attention FLOPs of one call of ``step`` (``FlopCounterMode``)."""
    ops = torch.ops.aten
    mapping = {ops._scaled_dot_product_flash_attention_for_cpu: _sdpa_flop,
               ops._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        step()
    return counter.get_total_flops()


def run_phase(key: str, models: dict[str, Any], args: argparse.Namespace) -> PhaseResult:
    phase = workloads.phase(key)
    steps = {label: factory(models[impl]) for label, (impl, factory) in phase.variants.items()}
    load = machine.wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else machine.other_load(0.5)
    flops = {label: count_flops(step) for label, step in steps.items()}
    gc.collect()
    timings, share, discarded = time_interleaved(steps, args.warmup, args.runs, args.wait_quiet, CLOCKS[args.clock])
    return PhaseResult(timings, share, load, discarded, flops)


def memory_child(args: argparse.Namespace) -> None:
    """Subprocess entry: peak memory of one workload variant, printed as JSON."""
    key, label = args.memory_child
    impl, factory = workloads.phase(key).variants[label]
    model = workloads.build_ours() if impl == workloads.OURS else workloads.load_reference(args.weights)
    step = factory(model)
    gc.collect()
    reset = machine.reset_peak_rss()
    before = machine.rss_mib() if reset else None
    for _ in range(args.warmup + 1):
        step()
    method = "VmHWM after reset" if reset else "ru_maxrss (whole process, no reset)"
    print(json.dumps({"peak_mib": machine.peak_rss_mib(), "before_mib": before, "method": method}))


def measure_memory(key: str, label: str, weights: str, args: argparse.Namespace) -> Memory:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", key, label, "--weights", weights,
               "--threads", str(args.threads), "--warmup", str(args.warmup)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Memory(data["peak_mib"], data["before_mib"], data["method"])


# --- report --------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def _versions() -> str:
    import transformers

    return (f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"groupvit {groupvit.__version__}")


def render(results: Results) -> str:
    args = results.args
    flags = machine.cpu_flags()
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags) or "n/a"
    memory = machine.total_memory_gib()
    start, end = markers(args)
    lines = [
        start,
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC in {results.elapsed_s:.0f} s.",
        "",
        f"* Machine: {machine.cpu_model()} ({isa}), {machine.usable_cores()} usable cores"
        + (f", {memory:.0f} GiB RAM" if memory else "") + "; no GPU.",
        f"* Software: {_versions()}; `torch.get_num_threads() = {args.threads}`.",
        f"* Command: `{args.command}`",
        f"* Runs: {args.warmup} warm-up + {args.runs} timed per variant, interleaved; medians (best in brackets) of "
        + ("wall-clock time." if args.clock == "wall" else "process CPU time (one thread)."),
        f"* Weights: random, `groupvit.create_model(\"{workloads.PRESET}\")` → `save_pretrained` → "
        "`transformers.GroupViTModel.from_pretrained`; image embeddings of the two agree to "
        + (f"{results.parity:.1e}" if results.parity is not None else "n/a") + " (max abs).",
    ]
    if results.load_average:
        lines.append("* Load average (1/5/15 min) before / after: "
                     + " / ".join("n/a" if la is None else ", ".join(f"{v:.2f}" for v in la)
                                  for la in results.load_average) + ".")
    lines += ["", "### Speed", "",
              "| workload | ours | transformers | speed-up | target | CPU (ours+ref / others) | discarded |",
              "|---|---|---|---|---|---|---|"]
    for row in workloads.ROWS:
        res = results.phases.get(row.phase)
        if res is None:
            continue
        ours, ref = res.timings[row.ours], res.timings[row.reference]
        ratio = ref.median / ours.median
        target = "—" if row.target is None else f"≥ {row.target:.2f}× {'met' if ratio >= row.target else 'missed'}"
        other = "n/a" if res.share.other_cores is None else f"{res.share.other_cores:.2f}"
        busy = (" ⚠" if args.clock == "wall" and res.share.other_cores is not None
                and res.share.other_cores > BUSY_CORES else "")
        lines.append(f"| {row.title} | {_ms(ours.median)} ({_ms(ours.best)}) | {_ms(ref.median)} ({_ms(ref.best)}) "
                     f"| **{ratio:.2f}×** | {target} | {res.share.own_cores:.2f} / {other}{busy} "
                     f"| {res.discarded} |")
    lines += ["", "CPU column: cores used by this process / by other processes during the kept rounds"
              + (f" (⚠ above {BUSY_CORES} cores: the host was shared, treat that row with care)"
                 if args.clock == "wall" else "") + ". Discarded: timed rounds thrown away and re-run because "
              "other processes were busy (`--wait-quiet`)."]

    if results.matmul:
        rate = max(m.median_gflops for m in results.matmul)
        lines += ["", "### Achieved throughput", "",
                  "Machine rate: fp32 `torch.mm` of two "
                  f"{results.matmul[0].n}×{results.matmul[0].n} matrices, median "
                  + " / ".join(f"{m.median_gflops:.0f} (best {m.best_gflops:.0f})" for m in results.matmul)
                  + f" GFLOP/s at the start / end of the run; the higher median, {rate:.0f} GFLOP/s, is the reference. "
                  "FLOPs of one call counted with `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolution "
                  "and attention, forward and backward; normalisation, activations and the optimiser not counted), "
                  "divided by the median time.", "",
                  "| workload | ours GFLOP | GFLOP/s | % of mm rate | transformers GFLOP | GFLOP/s | % of mm rate |",
                  "|---|---|---|---|---|---|---|"]
        for row in workloads.ROWS:
            res = results.phases.get(row.phase)
            if res is None:
                continue
            cells = []
            for label in (row.ours, row.reference):
                gflop = res.flops[label] / 1e9
                achieved = gflop / res.timings[label].median
                cells.append(f"{gflop:.1f} | {achieved:.0f} | {100 * achieved / rate:.0f} %")
            lines.append(f"| {row.title} | {cells[0]} | {cells[1]} |")

    if results.memory:
        method = next(iter(results.memory.values())).method
        lines += ["", "### Peak memory", "",
                  f"One fresh process per workload and implementation; peak RSS ({method}) over the warm-up runs "
                  "and one more, and its increase over the RSS just before the first run (model already built; "
                  "for training the AdamW state is part of the increase).", "",
                  "| workload | ours peak (increase) | transformers peak (increase) |", "|---|---|---|"]
        for row in workloads.ROWS:
            ours, ref = results.memory.get((row.phase, row.ours)), results.memory.get((row.phase, row.reference))
            if ours is None or ref is None:
                continue

            def cell(m: Memory) -> str:
                inc = "" if m.increase_mib is None else f" (+{m.increase_mib:,.0f})"
                return f"{m.peak_mib:,.0f} MiB{inc}"

            lines.append(f"| {row.title} | {cell(ours)} | {cell(ref)} |")
    lines.append(end)
    return "\n".join(lines) + "\n"


def write_report(text: str, path: Path, args: argparse.Namespace) -> None:
    """Replace this configuration's block of ``path`` (between its markers), else append the block."""
    start, end = markers(args)
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in current and end in current:
        head, rest = current.split(start, 1)
        path.write_text(head + text.rstrip("\n") + rest.split(end, 1)[1])
    else:
        path.write_text(current.rstrip("\n") + "\n\n" + text)


# --- driver --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per variant (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: usable cores)")
    parser.add_argument("--phases", default=",".join(p.key for p in workloads.PHASES),
                        help="comma-separated subset of " + ", ".join(p.key for p in workloads.PHASES))
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall (default) or cpu: process CPU time, for --threads 1 on a busy shared host")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="on a shared host: before each phase wait up to this long for other processes to go "
                             "idle, and re-run timed rounds during which they were busy (default 0: off)")
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"), help="report file ('-': print only)")
    parser.add_argument("--memory-child", nargs=2, metavar=("PHASE", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.threads = args.threads or machine.usable_cores()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (CPU time of several threads includes their spin-waiting)")
    args.command = "python benchmarks/bench_vs_transformers.py" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    keys = [p.key for p in workloads.PHASES if p.key in args.phases.split(",")]
    started = time.perf_counter()
    results = Results(args, load_average=[machine.load_average()])
    print(f"{machine.cpu_model()}, {args.threads} threads; other load {machine.other_load(1.0)} cores", flush=True)
    with tempfile.TemporaryDirectory() as weights:
        ours = workloads.build_ours()
        ours.save_pretrained(weights)
        models = {workloads.OURS: ours, workloads.REFERENCE: workloads.load_reference(weights)}
        check = workloads.images(2, 224, seed=5)
        with torch.no_grad():
            results.parity = float((ours.encode_image(check)
                                    - torch.nn.functional.normalize(
                                        models[workloads.REFERENCE].get_image_features(pixel_values=check)
                                        .pooler_output, dim=-1)).abs().max())
        results.matmul.append(machine.matmul_rate(clock=CLOCKS[args.clock]))
        for key in keys:  # training is last: it changes the weights
            results.phases[key] = res = run_phase(key, models, args)
            summary = ", ".join(f"{label} {_ms(t.median)}" for label, t in res.timings.items())
            print(f"{key}: {summary}; other processes {res.share.other_cores} cores, "
                  f"{res.discarded} rounds discarded", flush=True)
        results.matmul.append(machine.matmul_rate(clock=CLOCKS[args.clock]))
        del models, ours
        gc.collect()
        if not args.no_memory:
            for key in keys:
                for label in workloads.phase(key).variants:
                    results.memory[(key, label)] = mem = measure_memory(key, label, weights, args)
                    print(f"memory {key} / {label}: peak {mem.peak_mib:.0f} MiB, +{mem.increase_mib} MiB", flush=True)
    results.load_average.append(machine.load_average())
    results.elapsed_s = time.perf_counter() - started
    report = render(results)
    print(report)
    if args.output != "-":
        write_report(report, Path(args.output), args)


if __name__ == "__main__":
    main()
