"""Verify-call benchmark: one `extend` of k tokens per row against one of 1 token, SmolLM2-135M.

Speculative decoding's target scores gamma + 1 tokens per row in one `extend` call (the verify call);
its speed-up rests on that call costing little more than a 1-token call. For the real
SmolLM2-135M-Instruct (`pretrained.ensure("smollm2_135m")`, `convert.load`) with `--committed`
tokens per row (default 128) in a `--slots`-slot cache (default 512), at each batch size:
- `extend` of k = 1 .. `--max_k` tokens per row, jitted with the cache donated and rolled back to the
  committed tokens after each call (as the decoding loops run it), every k compiled first, then called
  in turn round by round (`--repeats` timed rounds after one untimed one): median seconds, and each k's
  ratio to k = 1 as the median over rounds of the ratio within a round (both calls under one load);
- the output head alone (`logits_from_hidden` on [b, k, emb_dim]) in the same rounds: its share of
  each call and of the increase over k = 1 (the head over k rows is real work: k x emb_dim x vocab).
The load average and the float32 matmul rate are recorded before, between batch sizes and after.

    python scripts/bench_verify.py [--batch_sizes 1 8] [--max_k 8] [--repeats 7]
writes results/bench_verify.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from littlehelp.benchmark import Benchmark, all_checks, header_markdown, interleaved, loads_of  # noqa: E402
from littlehelp.data import pretrained  # noqa: E402
from littlehelp.models import convert, rollback  # noqa: E402
from littlehelp.models.api import DecodeCache, StepwiseModel  # noqa: E402

TARGET_RATIO = 1.3  # extend(gamma + 1) / extend(1) asked for at batch 1, gamma <= 7


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--max_k", type=int, default=8, help="tokens per row of the widest extend")
    parser.add_argument("--committed", type=int, default=128, help="tokens per row already in the cache")
    parser.add_argument("--slots", type=int, default=512, help="cache slots per row")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (medians reported)")
    parser.add_argument("--matmul_sizes", nargs="+", type=int, default=[2048])
    parser.add_argument("--matmul_repeats", type=int, default=5)
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    return parser.parse_args(argv)


def filled_cache(model: StepwiseModel, params: Any, batch: int, args: argparse.Namespace) -> DecodeCache:
    """A cache of `args.slots` slots holding `args.committed` random tokens per row (one prefill)."""
    tokens = jax.random.randint(jax.random.key(1), (batch, args.committed), 3, model.config.vocab_size)
    cache = model.init_cache(params, batch, args.slots)
    return jax.jit(model.prefill)(params, cache, tokens, jnp.full((batch,), args.committed, jnp.int32))[1]


def timed_calls(
    model: StepwiseModel, params: Any, batch: int, args: argparse.Namespace
) -> dict[str, Callable[[], Any]]:
    """Compiled 'extend k' and 'head k' calls for k = 1 .. max_k; the extends share one donated cache."""
    cache = {"state": filled_cache(model, params, batch, args)}
    committed = cache["state"].lengths

    def step(params: Any, cache: DecodeCache, tokens: jax.Array) -> tuple[jax.Array, DecodeCache]:
        logits, cache = model.extend(params, cache, tokens)
        return logits, rollback(cache, committed)

    def extend_call(tokens: jax.Array) -> Callable[[], jax.Array]:
        compiled = jax.jit(step, donate_argnums=1).lower(params, cache["state"], tokens).compile()

        def call() -> jax.Array:
            logits, cache["state"] = compiled(params, cache["state"], tokens)
            return logits

        return call

    def head_call(hidden: jax.Array) -> Callable[[], jax.Array]:
        compiled = jax.jit(model.logits_from_hidden).lower(params, hidden).compile()
        return lambda: compiled(params, hidden)

    calls = {}
    for k in range(1, args.max_k + 1):
        calls[f"extend {k}"] = extend_call(jnp.full((batch, k), 5, jnp.int32))
        calls[f"head {k}"] = head_call(jax.random.normal(jax.random.key(k), (batch, k, model.config.emb_dim)))
    return calls


def bench_batch(model: StepwiseModel, params: Any, batch: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per k: median seconds of extend(k) and of the head over k rows, ratios and shares."""
    times = interleaved(timed_calls(model, params, batch, args), args.repeats, warmup=1)
    extend = {k: statistics.median(times[f"extend {k}"]) for k in range(1, args.max_k + 1)}
    head = {k: statistics.median(times[f"head {k}"]) for k in range(1, args.max_k + 1)}
    records = []
    for k in extend:
        increase = extend[k] - extend[1]
        ratios = [wide / narrow for wide, narrow in zip(times[f"extend {k}"], times["extend 1"])]
        records.append(
            {
                "batch": batch,
                "k": k,
                "extend_seconds": extend[k],
                "ratio_to_1": statistics.median(ratios),
                "head_seconds": head[k],
                "head_share": head[k] / extend[k],
                "head_share_of_increase": (head[k] - head[1]) / increase if k > 1 and increase > 0 else None,
                "extend_seconds_all": times[f"extend {k}"],
                "head_seconds_all": times[f"head {k}"],
            }
        )
        print(
            f"batch {batch} k {k}: extend {extend[k] * 1e3:.1f} ms (x{records[-1]['ratio_to_1']:.2f}), "
            f"head {head[k] * 1e3:.1f} ms",
            flush=True,
        )
    return records


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and writes the JSON and Markdown reports; returns the JSON content."""
    args = parse_args(argv)
    bench = Benchmark(__file__, argv, args.out_dir, args.matmul_sizes, args.matmul_repeats)
    smol = convert.load(pretrained.ensure("smollm2_135m"))
    params = jax.tree.map(jnp.asarray, smol.params)
    results = [r for batch in bench.between(args.batch_sizes) for r in bench_batch(smol.model, params, batch, args)]
    report = bench.report(vars(args), model=smol.source, results=results)
    bench.write(report, markdown(report))
    return report


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def markdown(report: dict[str, Any]) -> str:
    """The report: set-up, machine load, one table row per (batch, k)."""
    config, loads = report["config"], loads_of(all_checks(report))
    loaded = max(loads) > report["machine"]["cpu_count"]
    lines = [
        "# Verify-call benchmark: extend(k) against extend(1), SmolLM2-135M",
        "",
        header_markdown(report),
        "",
        *(
            [
                f"**Loaded run**: the 1-minute load reached {max(loads):.1f} on {report['machine']['cpu_count']} CPUs; "
                "compute-bound costs (k > 1) are overstated against an idle run.",
                "",
            ]
            if loaded
            else []
        ),
        f"Model {report['model']}. Each row holds {config['committed']} committed tokens of a {config['slots']}-slot "
        f"cache; one `extend` of k tokens per row (cache donated, rolled back after each call), every k compiled "
        f"first and called in turn, {config['repeats']} rounds: median ms, and x extend(1) the median over rounds "
        f"of extend(k) / extend(1) within a round. Head: `logits_from_hidden` on [b, k, emb_dim] in the same "
        f"rounds. Asked for: extend(gamma + 1) <= {TARGET_RATIO}x extend(1) at batch 1 for gamma <= 7.",
        "",
        "| batch | k | extend ms | x extend(1) | head ms | head share | head share of the increase |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['batch']} | {r['k']} | {r['extend_seconds'] * 1e3:.1f} | {r['ratio_to_1']:.2f} | "
            f"{r['head_seconds'] * 1e3:.1f} | {_share(r['head_share'])} | {_share(r['head_share_of_increase'])} |"
            for r in report["results"]
        ],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
