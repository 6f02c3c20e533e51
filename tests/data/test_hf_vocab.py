"""TokenizerVocabulary against HF transformers' reading of the same files (SmolLM2's GGUF, MiniLM's tokenizer.json)."""

import json
import re
import unicodedata

import gguf
import pytest
import seqio
import tensorflow as tf
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from littlehelp.data import corpus
from littlehelp.data.hf_vocab import TokenizerVocabulary
from littlehelp.data.vocab import VocabularyError

CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "Answer in verse."},
        {"role": "user", "content": "Who wrote Hamlet?"},
        {"role": "assistant", "content": "A man from Stratford."},
        {"role": "user", "content": "When?"},
    ],
]


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    return TokenizerVocabulary.from_gguf(smollm2_gguf)


@pytest.fixture(scope="module")
def hf_smol(smollm2_gguf):
    return AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return TokenizerVocabulary.from_tokenizer_json(minilm_dir / "tokenizer.json")


@pytest.fixture(scope="module")
def hf_minilm(minilm_dir):
    return AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """300 English lines, 300 Python lines, 30 Python lines with spaces before a digit, 20 whole passages."""
    english = corpus.shakespeare_documents("validation")[:40]
    code = [source[:3000] for source in corpus.stdlib_code("validation")[:40]]
    lines = [line for doc in english for line in doc.splitlines() if line.strip()][:300]
    code_lines = [line for doc in code for line in doc.splitlines() if line.strip()]
    spaced = [line for line in code_lines if re.search(r"\s\s\d", line)][:30]
    return lines + code_lines[:300] + spaced + list(english[:10]) + code[:10]


def _hf_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _numbers_isolated(text: str) -> list[str]:
    """llama.cpp's first split for `smollm`: every \\p{N} character a piece of its own."""
    pieces = [""]
    for char in text:
        if unicodedata.category(char).startswith("N"):
            pieces += [char, ""]
        else:
            pieces[-1] += char
    return [piece for piece in pieces if piece]


def test_gguf_encode_matches_hf_and_llama_cpp_split(smol, hf_smol, texts):
    # llama.cpp (and SmolLM2's own tokenizer.json) isolate every digit before GPT-2's split; HF's GGUF
    # reading leaves that out, which shows only where a run of 2+ spaces precedes a digit.
    llama_cpp = [[i for piece in _numbers_isolated(t) for i in _hf_ids(hf_smol, piece)] for t in texts]
    assert [smol.encode(t) for t in texts] == llama_cpp
    spaced = [t for t in texts if re.search(r"\s\s\d", t)]
    plain = [t for t in texts if t not in spaced]
    assert [smol.encode(t) for t in plain] == [_hf_ids(hf_smol, t) for t in plain]
    assert sum(smol.encode(t) != _hf_ids(hf_smol, t) for t in spaced) >= 20
    digits = [hf_smol.convert_tokens_to_ids(digit) for digit in "12345"]
    assert smol.encode("12345 apples") == _hf_ids(hf_smol, "12345 apples") == digits + _hf_ids(hf_smol, " apples")


def test_gguf_decode_round_trips(smol, hf_smol, texts):
    assert [smol.decode(smol.encode(t)) for t in texts] == texts
    sample = texts[:50] + texts[-20:]
    assert [smol.decode(smol.encode(t)) for t in sample] == [hf_smol.decode(_hf_ids(hf_smol, t)) for t in sample]


def test_special_tokens_in_text_stay_whole_and_none_are_added(smol, hf_smol):
    text = "<|im_start|>user\nHi<|endoftext|>"
    assert smol.encode(text) == _hf_ids(hf_smol, text)
    assert smol.encode(text)[0] == 1 and smol.encode(text)[-1] == 0
    assert smol.encode("Hi") == [hf_smol.convert_tokens_to_ids("Hi")]  # no BOS, no EOS


def test_gguf_special_ids_and_size_are_the_files(smol, hf_smol, smollm2_gguf):
    assert (smol.bos_id, smol.eos_id, smol.unk_id, smol.special_ids["pad_token"]) == (1, 2, 0, 2)
    assert (hf_smol.bos_token_id, hf_smol.eos_token_id, hf_smol.unk_token_id, hf_smol.pad_token_id) == (1, 2, 0, 2)
    assert smol.vocab_size == len(hf_smol) == 49152
    assert smol.pad_id == 0  # seqio's, whatever the file says
    assert smol.chat_template == hf_smol.chat_template


def test_wordpiece_matches_hf(minilm, hf_minilm, texts):
    assert [minilm.encode(t) for t in texts] == [_hf_ids(hf_minilm, t) for t in texts]
    assert [minilm.decode(minilm.encode(t)) for t in texts] == [hf_minilm.decode(_hf_ids(hf_minilm, t)) for t in texts]
    assert len(minilm.encode(texts[-1])) > 128  # the file's truncation to 128 is off
    assert minilm.encode("hello") == [hf_minilm.convert_tokens_to_ids("hello")]  # and so is its padding to 128


def test_wordpiece_special_ids(minilm, hf_minilm):
    assert (minilm.unk_id, minilm.special_ids["pad_token"], minilm.special_ids["cls_token"]) == (100, 0, 101)
    assert (minilm.eos_id, minilm.bos_id) == (hf_minilm.eos_token_id, hf_minilm.bos_token_id) == (None, None)
    assert minilm.vocab_size == len(hf_minilm) == 30522


def test_tf_path_equals_python_path(smol, minilm, texts):
    sample = texts[:3] + texts[300:303] + ["", "naïve café — 12½"]
    for vocabulary in (smol, minilm):
        dataset = tf.data.Dataset.from_tensor_slices(sample).map(vocabulary.encode_tf)
        assert dataset.element_spec == tf.TensorSpec([None], tf.int32)
        assert [ids.tolist() for ids in dataset.as_numpy_iterator()] == [vocabulary.encode(t) for t in sample]
        assert vocabulary.encode_tf(tf.constant(sample)).to_list() == [vocabulary.encode(t) for t in sample]


def test_seqio_tokenize_and_decode_tf(smol, texts):
    features = {"targets": seqio.Feature(smol)}
    dataset = tf.data.Dataset.from_tensor_slices({"targets": texts[:4]})
    tokenized = list(seqio.preprocessors.tokenize(dataset, features).as_numpy_iterator())
    assert [row["targets"].tolist() for row in tokenized] == [smol.encode(t) for t in texts[:4]]
    rows = [smol.encode(texts[0]) + [smol.eos_id, 0, 0], smol.encode(texts[1])[:5] + [smol.eos_id, 1, 0]]
    length = max(map(len, rows))
    padded = tf.constant([row + [0] * (length - len(row)) for row in rows])
    decoded = [text.decode("utf-8") for text in smol.decode_tf(padded).numpy()]
    assert decoded == [smol.decode(row) for row in rows] == [texts[0], smol.decode(smol.encode(texts[1])[:5])]


def test_render_chat_matches_hf(smol, hf_smol):
    for chat in CHATS:
        for prompt in (True, False):
            expected = hf_smol.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt)
            assert smol.render_chat(chat, add_generation_prompt=prompt) == expected
    assert smol.render_chat(CHATS[0]).endswith("<|im_start|>assistant\n")


def test_template_helpers_match_hf(smol, hf_smol):
    template = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{% if m.role == 'assistant' %}{% generation %}{{ m | tojson }}{% endgeneration %}"
        "{% else %}{{ bos_token + m.content + eos_token }}\n{% endif %}{% endfor %}{{ ns.n }}"
    )
    chat = CHATS[1] + [{"role": "assistant", "content": "<b>&'\"</b> ünïcode"}]
    ours = TokenizerVocabulary(smol.tokenizer, smol.special_tokens, template)
    expected = hf_smol.apply_chat_template(chat, chat_template=template, tokenize=False, add_generation_prompt=True)
    assert ours.render_chat(chat) == expected
    assert '"<b>&' in expected and "ünïcode" in expected


def test_render_chat_without_template_is_refused(minilm):
    with pytest.raises(VocabularyError, match="tokenizer.json has no chat template"):
        minilm.render_chat(CHATS[0])


def test_saved_tokenizer_json_reads_back_in_hf(smol, tmp_path, texts):
    path = smol.save_tokenizer_json(tmp_path / "export" / "tokenizer.json")
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["padding"] is None and saved["truncation"] is None
    assert [p["type"] for p in saved["pre_tokenizer"]["pretokenizers"]] == ["Digits", "ByteLevel"]
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert [_hf_ids(hf, t) for t in texts] == [smol.encode(t) for t in texts]
    loaded = TokenizerVocabulary.from_tokenizer_json(path)  # special tokens and chat template come back too
    assert loaded == smol and loaded.chat_template == smol.chat_template
    assert (loaded.eos_id, loaded.bos_id) == (smol.eos_id, smol.bos_id) == (2, 1)


def test_equality_and_hash(smol, minilm):
    copy = TokenizerVocabulary(smol.tokenizer, smol.special_tokens)  # a new Tokenizer built from the same JSON
    assert copy == smol and hash(copy) == hash(smol) and smol != minilm
    assert seqio.Feature(smol) == seqio.Feature(copy)
    assert TokenizerVocabulary(smol.tokenizer, {**smol.special_tokens, "eos_token": "<|endoftext|>"}) != smol


def _write_gguf(path, model: str, pre: str, tokens=("a", "b", "ab"), merges=("a b",), types=None, add_bos=False):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(list(tokens))
    writer.add_token_types(list(types or [gguf.TokenType.NORMAL] * len(tokens)))
    writer.add_token_merges(list(merges))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(add_bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_gguf_tokenizer_is_refused_by_name(tmp_path):
    path = _write_gguf(tmp_path / "spm.gguf", "llama", "default")
    with pytest.raises(VocabularyError) as refused:
        TokenizerVocabulary.from_gguf(path)
    assert str(refused.value) == (
        f"{path}: unsupported GGUF tokenizer model 'llama' (tokenizer.ggml.model); supported: 'gpt2' (byte-level BPE)"
    )
    path = _write_gguf(tmp_path / "odd.gguf", "gpt2", "chameleon")
    with pytest.raises(VocabularyError, match=r"unsupported GGUF pre-tokenizer 'chameleon' \(tokenizer.ggml.pre\)"):
        TokenizerVocabulary.from_gguf(path)


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_other_pre_tokenizers_and_bos_match_hf(pre, hf_smol, tmp_path, texts):
    # SmolLM2's first 3000 tokens and the merges among them, under another pre-tokenizer, with BOS added.
    tokens = [token for token, _ in sorted(hf_smol.get_vocab().items(), key=lambda item: item[1])[:3000]]
    known = set(tokens)
    merges = [
        " ".join(pair)
        for pair in json.loads(hf_smol.backend_tokenizer.to_str())["model"]["merges"]
        if set(pair) <= known and "".join(pair) in known
    ]
    types = [gguf.TokenType.CONTROL] * 17 + [gguf.TokenType.NORMAL] * (len(tokens) - 17)
    path = _write_gguf(tmp_path / f"{pre}.gguf", "gpt2", pre, tokens, merges, types, add_bos=True)
    ours, hf = TokenizerVocabulary.from_gguf(path), AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    sample = texts[:100] + texts[300:400] + ["it's 12345  678 DON'T\r\n\n  x"]
    assert [ours.encode(t) for t in sample] == [_hf_ids(hf, t) for t in sample]
    assert ours.tokenizer.encode(sample[0]).ids == hf(sample[0])["input_ids"] == [1] + ours.encode(sample[0])
