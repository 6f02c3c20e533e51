"""SoftSRV generation: a soft-prompted greedy sample is the greedy continuation recomputed without a cache
from the LM's logits after P_theta(z), per context, in batches of any size; hard-prompted samples
likewise after the prompt's tokens; the hard prompts are built as documented."""

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from littlehelp import decoding
from littlehelp.models import BertConfig, DecoderConfig, build_model
from softsrv.generate import few_shot_prompt, hard_prompted, soft_prompted, zero_shot_prompt
from softsrv.objective import SoftPromptObjective
from softsrv.prompts import MLPPrompt
from tests.helpers import random_params
from tests.softsrv.test_objective import prompt_params

VOCABULARY = seqio.ByteVocabulary(extra_ids=0)  # eos 1, ids < 259
LM = build_model(
    DecoderConfig(vocab_size=264, emb_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
)
EMBEDDER = build_model(BertConfig(vocab_size=264, emb_dim=12, num_layers=1, num_heads=2, mlp_dim=24))
NEW = 5


@jax.jit
def _logits(lm_params, prefix_embeddings, tokens):
    """The LM's logits [1, m + t, vocab] after `prefix_embeddings` [m, w] and `tokens` [t] (no cache)."""
    inputs = jnp.concatenate([prefix_embeddings[None], LM.embed(lm_params, tokens[None])], axis=1)
    return LM.logits(
        lm_params, {"decoder_input_tokens": jnp.ones(inputs.shape[:2], jnp.int32)}, input_embeddings=inputs
    )


def greedy_by_recomputation(prefix_embeddings: jax.Array, tokens: list[int], lm_params) -> list[int]:
    """Greedy tokens after `prefix_embeddings` [m, w] and `tokens`, each step a full forward pass at one
    fixed width (causal: the zero padding after the sequence changes nothing); EOS ends it."""
    out: list[int] = []
    width = len(tokens) + NEW
    for _ in range(NEW):
        sequence = tokens + out
        padded = jnp.asarray(sequence + [0] * (width - len(sequence)), jnp.int32)
        logits = _logits(lm_params, prefix_embeddings, padded)
        out.append(int(jnp.argmax(logits[0, len(prefix_embeddings) + len(sequence) - 1])))
        if out[-1] == VOCABULARY.eos_id:
            break
    return out


def test_soft_prompted_samples_are_the_greedy_continuations_after_each_contexts_prompt():
    objective = SoftPromptObjective(MLPPrompt(3, 16, hidden=8), LM, EMBEDDER)
    params = {"prompt": prompt_params(objective.prompt), "lm": random_params(LM, 4)}
    contexts = np.random.default_rng(5).standard_normal((3, 12)).astype(np.float32)
    greedy = decoding.Sampling(temperature=0.0)
    got = soft_prompted(objective, params, contexts, VOCABULARY, NEW, greedy, batch_size=2)  # batches of 2 and 1
    prompts = objective.prompt_embeddings(params, jnp.asarray(contexts))
    expected = [VOCABULARY.decode(greedy_by_recomputation(p, [0], params["lm"])) for p in prompts]
    assert got == expected and len(set(expected)) > 1  # contexts steer the samples apart


def test_hard_prompted_samples_are_the_greedy_continuations_after_the_prompt():
    lm_params = random_params(LM, 6)
    prompts = [zero_shot_prompt("Say"), few_shot_prompt(["ab", "cd"], "More")]
    assert prompts == ["Say\n\n", "More\n\nExample:\nab\n\nExample:\ncd\n\nExample:\n"]
    got = hard_prompted(LM, lm_params, prompts, VOCABULARY, NEW, decoding.Sampling(temperature=0.0))
    empty = jnp.zeros((0, 16), jnp.float32)
    expected = [
        VOCABULARY.decode(greedy_by_recomputation(empty, [0, *VOCABULARY.encode(p)], lm_params)) for p in prompts
    ]
    assert got == expected
