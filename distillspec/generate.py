"""Speculative decoding from the command line: a target model helped by a draft.

    python -m distillspec.generate --target=<converted run folder | .gguf | HF folder> \
        --draft=<run folder with model.gin + checkpoints> --prompt="The capital of France is" --gamma=5 \
        [--max_new_tokens=32 --temperature=0 --top_k=0 --top_p=1 --lenience=p/eps --eps=0.5 --seed=0 --chat --baseline]

Prints the continuation and the decode's statistics, one line each; `--baseline` also decodes with the
target alone (`littlehelp.decoding.generate`) and compares the times, each measured after a warm-up
call that compiles. Bad input (an empty prompt, a missing folder, gamma < 1, a draft whose vocabulary
differs from the target's in size or in any piece, a prompt plus --max_new_tokens longer than the
target's or the draft's context length) is refused in one line before any run folder's parameters are
read: its model comes from its model.gin or config.gin, its vocabulary from its vocabulary/ folder or
the VOCABULARY its gin file binds (a training run's config.gin). A GGUF file or HF folder is loaded
whole first (its config and vocabulary come with its weights).

`wall_clock` and `lossy_decoding` time speculative against target-only decoding over a set of held-out
prompts (`acceptance.References`), as the DistillSpec study does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distillspec import acceptance, speculative
from littlehelp.errors import exit_on_error

MODEL_GINS = ("model.gin", "config.gin")  # a converted folder's model file, else a training run's operative config


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """A run folder's model and checkpoint key (from `gin_file`, its model.gin or config.gin) and folder;
    params are read later."""

    model: Any
    key: str
    folder: Path
    gin_file: Path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m distillspec.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="converted run folder, .gguf file or HF folder")
    parser.add_argument("--draft", required=True, help="run folder (model.gin or config.gin, and checkpoints) or as --target")
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


def open_source(path: str) -> RunFolder | Path:
    """A run folder (read its model.gin or config.gin) or the path of a file / folder for `convert.load`."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise speculative.SpeculativeError(f"{folder} does not exist")
    model_gin = next((folder / name for name in MODEL_GINS if (folder / name).is_file()), None)
    if folder.is_dir() and model_gin is not None:
        return read_run_folder(folder, model_gin)
    return folder


@contextlib.contextmanager
def parsed(gin_file: Path) -> Iterator[None]:
    """`gin_file` parsed for the block (the configurable modules imported), the config cleared after."""
    import gin

    from littlehelp import config as gin_config

    gin_config.import_configurable_modules()
    gin_config.parse_gin([str(gin_file)], [], [])
    try:
        yield
    finally:
        gin.clear_config()


def macro_value(name: str) -> Any:
    """The parsed config's value of macro `name`, a reference built in the macro's own scope (config.gin
    scopes it so); None where no file binds it."""
    import gin

    try:
        value = gin.query_parameter(f"%{name}")
    except ValueError:
        return None
    if not isinstance(value, gin.config.ConfigurableReference):
        return value
    with gin.config_scope(name):
        return value.scoped_configurable_fn()


def read_run_folder(folder: Path, model_gin: Path) -> RunFolder:
    """The model `model_gin` configures (`%MODEL_CONFIG`) and its checkpoint key (`%MODEL_KEY`, default "model")."""
    from littlehelp.models import build_model

    with parsed(model_gin):
        model_config, key = macro_value("MODEL_CONFIG"), macro_value("MODEL_KEY")
    if model_config is None:
        raise speculative.SpeculativeError(f"{model_gin} binds no MODEL_CONFIG")
    return RunFolder(build_model(model_config), key or "model", folder, model_gin)


def restore(run: RunFolder) -> tuple[Any, Any]:
    """(model, params) of a run folder: the newest good checkpoint's parameters only."""
    from littlehelp import checkpoints

    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    abstract = nn.unbox(jax.eval_shape(lambda batch: run.model.init(jax.random.key(0), batch), {"decoder_input_tokens": tokens}))
    params, _ = checkpoints.restore_params(run.folder, abstract, select=run.key)
    return run.model, params


def vocabulary_of(source: RunFolder | Any) -> Any | None:
    """The vocabulary of a loaded `Pretrained`, or of a run folder: its vocabulary/ (a converted folder), else
    the VOCABULARY its gin file binds (a training run's config.gin), else None."""
    if not isinstance(source, RunFolder):
        return source.vocabulary
    from littlehelp.models.convert.run_folder import VOCABULARY_DIR, folder_vocabulary

    if (source.folder / VOCABULARY_DIR).is_dir():
        return folder_vocabulary(str(source.folder))
    with parsed(source.gin_file):
        return macro_value("VOCABULARY")


def check_same_pieces(args: argparse.Namespace, target: Any, draft: Any | None) -> None:
    """Refuses a draft whose vocabulary is unknown or gives some id another piece than the target's: equal
    sizes are not enough (`TokenizerVocabulary.pieces_fingerprint`)."""
    from littlehelp.data.hf_vocab import TokenizerVocabulary

    if draft is None:
        raise speculative.SpeculativeError(f"draft {args.draft} holds no vocabulary (no vocabulary/ folder, no "
                                           "VOCABULARY in its gin file) to compare with the target's")
    for role, path, vocabulary in (("target", args.target, target), ("draft", args.draft, draft)):
        if not isinstance(vocabulary, TokenizerVocabulary):
            raise speculative.SpeculativeError(f"{role} {path}'s vocabulary is a {type(vocabulary).__name__}, whose "
                                               "pieces cannot be compared (a TokenizerVocabulary's can)")
    if target.pieces_fingerprint != draft.pieces_fingerprint:
        sizes = (f"the same {target.vocab_size} ids" if target.vocab_size == draft.vocab_size
                 else f"{target.vocab_size} and {draft.vocab_size} ids")
        raise speculative.SpeculativeError(f"draft {args.draft} and target {args.target} have different vocabularies "
                                           f"({sizes}, other pieces); the draft must share the target's tokenizer")


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


def opened(source: RunFolder | Path) -> RunFolder | Any:
    """A run folder as it is (its parameters are read last), a GGUF file or HF folder loaded (`convert.load`)."""
    from littlehelp.models import convert

    return source if isinstance(source, RunFolder) else convert.load(source)


def with_params(source: RunFolder | Any) -> Any:
    """A run folder's (model, params), its parameters read now; a loaded `Pretrained` as it is."""
    return restore(source) if isinstance(source, RunFolder) else source


def checked_prompt(args: argparse.Namespace, target: RunFolder | Any, draft: RunFolder | Any) -> tuple[list[int], Any]:
    """(prompt ids, target vocabulary), once the draft shares the target's vocabulary (size and pieces) and the
    prompt plus --max_new_tokens fits both models' context length; run folders' parameters are not read."""
    speculative.check_vocabularies(target.model, draft.model)
    vocabulary = vocabulary_of(target)
    if vocabulary is None:
        raise speculative.SpeculativeError(f"{args.target} holds no vocabulary to encode the prompt with")
    check_same_pieces(args, vocabulary, vocabulary_of(draft))
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


def baseline_seconds(target: Any, prompt: list[int], plan: speculative.Plan, eos_id: int, seed: int) -> tuple[float, np.ndarray]:
    """Target-only decoding's time (after a warm-up call) and tokens."""
    from littlehelp import decoding

    model, params = target
    tokens, lengths = np.array([prompt], np.int32), np.array([len(prompt)], np.int32)
    call = lambda: jax.block_until_ready(decoding.generate(  # noqa: E731
        model, params, tokens, lengths, plan.max_new_tokens, jax.random.key(seed), plan.sampling, eos_id))
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
        target, draft, [prompt], gamma=args.gamma, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, lenience=lenience, seed=args.seed, eos_id=int(vocabulary.eos_id))
    out = decode()
    if args.baseline:
        out = decode()  # timed after the compiling call
    stats = out.stats
    print(f"continuation: {text(vocabulary, out.tokens[0], int(out.lengths[0]))!r}")
    print(f"speculative: {stats.generated_tokens} tokens in {stats.wall_seconds:.2f} s "
          f"({stats.generated_tokens / stats.wall_seconds:.1f} tokens/s{', compilation included' if not args.baseline else ''}); "
          f"acceptance {stats.acceptance_rate:.3f}, mean accepted {stats.mean_accepted_length:.2f} of gamma {args.gamma}, "
          f"block efficiency {stats.block_efficiency:.2f}, per position "
          f"[{', '.join(f'{a:.2f}' for a in stats.per_position_acceptance)}], "
          f"{stats.target_calls} target / {stats.draft_calls} draft calls")
    result = {"tokens": out.tokens[0, :out.lengths[0]].tolist(), "stats": dataclasses.asdict(stats)}
    if args.baseline:
        seconds, alone = baseline_seconds(target, prompt, plan, int(vocabulary.eos_id), args.seed)
        count = int((alone != 0).sum())
        same = "identical" if np.array_equal(alone, out.tokens[0]) else "different"
        print(f"target only: {count} tokens in {seconds:.2f} s ({count / seconds:.1f} tokens/s); speed-up "
              f"{seconds / count * stats.generated_tokens / stats.wall_seconds:.2f}x; tokens {same}")
        result["baseline"] = {"seconds": seconds, "tokens": alone[:count].tolist()}
    return result


# ----- wall clock against target-only decoding over a set of prompts (the reproduction's) -----

def wall_clock(target: tuple[Any, Any], draft: tuple[Any, Any], refs: acceptance.References, agreement: np.ndarray,
               modes: Sequence[tuple[int, float]], gammas: Sequence[int], max_new_tokens: int, repeats: int,
               seed: int) -> list[dict[str, Any]]:
    """Target-only against speculative decoding (`speculative.time_against_target`) of the references' prompts
    at each (batch, temperature) of `modes` (rows by `speculative.batch_rows`) and each gamma; greedy
    records add the block efficiency replayed from `agreement` (the draft's on `refs`) and whether the
    tokens equal target-only decoding's."""
    from littlehelp.decoding import Sampling

    records = []
    for (batch, temperature), gamma in itertools.product(modes, gammas):
        calls = speculative.batch_rows(refs.domains, batch)
        plan = speculative.Plan(gamma, max_new_tokens, Sampling(temperature=temperature))
        timing = speculative.time_against_target(target, draft, [(refs.prompts[r], refs.lengths[r]) for r in calls],
                                                 plan, repeats, seed)
        record = {"batch": batch, "temperature": temperature, "gamma": gamma, **timing.record()}
        if temperature == 0:
            rows = [i for call in calls for i in call]
            record.update(tokens_equal=timing.tokens_equal, replayed_block_efficiency=acceptance.greedy_block_efficiency(
                agreement[rows], gamma, max_new_tokens))
        records.append(record)
    return records


def lossy_decoding(target: tuple[Any, Any], draft: tuple[Any, Any], refs: acceptance.References, eps_values: Sequence[float],
                   gamma: int, max_new_tokens: int, repeats: int, seed: int) -> list[dict[str, float]]:
    """Lenience p/eps at temperature 1 over the references' prompts in calls of 8, each eps timed in turn with
    target-only decoding: acceptance, block efficiency, speed-up and the target's mean log-likelihood of
    each output."""
    from littlehelp.decoding import Sampling

    calls = [(refs.prompts[i:i + 8], refs.lengths[i:i + 8]) for i in range(0, len(refs.lengths), 8)]
    likelihood = lambda outputs: float(np.mean([acceptance.target_log_likelihood(target, p, n, t)  # noqa: E731
                                                for (p, n), t in zip(calls, outputs)]))
    records = []
    for eps in eps_values:
        plan = speculative.Plan(gamma, max_new_tokens, Sampling(temperature=1.0), None, speculative.Lenience("p/eps", eps))
        timing = speculative.time_against_target(target, draft, calls, plan, repeats, seed)
        records.append({"eps": eps, **timing.record(), "target_log_likelihood": likelihood(timing.speculative_tokens),
                        "target_only_log_likelihood": likelihood(timing.target_only_tokens)})
    return records


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command: bad input is printed as one line and exits with the error's code."""
    args = parse_args(argv)
    with exit_on_error("distillspec.generate"):
        return run(args)


if __name__ == "__main__":
    main()
