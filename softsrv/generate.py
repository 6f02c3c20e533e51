"""SoftSRV generation: synthetic examples from the frozen LM, steered by a trained soft prompt or by a
hard prompt (the baselines), all through the core's one sampling loop (`littlehelp.decoding.generate`).

- `soft_prompted`: one sample per context vector z (each from a training example): the prompt
  P_theta(z) goes before the start token as input embeddings;
- `hard_prompted`: the same sampling after a text prompt, `zero_shot_prompt(instruction)` or
  `few_shot_prompt(examples, instruction)` (k training examples in the prompt); the instruction is
  the generic `GENERIC_INSTRUCTION` or one written for the domain.
Samples end at the LM vocabulary's EOS or after `max_new_tokens`, and are decoded to text.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from littlehelp import decoding
from littlehelp.models import Model
from littlehelp.typing import Params
from softsrv.objective import SoftPromptObjective

START_TOKEN = 0  # the objective's shifted inputs start with id 0, so generation starts there too
GENERIC_INSTRUCTION = "Write one more example like the examples of this kind."


def zero_shot_prompt(instruction: str) -> str:
    """The zero-shot hard prompt: the instruction alone, then a blank line."""
    return f"{instruction}\n\n"


def few_shot_prompt(examples: Sequence[str], instruction: str) -> str:
    """The few-shot hard prompt: the instruction, each example after "Example:", then "Example:" to continue."""
    shown = "".join(f"Example:\n{example}\n\n" for example in examples)
    return f"{instruction}\n\n{shown}Example:\n"


def _texts(tokens: np.ndarray, vocabulary: seqio.Vocabulary) -> list[str]:
    """Decoded samples [n, t] (each cut at its first EOS by the vocabulary's `decode`)."""
    return [vocabulary.decode(row.tolist()) for row in tokens]


def soft_prompted(
    objective: SoftPromptObjective,
    params: Params,
    contexts: np.ndarray,
    vocabulary: seqio.Vocabulary,
    max_new_tokens: int,
    sampling: decoding.Sampling,
    seed: int = 0,
    batch_size: int = 8,
) -> list[str]:
    """One sample per row of `contexts` [n, d_z], from the LM after P_theta(z) (params: 'prompt' and 'lm')."""
    samples: list[str] = []
    for start in range(0, len(contexts), batch_size):
        chunk = jnp.asarray(contexts[start : start + batch_size], jnp.float32)
        prompt = objective.prompt_embeddings(params, chunk)
        tokens = jnp.full((len(chunk), 1), START_TOKEN, jnp.int32)
        out = decoding.generate(
            objective.lm,
            params[objective.lm_key],
            tokens,
            jnp.ones(len(chunk), jnp.int32),
            max_new_tokens,
            jax.random.fold_in(jax.random.key(seed), start),
            sampling,
            eos_id=vocabulary.eos_id,
            prompt_embeddings=prompt,
        )
        samples += _texts(np.asarray(out), vocabulary)
    return samples


def hard_prompted(
    lm: Model,
    lm_params: Params,
    prompts: Sequence[str],
    vocabulary: seqio.Vocabulary,
    max_new_tokens: int,
    sampling: decoding.Sampling,
    seed: int = 0,
    batch_size: int = 8,
) -> list[str]:
    """One sample per text prompt, from the LM after the start token and the prompt's tokens."""
    samples: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = [[START_TOKEN, *vocabulary.encode(prompt)] for prompt in prompts[start : start + batch_size]]
        tokens = np.zeros((len(rows), max(map(len, rows))), np.int32)
        for index, row in enumerate(rows):
            tokens[index, : len(row)] = row
        out = decoding.generate(
            lm,
            lm_params,
            jnp.asarray(tokens),
            jnp.asarray([len(r) for r in rows], jnp.int32),
            max_new_tokens,
            jax.random.fold_in(jax.random.key(seed), start),
            sampling,
            eos_id=vocabulary.eos_id,
        )
        samples += _texts(np.asarray(out), vocabulary)
    return samples
