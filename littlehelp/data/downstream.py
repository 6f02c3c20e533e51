"""Offline downstream tasks for fine-tuning encoder-decoder checkpoints (registered on import).

- `code_summarisation`: a standard-library function's source with its docstring removed in, the
  docstring's first line out. Split by module: `corpus.stdlib_code`'s split (a stable hash of the
  file's path). Metrics: exact match (whitespace-normalised) and ROUGE-L F-measure (rouge-score).
- `genre_classification`: a passage of a Shakespeare play in, its First Folio genre out (`comedy`,
  `history` or `tragedy`). Split by work, GENRE_VALIDATION_WORKS held-out plays per genre. The
  pre-training corpus keeps its own split (`corpus.split_works`), so pre-training may have seen the
  texts of some held-out plays, never their labels. Metric: accuracy.

Both use the default vocabulary; `register_downstream_tasks` registers them for another one under a
name prefix. The default sentencepiece model normalises whitespace (runs of spaces and newlines
become one space), so code reaches the model without its indentation; the pretokenised copies
(`inputs_pretokenized`) keep it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import textwrap
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import seqio
import tensorflow as tf
from rouge_score import rouge_scorer

from littlehelp.data import corpus, vocab
from littlehelp.features import INPUTS, TARGETS

# Inclusive bounds on a function's source once its docstring is removed (the default vocabulary
# makes 1500 characters of code up to ~800 tokens; a 512-token encoder truncates about 5% of inputs)
# and on the docstring's first line (at most ~45 tokens).
SOURCE_CHARS = (80, 1500)
SUMMARY_CHARS = (10, 200)
# Passages of at least PASSAGE_MIN_CHARS (about 110 tokens of the default vocabulary); longer than
# PASSAGE_MAX_CHARS (about 300 tokens) they are dropped, so every passage fits a 512-token encoder.
PASSAGE_MIN_CHARS = 400
PASSAGE_MAX_CHARS = 1200
GENRE_VALIDATION_WORKS = 2  # held-out plays per genre, the ones with the smallest SHA-256 of their name
GENRES = ("comedy", "history", "tragedy")

# The genre of each play as the First Folio (1623) groups them: its catalogue lists 14 comedies,
# 10 histories and 11 tragedies (Cymbeline among them); Troilus and Cressida is not in the
# catalogue but is printed between the histories and the tragedies, and is counted a tragedy here.
# Keys are the corpus's work names (`corpus.read_manifest`'s files, texts/<work>.txt).
FOLIO_GENRES = {
    **dict.fromkeys(
        (
            "tempest",
            "two_gentlemen_of_verona",
            "merry_wives_of_windsor",
            "measure_for_measure",
            "comedy_of_errors",
            "much_ado_about_nothing",
            "loves_labours_lost",
            "midsummer_nights_dream",
            "merchant_of_venice",
            "as_you_like_it",
            "taming_of_the_shrew",
            "alls_well_that_ends_well",
            "twelfth_night",
            "winters_tale",
        ),
        "comedy",
    ),
    **dict.fromkeys(
        (
            "john",
            "richard_ii",
            "henry_iv_part_1",
            "henry_iv_part_2",
            "henry_v",
            "henry_vi_part_1",
            "henry_vi_part_2",
            "henry_vi_part_3",
            "richard_iii",
            "henry_viii",
        ),
        "history",
    ),
    **dict.fromkeys(
        (
            "troilus_and_cressida",
            "coriolanus",
            "tragedy_of_titus_andronicus",
            "romeo_and_juliet",
            "timon_of_athens",
            "julius_caesar",
            "macbeth",
            "hamlet",
            "lear",
            "othello",
            "antony_and_cleopatra",
            "cymbeline",
        ),
        "tragedy",
    ),
}
# Works of the corpus that are not in the First Folio: Pericles and the poems.
NOT_IN_FOLIO = frozenset(
    {"pericles", "sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece"}
)


class Example(NamedTuple):
    """One downstream example (strings, before tokenisation)."""

    inputs: str
    targets: str


# ----- code summarisation -----


def shuffled(examples: list[Example]) -> tuple[Example, ...]:
    """`examples` in a fixed random order (seed 0): any first N of a split (an evaluation capped at N
    examples) are a random sample of it, not the first module's or play's."""
    order = np.random.default_rng(0).permutation(len(examples))
    return tuple(examples[i] for i in order)


def _docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> tuple[int, int] | None:
    """0-based [start, end) lines of the docstring statement when it has its lines to itself, else None."""
    doc = node.body[0]
    end_line, end_col = doc.end_lineno or doc.lineno, doc.end_col_offset or 0  # always set by ast.parse
    first, last = lines[doc.lineno - 1].encode(), lines[end_line - 1].encode()  # offsets count bytes
    alone = not first[: doc.col_offset].strip() and not last[end_col:].split(b"#")[0].strip()
    return (doc.lineno - 1, end_line) if alone and doc.lineno > node.lineno else None


def _is_placeholder(statement: ast.stmt) -> bool:
    """Whether a statement is `pass` or `...`."""
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return statement.value.value is Ellipsis
    return isinstance(statement, ast.Pass)


def _functions(statements: Sequence[ast.AST]) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The function definitions among `statements` and in their bodies, nested ones included (only
    statement lists are searched: a definition is a statement, so no expression needs walking)."""
    for statement in statements:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
            yield statement
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _functions(getattr(statement, field, []))


def _summary(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> Example | None:
    """The function's (source without docstring, docstring's first line), None when it does not qualify."""
    docstring = ast.get_docstring(node)
    span = _docstring_lines(node, lines) if docstring else None
    if span is None or all(_is_placeholder(statement) for statement in node.body[1:]):
        return None
    start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    source = textwrap.dedent("".join(lines[start - 1 : span[0]] + lines[span[1] : node.end_lineno]))
    summary = docstring.splitlines()[0].strip() if docstring else ""
    fits = SOURCE_CHARS[0] <= len(source) <= SOURCE_CHARS[1] and SUMMARY_CHARS[0] <= len(summary) <= SUMMARY_CHARS[1]
    return Example(source, summary) if fits else None


def function_summaries(source: str) -> list[Example]:
    """(source with decorators, without the docstring, dedented; docstring's first line) of each function
    of a module's `source` that has a docstring, code after it and fits SOURCE_CHARS / SUMMARY_CHARS."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = io.StringIO(source, newline="").readlines()  # split where ast counts lines (not at form feeds)
    return [example for example in (_summary(node, lines) for node in _functions(tree.body)) if example]


@functools.cache
def code_summarisation_examples(split: str) -> tuple[Example, ...]:
    """The examples of the standard-library modules of `split` (`corpus.stdlib_code`), in a fixed
    shuffled order (`shuffled`).

    Repeated examples are dropped, and so are validation examples whose input is also a training
    example's (a few functions are copied between modules).
    """
    examples = list(dict.fromkeys(e for source in corpus.stdlib_code(split) for e in function_summaries(source)))
    if split == "validation":
        seen = {example.inputs for example in code_summarisation_examples("train")}
        examples = [example for example in examples if example.inputs not in seen]
    return shuffled(examples)


# ----- genre classification -----


def genre_split(works: Sequence[str], validation_works: int = GENRE_VALIDATION_WORKS) -> dict[str, list[str]]:
    """{split: sorted plays}: per genre, the `validation_works` plays with the smallest SHA-256 are held out."""
    split: dict[str, list[str]] = {"train": [], "validation": []}
    for genre in GENRES:
        plays = sorted(
            (w for w in works if FOLIO_GENRES.get(w) == genre),
            key=lambda work: hashlib.sha256(work.encode()).hexdigest(),
        )
        split["validation"] += plays[:validation_works]
        split["train"] += plays[validation_works:]
    return {name: sorted(plays) for name, plays in split.items()}


def play_passages(text: str) -> list[str]:
    """Passages of PASSAGE_MIN_CHARS..PASSAGE_MAX_CHARS of a play (`corpus.passages`), without heading
    paragraphs (no lowercase letter: titles, act and scene headings), whose titles could name a genre."""
    paragraphs = (p for p in text.split("\n\n") if any(c.islower() for c in p))
    grouped = corpus.passages("\n\n".join(paragraphs), PASSAGE_MIN_CHARS)
    return [p for p in grouped if PASSAGE_MIN_CHARS <= len(p) <= PASSAGE_MAX_CHARS]


def corpus_works() -> list[str]:
    """The work names of the corpus cache (built when needed), sorted."""
    manifest = corpus.manifest_of(corpus.ensure_shakespeare())
    return sorted(work for split in manifest["splits"].values() for work in split)


@functools.cache
def genre_examples(split: str) -> tuple[Example, ...]:
    """(passage, genre) of the plays of `split` (`genre_split`), in a fixed shuffled order (`shuffled`)."""
    if split not in corpus.SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {corpus.SPLITS}")
    directory = corpus.ensure_shakespeare()
    examples = []
    for work in genre_split(corpus_works())[split]:
        text = (directory / "texts" / f"{work}.txt").read_text(encoding="utf-8")
        examples += [Example(passage, FOLIO_GENRES[work]) for passage in play_passages(text)]
    return shuffled(examples)


# ----- metrics -----


def _normalise(text: str) -> str:
    return " ".join(text.split())


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percentage of predictions equal to their target after whitespace normalisation."""
    hits = sum(_normalise(t) == _normalise(p) for t, p in zip(targets, predictions, strict=True))
    return {"exact_match": 100.0 * hits / len(targets)}


def rouge_l(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-L F-measure x 100 (rouge-score, its default tokenizer, no stemming)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(t, p)["rougeL"].fmeasure for t, p in zip(targets, predictions, strict=True)]
    return {"rougeL": 100.0 * sum(scores) / len(scores)}


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percentage of predictions equal to their target."""
    return {"accuracy": 100.0 * sum(t == p for t, p in zip(targets, predictions, strict=True)) / len(targets)}


def genre_postprocess(output: str, example=None, is_target: bool = False) -> str:
    """A decoded genre, stripped and lower-cased."""
    del example, is_target
    return output.strip().lower()


# ----- registration -----


def _source(examples_fn: Callable[[str], tuple[Example, ...]]) -> seqio.FunctionDataSource:
    """Both splits of `examples_fn` as {"inputs", "targets"} string datasets."""

    def dataset(split: str, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory shard; seqio shuffles examples
        examples = examples_fn(split)
        return tf.data.Dataset.from_tensor_slices(
            {INPUTS: [e.inputs for e in examples], TARGETS: [e.targets for e in examples]}
        )

    return seqio.FunctionDataSource(dataset, splits=list(corpus.SPLITS))


TASKS = {
    "code_summarisation": (code_summarisation_examples, None, [exact_match, rouge_l]),
    "genre_classification": (genre_examples, genre_postprocess, [accuracy]),
}


def register_downstream_tasks(vocabulary: seqio.Vocabulary, prefix: str = "") -> list[str]:
    """Registers `<prefix>code_summarisation` and `<prefix>genre_classification` tokenised with
    `vocabulary`; returns the names. Names already registered are left as they are."""
    features = {key: seqio.Feature(vocabulary, add_eos=True) for key in (INPUTS, TARGETS)}
    preprocessors = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
    for name, (examples_fn, postprocess_fn, metric_fns) in TASKS.items():
        if prefix + name not in seqio.TaskRegistry.names():
            seqio.TaskRegistry.add(
                prefix + name,
                source=_source(examples_fn),
                output_features=features,
                preprocessors=preprocessors,
                postprocess_fn=postprocess_fn,
                metric_fns=metric_fns,
            )
    return [prefix + name for name in TASKS]


register_downstream_tasks(vocab.default_vocabulary())
