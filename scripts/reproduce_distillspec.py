"""Reproduces DistillSpec (methods.md section 4) on this machine: SmolLM2-135M served with a small draft.

Stages (a run folder that already holds its final step is reused, so a stopped run resumes):
  1. the undistilled draft: `littlehelp train --gin_file=distillspec/draft_smollm2.gin` (--draft_steps);
  2. distilled drafts: `littlehelp train --gin_file=distillspec/distill_smollm2.gin` from it, one per
     divergence x data source (fixed corpus text, target-generated, on-policy draft-generated),
     --distill_steps more steps each; the share of step time spent generating is read from their logs;
  3. scoring (`distillspec.acceptance`): prompts from Shakespeare's held-out plays, the standard
     library's held-out modules and the HumanEval prompts; the target continues them greedily and at
     temperature 1 once; every draft is scored on those continuations: its exact greedy block
     efficiency at gamma 1..max (the rounds of greedy speculative decoding replayed) and its expected
     acceptance E[1 - TVD(p, q)] at temperature 1;
  4. decoding (`distillspec.speculative.decode`): wall clock of target-only and speculative decoding
     with the undistilled and the best distilled draft at batch 1 and 8, greedy and temperature 1, at
     --timing_gammas, the two timed in turn --timing_repeats times; measured beside replayed block efficiency;
  5. lossy decoding: the best draft at temperature 1 with lenience p/eps over --lenience_eps:
     acceptance and speed-up against the target's mean log-likelihood of what was generated.
Writes results/distillspec.{json,md} and results/distillspec.png; run folders under --work_dir.

    .venv/bin/python scripts/reproduce_distillspec.py            # default: about 45 min on 2 CPU cores
    .venv/bin/python scripts/reproduce_distillspec.py --quick    # smoke test: a few minutes
    .venv/bin/python scripts/reproduce_distillspec.py --undistilled runs/draft_smollm2   # reuse a draft
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from distillspec import acceptance, speculative  # noqa: E402
from distillspec import generate as cli  # noqa: E402
from littlehelp import checkpoints, decoding  # noqa: E402
from littlehelp.data import corpus, pretrained  # noqa: E402
from littlehelp.metrics import machine_load, matmul_rates, read_jsonl, report_header, seconds_of, write_report  # noqa: E402
from littlehelp.models import convert  # noqa: E402
from littlehelp.runs import train  # noqa: E402

RESULT_NAME = "distillspec"
DOMAINS = ("shakespeare", "code", "humaneval")
DIVERGENCES = ("fkl", "rkl", "jsd", "tvd")
SOURCES = ("fixed", "target", "draft")
SOURCE_NAMES = {"fixed": "fixed data", "target": "target-generated", "draft": "on-policy"}
QUICK = dict(draft_steps=12, distill_steps=3, divergences=["fkl", "tvd"], sources=["fixed", "draft"],
             prompts_per_domain=2, max_new_tokens=8, max_gamma=3, timing_gammas=[2], timing_repeats=1,
             lenience_eps=[1.0, 0.3])


@dataclasses.dataclass(frozen=True)
class Draft:
    """A draft's run folder and what trained it (divergence and source None: the undistilled draft)."""

    name: str
    folder: Path
    divergence: str | None = None
    source: str | None = None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring); --quick overrides the sizes with QUICK."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "distillspec"), help="run folders of the drafts")
    parser.add_argument("--undistilled", help="the undistilled draft's run folder (default: WORK_DIR/undistilled)")
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    parser.add_argument("--draft_steps", type=int, default=200, help="plain LM steps of the undistilled draft")
    parser.add_argument("--distill_steps", type=int, default=30, help="distillation steps of each distilled draft")
    parser.add_argument("--distill_learning_rate", type=float, default=1e-2)
    parser.add_argument("--distill_prompt_length", type=int, default=32)
    parser.add_argument("--distill_generation_length", type=int, default=32)
    parser.add_argument("--divergences", nargs="+", default=list(DIVERGENCES), choices=DIVERGENCES)
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--prompts_per_domain", type=int, default=8)
    parser.add_argument("--prompt_tokens", type=int, default=64, help="prompt tokens taken from each text")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--max_gamma", type=int, default=7)
    parser.add_argument("--timing_gammas", nargs="+", type=int, default=[1, 3, 5, 7])
    parser.add_argument("--timing_repeats", type=int, default=3, help="timed repeats per measurement (median)")
    parser.add_argument("--lossy_gamma", type=int, default=5)
    parser.add_argument("--lenience_eps", nargs="+", type=float, default=[1.0, 0.5, 0.2, 0.1, 0.05])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score_only", action="store_true", help="stages 1-3 only (no decoding wall clock)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    args.timing_gammas = [g for g in args.timing_gammas if g <= args.max_gamma]
    if args.lossy_gamma > args.max_gamma:
        args.lossy_gamma = args.max_gamma
    return args


# ----- stages 1 and 2: training the drafts -----

def train_drafts(args: argparse.Namespace) -> tuple[list[Draft], dict[str, float]]:
    """The undistilled draft and every distilled one (trained when missing) and each run's seconds."""
    work = Path(args.work_dir).resolve()
    undistilled = Draft("undistilled", Path(args.undistilled).resolve() if args.undistilled else work / "undistilled")
    print(f"stage 1: the undistilled draft ({args.draft_steps} steps)", flush=True)
    seconds = {undistilled.name: train(undistilled.folder, "distillspec/draft_smollm2.gin", {}, args.draft_steps)}
    start = checkpoints.finished_steps(undistilled.folder / "checkpoints")[-1]  # distillation counts on from it
    drafts = [undistilled]
    print(f"stage 2: {len(args.divergences) * len(args.sources)} distilled drafts ({args.distill_steps} steps each)", flush=True)
    for divergence, source in itertools.product(args.divergences, args.sources):
        draft = Draft(f"{divergence}/{source}", work / f"{divergence}_{source}", divergence, source)
        length = args.distill_prompt_length + args.distill_generation_length
        bindings = {"INITIAL_CHECKPOINT_PATH": undistilled.folder, "DIVERGENCE": repr(divergence), "DATA_SOURCE": repr(source),
                    "PROMPT_LENGTH": args.distill_prompt_length, "GENERATION_LENGTH": args.distill_generation_length,
                    "TASK_FEATURE_LENGTHS": repr({"targets": length}),
                    "optimizers.constant_schedule.learning_rate": args.distill_learning_rate,
                    "trainer.train.eval_every": 10**9, "trainer.train.log_every": 1,
                    "checkpoints.CheckpointConfig.save_interval_steps": args.distill_steps}
        seconds[draft.name] = train(draft.folder, "distillspec/distill_smollm2.gin", bindings,
                                    start + args.distill_steps)
        drafts.append(draft)
    return drafts, seconds


def training_summary(draft: Draft) -> dict[str, float]:
    """The fastest step's seconds (the least disturbed by other jobs; the first step, which compiles, left out)
    and, for a distilled draft, the mean divergence of its first and last 5 steps."""
    records = [r for r in read_jsonl(draft.folder / "metrics.jsonl") if "train/steps_per_second" in r]
    if not records:
        return {}
    summary = {"seconds_per_step": min(1 / r["train/steps_per_second"] for r in records[1:] or records),
               "flops_per_step": records[-1]["train/flops_per_step"]}
    if draft.divergence is not None:
        divergences = [r["train/divergence"] for r in records]
        summary.update(first_divergence=statistics.mean(divergences[:5]), last_divergence=statistics.mean(divergences[-5:]))
    return summary


def generation_shares(drafts: list[Draft], summaries: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Share of step time, and of step FLOPs, spent generating, per sampled source: 1 - fixed / sampled,
    medians over the divergences (the scored sequences have the same shapes for every source)."""
    shares: dict[str, dict[str, float]] = {"time": {}, "flops": {}}
    for measure, key in (("time", "seconds_per_step"), ("flops", "flops_per_step")):
        for source in ("target", "draft"):
            ratios = [summaries[f"{d.divergence}/fixed"][key] / summaries[d.name][key]
                      for d in drafts if d.source == source and f"{d.divergence}/fixed" in summaries]
            if ratios:
                shares[measure][source] = 1 - statistics.median(ratios)
    return shares


# ----- stage 3: prompts, the target's continuations and scoring -----

def domain_texts(domain: str, count: int, seed: int) -> list[str]:
    """`count` held-out texts of a domain, drawn with `seed`."""
    if domain == "shakespeare":
        pool = [p for document in corpus.shakespeare_documents("validation") for p in corpus.passages(document)]
    elif domain == "code":
        pool = [p for source in corpus.stdlib_code("validation") for p in corpus.passages(source) if len(p) > 200]
    else:
        pool = list(pretrained.humaneval_prompts())
    return random.Random(f"{seed}-{domain}").sample(pool, count)


def prompt_rows(vocabulary: Any, args: argparse.Namespace) -> tuple[list[list[int]], list[str]]:
    """Token rows (start token 0, then `prompt_tokens` tokens: a text's first ones, a HumanEval prompt's last
    ones, where its completion begins) and each row's domain."""
    rows, domains = [], []
    for domain in DOMAINS:
        for text in domain_texts(domain, args.prompts_per_domain, args.seed):
            ids = [int(i) for i in vocabulary.encode(text)]
            rows.append([0, *(ids[-args.prompt_tokens:] if domain == "humaneval" else ids[:args.prompt_tokens])])
            domains.append(domain)
    return rows, domains


@dataclasses.dataclass
class References:
    """The prompts and the target's continuations of them (greedy and sampled), as right-padded sequences."""

    prompts: np.ndarray  # [n, p]
    lengths: np.ndarray  # [n]
    domains: list[str]
    greedy: np.ndarray  # [n, p + max_new_tokens + max_gamma]: prompt, then the target's greedy tokens
    sampled: np.ndarray  # [n, p + max_new_tokens]: prompt, then a temperature-1 sample of the target


def with_continuations(prompts: np.ndarray, lengths: np.ndarray, continuations: np.ndarray) -> np.ndarray:
    """Each row's prompt followed directly by its continuation (right-padded)."""
    out = np.zeros((len(prompts), prompts.shape[1] + continuations.shape[1]), np.int32)
    for i, (row, n) in enumerate(zip(prompts, lengths)):
        out[i, :n], out[i, n:n + continuations.shape[1]] = row[:n], continuations[i]
    return out


def references(target: tuple, vocabulary: Any, args: argparse.Namespace) -> References:
    """Prompts of every domain and the target's continuations (no EOS: every row runs its full length)."""
    rows, domains = prompt_rows(vocabulary, args)
    prompts, lengths = speculative.padded_prompts(rows, None)
    model, params = target
    continue_ = lambda n, sampling, seed: np.asarray(decoding.generate(  # noqa: E731
        model, params, prompts, lengths, n, jax.random.key(seed), sampling, -1))
    greedy = continue_(args.max_new_tokens + args.max_gamma, decoding.Sampling(), 0)
    sampled = continue_(args.max_new_tokens, decoding.Sampling(temperature=1.0), args.seed + 1)
    return References(prompts, lengths, domains, with_continuations(prompts, lengths, greedy),
                      with_continuations(prompts, lengths, sampled))


def score(target: tuple, draft: tuple, refs: References, args: argparse.Namespace) -> tuple[dict[str, Any], np.ndarray]:
    """A draft's replayed greedy block efficiency per gamma (all prompts and per domain) and its expected
    acceptance at temperature 1; and its agreement [n, max_new_tokens + max_gamma] with the greedy target."""
    agreement = np.asarray(acceptance.greedy_agreement(draft[0], draft[1], refs.greedy, refs.lengths,
                                                       args.max_new_tokens + args.max_gamma))
    alpha = np.asarray(acceptance.acceptance_probabilities(target[0], target[1], draft[0], draft[1], refs.sampled,
                                                           refs.lengths, args.max_new_tokens, temperature=1.0))
    gammas = range(1, args.max_gamma + 1)
    by_domain = {d: np.array([x == d for x in refs.domains]) for d in DOMAINS}
    standard_error = lambda rows: float(np.std(rows.mean(axis=1), ddof=1) / np.sqrt(len(rows)))  # noqa: E731
    return {
        "greedy_acceptance": float(agreement[:, :args.max_new_tokens].mean()),
        "greedy_acceptance_se": standard_error(agreement[:, :args.max_new_tokens]),
        "greedy_tau": {g: acceptance.greedy_block_efficiency(agreement, g, args.max_new_tokens) for g in gammas},
        "greedy_tau_by_domain": {d: acceptance.greedy_block_efficiency(agreement[rows], args.max_gamma, args.max_new_tokens)
                                 for d, rows in by_domain.items()},
        "alpha": float(alpha.mean()), "alpha_se": standard_error(alpha),
        "alpha_by_domain": {d: float(alpha[rows].mean()) for d, rows in by_domain.items()},
        "expected_tau": {g: acceptance.expected_block_efficiency(float(alpha.mean()), g) for g in gammas},
    }, agreement


# ----- stages 4 and 5: decoding wall clock -----

def timed_groups(call: Any, groups: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, list[Any]]:
    """Total seconds of `call(prompts, lengths)` over the row groups, and each group's result."""
    total, results = 0.0, []
    for prompts, lengths in groups:
        seconds, result = seconds_of(lambda: call(prompts, lengths))
        total, results = total + seconds, results + [jax.tree.map(np.asarray, result)]
    return total, results


def timed_pair(target: tuple, draft: tuple, groups: list[tuple[np.ndarray, np.ndarray]], plan: speculative.Plan,
               args: argparse.Namespace) -> dict[str, Any]:
    """Target-only and speculative decoding of the row groups (one shape, compiled once each), timed in
    turn `timing_repeats` times: median total seconds of each, the last repeat's tokens, the statistics."""
    (model, params), (draft_model, draft_params), seed = target, draft, args.seed
    prompts, lengths = groups[0]
    alone = decoding.generate.lower(model, params, prompts, lengths, plan.max_new_tokens, jax.random.key(seed),
                                    plan.sampling, -1).compile()
    spec = speculative.decode.lower(model, params, draft_model, draft_params, prompts, lengths, seed, plan).compile()
    alone_seconds, spec_seconds = [], []
    for _ in range(args.timing_repeats):
        seconds, alone_tokens = timed_groups(lambda p, n: alone(params, p, n, jax.random.key(seed)), groups)
        alone_seconds.append(seconds)
        seconds, decoded = timed_groups(lambda p, n: spec(params, draft_params, p, n, seed), groups)
        spec_seconds.append(seconds)
    counters = speculative.Counters(*(sum(c[2][i] for c in decoded) for i in range(4)))
    produced = np.concatenate([c[1] for c in decoded])
    return {"target_only_seconds": statistics.median(alone_seconds), "speculative_seconds": statistics.median(spec_seconds),
            "target_only_tokens": alone_tokens, "speculative_tokens": [c[0] for c in decoded],
            "stats": speculative.summarize(counters, plan.gamma, produced, statistics.median(spec_seconds))}


def decoding_rows(refs: References, batch: int) -> list[list[int]]:
    """Rows of each call: batch 1, the first prompt of each domain, one at a time; batch b, b prompts taken
    round-robin over the domains, in one call."""
    if batch == 1:
        return [[refs.domains.index(d)] for d in DOMAINS]
    per_domain = [[i for i, d in enumerate(refs.domains) if d == domain] for domain in DOMAINS]
    return [[i for group in itertools.zip_longest(*per_domain) for i in group if i is not None][:batch]]


def wall_clock(target: tuple, drafts: dict[str, tuple], refs: References, agreements: dict[str, np.ndarray],
               args: argparse.Namespace) -> list[dict[str, Any]]:
    """`timed_pair` per (batch, temperature, draft, gamma); greedy runs are checked against target-only
    tokens and their block efficiency against the replayed one."""
    records = []
    for batch, temperature in itertools.product((1, 8), (0.0, 1.0)):
        calls = decoding_rows(refs, batch)
        groups = [(refs.prompts[rows], refs.lengths[rows]) for rows in calls]
        rows = [i for call in calls for i in call]
        for name, draft in drafts.items():
            for gamma in args.timing_gammas:
                plan = speculative.Plan(gamma, args.max_new_tokens, decoding.Sampling(temperature=temperature), None)
                pair = timed_pair(target, draft, groups, plan, args)
                stats, alone, spec = pair["stats"], pair["target_only_seconds"], pair["speculative_seconds"]
                equal = all(np.array_equal(a, b) for a, b in zip(pair["target_only_tokens"], pair["speculative_tokens"]))
                record = {"batch": batch, "temperature": temperature, "draft": name, "gamma": gamma,
                          "target_only_seconds": alone, "speculative_seconds": spec, "speedup": alone / spec,
                          "acceptance": stats.acceptance_rate, "block_efficiency": stats.block_efficiency,
                          "replayed_block_efficiency": acceptance.greedy_block_efficiency(
                              agreements[name][rows], gamma, args.max_new_tokens) if temperature == 0 else None,
                          "tokens_equal_target_only": equal if temperature == 0 else None}
                print(f"  batch {batch}, T {temperature:g}, {name}, gamma {gamma}: x{record['speedup']:.2f} "
                      f"(target only {alone:.2f}s, speculative {spec:.2f}s), acceptance {stats.acceptance_rate:.3f}, "
                      f"tau {stats.block_efficiency:.2f}", flush=True)
                records.append(record)
    return records


def target_log_likelihood(target: tuple, prompts: np.ndarray, lengths: np.ndarray, tokens: np.ndarray) -> float:
    """The target's mean log-probability (temperature 1) of generated tokens [b, n] after their prompts."""
    sequences = with_continuations(prompts, lengths, tokens)
    log_probs = jax.nn.log_softmax(target[0].logits(target[1], {"decoder_input_tokens": jnp.asarray(sequences)}), -1)
    positions = lengths[:, None] - 1 + np.arange(tokens.shape[1])[None, :]
    picked = jnp.take_along_axis(jnp.take_along_axis(log_probs, positions[..., None], axis=1), tokens[..., None], axis=-1)
    return float(picked.mean())


def lossy(target: tuple, draft: tuple, refs: References, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Lenience p/eps at temperature 1 and gamma `lossy_gamma` over every prompt in batches of 8, each eps
    timed in turn with target-only decoding."""
    groups = [(refs.prompts[i:i + 8], refs.lengths[i:i + 8]) for i in range(0, len(refs.lengths), 8)]
    records = []
    for eps in args.lenience_eps:
        plan = speculative.Plan(args.lossy_gamma, args.max_new_tokens, decoding.Sampling(temperature=1.0), None,
                                speculative.Lenience("p/eps", eps))
        pair = timed_pair(target, draft, groups, plan, args)
        likelihood = lambda outputs: statistics.mean(  # noqa: E731
            target_log_likelihood(target, p, n, t) for (p, n), t in zip(groups, outputs))
        stats, speedup = pair["stats"], pair["target_only_seconds"] / pair["speculative_seconds"]
        record = {"eps": eps, "acceptance": stats.acceptance_rate, "block_efficiency": stats.block_efficiency,
                  "speedup": speedup, "target_log_likelihood": likelihood(pair["speculative_tokens"]),
                  "target_only_log_likelihood": likelihood(pair["target_only_tokens"])}
        print(f"  lenience p/eps, eps {eps:g}: acceptance {stats.acceptance_rate:.3f}, x{speedup:.2f}, target "
              f"log-likelihood {record['target_log_likelihood']:.3f} (target alone "
              f"{record['target_only_log_likelihood']:.3f})", flush=True)
        records.append(record)
    return records


# ----- the report -----

def best_distilled(scores: dict[str, dict], args: argparse.Namespace) -> str:
    """The distilled draft with the highest replayed greedy block efficiency at max_gamma."""
    distilled = [name for name in scores if name != "undistilled"]
    return max(distilled, key=lambda name: scores[name]["greedy_tau"][args.max_gamma])


def plot(report: dict[str, Any], path: Path) -> None:
    """Replayed greedy block efficiency against gamma per draft, and the lossy trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_gamma, trade_off) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"fixed": ":", "target": "--", "draft": "-"}
    for name, scored in report["scores"].items():
        gammas = sorted(int(g) for g in scored["greedy_tau"])
        source = name.split("/")[1] if "/" in name else None
        by_gamma.plot(gammas, [scored["greedy_tau"][g] for g in gammas], styles.get(source, "-"),
                      color="black" if source is None else None, linewidth=2.5 if source is None else 1.2, label=name)
    by_gamma.set(xlabel="gamma (draft tokens per round)", ylabel="greedy block efficiency (tokens per target call)",
                 title="Drafts, replayed on the target's greedy continuations")
    by_gamma.legend(fontsize=7, ncol=2)
    lossy = report["lossy"]
    if not lossy:
        trade_off.set_axis_off()
    x = [r["target_log_likelihood"] for r in lossy]
    trade_off.plot(x, [r["acceptance"] for r in lossy], "o-", label="acceptance")
    trade_off.plot(x, [r["speedup"] for r in lossy], "s-", label="speed-up (batch 8)")
    for r in lossy:
        trade_off.annotate(f"eps {r['eps']:g}", (r["target_log_likelihood"], r["acceptance"]), fontsize=7)
    trade_off.set(xlabel="target's mean log-likelihood of the output", title=f"Lossy SD (p/eps), {report['best']}")
    trade_off.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def score_table(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """One row per draft: training, acceptance, replayed block efficiency per gamma and per domain."""
    gammas = range(1, args.max_gamma + 1)
    base = report["scores"]["undistilled"]["greedy_tau"][args.max_gamma]
    lines = ["| draft | steps | s/step (fastest) | divergence, first -> last 5 steps | greedy acceptance | "
             + " | ".join(f"tau g={g}" for g in gammas) + f" | x undistilled at g={args.max_gamma} | "
             + " | ".join(f"tau {d}" for d in DOMAINS) + " | alpha (T=1) | expected tau (T=1) |",
             "|---" * (9 + args.max_gamma + len(DOMAINS) - 2) + "|"]
    for name, scored in report["scores"].items():
        trained = report["training"].get(name, {})
        divergence = (f"{trained['first_divergence']:.2f} -> {trained['last_divergence']:.2f}"
                      if "first_divergence" in trained else "")
        steps = args.draft_steps if name == "undistilled" else args.distill_steps
        lines.append(
            f"| {name} | {steps} | {trained.get('seconds_per_step', float('nan')):.2f} | {divergence} "
            f"| {scored['greedy_acceptance']:.3f} ± {scored['greedy_acceptance_se']:.3f} | "
            + " | ".join(f"{scored['greedy_tau'][g]:.2f}" for g in gammas)
            + f" | {scored['greedy_tau'][args.max_gamma] / base:.3f} | "
            + " | ".join(f"{scored['greedy_tau_by_domain'][d]:.2f}" for d in DOMAINS)
            + f" | {scored['alpha']:.3f} ± {scored['alpha_se']:.3f} | {scored['expected_tau'][args.max_gamma]:.2f} |")
    return lines


def source_table(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Replayed greedy block efficiency at max_gamma per divergence x data source."""
    lines = ["| divergence | " + " | ".join(SOURCE_NAMES[s] for s in args.sources) + " |",
             "|---" * (1 + len(args.sources)) + "|"]
    for divergence in args.divergences:
        cells = [f"{report['scores'][f'{divergence}/{s}']['greedy_tau'][args.max_gamma]:.3f}" for s in args.sources]
        lines.append(f"| {divergence} | " + " | ".join(cells) + " |")
    return lines


def timing_table(report: dict[str, Any]) -> list[str]:
    lines = ["| batch | T | draft | gamma | target only s | speculative s | speed-up | acceptance | tau (measured) "
             "| tau (replayed) | tokens equal |", "|---" * 11 + "|"]
    for r in report["wall_clock"]:
        replayed = "" if r["replayed_block_efficiency"] is None else f"{r['replayed_block_efficiency']:.2f}"
        equal = "" if r["tokens_equal_target_only"] is None else ("yes" if r["tokens_equal_target_only"] else "NO")
        lines.append(f"| {r['batch']} | {r['temperature']:g} | {r['draft']} | {r['gamma']} | {r['target_only_seconds']:.2f} "
                     f"| {r['speculative_seconds']:.2f} | {r['speedup']:.2f} | {r['acceptance']:.3f} "
                     f"| {r['block_efficiency']:.2f} | {replayed} | {equal} |")
    return lines


def lossy_table(report: dict[str, Any]) -> list[str]:
    lines = ["| eps | acceptance | tau | speed-up | target log-likelihood of the output | target alone |", "|---" * 6 + "|"]
    lines += [f"| {r['eps']:g} | {r['acceptance']:.3f} | {r['block_efficiency']:.2f} | {r['speedup']:.2f} "
              f"| {r['target_log_likelihood']:.3f} | {r['target_only_log_likelihood']:.3f} |" for r in report["lossy"]]
    return lines


def targets_section(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The issue's targets against what was measured: block efficiency ratio, speed-ups, on-policy vs target data."""
    scores, g, best = report["scores"], args.max_gamma, report["best"]
    ratio = scores[best]["greedy_tau"][g] / scores["undistilled"]["greedy_tau"][g]
    sampled = max((n for n in scores if n != "undistilled"), key=lambda n: scores[n]["expected_tau"][g])
    sampled_ratio = scores[sampled]["expected_tau"][g] / scores["undistilled"]["expected_tau"][g]
    lines = ["## Targets", "", "| target | measured | met |", "|---|---|---|",
             f"| distilled greedy block efficiency >= 1.3x the undistilled draft's at gamma {g} | {ratio:.3f}x ({best}) "
             f"| {'yes' if ratio >= 1.3 else 'no'} |",
             f"| (temperature 1, expected from alpha) | {sampled_ratio:.3f}x ({sampled}) | {'yes' if sampled_ratio >= 1.3 else 'no'} |"]
    for batch, wanted in ((1, 2.0), (8, 1.0)):
        records = [r for r in report["wall_clock"] if r["batch"] == batch and r["draft"] == best]
        if records:
            top = max(records, key=lambda r: r["speedup"])
            met = top["speedup"] >= wanted if batch == 1 else top["speedup"] > wanted
            lines.append(f"| speed-up {'>= 2x' if batch == 1 else '> 1x'} at batch {batch} ({best}) | x{top['speedup']:.2f} "
                         f"(T {top['temperature']:g}, gamma {top['gamma']}) | {'yes' if met else 'no'} |")
    lines += ["", "On-policy (draft-generated) against target-generated data, per divergence: greedy tau at gamma "
              f"{g} and alpha, on-policy / target-generated:", ""]
    for divergence in args.divergences:
        on, off = scores.get(f"{divergence}/draft"), scores.get(f"{divergence}/target")
        if on and off:
            lines.append(f"- {divergence}: tau {on['greedy_tau'][g] / off['greedy_tau'][g]:.3f}, "
                         f"alpha {on['alpha'] / off['alpha']:.3f}")
    return [*lines, ""]


def decoding_sections(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The wall-clock and lossy sections of the report."""
    return [
        f"## Wall clock: target-only vs speculative decoding (undistilled and best distilled draft, {report['best']})", "",
        "Batch 1: the first prompt of each domain, one call each (seconds summed); batch 8: prompts round-robin over the "
        f"domains in one call. Seconds: the median of {args.timing_repeats} repeats, each timing target-only and then "
        "speculative decoding of the same prompts (compiled before).", "",
        *timing_table(report), "",
        f"## Lossy speculative decoding ({report['best']}, temperature 1, gamma {args.lossy_gamma}, all prompts in "
        "batches of 8, lenience p/eps)", "", *lossy_table(report), "",
    ]


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    """results/distillspec.md: set-up, the tables; the verdict is written beside them by hand."""
    shares = "; ".join(f"{SOURCE_NAMES[s]} {v:.0%} of the time ({report['generation_share']['flops'][s]:.0%} of the FLOPs)"
                       for s, v in report["generation_share"]["time"].items())
    rates = report["matmul_flops_per_second"]
    return "\n".join([
        "# DistillSpec on SmolLM2-135M: distilled drafts and speculative decoding on 2 CPU cores", "",
        f"Date {report['date']}, jax {report['jax_version']} ({report['backend']}), {report['machine']['cpu_count']} CPUs. "
        f"Command: `{report['command']}` ({report['seconds'] / 60:.0f} min). Load at start `{report['load']['start']['uptime']}`, "
        f"at end `{report['load']['end']['uptime']}`; float32 matmul GFLOP/s before "
        f"{', '.join(f'{k}: {v / 1e9:.0f}' for k, v in rates['before'].items())}, after "
        f"{', '.join(f'{k}: {v / 1e9:.0f}' for k, v in rates['after'].items())}.", "",
        f"Target: SmolLM2-135M-Instruct. Drafts: `gin/distillspec/draft_smollm2.gin` (4 layers, width 256, 15.5M "
        f"parameters) trained {args.draft_steps} steps on the corpus, then each distilled "
        f"{args.distill_steps} steps by `gin/distillspec/distill_smollm2.gin` (batch 8, prompt "
        f"{args.distill_prompt_length} + {args.distill_generation_length} generated tokens, constant learning rate "
        f"{args.distill_learning_rate:g}). Share of each step spent generating (fastest steps; other jobs on the "
        f"machine make the time share noisy): {shares or 'not measured'}.", "",
        f"Prompts: {args.prompts_per_domain} per domain from {', '.join(DOMAINS)} (held-out plays, held-out standard-library "
        f"modules, HumanEval prompts), {args.prompt_tokens} tokens each, {args.max_new_tokens} new tokens, no EOS.", "",
        "## Drafts: acceptance and greedy block efficiency", "",
        "tau: tokens per target call, replayed exactly from one scoring pass on the target's greedy continuations "
        "(`distillspec.acceptance`); alpha: E[1 - TVD(p, q)] along temperature-1 target samples, and the expected "
        "tau (1 - alpha^(g+1)) / (1 - alpha). ± : standard error over the prompts (each prompt's mean over its "
        "tokens is one observation).", "", *score_table(report, args), "",
        f"Greedy tau at gamma {args.max_gamma} by divergence and data source (undistilled: "
        f"{report['scores']['undistilled']['greedy_tau'][args.max_gamma]:.3f}):", "", *source_table(report, args), "",
        *(decoding_sections(report, args) if report["wall_clock"] else ["Decoding not run (--score_only).", ""]),
        *targets_section(report, args),
    ])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs every stage and writes the report; returns its JSON content."""
    args = parse_args(argv)
    started = time.perf_counter()
    load_start, rates_before = machine_load(), matmul_rates([2048])
    drafts, train_seconds = train_drafts(args)
    summaries = {d.name: {**training_summary(d), "seconds": train_seconds[d.name]} for d in drafts}
    print("stage 3: scoring every draft on the target's continuations", flush=True)
    smol = convert.load(pretrained.ensure("smollm2_135m"))
    target, _ = speculative.pair(smol, cli.restore(cli.open_source(str(drafts[0].folder))))  # jax arrays, once
    loaded = {d.name: speculative.pair(target, cli.restore(cli.open_source(str(d.folder))))[1] for d in drafts}
    refs = references(target, smol.vocabulary, args)
    scored = {name: score(target, draft, refs, args) for name, draft in loaded.items()}
    scores, agreements = {k: v[0] for k, v in scored.items()}, {k: v[1] for k, v in scored.items()}
    for name, scored in scores.items():
        print(f"  {name}: greedy acceptance {scored['greedy_acceptance']:.3f}, tau(g={args.max_gamma}) "
              f"{scored['greedy_tau'][args.max_gamma]:.2f}, alpha {scored['alpha']:.3f}", flush=True)
    best = best_distilled(scores, args)
    clock, lossy_records = [], []
    if not args.score_only:
        print(f"stage 4: wall clock with the undistilled draft and {best}", flush=True)
        clock = wall_clock(target, {name: loaded[name] for name in ("undistilled", best)}, refs, agreements, args)
        print(f"stage 5: lossy speculative decoding with {best}", flush=True)
        lossy_records = lossy(target, loaded[best], refs, args)
    rates_after, load_end = matmul_rates([2048]), machine_load()
    report = {**report_header({k: v for k, v in vars(args).items() if k != "out_dir"}, (load_start, load_end),
                              (rates_before, rates_after)),
              "command": " ".join(["python scripts/reproduce_distillspec.py", *(argv if argv is not None else sys.argv[1:])]),
              "seconds": time.perf_counter() - started, "training": summaries,
              "generation_share": generation_shares(drafts, summaries), "scores": scores, "best": best,
              "wall_clock": clock, "lossy": lossy_records}
    write_report(args.out_dir, RESULT_NAME, report, markdown(report, args))
    plot(report, Path(args.out_dir) / f"{RESULT_NAME}.png")
    return report


if __name__ == "__main__":
    main()
