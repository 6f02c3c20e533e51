"""T5 span corruption: lengths, noise statistics against the exact composition law, and lossless
re-interleaving of inputs and targets into the raw chunk and the whole token stream."""

import math

import numpy as np
import pytest
import seqio
import tensorflow as tf

from littlehelp.data import preprocessors

from .fixtures import BYTE_SENTINEL_VOCABULARY, generated_documents, register_generated_tasks

VOCAB_SIZE = BYTE_SENTINEL_VOCABULARY.vocab_size  # 359: sentinels 358, 357, ...
SENTINEL_FLOOR = VOCAB_SIZE - 100


def _masks(length: int, count: int, noise_density=0.15, mean_span=3.0) -> np.ndarray:
    seeds = tf.random.experimental.stateless_split(tf.constant([7, 11]), count * 2)
    seeds = tf.reshape(seeds, [count, 2, 2])
    masks = tf.map_fn(
        lambda s: preprocessors.random_spans_noise_mask(length, noise_density, s, mean_span),
        seeds,
        fn_output_signature=tf.bool,
    )
    return masks.numpy()


def _runs(mask: np.ndarray, value: bool) -> list[int]:
    """Lengths of the maximal runs of `value` in a 1-d bool mask."""
    padded = np.concatenate([[not value], mask, [not value]]) == value
    edges = np.flatnonzero(np.diff(padded.astype(int)))
    return list(edges[1::2] - edges[::2])


def reinterleave(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rebuilds the raw chunk: each sentinel of `inputs` replaced by the span after it in `targets`."""
    spans, current = {}, None
    for token in targets:
        if token >= SENTINEL_FLOOR:
            current = int(token)
            spans[current] = []
        elif current is not None:
            spans[current].append(int(token))
    out = []
    for token in inputs:
        out.extend(spans[int(token)] if token >= SENTINEL_FLOOR else [int(token)])
    return np.array(out)


@pytest.mark.parametrize("inputs_length, expected", [(512, (568, 114)), (128, (141, 29)), (626, (694, 140))])
def test_lengths_match_t5(inputs_length, expected):
    # 568/114 is T5's published pair for inputs 512; each pair is checked against the definition:
    # the corrupted inputs of the raw chunk (non-noise + one sentinel per span + EOS) fill inputs_length
    # and one more raw token would not fit.
    raw, targets = preprocessors.span_corruption_lengths(inputs_length, 0.15, 3.0)
    assert (raw, targets) == expected

    def corrupted(n):
        noise = round(n * 0.15)
        spans = round(noise / 3.0)
        return n - noise + spans + 1, noise + spans + 1

    assert corrupted(raw) == (inputs_length, targets) and corrupted(raw + 1)[0] > inputs_length


def test_noise_fraction_and_mean_span_length():
    masks = _masks(568, 400)
    noise_runs = [r for m in masks for r in _runs(m, True)]
    fraction = masks.mean()
    assert abs(fraction - 0.15) < 0.001  # 85 of 568 tokens in every example
    assert abs(np.mean(noise_runs) - 3.0) < 0.05  # 85 tokens in 28 spans
    assert all(not m[0] for m in masks)  # non-noise first
    assert {len(_runs(m, True)) for m in masks} == {28} and {len(_runs(m, False)) for m in masks} == {28}


def test_span_lengths_follow_the_uniform_composition_law():
    # A uniform random composition of n into k positive parts gives each part length l with
    # probability C(n - l - 1, k - 2) / C(n - 1, k - 1).
    masks = _masks(568, 600)
    for value, n in ((True, 85), (False, 483)):
        runs = np.array([r for m in masks for r in _runs(m, value)])
        k = 28
        for length in (1, 2, 3, 5, 10, 20):
            if length > n - k + 1:
                continue
            expected = math.comb(n - length - 1, k - 2) / math.comb(n - 1, k - 1)
            observed = np.mean(runs == length)
            standard_error = math.sqrt(expected * (1 - expected) / len(runs))
            assert abs(observed - expected) < 5 * standard_error + 1e-4, (value, length, observed, expected)


def test_inputs_and_targets_reinterleave_to_the_raw_chunk():
    rng = np.random.default_rng(0)
    chunks = [rng.integers(3, 259, size=int(n)).astype(np.int32) for n in rng.integers(2, 700, size=50)]
    chunks.append(rng.integers(3, 259, size=568).astype(np.int32))
    dataset = tf.data.Dataset.from_generator(
        lambda: ({"targets": c} for c in chunks), output_signature={"targets": tf.TensorSpec([None], tf.int32)}
    )
    with seqio.utils.map_seed_manager(3):
        corrupted = list(preprocessors.denoise(dataset, VOCAB_SIZE, 0.15, 3.0).as_numpy_iterator())
    for chunk, example in zip(chunks, corrupted, strict=True):
        assert np.array_equal(reinterleave(example["inputs"], example["targets"]), chunk)
        sentinels = example["inputs"][example["inputs"] >= SENTINEL_FLOOR]
        assert np.array_equal(sentinels, VOCAB_SIZE - 1 - np.arange(len(sentinels)))  # counting down from the top
        assert example["targets"][0] == VOCAB_SIZE - 1


def test_task_examples_rebuild_the_concatenated_token_stream():
    prefix = register_generated_tasks()
    task = seqio.get_mixture_or_task(f"{prefix}_span_corruption")
    dataset = task.get_dataset({"inputs": 512, "targets": 114}, split="validation", shuffle=False, seed=0)
    examples = list(dataset.as_numpy_iterator())
    short = [e for e in examples if len(e["inputs"]) < 512]
    assert len(short) <= 3  # only the last chunk of each 128-document concatenation may be short
    assert all(len(e["targets"]) == 114 for e in examples if len(e["inputs"]) == 512)
    assert all(e["inputs"][-1] == 1 and e["targets"][-1] == 1 for e in examples)  # EOS
    rebuilt = [reinterleave(e["inputs"][:-1], e["targets"][:-1]) for e in examples]
    assert all(len(r) == 568 for r, e in zip(rebuilt, examples) if len(e["inputs"]) == 512)
    expected = np.concatenate([BYTE_SENTINEL_VOCABULARY.encode(d) for d in generated_documents("validation")])
    assert np.array_equal(np.concatenate(rebuilt), expected)


def test_targets_too_short_is_a_clear_error():
    prefix = register_generated_tasks()
    task = seqio.get_mixture_or_task(f"{prefix}_span_corruption")
    with pytest.raises(ValueError, match="needs targets length >= 114"):
        task.get_dataset({"inputs": 512, "targets": 100}, split="validation", shuffle=False, seed=0)


def test_lm_and_prefix_lm_chunks_cover_the_stream():
    prefix = register_generated_tasks()
    documents = generated_documents("validation")
    expected = np.concatenate([BYTE_SENTINEL_VOCABULARY.encode(d) for d in documents])
    lm = seqio.get_mixture_or_task(f"{prefix}_lm").get_dataset(
        {"targets": 64}, split="validation", shuffle=False, seed=0
    )
    pieces = [e["targets"] for e in lm.as_numpy_iterator()]
    assert sum(len(p) < 64 for p in pieces) <= 3 and np.array_equal(np.concatenate(pieces), expected)
    prefix_lm = seqio.get_mixture_or_task(f"{prefix}_prefix_lm").get_dataset(
        {"inputs": 65, "targets": 64}, split="validation", shuffle=False, seed=0
    )
    joined = [np.concatenate([e["inputs"][:-1], e["targets"][:-1]]) for e in prefix_lm.as_numpy_iterator()]
    assert sum(len(j) < 64 for j in joined) <= 3 and np.array_equal(np.concatenate(joined), expected)
