"""Flax (linen) models: T5 v1.1 encoder-decoder, Llama-style decoder LM, encoder-only."""
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from littlehelp.models.attention import dot_product_attention
from littlehelp.models.decoder import DecoderConfig, DecoderLM
from littlehelp.models.encoder import Encoder, EncoderConfig
from littlehelp.models.t5 import T5, T5Config

__all__ = ["DecoderConfig", "DecoderLM", "Encoder", "EncoderConfig", "T5", "T5Config",
           "count_params", "dot_product_attention"]


def count_params(module: nn.Module, *example_args: Any) -> int:
    """Number of parameters ``module.init(rng, *example_args)`` would create (no memory used).

    ``example_args`` are arrays or ``jax.ShapeDtypeStruct``s.
    """
    variables = jax.eval_shape(lambda *args: module.init(jax.random.PRNGKey(0), *args),
                               *example_args)
    leaves = jax.tree_util.tree_leaves(nn.unbox(variables.get("params", {})))
    return int(sum(np.prod(leaf.shape) for leaf in leaves))
