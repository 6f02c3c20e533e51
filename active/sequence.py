"""Word segmentation as character tagging: English with its spaces removed, an analogue of Thai.

A sentence is a list of words; its text is the words joined without spaces, and its label at
character i is 1 when a word starts there (`labels_from_words`; `words_from_labels` inverts it).
Position 0 always starts a word, so `SentenceSet.mask` leaves it out of training, of the
uncertainty scores and of boundary precision/recall/F1, which count the word starts at positions
1..length-1 (the places where a space was removed).

Text is normalised by `normalise_words`: lower-cased, apostrophes deleted ("i'll" -> "ill"), every
other character that is not a-z separates words (punctuation and digits are dropped). Sentences are
the lines of Shakespeare's plays (`play_sentences`: verse and prose lines, speaker names and short
stage directions fall out by `MIN_WORDS`) and the sentences of the standard library's docstrings
(`docstring_sentences`, split after . ! or ?), truncated to whole words within `MAX_CHARS`.

Uncertainty of a sentence under a tagger aggregates the per-character margin (top-1 minus top-2
label probability) over its masked positions: the mean (default) or the minimum; lower is more
uncertain (`sentence_margins`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np

from active.validation import check_known
from littlehelp.data import corpus

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
PAD_ID = 0  # character ids: 0 padding, 1..26 the letters a..z
MAX_CHARS = 64
MIN_WORDS = 3
AGGREGATIONS = ("mean", "min")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def normalise_words(text: str) -> list[str]:
    """Lower-case words of letters a-z: apostrophes deleted, any other non-letter separates words."""
    return re.findall(r"[a-z]+", text.lower().replace("'", ""))


def truncate_words(words: Sequence[str], max_chars: int = MAX_CHARS) -> list[str]:
    """The longest prefix of `words` whose joined length is at most `max_chars`."""
    kept, size = [], 0
    for word in words:
        if size + len(word) > max_chars:
            break
        kept.append(word)
        size += len(word)
    return kept


def labels_from_words(words: Sequence[str]) -> tuple[str, np.ndarray]:
    """(text without spaces, int8 labels: 1 where a word starts); words must be non-empty."""
    if any(not word for word in words):
        raise ValueError(f"words must be non-empty, got {list(words)!r}")
    text = "".join(words)
    labels = np.zeros(len(text), np.int8)
    labels[np.cumsum([0] + [len(w) for w in words[:-1]])[: len(words)]] = 1
    return text, labels


def words_from_labels(text: str, labels: Sequence[int]) -> list[str]:
    """Splits `text` before every position labelled 1 (position 0 always starts a word)."""
    if len(text) != len(labels):
        raise ValueError(f"text has {len(text)} characters but {len(labels)} labels")
    starts = [0] + [i for i in range(1, len(text)) if labels[i]]
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)]) if b > a]


def sentences_from_texts(
    texts: Iterable[str], max_chars: int = MAX_CHARS, min_words: int = MIN_WORDS
) -> list[list[str]]:
    """Normalised, truncated word lists of the given sentence texts; shorter than `min_words` dropped."""
    sentences = (truncate_words(normalise_words(text), max_chars) for text in texts)
    return [words for words in sentences if len(words) >= min_words]


def play_sentences(split: str, max_chars: int = MAX_CHARS) -> list[list[str]]:
    """One sentence per line of the plays in `split` (`corpus.shakespeare_documents`)."""
    lines = (line for document in corpus.shakespeare_documents(split) for line in document.splitlines())
    return sentences_from_texts(lines, max_chars)


def docstring_sentences(split: str, max_chars: int = MAX_CHARS) -> list[list[str]]:
    """The sentences of the standard library's docstrings in `split` (`corpus.stdlib_docstrings`)."""
    texts = (s for doc in corpus.stdlib_docstrings(split) for s in _SENTENCE_END.split(doc))
    return sentences_from_texts(texts, max_chars)


@dataclasses.dataclass(frozen=True)
class SentenceSet:
    """Encoded sentences, padded to one width.

    Attributes:
      chars: [n, width] int32 character ids (`PAD_ID` past each sentence's end).
      labels: [n, width] int32 word-start labels (0 past the end).
      mask: [n, width] bool: positions 1..length-1, the ones trained on and scored.
      lengths: [n] characters per sentence (its annotation cost).
    """

    chars: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    def subset(self, indices: np.ndarray) -> SentenceSet:
        """The sentences at `indices`, in that order."""
        return SentenceSet(self.chars[indices], self.labels[indices], self.mask[indices], self.lengths[indices])


def encode(sentences: Sequence[Sequence[str]], width: int = MAX_CHARS) -> SentenceSet:
    """Encodes word lists (letters a-z only, joined length in [1, width]) into a `SentenceSet`."""
    chars = np.full((len(sentences), width), PAD_ID, np.int32)
    labels = np.zeros((len(sentences), width), np.int32)
    lengths = np.zeros(len(sentences), np.int32)
    for row, words in enumerate(sentences):
        text, marks = labels_from_words(words)
        if not 1 <= len(text) <= width or not set(text) <= set(ALPHABET):
            raise ValueError(f"sentence {row} must be 1..{width} letters a-z once joined, got {text!r}")
        chars[row, : len(text)] = [ALPHABET.index(c) + 1 for c in text]
        labels[row, : len(text)] = marks
        lengths[row] = len(text)
    positions = np.arange(width)[None, :]
    mask = (positions >= 1) & (positions < lengths[:, None])
    return SentenceSet(chars, labels, mask, lengths)


@dataclasses.dataclass(frozen=True)
class BoundaryScores:
    """Micro-averaged word-start precision, recall and F1 over masked positions (0 when undefined)."""

    precision: float
    recall: float
    f1: float


def boundary_scores(predicted: np.ndarray, gold: np.ndarray, mask: np.ndarray) -> BoundaryScores:
    """Precision/recall/F1 of predicted word starts (1s) against gold ones, at masked positions."""
    predicted, gold, mask = (np.asarray(a, bool) for a in (predicted, gold, mask))
    true_positive = np.sum(predicted & gold & mask)
    predicted_count, gold_count = np.sum(predicted & mask), np.sum(gold & mask)
    precision = true_positive / predicted_count if predicted_count else 0.0
    recall = true_positive / gold_count if gold_count else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return BoundaryScores(float(precision), float(recall), float(f1))


def check_aggregation(aggregation: str) -> None:
    """Refuses an aggregation name that is not in `AGGREGATIONS`, naming the knob."""
    check_known("aggregation", [aggregation], AGGREGATIONS, known_as="aggregation must be one of")


def sentence_margins(probabilities: np.ndarray, mask: np.ndarray, aggregation: str = "mean") -> np.ndarray:
    """[n] aggregated token margins (top-1 minus top-2 probability) over masked positions.

    Lower means more uncertain; a sentence with no masked position gets 1 (nothing to ask).
    """
    check_aggregation(aggregation)
    top = np.sort(np.asarray(probabilities, np.float64), axis=-1)
    margins = top[..., -1] - top[..., -2]
    mask = np.asarray(mask, bool)
    counts = mask.sum(axis=1)
    if aggregation == "mean":
        totals = np.where(mask, margins, 0.0).sum(axis=1)
        return np.where(counts > 0, totals / np.maximum(counts, 1), 1.0)
    return np.where(mask, margins, 1.0).min(axis=1, initial=1.0)
