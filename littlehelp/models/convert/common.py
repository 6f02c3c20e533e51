"""What every convert family module shares: `Family` and its registry, `Pretrained`, `ConversionError`,
and the checks of HF tensors and converted params.

A family module (llama.py, t5.py, bert.py, or one of your own) imports this module, never the package,
and registers its `Family` at its bottom; the package (`littlehelp.models.convert`) imports the
built-in family modules and reads any registered family by its HF `model_type`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import seqio
from flax import linen as nn

from littlehelp.errors import LittlehelpError
from littlehelp.features import DECODER_INPUT_TOKENS, ENCODER_INPUT_TOKENS
from littlehelp.models import build_model
from littlehelp.models.api import Model, ModelConfig
from littlehelp.typing import Params

Tensors = Mapping[str, np.ndarray]


class ConversionError(LittlehelpError, ValueError):
    """A model file that cannot be converted; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """An imported model: our config, its seam, float32 numpy params in our layout, its vocabulary."""

    family: str  # a key of FAMILIES
    config: ModelConfig  # a registered model family's config (`littlehelp.models.registry`)
    model: Model
    params: Params
    vocabulary: seqio.Vocabulary | None
    source: str  # the file or folder it was read from


@dataclasses.dataclass(frozen=True)
class Family:
    """How one architecture family maps between an HF layout and ours."""

    name: str
    model_types: tuple[str, ...]  # HF config.json "model_type" values this family reads
    config_from_hf: Callable[[Mapping[str, Any]], Any]  # HF config.json dict -> our config
    params_from_hf: Callable[[Tensors, Any, str], Params]  # HF tensors (numpy), our config, source -> our params
    hf_config: Callable[[Any], dict[str, Any]]  # our config -> HF config.json dict
    hf_tensors: Callable[[Params, Any], dict[str, np.ndarray]]  # our params + config -> HF tensors
    objective_file: str | None = None  # the gin file a converted run folder's model.gin includes (run_folder)


FAMILIES: dict[str, Family] = {}  # name -> family


def register(family: Family) -> Family:
    """Adds `family` to FAMILIES (each family module calls this once, at import); a name has one family."""
    if family.name in FAMILIES:
        raise ValueError(f"convert family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def family_of_model_type(model_type: str, source: str) -> Family:
    """The family that reads HF `model_type`, or ConversionError naming it and the known ones."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for family in FAMILIES.values() for t in family.model_types)
    raise ConversionError(f"{source}: model_type {model_type!r} is not supported; known: {', '.join(known)}")


def _first_few(items: list[str], separator: str = ", ", count: int = 5) -> str:
    """The first `count` of `items` joined, and how many more there are."""
    return separator.join(items[:count]) + (f" and {len(items) - count} more" if len(items) > count else "")


def require(tensors: Tensors, names: list[str], source: str) -> None:
    """Raises ConversionError naming the tensors of `names` that `tensors` lacks (the first few)."""
    missing = [name for name in names if name not in tensors]
    if missing:
        raise ConversionError(f"{source} lacks {len(missing)} tensor(s): {_first_few(missing)}")


def require_shapes(tensors: Tensors, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raises ConversionError naming the tensors of `tensors` whose shape differs from `shapes` (the first
    few), before any of them is reshaped."""
    wrong = [
        f"{name} has shape {np.shape(tensors[name])}, the config needs {shape}"
        for name, shape in shapes.items()
        if name in tensors and np.shape(tensors[name]) != shape
    ]
    if wrong:
        raise ConversionError(f"{source}: tensor {_first_few(wrong, '; ', 3)}")


def hf_shapes(family: str, config: Any) -> dict[str, tuple[int, ...]]:
    """The shape of every HF tensor of a `family` model of `config`: its `hf_tensors` of `model.init`'s
    shapes (zero-strided arrays, so nothing is allocated)."""
    zeros = jax.tree.map(lambda leaf: np.broadcast_to(np.float32(0), leaf.shape), _init_shapes(build_model(config)))
    return {name: np.shape(value) for name, value in FAMILIES[family].hf_tensors(zeros, config).items()}


def config_of(family: Family, hf_config: Mapping[str, Any], source: str) -> Any:
    """`family.config_from_hf(hf_config)`; a config our model refuses becomes ConversionError naming `source`."""
    try:
        return family.config_from_hf(hf_config)
    except ConversionError:
        raise
    except ValueError as error:  # the first line: gin appends "In call to configurable ..." below it
        raise ConversionError(f"{source}: {str(error).splitlines()[0]}") from None


def _init_shapes(model: Model) -> Any:
    """`model.init`'s parameters as shapes (nothing computed)."""
    tokens = jax.ShapeDtypeStruct((1, 8), np.int32)
    example = {name: tokens for name in (ENCODER_INPUT_TOKENS, DECODER_INPUT_TOKENS)}
    return nn.unbox(jax.eval_shape(lambda batch: model.init(jax.random.key(0), batch), example))


def check_params(model: Model, params: Params, source: str) -> Params:
    """`params` as float32 numpy, after checking its tree and shapes against `model.init`'s."""
    expected = _init_shapes(model)
    want = {jax.tree_util.keystr(path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(path): np.shape(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    problems = [f"{name} missing" for name in want if name not in got]
    problems += [f"{name} unexpected" for name in got if name not in want]
    problems += [
        f"{name} has shape {got[name]}, the model needs {want[name]}"
        for name in want
        if name in got and tuple(got[name]) != tuple(want[name])
    ]
    if problems:
        raise ConversionError(f"{source}: converted parameters do not fit the model: {_first_few(problems, '; ')}")
    return jax.tree.map(lambda x: np.asarray(x, np.float32), params)
