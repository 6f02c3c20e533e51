"""How well a draft would serve a target, measured by scoring (teacher forcing) instead of decoding.

Greedy speculative decoding commits exactly the target's greedy continuation, and within a round the
draft extends that same prefix while it agrees; so whether proposal j is accepted depends only on
`agreement[j]`: the draft's argmax given the target's greedy prefix equals the target's token j. One
forward pass of the draft over prompt + target continuation therefore gives the block efficiency at
every gamma exactly (`greedy_block_efficiency` replays the rounds as `speculative.decode` runs them).

Sampling: given a context, a proposal drawn from q is accepted with probability 1 - TVD(p, q)
(Leviathan et al. 2023), so `acceptance_probabilities` along target samples gives the expected
per-token acceptance alpha, and `expected_block_efficiency` the paper's (1 - alpha^(gamma+1)) / (1 - alpha)
(which assumes the per-token acceptances independent).

Sequences are right-padded rows [b, l]: row r is its prompt (`prompt_lengths[r]` tokens) and then a
continuation of at least `continuation_length` tokens. An encoder-decoder pair (T5) also reads `inputs`,
{"encoder_input_tokens": [b, l_in]}; its prompt is the decoder's start token 0.

With an EOS id, a row's output ends at its first EOS (`output_lengths`): the greedy replay stops there, as
`speculative.decode` does, and alpha and the greedy acceptance count its positions up to it.

`held_out_prompts` draws prompts from held-out text (Shakespeare's held-out plays, the standard
library's held-out modules, HumanEval prompts), `references` continues them with the target, and
`score` summarises a draft on those continuations.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distillspec.speculative import padded_prompts
from littlehelp.decoding import filtered_distribution
from littlehelp.features import DECODER_INPUT_TOKENS
from littlehelp.models.api import Model
from littlehelp.typing import Array, Batch, Params


def _continuation_logits(
    model: Model,
    params: Params,
    sequences: Array,
    prompt_lengths: Array,
    continuation_length: int,
    inputs: Batch | None = None,
) -> Array:
    """Logits [b, g, vocab] that predict continuation tokens 0..g-1 of each row (given `inputs`, if any)."""
    hidden = model.hidden_states(params, {DECODER_INPUT_TOKENS: sequences, **(inputs or {})})
    positions = prompt_lengths[:, None] - 1 + jnp.arange(continuation_length)[None, :]
    return model.logits_from_hidden(params, jnp.take_along_axis(hidden, positions[..., None], axis=1))


def _continuation_tokens(sequences: Array, prompt_lengths: Array, continuation_length: int) -> Array:
    positions = prompt_lengths[:, None] + jnp.arange(continuation_length)[None, :]
    return jnp.take_along_axis(sequences, positions, axis=1)


@functools.partial(jax.jit, static_argnames=("model", "continuation_length"))
def greedy_agreement(
    model: Model,
    params: Params,
    sequences: Array,
    prompt_lengths: Array,
    continuation_length: int,
    inputs: Batch | None = None,
) -> Array:
    """[b, g] bool: the model's argmax at continuation position j equals the sequence's token j."""
    logits = _continuation_logits(model, params, sequences, prompt_lengths, continuation_length, inputs)
    return jnp.argmax(logits, axis=-1) == _continuation_tokens(sequences, prompt_lengths, continuation_length)


@functools.partial(jax.jit, static_argnames=("target", "draft", "continuation_length", "temperature", "top_k", "top_p"))
def acceptance_probabilities(
    target: Model,
    target_params: Params,
    draft: Model,
    draft_params: Params,
    sequences: Array,
    prompt_lengths: Array,
    continuation_length: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    inputs: Batch | None = None,
) -> Array:
    """[b, g]: 1 - TVD(p, q) of the filtered next-token distributions at each continuation position."""
    p, q = (
        filtered_distribution(
            _continuation_logits(m, w, sequences, prompt_lengths, continuation_length, inputs),
            temperature,
            top_k,
            top_p,
        )
        for m, w in ((target, target_params), (draft, draft_params))
    )
    return 1.0 - 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)


def greedy_rounds(agreement: np.ndarray, gamma: int, max_new_tokens: int) -> tuple[int, int]:
    """(accepted proposals, rounds) of greedy speculative decoding of one row to `max_new_tokens`
    tokens without EOS, given its agreement [n] (n >= max_new_tokens + gamma - 1)."""
    if len(agreement) < max_new_tokens + gamma - 1:
        raise ValueError(
            f"agreement of {len(agreement)} positions cannot replay {max_new_tokens} tokens at gamma {gamma}"
        )
    produced = accepted = rounds = 0
    while produced < max_new_tokens:
        window = agreement[produced : produced + gamma]
        n = int(np.cumprod(window).sum())
        accepted, rounds, produced = accepted + n, rounds + 1, produced + n + 1
    return accepted, rounds


def greedy_block_efficiency(agreement: np.ndarray, gamma: int, max_new_tokens: int | np.ndarray) -> float:
    """Tokens per target call per row (`SpeculativeStats.block_efficiency`) over rows of agreement [b, n], each
    row decoded to `max_new_tokens` (one number, or one per row: its `output_lengths`)."""
    tokens = np.broadcast_to(max_new_tokens, (len(agreement),))
    totals = np.array([greedy_rounds(np.asarray(row, bool), gamma, int(n)) for row, n in zip(agreement, tokens)])
    return float(totals[:, 0].sum() / totals[:, 1].sum() + 1)


def output_lengths(continuations: np.ndarray, eos_id: int | None) -> np.ndarray:
    """Tokens [b] of each row of continuations [b, n] up to and including its first `eos_id` (n where it has
    none, and for every row when `eos_id` is None): what decoding with that EOS emits."""
    continuations = np.asarray(continuations)
    ends = np.zeros(continuations.shape, bool) if eos_id is None else continuations == eos_id
    return np.where(ends.any(axis=1), np.argmax(ends, axis=1) + 1, continuations.shape[1])


def until_eos(continuations: np.ndarray, eos_id: int) -> np.ndarray:
    """Continuations [b, n] as decoding with `eos_id` emits them: each row's tokens up to its first EOS, then 0."""
    ends = output_lengths(continuations, eos_id)
    return np.where(np.arange(continuations.shape[1])[None, :] < ends[:, None], continuations, 0)


def expected_block_efficiency(alpha: float, gamma: int) -> float:
    """(1 - alpha^(gamma + 1)) / (1 - alpha): expected tokens per round at per-token acceptance alpha."""
    return float(gamma + 1) if alpha >= 1.0 else float((1 - alpha ** (gamma + 1)) / (1 - alpha))


# ----- held-out prompts and the target's continuations of them -----

DOMAINS = ("shakespeare", "code", "humaneval")


def held_out_texts(domain: str, seed: int) -> list[str]:
    """Every held-out text of a domain in an order shuffled with `seed`: passages of Shakespeare's held-out
    plays, of the standard library's held-out modules (over 200 characters), or HumanEval prompts."""
    from littlehelp.data import corpus, pretrained  # pylint: disable=import-outside-toplevel

    if domain == "shakespeare":
        pool = [p for document in corpus.shakespeare_documents("validation") for p in corpus.passages(document)]
    elif domain == "code":
        pool = [p for source in corpus.stdlib_code("validation") for p in corpus.passages(source) if len(p) > 200]
    else:
        pool = list(pretrained.humaneval_prompts())
    random.Random(f"{seed}-{domain}").shuffle(pool)
    return pool


def held_out_prompts(vocabulary: Any, per_domain: int, prompt_tokens: int, seed: int) -> list[tuple[list[int], str]]:
    """(token row, domain) of the first `per_domain` texts of each domain's shuffled order whose rows are new:
    start token 0, then `prompt_tokens` tokens (a text's first ones; a HumanEval prompt's last ones, where its
    completion begins). No two rows are equal (a text whose row repeats an earlier one is passed over)."""
    prompts: list[tuple[list[int], str]] = []
    seen: set[tuple[int, ...]] = set()
    for domain in DOMAINS:
        drawn = 0
        for text in held_out_texts(domain, seed):
            ids = [int(i) for i in vocabulary.encode(text)]
            row = (0, *(ids[-prompt_tokens:] if domain == "humaneval" else ids[:prompt_tokens]))
            if row not in seen:
                seen.add(row)
                prompts.append((list(row), domain))
                drawn += 1
            if drawn == per_domain:
                break
        if drawn < per_domain:
            raise ValueError(
                f"held-out {domain} texts give {drawn} distinct prompts, fewer than the {per_domain} asked"
            )
    return prompts


def with_continuations(prompts: np.ndarray, lengths: np.ndarray, continuations: np.ndarray) -> np.ndarray:
    """Each row's prompt followed directly by its continuation (right-padded)."""
    out = np.zeros((len(prompts), prompts.shape[1] + continuations.shape[1]), np.int32)
    for i, (row, n) in enumerate(zip(prompts, lengths)):
        out[i, :n], out[i, n : n + continuations.shape[1]] = row[:n], continuations[i]
    return out


@dataclasses.dataclass(frozen=True)
class References:
    """Prompts and the target's continuations of them (greedy and sampled), as right-padded sequences; an
    encoder-decoder's encoder inputs."""

    prompts: np.ndarray  # [n, p]
    lengths: np.ndarray  # [n]
    domains: tuple[str, ...]
    greedy: np.ndarray  # [n, p + max_new_tokens + max_gamma]: prompt, then the target's greedy tokens
    sampled: np.ndarray  # [n, p + max_new_tokens]: prompt, then a temperature-1 sample of the target
    inputs: dict[str, np.ndarray] | None = None  # {"encoder_input_tokens": [n, l_in]}; None: decoder-only

    def subset(self, rows: Sequence[int]) -> References:
        """The references of `rows` only (same widths)."""
        rows = list(rows)
        inputs = None if self.inputs is None else {name: value[rows] for name, value in self.inputs.items()}
        return References(
            self.prompts[rows],
            self.lengths[rows],
            tuple(self.domains[i] for i in rows),
            self.greedy[rows],
            self.sampled[rows],
            inputs,
        )


def references(
    target: tuple[Model, Params],
    prompts: np.ndarray,
    lengths: np.ndarray,
    domains: Sequence[str],
    max_new_tokens: int,
    max_gamma: int,
    seed: int,
    inputs: dict[str, np.ndarray] | None = None,
) -> References:
    """The target's continuations of right-padded prompts (given `inputs`, an encoder-decoder's; no EOS: every
    row runs its full length): greedy to `max_new_tokens + max_gamma` tokens, and one temperature-1 sample (key
    `seed + 1`) of `max_new_tokens`."""
    from littlehelp import decoding  # pylint: disable=import-outside-toplevel

    model, params = target

    def continue_(n, sampling, key):
        return with_continuations(
            prompts,
            lengths,
            np.asarray(
                decoding.generate(model, params, prompts, lengths, n, jax.random.key(key), sampling, -1, inputs)
            ),
        )

    return References(
        prompts,
        lengths,
        tuple(domains),
        continue_(max_new_tokens + max_gamma, decoding.Sampling(), 0),
        continue_(max_new_tokens, decoding.Sampling(temperature=1.0), seed + 1),
        inputs,
    )


def split_references(
    target: tuple[Model, Params],
    vocabulary: Any,
    per_domain: int,
    prompt_tokens: int,
    max_new_tokens: int,
    max_gamma: int,
    seed: int,
) -> dict[str, References]:
    """`references` of 2 x `per_domain` distinct held-out prompts per domain drawn with `seed`, split in two: the
    first half of each domain's draw ("evaluation") and the second ("selection"), padded to one width; no prompt
    is in both."""
    drawn = held_out_prompts(vocabulary, 2 * per_domain, prompt_tokens, seed)
    prompts, lengths = padded_prompts([row for row, _ in drawn], None)
    refs = references(target, prompts, lengths, [domain for _, domain in drawn], max_new_tokens, max_gamma, seed)
    first = np.arange(len(drawn)) % (2 * per_domain) < per_domain
    return {"evaluation": refs.subset(np.flatnonzero(first)), "selection": refs.subset(np.flatnonzero(~first))}


def score(
    target: tuple[Model, Params],
    draft: tuple[Model, Params],
    refs: References,
    max_new_tokens: int,
    max_gamma: int,
    eos_id: int | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """A draft's replayed greedy block efficiency at gamma 1..max_gamma (list, all rows; and per domain at
    max_gamma), greedy acceptance, alpha = E[1 - TVD] at temperature 1 (with standard errors over the
    rows, each row's mean one observation) and the expected block efficiency at max_gamma; and its
    agreement [n, max_new_tokens + max_gamma] with the target's greedy continuations. With `eos_id`, each
    output ends at its first EOS (`output_lengths`) and only its positions up to it count."""
    agreement = np.asarray(
        greedy_agreement(draft[0], draft[1], refs.greedy, refs.lengths, max_new_tokens + max_gamma, refs.inputs)
    )
    alpha = np.asarray(
        acceptance_probabilities(
            target[0],
            target[1],
            draft[0],
            draft[1],
            refs.sampled,
            refs.lengths,
            max_new_tokens,
            temperature=1.0,
            inputs=refs.inputs,
        )
    )
    greedy_lengths, sampled_lengths = (
        output_lengths(np.asarray(_continuation_tokens(sequences, refs.lengths, max_new_tokens)), eos_id)
        for sequences in (refs.greedy, refs.sampled)
    )
    greedy, positions = agreement[:, :max_new_tokens], np.arange(max_new_tokens)[None, :]
    greedy_mask, sampled_mask = positions < greedy_lengths[:, None], positions < sampled_lengths[:, None]
    by_domain = {d: np.array([x == d for x in refs.domains]) for d in DOMAINS if d in refs.domains}
    return {
        "greedy_tau": [greedy_block_efficiency(agreement, g, greedy_lengths) for g in range(1, max_gamma + 1)],
        "greedy_tau_by_domain": {
            d: greedy_block_efficiency(agreement[rows], max_gamma, greedy_lengths[rows])
            for d, rows in by_domain.items()
        },
        "greedy_acceptance": float(greedy[greedy_mask].mean()),
        "greedy_acceptance_se": _row_standard_error(greedy, greedy_mask),
        "alpha": float(alpha[sampled_mask].mean()),
        "alpha_se": _row_standard_error(alpha, sampled_mask),
        "alpha_by_domain": {d: float(alpha[rows][sampled_mask[rows]].mean()) for d, rows in by_domain.items()},
        "expected_tau": expected_block_efficiency(float(alpha[sampled_mask].mean()), max_gamma),
    }, agreement


def _row_standard_error(values: np.ndarray, mask: np.ndarray) -> float:
    """Standard error of the mean over rows [n, g] (each row's mean over its `mask`ed positions one observation;
    nan for one row)."""
    means = (values * mask).sum(axis=1) / mask.sum(axis=1)
    return float(np.std(means, ddof=1) / np.sqrt(len(means))) if len(means) > 1 else float("nan")


@functools.partial(jax.jit, static_argnames=("model", "continuation_length"))
def continuation_log_probs(
    model: Model, params: Params, sequences: Array, prompt_lengths: Array, continuation_length: int
) -> Array:
    """[b, g]: the model's log-probability (temperature 1) of continuation tokens 0..g-1 of each row."""
    logits = _continuation_logits(model, params, sequences, prompt_lengths, continuation_length)
    tokens = _continuation_tokens(sequences, prompt_lengths, continuation_length)
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[..., None], axis=-1)[..., 0]


def target_log_likelihood(
    target: tuple[Model, Params], prompts: np.ndarray, lengths: np.ndarray, tokens: np.ndarray
) -> float:
    """The target's mean log-probability (temperature 1) of generated tokens [b, n] after their prompts."""
    sequences = with_continuations(prompts, lengths, tokens)
    return float(continuation_log_probs(target[0], target[1], sequences, lengths, tokens.shape[1]).mean())
