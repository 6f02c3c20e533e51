"""seqio preprocessors: T5 span corruption, decoder LM and prefix-LM chunks of concatenated text.

Span corruption follows T5's algorithm (`t5.data.preprocessors.span_corruption`): pick a random
chunk of each document, concatenate documents, split the token stream into raw chunks of the
length the noise settings imply, then noise each chunk with `random_spans_noise_mask` and replace
every noise span by one sentinel (inputs) and every non-noise span by one sentinel (targets).
Sentinels count down from the top of the vocabulary. All randomness is stateless, drawn from the
per-example seeds seqio hands to `map_over_dataset(num_seeds=...)`, so a dataset is a pure
function of its seed. Lengths too short for the noise settings are refused when a `DatasetConfig`
names the task (`check_span_corruption_task`), before anything is built.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import seqio
import tensorflow as tf

from littlehelp.config import ConfigError
from littlehelp.features import INPUTS, TARGETS

FEATURE = TARGETS  # the token feature the chunking preprocessors work on
CONCAT_BATCH = 128  # documents concatenated at a time (T5's reduce_concat_tokens batch_size)
MAX_DOCUMENT_TOKENS = 65536  # T5's select_random_chunk max_length
NOISE_DENSITY = 0.15  # span corruption's defaults (T5's)
MEAN_NOISE_SPAN_LENGTH = 3.0


def _noise_and_spans(tokens: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a raw chunk of `tokens`, as the lengths below count them."""
    noise = int(round(tokens * noise_density))
    return noise, int(round(noise / mean_noise_span_length))


def span_corruption_lengths(
    inputs_length: int, noise_density: float = NOISE_DENSITY, mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
) -> tuple[int, int]:
    """(raw chunk length, targets length) such that corrupted inputs, EOS included, fill `inputs_length`.

    T5's `random_spans_helper` with one sentinel per span in inputs and targets: the longest raw
    chunk whose corrupted inputs fit. For (512, 0.15, 3.0) this is (568, 114).
    """

    def corrupted_lengths(tokens: int) -> tuple[int, int]:
        noise, spans = _noise_and_spans(tokens, noise_density, mean_noise_span_length)
        return tokens - noise + spans + 1, noise + spans + 1

    tokens = inputs_length - 1
    while corrupted_lengths(tokens + 1)[0] <= inputs_length:
        tokens += 1
    targets_length = corrupted_lengths(tokens)[1]
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens, targets_length = tokens - 1, targets_length - 1
    return tokens, targets_length


def _has_a_noise_span(inputs_length: int, noise_density: float, mean_noise_span_length: float) -> bool:
    """Whether the raw chunk for `inputs_length` has a noise span as counted (shorter chunks get one anyway,
    so their targets would be longer than `span_corruption_lengths` says)."""
    raw_length, _ = span_corruption_lengths(inputs_length, noise_density, mean_noise_span_length)
    return min(_noise_and_spans(raw_length, noise_density, mean_noise_span_length)) >= 1


def _least_inputs_length(noise_density: float, mean_noise_span_length: float) -> int:
    """The shortest inputs length whose raw chunk has a noise span as counted (noise_density > 0)."""
    return next(n for n in itertools.count(2) if _has_a_noise_span(n, noise_density, mean_noise_span_length))


def checked_span_corruption_lengths(
    sequence_length: Mapping[str, int],
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
    """`span_corruption_lengths` of `sequence_length["inputs"]`, or ConfigError naming the lengths and the
    least the noise settings need: inputs with at least one noise span, targets that hold them."""
    settings = f"span corruption with noise_density {noise_density} and mean_noise_span_length {mean_noise_span_length}"
    lengths = dict(sequence_length)
    if INPUTS not in lengths or TARGETS not in lengths:
        raise ConfigError(f"{settings} needs 'inputs' and 'targets' lengths, got {lengths}")
    if noise_density > 0 and not _has_a_noise_span(lengths[INPUTS], noise_density, mean_noise_span_length):
        least = _least_inputs_length(noise_density, mean_noise_span_length)
        least_targets = span_corruption_lengths(least, noise_density, mean_noise_span_length)[1]
        raise ConfigError(
            f"{settings} needs inputs length >= {least} (and then targets >= {least_targets}), got {lengths}"
        )
    raw_length, targets_length = span_corruption_lengths(lengths[INPUTS], noise_density, mean_noise_span_length)
    if lengths[TARGETS] < targets_length:
        raise ConfigError(
            f"{settings} needs targets length >= {targets_length} for inputs length {lengths['inputs']}, got {lengths}"
        )
    return raw_length, targets_length


def check_span_corruption_task(name: str, sequence_length: Mapping[str, int]) -> None:
    """Raises ConfigError naming Task or Mixture `name` when a span corruption step of it cannot fill
    `sequence_length` (see `checked_span_corruption_lengths`)."""
    provider = seqio.get_mixture_or_task(name)
    for task in provider.tasks if isinstance(provider, seqio.Mixture) else [provider]:
        for step in task.preprocessors:
            if getattr(step, "func", step) is span_corruption:  # the function, or a functools.partial of it
                keywords = getattr(step, "keywords", {})
                try:
                    checked_span_corruption_lengths(
                        sequence_length,
                        keywords.get("noise_density", NOISE_DENSITY),
                        keywords.get("mean_noise_span_length", MEAN_NOISE_SPAN_LENGTH),
                    )
                except ConfigError as error:
                    raise ConfigError(f"DatasetConfig {name!r}: {error}") from None


def _random_segmentation(num_items: tf.Tensor, num_segments: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Lengths of a uniformly random composition of `num_items` into `num_segments` positive parts."""
    first_in_segment = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
    first_in_segment = tf.pad(seqio.utils.stateless_shuffle(first_in_segment, seed), [[1, 0]])
    segment_id = tf.cumsum(first_in_segment)
    return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)


def random_spans_noise_mask(
    length: tf.Tensor,
    noise_density: float,
    seeds: tf.Tensor,
    mean_noise_span_length: float = 3.0,
    random_roll: bool = False,
) -> tf.Tensor:
    """A bool mask of `length` with round(length * noise_density) noise tokens in random spans.

    The sequence starts with non-noise; noise and non-noise span lengths are independent uniform
    compositions, interleaved. `seeds` is a [2, 2] int tensor (one seed per composition).
    """
    if noise_density == 0.0:
        return tf.zeros([length], tf.bool)
    original_length = length
    length = tf.maximum(length, 2)
    num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
    num_noise = tf.minimum(tf.maximum(num_noise, 1), length - 1)
    num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
    num_spans = tf.maximum(num_spans, 1)
    noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
    nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, seeds[1])
    interleaved = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [num_spans * 2])
    span_starts = tf.cumsum(interleaved)[:-1]
    span_start_indicator = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts, length)
    is_noise = tf.equal(tf.cumsum(span_start_indicator) % 2, 1)
    mask = is_noise[:original_length]
    if random_roll:
        roll_seed = (seeds[0][0] + seeds[1][1], seeds[0][1] - seeds[1][0])
        offset = tf.random.stateless_uniform([1], seed=roll_seed, dtype=tf.int32, minval=0, maxval=length)[0]
        mask = tf.roll(mask, shift=offset, axis=0)
    return mask


def noise_span_to_unique_sentinel(tokens: tf.Tensor, noise_mask: tf.Tensor, vocab_size: int) -> tf.Tensor:
    """Replaces each run of noise tokens by one sentinel: vocab_size - 1, vocab_size - 2, ..."""
    previous_is_noise = tf.pad(noise_mask[:-1], [[1, 0]])
    first_noise = tf.logical_and(noise_mask, tf.logical_not(previous_is_noise))
    later_noise = tf.logical_and(noise_mask, previous_is_noise)
    sentinels = vocab_size - tf.cumsum(tf.cast(first_noise, tokens.dtype))
    tokens = tf.where(first_noise, sentinels, tokens)
    return tf.boolean_mask(tokens, tf.logical_not(later_noise))


def _vocab_size(output_features: Mapping[str, seqio.Feature]) -> int:
    return output_features[FEATURE].vocabulary.vocab_size


def select_random_chunk(dataset: tf.data.Dataset, max_length: int = MAX_DOCUMENT_TOKENS) -> tf.data.Dataset:
    """Keeps one random `max_length`-aligned chunk of each document's tokens; drops empty documents."""

    @seqio.map_over_dataset(num_seeds=1)
    def chunk(example: dict[str, tf.Tensor], seed: tf.Tensor) -> dict[str, tf.Tensor]:
        tokens = example[FEATURE]
        count = tf.size(tokens)
        segments = (count + max_length - 1) // max_length
        start = max_length * tf.random.stateless_uniform([], seed, maxval=tf.maximum(segments, 1), dtype=tf.int32)
        return {FEATURE: tokens[start : tf.minimum(start + max_length, count)]}

    dataset = dataset.filter(lambda example: tf.size(example[FEATURE]) > 0)
    return chunk(dataset)


def reduce_concat_tokens(dataset: tf.data.Dataset, batch_size: int = CONCAT_BATCH) -> tf.data.Dataset:
    """Concatenates the tokens of every `batch_size` consecutive documents into one example."""
    dataset = dataset.map(lambda example: {FEATURE: example[FEATURE]}, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.padded_batch(batch_size, padded_shapes={FEATURE: [-1]})

    def concatenate(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        tokens = tf.reshape(batch[FEATURE], [-1])
        return {FEATURE: tf.boolean_mask(tokens, tf.not_equal(tokens, 0))}

    return dataset.map(concatenate, num_parallel_calls=tf.data.AUTOTUNE)


def split_tokens(dataset: tf.data.Dataset, length: int) -> tf.data.Dataset:
    """Splits each example's tokens into consecutive pieces of `length` (the last may be shorter)."""

    def pieces(example: dict[str, tf.Tensor]) -> tf.data.Dataset:
        tokens = example[FEATURE]
        count = tf.size(tokens)
        num_pieces = (count + length - 1) // length
        padded = tf.reshape(tf.pad(tokens, [[0, num_pieces * length - count]]), [num_pieces, length])
        lengths = tf.minimum(length, count - tf.range(num_pieces) * length)
        return tf.data.Dataset.from_tensor_slices((padded, lengths))

    dataset = dataset.flat_map(pieces)
    return dataset.map(lambda tokens, size: {FEATURE: tokens[:size]}, num_parallel_calls=tf.data.AUTOTUNE)


def raw_chunks(dataset: tf.data.Dataset, length: int) -> tf.data.Dataset:
    """T5's chunking: a random chunk per document, documents concatenated, split into `length` pieces."""
    return split_tokens(reduce_concat_tokens(select_random_chunk(dataset)), length)


def denoise(
    dataset: tf.data.Dataset,
    vocab_size: int,
    noise_density: float,
    mean_noise_span_length: float,
    random_roll: bool = False,
) -> tf.data.Dataset:
    """{"targets": raw chunk} -> {"inputs": chunk with noise spans as sentinels, "targets": the spans}."""

    @seqio.map_over_dataset(num_seeds=6)
    def corrupt(example: dict[str, tf.Tensor], seeds: tf.Tensor) -> dict[str, tf.Tensor]:
        tokens = example[FEATURE]
        mask = random_spans_noise_mask(tf.size(tokens), noise_density, seeds[:2], mean_noise_span_length, random_roll)
        return {
            INPUTS: noise_span_to_unique_sentinel(tokens, mask, vocab_size),
            TARGETS: noise_span_to_unique_sentinel(tokens, tf.logical_not(mask), vocab_size),
        }

    return corrupt(dataset)


def span_corruption(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    random_roll: bool = False,
) -> tf.data.Dataset:
    """T5 span corruption of tokenized documents {"targets"} into {"inputs", "targets"} (EOS added later).

    Raises ConfigError when `sequence_length` is too short for the noise settings.
    """
    raw_length, _ = checked_span_corruption_lengths(sequence_length, noise_density, mean_noise_span_length)
    chunks = raw_chunks(dataset, raw_length)
    return denoise(chunks, _vocab_size(output_features), noise_density, mean_noise_span_length, random_roll)


def lm_chunks(dataset: tf.data.Dataset, sequence_length: Mapping[str, int]) -> tf.data.Dataset:
    """Decoder LM examples: the concatenated token stream cut into `sequence_length["targets"]` pieces."""
    return raw_chunks(dataset, sequence_length[TARGETS])


def prefix_lm(dataset: tf.data.Dataset, sequence_length: Mapping[str, int]) -> tf.data.Dataset:
    """Prefix-LM examples: each raw chunk (inputs length, EOS excluded) split at a uniformly random point."""
    chunks = raw_chunks(dataset, sequence_length[INPUTS] - 1)

    @seqio.map_over_dataset(num_seeds=1)
    def split(example: dict[str, tf.Tensor], seed: tf.Tensor) -> dict[str, tf.Tensor]:
        tokens = example[FEATURE]
        count = tf.size(tokens)
        cut = tf.random.stateless_uniform([], seed, minval=1, maxval=tf.maximum(count, 2), dtype=tf.int32)
        return {INPUTS: tokens[:cut], TARGETS: tokens[cut:]}

    return split(chunks).filter(lambda example: tf.size(example[TARGETS]) > 0)
