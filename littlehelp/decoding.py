"""One batched, jitted sampling loop over the stepwise model API: greedy, temperature, top-k, top-p.

`generate` prefills each row's prompt in one forward pass, then extends every row by one sampled
token per step through the model's per-row KV cache (`littlehelp.models.api.StepwiseModel`); it
knows no model class. `filtered_distribution` is the exact distribution a step samples from (what
lossy speculative decoding compares). Token id 0 is padding; once a row has emitted `eos_id`,
every later output of that row is 0.

A request longer than the model's context (`context_length`: the prompt's width plus the new
tokens) is refused with `ContextLengthError` before any cache is allocated; caches hold exactly
what is asked.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from littlehelp.errors import EXIT_CONFIG, LittlehelpError
from littlehelp.models.api import StepwiseModel
from littlehelp.typing import Array, Batch, Params


class ContextLengthError(LittlehelpError, ValueError):
    """A prompt plus its new tokens longer than the model's context; nothing was allocated."""

    exit_code = EXIT_CONFIG


def context_length(model: StepwiseModel) -> int | None:
    """The longest sequence (prompt plus new tokens) `model` decodes: its config's `context_length`
    (decoder LMs); None for models with only relative positions (T5), which have no such limit."""
    return model.config.context_length


def check_context(model: StepwiseModel, prompt_length: int, max_new_tokens: int, role: str = "model") -> None:
    """Raises `ContextLengthError` when `prompt_length + max_new_tokens` exceeds `model`'s context length
    (`role` names the model in the message: "model", "target", "draft")."""
    limit, total = context_length(model), prompt_length + max_new_tokens
    if limit is not None and total > limit:
        raise ContextLengthError(
            f"prompt of {prompt_length} tokens + {max_new_tokens} new tokens = {total} exceeds "
            f"the {role}'s context length of {limit} tokens; shorten the prompt or ask for "
            "fewer new tokens"
        )


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How each token is drawn: temperature 0 is greedy; top_k 0 and top_p 1.0 turn those filters off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"Sampling: need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {self}")


def _filtered_logits(logits: Array, sampling: Sampling) -> Array:
    """Tempered logits (float32) with every token outside the top-k / top-p sets at -inf."""
    logits = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_k > 0:
        kth_largest = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        logits = _nucleus_filter(logits, sampling.top_p)
    return logits


def _nucleus_filter(logits: Array, top_p: float) -> Array:
    """Sets to -inf every token outside the top-p nucleus of each row."""
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def filtered_distribution(logits: Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Array:
    """The probabilities [..., vocab] (float32) that sampling draws from; temperature 0 is one-hot argmax.

    top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p``.
    """
    sampling = Sampling(temperature, top_k, top_p)
    if temperature == 0.0:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
    return jax.nn.softmax(_filtered_logits(logits, sampling), axis=-1)


def sample_logits(logits: Array, rng: Array, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Draws one token per row of ``logits`` [b, vocab] from `filtered_distribution` -> [b] int32."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = _filtered_logits(logits, Sampling(temperature, top_k, top_p))
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampling", "eos_id"))
def generate(
    model: StepwiseModel,
    params: Params,
    prompt_tokens: Array,
    prompt_lengths: Array,
    max_new_tokens: int,
    rng: Array,
    sampling: Sampling = Sampling(),
    eos_id: int = 1,
    inputs: Batch | None = None,
    prompt_embeddings: Array | None = None,
) -> Array:
    """Continues right-padded prompts [b, p] of ``prompt_lengths`` (>= 1) -> [b, max_new_tokens].

    ``inputs`` condition the model (T5: {"encoder_input_tokens": ...}; a T5 prompt is its decoder
    start token 0). ``eos_id`` comes from the vocabulary (`seqio.Vocabulary.eos_id`).
    ``prompt_embeddings`` [b, m, emb] (a soft prompt) go before each row's prompt tokens, as input
    embeddings: the prefill reads m + p positions (`Model.embed` gives the tokens' part).
    m + p + max_new_tokens beyond the model's context length is refused (`check_context`).
    """
    batch, prompt_len = prompt_tokens.shape
    prompt_tokens, lengths = prompt_tokens.astype(jnp.int32), jnp.asarray(prompt_lengths, jnp.int32)
    soft = 0 if prompt_embeddings is None else prompt_embeddings.shape[1]
    check_context(model, soft + prompt_len, max_new_tokens)
    cache = model.init_cache(params, batch, soft + prompt_len + max_new_tokens, inputs)
    if prompt_embeddings is None:
        logits, cache = model.prefill(params, cache, prompt_tokens, lengths)
    else:
        embedded = model.embed(params, prompt_tokens).astype(prompt_embeddings.dtype)
        placeholder = jnp.zeros((batch, soft + prompt_len), jnp.int32)  # the prefill reads only its shape
        logits, cache = model.prefill(
            params,
            cache,
            placeholder,
            lengths + soft,
            input_embeddings=jnp.concatenate([prompt_embeddings, embedded], axis=1),
        )

    def body(state: tuple) -> tuple:
        step, logits, cache, out, done = state
        sampled = sample_logits(
            logits, jax.random.fold_in(rng, step), sampling.temperature, sampling.top_k, sampling.top_p
        )
        emitted = jnp.where(done, 0, sampled)
        out = jax.lax.dynamic_update_slice(out, emitted[:, None], (0, step))
        next_logits, cache = model.extend(params, cache, emitted[:, None])
        return step + 1, next_logits[:, 0], cache, out, done | (emitted == eos_id)

    def not_finished(state: tuple) -> Array:
        step, _, _, _, done = state
        return (step < max_new_tokens) & ~jnp.all(done)

    init = (
        jnp.zeros((), jnp.int32),
        logits,
        cache,
        jnp.zeros((batch, max_new_tokens), jnp.int32),
        jnp.zeros((batch,), bool),
    )
    return jax.lax.while_loop(not_finished, body, init)[3]
