"""Small shared fixtures for the trainer tests: tiny models, tiny data configs, the scripts as modules."""

import importlib.util
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import seqio
import tensorflow as tf

from littlehelp import checkpoints
from littlehelp.data import DatasetConfig, tasks
from littlehelp.models import DecoderConfig, T5Config
from littlehelp.models.convert.run_folder import ParamsOnlyState

TINY_T5 = T5Config(
    vocab_size=264,
    emb_dim=32,
    num_heads=2,
    head_dim=16,
    mlp_dim=64,
    num_encoder_layers=2,
    num_decoder_layers=2,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
)
# A tiny decoder with tied embeddings over the byte vocabulary (264 ids): the small model of the
# distillation tests (SALT's teacher, DistillSpec's draft).
TINY_TIED_DECODER = DecoderConfig(
    vocab_size=264,
    emb_dim=16,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
    mlp_dim=32,
    tie_embeddings=True,
)
TINY_DECODER = DecoderConfig(
    vocab_size=264,
    emb_dim=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
)


def t5_data(batch_size: int = 8, length: int = 32, seed: int = 0) -> DatasetConfig:
    """The in-memory prefix-LM task at tiny lengths."""
    return DatasetConfig("docstrings_prefix_lm", {"inputs": length, "targets": length}, batch_size, seed=seed)


def lm_data(batch_size: int = 8, length: int = 32, seed: int = 0) -> DatasetConfig:
    """The in-memory LM task at a tiny length."""
    return DatasetConfig("docstrings_lm", {"targets": length}, batch_size, feature_converter="lm", seed=seed)


def remove_tensor(folder, name: str) -> None:
    """Deletes tensor `name` from an HF folder's model.safetensors (a checkpoint with a tensor missing)."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    del tensors[name]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def random_params(model, seed: int) -> dict:
    """Random parameters of the model's shapes (normal, std 0.5; no compiled initialiser: fast on CPU)."""
    example = {"decoder_input_tokens": np.zeros((1, 8), np.int32), "encoder_input_tokens": np.zeros((1, 8), np.int32)}
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), example))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.5 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def save_params_only(params, folder) -> None:
    """A params-only checkpoint (as `littlehelp convert` writes): a frozen model's folder."""
    checkpointer = checkpoints.Checkpointer(str(folder / "checkpoints"), checkpoints.CheckpointConfig(async_save=False))
    state = ParamsOnlyState(np.zeros((), np.int32), {"model": params})
    checkpointer.save(0, state, {"batches_consumed": 0}, force=True)
    checkpointer.close()


def register_token_task(name: str, sequences: dict[str, list[np.ndarray]]) -> None:
    """Registers (once) decoder-LM Task `name` whose splits hold the given int32 token sequences, under
    the byte vocabulary (259 ids), no EOS added."""
    if name in seqio.TaskRegistry.names():
        return

    def dataset(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
        del shuffle_files, seed
        return tf.data.Dataset.from_generator(
            lambda: ({"targets": s} for s in sequences[split]),
            output_signature={"targets": tf.TensorSpec([None], tf.int32)},
        )

    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset, splits=list(sequences)),
        preprocessors=[],
        output_features={"targets": seqio.Feature(tasks.BYTE_VOCABULARY, add_eos=False)},
    )


SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str):
    """scripts/NAME.py as a module (registered in sys.modules: dataclasses look their module up by name)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
