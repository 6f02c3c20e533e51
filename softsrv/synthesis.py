"""What `python -m softsrv.run` samples: soft-prompted continuations from the training examples' context
vectors, or hard-prompted ones (zero-shot, few-shot), with the models bound in softsrv/base.gin.

A soft prompt's contexts z come only from the Task's "train" split (the examples the prompt was trained
on), never from its "validation" split or from any file a sample is scored against.
Kept apart from the command's module so that running it as `__main__` registers no configurable twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import gin
import jax
import numpy as np
import seqio

from littlehelp import checkpoints, decoding, frozen, partitioning, trainer
from littlehelp.data import pipeline
from littlehelp.features import DECODER_INPUT_TOKENS, ENCODER_INPUT_TOKENS
from softsrv import generate
from softsrv.objective import SoftPromptObjective

SOFT, HARD = ("nsp", "mpk", "mlp"), ("zero_shot", "few_shot")
CONTEXT_BATCH = 8
SAMPLE_BATCH = 32  # rows decoded together (on 2 CPU cores a sample costs 0.57 of its cost in rows of 8)
CONTEXT_SPLIT = "train"


def contexts(objective: SoftPromptObjective, params: dict, task: str, lengths: Mapping[str, int]) -> np.ndarray:
    """z [n, d] of the Task's training examples, in order (the objective's own pooling)."""
    dataset = seqio.get_dataset(
        task,
        dict(lengths),
        pipeline.FEATURE_CONVERTERS["encoder_decoder"](pack=False),
        dataset_split=CONTEXT_SPLIT,
        shuffle=False,
        num_epochs=1,
    )
    pooled = jax.jit(objective.context)
    return np.concatenate(
        [
            np.asarray(pooled(params, batch[ENCODER_INPUT_TOKENS]))
            for batch in dataset.batch(CONTEXT_BATCH).as_numpy_iterator()
        ]
    )


def context_rows(available: int, count: int, seed: int) -> np.ndarray:
    """`count` row indices into `available` contexts: seeded random orders of all of them, one after
    another, so that every context is used once before any is used twice."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(available) for _ in range(-(-count // available))])[:count]


@gin.configurable(module="softsrv")
def synthesize(
    method: str,
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    shots: int,
    seed: int,
    train_texts: Sequence[str],
    instruction: str,
    objective: SoftPromptObjective = gin.REQUIRED,
    task: str = gin.REQUIRED,
    lengths: Mapping[str, int] = gin.REQUIRED,
    vocabulary: seqio.Vocabulary = gin.REQUIRED,
    frozen_models: Mapping[str, frozen.FrozenModel] = gin.REQUIRED,
    model_dir: str = gin.REQUIRED,
) -> list[str]:
    """`num_samples` synthetic examples by `method` (the models, data and run folder bound in softsrv/base.gin):
    soft methods from the contexts of `context_rows`, hard ones after `instruction` (few-shot prompts
    also show `shots` of `train_texts`)."""
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    example = {DECODER_INPUT_TOKENS: np.zeros((1, 8), np.int32), ENCODER_INPUT_TOKENS: np.zeros((1, 8), np.int32)}
    rules = partitioning.logical_axis_rules()
    params = dict(frozen.load_frozen_models(frozen_models, example, mesh, rules).params)
    sampling = decoding.Sampling(temperature=temperature)
    if method in HARD:
        return generate.hard_prompted(
            objective.lm,
            params[objective.lm_key],
            hard_prompts(method, train_texts, num_samples, shots, seed, instruction),
            vocabulary,
            max_new_tokens,
            sampling,
            seed,
            SAMPLE_BATCH,
        )
    prompt, _ = trainer.restore_run_params(
        model_dir, lambda rng: objective.init_params(rng, example), mesh, rules, checkpoints.CheckpointConfig()
    )
    params.update(prompt)
    z = contexts(objective, params, task, lengths)
    return generate.soft_prompted(
        objective,
        params,
        z[context_rows(len(z), num_samples, seed)],
        vocabulary,
        max_new_tokens,
        sampling,
        seed,
        SAMPLE_BATCH,
    )


def hard_prompts(
    method: str, train_texts: Sequence[str], count: int, shots: int, seed: int, instruction: str
) -> list[str]:
    """`count` zero-shot prompts, or few-shot prompts of `shots` random training examples each, after `instruction`."""
    if method == "zero_shot":
        return [generate.zero_shot_prompt(instruction)] * count
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(len(train_texts), min(shots, len(train_texts)), replace=False) for _ in range(count)]
    return [generate.few_shot_prompt([train_texts[i] for i in rows], instruction) for rows in chosen]
