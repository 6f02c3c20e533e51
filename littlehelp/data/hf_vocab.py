"""Tokenizers of pretrained models as seqio vocabularies: an HF `tokenizer.json`, or a GGUF file's metadata.

The HF `tokenizers` library does the tokenizing; this module builds its `Tokenizer` and adapts it:

    vocabulary = TokenizerVocabulary.from_gguf(path)              # SmolLM2-135M-Instruct.Q4_1.gguf
    vocabulary = TokenizerVocabulary.from_tokenizer_json(path)    # all-MiniLM-L6-v2/tokenizer.json

Encoding adds no special tokens (seqio appends EOS itself); special tokens written in the text, such
as `<|im_start|>`, are still matched whole. Padding and truncation that a file configures are off.

Padding: seqio pads with id 0 whatever the file says (`pad_id` is 0 here too; the file's own pad id
is `special_ids["pad_token"]`). For BERT-style vocabularies id 0 is `[PAD]` anyway; for SmolLM2 it is
`<|endoftext|>` (the file's pad is 2, its EOS `<|im_end|>`), so in a seqio pipeline a literal
`<|endoftext|>` in the text is indistinguishable from padding: masked out of losses, and dropped by
`decode`. `decode` keeps the ids up to the first EOS (seqio) and drops id 0 and the EOS itself; every
other special token is kept, so `<|im_start|>` decodes to itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import gguf
import jinja2
import jinja2.ext
import jinja2.sandbox
import numpy as np
import seqio
import tensorflow as tf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from littlehelp.data.vocab import VocabularyError

_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # the later one wins
_GGUF_SPECIAL_IDS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
# llama.cpp's pre-tokenizer families (`tokenizer.ggml.pre`) for byte-level BPE vocabularies.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_FAMILIES = {
    "gpt2": ("gpt2", "mpt", "olmo"),  # GPT-2's own split
    "digits": ("smollm", "starcoder", "refact", "codeshell", "command-r"),  # each digit alone, then GPT-2's split
    "llama3": ("llama-bpe", "llama3", "llama-v3", "falcon3", "smaug-bpe", "dbrx"),
    "qwen2": ("qwen2", "deepseek-r1-qwen"),
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: each byte as a printable character (printable Latin-1 bytes as themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    spelling = {byte: chr(byte) for byte in printable}
    spelling.update({byte: chr(256 + index) for index, byte in enumerate(others)})
    return spelling


def _pre_family(pre: str | None) -> str | None:
    """The family of llama.cpp pre-tokenizer `pre` (`tokenizer.ggml.pre`); None when unsupported."""
    return next((family for family, members in _PRE_FAMILIES.items() if pre in members), None)


def _pre_tokenizer(family: str) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer llama.cpp applies for a `_PRE_FAMILIES` family, as `tokenizers` spells it."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family in ("gpt2", "digits"))
    if family == "gpt2":
        return byte_level
    if family == "digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    split = _LLAMA3_SPLIT if family == "llama3" else _QWEN2_SPLIT
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level])


def _content(token: Any) -> str | None:
    """A special token as a config file writes it: a string or an `{"content": ...}` object."""
    return token.get("content") if isinstance(token, dict) else token


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise VocabularyError(f"{path} cannot be read: {type(error).__name__}: {error}") from None


def _chat_template_of(folder: Path, config: dict) -> str | None:
    """The chat template of a folder: `chat_template.jinja`, else tokenizer_config.json's (its default)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):
        template = {entry["name"]: entry["template"] for entry in template}.get("default")
    return template


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (HF's marker of assistant text for its masks) renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller) -> str:
        return caller()


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """HF's `tojson`: plain `json.dumps`, without jinja's HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def _compile_template(template: str) -> jinja2.Template:
    """`template` compiled in the sandboxed environment HF's `apply_chat_template` uses (same options, helpers)."""
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return environment.from_string(template)


class TokenizerVocabulary(seqio.Vocabulary):
    """A seqio vocabulary over a `tokenizers.Tokenizer`, with the special tokens and chat template of its file.

    `special_tokens` maps names (`bos_token`, `eos_token`, `unk_token`, `pad_token`, and any other
    `*_token` its config names) to token strings; each must be in the tokenizer's vocabulary.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        special_tokens: Mapping[str, str | None] | None = None,
        chat_template: str | None = None,
        source: str = "tokenizer",
    ):
        super().__init__(extra_ids=0)
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.source = source
        self.special_tokens = {name: token for name, token in (special_tokens or {}).items() if token is not None}
        self.special_ids = {name: self._id_of(name, token) for name, token in self.special_tokens.items()}
        self.chat_template = chat_template

    def _id_of(self, name: str, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise VocabularyError(f"{self.source}: {name} {token!r} is not in the vocabulary")
        return token_id

    @classmethod
    def from_tokenizer_json(cls, path: str | Path) -> TokenizerVocabulary:
        """An HF `tokenizer.json`; special tokens and chat template from its folder's config files if present."""
        path = Path(path)
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust library raises a bare Exception for any unreadable file
            raise VocabularyError(f"{path} cannot be loaded as a tokenizer.json: {error}") from None
        config: dict = {}
        for name in _CONFIG_FILES:
            if (path.parent / name).is_file():
                config.update(_read_json(path.parent / name))
        special = {
            name: _content(value)
            for name, value in config.items()
            if name.endswith("_token") and isinstance(_content(value), str)
        }
        special.setdefault("unk_token", json.loads(tokenizer.to_str())["model"].get("unk_token"))
        return cls(tokenizer, special, _chat_template_of(path.parent, config), source=str(path))

    @classmethod
    def from_gguf(cls, path: str | Path) -> TokenizerVocabulary:
        """The byte-level BPE tokenizer a GGUF file's metadata describes (`tokenizer.ggml.model` = gpt2)."""
        fields = _gguf_tokenizer_fields(Path(path))
        tokenizer = _byte_level_bpe(fields, str(path))
        special = _gguf_special_tokens(fields, str(path))
        _add_special_tokens(tokenizer, fields, special.values())
        _set_post_processor(tokenizer, fields, special)
        return cls(tokenizer, special, fields.get("tokenizer.chat_template"), source=str(path))

    @property
    def tokenizer(self) -> Tokenizer:
        """The wrapped HF tokenizer (padding and truncation off)."""
        return self._tokenizer

    @property
    def bos_id(self) -> int | None:
        return self.special_ids.get("bos_token")

    @property
    def eos_id(self) -> int | None:
        return self.special_ids.get("eos_token")

    @property
    def unk_id(self) -> int | None:
        return self.special_ids.get("unk_token")

    @property
    def _base_vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, s: str) -> Sequence[int]:
        return self._tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids: Sequence[int]) -> str:
        dropped = {seqio.PAD_ID, self.eos_id}
        return self._tokenizer.decode([int(i) for i in ids if int(i) not in dropped], skip_special_tokens=False)

    def _encode_bytes(self, text: bytes) -> np.ndarray:
        return np.asarray(self._encode(text.decode("utf-8")), np.int32)

    def _encode_batch(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch([t.decode("utf-8") for t in texts], add_special_tokens=False)
        values = np.asarray([i for e in encodings for i in e.ids], np.int32)
        return values, np.asarray([len(e.ids) for e in encodings], np.int64)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """A string scalar to int32 ids [length]; a string vector to a ragged [batch, None] of them."""
        if s.shape.rank == 0:
            return tf.ensure_shape(tf.numpy_function(self._encode_bytes, [s], tf.int32, stateful=False), [None])
        values, lengths = tf.numpy_function(self._encode_batch, [s], [tf.int32, tf.int64], stateful=False)
        return tf.RaggedTensor.from_row_lengths(tf.ensure_shape(values, [None]), tf.ensure_shape(lengths, [None]))

    def _decode_rows(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray([self._decode(row.tolist()).encode("utf-8") for row in rows], dtype=object)

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """int ids [..., length] to strings [...]."""
        ids = tf.convert_to_tensor(ids)
        rows = tf.reshape(ids, [-1, tf.shape(ids)[-1]])
        texts = tf.numpy_function(self._decode_rows, [rows], tf.string, stateful=False)
        return tf.reshape(texts, tf.shape(ids)[:-1])

    def save_tokenizer_json(self, path: str | Path) -> Path:
        """Writes the tokenizer as an HF `tokenizer.json` at `path` (folders created), and beside it a
        `tokenizer_config.json` with the special tokens and chat template, so `from_tokenizer_json(path)`
        gives this vocabulary back and HF's `AutoTokenizer` reads the folder; returns `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(path))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.special_tokens}
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (path.parent / _CONFIG_FILES[0]).write_text(
            json.dumps(config, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        return path

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """`messages` rendered with the chat template as HF's `apply_chat_template(..., tokenize=False)` does,
        the special tokens (`bos_token`, `eos_token`, ...) available to the template."""
        if self.chat_template is None:
            raise VocabularyError(f"{self.source} has no chat template")
        return _compile_template(self.chat_template).render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
        )

    @functools.cached_property
    def pieces_fingerprint(self) -> str:
        """SHA-256 over the pieces in id order: equal where two vocabularies give every id the same piece (what
        a speculative draft must share with its target), whatever their normalisers and pre-tokenisers."""
        pieces = [self._tokenizer.id_to_token(i) for i in range(self._base_vocab_size)]
        return hashlib.sha256(json.dumps(pieces).encode("utf-8")).hexdigest()

    @functools.cached_property
    def _fingerprint(self) -> str:
        description = json.dumps([self._tokenizer.to_str(), self.special_tokens], sort_keys=True)
        return hashlib.sha256(description.encode("utf-8")).hexdigest()

    def __eq__(self, other) -> bool:
        return isinstance(other, TokenizerVocabulary) and other._fingerprint == self._fingerprint

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __repr__(self) -> str:
        return f"TokenizerVocabulary({self.source!r}, vocab_size={self.vocab_size})"


def _gguf_tokenizer_fields(path: Path) -> dict[str, Any]:
    """The `tokenizer.*` metadata of a GGUF file, checked to describe a tokenizer this module builds."""
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as error:
        raise VocabularyError(f"{path} cannot be read as GGUF: {type(error).__name__}: {error}") from None
    fields = {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.")}
    model, pre = fields.get("tokenizer.ggml.model"), fields.get("tokenizer.ggml.pre")
    if model != "gpt2":
        raise VocabularyError(
            f"{path}: unsupported GGUF tokenizer model {model!r} (tokenizer.ggml.model); "
            f"supported: 'gpt2' (byte-level BPE)"
        )
    if _pre_family(pre) is None:
        supported = ", ".join(sorted(p for members in _PRE_FAMILIES.values() for p in members))
        raise VocabularyError(
            f"{path}: unsupported GGUF pre-tokenizer {pre!r} (tokenizer.ggml.pre); supported: {supported}"
        )
    return fields


def _gguf_special_tokens(fields: dict[str, Any], source: str) -> dict[str, str]:
    """bos/eos/unk/pad token strings from the file's `tokenizer.ggml.*_token_id` entries."""
    tokens, special = fields["tokenizer.ggml.tokens"], {}
    for name, key in _GGUF_SPECIAL_IDS.items():
        token_id = fields.get(f"tokenizer.ggml.{key}")
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise VocabularyError(f"{source}: tokenizer.ggml.{key} {token_id} is outside the {len(tokens)} tokens")
        if token_id is not None:
            special[name] = tokens[token_id]
    return special


def _byte_level_bpe(fields: dict[str, Any], source: str) -> Tokenizer:
    """The byte-level BPE model, pre-tokenizer and decoder of the file's vocabulary and merges."""
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8")): index
        for index, token in enumerate(fields["tokenizer.ggml.tokens"])
    }
    if "tokenizer.ggml.merges" not in fields:
        raise VocabularyError(f"{source}: a gpt2 GGUF tokenizer without tokenizer.ggml.merges")
    merges = [tuple(merge.split(" ", 1)) for merge in fields["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    family = _pre_family(fields["tokenizer.ggml.pre"])
    assert family is not None  # checked when the file was read
    tokenizer.pre_tokenizer = _pre_tokenizer(family)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _add_special_tokens(tokenizer: Tokenizer, fields: dict[str, Any], named: Iterable[str]) -> None:
    """Control tokens (and the named bos/eos/unk/pad) become special added tokens, user-defined ones plain
    added tokens, so both are matched whole in text. A control token outside the byte alphabet is a
    mislabelled entry and is left as it is (as HF transformers does)."""
    tokens, types = fields["tokenizer.ggml.tokens"], fields.get("tokenizer.ggml.token_type") or []
    alphabet = set(bytes_to_unicode().values())
    control = [t for t, kind in zip(tokens, types) if kind == _CONTROL and set(t) <= alphabet]
    special = list(dict.fromkeys([*control, *named]))
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    vocab = tokenizer.get_vocab()
    user = [t for t, kind in zip(tokens, types) if kind == _USER_DEFINED and t in vocab]
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])


def _set_post_processor(tokenizer: Tokenizer, fields: dict[str, Any], special: dict[str, str]) -> None:
    """BOS/EOS added on `encode(..., add_special_tokens=True)` as the file's add_bos/add_eos flags say."""
    bos = special.get("bos_token") if fields.get("tokenizer.ggml.add_bos_token") else None
    eos = special.get("eos_token") if fields.get("tokenizer.ggml.add_eos_token") else None
    if bos is None and eos is None:
        return
    single = " ".join([*([f"{bos}:0"] if bos else []), "$A:0", *([f"{eos}:0"] if eos else [])])
    pair = " ".join([single, *([f"{bos}:1"] if bos else []), "$B:1", *([f"{eos}:1"] if eos else [])])
    pieces = [(t, tokenizer.token_to_id(t)) for t in (bos, eos) if t]
    tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=pieces)
