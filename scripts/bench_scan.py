"""Scanned against unrolled layers: step time, compile time and memory of the train step per remat policy.

For t5-bench and decoder-bench (docs/benchmarks.md) on one device, each variant (layers unrolled or
scanned, `remat_policy` none / dots_saveable / dots_with_no_batch_dims_saveable / full) is compiled
once, reporting compile seconds and XLA's per-device memory (`memory_analysis()`: arguments and
temporaries); then the variants' steps are timed interleaved, round by round, so that the ratios to
"unrolled, none" compare steps taken under the same load. The machine's float32 matmul rate and the
load average are measured before and after; a run whose matmul rate varies by more than
--max_matmul_spread writes nothing.

    python scripts/bench_scan.py [--configs t5-bench decoder-bench] [--batch_size 8] [--rounds 8]
writes results/bench_scan.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import bench_train_step as train_step  # noqa: E402

from littlehelp.benchmark import Benchmark, header_markdown, interleaved  # noqa: E402

VARIANTS = (  # (scan_layers, remat_policy); the first is the reference of the ratios
    (False, "none"),
    (True, "none"),
    (True, "dots_saveable"),
    (True, "dots_with_no_batch_dims_saveable"),
    (True, "full"),
    (False, "dots_saveable"),
)


def variant_name(scan: bool, remat: str) -> str:
    return f"{'scanned' if scan else 'unrolled'}, {remat}"


def compile_variants(name: str, batch_size: int) -> dict[str, train_step.CompiledStep]:
    """Every variant of config `name` compiled, in VARIANTS order."""
    base = train_step.CONFIGS[name]
    steps = {}
    for scan, remat in VARIANTS:
        config = dataclasses.replace(base, model=dict(base.model, scan_layers=scan, remat_policy=remat))
        steps[variant_name(scan, remat)] = step = train_step.compile_step(config, batch_size)
        print(f"{name} {variant_name(scan, remat)}: compiled in {step.compile_seconds:.1f}s", flush=True)
    return steps


def bench_config(name: str, batch_size: int, rounds: int, warmup: int) -> list[dict[str, Any]]:
    """One row per variant of config `name`: compile seconds, memory, median step seconds, ratio."""
    steps = compile_variants(name, batch_size)
    seconds = interleaved({variant: train_step.advance(step) for variant, step in steps.items()}, rounds, warmup)
    reference = statistics.median(next(iter(seconds.values())))
    rows = []
    for variant, step in steps.items():
        memory = step.compiled.memory_analysis()
        median = statistics.median(seconds[variant])
        rows.append(
            {
                "config": name,
                "batch_size": batch_size,
                "variant": variant,
                "compile_seconds": step.compile_seconds,
                "step_seconds": median,
                "step_seconds_all": seconds[variant],
                "ratio_to_unrolled_none": median / reference,
                "argument_bytes": memory.argument_size_in_bytes,
                "temp_bytes": memory.temp_size_in_bytes,
                "flops_per_step": step.objective.train_flops(step.spec),
            }
        )
        print(f"{name} {variant}: step {median:.3f}s ({median / reference:.2f}x)", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and writes the JSON and Markdown reports; returns the JSON content."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=list(train_step.DEFAULT_CONFIGS), choices=sorted(train_step.CONFIGS)
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--matmul_repeats", type=int, default=7)
    parser.add_argument("--max_matmul_spread", type=float, default=0.15)
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    args = parser.parse_args(argv)
    bench = Benchmark(
        __file__, argv, args.out_dir, train_step.MATMUL_SIZES, args.matmul_repeats, args.max_matmul_spread
    )
    rows = [
        row
        for name in bench.between(args.configs)
        for row in bench_config(name, args.batch_size, args.rounds, args.warmup)
    ]
    report = bench.report(vars(args), results=rows)
    bench.write(report, markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    lines = [
        "# Scanned against unrolled layers",
        "",
        header_markdown(report),
        "",
        "One device. Steps timed interleaved, round by round; the ratio is to the unrolled step without remat "
        "in the same rounds. Memory per device from XLA's memory_analysis().",
        "",
        "| config | batch | layers, remat_policy | compile s | arguments MB | temporaries MB | "
        "step s (median) | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['config']} | {r['batch_size']} | {r['variant']} | {r['compile_seconds']:.1f} | "
            f"{r['argument_bytes'] / 1e6:.0f} | {r['temp_bytes'] / 1e6:.0f} | {r['step_seconds']:.3f} | "
            f"{r['ratio_to_unrolled_none']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
