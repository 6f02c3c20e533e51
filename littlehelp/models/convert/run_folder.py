"""An imported model as a folder every command reads: `littlehelp convert --from=PATH --to=DIR`.

    DIR/checkpoints/0/     orbax checkpoint of the parameters only (model key 'model', no optimizer state)
    DIR/model.gin          the model config as gin bindings (+ the family's objective file)
    DIR/vocabulary/        the tokenizer (`tokenizer.json`, `tokenizer_config.json`)
    DIR/converted.json     where it came from (file, SHA-256 of a file source, family)

So DIR works as `INITIAL_CHECKPOINT_PATH` (fine-tuning starts from its parameters with a fresh
optimizer), as a frozen model's `checkpoint_path`, and as MODEL_DIR for `eval` / `infer`
(`--gin_file=DIR/model.gin`; with a vocabulary, `littlehelp infer --gin_file=DIR/model.gin
--gin.PROMPT=...` decodes with that file alone: it names DIR as CONVERTED_DIR); in Python,
`littlehelp.runs.load_run(DIR)` gives its model, parameters and vocabulary. `converted(name)` does this
once for a pretrained model the set-up fetched (`littlehelp.data.pretrained`), into the data cache, for
gin files to point at.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax
import gin
import jax
import numpy as np
from absl import logging

from littlehelp import checkpoints
from littlehelp.data import corpus, pretrained
from littlehelp.models.convert import FAMILIES, ConversionError, Pretrained, load
from littlehelp.runs import DEFAULT_MODEL_KEY as MODEL_KEY
from littlehelp.runs import MODEL_GIN, VOCABULARY_DIR  # the names `runs.load_run` reads

RECORD = "converted.json"


def gin_bindings(config: Any) -> list[str]:
    """`module.Config.field = value` lines binding every field of a model config dataclass."""
    name = f"{type(config).__module__.rsplit('.', 1)[-1]}.{type(config).__name__}"
    return [f"{name}.{field.name} = {getattr(config, field.name)!r}" for field in dataclasses.fields(config)]


def model_gin(pretrained_model: Pretrained, folder: Path) -> str:
    """The text of DIR/model.gin (`folder` is DIR): MODEL_CONFIG bound to the imported config, and the
    family's objective file (or, for a family without one, the seam and its checkpoint key); with a
    vocabulary, also `_infer_bindings`."""
    config, family = pretrained_model.config, FAMILIES.get(pretrained_model.family)
    module, objective = type(config).__module__, family.objective_file if family else None
    lines = [
        f"# Model imported by `littlehelp convert` from {pretrained_model.source} (family {pretrained_model.family}).",
        f"import {module}",
        *([] if objective else ["import littlehelp.models"]),
        "",
        f"MODEL_CONFIG = @{module.rsplit('.', 1)[-1]}.{type(config).__name__}()",
        *gin_bindings(config),
        "",
    ]
    if objective:
        lines.append(f"include '{objective}'")
    else:
        lines += [
            "MODEL = @models.build_model()",
            "models.build_model.config = %MODEL_CONFIG",
            f"MODEL_KEY = '{MODEL_KEY}'",
        ]
    if objective and pretrained_model.vocabulary is not None:
        lines += ["", *_infer_bindings(folder)]
    return "\n".join(lines) + "\n"


def _infer_bindings(folder: Path) -> list[str]:
    """Lines that make `littlehelp infer --gin_file=DIR/model.gin --gin.PROMPT=...` decode with the
    folder's parameters and vocabulary into runs/infer/<folder name> (littlehelp/gin/runs/prompt.gin)."""
    return [
        "# `littlehelp infer` with this file alone decodes PROMPT with this folder's parameters into MODEL_DIR.",
        "# Moved the folder? Set --gin.CONVERTED_DIR=<its new path>.",
        f"CONVERTED_DIR = {str(folder)!r}",
        "include 'runs/prompt.gin'",
        f"MODEL_DIR = {f'runs/infer/{folder.name}'!r}",
    ]


def _source_record(pretrained_model: Pretrained) -> dict[str, Any]:
    source = Path(pretrained_model.source)
    record: dict[str, Any] = {"source": str(source), "family": pretrained_model.family}
    if source.is_file():
        record["sha256"] = corpus.sha256_of(source)
    return record


@flax.struct.dataclass
class ParamsOnlyState:
    """What a converted checkpoint holds: a TrainState without optimizer state."""

    step: Any
    params: Any


def save_params(params: Any, checkpoint_dir: Path) -> None:
    """Writes step 0 of `checkpoint_dir` holding the step and {MODEL_KEY: params} (synchronously)."""
    state = ParamsOnlyState(np.zeros((), np.int32), {MODEL_KEY: jax.tree.map(np.asarray, params)})
    checkpointer = checkpoints.Checkpointer(str(checkpoint_dir), checkpoints.CheckpointConfig(async_save=False))
    try:
        checkpointer.save(0, state, {"batches_consumed": 0}, force=True)
    finally:
        checkpointer.close()


def write_run_folder(pretrained_model: Pretrained, out_dir: str | Path) -> Path:
    """Writes `pretrained_model` as DIR (see the module docstring), built aside and moved into place, so
    an interrupted conversion leaves nothing half-written; refuses a DIR that already holds files."""
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConversionError(f"{out_dir} is not empty; choose a new folder for the converted model")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        save_params(pretrained_model.params, staging / "checkpoints")
        (staging / MODEL_GIN).write_text(model_gin(pretrained_model, out_dir), encoding="utf-8")
        if pretrained_model.vocabulary is not None:
            (staging / VOCABULARY_DIR).mkdir()
            pretrained_model.vocabulary.save_tokenizer_json(staging / VOCABULARY_DIR / "tokenizer.json")
        (staging / RECORD).write_text(json.dumps(_source_record(pretrained_model), indent=1) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def convert(source: str | Path, out_dir: str | Path) -> Path:
    """`littlehelp convert --from=source --to=out_dir`: imports `source` and writes the run folder."""
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and any(out_dir.iterdir()):  # before the import, which takes seconds
        raise ConversionError(f"{out_dir} is not empty; choose a new folder for the converted model")
    imported = load(source)
    count = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(imported.params))
    logging.info("imported %s: family %s, %s parameters", source, imported.family, f"{count:,}")
    folder = write_run_folder(imported, out_dir)
    logging.info("wrote %s (checkpoints/0, %s, %s/)", folder, MODEL_GIN, VOCABULARY_DIR)
    return folder


@gin.configurable(module="convert")
def converted(name: str = gin.REQUIRED, root: str | None = None, imported: Pretrained | None = None) -> str:
    """The run folder of pretrained model `name` (a key of `pretrained.PACKAGES`), converted into the
    data cache (`converted/<name>`) the first time it is asked for; gin files point at it.

    `imported`: that model already loaded from its file (`convert.load`), written instead of loading it again.
    """
    cache = Path(root) if root else corpus.data_dir()
    folder = cache / "converted" / name
    with _exclusive(folder.parent / f".{name}.lock"):  # processes asking at once convert it once
        if not (folder / RECORD).is_file():
            if folder.exists():  # a conversion that did not finish
                shutil.rmtree(folder)
            if imported is not None:
                write_run_folder(imported, folder)
            else:
                source = pretrained.ensure(name, cache)
                logging.info("converting pretrained model %s (%s) once into %s", name, source, folder)
                convert(source, folder)
    return str(folder)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Holds an exclusive advisory lock on `lock_path` (created if absent) while the block runs."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@gin.configurable(module="convert")
def folder_vocabulary(model_dir: str = gin.REQUIRED) -> Any:
    """The vocabulary a converted run folder holds (`vocabulary/tokenizer.json`), for gin bindings."""
    from littlehelp.data.hf_vocab import TokenizerVocabulary

    path = Path(model_dir) / VOCABULARY_DIR / "tokenizer.json"
    if not path.is_file():
        raise ConversionError(f"{model_dir} holds no {VOCABULARY_DIR}/tokenizer.json (not a converted model folder?)")
    return TokenizerVocabulary.from_tokenizer_json(path)
