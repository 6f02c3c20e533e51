"""Batched speculative decoding (Leviathan et al. 2023) with DistillSpec's lossy lenience.

Each round the draft proposes `gamma` tokens per row (keeping its distribution q at every step), the
target scores the row's last committed token and the gamma proposals in ONE `extend` call (gamma + 1
distributions p), and every row keeps its own number of accepted tokens: proposal x_i is accepted with
probability min(1, p(x_i) / q(x_i)), the first rejection is replaced by a draw from
norm(max(0, p - q)), and a row that accepts all gamma draws a bonus token from the last p. Both
caches are then rolled back per row (`littlehelp.models.api.rollback`), so no row waits for another.
Temperature 0 is greedy: p and q are one-hot argmaxes and the rule above accepts while the argmaxes
agree, then takes the target's. Top-k / top-p filter p and q alike (`decoding.filtered_distribution`).

Lossy decoding (DistillSpec): `Lenience("p/eps", eps)` accepts with min(1, f(p, eps) / q) for
f = p/eps, p/eps^2 or p^eps, eps in (0, 1] (eps = 1 is exact) and resamples a rejection from
norm(max(0, p - q)) as the exact rule does.

The whole decode (prefill, then rounds in a `lax.while_loop`, the draft's steps in a `lax.scan`) is
one jitted function of static shapes: one compilation per (models, batch shape, `Plan`).
Cache invariant between rounds: the target cache holds every committed token but the last one; the
draft cache lacks the last one or, after a round that accepted all gamma proposals, the last two.
The longest prompt plus `max_new_tokens` must fit both the target's and the draft's context length
(`check_context`); the caches hold that plus gamma + 2 slots for the last round's proposals.

Encoder-decoder pairs (T5): `inputs={"encoder_input_tokens": [b, l]}` (right-padded with 0) condition
both models; each model's encoder runs once per call, batched, in its `init_cache`, and the rounds above
run on the decoders' caches unchanged. Prompts are then decoder prompts: the start token 0, then any
forced prefix. Target and draft must be of one kind (`model_kind`).

`time_against_target` times target-only and speculative decoding of the same calls in turn (wall
clock, `Timing`); `batch_rows` groups prompts of several domains into batch-1 or batch-b calls.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from littlehelp import decoding
from littlehelp.decoding import Sampling, filtered_distribution
from littlehelp.errors import LittlehelpError
from littlehelp.features import ENCODER_INPUT_TOKENS
from littlehelp.models.api import DecodeCache, Model, StepwiseModel, rollback
from littlehelp.models.convert import Pretrained
from littlehelp.models.t5 import T5Config
from littlehelp.runs import LoadedRun
from littlehelp.typing import Array, Batch, Params

AcceptanceRule = Callable[[Array, Array], Array]  # (p(x), q(x)) of proposals -> probability of accepting each
LENIENCE_KINDS = ("p/eps", "p/eps^2", "p^eps")
ENCODER_DECODER, DECODER_ONLY = "encoder-decoder", "decoder-only"


class SpeculativeError(LittlehelpError, ValueError):
    """Input speculative decoding cannot run on; the message names it."""


@dataclasses.dataclass(frozen=True)
class Lenience:
    """DistillSpec's lossy acceptance min(1, f(p, eps) / q); `kind` names f, eps in (0, 1] (1 is exact)."""

    kind: str  # one of LENIENCE_KINDS
    eps: float

    def __post_init__(self) -> None:
        if self.kind not in LENIENCE_KINDS:
            raise SpeculativeError(f"lenience kind {self.kind!r} is not one of {', '.join(LENIENCE_KINDS)}")
        if not 0 < self.eps <= 1:
            raise SpeculativeError(f"lenience eps must be in (0, 1], got {self.eps!r}")

    def relax(self, p: Array) -> Array:
        """f(p, eps)."""
        if self.kind == "p/eps":
            return p / self.eps
        if self.kind == "p/eps^2":
            return p / self.eps**2
        return p**self.eps

    def __call__(self, p: Array, q: Array) -> Array:
        return exact_acceptance(self.relax(p), q)


def exact_acceptance(p: Array, q: Array) -> Array:
    """min(1, p / q): speculative sampling's rule (a proposal has q > 0: it was drawn from q)."""
    return jnp.minimum(1.0, p / jnp.maximum(q, jnp.finfo(jnp.float32).tiny))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one speculative decode does (static: a new Plan compiles anew).

    `acceptance` maps (p(x), q(x)) to the probability of accepting proposal x: `exact_acceptance`,
    a `Lenience`, or any other rule (the tests check that broken rules change the distribution).
    `eos_id` None: rows stop at `max_new_tokens` only.
    """

    gamma: int
    max_new_tokens: int
    sampling: Sampling = Sampling()
    eos_id: int | None = None
    acceptance: AcceptanceRule = exact_acceptance

    def __post_init__(self) -> None:
        if self.gamma < 1:
            raise SpeculativeError(f"gamma (draft tokens per round) must be >= 1, got {self.gamma!r}")
        if self.max_new_tokens < 1:
            raise SpeculativeError(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")

    @property
    def greedy(self) -> bool:
        return self.sampling.temperature == 0.0

    def distribution(self, logits: Array) -> Array:
        """The filtered distribution a token is drawn from (`decoding.filtered_distribution`)."""
        s = self.sampling
        return filtered_distribution(logits, s.temperature, s.top_k, s.top_p)


class Counters(NamedTuple):
    """Totals over (active row, round) pairs, accumulated inside the jitted loop."""

    rounds: Array  # [] batched rounds (target extend calls)
    row_rounds: Array  # [] rounds summed over the rows still decoding in them
    reached: Array  # [gamma] proposals at position i that were judged (all before them accepted)
    accepted: Array  # [gamma] proposals at position i that were accepted


class State(NamedTuple):
    """The loop's carry: both caches, the committed tokens they lack, the output so far."""

    target: DecodeCache
    draft: DecodeCache
    last: Array  # [b] the last committed token (not in the target cache)
    pending: Array  # [b, 2] committed tokens not in the draft cache (the second only when pending_count is 2)
    pending_count: Array  # [b] 1 or 2
    out: Array  # [b, max_new_tokens + gamma + 1]
    produced: Array  # [b] tokens emitted
    done: Array  # [b] bool
    counters: Counters


def row_keys(seed: int | Array, batch: int) -> Array:
    """One key per row: row r's randomness depends on (seed, r, round) only, never on other rows."""
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.key(seed), r))(jnp.arange(batch))


def _fold(keys: Array, data: Array | int) -> Array:
    return jax.vmap(lambda key: jax.random.fold_in(key, data))(keys)


def sample_rows(keys: Array, probs: Array, greedy: bool = False) -> Array:
    """One token per row [b] from probabilities [b, vocab], each row with its own key; `greedy`: the
    argmax (what a draw from a one-hot distribution gives, without drawing)."""
    if greedy:
        return jnp.argmax(probs, axis=-1).astype(jnp.int32)
    return jax.vmap(lambda key, p: jax.random.categorical(key, jnp.log(p)))(keys, probs).astype(jnp.int32)


def verify(
    p: Array,
    q: Array,
    proposals: Array,
    keys: Array,
    acceptance: AcceptanceRule = exact_acceptance,
    greedy: bool = False,
) -> tuple[Array, Array]:
    """The acceptance / resampling step of one round.

    p [b, gamma + 1, vocab] target, q [b, gamma, vocab] draft distributions, proposals [b, gamma]
    drawn from q -> (accepted [b, gamma] bool: each proposal's own test, token [b]: the draw from
    norm(max(0, p - q)) at the first rejection, or from p's last position when all gamma pass).
    A row's accepted length is the number of leading True entries. `greedy`: p and q are one-hot
    (temperature 0), so the next token is the residual's argmax.
    """
    batch, gamma = proposals.shape
    p_x = jnp.take_along_axis(p[:, :gamma], proposals[..., None], axis=-1)[..., 0]
    q_x = jnp.take_along_axis(q, proposals[..., None], axis=-1)[..., 0]
    uniform = jax.vmap(lambda key: jax.random.uniform(key, (gamma,)))(_fold(keys, 0))
    accepted = uniform < acceptance(p_x, q_x)
    n = accepted_lengths(accepted)
    p_n = jnp.take_along_axis(p, n[:, None, None], axis=1)[:, 0]
    q_n = jnp.take_along_axis(jnp.pad(q, ((0, 0), (0, 1), (0, 0))), n[:, None, None], axis=1)[:, 0]
    residual = jnp.maximum(p_n - q_n, 0.0)
    mass = residual.sum(-1, keepdims=True)
    return accepted, sample_rows(
        _fold(keys, 1), jnp.where(mass > 0, residual / jnp.where(mass > 0, mass, 1.0), p_n), greedy
    )


def accepted_lengths(accepted: Array) -> Array:
    """The number of leading accepted proposals per row [b] of accepted [b, gamma]."""
    return jnp.cumprod(accepted.astype(jnp.int32), axis=1).sum(axis=1)


def _draft(
    model: StepwiseModel, params: Params, plan: Plan, state: State, keys: Array
) -> tuple[Array, Array, DecodeCache]:
    """gamma draft calls: (proposals [b, gamma], q [b, gamma, vocab], the draft cache holding every
    committed token and the first gamma - 1 proposals)."""
    logits, cache = model.extend(params, state.draft, state.pending)
    logits = jnp.take_along_axis(logits, (state.pending_count - 1)[:, None, None], axis=1)[:, 0]
    cache = rollback(cache, state.draft.lengths + state.pending_count)
    q = plan.distribution(logits)
    first = sample_rows(_fold(keys, 0), q, plan.greedy)

    def step(carry: tuple, i: Array) -> tuple:
        token, q, cache = carry
        logits, cache = model.extend(params, cache, token[:, None])
        q_next = plan.distribution(logits[:, 0])
        return (sample_rows(_fold(keys, i), q_next, plan.greedy), q_next, cache), (token, q)

    (last, q_last, cache), (tokens, qs) = jax.lax.scan(step, (first, q, cache), jnp.arange(1, plan.gamma))
    proposals = jnp.concatenate([jnp.moveaxis(tokens, 0, 1), last[:, None]], axis=1)
    return proposals, jnp.concatenate([jnp.moveaxis(qs, 0, 1), q_last[:, None]], axis=1), cache


def _emit(plan: Plan, state: State, proposals: Array, n: Array, token: Array) -> tuple[Array, Array, Array]:
    """Writes each active row's accepted proposals and its next token (up to EOS and max_new_tokens)
    -> (out, emitted count [b], whether the row is now finished [b])."""
    index = jnp.arange(plan.gamma + 1)
    block = jnp.where(index < n[:, None], jnp.pad(proposals, ((0, 0), (0, 1))), token[:, None])
    count = jnp.minimum(n + 1, plan.max_new_tokens - state.produced)
    hit_eos = jnp.zeros_like(state.done)
    if plan.eos_id is not None:
        is_eos = (block == plan.eos_id) & (index < count[:, None])
        hit_eos = is_eos.any(axis=1)
        count = jnp.where(hit_eos, jnp.argmax(is_eos, axis=1) + 1, count)
    count = jnp.where(state.done, 0, count)
    width = state.out.shape[1]
    slots = jnp.where(index < count[:, None], state.produced[:, None] + index, width)
    out = state.out.at[jnp.arange(block.shape[0])[:, None], slots].set(block, mode="drop")
    finished = state.done | hit_eos | (state.produced + count >= plan.max_new_tokens)
    return out, count, finished


def _count(counters: Counters, accepted: Array, active: Array) -> Counters:
    """Adds one round's judged and accepted proposals of the active rows."""
    passed = jnp.cumprod(accepted.astype(jnp.int32), axis=1) * active[:, None]
    judged = jnp.pad(passed[:, :-1], ((0, 0), (1, 0)), constant_values=1) * active[:, None]
    return Counters(
        counters.rounds + 1,
        counters.row_rounds + active.sum(),
        counters.reached + judged.sum(0),
        counters.accepted + passed.sum(0),
    )


def _round(
    models: tuple[StepwiseModel, StepwiseModel], params: tuple[Params, Params], plan: Plan, keys: Array, state: State
) -> State:
    """One speculative round for every row (rows already finished change nothing)."""
    (target, draft), (target_params, draft_params) = models, params
    keys = _fold(keys, state.counters.rounds)
    proposals, q, draft_cache = _draft(draft, draft_params, plan, state, _fold(keys, 0))
    logits, target_cache = target.extend(
        target_params, state.target, jnp.concatenate([state.last[:, None], proposals], axis=1)
    )
    accepted, token = verify(plan.distribution(logits), q, proposals, _fold(keys, 1), plan.acceptance, plan.greedy)
    active = ~state.done
    n = jnp.where(active, accepted_lengths(accepted), 0)
    out, emitted, finished = _emit(plan, state, proposals, n, token)
    all_passed = n == plan.gamma
    committed = state.draft.lengths + state.pending_count  # the draft cache's length once it has all committed tokens
    draft_lengths = jnp.where(active, committed + jnp.minimum(n, plan.gamma - 1), state.draft.lengths)
    pending = jnp.where(
        all_passed[:, None], jnp.stack([proposals[:, -1], token], 1), jnp.stack([token, jnp.zeros_like(token)], 1)
    )
    return State(
        target=rollback(target_cache, state.target.lengths + jnp.where(active, n + 1, 0)),
        draft=rollback(draft_cache, draft_lengths),
        last=jnp.where(active, token, state.last),
        pending=jnp.where(active[:, None], pending, state.pending),
        pending_count=jnp.where(active, jnp.where(all_passed, 2, 1), state.pending_count),
        out=out,
        produced=state.produced + emitted,
        done=finished,
        counters=_count(state.counters, accepted, active),
    )


def _start(
    model: StepwiseModel, params: Params, prompts: Array, lengths: Array, slots: int, inputs: Batch | None
) -> DecodeCache:
    """A cache holding each row's prompt but its last token (and the encoded `inputs` of an encoder-decoder)."""
    cache = model.init_cache(params, prompts.shape[0], slots, inputs)
    _, cache = model.prefill(params, cache, prompts, lengths)
    return rollback(cache, lengths - 1)


def check_context(target: StepwiseModel, draft: StepwiseModel, prompt_length: int, max_new_tokens: int) -> None:
    """Refuses a prompt plus new tokens longer than the target's or the draft's context length
    (`decoding.ContextLengthError`, naming which)."""
    decoding.check_context(target, prompt_length, max_new_tokens, "target")
    decoding.check_context(draft, prompt_length, max_new_tokens, "draft")


def model_kind(model: Model) -> str:
    """ENCODER_DECODER for a model conditioned on encoder inputs (a T5: its config is a `T5Config`), else
    DECODER_ONLY."""
    return ENCODER_DECODER if isinstance(model.config, T5Config) else DECODER_ONLY


def check_inputs(target: StepwiseModel, draft: StepwiseModel, inputs: Batch | None, batch: int) -> None:
    """Refuses target and draft of different kinds, an encoder-decoder pair without encoder inputs, a
    decoder-only pair with some, and encoder inputs whose rows are not the `batch` prompts'."""
    kind = model_kind(target)
    if model_kind(draft) != kind:
        raise SpeculativeError(f"the target is {kind} and the draft {model_kind(draft)}; both must be of one kind")
    if kind == DECODER_ONLY:
        if inputs is not None:
            raise SpeculativeError(f"a decoder-only target and draft take no encoder inputs, got {', '.join(inputs)}")
        return
    if inputs is None or ENCODER_INPUT_TOKENS not in inputs:
        raise SpeculativeError("an encoder-decoder target and draft need inputs={'encoder_input_tokens': [b, l]}")
    shape = inputs[ENCODER_INPUT_TOKENS].shape
    if len(shape) != 2 or shape[0] != batch:
        raise SpeculativeError(f"encoder_input_tokens {tuple(shape)} do not fit {batch} prompts (need [{batch}, l])")


@functools.partial(jax.jit, static_argnames=("target", "draft", "plan"))
def decode(
    target: StepwiseModel,
    target_params: Params,
    draft: StepwiseModel,
    draft_params: Params,
    prompts: Array,
    prompt_lengths: Array,
    seed: Array,
    plan: Plan,
    inputs: Batch | None = None,
) -> tuple[Array, Array, Counters]:
    """Speculative continuation of right-padded prompts [b, p] of `prompt_lengths` (>= 1), conditioned on
    `inputs` for an encoder-decoder pair -> (tokens [b, max_new_tokens], 0 after each row's end; lengths [b];
    counters). p + max_new_tokens beyond either model's context length is refused (`check_context`), and
    inputs that do not fit the pair (`check_inputs`)."""
    batch, width = prompts.shape
    check_context(target, draft, width, plan.max_new_tokens)
    check_inputs(target, draft, inputs, batch)
    prompts, prompt_lengths = prompts.astype(jnp.int32), prompt_lengths.astype(jnp.int32)
    slots = width + plan.max_new_tokens + plan.gamma + 2
    last = jnp.take_along_axis(prompts, (prompt_lengths - 1)[:, None], axis=1)[:, 0]
    zeros = jnp.zeros((batch,), jnp.int32)
    state = State(
        target=_start(target, target_params, prompts, prompt_lengths, slots, inputs),
        draft=_start(draft, draft_params, prompts, prompt_lengths, slots, inputs),
        last=last,
        pending=jnp.stack([last, zeros], 1),
        pending_count=zeros + 1,
        out=jnp.zeros((batch, plan.max_new_tokens + plan.gamma + 1), jnp.int32),
        produced=zeros,
        done=jnp.zeros((batch,), bool),
        counters=Counters(
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
            jnp.zeros((plan.gamma,), jnp.int32),
            jnp.zeros((plan.gamma,), jnp.int32),
        ),
    )
    keys = row_keys(seed, batch)
    body = functools.partial(_round, (target, draft), (target_params, draft_params), plan, keys)
    state = jax.lax.while_loop(lambda s: ~jnp.all(s.done), body, state)
    return state.out[:, : plan.max_new_tokens], state.produced, state.counters


@dataclasses.dataclass(frozen=True)
class SpeculativeStats:
    """What a speculative decode measured (totals over the rows still decoding in each round)."""

    acceptance_rate: float  # accepted / judged proposals: the per-token acceptance, E[1 - TVD(p, q)]
    mean_accepted_length: float  # accepted proposals per (row, round)
    per_position_acceptance: tuple[float, ...]  # position i = 1..gamma: accepted / judged there
    block_efficiency: float  # tokens per target call per row: mean accepted length + 1 (before EOS / length cuts)
    target_calls: int  # target forward passes: the prefill and one extend per round
    draft_calls: int  # draft forward passes: the prefill and gamma per round
    rounds: int
    generated_tokens: int  # tokens emitted over all rows
    wall_seconds: float  # the decode call (compilation included the first time a shape is seen)


class SpeculativeOutput(NamedTuple):
    """tokens [b, max_new_tokens] (0 after a row's end), lengths [b] (EOS included), stats."""

    tokens: np.ndarray
    lengths: np.ndarray
    stats: SpeculativeStats


def model_and_params(source: Any) -> tuple[StepwiseModel, Params]:
    """(model, params) of a (model, params) pair, a `convert.Pretrained` or a `runs.LoadedRun`."""
    model, params = (source.model, source.params) if isinstance(source, (Pretrained, LoadedRun)) else source
    if not isinstance(model, StepwiseModel):
        raise SpeculativeError(f"{type(model).__name__} cannot decode step by step (not a StepwiseModel)")
    return model, params


def pair(target: Any, draft: Any) -> tuple[tuple[StepwiseModel, Params], tuple[StepwiseModel, Params]]:
    """Both (model, params as jax arrays), after checking they share a vocabulary."""
    (target_model, target_params), (draft_model, draft_params) = model_and_params(target), model_and_params(draft)
    check_vocabularies(target_model, draft_model)
    as_jax = lambda params: jax.tree.map(jnp.asarray, nn.unbox(params))  # noqa: E731
    return (target_model, as_jax(target_params)), (draft_model, as_jax(draft_params))


def padded_prompts(
    prompts: Sequence[Sequence[int]] | np.ndarray, prompt_lengths: Sequence[int] | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Ragged token lists, or a right-padded array with `prompt_lengths`, as (tokens [b, p], lengths [b]);
    p is the longest prompt (padding past it is dropped)."""
    if prompt_lengths is None:
        rows = [list(map(int, row)) for row in prompts]
        tokens = np.zeros((len(rows), max((len(r) for r in rows), default=0)), np.int32)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = row
        lengths = np.array([len(r) for r in rows], np.int32)
    else:
        tokens, lengths = np.asarray(prompts, np.int32), np.asarray(prompt_lengths, np.int32)
        if tokens.ndim != 2 or lengths.shape != tokens.shape[:1] or (lengths > tokens.shape[1]).any():
            raise SpeculativeError(f"prompts {tokens.shape} and prompt_lengths {lengths.shape} do not fit")
    if not len(lengths) or (lengths < 1).any():
        raise SpeculativeError("every prompt needs at least one token")
    return tokens[:, : lengths.max()], lengths


def check_vocabularies(target: StepwiseModel, draft: StepwiseModel) -> None:
    """Target and draft must score the same vocabulary."""
    sizes = target.config.vocab_size, draft.config.vocab_size
    if sizes[0] != sizes[1]:
        raise SpeculativeError(f"target vocabulary size {sizes[0]} differs from the draft's {sizes[1]}")


def lenience_rule(lenience: Lenience | tuple[str, float] | None) -> AcceptanceRule:
    """The acceptance rule of `lenience`: None is exact, ("p/eps", 0.5) or a `Lenience` lossy."""
    if lenience is None:
        return exact_acceptance
    return lenience if isinstance(lenience, Lenience) else Lenience(*lenience)


def default_eos(target: Any) -> int | None:
    """The EOS id of a `Pretrained` target's vocabulary; None for a bare (model, params) pair."""
    vocabulary = getattr(target, "vocabulary", None)
    return None if vocabulary is None else int(vocabulary.eos_id)


def summarize(counters: Counters, gamma: int, lengths: np.ndarray, seconds: float) -> SpeculativeStats:
    """The `SpeculativeStats` of a decode's counters."""
    counters = jax.tree.map(np.asarray, counters)
    rounds, row_rounds = int(counters.rounds), max(int(counters.row_rounds), 1)
    accepted, reached = counters.accepted.sum(), max(int(counters.reached.sum()), 1)
    per_position = tuple(float(a / r) if r else float("nan") for a, r in zip(counters.accepted, counters.reached))
    return SpeculativeStats(
        acceptance_rate=float(accepted / reached),
        mean_accepted_length=float(accepted / row_rounds),
        per_position_acceptance=per_position,
        block_efficiency=float(accepted / row_rounds + 1),
        target_calls=1 + rounds,
        draft_calls=1 + gamma * rounds,
        rounds=rounds,
        generated_tokens=int(lengths.sum()),
        wall_seconds=seconds,
    )


def generate(
    target: Any,
    draft: Any,
    prompts: Sequence[Sequence[int]] | np.ndarray,
    *,
    gamma: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    lenience: Lenience | tuple[str, float] | None = None,
    seed: int = 0,
    prompt_lengths: Sequence[int] | np.ndarray | None = None,
    eos_id: int | None = None,
    inputs: Batch | None = None,
) -> SpeculativeOutput:
    """Speculative continuations of `prompts` by `target` with proposals from `draft`.

    target, draft: (model, params) pairs or `convert.Pretrained` (same vocabulary, both decoder-only or both
    encoder-decoders). prompts: ragged token-id lists, or a right-padded [b, p] array with `prompt_lengths`;
    an encoder-decoder's are decoder prompts (`[[0]] * b`: its start token). inputs: an encoder-decoder
    pair's {"encoder_input_tokens": [b, l]} (right-padded with 0), both models' encoder inputs; None for
    decoder-only models. lenience: None (exact), `Lenience(kind, eps)` or (kind, eps) with kind in
    LENIENCE_KINDS. eos_id: where a row stops; by default the target vocabulary's EOS (a `Pretrained`),
    else none (rows run to max_new_tokens). The longest prompt plus max_new_tokens beyond either model's
    context length, and inputs that do not fit the pair, are refused before anything is allocated.
    """
    plan = Plan(
        gamma,
        max_new_tokens,
        Sampling(temperature, top_k, top_p),
        default_eos(target) if eos_id is None else eos_id,
        lenience_rule(lenience),
    )
    tokens, lengths = padded_prompts(prompts, prompt_lengths)
    inputs = None if inputs is None else {name: np.asarray(value) for name, value in inputs.items()}
    target_model, draft_model = model_and_params(target)[0], model_and_params(draft)[0]
    check_context(target_model, draft_model, tokens.shape[1], max_new_tokens)
    check_inputs(target_model, draft_model, inputs, len(lengths))
    (target_model, target_params), (draft_model, draft_params) = pair(target, draft)
    start = time.perf_counter()
    out, produced, counters = jax.block_until_ready(
        decode(target_model, target_params, draft_model, draft_params, tokens, lengths, seed, plan, inputs)
    )
    seconds = time.perf_counter() - start
    produced = np.asarray(produced)
    return SpeculativeOutput(np.asarray(out), produced, summarize(counters, gamma, produced, seconds))


# ----- timing against target-only decoding -----


def batch_rows(domains: Sequence[str], batch: int) -> list[list[int]]:
    """The rows of each decoding call: batch 1, the first row of each domain, one call each; batch b,
    b rows taken round-robin over the domains, in one call."""
    order = list(dict.fromkeys(domains))
    if batch == 1:
        return [[list(domains).index(d)] for d in order]
    per_domain = [[i for i, d in enumerate(domains) if d == domain] for domain in order]
    return [[i for group in itertools.zip_longest(*per_domain) for i in group if i is not None][:batch]]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Target-only against speculative decoding of the same calls: median seconds, statistics, tokens."""

    target_only_seconds: float
    speculative_seconds: float
    stats: SpeculativeStats
    target_only_tokens: list[np.ndarray]  # per call [b, max_new_tokens]
    speculative_tokens: list[np.ndarray]

    @property
    def speedup(self) -> float:
        return self.target_only_seconds / self.speculative_seconds

    @property
    def tokens_equal(self) -> bool:
        """Whether both decodes produced the same tokens (greedy decoding must)."""
        return all(np.array_equal(a, b) for a, b in zip(self.target_only_tokens, self.speculative_tokens))

    def record(self) -> dict[str, float]:
        """The numbers of a report row: both times, the speed-up, the acceptance and the block efficiency."""
        return {
            "target_only_seconds": self.target_only_seconds,
            "speculative_seconds": self.speculative_seconds,
            "speedup": self.speedup,
            "acceptance": self.stats.acceptance_rate,
            "block_efficiency": self.stats.block_efficiency,
        }


def time_against_target(
    target: tuple[StepwiseModel, Params],
    draft: tuple[StepwiseModel, Params],
    calls: Sequence[tuple[np.ndarray, np.ndarray]],
    plan: Plan,
    repeats: int,
    seed: int,
) -> Timing:
    """Target-only (`decoding.generate`) and speculative decoding of `calls` (prompts [b, p], lengths [b]; each
    call blocked on, seconds summed over the calls), timed in turn `repeats` times after one untimed round
    that compiles (`littlehelp.benchmark.interleaved`): the median seconds of each and the last outputs."""
    from littlehelp.benchmark import interleaved  # pylint: disable=import-outside-toplevel

    (model, params), (draft_model, draft_params), outputs = target, draft, {}
    eos_id = -1 if plan.eos_id is None else plan.eos_id

    def alone() -> None:
        outputs["target_only"] = [
            jax.block_until_ready(
                decoding.generate(model, params, p, n, plan.max_new_tokens, jax.random.key(seed), plan.sampling, eos_id)
            )
            for p, n in calls
        ]

    def drafted() -> None:
        outputs["speculative"] = [
            jax.block_until_ready(decode(model, params, draft_model, draft_params, p, n, seed, plan)) for p, n in calls
        ]

    seconds = interleaved({"target_only": alone, "speculative": drafted}, rounds=repeats, warmup=1)
    decoded = jax.tree.map(np.asarray, outputs["speculative"])
    counters = Counters(*(sum(out[2][i] for out in decoded) for i in range(len(Counters._fields))))
    median = float(np.median(seconds["speculative"]))
    return Timing(
        float(np.median(seconds["target_only"])),
        median,
        summarize(counters, plan.gamma, np.concatenate([out[1] for out in decoded]), median),
        [np.asarray(t) for t in outputs["target_only"]],
        [out[0] for out in decoded],
    )
