"""Speculative decoding from the command line: a target model helped by a draft.

    python -m distillspec.generate --target=<converted run folder | .gguf | HF folder> \
        --draft=<run folder with model.gin + checkpoints> --prompt="The capital of France is" --gamma=5 \
        [--max_new_tokens=32 --temperature=0 --top_k=0 --top_p=1 --lenience=p/eps --eps=0.5 --seed=0 --chat --baseline]

Prints the continuation and the decode's statistics, one line each; `--baseline` also decodes with the
target alone (`littlehelp.decoding.generate`) and compares the times, each measured after a warm-up
call that compiles. Bad input (an empty prompt, a missing folder, gamma < 1, a draft whose vocabulary
differs from the target's in size or in any piece, a prompt plus --max_new_tokens longer than the
target's or the draft's context length) is refused in one line before any run folder's parameters are
read: a run folder is opened with `littlehelp.runs.open_run` (its model from its model.gin or config.gin,
its vocabulary from its vocabulary/ folder or the VOCABULARY its gin file binds, a training run's
config.gin) and its parameters read last (`RunFolder.load`). A GGUF file or HF folder is loaded whole
first (its config and vocabulary come with its weights).

This module is the command only: library code and scripts load a run with `littlehelp.runs.load_run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from distillspec import speculative
from littlehelp import runs
from littlehelp.errors import exit_on_error


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m distillspec.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="converted run folder, .gguf file or HF folder")
    parser.add_argument(
        "--draft", required=True, help="run folder (model.gin or config.gin, and checkpoints) or as --target"
    )
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--gamma", type=int, default=5, help="draft tokens per round")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--lenience", choices=speculative.LENIENCE_KINDS, help="lossy acceptance (DistillSpec)")
    parser.add_argument("--eps", type=float, default=1.0, help="the lenience's eps in (0, 1]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the target vocabulary's chat template")
    parser.add_argument("--baseline", action="store_true", help="also time target-only decoding")
    return parser.parse_args(argv)


def open_source(path: str) -> runs.RunFolder | Path:
    """A run folder (`runs.open_run`: its model.gin or config.gin read, no parameters) or the path of a file /
    folder for `convert.load`."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise speculative.SpeculativeError(f"{folder} does not exist")
    if folder.is_dir() and runs.gin_file_of(folder) is not None:
        return runs.open_run(folder)
    return folder


def check_same_pieces(args: argparse.Namespace, target: Any, draft: Any | None) -> None:
    """Refuses a draft whose vocabulary is unknown or gives some id another piece than the target's: equal
    sizes are not enough (`TokenizerVocabulary.pieces_fingerprint`)."""
    from littlehelp.data.hf_vocab import TokenizerVocabulary

    if draft is None:
        raise speculative.SpeculativeError(
            f"draft {args.draft} holds no vocabulary (no vocabulary/ folder, no "
            "VOCABULARY in its gin file) to compare with the target's"
        )
    for role, path, vocabulary in (("target", args.target, target), ("draft", args.draft, draft)):
        if not isinstance(vocabulary, TokenizerVocabulary):
            raise speculative.SpeculativeError(
                f"{role} {path}'s vocabulary is a {type(vocabulary).__name__}, whose "
                "pieces cannot be compared (a TokenizerVocabulary's can)"
            )
    if target.pieces_fingerprint != draft.pieces_fingerprint:
        sizes = (
            f"the same {target.vocab_size} ids"
            if target.vocab_size == draft.vocab_size
            else f"{target.vocab_size} and {draft.vocab_size} ids"
        )
        raise speculative.SpeculativeError(
            f"draft {args.draft} and target {args.target} have different vocabularies "
            f"({sizes}, other pieces); the draft must share the target's tokenizer"
        )


def prompt_ids(vocabulary: Any, prompt: str, chat: bool) -> list[int]:
    """The prompt's token ids (one user message in the chat template with `chat`)."""
    if chat:
        if not getattr(vocabulary, "chat_template", None):
            raise speculative.SpeculativeError("--chat: the target vocabulary has no chat template")
        prompt = vocabulary.render_chat([{"role": "user", "content": prompt}])
    ids = [int(i) for i in vocabulary.encode(prompt)]
    if not ids:
        raise speculative.SpeculativeError("--prompt encodes to no tokens")
    return ids


def text(vocabulary: Any, tokens: np.ndarray, length: int) -> str:
    """The continuation's text, EOS left out."""
    ids = [int(t) for t in tokens[:length] if t != vocabulary.eos_id]
    return vocabulary.decode(ids)


def opened(source: runs.RunFolder | Path) -> runs.RunFolder | Any:
    """A run folder as it is (its parameters are read last), a GGUF file or HF folder loaded (`convert.load`)."""
    from littlehelp.models import convert

    return source if isinstance(source, runs.RunFolder) else convert.load(source)


def with_params(source: runs.RunFolder | Any) -> Any:
    """A run folder loaded (`runs.LoadedRun`: its newest good step's parameters read now); a loaded
    `Pretrained` as it is."""
    return source.load() if isinstance(source, runs.RunFolder) else source


def checked_prompt(
    args: argparse.Namespace, target: runs.RunFolder | Any, draft: runs.RunFolder | Any
) -> tuple[list[int], Any]:
    """(prompt ids, target vocabulary), once the draft shares the target's vocabulary (size and pieces) and the
    prompt plus --max_new_tokens fits both models' context length; run folders' parameters are not read."""
    speculative.check_vocabularies(target.model, draft.model)
    vocabulary = target.vocabulary
    if vocabulary is None:
        raise speculative.SpeculativeError(f"{args.target} holds no vocabulary to encode the prompt with")
    check_same_pieces(args, vocabulary, draft.vocabulary)
    prompt = prompt_ids(vocabulary, args.prompt, args.chat)
    speculative.check_context(target.model, draft.model, len(prompt), args.max_new_tokens)
    return prompt, vocabulary


def check_args(args: argparse.Namespace) -> speculative.Plan:
    """The flags' Plan (prompt, gamma, lengths, sampling and lenience checked) before any model is read."""
    from littlehelp.decoding import Sampling

    if not args.prompt:
        raise speculative.SpeculativeError("--prompt is empty")
    try:
        sampling = Sampling(args.temperature, args.top_k, args.top_p)
    except ValueError as error:
        raise speculative.SpeculativeError(str(error)) from None
    rule = speculative.lenience_rule((args.lenience, args.eps) if args.lenience else None)
    return speculative.Plan(args.gamma, args.max_new_tokens, sampling, None, rule)


def baseline_seconds(
    target: Any, prompt: list[int], plan: speculative.Plan, eos_id: int, seed: int
) -> tuple[float, np.ndarray]:
    """Target-only decoding's time (after a warm-up call) and tokens."""
    from littlehelp import decoding

    model, params = target
    tokens, lengths = np.array([prompt], np.int32), np.array([len(prompt)], np.int32)

    def call():
        return jax.block_until_ready(
            decoding.generate(
                model, params, tokens, lengths, plan.max_new_tokens, jax.random.key(seed), plan.sampling, eos_id
            )
        )

    call()
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, np.asarray(out)[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Decodes the prompt speculatively (and with the target alone with --baseline); prints and returns the results."""
    plan = check_args(args)
    sources = open_source(args.target), open_source(args.draft)
    target, draft = opened(sources[0]), opened(sources[1])
    prompt, vocabulary = checked_prompt(args, target, draft)
    target, draft = speculative.pair(with_params(target), with_params(draft))
    lenience = (args.lenience, args.eps) if args.lenience else None
    decode = lambda: speculative.generate(  # noqa: E731
        target,
        draft,
        [prompt],
        gamma=args.gamma,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        lenience=lenience,
        seed=args.seed,
        eos_id=int(vocabulary.eos_id),
    )
    out = decode()
    if args.baseline:
        out = decode()  # timed after the compiling call
    stats = out.stats
    print(f"continuation: {text(vocabulary, out.tokens[0], int(out.lengths[0]))!r}")
    print(
        f"speculative: {stats.generated_tokens} tokens in {stats.wall_seconds:.2f} s "
        f"({stats.generated_tokens / stats.wall_seconds:.1f} tokens/s"
        f"{', compilation included' if not args.baseline else ''}); "
        f"acceptance {stats.acceptance_rate:.3f}, mean accepted {stats.mean_accepted_length:.2f} "
        f"of gamma {args.gamma}, "
        f"block efficiency {stats.block_efficiency:.2f}, per position "
        f"[{', '.join(f'{a:.2f}' for a in stats.per_position_acceptance)}], "
        f"{stats.target_calls} target / {stats.draft_calls} draft calls"
    )
    result = {"tokens": out.tokens[0, : out.lengths[0]].tolist(), "stats": dataclasses.asdict(stats)}
    if args.baseline:
        seconds, alone = baseline_seconds(target, prompt, plan, int(vocabulary.eos_id), args.seed)
        count = int((alone != 0).sum())
        same = "identical" if np.array_equal(alone, out.tokens[0]) else "different"
        print(
            f"target only: {count} tokens in {seconds:.2f} s ({count / seconds:.1f} tokens/s); speed-up "
            f"{seconds / count * stats.generated_tokens / stats.wall_seconds:.2f}x; tokens {same}"
        )
        result["baseline"] = {"seconds": seconds, "tokens": alone[:count].tolist()}
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command: bad input is printed as one line and exits with the error's code."""
    args = parse_args(argv)
    with exit_on_error("distillspec.generate"):
        return run(args)


if __name__ == "__main__":
    main()
