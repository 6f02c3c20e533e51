"""Drafts derived from the target (docs/methods/distillspec.md): the target's own layers, and a head over its most
frequent tokens. Both are cheap ways to a draft that agrees with a decoder-only target from the start.

- `layer_subset(config, params, layers)`: the target's layers `layer_indices(L, first=k)` (the first k) or
  `layer_indices(L, every=m)` (layers 0, m, 2m, ...), with the target's embeddings, final norm and output head.
- `reduced_vocabulary(config, params, token_ids)`: a draft whose head scores only N ids, e.g. the
  `frequent_tokens` of `token_counts` on a Task's tokens (`task_token_counts`). The N rows of the target's head
  (or tied embeddings) are gathered once, here, into an [emb, N] kernel, so every call's head matmul is
  N x d. `ReducedVocabularyModel` still returns logits over the whole vocabulary, with OUTSIDE_LOGIT outside
  the N ids, where softmax gives exactly 0: its proposals are ids of the full vocabulary and q is 0 outside the
  subset, so speculative sampling's acceptance min(1, p / q) and residual norm(max(0, p - q)) stay exact and
  the engine (`distillspec.speculative`) is unchanged.

OUTSIDE_LOGIT is finite (-1e9), not -inf: distillation takes log q, and at -inf RKL and JSD would give
0 * inf = NaN, while at -1e9 exp underflows to exactly 0 in float32 and every term stays finite. FKL(p || q)
is infinite once q misses tokens that p gives mass to: its value then carries p(outside) * 1e9, and its
gradient on the N logits, q - p, never vanishes (it sums to p's mass outside); distil a reduced-vocabulary
draft with JSD, RKL or TVD.

`derived_folder` (gin) writes a derived draft once as a run folder, which a distillation run starts from
(INITIAL_CHECKPOINT_PATH) and `python -m distillspec.generate --draft` reads; `folder_config` gives its model
config (distillspec/gin/distillspec/derived_smollm2.gin).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from littlehelp import flops, runs
from littlehelp.config import ConfigError
from littlehelp.data import corpus
from littlehelp.features import DECODER_INPUT_TOKENS, TARGETS
from littlehelp.models.api import DecodeCache, StepwiseFlaxModel
from littlehelp.models.convert import run_folder
from littlehelp.models.decoder import DecoderConfig, DecoderLMModel
from littlehelp.models.layers import Projection
from littlehelp.models.registry import ModelFamily, register
from littlehelp.typing import Array, Batch, Params

OUTSIDE_LOGIT = -1e9  # the logit of every id outside a reduced vocabulary: probability exactly 0
RECORD = "derived.json"  # a derived folder's settings, config and token ids, written last
# Folders being written. Making the CheckpointConfig that saves the parameters evaluates every gin binding of
# CheckpointConfig, and a run's restore_path may be `derived_folder` of this very folder: that inner call gets
# the path (its value is unused) instead of writing the folder again.
_WRITING: set[Path] = set()


class DraftError(ConfigError):
    """A derived draft that cannot be built; the message names the setting."""


def layer_indices(num_layers: int, first: int | None = None, every: int | None = None) -> tuple[int, ...]:
    """The target layers a draft keeps: the `first` k, or every `every`-th (0, m, 2m, ...); all of them when
    neither is given."""
    if first is not None and every is not None:
        raise DraftError(
            f"a layer-subset draft keeps the first k layers or every m-th layer, not both "
            f"(got first={first!r}, every={every!r})"
        )
    if first is None and every is None:
        return tuple(range(num_layers))
    name, count = ("first", first) if every is None else ("every", every)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= num_layers:
        raise DraftError(f"layers {name}={count!r}: must be an integer in [1, {num_layers}] (the target's layers)")
    return tuple(range(count)) if every is None else tuple(range(0, num_layers, count))


def layer_subset(config: DecoderConfig, params: Params, layers: Sequence[int]) -> tuple[DecoderConfig, Params]:
    """The draft of the target's `layers` (in the order given) with the target's embeddings, final norm and
    output head: (its config, its params, sharing the target's arrays where it keeps them whole)."""
    layers = tuple(layers)
    if not layers or not all(0 <= i < config.num_layers for i in layers):
        raise DraftError(f"layers {list(layers)}: need one or more of the target's layers 0..{config.num_layers - 1}")
    params = nn.unbox(params)
    kept = {name: value for name, value in params.items() if not name.startswith("layers")}
    if config.scan_layers:
        kept["layers"] = jax.tree.map(lambda stacked: stacked[np.asarray(layers)], params["layers"])
    else:
        kept.update({f"layers_{j}": params[f"layers_{i}"] for j, i in enumerate(layers)})
    return dataclasses.replace(config, num_layers=len(layers)), kept


# ----- reduced vocabulary -----


def check_token_ids(token_ids: Sequence[int], vocab_size: int) -> None:
    """Refuses token ids that are not distinct, increasing ids of the vocabulary."""
    ids = np.asarray(token_ids)
    check_vocabulary_size(len(ids), vocab_size)
    if ids[0] < 0 or ids[-1] >= vocab_size or np.any(np.diff(ids) <= 0):
        raise DraftError(
            f"reduced-vocabulary token ids must increase within [0, {vocab_size}), got "
            f"{ids[:5].tolist()}{'...' if len(ids) > 5 else ''}"
        )


@dataclasses.dataclass(frozen=True)
class ReducedVocabularyConfig:
    """A decoder whose output head scores only `token_ids` (increasing ids of `decoder.vocab_size`).

    decoder: the body (embeddings of the whole vocabulary, layers, final norm); its own head settings
    (tie_embeddings, scale_tied_logits) are unused: the head is an [emb, N] kernel of its own.
    """

    decoder: DecoderConfig
    token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "token_ids", tuple(int(i) for i in self.token_ids))  # hashable: a static jit argument
        check_token_ids(self.token_ids, self.decoder.vocab_size)

    @property
    def vocab_size(self) -> int:
        """The full vocabulary: what proposals and logits are ids of."""
        return self.decoder.vocab_size

    @property
    def emb_dim(self) -> int:
        return self.decoder.emb_dim

    @property
    def dtype(self) -> str:
        return self.decoder.dtype

    @property
    def context_length(self) -> int:
        return self.decoder.context_length


def full_vocabulary_logits(scores: Array, token_ids: Sequence[int], vocab_size: int) -> Array:
    """scores [..., N] of `token_ids` -> logits [..., vocab_size], OUTSIDE_LOGIT at every other id (one scatter
    of the N scores into a constant row)."""
    full = jnp.full((*scores.shape[:-1], vocab_size), OUTSIDE_LOGIT, scores.dtype)
    return full.at[..., np.asarray(token_ids)].set(scores, indices_are_sorted=True, unique_indices=True)


@dataclasses.dataclass(frozen=True)
class ReducedVocabularyModel(StepwiseFlaxModel):
    """The model seam (`api.StepwiseModel`) of a `ReducedVocabularyConfig`: a `DecoderLMModel` body and an
    [emb, N] head; params {"decoder": the body's, "head": {"kernel": [emb, N]}}."""

    config: ReducedVocabularyConfig

    @property
    def body(self) -> DecoderLMModel:
        """The decoder without a head of its own (tied: no [emb, vocab] kernel is created)."""
        return DecoderLMModel(dataclasses.replace(self.config.decoder, tie_embeddings=True))

    @property
    def head(self) -> Projection:
        return Projection(
            features=(len(self.config.token_ids),),
            in_axes=("embed",),
            out_axes=("vocab",),
            dtype=jnp.dtype(self.config.decoder.dtype),
        )

    def init(self, rng: Array, batch: Batch) -> Params:
        body_rng, head_rng = jax.random.split(rng)
        hidden = jnp.zeros((1, self.config.decoder.emb_dim), jnp.dtype(self.config.decoder.dtype))
        return {"decoder": self.body.init(body_rng, batch), "head": self.head.init(head_rng, hidden)["params"]}

    def embed(self, params: Params, tokens: Array) -> Array:
        return self.body.embed(params["decoder"], tokens)

    def hidden_states(
        self, params: Params, batch: Batch, rng: Array | None = None, input_embeddings: Array | None = None
    ) -> Array:
        return self.body.hidden_states(params["decoder"], batch, rng, input_embeddings)

    def logits_from_hidden(self, params: Params, hidden: Array) -> Array:
        scores = self.head.apply({"params": params["head"]}, hidden)
        return full_vocabulary_logits(scores, self.config.token_ids, self.config.vocab_size)

    def logits(
        self, params: Params, batch: Batch, rng: Array | None = None, input_embeddings: Array | None = None
    ) -> Array:
        return self.logits_from_hidden(params, self.hidden_states(params, batch, rng, input_embeddings))

    def forward_flops(self, batch: Batch) -> float:
        size, length = batch[DECODER_INPUT_TOKENS].shape
        scored = dataclasses.replace(self.config.decoder, vocab_size=len(self.config.token_ids))
        return flops.decoder_forward_flops(scored, size, length)

    def init_cache(self, params: Params, batch_size: int, max_length: int, inputs: Batch | None = None) -> DecodeCache:
        return self.body.init_cache(params["decoder"], batch_size, max_length, inputs)

    def _decode_call(
        self, params: Params, cache: DecodeCache, tokens: Array, return_hidden: bool, input_embeddings: Array | None
    ) -> tuple[Array, Any]:
        hidden, layers = self.body._decode_call(  # pylint: disable=protected-access
            params["decoder"], cache, tokens, True, input_embeddings
        )
        return (hidden if return_hidden else self.logits_from_hidden(params, hidden)), layers


register(ModelFamily("reduced_vocabulary", ReducedVocabularyConfig, ReducedVocabularyModel))


def reduced_vocabulary(
    config: DecoderConfig, params: Params, token_ids: Sequence[int]
) -> tuple[ReducedVocabularyConfig, Params]:
    """The draft of the target (`config`, `params`) whose head scores only `token_ids` (increasing): its body
    is the target's, its head kernel [emb, N] the target's head columns (or tied embedding rows, scaled as the
    target scales tied logits) of those ids, gathered here once."""
    reduced = ReducedVocabularyConfig(config, tuple(token_ids))
    params, ids = nn.unbox(params), np.asarray(reduced.token_ids)
    if config.tie_embeddings:
        scale = config.emb_dim**-0.5 if config.scale_tied_logits else 1.0
        kernel = np.asarray(params["token_embedder"]["embedding"])[ids].T * np.float32(scale)
    else:
        kernel = np.asarray(params["logits_dense"]["kernel"])[:, ids]
    body = {name: value for name, value in params.items() if name != "logits_dense"}
    return reduced, {"decoder": body, "head": {"kernel": np.ascontiguousarray(kernel)}}


def token_counts(token_arrays: Iterable[np.ndarray], vocab_size: int) -> np.ndarray:
    """How often each id of a vocabulary of `vocab_size` occurs in `token_arrays` -> int64 [vocab_size]."""
    counts = np.zeros(vocab_size, np.int64)
    for tokens in token_arrays:
        tokens = np.asarray(tokens).ravel()
        if tokens.size and not 0 <= tokens.min() <= tokens.max() < vocab_size:
            raise DraftError(
                f"token id {tokens.max() if tokens.max() >= vocab_size else tokens.min()} is outside "
                f"the vocabulary of {vocab_size} ids"
            )
        counts += np.bincount(tokens, minlength=vocab_size)
    return counts


def check_vocabulary_size(size: int, vocab_size: int) -> None:
    """Refuses a reduced vocabulary of other than 1 to `vocab_size` (the target's) ids."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= vocab_size:
        raise DraftError(f"vocabulary_size={size!r}: must be an integer in [1, {vocab_size}] (the target's vocabulary)")


def frequent_tokens(counts: np.ndarray, size: int) -> tuple[int, ...]:
    """The `size` most frequent ids of `counts` (a tie goes to the smaller id), in increasing order."""
    check_vocabulary_size(size, len(counts))
    return tuple(sorted(int(i) for i in np.argsort(-counts, kind="stable")[:size]))


def task_token_counts(
    task: str, vocab_size: int, feature_lengths: Mapping[str, int], max_tokens: int, split: str = "train"
) -> np.ndarray:
    """`token_counts` of the first `max_tokens` "targets" tokens of seqio Task or Mixture `task`'s `split`, read
    in order (a Mixture draws its Tasks with seed 0), chunked as `feature_lengths` ask."""
    dataset = seqio.get_mixture_or_task(task).get_dataset(
        dict(feature_lengths), split=split, shuffle=False, seed=0, num_epochs=1
    )

    def first_tokens() -> Iterator[np.ndarray]:
        left = max_tokens
        for example in dataset.as_numpy_iterator():
            if left <= 0:
                return
            yield example[TARGETS][:left]
            left -= len(example[TARGETS])

    return token_counts(first_tokens(), vocab_size)


# ----- run folders (gin) -----


def _target_params(config: DecoderConfig, folder: Path) -> Params:
    """The parameters of a converted run folder of the target (model key 'model'), as numpy."""
    model = DecoderLMModel(config)  # not `build_model`: gin may bind its config to this draft's
    params, _ = runs.read_params(folder, model, run_folder.MODEL_KEY)  # reads no gin file: gin's config stays
    return jax.device_get(params)


def _model_gin(folder: Path, settings: Mapping[str, Any]) -> str:
    """A derived folder's model.gin: MODEL_CONFIG is `folder_config` of the folder."""
    return "\n".join(
        [
            f"# A draft derived from {settings['target_dir']} by distillspec.drafts.derived_folder: layers "
            f"{settings['layers']}, vocabulary_size {settings['vocabulary_size']}.",
            "import distillspec.drafts",
            "",
            "MODEL_CONFIG = @drafts.folder_config()",
            f"drafts.folder_config.folder = {str(folder)!r}",
            "include 'models/decoder_only.gin'",
            "",
        ]
    )


def _write_folder(folder: Path, settings: Mapping[str, Any], config: Any, params: Params, target_dir: Path) -> None:
    """Writes the derived folder aside, then moves it into place (a folder there is complete)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        run_folder.save_params(params, staging / "checkpoints")  # parameters only: a run starts with a fresh optimizer
        (staging / run_folder.MODEL_GIN).write_text(_model_gin(folder, settings), encoding="utf-8")
        if (target_dir / run_folder.VOCABULARY_DIR).is_dir():
            shutil.copytree(target_dir / run_folder.VOCABULARY_DIR, staging / run_folder.VOCABULARY_DIR)
        decoder = config.decoder if isinstance(config, ReducedVocabularyConfig) else config
        token_ids = list(config.token_ids) if isinstance(config, ReducedVocabularyConfig) else None
        record = {**settings, "config": dataclasses.asdict(decoder), "token_ids": token_ids}
        (staging / RECORD).write_text(json.dumps(record) + "\n", encoding="utf-8")
        try:
            staging.rename(folder)
        except OSError:  # another process wrote the same folder first
            if not (folder / RECORD).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@gin.configurable(module="drafts")
def derived_folder(
    target_config: DecoderConfig = gin.REQUIRED,
    target_dir: str = gin.REQUIRED,
    first_layers: int | None = None,
    every_layer: int | None = None,
    vocabulary_size: int | None = None,
    task: str | None = None,
    feature_lengths: Mapping[str, int] | None = None,
    count_tokens: int = 1_000_000,
    root: str | None = None,
) -> str:
    """The run folder of the draft derived from the target in `target_dir` (a converted run folder of
    `target_config`), written the first time these settings are asked for.

    first_layers k / every_layer m: the target's layers it keeps (`layer_indices`; neither: all of them);
    vocabulary_size N: its head scores the N most frequent ids of the first `count_tokens` tokens of `task`
    (chunked as `feature_lengths`; None: the whole vocabulary). The folder, `<root or the data
    cache>/derived/<target folder>-<settings>-<digest of the settings>`, holds checkpoints/0 (parameters only,
    model key 'model'), model.gin (MODEL_CONFIG = `folder_config` of it), the target's vocabulary/ and RECORD.
    """
    target = Path(target_dir).expanduser().absolute()
    layers = layer_indices(target_config.num_layers, first_layers, every_layer)
    if vocabulary_size is not None:
        check_vocabulary_size(vocabulary_size, target_config.vocab_size)
        if task is None or feature_lengths is None:
            raise DraftError(
                f"vocabulary_size={vocabulary_size}: name the task (and its feature_lengths) whose tokens are counted"
            )
    settings = {
        "target_dir": str(target),
        "target_config": dataclasses.asdict(target_config),
        "layers": list(layers),
        "vocabulary_size": vocabulary_size,
        "task": task,
        "feature_lengths": dict(feature_lengths or {}),
        "count_tokens": count_tokens,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    kept = (f"first{first_layers}" if first_layers else f"every{every_layer}" if every_layer else "all") + "-layers"
    vocabulary = f"-top{vocabulary_size}" if vocabulary_size is not None else ""
    folder = corpus.data_dir(root) / "derived" / f"{target.name}-{kept}{vocabulary}-{digest}"
    if not (folder / RECORD).is_file() and folder not in _WRITING:
        _WRITING.add(folder)
        try:
            config, params = layer_subset(target_config, _target_params(target_config, target), layers)
            if vocabulary_size is not None:
                counts = task_token_counts(task, target_config.vocab_size, feature_lengths, count_tokens)
                config, params = reduced_vocabulary(config, params, frequent_tokens(counts, vocabulary_size))
            _write_folder(folder, settings, config, params, target)
        finally:
            _WRITING.discard(folder)
    return str(folder)


@gin.configurable(module="drafts")
def folder_config(folder: str = gin.REQUIRED) -> DecoderConfig | ReducedVocabularyConfig:
    """The model config of a folder `derived_folder` wrote."""
    path = Path(folder) / RECORD
    if not path.is_file():
        raise DraftError(f"{folder} holds no {RECORD} (not a folder drafts.derived_folder wrote)")
    record = json.loads(path.read_text(encoding="utf-8"))
    decoder = DecoderConfig(**record["config"])
    return decoder if record["token_ids"] is None else ReducedVocabularyConfig(decoder, record["token_ids"])
