"""KD-loss benchmark: peak memory and step time of a distillation loss + gradient, naive vs chunked.

A student (hidden d 512) learns from a frozen teacher (hidden d 1024) through one of the divergences of
`littlehelp.losses`, both models' output heads being [d, vocab] float32 kernels. Four losses, each
with its gradient w.r.t. the student's hidden states and head:
  naive_kd    divergence(kind, student_hidden @ Ws, teacher_hidden @ Wt, ...): full [b, l, V] logits
  chunked_kd  chunked_divergence(kind, ...): `chunk_tokens` (batch x chunk length) positions at a time
  naive_ce    cross-entropy of the student alone from full logits
  chunked_ce  chunked_cross_entropy of the student alone: the reference for the memory target
Memory: XLA's `memory_analysis()` of the compiled loss + grad at batch x length 8 x 1024 and vocab
32K and 256K (compile only, nothing runs): peak = temp + argument + output bytes. Time: the same
compiled functions run at the `--time_at` settings (vocab x batch) that fit this machine, naive and
chunked interleaved, with the load average and the float32 matmul rate measured in the same run.
Targets (issue 9): chunked KD peak <= 1.2 x chunked CE peak and >= 4x below naive KD at 256K;
chunked KD time <= 1.15 x naive KD time.

    python scripts/bench_kd_loss.py                  # the default run (about 15 minutes on 2 cores)
    python scripts/bench_kd_loss.py --kinds fkl --time_at 32768x8 --repeats 2
writes results/bench_kd_loss.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from littlehelp import losses  # noqa: E402
from littlehelp.benchmark import Benchmark, header_markdown, interleaved  # noqa: E402

GIB = 2**30
Loss = Callable[..., jax.Array]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocabs", nargs="+", type=int, default=[32768, 262144], help="memory analysis")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--student_dim", type=int, default=512)
    parser.add_argument("--teacher_dim", type=int, default=1024)
    parser.add_argument("--chunk_tokens", type=int, default=128, help="positions per chunk (batch x chunk length)")
    parser.add_argument("--kinds", nargs="+", default=list(losses.DIVERGENCES), choices=losses.DIVERGENCES)
    parser.add_argument("--time_kind", default="fkl", choices=losses.DIVERGENCES)
    parser.add_argument(
        "--time_at",
        nargs="*",
        default=["32768x8", "262144x1"],
        help="VOCABxBATCH settings to time (at --length); none to skip timing",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per loss (interleaved)")
    parser.add_argument("--matmul_sizes", nargs="+", type=int, default=[2048, 4096])
    parser.add_argument("--matmul_repeats", type=int, default=5)
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# The four losses and their argument shapes.


def kd_loss(kind: str, chunk_size: int) -> Loss:
    """f(student_hidden, student_kernel, teacher_hidden, teacher_kernel, weights); chunk_size 0: naive."""
    if not chunk_size:
        return lambda h, k, th, tk, w: jnp.sum(losses.divergence(kind, h @ k, th @ tk, w))
    return lambda h, k, th, tk, w: (
        losses.chunked_divergence(kind, h, lambda x: x @ k, th, lambda x: x @ tk, w, chunk_size).total
    )


def ce_loss(chunk_size: int) -> Loss:
    """f(student_hidden, student_kernel, targets, weights); chunk_size 0: naive."""
    if not chunk_size:
        return lambda h, k, t, w: losses.cross_entropy_with_z_loss(h @ k, t, w).cross_entropy
    return lambda h, k, t, w: losses.chunked_cross_entropy(h, lambda x: x @ k, t, w, chunk_size=chunk_size).total


def argument_specs(loss: str, vocab: int, batch: int, args: argparse.Namespace) -> tuple:
    """ShapeDtypeStructs of a KD ("kd") or CE ("ce") loss's arguments."""
    spec, tokens = jax.ShapeDtypeStruct, (batch, args.length)
    student = (spec((*tokens, args.student_dim), jnp.float32), spec((args.student_dim, vocab), jnp.float32))
    weights = spec(tokens, jnp.float32)
    if loss == "ce":
        return (*student, spec(tokens, jnp.int32), weights)
    return (
        *student,
        spec((*tokens, args.teacher_dim), jnp.float32),
        spec((args.teacher_dim, vocab), jnp.float32),
        weights,
    )


def build_case(case: str, kind: str, vocab: int, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """Compiles one case's loss + grad (w.r.t. the student's hidden states and kernel); its memory."""
    method, loss = case.split("_")
    chunk_size = max(1, args.chunk_tokens // batch) if method == "chunked" else 0
    function = kd_loss(kind, chunk_size) if loss == "kd" else ce_loss(chunk_size)
    specs = argument_specs(loss, vocab, batch, args)
    start = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(function, argnums=(0, 1))).lower(*specs).compile()
    memory = compiled.memory_analysis()
    parts = {
        "temp": memory.temp_size_in_bytes,
        "argument": memory.argument_size_in_bytes,
        "output": memory.output_size_in_bytes,
    }
    teacher_inputs = sum(s.size * s.dtype.itemsize for s in specs[2:4]) if loss == "kd" else 0
    record = {
        "case": case,
        "kind": kind if loss == "kd" else "ce",
        "vocab": vocab,
        "batch": batch,
        "length": args.length,
        "chunk_size": chunk_size,
        "compile_seconds": time.perf_counter() - start,
        **{f"{k}_bytes": v for k, v in parts.items()},
        "peak_bytes": sum(parts.values()),
        "teacher_input_bytes": teacher_inputs,
        "full_logits_bytes": batch * args.length * vocab * 4,
    }
    return {"record": record, "compiled": compiled, "specs": specs}


# ----------------------------------------------------------------------------------------------
# Measurements.


def memory_records(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Compile-only memory of every case at every vocabulary, at the full batch x length."""
    records = []
    for vocab in args.vocabs:
        for case in ("naive_ce", "chunked_ce"):
            records.append(build_case(case, "ce", vocab, args.batch, args)["record"])
        for kind in args.kinds:
            for case in ("naive_kd", "chunked_kd"):
                records.append(build_case(case, kind, vocab, args.batch, args)["record"])
        print(
            f"vocab {vocab}: "
            + "  ".join(f"{r['case']}[{r['kind']}] {r['peak_bytes'] / GIB:.2f}" for r in records if r["vocab"] == vocab)
            + " GiB peak",
            flush=True,
        )
    return records


def random_arguments(specs: tuple, seed: int = 0) -> list[jax.Array]:
    """Normal hidden states, [d, vocab] kernels scaled by 1/sqrt(d) (logits of order 1), ids, weights 1."""
    vocab = specs[1].shape[1]  # the student kernel's

    def draw(key: jax.Array, spec: jax.ShapeDtypeStruct) -> jax.Array:
        if spec.dtype == jnp.int32:
            return jax.random.randint(key, spec.shape, 0, vocab, jnp.int32)
        scale = 1.0 if len(spec.shape) == 3 else spec.shape[0] ** -0.5
        return jax.random.normal(key, spec.shape) * scale

    keys = jax.random.split(jax.random.key(seed), len(specs))
    return [draw(key, spec) for key, spec in zip(keys, specs[:-1])] + [jnp.ones(specs[-1].shape)]


def time_setting(setting: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seconds per call of naive KD, chunked KD and chunked CE at one VOCABxBATCH, interleaved."""
    vocab, batch = map(int, setting.split("x"))
    cases = {
        case: build_case(case, args.time_kind, vocab, batch, args) for case in ("naive_kd", "chunked_kd", "chunked_ce")
    }
    calls = {
        case: functools.partial(built["compiled"], *random_arguments(built["specs"])) for case, built in cases.items()
    }
    seconds = interleaved(calls, args.repeats, warmup=1)  # one untimed call each first
    print(f"time {setting}: " + "  ".join(f"{c} {statistics.median(s):.1f}s" for c, s in seconds.items()), flush=True)
    return [
        {
            "setting": setting,
            "vocab": vocab,
            "batch": batch,
            "length": args.length,
            "case": case,
            "kind": cases[case]["record"]["kind"],
            "chunk_size": cases[case]["record"]["chunk_size"],
            "seconds": s,
            "median_seconds": statistics.median(s),
            "min_seconds": min(s),
            "peak_bytes": cases[case]["record"]["peak_bytes"],
        }
        for case, s in seconds.items()
    ]


# ----------------------------------------------------------------------------------------------
# Targets and reports.


def _record(memory: list[dict[str, Any]], vocab: int, case: str, kind: str) -> dict[str, Any]:
    """The memory record of one (vocab, case, kind)."""
    return next(r for r in memory if (r["vocab"], r["case"], r["kind"]) == (vocab, case, kind))


def memory_targets(memory: list[dict[str, Any]], vocab: int) -> list[dict[str, Any]]:
    """Issue 9's two memory targets at `vocab`, each for its worst divergence kind."""
    ce = _record(memory, vocab, "chunked_ce", "ce")
    kinds = [r["kind"] for r in memory if r["vocab"] == vocab and r["case"] == "chunked_kd"]
    kd = {kind: _record(memory, vocab, "chunked_kd", kind) for kind in kinds}
    naive = {kind: _record(memory, vocab, "naive_kd", kind) for kind in kinds}
    big = max(kinds, key=lambda kind: kd[kind]["peak_bytes"])
    low = min(kinds, key=lambda kind: naive[kind]["peak_bytes"] / kd[kind]["peak_bytes"])
    ratio, below_naive = kd[big]["peak_bytes"] / ce["peak_bytes"], naive[low]["peak_bytes"] / kd[low]["peak_bytes"]
    without_teacher = (kd[big]["peak_bytes"] - kd[big]["teacher_input_bytes"]) / ce["peak_bytes"]
    return [
        {
            "target": f"chunked KD peak <= 1.2 x chunked CE peak (vocab {vocab})",
            "value": ratio,
            "met": ratio <= 1.2,
            "detail": f"worst kind {big}: {kd[big]['peak_bytes'] / GIB:.2f} vs {ce['peak_bytes'] / GIB:.2f} GiB; "
            "without "
            f"the teacher's inputs ({kd[big]['teacher_input_bytes'] / GIB:.2f} GiB) {without_teacher:.2f}x; "
            f"temp alone {kd[big]['temp_bytes'] / ce['temp_bytes']:.2f}x",
        },
        {
            "target": f"chunked KD peak >= 4x below naive KD (vocab {vocab})",
            "value": below_naive,
            "met": below_naive >= 4,
            "detail": f"worst kind {low}: naive {naive[low]['peak_bytes'] / GIB:.2f} vs "
            f"chunked {kd[low]['peak_bytes'] / GIB:.2f} GiB",
        },
    ]


def time_targets(timing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """chunked KD <= 1.15 x naive KD median time, per timed setting."""
    targets = []
    for setting in dict.fromkeys(r["setting"] for r in timing):
        by_case = {r["case"]: r for r in timing if r["setting"] == setting}
        ratio = by_case["chunked_kd"]["median_seconds"] / by_case["naive_kd"]["median_seconds"]
        best = by_case["chunked_kd"]["min_seconds"] / by_case["naive_kd"]["min_seconds"]
        targets.append(
            {
                "target": f"chunked KD time <= 1.15 x naive KD ({setting})",
                "value": ratio,
                "met": ratio <= 1.15,
                "detail": f"medians {by_case['chunked_kd']['median_seconds']:.2f} vs "
                f"{by_case['naive_kd']['median_seconds']:.2f} s; ratio of minima {best:.2f}",
            }
        )
    return targets


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and writes the JSON and Markdown reports; returns the JSON content."""
    args = parse_args(argv)
    bench = Benchmark(__file__, argv, args.out_dir, args.matmul_sizes, args.matmul_repeats)
    memory = memory_records(args)
    timing = [r for setting in args.time_at for r in time_setting(setting, args)]
    targets = [t for vocab in args.vocabs for t in memory_targets(memory, vocab)] + time_targets(timing)
    report = bench.report(vars(args), memory=memory, timing=timing, targets=targets)
    bench.write(report, markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report: set-up, memory table, timing table, targets."""
    config = report["config"]
    lines = [
        "# KD-loss benchmark: naive vs chunked large-vocabulary losses",
        "",
        header_markdown(report),
        "",
        f"Student d {config['student_dim']}, teacher d {config['teacher_dim']}, float32 heads; chunks of "
        f"{config['chunk_tokens']} positions (batch x chunk length).",
        "",
        *_memory_table(report["memory"]),
        "",
        *_timing_table(report["timing"]),
        "",
        "## Targets",
        "",
        "| target | value | met | detail |",
        "|---|---|---|---|",
        *[
            f"| {t['target']} | {t['value']:.2f} | {'met' if t['met'] else 'MISSED'} | {t['detail']} |"
            for t in report["targets"]
        ],
        "",
        f"Memory: XLA memory analysis of the compiled loss + gradient on this backend, compile only (nothing in "
        f"the memory table runs; this machine has {report['machine']['memory_bytes'] / GIB:.0f} GiB); "
        "peak = temp + argument + output. "
        "The teacher's inputs (its hidden states and [d, vocab] head) are arguments of every KD step and of no CE "
        "step, so the 1.2x target also compares their presence; the detail column gives the ratio without them. "
        "Time: each compiled function called with random inputs, one untimed call, then the timed calls of "
        "the three losses interleaved (median reported, minimum in the detail).",
        *_timing_note(report),
        "",
    ]
    return "\n".join(lines)


def _timing_note(report: dict[str, Any]) -> list[str]:
    """Why a setting was timed below the memory table's batch: the naive loss's peak there."""
    config, notes = report["config"], []
    for vocab, batch in dict.fromkeys((r["vocab"], r["batch"]) for r in report["timing"]):
        naive = [
            r
            for r in report["memory"]
            if (r["vocab"], r["case"], r["kind"]) == (vocab, "naive_kd", config["time_kind"])
        ]
        if batch < config["batch"] and naive:
            notes.append(
                f"Vocab {vocab} is timed at batch {batch}: at batch {config['batch']} the naive {config['time_kind']} "
                f"loss + grad needs {naive[0]['peak_bytes'] / GIB:.1f} GiB."
            )
    return [" ".join(notes)] if notes else []


def _memory_table(memory: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"## Memory at batch x length {memory[0]['batch']} x {memory[0]['length']} (GiB)",
        "",
        "| vocab | loss | kind | chunk | temp | argument | output | peak | full [b,l,V] f32 logits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in memory:
        lines.append(
            f"| {r['vocab']} | {r['case']} | {r['kind']} | {r['chunk_size'] or '-'} | {r['temp_bytes'] / GIB:.2f} "
            f"| {r['argument_bytes'] / GIB:.2f} | {r['output_bytes'] / GIB:.2f} | {r['peak_bytes'] / GIB:.2f} "
            f"| {r['full_logits_bytes'] / GIB:.2f} |"
        )
    return lines


def _timing_table(timing: list[dict[str, Any]]) -> list[str]:
    if not timing:
        return ["## Time", "", "Not measured (`--time_at` empty)."]
    lines = [
        "## Time of one loss + gradient call (seconds)",
        "",
        "| vocab x batch x length | loss | kind | chunk | median | min | all | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in timing:
        lines.append(
            f"| {r['vocab']} x {r['batch']} x {r['length']} | {r['case']} | {r['kind']} | {r['chunk_size'] or '-'} "
            f"| {r['median_seconds']:.2f} | {r['min_seconds']:.2f} | {', '.join(f'{s:.2f}' for s in r['seconds'])} "
            f"| {r['peak_bytes'] / GIB:.2f} |"
        )
    return lines


if __name__ == "__main__":
    main()
