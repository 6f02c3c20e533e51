"""active.sequence, active.tagger and active.live: word-start labels, boundary F1, margin
aggregation, a tagger that learns, and the live loop's event order, claims and input checks."""

import dataclasses

import numpy as np
import pytest

from active import live, sequence, tagger
from active.validation import SelectionInputError

TINY = tagger.TaggerConfig(embed_dim=8, channels=16, dilations=(1, 2), steps=20, batch_size=16, learning_rate=1e-2)
WIDTH = 16


def synthetic_sentences(count: int, seed: int) -> list[list[str]]:
    """Words are 'a' followed by 1-3 letters from b-z: a word starts exactly where an 'a' stands."""
    rng = np.random.default_rng(seed)
    letters = list(sequence.ALPHABET[1:])
    sentences = []
    for _ in range(count):
        words = ["a" + "".join(rng.choice(letters, rng.integers(1, 4))) for _ in range(rng.integers(2, 5))]
        sentences.append(sequence.truncate_words(words, WIDTH))
    return sentences


def test_labels_round_trip_to_the_spaced_text():
    original = "Now is the winter of our discontent, made glorious summer!"
    words = sequence.normalise_words(original)
    text, labels = sequence.labels_from_words(words)
    assert text == "nowisthewinterofourdiscontentmadeglorioussummer"
    assert list(np.flatnonzero(labels)) == [0, 3, 5, 8, 14, 16, 19, 29, 33, 41]
    spaced = " ".join(sequence.words_from_labels(text, labels))
    assert spaced == "now is the winter of our discontent made glorious summer" == " ".join(words)
    assert sequence.normalise_words("I'll speak; 'tis done") == ["ill", "speak", "tis", "done"]


def test_encode_masks_position_zero_and_padding():
    encoded = sequence.encode([["to", "be"], ["or", "not", "to"]], width=8)
    assert encoded.lengths.tolist() == [4, 7]
    assert encoded.chars[0].tolist() == [20, 15, 2, 5, 0, 0, 0, 0]
    assert encoded.labels[1].tolist() == [1, 0, 1, 0, 0, 1, 0, 0]
    assert encoded.mask[0].tolist() == [False, True, True, True, False, False, False, False]
    with pytest.raises(ValueError, match="sentence 0 must be 1..3 letters"):
        sequence.encode([["toolong"]], width=3)


def test_boundary_scores_against_a_hand_count():
    # Masked positions 1..5: gold starts at 2 and 4; predicted at 2, 3 and 5 (and 0, which is masked out).
    gold = np.array([[1, 0, 1, 0, 1, 0]])
    predicted = np.array([[1, 0, 1, 1, 0, 1]])
    mask = np.array([[0, 1, 1, 1, 1, 1]], bool)
    scores = sequence.boundary_scores(predicted, gold, mask)
    assert scores.precision == pytest.approx(1 / 3)
    assert scores.recall == pytest.approx(1 / 2)
    assert scores.f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert sequence.boundary_scores(np.zeros((1, 6)), gold, mask).f1 == 0.0


def reference_margins(probabilities: np.ndarray, mask: np.ndarray, aggregation: str) -> list[float]:
    """Per sentence, a Python loop over positions: margin = |p1 - p0| for two labels."""
    result = []
    for row in range(len(probabilities)):
        margins = [
            abs(float(probabilities[row, i, 1]) - float(probabilities[row, i, 0]))
            for i in range(probabilities.shape[1])
            if mask[row, i]
        ]
        result.append(1.0 if not margins else (sum(margins) / len(margins) if aggregation == "mean" else min(margins)))
    return result


@pytest.mark.parametrize("aggregation", sequence.AGGREGATIONS)
def test_sentence_margins_match_a_loop_reference(aggregation):
    rng = np.random.default_rng(0)
    p1 = rng.uniform(size=(6, 9))
    probabilities = np.stack([1 - p1, p1], axis=-1).astype(np.float32)
    mask = rng.uniform(size=(6, 9)) < 0.6
    mask[3] = False
    got = sequence.sentence_margins(probabilities, mask, aggregation)
    np.testing.assert_allclose(got, reference_margins(probabilities, mask, aggregation), rtol=1e-6)
    assert got[3] == 1.0


def test_tagger_learns_a_synthetic_segmentation():
    train_set = sequence.encode(synthetic_sentences(256, seed=0), WIDTH)
    test_set = sequence.encode(synthetic_sentences(128, seed=1), WIDTH)
    config = dataclasses.replace(TINY, steps=200)
    state = tagger.init_tagger(config, seed=0, width=WIDTH)
    untrained = tagger.evaluate(state, test_set).f1
    trained = tagger.evaluate(tagger.train(state, train_set, seed=0), test_set).f1
    # Always predicting a word start scores F1 = 2r/(1+r) with r ~ 0.3 word starts per position, ~0.46.
    assert trained > 0.95 > untrained


BATCH_CHARS = 40  # sentences are at most WIDTH = 16 characters: each multiple is passed by its own sentence


def small_run(seed: int = 0, **overrides) -> live.LiveRun:
    pools = (
        sequence.encode(synthetic_sentences(60, seed=10), WIDTH),
        sequence.encode(synthetic_sentences(60, seed=11), WIDTH),
    )
    tests = (
        sequence.encode(synthetic_sentences(20, seed=12), WIDTH),
        sequence.encode(synthetic_sentences(20, seed=13), WIDTH),
    )
    config = live.LiveConfig(
        **{"batch_chars": BATCH_CHARS, "chars_before_shift": 120, "chars_after_shift": 80, "tagger": TINY, **overrides}
    )
    return live.run(pools, tests, config, seed=seed)


@pytest.fixture(scope="module")
def run_result() -> live.LiveRun:
    return small_run()


def test_live_events_are_back_to_back_per_stream_and_in_start_order(run_result):
    events = run_result.events
    order = [(e.start, live.STREAMS.index(e.stream)) for e in events]
    assert order == sorted(order)  # processed by start time, ties to the ranked stream
    for name in live.STREAMS:
        mine = [e for e in events if e.stream == name]
        assert mine[0].start == 0
        assert all(a.end == b.start for a, b in zip(mine, mine[1:]))  # disjoint in time, no gaps
        assert all(e.end - e.start > 0 for e in mine)
        assert {e.domain for e in mine if e.start < 120} == {"source"}
        assert {e.domain for e in mine if e.start >= 120} == {"target"}
        assert mine[-2].end < 200 <= mine[-1].end  # stops once the clock passes the end


def test_live_never_annotates_a_sentence_twice(run_result):
    claims = [(e.domain, e.sentence) for e in run_result.events]
    assert len(claims) == len(set(claims))


def test_live_updates_each_time_a_clock_passes_a_multiple_of_batch_chars(run_result):
    for name in live.STREAMS:
        mine = [e for e in run_result.events if e.stream == name]
        evaluations = [v for v in run_result.evaluations if v.stream == name]
        passing = [n + 1 for n, e in enumerate(mine) if e.end // BATCH_CHARS > e.start // BATCH_CHARS]
        expected = passing + ([len(mine)] if passing[-1] != len(mine) else [])  # the last labels, trained once more
        assert [v.sentences for v in evaluations] == expected
        assert [v.chars for v in evaluations] == [mine[n - 1].end for n in expected]
        # Equal cost for both streams, whatever lengths they pick: the k-th update at k * 40 characters and
        # less than one sentence more, up to the end at 200.
        assert [v.chars // BATCH_CHARS for v in evaluations] == [1, 2, 3, 4, 5]
        assert all(0.0 <= v.f1_source <= 1.0 and 0.0 <= v.f1_target <= 1.0 for v in evaluations)


def test_live_random_stream_is_reproducible_under_a_seed(run_result):
    def random_claims(result):
        return [(e.domain, e.sentence) for e in result.events if e.stream == "random"]

    assert random_claims(small_run(seed=0)) == random_claims(run_result)
    assert random_claims(small_run(seed=1)) != random_claims(run_result)


def test_live_ranked_stream_takes_the_lowest_margin_unclaimed_sentence(monkeypatch):
    # Margins that fall with the pool index: the ranked stream must take the highest unclaimed index.
    monkeypatch.setattr(live.sequence, "sentence_margins", lambda p, mask, aggregation: -np.arange(len(p), dtype=float))
    result = small_run()
    claimed = {"source": set(), "target": set()}
    model_choices = 0
    first_model_at = next(v.chars for v in result.evaluations if v.stream == "ranked")
    for event in result.events:
        if event.stream == "ranked" and event.start >= first_model_at:
            assert event.sentence == max(set(range(60)) - claimed[event.domain])
            model_choices += 1
        claimed[event.domain].add(event.sentence)
    assert model_choices > 10


def test_bad_inputs_name_the_knob():
    pool = sequence.encode(synthetic_sentences(5, seed=0), WIDTH)
    empty = pool.subset(np.array([], np.int64))
    config = live.LiveConfig(batch_chars=20, tagger=TINY)
    with pytest.raises(SelectionInputError, match="the source pool is empty: 0 sentences"):
        live.run((empty, pool), (pool, pool), config)
    with pytest.raises(SelectionInputError, match="the target test set is empty: 0 sentences"):
        live.run((pool, pool), (pool, empty), config)
    with pytest.raises(SelectionInputError, match="batch_chars must be a positive integer, got 0"):
        live.LiveConfig(batch_chars=0)
    with pytest.raises(SelectionInputError, match="unknown aggregation 'maen' \\(did you mean 'mean'\\?\\)"):
        live.LiveConfig(aggregation="maen")
    with pytest.raises(SelectionInputError, match="unknown aggregation 'max'"):
        sequence.sentence_margins(np.full((1, 2, 2), 0.5), np.ones((1, 2), bool), "max")
    with pytest.raises(SelectionInputError, match="the source pool is exhausted \\(5 sentences\\)"):
        live.run((pool, pool), (pool, pool), dataclasses.replace(config, chars_after_shift=10_000))
