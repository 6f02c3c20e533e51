"""Downstream tasks: splits that share no module or work, the docstring really taken out of the
input, the genre table covering the corpus, metrics against hand-computed values, and registered
Tasks that yield the built examples."""

import pytest
import seqio

from littlehelp.data import corpus, downstream, tasks, vocab
from littlehelp.data.downstream import Example

from .fixtures import requires_corpus

SOURCE = '''
import os


class Reader:
    @_locked
    def read(self, path, size=-1):
        """Read up to size bytes from path.

        A negative size reads everything.
        """
        with open(path, "rb") as file:  # comments stay
            return file.read(size)

    def close(self):
        """Close the reader: the body is only this docstring."""

    @property
    def closed(self):
        """Whether the reader is closed; a placeholder body."""
        ...

    def one_line(self): "The docstring shares the line of the def."; return os.sep * 100

    def undocumented(self, a_rather_long_argument_name, another_rather_long_argument_name):
        return a_rather_long_argument_name + another_rather_long_argument_name
'''
READ_WITHOUT_DOCSTRING = """@_locked
def read(self, path, size=-1):
    with open(path, "rb") as file:  # comments stay
        return file.read(size)
"""


def test_docstring_is_removed_from_the_input_and_its_first_line_is_the_target():
    expected = Example(READ_WITHOUT_DOCSTRING, "Read up to size bytes from path.")
    assert downstream.function_summaries(SOURCE) == [expected]
    assert downstream.function_summaries("def broken(:\n") == []


@pytest.fixture(scope="module")
def code_examples() -> dict[str, tuple[Example, ...]]:
    """{split: examples} of code_summarisation (the standard library parsed once per process: half a minute):
    its tests share this module-scoped fixture, so they run on one xdist worker (tests/conftest.py)."""
    return {split: downstream.code_summarisation_examples(split) for split in corpus.SPLITS}


def test_code_summarisation_splits_share_no_module(code_examples):
    train, validation = (code_examples[split] for split in corpus.SPLITS)
    sources = [
        path.read_text(encoding="utf-8", errors="replace")
        for name, path in corpus._stdlib_files()
        if corpus.stdlib_split_of(name) == "validation"
    ]
    from_validation_modules = {e for source in sources for e in downstream.function_summaries(source)}
    assert len(train) > 3000 and len(validation) > 300
    assert set(validation) <= from_validation_modules  # every validation example comes from a validation module
    assert not {e.inputs for e in train} & {e.inputs for e in validation}
    assert all(80 <= len(e.inputs) <= 1500 and 10 <= len(e.targets) <= 200 for e in train + validation)


@requires_corpus
def test_genre_table_covers_every_work_of_the_corpus():
    works = set(downstream.corpus_works())
    assert works == set(downstream.FOLIO_GENRES) | downstream.NOT_IN_FOLIO
    assert not set(downstream.FOLIO_GENRES) & downstream.NOT_IN_FOLIO
    genres = list(downstream.FOLIO_GENRES.values())
    # The First Folio's catalogue: 14 comedies, 10 histories, 11 tragedies, plus Troilus and Cressida.
    assert [genres.count(g) for g in downstream.GENRES] == [14, 10, 12]


@requires_corpus
def test_genre_splits_hold_out_whole_works_of_every_genre():
    split = downstream.genre_split(downstream.corpus_works())
    assert not set(split["train"]) & set(split["validation"])
    held_out = sorted(downstream.FOLIO_GENRES[w] for w in split["validation"])
    assert held_out == sorted(downstream.GENRES * downstream.GENRE_VALIDATION_WORKS)
    train, validation = (downstream.genre_examples(s) for s in corpus.SPLITS)
    assert {e.targets for e in train} == {e.targets for e in validation} == set(downstream.GENRES)
    assert not {e.inputs for e in train} & {e.inputs for e in validation}
    assert all(400 <= len(e.inputs) <= 1200 for e in train + validation)
    assert not any("TRAGEDY OF" in e.inputs or "HISTORY OF" in e.inputs for e in train + validation)  # no titles


def test_metrics_against_hand_computed_values():
    matches = downstream.exact_match(["Return x.", "Open a file."], [" Return  x.\n", "open a file."])
    assert matches == {"exact_match": 50.0}
    # ROUGE-L F1 = 2 LCS / (target tokens + prediction tokens), tokens lower-cased without punctuation:
    # "the cat sat" / "the cat on the mat": LCS "the cat" = 2 -> 4 / 8;
    # "return the sum of two numbers" / "Return a sum of numbers.": LCS "return sum of numbers" = 4 -> 8 / 11.
    rouge = downstream.rouge_l(
        ["the cat sat", "return the sum of two numbers"], ["the cat on the mat", "Return a sum of numbers."]
    )
    assert abs(rouge["rougeL"] - 100 * (4 / 8 + 8 / 11) / 2) < 1e-9
    predictions = [downstream.genre_postprocess(p) for p in [" Comedy\n", "history", "TRAGEDY "]]
    assert downstream.accuracy(["comedy", "tragedy", "tragedy"], predictions) == {"accuracy": 100 * 2 / 3}


def _first_examples(name: str, count: int = 3) -> list[dict]:
    dataset = seqio.get_mixture_or_task(name).get_dataset(
        {"inputs": 2048, "targets": 256}, split="validation", shuffle=False, use_cached=False
    )
    return list(dataset.take(count).as_numpy_iterator())


@requires_corpus
def test_registered_genre_task_yields_the_built_examples():
    task = seqio.get_mixture_or_task("genre_classification")
    assert task.metric_fns == [downstream.accuracy] and task.postprocess_fn(" Tragedy\n") == "tragedy"
    default, examples = vocab.default_vocabulary(), _first_examples("genre_classification")
    assert len(examples) == 3
    for example, built in zip(examples, downstream.genre_examples("validation")):
        assert example["inputs"][-1] == example["targets"][-1] == vocab.EOS_ID
        # the default sentencepiece model collapses whitespace runs; the pretokenised copy keeps them
        assert default.decode(example["inputs"].tolist()) == " ".join(built.inputs.split())
        assert default.decode(example["targets"].tolist()) == built.targets
        assert example["inputs_pretokenized"].decode() == built.inputs


def test_code_task_registers_for_another_vocabulary_under_a_prefix(code_examples):
    names = downstream.register_downstream_tasks(tasks.BYTE_VOCABULARY, prefix="bytes.")
    assert names == ["bytes.code_summarisation", "bytes.genre_classification"]
    task = seqio.get_mixture_or_task(names[0])
    assert task.metric_fns == [downstream.exact_match, downstream.rouge_l]
    assert task.output_features["inputs"].vocabulary is tasks.BYTE_VOCABULARY
    examples = _first_examples(names[0])
    built = code_examples["validation"][: len(examples)]
    decoded = [
        Example(*(tasks.BYTE_VOCABULARY.decode(e[key].tolist()) for key in ("inputs", "targets"))) for e in examples
    ]
    assert len(examples) == 3 and decoded == list(built)  # bytes round-trip exactly, indentation included
