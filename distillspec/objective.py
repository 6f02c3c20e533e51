"""DistillSpec's distillation objective (docs/methods/distillspec.md): the draft q learns the frozen target p.

Loss = D(p_target || q_draft) per token (FKL, RKL, JSD[beta], TVD; `littlehelp.losses`) on the generated
tokens of sequences y = prompt + continuation, averaged as `average` asks: "sequence" (the paper's, DistillSpec,
arXiv 2310.08461: each sequence's mean `1/|y| sum_t D` over its continuation, then the mean over sequences) or
"token" (the mean over every continuation token of the batch, so longer sequences weigh more). The sequences
come from a data source:

- "fixed": the continuation is the batch's own next tokens;
- "target": sampled from the frozen target given the prompt;
- "draft": sampled from the draft's current parameters (on-policy), inside the jitted step;
- a mixture: {source: probability}, one source drawn per batch.

Layout on an LM batch (seqio's "lm" features): the prompt is the first `prompt_length` target tokens,
fed as `decoder_input_tokens[:, :prompt_length + 1]` (the start token 0 first, as in training); the
continuation is `generation_length` tokens. Both models read y = prompt + continuation in one
forward pass (no segment ids: LM chunks fill their rows) and the divergence is taken on the
continuation's positions only, chunked (`losses.chunked_divergence`), so no [b, l, vocab] logits
exist. A continuation token counts with its row's example weight (`objectives.token_weights` of the
last prompt token; fixed data: its own weight), and sampled tokens after `eos_id` count 0; per sequence,
`|y|` is the number of the row's tokens that count, a row's mean counts with its weight (2: as two rows), and
a row with no token that counts contributes nothing (`averaging_weights`).
Samples get no gradient; the target gets none either (it is a frozen model, `params[target_key]`).

Encoder-decoder pairs (T5; `speculative.model_kind`) read seqio's unpacked "encoder_decoder" features:
both models, and the sampling, see the batch's `encoder_input_tokens`; the decoder prompt is the start
token 0 and the first `prompt_length` target tokens (0 allowed: the continuation is the target from its
start), and the divergence is over the decoder's continuation positions. A sampled row counts with its
first target token's weight when there is no decoder prompt. The draft and the target must be of one kind.

Stored labels: with `target = None` and fixed data, the target's distributions are its top-k stored
once (`littlehelp.data.teacher_labels`, a labelled decoder-LM Task) and the divergence is taken between
the target's k + 1 buckets (its top k tokens, then the rest of the vocabulary as one) and the draft's
mass on them (`losses.sparse_divergence`: FKL, RKL, JSD[beta] and TVD of the bucketed distributions,
each at most the full divergence, equal to it when k is the vocabulary); the step runs no target and
holds no target parameters. The labels are at temperature 1, so `temperature` must be 1.

Random keys: `choice_key, sample_key = jax.random.split(rng)`; the source is drawn with `choice_key`
(`choose_source`), tokens are sampled with `sample_key` by `littlehelp.decoding.generate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NoReturn

import gin
import jax
import jax.numpy as jnp

from distillspec import drafts
from distillspec.speculative import DECODER_ONLY, ENCODER_DECODER, model_kind
from littlehelp import decoding, flops, losses
from littlehelp.config import ConfigError
from littlehelp.features import DECODER_INPUT_TOKENS, ENCODER_INPUT_TOKENS, ENCODER_SEGMENT_IDS
from littlehelp.models import Model
from littlehelp.objectives import stored_teacher_labels, token_weights
from littlehelp.typing import Array, Batch, Metrics, Params

SOURCES = ("fixed", "target", "draft")
AVERAGES = ("sequence", "token")
Sequences = tuple[Array, Array]  # (decoder input tokens [b, p + g], continuation weights [b, g])


def _refuse(problem: str) -> NoReturn:
    """Raises the one-line ConfigError naming the knob."""
    raise ConfigError(f"DistillationObjective.{problem}")


def source_probabilities(data_source: str | Mapping[str, float]) -> dict[str, float]:
    """{source: probability} of a source name or a mixture; refuses unknown names and bad probabilities."""
    mixture = {data_source: 1.0} if isinstance(data_source, str) else dict(data_source)
    for name, probability in mixture.items():
        if name not in SOURCES:
            _refuse(f"data_source {name!r} is not one of {', '.join(SOURCES)}")
        if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 <= probability <= 1:
            _refuse(f"data_source probability of {name!r} must be in [0, 1], got {probability!r}")
    if not math.isclose(sum(mixture.values()), 1.0, abs_tol=1e-6):
        _refuse(f"data_source probabilities must sum to 1, got {sum(mixture.values())!r} ({mixture})")
    return {name: float(p) for name, p in mixture.items()}


def _check_knobs(
    divergence: str,
    beta: float,
    temperature: float,
    prompt_length: int,
    generation_length: int,
    sampling_temperature: float,
    average: str,
    kind: str,
) -> None:
    """Refuses, by name, a divergence, average or length the objective cannot use (a decoder-only `kind`
    needs a prompt of 1 token or more, an encoder-decoder's may be empty)."""
    if divergence not in losses.DIVERGENCES:
        _refuse(f"divergence {divergence!r} is not one of {', '.join(losses.DIVERGENCES)}")
    if average not in AVERAGES:
        _refuse(f"average {average!r} is not one of {', '.join(AVERAGES)}")
    if divergence == "jsd" and not 0 < beta < 1:
        _refuse(f"beta must be in (0, 1) for jsd, got {beta!r}")
    if not temperature > 0:
        _refuse(f"temperature must be > 0, got {temperature!r}")
    if not sampling_temperature >= 0:
        _refuse(f"sampling_temperature must be >= 0 (0: greedy), got {sampling_temperature!r}")
    shortest_prompt = 0 if kind == ENCODER_DECODER else 1
    for name, value, least in (
        ("prompt_length", prompt_length, shortest_prompt),
        ("generation_length", generation_length, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            _refuse(f"{name} must be an integer >= {least}, got {value!r}")


def _check_stored_labels(data_source: str | Mapping[str, float], temperature: float, kind: str) -> None:
    """Refuses stored labels (target None) with sampled data, a temperature other than 1 or an
    encoder-decoder pair, by name."""
    if source_probabilities(data_source) != {"fixed": 1.0}:
        _refuse(f"target=None (stored labels) needs data_source 'fixed', got {data_source!r}")
    if temperature != 1.0:
        _refuse(f"temperature={temperature!r} with stored labels (target None): they are stored at temperature 1")
    if kind != DECODER_ONLY:
        _refuse("target=None (stored labels) needs a decoder-only draft: labels are stored for decoder LM Tasks")


def _shaped(batch_size: int, length: int, inputs_length: int | None) -> dict[str, jax.ShapeDtypeStruct]:
    """An abstract batch of these shapes (for `forward_flops`), with encoder inputs when `inputs_length` is set."""
    shapes = {DECODER_INPUT_TOKENS: (batch_size, length)}
    if inputs_length is not None:
        shapes[ENCODER_INPUT_TOKENS] = (batch_size, inputs_length)
    return {name: jax.ShapeDtypeStruct(shape, jnp.int32) for name, shape in shapes.items()}


def encoder_inputs(batch: Batch) -> dict[str, Array]:
    """What conditions both models: the batch's `encoder_input_tokens` ({} for decoder-only models)."""
    return {ENCODER_INPUT_TOKENS: batch[ENCODER_INPUT_TOKENS]} if ENCODER_INPUT_TOKENS in batch else {}


def continuation_weights(tokens: Array, row_weights: Array, eos_id: int | None) -> Array:
    """Weights [b, g] of sampled continuations: the row's weight up to and including the first `eos_id`."""
    if eos_id is None:
        return jnp.broadcast_to(row_weights, tokens.shape).astype(jnp.float32)
    is_eos = (tokens == eos_id).astype(jnp.int32)
    before = jnp.cumsum(is_eos, axis=1) - is_eos  # eos tokens strictly before each position
    return jnp.where(before == 0, row_weights, 0.0).astype(jnp.float32)


def averaging_weights(weights: Array, average: str) -> Array:
    """Token weights [b, g] whose weighted mean, sum(a * D) / sum(a), is the average `average` asks for:
    "token", `weights` itself; "sequence", each row's weights over `|y|`, its number of nonzero weights (a row of
    one weight r then adds r times its mean `1/|y| sum_t D`, and r to the denominator; a row of zeros, nothing)."""
    if average == "token":
        return weights
    lengths = jnp.sum((weights > 0).astype(weights.dtype), axis=1, keepdims=True)
    return weights / jnp.maximum(lengths, 1.0)


@gin.configurable(module="distillspec")
class DistillationObjective:
    """D(p_target || q_draft) on sequences from `data_source` (see the module docstring).

    model: the draft (trained, under `model_key`); target: the frozen target's seam (its parameters
    come from the trainer's frozen model `target_key`), or None to read its stored top-k labels from a
    labelled Task's batches (fixed data, decoder-only, temperature 1), of the draft's kind (both decoder-only, or both
    encoder-decoders reading the batch's encoder inputs); divergence in fkl / rkl / jsd / tvd (`beta`
    for jsd); temperature: on both models' logits in the divergence; data_source: a source name or
    {name: probability}; prompt_length / generation_length: tokens of prompt and continuation;
    sampling_temperature: how continuations are sampled (0: greedy); eos_id: a sampled token that
    ends a continuation (None: every continuation is `generation_length` tokens); average: "sequence"
    (the paper's mean of per-sequence means) or "token" (the mean over the batch's tokens); chunk_size:
    positions per chunk of the divergence.
    """

    def __init__(
        self,
        model: Model = gin.REQUIRED,
        target: Model | None = gin.REQUIRED,
        divergence: str = "fkl",
        beta: float = 0.5,
        temperature: float = 1.0,
        data_source: str | Mapping[str, float] = "fixed",
        prompt_length: int = 16,
        generation_length: int = 16,
        sampling_temperature: float = 1.0,
        eos_id: int | None = None,
        average: str = "sequence",
        model_key: str = "model",
        target_key: str = "target",
        chunk_size: int = losses.DEFAULT_CHUNK_SIZE,
    ):
        self.kind = model_kind(model)
        if target is None:
            _check_stored_labels(data_source, temperature, self.kind)
        elif model_kind(target) != self.kind:
            _refuse(f"target is {model_kind(target)} and model (the draft) {self.kind}; both must be of one kind")
        if divergence == "fkl" and isinstance(model.config, drafts.ReducedVocabularyConfig):
            _refuse(
                "divergence 'fkl' is infinite for a reduced-vocabulary draft (q is 0 where p is not); "
                "use jsd, rkl or tvd"
            )
        _check_knobs(
            divergence, beta, temperature, prompt_length, generation_length, sampling_temperature, average, self.kind
        )
        self.model, self.target = model, target
        self.divergence, self.beta, self.temperature, self.average = divergence, beta, temperature, average
        self.probabilities = source_probabilities(data_source)
        self.sources = tuple(name for name, p in self.probabilities.items() if p > 0)  # zero: never traced
        self.prompt_length, self.generation_length = prompt_length, generation_length
        self.sampling = decoding.Sampling(temperature=sampling_temperature)
        self.eos_id, self.model_key, self.target_key, self.chunk_size = eos_id, model_key, target_key, chunk_size
        self.trainable_keys = (model_key,)
        self.name = f"distillspec[{divergence},{'+'.join(self.sources)}]"

    def init_params(self, rng: Array, batch: Batch) -> Params:
        """The draft's parameters only (the target is a frozen model, loaded by the trainer)."""
        return {self.model_key: self.model.init(rng, batch)}

    def choose_source(self, rng: Array) -> Array:
        """The index into `self.sources` of this batch's source, drawn with `self.probabilities`."""
        if len(self.sources) == 1:
            return jnp.zeros((), jnp.int32)
        p = jnp.asarray([self.probabilities[name] for name in self.sources], jnp.float32)
        return jax.random.choice(rng, len(self.sources), p=p).astype(jnp.int32)

    def _check_batch(self, batch: Batch) -> None:
        """Refuses a batch without the encoder inputs an encoder-decoder pair needs, or with some for a
        decoder-only pair, a packed encoder-decoder batch, and one too short for the prompt (and, with fixed
        data, the continuation)."""
        has_inputs = ENCODER_INPUT_TOKENS in batch
        if self.kind == ENCODER_DECODER and not has_inputs:
            raise ValueError(
                "DistillationObjective: an encoder-decoder draft and target need the batch's "
                "encoder_input_tokens (seqio's encoder_decoder features)"
            )
        if self.kind == DECODER_ONLY and has_inputs:
            raise ValueError(
                "DistillationObjective: a decoder-only draft and target take no encoder inputs, but the "
                "batch holds encoder_input_tokens"
            )
        if has_inputs and ENCODER_SEGMENT_IDS in batch:
            raise ValueError(
                "DistillationObjective: encoder-decoder batches must be unpacked (one example per row, "
                "pack=False), but the batch holds encoder_segment_ids"
            )
        length = batch[DECODER_INPUT_TOKENS].shape[1]
        fixed = "fixed" in self.sources
        needed = self.prompt_length + (self.generation_length if fixed else 1)
        if length < needed:
            what = f"prompt_length + generation_length = {needed}" if fixed else f"prompt_length + 1 = {needed}"
            raise ValueError(f"DistillationObjective: the batch's length {length} is shorter than {what}")

    def _fixed(self, params: Params, batch: Batch, rng: Array) -> Sequences:
        """The batch's own tokens and weights."""
        del params, rng
        end = self.prompt_length + self.generation_length
        return batch[DECODER_INPUT_TOKENS][:, :end], token_weights(batch)[:, self.prompt_length : end]

    def _sampled(self, model: Model, key: str) -> Callable[[Params, Batch, Array], Sequences]:
        """A source that continues the batch's prompts with `model` (parameters `params[key]`)."""

        def sample(params: Params, batch: Batch, rng: Array) -> Sequences:
            prompt = batch[DECODER_INPUT_TOKENS][:, : self.prompt_length + 1]
            lengths = jnp.full((prompt.shape[0],), prompt.shape[1], jnp.int32)
            tokens = decoding.generate(
                model,
                params[key],
                prompt,
                lengths,
                self.generation_length,
                rng,
                self.sampling,
                eos_id=-1 if self.eos_id is None else self.eos_id,
                inputs=encoder_inputs(batch) or None,
            )
            weighted = max(self.prompt_length - 1, 0)  # the last prompt token, or the first target token
            row_weights = token_weights(batch)[:, weighted : weighted + 1]
            inputs = jnp.concatenate([prompt, tokens[:, :-1]], axis=1).astype(batch[DECODER_INPUT_TOKENS].dtype)
            return inputs, continuation_weights(tokens, row_weights, self.eos_id)

        return sample

    def sequences(self, params: Params, batch: Batch, rng: Array) -> tuple[Array, Array, Array]:
        """(decoder input tokens [b, p + g], continuation weights [b, g], source index) with no gradient."""
        self._check_batch(batch)
        choice_key, sample_key = jax.random.split(rng)
        fns = {
            "fixed": self._fixed,
            "target": self._sampled(self.target, self.target_key),
            "draft": self._sampled(self.model, self.model_key),
        }
        params = jax.lax.stop_gradient({k: params[k] for k in (self.model_key, self.target_key) if k in params})
        index = self.choose_source(choice_key)
        branches = [fns[name] for name in self.sources]
        if len(branches) == 1:
            inputs, weights = branches[0](params, batch, sample_key)
        else:
            inputs, weights = jax.lax.switch(index, branches, params, batch, sample_key)
        return inputs, weights, index

    def loss(self, params: Params, batch: Batch, rng: Array, step: Array) -> tuple[Array, Metrics]:
        """Divergence averaged as `average` asks; metrics: divergence, weight (the average's denominator: weighted
        sequences or tokens), source shares, generated tokens."""
        del step
        inputs, weights, index = self.sequences(params, batch, rng)
        averaging = averaging_weights(weights, self.average)
        kd = self._divergence(params, batch, inputs, averaging)
        total = jnp.sum(averaging)
        loss = kd.total / jnp.maximum(total, 1e-9)
        metrics = {
            "loss": loss,
            "divergence": loss,
            "weight": total,
            "generated_tokens": jnp.mean(jnp.sum((weights > 0).astype(jnp.float32), axis=1)),
        }
        for position, name in enumerate(self.sources):
            metrics[f"source/{name}"] = (index == position).astype(jnp.float32)
        return loss, metrics

    def _divergence(self, params: Params, batch: Batch, inputs: Array, averaging: Array) -> losses.ChunkedLoss:
        """The chunked divergence on the continuation's positions, against the live or the stored target."""
        draft = params[self.model_key]
        scored = {**encoder_inputs(batch), DECODER_INPUT_TOKENS: inputs}
        start = self.prompt_length  # hidden state at input position i predicts token i + 1 of y
        hidden = self.model.hidden_states(draft, scored)[:, start:]
        head = lambda h: self.model.logits_from_hidden(draft, h)  # noqa: E731
        if self.target is None:
            stored = stored_teacher_labels(batch)
            labels = jax.tree.map(lambda x: x[:, start : start + self.generation_length], stored)
            return losses.chunked_stored_divergence(
                self.divergence, hidden, head, labels, averaging, self.chunk_size, self.beta
            )
        target = params[self.target_key]
        return losses.chunked_divergence(
            self.divergence,
            hidden,
            head,
            self.target.hidden_states(target, scored)[:, start:],
            lambda h: self.target.logits_from_hidden(target, h),
            averaging,
            self.chunk_size,
            self.beta,
            self.temperature,
        )

    def _generation_flops(self, model: Model, batch_size: int, inputs_length: int | None) -> float:
        """Prefill of the prompt (and the encoder), then one decoder step per token: a forward pass of one
        decoder token less one of none (the encoder runs once; attention over the cache not counted)."""
        prefill = model.forward_flops(_shaped(batch_size, self.prompt_length + 1, inputs_length))
        step = model.forward_flops(_shaped(batch_size, 1, inputs_length)) - model.forward_flops(
            _shaped(batch_size, 0, inputs_length)
        )
        return prefill + self.generation_length * step

    def train_flops(self, batch: Batch) -> float:
        """Draft forward + backward and target forward on y (heads over every position; an encoder-decoder's
        encoders on the batch's inputs), plus the expected sampling cost of the mixture."""
        batch_size = batch[DECODER_INPUT_TOKENS].shape[0]
        inputs_length = batch[ENCODER_INPUT_TOKENS].shape[1] if ENCODER_INPUT_TOKENS in batch else None
        scored = _shaped(batch_size, self.prompt_length + self.generation_length, inputs_length)
        if self.target is None:  # stored labels: fixed data, no target pass
            return flops.TRAIN_MULTIPLIER * self.model.forward_flops(scored)
        generation = {
            "fixed": 0.0,
            "target": self._generation_flops(self.target, batch_size, inputs_length),
            "draft": self._generation_flops(self.model, batch_size, inputs_length),
        }
        expected = sum(self.probabilities[name] * generation[name] for name in self.sources)
        return flops.TRAIN_MULTIPLIER * self.model.forward_flops(scored) + self.target.forward_flops(scored) + expected
