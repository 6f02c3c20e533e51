"""The real SmolLM2-135M-Instruct GGUF (Q4_1) imported by us against HF transformers' reading of the same file."""

import jax
import numpy as np
import pytest
import torch

from littlehelp import decoding

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at a temperature of",
]
NEW_TOKENS = 32
MAX_LOGIT_DIFF = 1e-3  # float32 through 30 layers (measured 1.6e-4); both sides dequantise the same Q4_1 blocks


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)


def _right_padded(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """PROMPTS as right-padded ids [5, p] (pad 0) and their lengths."""
    prompts = [tokenizer(prompt)["input_ids"] for prompt in PROMPTS]
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    padded = np.zeros((len(prompts), lengths.max()), np.int32)
    for row, prompt in enumerate(prompts):
        padded[row, : len(prompt)] = prompt
    return padded, lengths


def _until_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id) + 1] if eos_id in tokens else tokens


def test_logits_match_hf(smollm2, hf_smollm2, hf_tokenizer):
    ids, lengths = _right_padded(hf_tokenizer)
    ours = np.asarray(smollm2.model.logits(smollm2.params, {"decoder_input_tokens": ids}))
    with torch.no_grad():
        theirs = hf_smollm2(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    diffs = [float(np.abs(ours[row, :n] - theirs[row, :n]).max()) for row, n in enumerate(lengths)]  # causal
    print(f"SmolLM2-135M max |logit difference| vs HF per prompt: {diffs}")
    assert max(diffs) <= MAX_LOGIT_DIFF


def test_greedy_continuations_match_hf_generate(smollm2, hf_smollm2, hf_tokenizer):
    eos_id = hf_tokenizer.eos_token_id
    ids, lengths = _right_padded(hf_tokenizer)
    ours = np.asarray(
        decoding.generate(
            smollm2.model,
            smollm2.params,
            ids,
            lengths,
            NEW_TOKENS,
            jax.random.key(0),
            decoding.Sampling(),
            eos_id=eos_id,
        )
    )
    left = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        left[row, ids.shape[1] - n :] = ids[row, :n]
    with torch.no_grad():
        theirs = hf_smollm2.generate(
            torch.from_numpy(left.astype(np.int64)),
            attention_mask=torch.from_numpy(np.arange(ids.shape[1]) >= ids.shape[1] - lengths[:, None]),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            pad_token_id=eos_id,
        )[:, ids.shape[1] :]
    matches = sum(
        _until_eos(ours[row].tolist(), eos_id) == _until_eos(theirs[row].tolist(), eos_id)
        for row in range(len(PROMPTS))
    )
    print(f"SmolLM2-135M greedy continuations identical to HF generate: {matches}/{len(PROMPTS)}")
    assert matches == len(PROMPTS)


def test_capital_of_france_is_paris(smollm2):
    vocabulary = smollm2.vocabulary
    prompt = np.asarray([vocabulary.encode("The capital of France is")], np.int32)
    out = decoding.generate(
        smollm2.model,
        smollm2.params,
        prompt,
        np.asarray([prompt.shape[1]], np.int32),
        3,
        jax.random.key(0),
        decoding.Sampling(),
        eos_id=vocabulary.eos_id,
    )
    assert vocabulary.decode(np.asarray(out[0]).tolist()).startswith(" Paris")
