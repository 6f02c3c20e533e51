"""Pretrained models in and out: GGUF and HF-layout safetensors folders <-> our params.

    pretrained = convert.load("SmolLM2-135M-Instruct.Q4_1.gguf")   # or an HF folder with config.json
    logits = pretrained.model.logits(pretrained.params, batch)
    convert.export(pretrained, "out/")                              # HF safetensors + config.json

`load` picks the reader from the file: a `.gguf` file (Llama family, dequantised) or a folder with
`config.json` + safetensors, read by the family its `model_type` names (`FAMILIES`). Each family
module registers a `Family`: how an HF config maps to ours, and how HF tensors map to our params and
back. The converted params are checked against `model.init`'s shapes; an unknown architecture, a
missing tensor or a shape that differs is refused by name, nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import seqio

from littlehelp.errors import LittlehelpError
from littlehelp.models.api import Model, Params

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
Tensors = Mapping[str, np.ndarray]


class ConversionError(LittlehelpError, ValueError):
    """A model file that cannot be converted; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """An imported model: our config, its seam, float32 numpy params in our layout, its vocabulary."""

    family: str  # a key of FAMILIES
    config: Any  # DecoderConfig, T5Config or BertConfig
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


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Adds `family` to FAMILIES (each family module calls this once at import)."""
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
    wrong = [f"{name} has shape {np.shape(tensors[name])}, the config needs {shape}"
             for name, shape in shapes.items() if name in tensors and np.shape(tensors[name]) != shape]
    if wrong:
        raise ConversionError(f"{source}: tensor {_first_few(wrong, '; ', 3)}")


def hf_shapes(family: str, config: Any) -> dict[str, tuple[int, ...]]:
    """The shape of every HF tensor of a `family` model of `config`: its `hf_tensors` of `model.init`'s
    shapes (zero-strided arrays, so nothing is allocated)."""
    from littlehelp.models import build_model

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


def read_safetensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of an HF folder (`model.safetensors`, or the shards its index names) as numpy."""
    from safetensors.numpy import load_file

    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / SAFETENSORS_FILE).is_file():
        files = [SAFETENSORS_FILE]
    else:
        raise ConversionError(f"{directory} holds neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX}")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        tensors.update(load_file(str(directory / name)))
    return tensors


def read_hf_config(directory: Path) -> dict[str, Any]:
    """The folder's config.json, or ConversionError naming what is missing or unreadable."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ConversionError(f"{directory} is not an HF model folder: no {CONFIG_FILE}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from None


def _init_shapes(model: Model) -> Any:
    """`model.init`'s parameters as shapes (nothing computed)."""
    from flax import linen as nn

    tokens = jax.ShapeDtypeStruct((1, 8), np.int32)
    example = {name: tokens for name in ("encoder_input_tokens", "decoder_input_tokens")}
    return nn.unbox(jax.eval_shape(lambda batch: model.init(jax.random.key(0), batch), example))


def check_params(model: Model, params: Params, source: str) -> Params:
    """`params` as float32 numpy, after checking its tree and shapes against `model.init`'s."""
    expected = _init_shapes(model)
    want = {jax.tree_util.keystr(path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(path): np.shape(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    problems = [f"{name} missing" for name in want if name not in got]
    problems += [f"{name} unexpected" for name in got if name not in want]
    problems += [f"{name} has shape {got[name]}, the model needs {want[name]}"
                 for name in want if name in got and tuple(got[name]) != tuple(want[name])]
    if problems:
        raise ConversionError(f"{source}: converted parameters do not fit the model: {_first_few(problems, '; ')}")
    return jax.tree.map(lambda x: np.asarray(x, np.float32), params)


def _hf_vocabulary(directory: Path) -> seqio.Vocabulary | None:
    from littlehelp.data.hf_vocab import TokenizerVocabulary

    path = directory / TOKENIZER_FILE
    return TokenizerVocabulary.from_tokenizer_json(path) if path.is_file() else None


def load_hf(directory: Path) -> Pretrained:
    """An HF-layout folder (config.json + safetensors [+ tokenizer.json]) read by its family."""
    from littlehelp.models import build_model

    hf_config = read_hf_config(directory)
    family = family_of_model_type(str(hf_config.get("model_type")), str(directory))
    config = config_of(family, hf_config, str(directory / CONFIG_FILE))
    model = build_model(config)
    params = family.params_from_hf(read_safetensors(directory), config, str(directory))
    params = check_params(model, params, str(directory))
    return Pretrained(family.name, config, model, params, _hf_vocabulary(directory), str(directory))


def load(path: str | Path) -> Pretrained:
    """The pretrained model in `path`: a `.gguf` file or an HF-layout folder (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConversionError(f"{path} does not exist")
    if path.is_file() and path.suffix == ".gguf":
        from littlehelp.models.convert import gguf

        return gguf.load(path)
    if path.is_dir():
        return load_hf(path)
    raise ConversionError(f"{path}: expected a .gguf file or a folder with {CONFIG_FILE} and safetensors")


def export(pretrained: Pretrained, out_dir: str | Path) -> Path:
    """Writes `pretrained` as an HF-layout folder (model.safetensors, config.json, and tokenizer.json when
    the vocabulary has one) that HF transformers loads; returns the folder."""
    from safetensors.numpy import save_file

    family = FAMILIES[pretrained.family]
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(value, np.float32)
               for name, value in family.hf_tensors(pretrained.params, pretrained.config).items()}
    save_file(tensors, str(out_dir / SAFETENSORS_FILE), metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(family.hf_config(pretrained.config), indent=1) + "\n")
    save_tokenizer = getattr(pretrained.vocabulary, "save_tokenizer_json", None)
    if save_tokenizer is not None:
        save_tokenizer(out_dir / TOKENIZER_FILE)
    return out_dir


# Family modules register themselves on import (one line each, below).
from littlehelp.models.convert import llama, t5  # noqa: E402,F401
from littlehelp.models.convert import bert  # noqa: E402,F401
