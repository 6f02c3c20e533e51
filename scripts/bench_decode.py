"""Decoding benchmark: prefill in one pass vs feeding the prompt token by token, and greedy tokens/s.

On the decoder-bench model (docs/benchmarks.md: vocab 8192, d_model 256, 4 layers, 4 query
heads x 64, 2 KV heads, SwiGLU 1024, float32) through the stepwise API (`littlehelp.models.api`):
- prefill: a `prompt`-token prompt (default 512) at batch 1 and 8, once as `prefill` (one forward
  pass) and once as `prompt` calls of `extend` with one token each (how a cache is filled without a
  prefill), both jitted; the two are interleaved, `repeats` times each, medians reported;
- greedy decoding with `littlehelp.decoding.generate`: `new_tokens` tokens after a 16-token prompt
  at batch 1 and 8, tokens/s counted over every row's new tokens.
The machine's float32 matmul rate and `uptime` load are recorded in the same run.

    python scripts/bench_decode.py [--prompt 512] [--new_tokens 128] [--repeats 5]
writes results/bench_decode.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from littlehelp import decoding  # noqa: E402
from littlehelp.benchmark import Benchmark, header_markdown, interleaved, repeated  # noqa: E402
from littlehelp.features import DECODER_INPUT_TOKENS  # noqa: E402
from littlehelp.models import DecoderConfig, build_model  # noqa: E402

DECODER_BENCH = DecoderConfig(
    vocab_size=8192, emb_dim=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64, mlp_dim=1024
)
SHORT_PROMPT = 16


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens of the prefill comparison")
    parser.add_argument("--new_tokens", type=int, default=128, help="tokens generated per row, greedy")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out_dir", type=Path, default=REPO / "results")
    return parser.parse_args(argv)


def prefill_fns(model, params, batch: int, prompt: int) -> dict[str, Callable[[], jax.Array]]:
    """Jitted 'prefill' and 'token by token' fills of the same prompt."""
    tokens = jax.random.randint(jax.random.key(1), (batch, prompt), 3, model.config.vocab_size)
    lengths = jnp.full((batch,), prompt, jnp.int32)

    @jax.jit
    def one_pass(params, tokens):
        cache = model.init_cache(params, batch, prompt + 1)
        return model.prefill(params, cache, tokens, lengths)[0]

    @jax.jit
    def token_by_token(params, tokens):
        def feed(index, carry):
            cache, _ = carry
            logits, cache = model.extend(params, cache, jax.lax.dynamic_slice_in_dim(tokens, index, 1, axis=1))
            return cache, logits[:, 0]

        start = (model.init_cache(params, batch, prompt + 1), jnp.zeros((batch, model.config.vocab_size)))
        return jax.lax.fori_loop(0, prompt, feed, start)[1]

    return {"prefill": lambda: one_pass(params, tokens), "token_by_token": lambda: token_by_token(params, tokens)}


def bench_prefill(model, params, batch: int, prompt: int, repeats: int) -> dict:
    """Median seconds of both fills, interleaved after one untimed (compiling) round, and their ratio."""
    times = interleaved(prefill_fns(model, params, batch, prompt), repeats, warmup=1)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "batch": batch,
        "prompt": prompt,
        **{f"{k}_seconds": v for k, v in medians.items()},
        "speedup": medians["token_by_token"] / medians["prefill"],
    }


def bench_greedy(model, params, batch: int, new_tokens: int, repeats: int) -> dict:
    """Median seconds and tokens/s of greedy `generate` after a short prompt (EOS never stops it)."""
    prompts = jax.random.randint(jax.random.key(2), (batch, SHORT_PROMPT), 3, model.config.vocab_size)
    lengths = jnp.full((batch,), SHORT_PROMPT, jnp.int32)

    def run():
        return decoding.generate(model, params, prompts, lengths, new_tokens, jax.random.key(0), eos_id=-1)

    median = statistics.median(repeated(run, repeats, warmup=1))
    return {
        "batch": batch,
        "prompt": SHORT_PROMPT,
        "new_tokens": new_tokens,
        "seconds": median,
        "tokens_per_second": batch * new_tokens / median,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark and writes the JSON and Markdown reports; returns the JSON content."""
    args = parse_args(argv)
    bench = Benchmark(__file__, argv, args.out_dir)
    model = build_model(DECODER_BENCH)
    params = jax.jit(model.init)(jax.random.key(0), {DECODER_INPUT_TOKENS: jnp.ones((1, 8), jnp.int32)})
    prefill = [bench_prefill(model, params, b, args.prompt, args.repeats) for b in args.batch_sizes]
    greedy = [bench_greedy(model, params, b, args.new_tokens, args.repeats) for b in args.batch_sizes]
    report = bench.report(vars(args), model="decoder-bench", prefill=prefill, greedy=greedy)
    bench.write(report, markdown(report))
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    """The report as a Markdown page."""
    lines = [
        "# Decoding benchmark\n",
        header_markdown(report) + "\n",
        f"Model: {report['model']}.\n",
        "Filling the cache with a prompt: one `prefill` pass vs one `extend` call per token.\n",
        "| batch | prompt | prefill s | token by token s | speed-up |",
        "|---|---|---|---|---|",
    ]
    for p in report["prefill"]:
        lines.append(
            f"| {p['batch']} | {p['prompt']} | {p['prefill_seconds']:.3f} | "
            f"{p['token_by_token_seconds']:.3f} | {p['speedup']:.1f}x |"
        )
    lines += [
        "",
        "Greedy decoding (`decoding.generate`), prompt 16:",
        "",
        "| batch | new tokens | seconds | tokens/s |",
        "|---|---|---|---|",
    ]
    for g in report["greedy"]:
        lines.append(f"| {g['batch']} | {g['new_tokens']} | {g['seconds']:.3f} | {g['tokens_per_second']:,.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
