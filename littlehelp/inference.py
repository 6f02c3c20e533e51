"""`littlehelp infer`: decode examples of a task, or a prompt, with a checkpoint and write them out;
and `task_metrics`, a task's own metrics of greedy predictions (what `littlehelp eval` adds to the loss).

Encoder-decoder models decode targets from each example's inputs; decoder-only models continue
the first `prompt_length` tokens of each example. With `prompt` (gin `PROMPT`) the model decodes that
text instead (optionally wrapped in the vocabulary's chat template). Results go to
MODEL_DIR/inference.jsonl (one record per example: input, target, prediction; for a prompt: prompt,
prediction) and are logged.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio
from absl import logging

from littlehelp import checkpoints, decoding, partitioning
from littlehelp.data import DatasetConfig, pipeline
from littlehelp.features import DECODER_INPUT_TOKENS, DECODER_TARGET_TOKENS, ENCODER_INPUT_TOKENS, INPUTS, TARGETS
from littlehelp.models import StepwiseModel
from littlehelp.trainer import restore_run_params


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodingConfig:
    """How to sample: temperature 0 is greedy; top_k 0 and top_p 1.0 switch those filters off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    max_decode_length: int = 64
    prompt_length: int = 16  # decoder-only models: tokens of each example used as the prompt
    seed: int = 0

    @property
    def sampling(self) -> decoding.Sampling:
        """The sampling settings (validated: a bad value is refused when the config is made)."""
        return decoding.Sampling(self.temperature, self.top_k, self.top_p)

    def __post_init__(self) -> None:
        _ = self.sampling


def first_examples(data: DatasetConfig, count: int) -> dict[str, np.ndarray]:
    """The first `count` unpacked examples of `data` as one host batch."""
    unpacked = dataclasses.replace(data, pack=False, shuffle=False, repeat=False, batch_size=count)
    try:
        return next(pipeline.host_dataset(unpacked).as_numpy_iterator())
    except StopIteration:
        raise ValueError(f"{data.name!r} split {data.split!r} has fewer than {count} examples") from None


def spread_examples(data: DatasetConfig, count: int) -> dict[str, np.ndarray]:
    """`count` unpacked examples of `data`, one from the middle of each of `count` equal parts of its split,
    as one host batch: on a split of several works, passages of different works."""
    unpacked = dataclasses.replace(data, pack=False, shuffle=False, repeat=False, batch_size=1)
    examples = list(pipeline.host_dataset(unpacked).as_numpy_iterator())
    if len(examples) < count:
        raise ValueError(f"{data.name!r} split {data.split!r} has fewer than {count} examples")
    chosen = [examples[int((i + 0.5) * len(examples) / count)] for i in range(count)]
    return {key: np.concatenate([e[key] for e in chosen]) for key in chosen[0]}


def decode_examples(
    model: StepwiseModel, params, batch: dict[str, np.ndarray], config: DecodingConfig, eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(prompts or inputs, predictions) token arrays for a host batch.

    A model with an encoder ("encoder_input_tokens" in the batch) decodes from its start token 0;
    a decoder-only model continues the first `prompt_length` tokens of each example.
    """
    rng, size = jax.random.key(config.seed), len(batch[DECODER_TARGET_TOKENS])
    if ENCODER_INPUT_TOKENS in batch:
        sources = batch[ENCODER_INPUT_TOKENS]
        prompts, lengths, inputs = (
            np.zeros((size, 1), np.int32),
            np.ones(size, np.int32),
            {ENCODER_INPUT_TOKENS: sources},
        )
    else:
        targets = batch[DECODER_TARGET_TOKENS]
        lengths = np.maximum(np.minimum((targets != 0).sum(axis=1), config.prompt_length), 1)
        prompts = np.where(np.arange(config.prompt_length) < lengths[:, None], targets[:, : config.prompt_length], 0)
        sources, inputs = prompts, None
    predictions = decoding.generate(
        model, params, prompts, lengths, config.max_decode_length, rng, config.sampling, eos_id, inputs
    )
    return sources, np.asarray(predictions)


def prompt_example(
    prompt: str, vocabulary: seqio.Vocabulary, feature_converter: str, chat: bool = False
) -> dict[str, np.ndarray]:
    """A one-row host batch holding `prompt` where `feature_converter`'s models read their input: the
    encoder input ("encoder_decoder") or the decoder's first tokens ("lm", then `prompt_length` is its length).

    With `chat` the prompt is one user message rendered by the vocabulary's chat template.
    """
    if chat:
        render = getattr(vocabulary, "render_chat", None)
        if render is None or not getattr(vocabulary, "chat_template", None):
            raise ValueError(
                f"inference.infer.chat=True but the vocabulary {type(vocabulary).__name__} has no chat template"
            )
        prompt = render([{"role": "user", "content": prompt}])
    ids = np.asarray(vocabulary.encode(prompt), np.int32)[None]
    if not ids.size:
        raise ValueError("inference.infer.prompt encodes to no tokens")
    start = np.zeros((1, 1), np.int32)  # the decoder's input features only give `model.init` their shapes
    if feature_converter == "encoder_decoder":
        return {ENCODER_INPUT_TOKENS: ids, DECODER_INPUT_TOKENS: start, DECODER_TARGET_TOKENS: start}
    return {DECODER_INPUT_TOKENS: ids, DECODER_TARGET_TOKENS: ids}


def _text(vocabulary: seqio.Vocabulary, tokens: np.ndarray) -> str:
    ids = [int(t) for t in tokens if t != 0]
    if vocabulary.eos_id in ids:
        ids = ids[: ids.index(vocabulary.eos_id)]
    return vocabulary.decode(ids)


@gin.configurable
def infer(
    model_dir: str = gin.REQUIRED,
    model: StepwiseModel = gin.REQUIRED,
    data: DatasetConfig | None = None,
    model_key: str = "model",
    prompt: str | None = None,
    vocabulary: seqio.Vocabulary | None = None,
    feature_converter: str = "lm",
    chat: bool = False,
    num_examples: int = 8,
    spread: bool = False,
    decoding_config: DecodingConfig = DecodingConfig(),
    mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
    checkpoint_config: checkpoints.CheckpointConfig = checkpoints.CheckpointConfig(),
) -> list[dict[str, str]]:
    """Decodes `num_examples` examples of `data`, or `prompt`, with the newest checkpoint of MODEL_DIR
    (else `checkpoint_config.restore_path`).

    Reads only the parameters of model `model_key` (e.g. 't5' in a SpacTor run); no optimizer. Texts
    are encoded and decoded with `vocabulary` (default: the data's targets vocabulary). A prompt plus
    `max_decode_length` beyond the model's context length is refused before the parameters are read.
    `spread=True` decodes examples spread over the whole split (`spread_examples`), not its first ones.
    """
    if prompt is None and data is None:
        raise ValueError("inference.infer needs data (a run's TASK) or a prompt (PROMPT)")
    if vocabulary is None:
        if data is None:
            raise ValueError("inference.infer.prompt needs inference.infer.vocabulary")
        vocabulary = seqio.get_mixture_or_task(data.name).output_features[TARGETS].vocabulary
    if prompt is None:
        assert data is not None  # refused above when both are None
        batch = spread_examples(data, num_examples) if spread else first_examples(data, num_examples)
    else:
        batch = prompt_example(prompt, vocabulary, feature_converter, chat)
        decoding_config = dataclasses.replace(decoding_config, prompt_length=batch[DECODER_INPUT_TOKENS].shape[1])
    decoder_prompt = 1 if ENCODER_INPUT_TOKENS in batch else decoding_config.prompt_length  # T5: its start token
    decoding.check_context(model, decoder_prompt, decoding_config.max_decode_length)
    mesh, rules = partitioning.make_mesh(mesh_config), partitioning.logical_axis_rules()
    example = {k: jnp.asarray(v[:1]) for k, v in batch.items()}
    params, step = restore_run_params(
        model_dir, lambda rng: model.init(rng, example), mesh, rules, checkpoint_config, select=model_key
    )
    sources, predictions = decode_examples(model, jax.device_get(params), batch, decoding_config, vocabulary.eos_id)
    if prompt is not None:  # no target: the prompt is what the model continued (chat template included)
        records = [{"prompt": _text(vocabulary, sources[0]), "prediction": _text(vocabulary, predictions[0])}]
    else:
        records = [
            {"input": _text(vocabulary, s), "target": _text(vocabulary, t), "prediction": _text(vocabulary, p)}
            for s, t, p in zip(sources, batch[DECODER_TARGET_TOKENS], predictions)
        ]
    _write_records(records, Path(model_dir) / "inference.jsonl", step)
    return records


@gin.configurable
def task_metrics(
    params: Mapping[str, Any],
    data: DatasetConfig,
    model_dir: str,
    step: int,
    model: StepwiseModel = gin.REQUIRED,
    model_key: str = "model",
    max_examples: int | None = None,
) -> dict[str, float]:
    """The task's metrics (seqio `predict_metric_fns`, on postprocessed texts) of greedy predictions for
    every example of `data`'s split (at most `max_examples`); {} for a task without metric functions.

    Encoder-decoder tasks only: predictions run up to the targets' feature length. The records go to
    MODEL_DIR/eval_predictions.jsonl.
    """
    task = seqio.get_mixture_or_task(data.name)
    metric_fns = getattr(task, "predict_metric_fns", [])
    if not metric_fns:
        logging.info("task %s has no metric functions: loss only", data.name)
        return {}
    if data.feature_converter != "encoder_decoder":
        raise ValueError(
            f"inference.task_metrics decodes encoder-decoder tasks; {data.name!r} is read with "
            f"feature_converter={data.feature_converter!r}"
        )
    records = decode_split(model, params[model_key], data, max_examples)
    targets = [task.postprocess_fn(r["target"], is_target=True) for r in records]
    predictions = [task.postprocess_fn(r["prediction"], is_target=False) for r in records]
    metrics: dict[str, float] = {}
    for metric_fn in metric_fns:
        metrics.update({k: float(v) for k, v in metric_fn(targets, predictions).items()})
    path = Path(model_dir) / "eval_predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    logging.info(
        "task metrics of %s at step %d on %d examples: %s (predictions in %s)",
        data.name,
        step,
        len(records),
        {k: round(v, 4) for k, v in metrics.items()},
        path,
    )
    return metrics


def decode_split(
    model: StepwiseModel, params, data: DatasetConfig, max_examples: int | None = None
) -> list[dict[str, str]]:
    """Greedy predictions (input, target, prediction texts) for every example of `data`'s split, in order,
    in batches of `data.batch_size` (the last one padded)."""
    unpacked = dataclasses.replace(data, pack=False, shuffle=False, repeat=False, drop_remainder=False)
    features = seqio.get_mixture_or_task(data.name).output_features
    inputs_vocabulary, targets_vocabulary = features[INPUTS].vocabulary, features[TARGETS].vocabulary
    config = DecodingConfig(max_decode_length=data.task_feature_lengths[TARGETS])
    params, records = jax.device_get(params), []
    for batch in pipeline.host_dataset(unpacked).as_numpy_iterator():
        size = len(batch[DECODER_TARGET_TOKENS])
        padded = {k: np.pad(v, [(0, data.batch_size - size)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}
        sources, predictions = decode_examples(model, params, padded, config, targets_vocabulary.eos_id)
        records += [
            {
                "input": _text(inputs_vocabulary, s),
                "target": _text(targets_vocabulary, t),
                "prediction": _text(targets_vocabulary, p),
            }
            for s, t, p in zip(sources[:size], batch[DECODER_TARGET_TOKENS], predictions[:size])
        ]
        logging.log_every_n_seconds(logging.INFO, "decoded %d examples of %s", 30, len(records), data.name)
        if max_examples is not None and len(records) >= max_examples:
            return records[:max_examples]
    return records


def _write_records(records: list[dict[str, str]], path: Path, step: int) -> None:
    """Writes the decoded records as JSON lines to `path` (its folder made if absent) and logs each one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    for record in records:
        logging.info("%s", "\n  ".join(f"{field}: {text}" for field, text in record.items()))
    logging.info("wrote %d examples decoded at step %d to %s", len(records), step, path)
