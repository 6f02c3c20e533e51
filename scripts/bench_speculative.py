"""Speculative decoding benchmark: SmolLM2-135M helped by a small draft, greedy, on this machine.

Target: the real SmolLM2-135M-Instruct (`littlehelp.data.pretrained.ensure("smollm2_135m")`, then
`convert.load`). Draft: `--draft`, a run folder (model.gin + checkpoints); without it a random-init
DecoderLM with SmolLM2's vocabulary (4 layers, width 256) is written to a temporary run folder, so
acceptance is low and speculative decoding is slower than the target alone: the point is the
measurement and the cost profile. Measured at each batch size and gamma, after compilation:
  target-only tokens/s (`littlehelp.decoding.generate`) and speculative tokens/s
  (`distillspec.speculative.decode`), both to `--max_new_tokens` without EOS; speculative greedy
  tokens are checked equal to the target-only ones;
  per-call seconds of one `extend` of k tokens (target: k = 1 and gamma + 1; draft: k = 1), so
  c = draft call / target call and the expected speed-up tau / (c * gamma + 1) (Leviathan et al., arXiv 2211.17192) can be
  set beside the measured one, tau being the measured block efficiency; and the same with the measured
  verify-call cost: tau * t_target(1) / (gamma * t_draft(1) + t_target(gamma + 1)).
The load average and the float32 matmul rate are recorded before and after (other jobs share the cores).

    python scripts/bench_speculative.py                      # the default run (a few minutes on 2 cores)
    python scripts/bench_speculative.py --draft runs/distilled_draft --gammas 3 5 7
writes results/bench_speculative.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from distillspec import generate as cli  # noqa: E402
from distillspec import speculative  # noqa: E402
from littlehelp import decoding  # noqa: E402
from littlehelp.benchmark import Benchmark, header_markdown, repeated, seconds_of  # noqa: E402
from littlehelp.data import pretrained  # noqa: E402
from littlehelp.models import DecoderConfig, build_model, convert  # noqa: E402
from littlehelp.models.convert import Pretrained, run_folder  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
           "The three primary colours are", "Water boils at a temperature of", "My favourite book is",
           "The quick brown fox", "In 1492, Columbus"]
RANDOM_DRAFT = dict(emb_dim=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64, mlp_dim=704,
                    tie_embeddings=True, scale_tied_logits=False)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draft", help="run folder of the draft (default: a random-init draft, see above)")
    parser.add_argument("--gammas", nargs="+", type=int, default=list(range(1, 8)))
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--call_repeats", type=int, default=5, help="timed calls per per-call cost (median)")
    parser.add_argument("--matmul_sizes", nargs="+", type=int, default=[2048])
    parser.add_argument("--matmul_repeats", type=int, default=5)
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    return parser.parse_args(argv)


def random_draft_folder(target: Pretrained, folder: Path) -> Path:
    """A random-init draft with the target's vocabulary written as a run folder (model.gin + checkpoints)."""
    config = DecoderConfig(vocab_size=target.config.vocab_size, **RANDOM_DRAFT)
    model = build_model(config)
    params = nn.unbox(model.init(jax.random.key(0), {"decoder_input_tokens": jnp.ones((1, 8), jnp.int32)}))
    params = jax.tree.map(np.asarray, params)
    return run_folder.write_run_folder(Pretrained("llama", config, model, params, target.vocabulary, "random draft"), folder)


def prompts_of(vocabulary: Any, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `batch` PROMPTS (cycled), right-padded."""
    rows = [[int(i) for i in vocabulary.encode(PROMPTS[i % len(PROMPTS)])] for i in range(batch)]
    return speculative.padded_prompts(rows, None)


def target_only(target: tuple, tokens: np.ndarray, lengths: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Target-only greedy decoding: compile, then one timed call."""
    model, params = target
    arguments = (model, params, tokens, lengths, args.max_new_tokens, jax.random.key(0), decoding.Sampling(), -1)
    compiled = decoding.generate.lower(*arguments).compile()
    seconds, out = seconds_of(lambda: compiled(*arguments[1:4], arguments[5]))
    return {"seconds": seconds, "tokens_per_second": out.size / seconds, "tokens": np.asarray(out)}


def speculative_run(target: tuple, draft: tuple, tokens: np.ndarray, lengths: np.ndarray, gamma: int,
                    args: argparse.Namespace) -> dict[str, Any]:
    """Speculative greedy decoding: compile, then one timed call; its statistics."""
    plan = speculative.Plan(gamma, args.max_new_tokens)
    arguments = (target[0], target[1], draft[0], draft[1], tokens, lengths, 0, plan)
    start = time.perf_counter()
    compiled = speculative.decode.lower(*arguments).compile()
    compile_seconds = time.perf_counter() - start
    seconds, (out, produced, counters) = seconds_of(lambda: compiled(target[1], draft[1], tokens, lengths, 0))
    stats = speculative.summarize(counters, gamma, np.asarray(produced), seconds)
    return {"seconds": seconds, "compile_seconds": compile_seconds, "tokens_per_second": stats.generated_tokens / seconds,
            "tokens": np.asarray(out), "stats": stats}


def call_seconds(model_and_params: tuple, tokens: np.ndarray, lengths: np.ndarray, k: int, repeats: int) -> float:
    """Median seconds of one `extend` of k tokens per row after the prompts (compiled first)."""
    model, params = model_and_params
    cache = model.init_cache(params, tokens.shape[0], tokens.shape[1] + 16)
    _, cache = jax.jit(model.prefill)(params, cache, tokens, lengths)
    extend = jax.jit(model.extend).lower(params, cache, jnp.ones((tokens.shape[0], k), jnp.int32)).compile()
    new = jnp.full((tokens.shape[0], k), 5, jnp.int32)
    return statistics.median(repeated(lambda: extend(params, cache, new), repeats, warmup=1))


def batch_results(target: tuple, draft: tuple, vocabulary: Any, batch: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every gamma's record at one batch size."""
    tokens, lengths = prompts_of(vocabulary, batch)
    alone = target_only(target, tokens, lengths, args)
    t_target = {k: call_seconds(target, tokens, lengths, k, args.call_repeats) for k in [1, *(g + 1 for g in args.gammas)]}
    t_draft = call_seconds(draft, tokens, lengths, 1, args.call_repeats)
    print(f"batch {batch}: target only {alone['tokens_per_second']:.1f} tokens/s; target call {t_target[1] * 1e3:.1f} ms, "
          f"draft call {t_draft * 1e3:.1f} ms (c = {t_draft / t_target[1]:.3f})", flush=True)
    records = []
    for gamma in args.gammas:
        spec = speculative_run(target, draft, tokens, lengths, gamma, args)
        stats, c = spec["stats"], t_draft / t_target[1]
        record = {
            "batch": batch, "gamma": gamma, "max_new_tokens": args.max_new_tokens,
            "target_only_tokens_per_second": alone["tokens_per_second"], "target_only_seconds": alone["seconds"],
            "speculative_tokens_per_second": spec["tokens_per_second"], "speculative_seconds": spec["seconds"],
            "compile_seconds": spec["compile_seconds"],
            "measured_speedup": spec["tokens_per_second"] / alone["tokens_per_second"],
            "acceptance_rate": stats.acceptance_rate, "mean_accepted_length": stats.mean_accepted_length,
            "per_position_acceptance": list(stats.per_position_acceptance), "block_efficiency": stats.block_efficiency,
            "target_calls": stats.target_calls, "draft_calls": stats.draft_calls,
            "target_call_seconds": t_target[1], "verify_call_seconds": t_target[gamma + 1], "draft_call_seconds": t_draft,
            "c": c, "expected_speedup": stats.block_efficiency / (c * gamma + 1),
            "expected_speedup_with_verify_cost": stats.block_efficiency * t_target[1] / (gamma * t_draft + t_target[gamma + 1]),
            "tokens_equal_target_only": bool(np.array_equal(spec["tokens"], alone["tokens"])),
        }
        print(f"  gamma {gamma}: {record['speculative_tokens_per_second']:.1f} tokens/s (x{record['measured_speedup']:.2f}; "
              f"expected x{record['expected_speedup']:.2f}, with verify cost x{record['expected_speedup_with_verify_cost']:.2f}), "
              f"acceptance {stats.acceptance_rate:.3f}, tau {stats.block_efficiency:.2f}, "
              f"equal {record['tokens_equal_target_only']}", flush=True)
        records.append(record)
    return records


def models(args: argparse.Namespace, scratch: Path) -> tuple[tuple, tuple, Any, dict[str, Any]]:
    """(target, draft) as (model, jax params), the target vocabulary, and a description of both."""
    smol = convert.load(pretrained.ensure("smollm2_135m"))
    draft_folder = Path(args.draft) if args.draft else random_draft_folder(smol, scratch / "random_draft")
    source = cli.open_source(str(draft_folder))
    if not isinstance(source, cli.RunFolder):
        raise speculative.SpeculativeError(f"--draft {draft_folder} is not a run folder with {' or '.join(cli.MODEL_GINS)}")
    speculative.check_vocabularies(smol.model, source.model)
    target, draft = speculative.pair(smol, cli.restore(source))
    count = lambda params: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))  # noqa: E731
    described = {"target": {"source": smol.source, "parameters": count(target[1])},
                 "draft": {"source": args.draft or f"random init {RANDOM_DRAFT}", "parameters": count(draft[1]),
                           "config": repr(source.model.config)}}
    return target, draft, smol.vocabulary, described


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and writes the JSON and Markdown reports; returns the JSON content."""
    args = parse_args(argv)
    bench = Benchmark(__file__, argv, args.out_dir, args.matmul_sizes, args.matmul_repeats)
    with tempfile.TemporaryDirectory() as scratch:
        target, draft, vocabulary, described = models(args, Path(scratch))
        results = [r for batch in args.batch_sizes for r in batch_results(target, draft, vocabulary, batch, args)]
    report = bench.report(vars(args), models=described, results=results)
    bench.write(report, markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report: set-up, machine load, one table row per (batch, gamma)."""
    models_ = report["models"]
    lines = [
        "# Speculative decoding benchmark: SmolLM2-135M with a draft, greedy", "", header_markdown(report)
        + " Other jobs share these cores: absolute rates are noisy.", "",
        f"Target {models_['target']['source']} ({models_['target']['parameters']:,} "
        f"parameters); draft {models_['draft']['source']} ({models_['draft']['parameters']:,} parameters). "
        f"{report['config']['max_new_tokens']} new tokens per row, no EOS, prompts from the script's PROMPTS.", "",
        "| batch | gamma | target-only tok/s | speculative tok/s | speed-up | acceptance | tau | target call ms | "
        "verify call ms | draft call ms | c | expected tau/(c*gamma+1) | expected with verify cost | tokens equal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {r['batch']} | {r['gamma']} | {r['target_only_tokens_per_second']:.1f} | {r['speculative_tokens_per_second']:.1f} "
          f"| {r['measured_speedup']:.2f} | {r['acceptance_rate']:.3f} | {r['block_efficiency']:.2f} "
          f"| {r['target_call_seconds'] * 1e3:.1f} | {r['verify_call_seconds'] * 1e3:.1f} | {r['draft_call_seconds'] * 1e3:.1f} "
          f"| {r['c']:.3f} | {r['expected_speedup']:.2f} | {r['expected_speedup_with_verify_cost']:.2f} "
          f"| {'yes' if r['tokens_equal_target_only'] else 'NO'} |" for r in report["results"]],
        "", "Times are one call each after compilation. tau: measured block efficiency (tokens per target call per row). "
        "Call costs: median of one `extend` of 1 (target call, draft call) or gamma + 1 tokens (verify call) per row "
        "after the prompts. The paper's formula assumes a verify call costs a target call; on a CPU it costs more, "
        "so the last expected column uses the measured verify cost.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
