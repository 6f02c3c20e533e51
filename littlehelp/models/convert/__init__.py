"""Pretrained models in and out: GGUF and HF-layout safetensors folders <-> our params.

    pretrained = convert.load("SmolLM2-135M-Instruct.Q4_1.gguf")   # or an HF folder with config.json
    logits = pretrained.model.logits(pretrained.params, batch)
    convert.export(pretrained, "out/")                              # HF safetensors + config.json

`load` picks the reader from the file: a `.gguf` file (Llama family, dequantised) or a folder with
`config.json` + safetensors, read by the family its `model_type` names (`FAMILIES`). Each family
module registers a `Family` at its bottom: how an HF config maps to ours, and how HF tensors map to
our params and back (it imports `convert.common`, not this package, which imports the built-in llama,
t5 and bert modules). The converted params are checked against `model.init`'s shapes; an unknown
architecture, a missing tensor or a shape that differs is refused by name, nothing is guessed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import seqio

from littlehelp.models import build_model
from littlehelp.models.convert import bert, llama, t5  # noqa: F401  (the built-in families register themselves)
from littlehelp.models.convert.common import (
    FAMILIES,
    ConversionError,
    Family,
    Pretrained,
    check_params,
    config_of,
    family_of_model_type,
    register,
)

__all__ = [
    "CONFIG_FILE",
    "FAMILIES",
    "SAFETENSORS_FILE",
    "SAFETENSORS_INDEX",
    "TOKENIZER_FILE",
    "ConversionError",
    "Family",
    "Pretrained",
    "export",
    "load",
    "load_hf",
    "read_hf_config",
    "read_safetensors",
    "register",
]

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"


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


def _hf_vocabulary(directory: Path) -> seqio.Vocabulary | None:
    from littlehelp.data.hf_vocab import TokenizerVocabulary

    path = directory / TOKENIZER_FILE
    return TokenizerVocabulary.from_tokenizer_json(path) if path.is_file() else None


def load_hf(directory: Path) -> Pretrained:
    """An HF-layout folder (config.json + safetensors [+ tokenizer.json]) read by its family."""
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
    tensors = {
        name: np.ascontiguousarray(value, np.float32)
        for name, value in family.hf_tensors(pretrained.params, pretrained.config).items()
    }
    save_file(tensors, str(out_dir / SAFETENSORS_FILE), metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(family.hf_config(pretrained.config), indent=1) + "\n")
    save_tokenizer = getattr(pretrained.vocabulary, "save_tokenizer_json", None)
    if save_tokenizer is not None:
        save_tokenizer(out_dir / TOKENIZER_FILE)
    return out_dir
