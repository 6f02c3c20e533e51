"""SpacTor's hybrid objective (span corruption + generator MLM + replaced token detection) and the
two-stage curriculum: the hybrid for the first `tau` steps, plain span corruption afterwards.

Input construction for one span-corrupted batch (docs/methods/spactor.md):

1. the ordinary encoder tokens are those that are not padding, EOS or sentinels (nor ids past the data
   vocabulary); each is masked independently with probability `mask_rate`;
2. the generator reads the input with masked tokens set to `mask_id` and predicts them (MLM loss over
   the masked tokens); replacements are sampled from its softmax at `temperature`, restricted to
   ordinary ids, with no gradient through the sampling;
3. the T5 encoder reads the input with the replacements; a per-token linear RTD head on its output
   predicts "replaced" (label 1 where the sample differs from the original; a sample equal to the
   original counts as original), with a sigmoid cross-entropy averaged over the ordinary tokens;
4. the decoder learns the span-corruption targets as usual.

Loss = SC + mlm_weight * MLM + rtd_weight * RTD.

Models in the state: "t5" (shared with the stage-2 objective, so its parameters and optimizer state
carry over), "generator" and "rtd_head" (trained only by the hybrid; stage 2 neither runs nor
updates them).
"""

from __future__ import annotations

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax
import seqio

from littlehelp import flops, losses
from littlehelp.data.vocab import EOS_ID, NUM_SENTINELS, load_vocabulary
from littlehelp.features import DECODER_TARGET_TOKENS, ENCODER_INPUT_TOKENS, ENCODER_SEGMENT_IDS, INPUTS
from littlehelp.models import EncoderConfig, T5Config, T5Model, dropout
from littlehelp.objectives import Curriculum, EncoderDecoderObjective, token_metrics, token_weights
from littlehelp.typing import Array, Batch, BatchSpec, Metrics, Params
from spactor.generator import Generator

MASKED_LOGIT = -1e9  # added to the generator's logits of ids it may not predict or sample


@gin.configurable(module="spactor")
def task_vocabulary_size(task: str = gin.REQUIRED) -> int:
    """The vocabulary size (sentinels included) of a registered seqio Task or Mixture's inputs.

    An unloadable vocabulary file is reported by name (`vocab.VocabularyError`).
    """
    vocabulary = seqio.get_mixture_or_task(task).output_features[INPUTS].vocabulary
    load_vocabulary(vocabulary)
    return vocabulary.vocab_size


def ordinary_tokens(tokens: Array, first_sentinel_id: int) -> Array:
    """True where a token is neither padding, EOS, a sentinel, nor past the data vocabulary."""
    return (tokens > EOS_ID) & (tokens < first_sentinel_id)


def choose_masked(rng: Array, tokens: Array, mask_rate: float, first_sentinel_id: int) -> Array:
    """Each ordinary token is masked independently with probability `mask_rate`."""
    return ordinary_tokens(tokens, first_sentinel_id) & jax.random.bernoulli(rng, mask_rate, tokens.shape)


def sample_replacements(rng: Array, logits: Array, temperature: float) -> Array:
    """Token ids sampled from softmax(logits / temperature), with no gradient through the sampling."""
    return jax.random.categorical(rng, jax.lax.stop_gradient(logits) / temperature, axis=-1)


def rtd_labels(original: Array, corrupted: Array) -> Array:
    """1.0 where the encoder's token was replaced by a different one, else 0.0."""
    return (corrupted != original).astype(jnp.float32)


class RtdHead(nn.Module):
    """Per-token linear map of encoder states [b, l, d] to replaced-token logits [b, l]."""

    dtype: str = "float32"

    @nn.compact
    def __call__(self, encoded: Array) -> Array:
        width = encoded.shape[-1]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(width**-0.5), ("embed",)),
            (width,),
            jnp.float32,
        )
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ()), (), jnp.float32)
        dtype = jnp.dtype(self.dtype)
        return jnp.einsum("bld,d->bl", encoded.astype(dtype), kernel.astype(dtype)).astype(jnp.float32) + bias


@flax.struct.dataclass
class HybridInputs:
    """What the generator produced for one batch (all [batch, length] unless noted)."""

    masked: Array  # bool: tokens the generator filled
    corrupted: Array  # the encoder's input: originals with the masked tokens replaced by samples
    rtd_labels: Array  # 1.0 where the sample differs from the original
    rtd_weights: Array  # 1.0 on ordinary tokens (the RTD loss's positions)
    generator_logits: Array  # [batch, length, vocab], ids the generator may not produce masked


def _sigmoid_cross_entropy(logits: Array, labels: Array, weights: Array) -> tuple[Array, Array]:
    """(mean loss, accuracy) of per-token binary logits over the weighted tokens."""
    per_token = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels)
    weight = jnp.maximum(jnp.sum(weights), 1.0)
    correct = ((logits > 0) == (labels > 0.5)) * weights
    return jnp.sum(per_token * weights) / weight, jnp.sum(correct) / weight


@gin.configurable(module="spactor")
class HybridObjective:
    """SC + mlm_weight * MLM + rtd_weight * RTD on span-corrupted encoder-decoder batches.

    `data_vocab_size` is the data vocabulary's size, sentinels included: its top `num_sentinels` ids are
    the sentinels. `mask_id` (the generator's input at masked positions) defaults to `data_vocab_size`,
    the first id the data never uses, which must be below the model's vocab_size.
    """

    def __init__(
        self,
        model: T5Model = gin.REQUIRED,
        generator_config: EncoderConfig = gin.REQUIRED,
        data_vocab_size: int = gin.REQUIRED,
        num_sentinels: int = NUM_SENTINELS,
        mask_rate: float = 0.15,
        mlm_weight: float = 1.0,
        rtd_weight: float = 50.0,
        temperature: float = 1.0,
        mask_id: int | None = None,
        z_loss: float = 1e-4,
        model_key: str = "t5",
    ):
        model_config = model.config
        self.mask_id = data_vocab_size if mask_id is None else mask_id
        _check_settings(
            model_config, generator_config, data_vocab_size, num_sentinels, mask_rate, temperature, self.mask_id
        )
        self.config, self.generator_config = model_config, generator_config
        self.first_sentinel_id = data_vocab_size - num_sentinels
        self.mask_rate, self.temperature = mask_rate, temperature
        self.mlm_weight, self.rtd_weight = mlm_weight, rtd_weight
        self.span_corruption = EncoderDecoderObjective(model, z_loss=z_loss, model_key=model_key)
        self.model, self.model_key = model, model_key
        self.generator = Generator(generator_config)
        self.rtd_head = RtdHead(model_config.dtype)
        self.trainable_keys = (model_key, "generator", "rtd_head")
        self.name = f"spactor_hybrid[{model_key}]"

    def init_params(self, rng: Array, batch: Batch) -> Params:
        t5_rng, generator_rng, head_rng = jax.random.split(rng, 3)
        params = self.span_corruption.init_params(t5_rng, batch)
        tokens = batch[ENCODER_INPUT_TOKENS]
        table = jnp.zeros((self.config.vocab_size, self.config.emb_dim), jnp.float32)
        params["generator"] = self.generator.init(generator_rng, tokens, table)["params"]
        encoded = jnp.zeros(tokens.shape + (self.config.emb_dim,), jnp.float32)
        params["rtd_head"] = self.rtd_head.init(head_rng, encoded)["params"]
        return params

    def generator_vocabulary(self) -> Array:
        """True for the ids the generator may predict and sample (the ordinary ids)."""
        return ordinary_tokens(jnp.arange(self.config.vocab_size), self.first_sentinel_id)

    def hybrid_inputs(self, params: Params, batch: Batch, rng: Array) -> HybridInputs:
        """Masks ordinary tokens, runs the generator and fills the masked tokens with its samples."""
        mask_rng, sample_rng, dropout_rng = jax.random.split(rng, 3)
        tokens = batch[ENCODER_INPUT_TOKENS]
        masked = choose_masked(mask_rng, tokens, self.mask_rate, self.first_sentinel_id)
        deterministic, rngs = dropout(dropout_rng, self.generator_config.dropout_rate)
        logits = self.generator.apply(
            {"params": params["generator"]},
            jnp.where(masked, self.mask_id, tokens),
            self.model.embedding_table(params[self.model_key]),
            batch.get(ENCODER_SEGMENT_IDS),
            deterministic=deterministic,
            rngs=rngs,
        )
        logits = jnp.where(self.generator_vocabulary(), logits.astype(jnp.float32), MASKED_LOGIT)
        corrupted = jnp.where(masked, sample_replacements(sample_rng, logits, self.temperature), tokens)
        weights = ordinary_tokens(tokens, self.first_sentinel_id).astype(jnp.float32)
        return HybridInputs(masked, corrupted, rtd_labels(tokens, corrupted), weights, logits)

    def loss(self, params: Params, batch: Batch, rng: Array, step: Array) -> tuple[Array, Metrics]:
        generator_rng, t5_rng = jax.random.split(rng)
        inputs = self.hybrid_inputs(params, batch, generator_rng)
        mlm = losses.cross_entropy_with_z_loss(
            inputs.generator_logits, batch[ENCODER_INPUT_TOKENS], inputs.masked.astype(jnp.float32)
        )
        mlm_weight = jnp.maximum(mlm.weight, 1.0)
        t5_params = params[self.model_key]
        corrupted = {**batch, ENCODER_INPUT_TOKENS: inputs.corrupted}
        encoded, hidden = self.model.encoder_and_decoder_states(t5_params, corrupted, t5_rng)
        logits = self.model.logits_from_hidden(t5_params, hidden)
        sc_loss, sc_metrics = token_metrics(
            losses.cross_entropy_with_z_loss(
                logits, batch[DECODER_TARGET_TOKENS], token_weights(batch), self.span_corruption.z_loss
            )
        )
        rtd_logits = self.rtd_head.apply({"params": params["rtd_head"]}, encoded)
        rtd_loss, rtd_accuracy = _sigmoid_cross_entropy(rtd_logits, inputs.rtd_labels, inputs.rtd_weights)
        total = sc_loss + self.mlm_weight * mlm.cross_entropy / mlm_weight + self.rtd_weight * rtd_loss
        ordinary = jnp.maximum(jnp.sum(inputs.rtd_weights), 1.0)
        return total, sc_metrics | {
            "loss": total,
            "sc/loss": sc_loss,
            "mlm/loss": mlm.cross_entropy / mlm_weight,
            "mlm/accuracy": mlm.correct / mlm_weight,
            "rtd/loss": rtd_loss,
            "rtd/accuracy": rtd_accuracy,
            "masked_fraction": mlm.weight / ordinary,
            "replaced_fraction": jnp.sum(inputs.rtd_labels * inputs.rtd_weights) / ordinary,
        }

    def train_flops(self, batch: BatchSpec) -> float:
        """Matrix-multiply FLOPs of one hybrid step: T5, generator (projection and MLM head included), RTD head."""
        size, length = batch[ENCODER_INPUT_TOKENS].shape
        d_model, width = self.config.emb_dim, self.generator_config.emb_dim
        projection = 2.0 * size * length * d_model * width if d_model != width else 0.0
        generator = flops.encoder_forward_flops(self.generator_config, size, length, with_vocab_head=True)
        rtd_head = 2.0 * size * length * d_model
        extra = flops.TRAIN_MULTIPLIER * (projection + generator + rtd_head)
        return self.span_corruption.train_flops(batch) + extra


def _check_settings(
    model_config: T5Config,
    generator_config: EncoderConfig,
    data_vocab_size: int,
    num_sentinels: int,
    mask_rate: float,
    temperature: float,
    mask_id: int,
) -> None:
    """Raises ValueError naming the first HybridObjective setting that cannot work."""
    vocab = model_config.vocab_size
    problems = [
        (
            generator_config.vocab_size != vocab,
            f"generator_config.vocab_size={generator_config.vocab_size} must equal model_config.vocab_size={vocab}",
        ),
        (
            not EOS_ID < data_vocab_size - num_sentinels,
            f"data_vocab_size={data_vocab_size} leaves no ordinary ids "
            f"below its num_sentinels={num_sentinels} sentinels",
        ),
        (data_vocab_size > vocab, f"data_vocab_size={data_vocab_size} exceeds model_config.vocab_size={vocab}"),
        (not 0.0 < mask_rate < 1.0, f"mask_rate must be in (0, 1), got {mask_rate!r}"),
        (not temperature > 0.0, f"temperature must be positive, got {temperature!r}"),
        (
            not data_vocab_size <= mask_id < vocab,
            f"mask_id={mask_id} must be an id the data never uses, in "
            f"[data_vocab_size={data_vocab_size}, model_config.vocab_size={vocab})",
        ),
    ]
    for bad, message in problems:
        if bad:
            raise ValueError(f"HybridObjective.{message}")


@gin.configurable(module="spactor")
def spactor_curriculum(hybrid: HybridObjective = gin.REQUIRED, tau: int | None = gin.REQUIRED) -> Curriculum:
    """`tau` steps of the hybrid objective, then plain span corruption on the same T5 model.

    tau=None keeps the hybrid objective throughout; tau=0 is plain span corruption throughout.
    """
    if tau is None:
        return Curriculum.single(hybrid)
    if tau < 0:
        raise ValueError(f"spactor_curriculum.tau must be >= 0 or None, got {tau}")
    if tau == 0:
        return Curriculum.single(hybrid.span_corruption)
    return Curriculum([(0, hybrid), (tau, hybrid.span_corruption)])
