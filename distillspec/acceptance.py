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
continuation of at least `continuation_length` tokens.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from littlehelp.decoding import filtered_distribution
from littlehelp.models.api import Model, Params

Array = jax.Array


def _continuation_logits(model: Model, params: Params, sequences: Array, prompt_lengths: Array,
                         continuation_length: int) -> Array:
    """Logits [b, g, vocab] that predict continuation tokens 0..g-1 of each row."""
    hidden = model.hidden_states(params, {"decoder_input_tokens": sequences})
    positions = prompt_lengths[:, None] - 1 + jnp.arange(continuation_length)[None, :]
    return model.logits_from_hidden(params, jnp.take_along_axis(hidden, positions[..., None], axis=1))


def _continuation_tokens(sequences: Array, prompt_lengths: Array, continuation_length: int) -> Array:
    positions = prompt_lengths[:, None] + jnp.arange(continuation_length)[None, :]
    return jnp.take_along_axis(sequences, positions, axis=1)


@functools.partial(jax.jit, static_argnames=("model", "continuation_length"))
def greedy_agreement(model: Model, params: Params, sequences: Array, prompt_lengths: Array,
                     continuation_length: int) -> Array:
    """[b, g] bool: the model's argmax at continuation position j equals the sequence's token j."""
    logits = _continuation_logits(model, params, sequences, prompt_lengths, continuation_length)
    return jnp.argmax(logits, axis=-1) == _continuation_tokens(sequences, prompt_lengths, continuation_length)


@functools.partial(jax.jit, static_argnames=("target", "draft", "continuation_length", "temperature", "top_k", "top_p"))
def acceptance_probabilities(target: Model, target_params: Params, draft: Model, draft_params: Params,
                             sequences: Array, prompt_lengths: Array, continuation_length: int,
                             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Array:
    """[b, g]: 1 - TVD(p, q) of the filtered next-token distributions at each continuation position."""
    p, q = (filtered_distribution(_continuation_logits(m, w, sequences, prompt_lengths, continuation_length),
                                  temperature, top_k, top_p)
            for m, w in ((target, target_params), (draft, draft_params)))
    return 1.0 - 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)


def greedy_rounds(agreement: np.ndarray, gamma: int, max_new_tokens: int) -> tuple[int, int]:
    """(accepted proposals, rounds) of greedy speculative decoding of one row to `max_new_tokens`
    tokens without EOS, given its agreement [n] (n >= max_new_tokens + gamma - 1)."""
    if len(agreement) < max_new_tokens + gamma - 1:
        raise ValueError(f"agreement of {len(agreement)} positions cannot replay {max_new_tokens} tokens at gamma {gamma}")
    produced = accepted = rounds = 0
    while produced < max_new_tokens:
        window = agreement[produced:produced + gamma]
        n = int(np.cumprod(window).sum())
        accepted, rounds, produced = accepted + n, rounds + 1, produced + n + 1
    return accepted, rounds


def greedy_block_efficiency(agreement: np.ndarray, gamma: int, max_new_tokens: int) -> float:
    """Tokens per target call per row (`SpeculativeStats.block_efficiency`) over rows of agreement [b, n]."""
    totals = np.array([greedy_rounds(np.asarray(row, bool), gamma, max_new_tokens) for row in agreement])
    return float(totals[:, 0].sum() / totals[:, 1].sum() + 1)


def expected_block_efficiency(alpha: float, gamma: int) -> float:
    """(1 - alpha^(gamma + 1)) / (1 - alpha): expected tokens per round at per-token acceptance alpha."""
    return float(gamma + 1) if alpha >= 1.0 else float((1 - alpha ** (gamma + 1)) / (1 - alpha))
