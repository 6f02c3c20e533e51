"""Flax (linen) models behind one seam: T5 v1.1 encoder-decoder, Llama-style decoder LM, encoder-only,
BERT (imported encoders; `convert` reads and writes pretrained checkpoints of all of them but Encoder).

`build_model(config)` gives the `api.Model` (and, for T5 and the decoder LM, `api.StepwiseModel`)
of a model config; callers use that seam and never the classes behind it.
"""
from typing import Any

import flax.linen as nn
import gin
import jax
import numpy as np

from littlehelp.config import ConfigError
from littlehelp.models.api import DecodeCache, Model, StepwiseModel, rollback
from littlehelp.models.attention import dot_product_attention
from littlehelp.models.bert import Bert, BertConfig, BertModel
from littlehelp.models.decoder import DecoderConfig, DecoderLM, DecoderLMModel
from littlehelp.models.encoder import Encoder, EncoderConfig, EncoderModel
from littlehelp.models.t5 import T5, T5Config, T5Model

__all__ = ["Bert", "BertConfig", "BertModel", "DecodeCache", "DecoderConfig", "DecoderLM", "DecoderLMModel", "Encoder",
           "EncoderConfig", "EncoderModel", "Model", "StepwiseModel", "T5", "T5Config", "T5Model", "build_model",
           "count_params", "dot_product_attention", "rollback"]

MODEL_KINDS: dict[type, type] = {T5Config: T5Model, DecoderConfig: DecoderLMModel, EncoderConfig: EncoderModel,
                                 BertConfig: BertModel}


@gin.configurable
def build_model(config: Any = gin.REQUIRED) -> Model:
    """The seam of the model a config describes (T5Config, DecoderConfig, EncoderConfig or BertConfig)."""
    kind = MODEL_KINDS.get(type(config))
    if kind is None:
        known = ", ".join(c.__name__ for c in MODEL_KINDS)
        raise ConfigError(f"build_model.config: no model for a {type(config).__name__}; known configs: {known}")
    return kind(config)


def count_params(module: nn.Module, *example_args: Any) -> int:
    """Number of parameters ``module.init(rng, *example_args)`` would create (no memory used).

    ``example_args`` are arrays or ``jax.ShapeDtypeStruct``s.
    """
    variables = jax.eval_shape(lambda *args: module.init(jax.random.PRNGKey(0), *args),
                               *example_args)
    leaves = jax.tree_util.tree_leaves(nn.unbox(variables.get("params", {})))
    return int(sum(np.prod(leaf.shape) for leaf in leaves))
