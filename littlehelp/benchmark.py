"""The harness every benchmark script shares: conditions, interleaved timing, steadiness, reports.

A `Benchmark` takes the machine's conditions (time, load, float32 matmul rates at the script's sizes)
when it starts, between measurements when asked (`check`, `between`) and after them (`report`); a run
whose matmul rate varies by more than `max_matmul_spread` exits with one line and writes nothing.
Its report starts with `provenance.describe_run` (commit, versions, machine, command, conditions before
and after) and is written as results/<script name>.json and .md:

    bench = Benchmark(__file__, argv, args.out_dir, args.matmul_sizes, args.matmul_repeats)
    seconds = interleaved({"naive": naive, "chunked": chunked}, rounds=5, warmup=1)
    report = bench.report(vars(args), results=...)
    bench.write(report, markdown(report))  # markdown() puts header_markdown(report) under its title
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jax

from littlehelp import provenance
from littlehelp.metrics import measure_matmul_flops

Item = TypeVar("Item")


def matmul_rates(sizes: Sequence[int], repeats: int = 5) -> dict[str, float]:
    """Median float32 a @ b FLOP/s per matrix size: the machine's own rate, measured in the same run."""
    return {str(size): measure_matmul_flops(size, repeats) for size in sizes}


def conditions(sizes: Sequence[int], repeats: int = 5) -> dict[str, Any]:
    """`provenance.conditions()` at several matmul sizes: time, load and {size: FLOP/s}."""
    return {
        "time": provenance.utc_now(),
        "load": provenance.machine_load(),
        "matmul_flops_per_second": matmul_rates(sizes, repeats),
    }


def seconds_of(call: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call (its result blocked on) and the result."""
    start = time.perf_counter()
    result = jax.block_until_ready(call())
    return time.perf_counter() - start, result


def interleaved(variants: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 0) -> dict[str, list[float]]:
    """Seconds of every call of each variant, the variants called in turn round by round (so each
    round compares them under the same load); the first `warmup` rounds are not timed."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(warmup + rounds):
        for name, call in variants.items():
            elapsed, _ = seconds_of(call)
            if index >= warmup:
                seconds[name].append(elapsed)
    return seconds


def repeated(call: Callable[[], Any], repeats: int, warmup: int = 0) -> list[float]:
    """Seconds of each of `repeats` calls after `warmup` untimed ones: `interleaved` with one variant."""
    return interleaved({"call": call}, repeats, warmup)["call"]


def rates_at(checks: Sequence[Mapping[str, Any]], size: int | str) -> list[float]:
    """The `size` matmul FLOP/s of each check of the conditions."""
    return [check["matmul_flops_per_second"][str(size)] for check in checks]


def loads_of(checks: Sequence[Mapping[str, Any]]) -> list[float]:
    """The 1-minute load average of each check of the conditions."""
    return [check["load"]["load_average"][0] for check in checks]


def matmul_spread(checks: Sequence[Mapping[str, Any]], size: int | str) -> float:
    """1 - min / max of the `size` matmul rates of `checks` (0: perfectly steady)."""
    values = rates_at(checks, size)
    return 1 - min(values) / max(values)


def unsteady(checks: Sequence[Mapping[str, Any]], size: int, max_spread: float) -> str | None:
    """Why `checks` are too unsteady to report (the `size` rate's spread exceeds `max_spread`), or None."""
    spread = matmul_spread(checks, size)
    if spread <= max_spread:
        return None
    values = rates_at(checks, size)
    return (
        f"the {size} matmul rate varied by {spread:.0%} within the run ({min(values) / 1e9:.0f}-"
        f"{max(values) / 1e9:.0f} GFLOP/s; load averages {loads_of(checks)}), more than "
        f"--max_matmul_spread={max_spread:.0%}: the machine was not idle; no results written"
    )


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """How `script` was run: `python <path from the repository> <arguments>`."""
    path = Path(script).resolve()
    shown = path.relative_to(provenance.REPO) if path.is_relative_to(provenance.REPO) else path
    return shlex.join(["python", str(shown), *(sys.argv[1:] if argv is None else argv)])


def write_report(out_dir: str | Path, name: str, report: Mapping, markdown: str) -> None:
    """Writes `name`.json (the report) and `name`.md (its Markdown) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / f"{name}.md").write_text(markdown, encoding="utf-8")
    print(f"wrote {out_dir / name}.json and .md", flush=True)


class Benchmark:
    """One run of a benchmark script: the conditions taken around its measurements, and its report."""

    def __init__(
        self,
        script: str,
        argv: Sequence[str] | None,
        out_dir: str | Path,
        matmul_sizes: Sequence[int] = (2048,),
        matmul_repeats: int = 5,
        max_matmul_spread: float | None = None,
    ):
        """Takes the conditions before; results go to `out_dir`/<script's name>.{json,md}."""
        self.name, self.command, self.out_dir = Path(script).stem, command_line(script, argv), Path(out_dir)
        self.matmul_sizes, self.matmul_repeats = list(matmul_sizes), matmul_repeats
        self.max_matmul_spread = max_matmul_spread
        self.checks: list[dict[str, Any]] = []
        self.check()

    def check(self) -> None:
        """Takes the conditions now, prints them in one line and keeps them."""
        self.checks.append(conditions(self.matmul_sizes, self.matmul_repeats))
        size = self.matmul_sizes[0]
        first, now = rates_at((self.checks[0], self.checks[-1]), size)
        print(
            f"matmul {size}: {now / 1e9:.0f} GFLOP/s (first {first / 1e9:.0f}), load {loads_of(self.checks)[-1]}",
            flush=True,
        )

    def between(self, items: Iterable[Item]) -> Iterator[Item]:
        """Yields `items`, taking the conditions between each and the next (`report` takes them after the last)."""
        for index, item in enumerate(items):
            if index:
                self.check()
            yield item

    def report(self, config: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
        """Takes the conditions after; exits with one line when the run was unsteady, else returns the report:
        provenance, the conditions between before and after, the matmul spread, `config` (less out_dir)
        and `fields`."""
        self.check()
        size = self.matmul_sizes[0]
        if self.max_matmul_spread is not None and (why := unsteady(self.checks, size, self.max_matmul_spread)):
            sys.exit(f"{self.name}: {why}")
        return {
            **provenance.describe_run(self.command, self.checks[0], self.checks[-1]),
            "between": self.checks[1:-1],
            "matmul_spread": matmul_spread(self.checks, size),
            "config": {k: v for k, v in config.items() if k != "out_dir"},
            **fields,
        }

    def write(self, report: Mapping[str, Any], markdown: str) -> None:
        """Writes the report and its Markdown."""
        write_report(self.out_dir, self.name, report, markdown)


def all_checks(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every check of the conditions a report holds, before to after."""
    return [report["before"], *report["between"], report["after"]]


def _gflops(check: Mapping[str, Any]) -> str:
    """One check's matmul GFLOP/s per size: "2048: 190.1, 4096: 180.5"."""
    return ", ".join(f"{size}: {rate / 1e9:.1f}" for size, rate in check["matmul_flops_per_second"].items())


def header_markdown(report: Mapping[str, Any]) -> str:
    """A report's provenance as a Markdown paragraph: commit, command, versions, machine, load, matmul rates."""
    machine, before, after = report["machine"], report["before"], report["after"]
    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items() if version)
    first = next(iter(before["matmul_flops_per_second"]))
    values, loads = rates_at(all_checks(report), first), loads_of(all_checks(report))
    return "\n".join(
        [
            f"Date {report['date']}, commit {(report['commit'] or 'unknown')[:12]}"
            f"{' with uncommitted changes' if report['dirty'] else ''}. Command: `{report['command']}`.",
            f"{versions}. {machine['cpu_count']} CPUs ({machine['cpu']}), {machine['memory_bytes'] / 2**30:.0f} GiB, "
            f"{machine['platform']}; JAX {machine['backend']}: {machine['accelerator']}.",
            f"Load at start: `{before['load']['uptime']}`; at end: `{after['load']['uptime']}`"
            f" (1-minute load {min(loads):.2f}-{max(loads):.2f} over {len(loads)} checks).",
            f"float32 matmul GFLOP/s (jax.jit a@b, median) before: {_gflops(before)}; after: {_gflops(after)}; "
            f"{first}: {min(values) / 1e9:.1f}-{max(values) / 1e9:.1f} over {len(values)} checks "
            f"(spread {report['matmul_spread']:.0%}).",
        ]
    )
