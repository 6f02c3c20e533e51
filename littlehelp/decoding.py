"""Batched, jitted sampling with a KV cache: greedy, temperature, top-k and top-p (nucleus).

Token id 0 is padding; once a sequence has emitted ``eos_id`` every later output is 0.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from littlehelp.models.decoder import DecoderLM
from littlehelp.models.t5 import T5

Array = jax.Array
Params = Any


def sample_logits(logits: Array, rng: Array, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0) -> Array:
    """Draws one token per row of ``logits`` [b, vocab] -> [b] int32.

    ``temperature`` 0 is greedy (argmax); ``top_k`` 0 and ``top_p`` 1.0 turn those filters off.
    top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p``.
    """
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k > 0:
        kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if top_p < 1.0:
        logits = _nucleus_filter(logits, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _nucleus_filter(logits: Array, top_p: float) -> Array:
    """Sets to -inf every token outside the top-p nucleus of each row."""
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def _zero_cache(apply_step: Callable[..., tuple[Array, Any]], *args: Any) -> Any:
    """A zero "cache" collection of the shapes ``apply_step(*args)`` creates (no compute)."""
    shapes = jax.eval_shape(lambda: apply_step(*args)[1]["cache"])
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _variables(params: Params) -> dict[str, Any]:
    return {"params": nn.unbox(params)}


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k",
                                             "top_p", "eos_id"))
def generate_decoder(model: DecoderLM, params: Params, prompt_tokens: Array,
                     prompt_lengths: Array, max_new_tokens: int, rng: Array,
                     temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                     eos_id: int = 1) -> Array:
    """Continues right-padded prompts [b, p] of ``prompt_lengths`` (>= 1) -> [b, max_new_tokens].

    Prompt and generated tokens go through the cache one position per step, so prompts of
    different lengths share one batch; each row's output starts right after its own prompt.
    """
    batch, prompt_len = prompt_tokens.shape
    variables = _variables(params)

    def apply_step(cache: Any, tokens: Array) -> tuple[Array, Any]:
        return model.apply({**variables, "cache": cache}, tokens, decode=True, mutable=["cache"])

    cache = _zero_cache(lambda t: model.apply(variables, t, decode=True, mutable=["cache"]),
                        jnp.zeros((batch, prompt_len + max_new_tokens), jnp.int32))
    padded_prompt = jnp.pad(prompt_tokens.astype(jnp.int32), ((0, 0), (0, max_new_tokens + 1)))
    last_step = jnp.max(prompt_lengths) + max_new_tokens - 1
    columns = jnp.arange(max_new_tokens)

    def body(state: tuple) -> tuple:
        step, token, cache, out, done = state
        logits, mutated = apply_step(cache, token[:, None])
        sampled = sample_logits(logits[:, -1], jax.random.fold_in(rng, step), temperature,
                                top_k, top_p)
        new_index = step + 1 - prompt_lengths
        emitting = (new_index >= 0) & (new_index < max_new_tokens)
        emitted = jnp.where(done, 0, sampled)
        out = jnp.where(emitting[:, None] & (columns == new_index[:, None]), emitted[:, None], out)
        done = done | (emitting & (emitted == eos_id))
        in_prompt = step + 1 < prompt_lengths
        next_token = jnp.where(in_prompt, padded_prompt[:, step + 1], emitted)
        return step + 1, next_token, mutated["cache"], out, done

    def not_finished(state: tuple) -> Array:
        step, _, _, _, done = state
        return (step < last_step) & ~jnp.all(done)

    init = (jnp.zeros((), jnp.int32), padded_prompt[:, 0], cache,
            jnp.zeros((batch, max_new_tokens), jnp.int32), jnp.zeros((batch,), bool))
    return jax.lax.while_loop(not_finished, body, init)[3]


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "temperature",
                                             "top_k", "top_p", "eos_id"))
def generate_t5(model: T5, params: Params, encoder_input_tokens: Array, max_decode_length: int,
                rng: Array, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                eos_id: int = 1) -> Array:
    """Decodes from the encoder input [b, l] -> [b, max_decode_length]; the decoder starts at 0."""
    batch = encoder_input_tokens.shape[0]
    variables = _variables(params)
    encoded = model.apply(variables, encoder_input_tokens, method=T5.encode)

    def apply_step(cache: Any, tokens: Array) -> tuple[Array, Any]:
        return model.apply({**variables, "cache": cache}, encoded, encoder_input_tokens, tokens,
                           decode=True, mutable=["cache"], method=T5.decode)

    cache = _zero_cache(
        lambda t: model.apply(variables, encoded, encoder_input_tokens, t, decode=True,
                              mutable=["cache"], method=T5.decode),
        jnp.zeros((batch, max_decode_length), jnp.int32))

    def body(state: tuple) -> tuple:
        step, token, cache, out, done = state
        logits, mutated = apply_step(cache, token[:, None])
        sampled = sample_logits(logits[:, -1], jax.random.fold_in(rng, step), temperature,
                                top_k, top_p)
        emitted = jnp.where(done, 0, sampled)
        out = jax.lax.dynamic_update_slice(out, emitted[:, None], (0, step))
        return step + 1, emitted, mutated["cache"], out, done | (emitted == eos_id)

    def not_finished(state: tuple) -> Array:
        step, _, _, _, done = state
        return (step < max_decode_length) & ~jnp.all(done)

    init = (jnp.zeros((), jnp.int32), jnp.zeros((batch,), jnp.int32), cache,
            jnp.zeros((batch, max_decode_length), jnp.int32), jnp.zeros((batch,), bool))
    return jax.lax.while_loop(not_finished, body, init)[3]
