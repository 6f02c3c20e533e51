"""A model family from this file alone: a toy bigram LM registers its config, its seam, a logical axis of its
own and a converter, then trains, decodes and converts through the public API with no edit elsewhere; the
registries' one-line errors; and every registered family's config has the fields `api.ModelConfig` names."""

import dataclasses
import typing

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from distillspec import drafts
from littlehelp import checkpoints, decoding, partitioning, trainer
from littlehelp.config import ConfigError
from littlehelp.models import (
    BertConfig,
    DecodeCache,
    DecoderConfig,
    EncoderConfig,
    T5Config,
    api,
    build_model,
    convert,
    registry,
)
from littlehelp.models.convert.common import require
from littlehelp.objectives import Curriculum, DecoderObjective
from littlehelp.optimizers import Optimizer
from tests.helpers import TINY_DECODER, TINY_T5, lm_data

WIDTH = "bigram_width"  # a logical axis the core does not know
SGD = Optimizer(optax.sgd(0.5), optax.constant_schedule(0.5))


@dataclasses.dataclass(frozen=True)
class BigramConfig:
    vocab_size: int = 264
    width: int = 8
    dtype: str = "float32"

    @property
    def emb_dim(self) -> int:  # api.ModelConfig's name for the width
        return self.width

    @property
    def context_length(self) -> None:  # one token of context: sequences of any length
        return None


class Bigram(nn.Module):
    """Next-token logits from the current token alone: an [vocab, width] embedding, a [width, vocab] head."""

    config: BigramConfig

    def setup(self):
        c, init = self.config, nn.initializers.normal
        embedding = nn.with_logical_partitioning(init(1.0), ("vocab", WIDTH))
        self.embedding = self.param("embedding", embedding, (c.vocab_size, c.width))
        self.out = self.param(
            "out", nn.with_logical_partitioning(init(c.width**-0.5), (WIDTH, "vocab")), (c.width, c.vocab_size)
        )

    def __call__(self, tokens):
        return self.head(self.embed(tokens))

    def embed(self, tokens):
        return jnp.take(self.embedding, tokens, axis=0)

    def head(self, hidden):
        return hidden @ self.out


@dataclasses.dataclass(frozen=True)
class BigramModel:
    """The seam (`api.StepwiseModel`) of a `Bigram`: a bigram needs no cache beyond each row's length."""

    config: BigramConfig

    def _apply(self, params, x, method):
        return Bigram(self.config).apply({"params": params}, x, method=method)

    def init(self, rng, batch):
        return Bigram(self.config).init(rng, batch["decoder_input_tokens"])["params"]

    def embed(self, params, tokens):
        return self._apply(params, tokens, Bigram.embed)

    def hidden_states(self, params, batch, rng=None, input_embeddings=None):
        return self.embed(params, batch["decoder_input_tokens"]) if input_embeddings is None else input_embeddings

    def logits_from_hidden(self, params, hidden):
        return self._apply(params, hidden, Bigram.head)

    def logits(self, params, batch, rng=None, input_embeddings=None):
        return self.logits_from_hidden(params, self.hidden_states(params, batch, rng, input_embeddings))

    def forward_flops(self, batch):
        size, length = batch["decoder_input_tokens"].shape
        return 2.0 * size * length * self.config.width * self.config.vocab_size

    def init_cache(self, params, batch_size, max_length, inputs=None):
        return DecodeCache(jnp.zeros((batch_size,), jnp.int32), layers={})

    def prefill(self, params, cache, tokens, lengths, input_embeddings=None):
        last = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[:, None], axis=1)
        logits = self.logits(params, {"decoder_input_tokens": last})[:, 0]
        return logits, cache.replace(lengths=cache.lengths + lengths)

    def extend(self, params, cache, tokens):
        logits = self.logits(params, {"decoder_input_tokens": tokens})
        return logits, cache.replace(lengths=cache.lengths + tokens.shape[1])


# The converter: an HF-style folder with "model_type": "toy_bigram" and two tensors ([out, in] as HF stores them).
def config_from_hf(hf):
    return BigramConfig(hf["vocab_size"], hf["hidden_size"])


def hf_config(config):
    return {"model_type": "toy_bigram", "vocab_size": config.vocab_size, "hidden_size": config.width}


def params_from_hf(tensors, config, source):
    require(tensors, ["embed_tokens.weight", "lm_head.weight"], source)
    return {"embedding": tensors["embed_tokens.weight"], "out": tensors["lm_head.weight"].T}


def hf_tensors(params, config):
    return {"embed_tokens.weight": np.asarray(params["embedding"]), "lm_head.weight": np.asarray(params["out"]).T}


@pytest.fixture(scope="module", autouse=True)
def bigram_family():
    """Registers the family as its own module would at its bottom; removed afterwards (other tests see the
    built-in families only)."""
    registry.register(registry.ModelFamily("bigram", BigramConfig, BigramModel, logical_axes=((WIDTH, "fsdp"),)))
    convert.register(convert.Family("bigram", ("toy_bigram",), config_from_hf, params_from_hf, hf_config, hf_tensors))
    yield
    del registry.FAMILIES[BigramConfig], convert.FAMILIES["bigram"]


def _lm_batch(spec, mesh):
    """Random unpacked rows with seqio's LM features (inputs are the targets shifted right), on the mesh."""
    targets = np.random.default_rng(0).integers(2, 264, spec["decoder_target_tokens"].shape)
    ones, positions = np.ones_like(targets), np.broadcast_to(np.arange(targets.shape[1]), targets.shape)
    batch = {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_loss_weights": ones,
        "decoder_segment_ids": ones,
        "decoder_positions": positions,
    }
    return {
        name: jax.device_put(value.astype(np.int32), partitioning.batch_sharding(mesh)) for name, value in batch.items()
    }


def test_a_family_registered_here_trains_decodes_and_converts(tmp_path):
    config = BigramConfig()
    model = build_model(config)
    assert isinstance(model, BigramModel)
    objective = DecoderObjective(model)
    assert objective.train_flops({"decoder_input_tokens": jnp.zeros((8, 16))}) == 3 * 2.0 * 8 * 16 * 8 * 264

    # The trainer lays the parameters out by the rules in force, the family's among them: the embedding's
    # width axis is sharded over fsdp. (The batch is made here: lm_data gives its shapes only.)
    mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 2, 1), devices=jax.devices()[:2])
    rules = partitioning.logical_axis_rules()
    assert (WIDTH, "fsdp") in rules
    run = trainer.Trainer(
        str(tmp_path / "run"),
        Curriculum.single(objective),
        SGD,
        lm_data(batch_size=8, length=16),
        mesh,
        rules,
        checkpoints.CheckpointConfig(),
    )
    state, _ = run.restore_or_init()
    assert state.params["model"]["embedding"].sharding.spec == P("tensor", "fsdp")
    step, batch, losses = run.step_fn(objective), _lm_batch(run.batch_spec, mesh), []
    for i in range(3):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 3 and losses[2] < losses[0]  # the same batch: SGD lowers its loss
    params = jax.device_get(state.params["model"])

    # Greedy decoding follows the bigram table from each row's last prompt token.
    prompts, lengths = jnp.asarray([[5, 6, 7], [9, 0, 0]]), jnp.asarray([3, 1])
    out = decoding.generate(model, params, prompts, lengths, 4, jax.random.key(0), eos_id=-1)
    table, expected, last = params["embedding"] @ params["out"], [], np.asarray([7, 9])
    for _ in range(4):
        last = table[last].argmax(-1)
        expected.append(last)
    np.testing.assert_array_equal(out, np.stack(expected, axis=1))

    # Export writes the family's HF layout; load reads it back by its model_type.
    trained = convert.Pretrained("bigram", config, model, params, None, "a trained bigram")
    loaded = convert.load(convert.export(trained, tmp_path / "hf"))
    assert (loaded.family, loaded.config) == ("bigram", config)
    jax.tree.map(np.testing.assert_array_equal, loaded.params, params)


def test_registries_refuse_in_one_line():
    with pytest.raises(
        ValueError, match="^model family 'again': BigramConfig already belongs to model family 'bigram'$"
    ):
        registry.register(registry.ModelFamily("again", BigramConfig, BigramModel))
    with pytest.raises(
        ConfigError,
        match=r"(?m)^no model family for a dict; known configs: BertConfig, BigramConfig, "
        r"DecoderConfig, .*T5Config$",
    ):  # gin adds a line of its own below
        build_model({"vocab_size": 8})
    with pytest.raises(ValueError, match="^convert family 'bigram' is already registered$"):
        convert.register(convert.Family("bigram", ("other",), config_from_hf, params_from_hf, hf_config, hf_tensors))
    # The family's axis is known to configured rules, which may override its default rule.
    assert partitioning.logical_axis_rules([("batch", "data"), (WIDTH, None)]) == (("batch", "data"), (WIDTH, None))
    with pytest.raises(ConfigError, match="unknown logical axis 'bigram_widht'"):
        partitioning.logical_axis_rules([("bigram_widht", None)])


def test_every_registered_config_has_the_fields_a_model_may_be_read_by():
    """`api.ModelConfig` names what code holding only a `Model` reads of `Model.config`: a real, tiny config
    of every registered family (the built-in ones, distillspec's draft, this file's toy) has each of its
    fields, of its type."""
    tiny = {
        T5Config: TINY_T5,
        DecoderConfig: TINY_DECODER,
        EncoderConfig: EncoderConfig(vocab_size=30, emb_dim=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=24),
        BertConfig: BertConfig(vocab_size=30, emb_dim=16, num_layers=1, num_heads=2, mlp_dim=24),
        drafts.ReducedVocabularyConfig: drafts.ReducedVocabularyConfig(TINY_DECODER, (0, 5, 7)),
        BigramConfig: BigramConfig(),
    }
    assert set(registry.FAMILIES) == set(tiny), "a registered family with no tiny config in this test"
    fields = {
        name: typing.get_type_hints(member.fget)["return"]
        for name, member in vars(api.ModelConfig).items()
        if isinstance(member, property)
    }
    assert {"vocab_size", "emb_dim", "dtype", "context_length"} <= set(fields)
    absent = object()
    lacking = {
        config_class.__name__: [
            name for name, kind in fields.items() if not isinstance(getattr(config, name, absent), kind)
        ]
        for config_class, config in tiny.items()
    }
    assert {name: lacks for name, lacks in lacking.items() if lacks} == {}
    assert all(isinstance(config, api.ModelConfig) for config in tiny.values())
