"""Acceptance measured by scoring, checked against the speculative engine itself and float64 numpy."""

import numpy as np
import pytest

from distillspec import acceptance, speculative
from tests.distillspec import test_speculative
from tests.distillspec.test_speculative import MODEL, PROMPTS, padded, target_only

# The shared pytest fixtures of test_speculative.py.
draft = test_speculative.draft
target = test_speculative.target

NEW_TOKENS = 10
MAX_GAMMA = 6


@pytest.fixture(scope="module")
def greedy_sequences(target):
    """Prompts followed by the target's greedy continuation, right-padded; and the prompt lengths."""
    continuation = target_only(target, PROMPTS, eos_id=-1, new_tokens=NEW_TOKENS + MAX_GAMMA)
    return padded([list(p) + list(c) for p, c in zip(PROMPTS, continuation)])[0], np.array(list(map(len, PROMPTS)))


@pytest.mark.parametrize("gamma", [1, 2, 4, MAX_GAMMA])
def test_replayed_greedy_rounds_give_the_engines_block_efficiency(gamma, target, draft, greedy_sequences):
    sequences, lengths = greedy_sequences
    agreement = np.asarray(acceptance.greedy_agreement(MODEL, draft[1], sequences, lengths, NEW_TOKENS + MAX_GAMMA))
    assert 0.1 < agreement.mean() < 0.9  # the draft agrees part of the time: the replay has work to do
    decoded = speculative.generate(target, draft, PROMPTS, gamma=gamma, max_new_tokens=NEW_TOKENS, eos_id=-1)
    assert acceptance.greedy_block_efficiency(agreement, gamma, NEW_TOKENS) == pytest.approx(
        decoded.stats.block_efficiency
    )


def test_acceptance_probabilities_are_one_minus_the_float64_total_variation(target, draft, greedy_sequences):
    sequences, lengths = greedy_sequences
    got = np.asarray(
        acceptance.acceptance_probabilities(MODEL, target[1], MODEL, draft[1], sequences, lengths, 8, temperature=0.7)
    )

    def probs(params):
        logits = np.asarray(MODEL.logits(params, {"decoder_input_tokens": sequences}), np.float64) / 0.7
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = probs(target[1]), probs(draft[1])
    rows = np.arange(len(lengths))[:, None]
    positions = lengths[:, None] - 1 + np.arange(8)[None, :]
    expected = 1 - 0.5 * np.abs(p[rows, positions] - q[rows, positions]).sum(-1)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_greedy_replay_and_the_expected_block_efficiency_by_hand():
    agreement = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1, 1, 1], bool)
    # gamma 2, 8 tokens: rounds accept 2 (+1), 1 (+1), 0 (+1), 2 (+1) -> 5 accepted in 4 rounds.
    assert acceptance.greedy_rounds(agreement, 2, 8) == (5, 4)
    assert acceptance.greedy_block_efficiency(agreement[None], 2, 8) == pytest.approx(5 / 4 + 1)
    assert acceptance.expected_block_efficiency(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert acceptance.expected_block_efficiency(1.0, 3) == 4.0
    with pytest.raises(ValueError, match="cannot replay"):
        acceptance.greedy_rounds(agreement[:5], 2, 8)
