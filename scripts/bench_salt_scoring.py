"""SALT_DS scoring benchmark: sequences/s scored by a small teacher over a built-in LM task.

The teacher is the decoder-bench model (docs/benchmarks.md: vocab 8192, d_model 256, 4
layers, 4 query heads x 64, 2 KV heads, SwiGLU 1024, float32; random parameters: the cost does not
depend on their values). Per batch size, on `--task`'s `--split` cut at `--length` tokens:
- model only: `salt_lm.selection.batch_scores` on one batch of the split, `--repeats` timed calls
  after the compiling one (median), with the achieved FLOP/s (`Model.forward_flops`);
- input only: the split's LM batches (`littlehelp.data.teacher_labels.lm_batches`) read without scoring;
- streamed: `salt_lm.selection.score_split` over the whole split (input and model together, the last
  batch padded), as a SALT_DS run scores it;
- memory: XLA's memory analysis of the compiled scoring function (temp bytes) beside the
  [batch, length, vocab] float32 logits that chunking never forms.
The load average and the float32 matmul rate are measured in the same run (`littlehelp.benchmark`).

    python scripts/bench_salt_scoring.py                      # shakespeare_lm validation, batch 8 and 32
    python scripts/bench_salt_scoring.py --split train --batch_sizes 32
writes results/bench_salt_scoring.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import littlehelp.data  # noqa: E402,F401  (registers the built-in tasks)
from littlehelp.benchmark import Benchmark, header_markdown, repeated, seconds_of  # noqa: E402
from littlehelp.data import teacher_labels  # noqa: E402
from littlehelp.features import DECODER_INPUT_TOKENS, TARGETS  # noqa: E402
from littlehelp.models import DecoderConfig, Model, build_model  # noqa: E402
from salt_lm import selection  # noqa: E402

MIB = 2**20
DECODER_BENCH = dict(vocab_size=8192, emb_dim=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64, mlp_dim=1024)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="shakespeare_lm")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--top_k", type=int, default=selection.DEFAULT_TOP_K)
    parser.add_argument("--chunk_size", type=int, default=32, help="positions per head chunk")
    parser.add_argument("--repeats", type=int, default=5, help="timed model-only calls")
    parser.add_argument("--teacher", default=None, help="DecoderConfig overrides, e.g. 'emb_dim=64,num_layers=1'")
    parser.add_argument("--matmul_sizes", nargs="+", type=int, default=[2048, 4096])
    parser.add_argument("--matmul_repeats", type=int, default=5)
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    return parser.parse_args(argv)


def teacher_config(overrides: str | None) -> DecoderConfig:
    """decoder-bench, with `name=value,...` integer overrides."""
    pairs = [item.split("=") for item in overrides.split(",")] if overrides else []
    return DecoderConfig(**(DECODER_BENCH | {name: int(value) for name, value in pairs}))


def random_teacher(config: DecoderConfig, length: int) -> tuple[Model, Any]:
    """The teacher's seam and randomly initialised parameters."""
    model = build_model(config)
    example = {DECODER_INPUT_TOKENS: np.zeros((1, length), np.int32)}
    return model, nn.unbox(jax.jit(model.init)(jax.random.key(0), example))


def bench_batch_size(model: Model, params: Any, batch_size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Model-only, input-only and streamed sequences/s and the compiled memory at one batch size."""
    scoring = selection.Scoring(
        args.task, {TARGETS: args.length}, args.split, args.top_k, batch_size, args.chunk_size, log_every=10**9
    )
    batch, _ = next(teacher_labels.lm_batches(scoring.task, scoring.split, scoring.sequence_length, scoring.batch_size))
    score = lambda: selection.batch_scores(model, params, batch, args.top_k, args.chunk_size)  # noqa: E731
    compile_seconds, _ = seconds_of(score)
    model_seconds = statistics.median(repeated(score, args.repeats))
    start = time.perf_counter()
    sequences = sum(
        rows
        for _, rows in teacher_labels.lm_batches(
            scoring.task, scoring.split, scoring.sequence_length, scoring.batch_size
        )
    )
    input_seconds = time.perf_counter() - start
    streamed_seconds, scores = seconds_of(lambda: selection.score_split(model, params, scoring))
    memory = selection.batch_scores.lower(model, params, batch, args.top_k, args.chunk_size).compile().memory_analysis()
    record = {
        "batch": batch_size,
        "sequences": sequences,
        "compile_seconds": compile_seconds,
        "model_seconds_per_batch": model_seconds,
        "model_sequences_per_second": batch_size / model_seconds,
        "model_flops_per_second": model.forward_flops(batch) / model_seconds,
        "input_sequences_per_second": sequences / input_seconds,
        "streamed_seconds": streamed_seconds,
        "streamed_sequences_per_second": len(scores) / streamed_seconds,
        "temp_bytes": memory.temp_size_in_bytes,
        "full_logits_bytes": batch_size * args.length * model.config.vocab_size * 4,
    }
    print(
        f"batch {batch_size}: model {record['model_sequences_per_second']:.1f}, input "
        f"{record['input_sequences_per_second']:.1f}, streamed {record['streamed_sequences_per_second']:.1f} "
        "sequences/s",
        flush=True,
    )
    return record


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and writes the JSON and Markdown reports; returns the JSON content."""
    args = parse_args(argv)
    config = teacher_config(args.teacher)
    bench = Benchmark(__file__, argv, args.out_dir, args.matmul_sizes, args.matmul_repeats)
    model, params = random_teacher(config, args.length)
    results = [bench_batch_size(model, params, batch_size, args) for batch_size in args.batch_sizes]
    report = bench.report(vars(args) | {"teacher_config": dataclasses.asdict(config)}, results=results)
    bench.write(report, markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report: set-up, one row per batch size."""
    config = report["config"]
    teacher = config["teacher_config"]
    lines = [
        "# SALT_DS scoring benchmark: sequences/s scored by a small teacher",
        "",
        header_markdown(report),
        "",
        f"Task `{config['task']}` split `{config['split']}` at length "
        f"{config['length']}, top_k {config['top_k']}, head chunks of {config['chunk_size']} positions. Teacher: "
        f"decoder vocab {teacher['vocab_size']}, d_model {teacher['emb_dim']}, {teacher['num_layers']} layers, "
        f"{teacher['num_heads']} query heads x {teacher['head_dim']}, {teacher['num_kv_heads']} KV heads, "
        f"SwiGLU {teacher['mlp_dim']}, {teacher['dtype']}.",
        "",
        "| batch | sequences | compile s | model only seq/s | model GFLOP/s | input only seq/s | streamed seq/s "
        "| streamed s | temp MiB | full [b,l,V] f32 logits MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['batch']} | {r['sequences']} | {r['compile_seconds']:.2f} | {r['model_sequences_per_second']:.1f} "
            f"| {r['model_flops_per_second'] / 1e9:.1f} | {r['input_sequences_per_second']:.1f} "
            f"| {r['streamed_sequences_per_second']:.1f} | {r['streamed_seconds']:.1f} | {r['temp_bytes'] / MIB:.1f} "
            f"| {r['full_logits_bytes'] / MIB:.1f} |"
            for r in report["results"]
        ],
        "",
        "Model only: median of the timed `batch_scores` calls on one batch (after the compiling call). "
        "Input only: the split's LM batches read and padded, not scored. Streamed: `score_split` over the "
        "whole split, input and model together (what a SALT_DS run spends scoring). Model GFLOP/s counts the "
        "forward pass's matrix products (`Model.forward_flops`); compare with the matmul rate above. Temp: XLA's "
        "memory analysis of the compiled scoring function.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
