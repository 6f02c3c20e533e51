"""Speculative decoding benchmark: SmolLM2-135M alone against SmolLM2-135M helped by each of several drafts.

Target: `--target`, a run folder; by default the real SmolLM2-135M-Instruct, converted once into the data
cache (`convert.converted("smollm2_135m")`: `pretrained.ensure`, then `convert.load`). Drafts: `--drafts
NAME=SOURCE ...`, SOURCE being
  a run folder (model.gin or config.gin, and checkpoints: a trained or distilled draft, a derived folder);
  `random`: a random-init DecoderLM in the target's vocabulary (4 layers, width 256), so acceptance is low;
  `first=K` or `every=M`, optionally `,vocab=N`: the target's first K layers (or every M-th), with a head over
  the N most frequent ids of `--vocab_task`'s first 1M tokens, written once into the data cache by
  `distillspec.drafts.derived_folder` (the folder distillspec/gin/distillspec/derived_smollm2.gin's runs start from; the
  default task is that file's, the Shakespeare + code mixture in SmolLM2's vocabulary).
A draft named X_distilled beside one named X is X distilled: the report sets its block efficiency over X's.

At each batch size and temperature (0: greedy; T > 0 samples), target-only decoding (`decoding.generate`, the
project's plain decoding) and speculative decoding (`distillspec.speculative.decode`) with every draft at every
gamma are compiled first, then timed interleaved (`littlehelp.benchmark.interleaved`): after one untimed round,
`--repeats` rounds that call every program once each, to `--max_new_tokens` per row without EOS. Reported per
(draft, gamma): the median seconds, the speed-up (the median over rounds of target-only seconds / speculative
seconds in the same round), alpha (acceptance rate) and tau (block efficiency) from the engine's counters, and
the per-call costs (median of `--call_repeats` compiled calls of one `extend` of k tokens per row after the
prompts: the target's for k = 1 and the verify call k = gamma + 1, each draft's for k = 1;
c = draft call / target call) with the speed-ups they predict: tau / (c * gamma + 1) (Leviathan et al.,
arXiv 2211.17192) and, with the measured verify cost,
tau * t_target(1) / (gamma * t_draft(1) + t_target(gamma + 1)). Greedy rows check that the speculative tokens
equal the target-only ones; sampled rows cannot (each decode draws its own random stream). The summary gives
each draft's best gamma per (batch, temperature) against the project's speed targets (GOALS): met or missed, and for a
missed one the c, alpha and verify cost that explain it. The load average and the float32 matmul rate are
recorded before, between the (batch, temperature) groups and after.

    python scripts/bench_speculative.py     # random, first 6 layers, and those with an 8,192-id head
    python scripts/bench_speculative.py --drafts scratch=runs/draft_smollm2 \
        scratch_distilled=runs/distill_smollm2 derived=first=6 derived_distilled=runs/distill_first6 \
        derived_vocab=first=6,vocab=8192 derived_vocab_distilled=runs/distill_first6_top8192
writes results/bench_speculative.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import math
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from distillspec import drafts as derived  # noqa: E402
from distillspec import speculative  # noqa: E402
from littlehelp import decoding, runs  # noqa: E402
from littlehelp.benchmark import Benchmark, header_markdown, interleaved  # noqa: E402
from littlehelp.data import tasks  # noqa: E402
from littlehelp.errors import LittlehelpError, exit_on_error  # noqa: E402
from littlehelp.features import DECODER_INPUT_TOKENS, TARGETS  # noqa: E402
from littlehelp.models import DecoderConfig, ModelConfig, build_model  # noqa: E402
from littlehelp.models.convert import Pretrained, run_folder  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colours are",
    "Water boils at a temperature of",
    "My favourite book is",
    "The quick brown fox",
    "In 1492, Columbus",
]
RANDOM_DRAFT = dict(
    emb_dim=256,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    mlp_dim=704,
    tie_embeddings=True,
    scale_tied_logits=False,
)
DEFAULT_DRAFTS = ["scratch=random", "derived=first=6", "derived_vocab=first=6,vocab=8192"]
SMOLLM2 = "smollm2_135m"
# How distillspec/gin/distillspec/derived_smollm2.gin counts the tokens of a reduced vocabulary.
VOCAB_FEATURE_LENGTHS = {TARGETS: 128}
VOCAB_COUNT_TOKENS = 1_000_000
DISTILLED = "_distilled"  # X_distilled is draft X distilled
MIN_DISTILLED_TAU_RATIO = 1.2
TARGET_ONLY = "target only"
SEED = 0
NO_EOS = -1  # rows decode to max_new_tokens


class BenchError(LittlehelpError, ValueError):
    """A setting the benchmark cannot run with; the message names it."""


@dataclasses.dataclass(frozen=True)
class Goal:
    """A speed-up the project aims for at one (batch, temperature): at least `threshold`, or above it if `strict`."""

    batch: int
    temperature: float
    threshold: float
    strict: bool = False

    @property
    def label(self) -> str:
        return f"{'>' if self.strict else '>='} {self.threshold:g}x"

    def met(self, value: float) -> bool:
        return value > self.threshold if self.strict else value >= self.threshold


GOALS = (Goal(1, 0.0, 1.3), Goal(1, 1.0, 1.15), Goal(8, 0.0, 1.0, strict=True))


@dataclasses.dataclass(frozen=True)
class DraftSpec:
    """One `--drafts` entry: a run folder, `random`, or a draft derived from the target (first / every, vocab)."""

    name: str
    source: str  # as given
    folder: Path | None = None
    first: int | None = None
    every: int | None = None
    vocab: int | None = None

    @property
    def is_derived(self) -> bool:
        return self.first is not None or self.every is not None

    @property
    def entry(self) -> str:
        """NAME=SOURCE, as given."""
        return f"{self.name}={self.source}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", help="run folder of the target (default: SmolLM2-135M, converted once)")
    parser.add_argument(
        "--drafts",
        nargs="+",
        default=DEFAULT_DRAFTS,
        metavar="NAME=SOURCE",
        help="SOURCE: a run folder, random, or first=K / every=M [,vocab=N]",
    )
    parser.add_argument(
        "--vocab_task",
        help="seqio Task or Mixture whose tokens choose a vocab=N head (default: "
        "derived_smollm2.gin's; only for the default target)",
    )
    parser.add_argument("--gammas", nargs="+", type=int, default=list(range(1, 8)))
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--temperatures", nargs="+", type=float, default=[0.0, 1.0], help="0 is greedy")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds (median)")
    parser.add_argument("--call_repeats", type=int, default=5, help="timed calls per per-call cost (median)")
    parser.add_argument("--matmul_sizes", nargs="+", type=int, default=[2048])
    parser.add_argument("--matmul_repeats", type=int, default=5)
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    return parser.parse_args(argv)


# ----- settings, checked before anything is loaded -----


def parse_draft(entry: str) -> DraftSpec:
    """One `--drafts` NAME=SOURCE entry; refuses a malformed one, or a folder that is not a run folder."""
    name, separator, source = entry.partition("=")
    if not separator or not source:
        raise BenchError(
            f"--drafts {entry!r}: expected NAME=SOURCE (a run folder, random, or first=K / every=M [,vocab=N])"
        )
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise BenchError(f"--drafts {entry!r}: the name {name!r} may hold only letters, digits, _ and -")
    if source == "random":
        return DraftSpec(name, source)
    if "=" in source:
        return DraftSpec(name, source, **derived_settings(entry, source))
    folder = Path(source).expanduser()
    if runs.gin_file_of(folder) is None:
        raise BenchError(f"--drafts {entry!r}: {folder} is not a run folder (no {' or '.join(runs.MODEL_GINS)})")
    return DraftSpec(name, source, folder=folder)


def derived_settings(entry: str, source: str) -> dict[str, int]:
    """{first or every, and maybe vocab: a positive integer} of a derived draft's SOURCE `first=K[,vocab=N]`."""
    settings = {}
    for item in source.split(","):
        key, _, value = item.partition("=")
        if key not in ("first", "every", "vocab") or key in settings or not value.isdigit() or int(value) < 1:
            raise BenchError(
                f"--drafts {entry!r}: {item!r} is not first=K, every=M or vocab=N (once each, a positive integer)"
            )
        settings[key] = int(value)
    if ("first" in settings) == ("every" in settings):
        raise BenchError(f"--drafts {entry!r}: a derived draft keeps the first=K or every=M-th layers, one of them")
    return settings


def draft_specs(args: argparse.Namespace) -> list[DraftSpec]:
    """The `--drafts`, each well formed, their names distinct; a vocab=N draft needs a task for a `--target`."""
    specs = [parse_draft(entry) for entry in args.drafts]
    names = [spec.name for spec in specs]
    if twice := next((name for name in names if names.count(name) > 1), None):
        raise BenchError(f"--drafts: the name {twice!r} is given more than once")
    if args.target and not args.vocab_task and (reduced := next((s for s in specs if s.vocab), None)):
        raise BenchError(
            f"--drafts {reduced.entry!r}: name the task whose tokens choose the head "
            "with --vocab_task (the default task is SmolLM2's, for the default target only)"
        )
    return specs


def check_settings(args: argparse.Namespace) -> None:
    """Refuses gammas, temperatures, lengths, batch sizes and repeats that no run can use."""
    try:
        for gamma, temperature in itertools.product(args.gammas, args.temperatures):
            speculative.Plan(gamma, args.max_new_tokens, decoding.Sampling(temperature))
    except ValueError as error:
        raise BenchError(str(error)) from None
    for flag, values in (
        ("batch_sizes", args.batch_sizes),
        ("repeats", [args.repeats]),
        ("call_repeats", [args.call_repeats]),
    ):
        if min(values) < 1:
            raise BenchError(f"--{flag} must be >= 1, got {getattr(args, flag)}")


# ----- models -----


def open_target(args: argparse.Namespace) -> runs.RunFolder:
    """The target's run folder (`runs.open_run`: model and vocabulary read, parameters not yet): `--target`, or
    SmolLM2-135M converted once."""
    folder = Path(args.target or run_folder.converted(SMOLLM2)).expanduser()
    if not folder.exists():
        raise BenchError(f"--target {folder} does not exist")
    if runs.gin_file_of(folder) is None:
        raise BenchError(f"--target {folder} is not a run folder (no {' or '.join(runs.MODEL_GINS)})")
    return runs.open_run(folder)


def derivable_config(spec: DraftSpec, target: runs.RunFolder) -> DecoderConfig:
    """The target's config, or BenchError naming `spec`: drafts derive from a DecoderLM only."""
    config = target.model.config
    if not isinstance(config, DecoderConfig):
        raise BenchError(
            f"--drafts {spec.entry!r}: the target {target.folder} is a "
            f"{type(config).__name__}; drafts derive from a DecoderLM only"
        )
    return config


def check_derivable(specs: Sequence[DraftSpec], target: runs.RunFolder) -> None:
    """Refuses a derived draft of a target that is not a DecoderLM, or of layers the target does not have."""
    for spec in (spec for spec in specs if spec.is_derived):
        config = derivable_config(spec, target)
        try:
            derived.layer_indices(config.num_layers, spec.first, spec.every)
            if spec.vocab:
                derived.check_vocabulary_size(spec.vocab, config.vocab_size)
        except derived.DraftError as error:
            raise BenchError(f"--drafts {spec.entry!r}: {error}") from None


def vocab_task(args: argparse.Namespace, vocabulary: Any) -> str:
    """`--vocab_task`, or derived_smollm2.gin's TASK: Shakespeare + code in SmolLM2's vocabulary."""
    return args.vocab_task or tasks.text_mixture("lm", vocabulary, SMOLLM2)


def random_draft_folder(config: ModelConfig, folder: Path) -> Path:
    """A random-init draft (RANDOM_DRAFT) in the vocabulary of the target `config`, written as a run folder."""
    draft_config = DecoderConfig(vocab_size=config.vocab_size, **RANDOM_DRAFT)
    model = build_model(draft_config)
    params = nn.unbox(model.init(jax.random.key(SEED), {DECODER_INPUT_TOKENS: jnp.ones((1, 8), jnp.int32)}))
    draft = Pretrained("llama", draft_config, model, jax.tree.map(np.asarray, params), None, "random draft")
    return run_folder.write_run_folder(draft, folder)


def draft_folder(
    spec: DraftSpec, target: runs.RunFolder, args: argparse.Namespace, vocabulary: Any, scratch: Path
) -> Path:
    """The run folder of a draft: its own, a random one in `scratch`, or the derived one (written once)."""
    if spec.folder is not None:
        return spec.folder
    if not spec.is_derived:
        return random_draft_folder(target.model.config, scratch / spec.name)
    task = vocab_task(args, vocabulary) if spec.vocab else None
    return Path(
        derived.derived_folder(
            derivable_config(spec, target),
            str(target.folder),
            first_layers=spec.first,
            every_layer=spec.every,
            vocabulary_size=spec.vocab,
            task=task,
            feature_lengths=VOCAB_FEATURE_LENGTHS if spec.vocab else None,
            count_tokens=VOCAB_COUNT_TOKENS,
        )
    )


def parameter_count(params: Any) -> int:
    return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params))


def load_models(
    args: argparse.Namespace, specs: Sequence[DraftSpec], scratch: Path
) -> tuple[tuple, dict[str, tuple], Any, dict[str, Any]]:
    """(target, {draft name: draft}) as (model, jax params), the target vocabulary, and a description of all."""
    target_folder = open_target(args)
    check_derivable(specs, target_folder)
    vocabulary = target_folder.vocabulary
    if vocabulary is None:
        raise BenchError(
            f"--target {target_folder.folder} holds no vocabulary (vocabulary/ or VOCABULARY) for the prompts"
        )
    target = speculative.model_and_params(target_folder.load())
    described = {
        "target": {
            "folder": str(target_folder.folder),
            "parameters": parameter_count(target[1]),
            "config": repr(target[0].config),
        },
        "drafts": [],
    }
    loaded = {}
    for spec in specs:
        folder = draft_folder(spec, target_folder, args, vocabulary, scratch)
        target, loaded[spec.name] = speculative.pair(target, runs.load_run(folder))
        described["drafts"].append(
            {
                "name": spec.name,
                "source": spec.source,
                "folder": str(folder),
                "parameters": parameter_count(loaded[spec.name][1]),
                "config": repr(loaded[spec.name][0].config),
            }
        )
        print(
            f"draft {spec.name} ({spec.source}): {folder}, {described['drafts'][-1]['parameters']:,} parameters",
            flush=True,
        )
    return target, loaded, vocabulary, described


# ----- measurements -----


def prompts_of(vocabulary: Any, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `batch` PROMPTS (cycled), right-padded."""
    rows = [[int(i) for i in vocabulary.encode(PROMPTS[i % len(PROMPTS)])] for i in range(batch)]
    return speculative.padded_prompts(rows, None)


def extend_seconds(
    model_and_params: tuple, tokens: np.ndarray, lengths: np.ndarray, ks: Sequence[int], repeats: int
) -> dict[int, float]:
    """{k: median seconds of one `extend` of k tokens per row after the prompts}, in a cache of the prompts plus
    16 slots (or k, if more): every k compiled first, then called in turn round by round (`interleaved`)."""
    model, params = model_and_params
    cache = model.init_cache(params, tokens.shape[0], tokens.shape[1] + max(16, *ks))
    _, cache = jax.jit(model.prefill)(params, cache, tokens, lengths)
    calls = {}
    for k in ks:
        new = jnp.full((tokens.shape[0], k), 5, jnp.int32)
        extend = jax.jit(model.extend).lower(params, cache, new).compile()
        calls[k] = functools.partial(extend, params, cache, new)
    seconds = interleaved(calls, repeats, warmup=1)
    return {k: statistics.median(seconds[k]) for k in ks}


@dataclasses.dataclass(frozen=True)
class CallCosts:
    """Median seconds of one `extend` per row at one batch size: the target's of k tokens, each draft's of 1."""

    target: dict[int, float]
    drafts: dict[str, float]


def call_costs(
    target: tuple, drafts: dict[str, tuple], vocabulary: Any, batch: int, args: argparse.Namespace
) -> CallCosts:
    """The per-call costs at `batch`: target extend(1) and extend(gamma + 1) per gamma, every draft's extend(1)."""
    tokens, lengths = prompts_of(vocabulary, batch)
    costs = CallCosts(
        extend_seconds(target, tokens, lengths, [1, *(gamma + 1 for gamma in args.gammas)], args.call_repeats),
        {name: extend_seconds(draft, tokens, lengths, [1], args.call_repeats)[1] for name, draft in drafts.items()},
    )
    print(
        f"batch {batch}: target call {costs.target[1] * 1e3:.1f} ms; "
        + ", ".join(
            f"{name} call {s * 1e3:.1f} ms (c = {s / costs.target[1]:.3f})" for name, s in costs.drafts.items()
        ),
        flush=True,
    )
    return costs


def target_only_program(
    target: tuple, tokens: np.ndarray, lengths: np.ndarray, sampling: decoding.Sampling, max_new_tokens: int
) -> tuple[Callable[[], Any], float]:
    """Target-only decoding compiled: (a call returning the tokens, compile seconds)."""
    model, params = target
    rng = jax.random.key(SEED)
    start = time.perf_counter()
    compiled = decoding.generate.lower(model, params, tokens, lengths, max_new_tokens, rng, sampling, NO_EOS).compile()
    return (lambda: compiled(params, tokens, lengths, rng)), time.perf_counter() - start


def speculative_program(
    target: tuple, draft: tuple, tokens: np.ndarray, lengths: np.ndarray, plan: speculative.Plan
) -> tuple[Callable[[], Any], float]:
    """Speculative decoding compiled: (a call returning (tokens, lengths, counters), compile seconds)."""
    start = time.perf_counter()
    compiled = speculative.decode.lower(target[0], target[1], draft[0], draft[1], tokens, lengths, SEED, plan).compile()
    return (lambda: compiled(target[1], draft[1], tokens, lengths, SEED)), time.perf_counter() - start


def keeping_output(outputs: dict[str, Any], key: str, call: Callable[[], Any]) -> Callable[[], Any]:
    """`call`, its latest output kept as outputs[key]."""

    def kept() -> Any:
        outputs[key] = call()
        return outputs[key]

    return kept


def program_key(name: str, gamma: int) -> str:
    return f"{name} gamma={gamma}"


def time_group(
    target: tuple,
    drafts: dict[str, tuple],
    vocabulary: Any,
    batch: int,
    temperature: float,
    costs: CallCosts,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Target-only and every (draft, gamma) program at one (batch, temperature), all compiled, then timed in
    `--repeats` interleaved rounds after an untimed one -> (the target-only record, one record per (draft, gamma))."""
    tokens, lengths = prompts_of(vocabulary, batch)
    sampling = decoding.Sampling(temperature)
    programs = {TARGET_ONLY: target_only_program(target, tokens, lengths, sampling, args.max_new_tokens)}
    for name, gamma in itertools.product(drafts, args.gammas):
        plan = speculative.Plan(gamma, args.max_new_tokens, sampling)
        programs[program_key(name, gamma)] = speculative_program(target, drafts[name], tokens, lengths, plan)
    print(
        f"batch {batch}, temperature {temperature:g}: {len(programs)} programs compiled in "
        f"{sum(s for _, s in programs.values()):.1f} s",
        flush=True,
    )
    outputs: dict[str, Any] = {}
    seconds = interleaved(
        {key: keeping_output(outputs, key, call) for key, (call, _) in programs.items()}, rounds=args.repeats, warmup=1
    )  # a compiled program's first call is slower
    alone = {
        "batch": batch,
        "temperature": temperature,
        "seconds": seconds[TARGET_ONLY],
        "median_seconds": statistics.median(seconds[TARGET_ONLY]),
        "compile_seconds": programs[TARGET_ONLY][1],
    }
    alone["tokens_per_second"] = tokens.shape[0] * args.max_new_tokens / alone["median_seconds"]
    records = [
        speculative_record(
            name,
            gamma,
            alone,
            seconds[program_key(name, gamma)],
            outputs[program_key(name, gamma)],
            np.asarray(outputs[TARGET_ONLY]),
            programs[program_key(name, gamma)][1],
            costs,
            args,
        )
        for name, gamma in itertools.product(drafts, args.gammas)
    ]
    return alone, records


def speculative_record(
    name: str,
    gamma: int,
    alone: dict[str, Any],
    seconds: list[float],
    output: tuple,
    target_only_tokens: np.ndarray,
    compile_seconds: float,
    costs: CallCosts,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One (draft, gamma) row: times and speed-up, the engine's alpha and tau, call costs and predictions."""
    out, produced, counters = jax.tree.map(np.asarray, output)
    median = statistics.median(seconds)
    stats = speculative.summarize(counters, gamma, produced, median)
    t_target, t_verify, t_draft = costs.target[1], costs.target[gamma + 1], costs.drafts[name]
    c, tau = t_draft / t_target, stats.block_efficiency
    greedy = alone["temperature"] == 0
    record = {
        "draft": name,
        "batch": alone["batch"],
        "temperature": alone["temperature"],
        "gamma": gamma,
        "max_new_tokens": args.max_new_tokens,
        "seconds": seconds,
        "median_seconds": median,
        "target_only_median_seconds": alone["median_seconds"],
        "compile_seconds": compile_seconds,
        "speedup": statistics.median(a / s for a, s in zip(alone["seconds"], seconds)),
        "tokens_per_second": stats.generated_tokens / median,
        "acceptance_rate": stats.acceptance_rate,
        "block_efficiency": tau,
        "mean_accepted_length": stats.mean_accepted_length,
        "per_position_acceptance": [None if math.isnan(a) else a for a in stats.per_position_acceptance],
        "target_calls": stats.target_calls,
        "draft_calls": stats.draft_calls,
        "target_call_seconds": t_target,
        "verify_call_seconds": t_verify,
        "draft_call_seconds": t_draft,
        "c": c,
        "predicted_speedup": tau / (c * gamma + 1),
        "predicted_speedup_with_verify_cost": tau * t_target / (gamma * t_draft + t_verify),
        "tokens_equal_target_only": bool(np.array_equal(out, target_only_tokens)) if greedy else None,
    }
    print(
        f"  {name} gamma {gamma}: x{record['speedup']:.2f} (predicted x{record['predicted_speedup']:.2f}, with "
        f"verify cost x{record['predicted_speedup_with_verify_cost']:.2f}), alpha {stats.acceptance_rate:.3f}, "
        f"tau {tau:.2f}, tokens equal {equal_cell(record['tokens_equal_target_only'])}",
        flush=True,
    )
    return record


# ----- summary against the speed targets -----


def goal_of(batch: int, temperature: float) -> Goal | None:
    return next((goal for goal in GOALS if (goal.batch, goal.temperature) == (batch, temperature)), None)


def best_rows(results: Sequence[dict[str, Any]]) -> dict[tuple[str, int, float], dict[str, Any]]:
    """{(draft, batch, temperature): its row of the highest measured speed-up}."""
    best: dict[tuple[str, int, float], dict[str, Any]] = {}
    for row in results:
        key = (row["draft"], row["batch"], row["temperature"])
        if key not in best or row["speedup"] > best[key]["speedup"]:
            best[key] = row
    return best


def summary(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (draft, batch, temperature): the best gamma, its speed-up and the figures that explain it, against
    the goal of that (batch, temperature) if one is set (met: None where it does not)."""
    rows = []
    for (name, batch, temperature), row in best_rows(results).items():
        goal = goal_of(batch, temperature)
        rows.append(
            {
                "draft": name,
                "batch": batch,
                "temperature": temperature,
                "best_gamma": row["gamma"],
                "speedup": row["speedup"],
                "block_efficiency": row["block_efficiency"],
                "acceptance_rate": row["acceptance_rate"],
                "c": row["c"],
                "verify_call_seconds": row["verify_call_seconds"],
                "verify_cost": row["verify_call_seconds"] / row["target_call_seconds"],
                "goal": goal.label if goal else None,
                "met": goal.met(row["speedup"]) if goal else None,
            }
        )
    return rows


def distillation(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per draft X_distilled beside X and (batch, temperature): tau of X_distilled at its best gamma over X's
    tau at that gamma, against MIN_DISTILLED_TAU_RATIO."""
    by_key = {(r["draft"], r["batch"], r["temperature"], r["gamma"]): r for r in results}
    rows = []
    for (name, batch, temperature), best in best_rows(results).items():
        undistilled = by_key.get((name.removesuffix(DISTILLED), batch, temperature, best["gamma"]))
        if not name.endswith(DISTILLED) or undistilled is None:
            continue
        ratio = best["block_efficiency"] / undistilled["block_efficiency"]
        rows.append(
            {
                "distilled": name,
                "undistilled": undistilled["draft"],
                "batch": batch,
                "temperature": temperature,
                "gamma": best["gamma"],
                "distilled_block_efficiency": best["block_efficiency"],
                "undistilled_block_efficiency": undistilled["block_efficiency"],
                "ratio": ratio,
                "goal": f">= {MIN_DISTILLED_TAU_RATIO:g}x",
                "met": ratio >= MIN_DISTILLED_TAU_RATIO,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and writes the JSON and Markdown reports; returns the JSON content. Bad settings are
    printed as one line (exit 1)."""
    args = parse_args(argv)
    with exit_on_error("bench_speculative"):
        specs = draft_specs(args)
        check_settings(args)
        bench = Benchmark(__file__, argv, args.out_dir, args.matmul_sizes, args.matmul_repeats)
        with tempfile.TemporaryDirectory() as scratch:
            target, drafts, vocabulary, described = load_models(args, specs, Path(scratch))
            costs = {batch: call_costs(target, drafts, vocabulary, batch, args) for batch in args.batch_sizes}
            groups = [
                time_group(target, drafts, vocabulary, batch, temperature, costs[batch], args)
                for batch, temperature in bench.between(itertools.product(args.batch_sizes, args.temperatures))
            ]
    results = [row for _, rows in groups for row in rows]
    report = bench.report(
        vars(args),
        models=described,
        target_only=[alone for alone, _ in groups],
        results=results,
        summary=summary(results),
        distillation=distillation(results),
    )
    bench.write(report, markdown(report))
    return report


# ----- the Markdown report -----


def mode(batch: int, temperature: float) -> str:
    return f"batch {batch}, {'greedy' if temperature == 0 else f'T = {temperature:g}'}"


def equal_cell(equal: bool | None) -> str:
    return "n/a (sampled)" if equal is None else "yes" if equal else "NO"


def met_cell(met: bool | None) -> str:
    return "-" if met is None else "met" if met else "**missed**"


def models_markdown(report: dict[str, Any]) -> list[str]:
    """The target and the drafts."""
    target = report["models"]["target"]
    return [
        f"Target {target['folder']} ({target['parameters']:,} parameters). "
        f"{report['config']['max_new_tokens']} new tokens per row, no EOS, prompts from the script's PROMPTS.",
        "",
        "| draft | source | folder | parameters |",
        "|---|---|---|---|",
        *[
            f"| {d['name']} | `{d['source']}` | {d['folder']} | {d['parameters']:,} |"
            for d in report["models"]["drafts"]
        ],
        "",
    ]


def group_markdown(alone: dict[str, Any], rows: Sequence[dict[str, Any]]) -> list[str]:
    """One (batch, temperature): target-only decoding, then a row per (draft, gamma)."""
    return [
        f"## {mode(alone['batch'], alone['temperature'])}",
        "",
        f"Target only: {alone['median_seconds']:.3f} s ({alone['tokens_per_second']:.1f} tokens/s), compiled in "
        f"{alone['compile_seconds']:.1f} s.",
        "",
        "| draft | gamma | speculative s | speed-up | tok/s | alpha | tau | target call ms | verify call ms | "
        "draft call ms | c | predicted tau/(c*gamma+1) | predicted with verify cost | tokens equal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['draft']} | {r['gamma']} | {r['median_seconds']:.3f} | {r['speedup']:.2f} | "
            f"{r['tokens_per_second']:.1f} | {r['acceptance_rate']:.3f} | {r['block_efficiency']:.2f} | "
            f"{r['target_call_seconds'] * 1e3:.1f} | {r['verify_call_seconds'] * 1e3:.1f} | "
            f"{r['draft_call_seconds'] * 1e3:.1f} | {r['c']:.3f} | {r['predicted_speedup']:.2f} | "
            f"{r['predicted_speedup_with_verify_cost']:.2f} | {equal_cell(r['tokens_equal_target_only'])} |"
            for r in rows
        ],
        "",
    ]


def why_missed(row: dict[str, Any]) -> str:
    """The figures that explain a missed goal: c, alpha and the verify call's cost."""
    if row["met"] is not False:
        return ""
    return (
        f"c {row['c']:.3f}, alpha {row['acceptance_rate']:.3f}, verify call {row['verify_call_seconds'] * 1e3:.1f} "
        f"ms = {row['verify_cost']:.2f}x a target call"
    )


def summary_markdown(report: dict[str, Any]) -> list[str]:
    """Each draft's best gamma per (batch, temperature) against the goals; distilled over undistilled tau."""
    lines = [
        "## Summary: best gamma against the targets",
        "",
        "| draft | mode | best gamma | speed-up | tau | target | result | why missed |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['draft']} | {mode(r['batch'], r['temperature'])} | {r['best_gamma']} | {r['speedup']:.2f} | "
            f"{r['block_efficiency']:.2f} | {r['goal'] or '-'} | {met_cell(r['met'])} | {why_missed(r)} |"
            for r in report["summary"]
        ],
        "",
    ]
    if report["distillation"]:
        lines += [
            "Distilled over undistilled block efficiency, at the distilled draft's best gamma:",
            "",
            "| distilled | undistilled | mode | gamma | tau distilled | tau undistilled | ratio | target | result |",
            "|---|---|---|---|---|---|---|---|---|",
            *[
                f"| {r['distilled']} | {r['undistilled']} | {mode(r['batch'], r['temperature'])} | {r['gamma']} | "
                f"{r['distilled_block_efficiency']:.2f} | {r['undistilled_block_efficiency']:.2f} | "
                f"{r['ratio']:.2f} | {r['goal']} | {met_cell(r['met'])} |"
                for r in report["distillation"]
            ],
            "",
        ]
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report: set-up, one table per (batch, temperature), the summary against the targets."""
    config = report["config"]
    by_group = {(a["batch"], a["temperature"]): [] for a in report["target_only"]}
    for row in report["results"]:
        by_group[(row["batch"], row["temperature"])].append(row)
    lines = [
        "# Speculative decoding benchmark: target-only against each draft",
        "",
        header_markdown(report) + " Other jobs on these cores (see the load) make the times noisy.",
        "",
        *models_markdown(report),
        "Each (batch, temperature): target-only and every (draft, gamma) program compiled first, then, after one "
        f"untimed round, {config['repeats']} interleaved rounds calling each once. Seconds: the median over rounds; "
        "speed-up: the median over rounds of target-only seconds / speculative seconds in the same round. alpha: "
        "acceptance rate, tau: block efficiency (tokens per target call per row), from the engine's counters. "
        f"Call costs: median of {config['call_repeats']} calls of one `extend` of 1 (target call, draft call) or "
        "gamma + 1 tokens (verify call) per row after the prompts; c = draft call / target call. The paper's "
        "prediction assumes a verify call costs a target call; the next column uses the measured verify cost. "
        "Greedy rows check the tokens equal target-only decoding's; sampled rows (T > 0) draw their own random "
        "streams and cannot.",
        "",
    ]
    for alone in report["target_only"]:
        lines += group_markdown(alone, by_group[(alone["batch"], alone["temperature"])])
    return "\n".join([*lines, *summary_markdown(report)])


if __name__ == "__main__":
    main()
