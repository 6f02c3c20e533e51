"""tasks.text_mixture: the Shakespeare + code mixture in another vocabulary, registered under its name."""

import pytest
import seqio

from littlehelp.data import tasks

from .fixtures import BYTE_SENTINEL_VOCABULARY, requires_corpus


@requires_corpus
def test_text_mixture_registers_both_sources_in_the_vocabulary_at_the_mixture_rates():
    name = tasks.text_mixture("lm", BYTE_SENTINEL_VOCABULARY, "mixture_bytes")
    assert name == "mixture_bytes.shakespeare_code_lm"
    mixture = seqio.get_mixture_or_task(name)
    rates = {task.name: mixture.get_rate(task) for task in mixture.tasks}
    assert rates == {"mixture_bytes.shakespeare_lm": 3.0, "mixture_bytes.code_lm": 1.0}
    assert all(task.output_features["targets"].vocabulary is BYTE_SENTINEL_VOCABULARY for task in mixture.tasks)
    dataset = mixture.get_dataset({"targets": 64}, split="validation", shuffle=False, seed=0)
    example = next(dataset.as_numpy_iterator())
    assert len(example["targets"]) == 64 and 3 <= example["targets"].min() and example["targets"].max() < 259
    assert tasks.text_mixture("lm", BYTE_SENTINEL_VOCABULARY, "mixture_bytes") == name  # registered once


def test_text_mixture_refuses_an_unknown_objective_by_name():
    with pytest.raises(ValueError) as refused:
        tasks.text_mixture("mlm", BYTE_SENTINEL_VOCABULARY, "mixture_bytes")
    assert str(refused.value).splitlines()[0] == (
        "tasks.text_mixture.objective='mlm' is not one of span_corruption, prefix_lm, lm"
    )
