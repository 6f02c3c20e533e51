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
import datetime
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import bench_train_step as train_step  # noqa: E402

RESULT_NAME = "bench_scan"
VARIANTS = (  # (scan_layers, remat_policy); the first is the reference of the ratios
    (False, "none"), (True, "none"), (True, "dots_saveable"), (True, "dots_with_no_batch_dims_saveable"),
    (True, "full"), (False, "dots_saveable"),
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


def time_interleaved(steps: dict[str, train_step.CompiledStep], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each variant's step, one step of every variant per round (after `warmup` rounds)."""
    import jax

    rng, seconds = jax.random.key(1), {name: [] for name in steps}
    for index in range(warmup + rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step.state, metrics = step.compiled(step.state, {}, step.batch, rng)
            jax.block_until_ready((step.state, metrics))
            if index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def bench_config(name: str, batch_size: int, rounds: int, warmup: int) -> list[dict[str, Any]]:
    """One row per variant of config `name`: compile seconds, memory, median step seconds, ratio."""
    steps = compile_variants(name, batch_size)
    seconds = time_interleaved(steps, rounds, warmup)
    reference = statistics.median(next(iter(seconds.values())))
    rows = []
    for variant, step in steps.items():
        memory = step.compiled.memory_analysis()
        median = statistics.median(seconds[variant])
        rows.append({"config": name, "batch_size": batch_size, "variant": variant,
                     "compile_seconds": step.compile_seconds, "step_seconds": median,
                     "step_seconds_all": seconds[variant], "ratio_to_unrolled_none": median / reference,
                     "argument_bytes": memory.argument_size_in_bytes, "temp_bytes": memory.temp_size_in_bytes,
                     "flops_per_step": step.objective.train_flops(step.spec)})
        print(f"{name} {variant}: step {median:.3f}s ({median / reference:.2f}x)", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and writes the JSON and Markdown reports; returns the JSON content."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(train_step.DEFAULT_CONFIGS),
                        choices=sorted(train_step.CONFIGS))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--matmul_repeats", type=int, default=7)
    parser.add_argument("--max_matmul_spread", type=float, default=0.15)
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    args = parser.parse_args(argv)
    import jax

    from littlehelp.metrics import machine_load, matmul_rates, write_report

    rates, loads, rows = [matmul_rates(train_step.MATMUL_SIZES, args.matmul_repeats)], [machine_load()], []
    for name in args.configs:
        rows += bench_config(name, args.batch_size, args.rounds, args.warmup)
        rates.append(matmul_rates(train_step.MATMUL_SIZES, args.matmul_repeats))
        loads.append(machine_load())
    try:
        train_step.check_steady(rates, loads, args.max_matmul_spread)
    except train_step.UnsteadyMachineError as error:
        sys.exit(f"bench_scan: {error}")
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "jax_version": jax.__version__, "machine": train_step._machine(),
              "matmul_flops_per_second": {"interleaved": rates, "spread": train_step.matmul_spread(rates)},
              "load": loads, "results": rows}
    write_report(args.out_dir, RESULT_NAME, report, markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    size = str(train_step.MATMUL_SIZES[0])
    rates = [r[size] / 1e9 for r in report["matmul_flops_per_second"]["interleaved"]]
    loads = [load["load_average"][0] for load in report["load"]]
    lines = ["# Scanned against unrolled layers", "",
             f"Date {report['date']}, jax {report['jax_version']}, {report['machine']['cpu_count']} CPUs, one device. "
             f"Command: `python scripts/bench_scan.py`. float32 {size} matmul {min(rates):.0f}-{max(rates):.0f} GFLOP/s "
             f"(spread {report['matmul_flops_per_second']['spread']:.0%}), 1-minute load average "
             f"{min(loads):.2f}-{max(loads):.2f}. Steps timed interleaved, round by round; the ratio is to "
             "the unrolled step without remat in the same rounds. Memory per device from XLA's memory_analysis().", "",
             "| config | batch | layers, remat_policy | compile s | arguments MB | temporaries MB | step s (median) | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['config']} | {r['batch_size']} | {r['variant']} | {r['compile_seconds']:.1f} | "
                     f"{r['argument_bytes'] / 1e6:.0f} | {r['temp_bytes'] / 1e6:.0f} | {r['step_seconds']:.3f} | "
                     f"{r['ratio_to_unrolled_none']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
