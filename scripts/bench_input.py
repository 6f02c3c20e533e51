"""Input-pipeline benchmark: can the seqio pipelines feed the train step?

Measures examples/s and tokens/s of the Shakespeare span-corruption (inputs 512, targets 114) and
LM (targets 512) pipelines on this machine, through the same path training uses
(`pipeline.host_dataset`: Task -> feature converter with packing -> host batches), after the first
batch (start-up, including the shuffle-buffer fill, is reported separately). It then compares them
with the examples/s the train step consumes for T5 v1.1 tiny and small at those lengths:
consumption = achieved FLOP/s / train FLOPs per example, for (a) this CPU at the best FLOP/s the
train-step benchmark achieved (results/bench_train_step.json), and (b) an accelerator at
ACCELERATOR_FLOPS. A ratio above 1 means the pipeline keeps up (per host).

    python scripts/bench_input.py [--batches 20] [--batch_size 32]
writes results/bench_input.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from littlehelp import config as gin_config  # noqa: E402
from littlehelp import models, objectives  # noqa: E402
from littlehelp.benchmark import Benchmark, header_markdown  # noqa: E402
from littlehelp.data import DatasetConfig, pipeline  # noqa: E402
from littlehelp.features import DECODER_INPUT_TOKENS, DECODER_TARGET_TOKENS, ENCODER_INPUT_TOKENS, INPUTS, TARGETS  # noqa: E402
from littlehelp.models import T5Config  # noqa: E402

PIPELINES = {
    "shakespeare_span_corruption": ({INPUTS: 512, TARGETS: 114}, "encoder_decoder"),
    "shakespeare_lm": ({TARGETS: 512}, "lm"),
}
ACCELERATOR_FLOPS = 400e12  # an H100 at ~40% of its 989 TFLOP/s dense bf16 peak
MODELS = ("tiny", "small")
SPAN_LENGTHS = {INPUTS: 512, TARGETS: 114}


def bench_pipeline(name: str, batches: int, batch_size: int) -> dict:
    """Start-up seconds, examples/s and non-padding tokens/s of one task's host batches."""
    lengths, converter = PIPELINES[name]
    config = DatasetConfig(name, lengths, batch_size, feature_converter=converter, seed=0)
    start = time.perf_counter()
    iterator = pipeline.host_dataset(config).as_numpy_iterator()
    next(iterator)
    startup = time.perf_counter() - start
    tokens, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        tokens += sum(
            int(np.count_nonzero(batch[k])) for k in (ENCODER_INPUT_TOKENS, DECODER_TARGET_TOKENS) if k in batch
        )
    seconds = time.perf_counter() - start
    return {
        "task": name,
        "lengths": lengths,
        "batch_size": batch_size,
        "startup_seconds": round(startup, 2),
        "examples_per_second": batches * batch_size / seconds,
        "tokens_per_second": tokens / seconds,
    }


def model_config(size: str) -> T5Config:
    """T5Config of littlehelp/gin/models/t5_1_1/<size>.gin, with the default vocabulary for tiny (as the demo)."""
    try:
        gin_config.parse_gin([f"models/t5_1_1/{size}.gin"], ["t5.T5Config.vocab_size=8192"] if size == "tiny" else [])
        return T5Config()
    finally:
        gin.clear_config()


def flops_per_example(config: T5Config) -> float:
    """Train FLOPs of one span-corruption example (inputs 512, targets 114)."""
    spec = {
        ENCODER_INPUT_TOKENS: jax.ShapeDtypeStruct((1, SPAN_LENGTHS[INPUTS]), np.int32),
        DECODER_TARGET_TOKENS: jax.ShapeDtypeStruct((1, SPAN_LENGTHS[TARGETS]), np.int32),
        DECODER_INPUT_TOKENS: jax.ShapeDtypeStruct((1, SPAN_LENGTHS[TARGETS]), np.int32),
    }
    return objectives.EncoderDecoderObjective(models.build_model(config)).train_flops(spec)


def cpu_train_flops() -> float:
    """The best train-step FLOP/s results/bench_train_step.json records on this machine."""
    path = REPO / "results" / "bench_train_step.json"
    if not path.is_file():
        raise SystemExit(f"bench_input: {path} is missing; run scripts/bench_train_step.py first")
    return max(r["flops_per_second"] for r in json.loads(path.read_text())["results"])


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark and writes the JSON and Markdown reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--out_dir", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    bench = Benchmark(__file__, argv, args.out_dir)
    pipelines = [bench_pipeline(name, args.batches, args.batch_size) for name in PIPELINES]
    span = pipelines[0]["examples_per_second"]
    rates = {"this_cpu": cpu_train_flops(), "accelerator": ACCELERATOR_FLOPS}
    consumption = []
    for size in MODELS:
        flops = flops_per_example(model_config(size))
        for where, rate in rates.items():
            consumed = rate / flops
            consumption.append(
                {
                    "model": size,
                    "where": where,
                    "train_flops_per_second": rate,
                    "train_flops_per_example": flops,
                    "examples_per_second_consumed": consumed,
                    "pipeline_over_consumption": span / consumed,
                }
            )
    report = bench.report(vars(args), pipelines=pipelines, consumption=consumption)
    bench.write(report, markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    """The report as a Markdown page."""
    lines = [
        "# Input-pipeline benchmark\n",
        header_markdown(report) + "\n",
        "| task | lengths | batch | start-up s | examples/s | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for p in report["pipelines"]:
        lines.append(
            f"| {p['task']} | {p['lengths']} | {p['batch_size']} | {p['startup_seconds']} | "
            f"{p['examples_per_second']:,.0f} | {p['tokens_per_second']:,.0f} |"
        )
    lines += [
        "",
        "Span-corruption examples (512/114) the train step consumes per second, and the pipeline's "
        "rate over it (above 1: the pipeline keeps up):",
        "",
        "| model | where | train GFLOP/s | GFLOP/example | examples/s consumed | pipeline / consumed |",
        "|---|---|---|---|---|---|",
    ]
    for c in report["consumption"]:
        lines.append(
            f"| T5 1.1 {c['model']} | {c['where']} | {c['train_flops_per_second'] / 1e9:,.0f} | "
            f"{c['train_flops_per_example'] / 1e9:.2f} | {c['examples_per_second_consumed']:,.1f} | "
            f"{c['pipeline_over_consumption']:,.2f} |"
        )
    lines += [
        "",
        f"this_cpu: the best FLOP/s of results/bench_train_step.json; accelerator: "
        f"{ACCELERATOR_FLOPS / 1e12:.0f} TFLOP/s (an H100 at ~40% MFU in bf16). Tiny uses the 8192-id "
        "default vocabulary, small T5's 32128.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
