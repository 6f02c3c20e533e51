"""Flax (linen) models behind one seam: T5 v1.1 encoder-decoder, Llama-style decoder LM, encoder-only,
BERT (imported encoders; `convert` reads and writes pretrained checkpoints of all of them but Encoder).

`build_model(config)` gives the `api.Model` (and, for T5 and the decoder LM, `api.StepwiseModel`)
of a model config; callers use that seam and never the classes behind it. Each family registers
itself in its own module (`registry`); importing this package registers the built-in ones.
"""

from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np

from littlehelp.models import registry
from littlehelp.models.api import DecodeCache, Model, ModelConfig, StepwiseModel, dropout, rollback
from littlehelp.models.attention import dot_product_attention
from littlehelp.models.bert import Bert, BertConfig, BertModel
from littlehelp.models.decoder import DecoderConfig, DecoderLM, DecoderLMModel
from littlehelp.models.encoder import Encoder, EncoderConfig, EncoderModel
from littlehelp.models.t5 import T5, T5Config, T5Model

__all__ = [
    "Bert",
    "BertConfig",
    "BertModel",
    "DecodeCache",
    "DecoderConfig",
    "DecoderLM",
    "DecoderLMModel",
    "Encoder",
    "EncoderConfig",
    "EncoderModel",
    "Model",
    "ModelConfig",
    "StepwiseModel",
    "T5",
    "T5Config",
    "T5Model",
    "build_model",
    "count_params",
    "dot_product_attention",
    "dropout",
    "rollback",
]


@gin.configurable
def build_model(config: Any = gin.REQUIRED) -> Model:
    """The seam of the model a config describes, built by its registered family (`registry.family_of`)."""
    return registry.family_of(config).build(config)


def count_params(module: nn.Module, *example_args: Any) -> int:
    """Number of parameters ``module.init(rng, *example_args)`` would create (no memory used).

    ``example_args`` are arrays or ``jax.ShapeDtypeStruct``s.
    """
    variables = jax.eval_shape(lambda *args: module.init(jax.random.PRNGKey(0), *args), *example_args)
    leaves = jax.tree_util.tree_leaves(nn.unbox(variables.get("params", {})))
    return int(sum(np.prod(leaf.shape) for leaf in leaves))
