"""The DistillSpec study's machinery on tiny random models: held-out prompt splits, the target's
continuations, wall clock against target-only decoding, lossy decoding, and the study's choice of
the best draft (made on the selection prompts, never on the evaluation prompts it is scored on)."""

import numpy as np
import pytest

from distillspec import acceptance, generate, reproduction, speculative
from littlehelp import study
from tests.distillspec.test_speculative import MODEL, VOCAB, draft, target  # noqa: F401 (fixtures)

DOMAINS = ["shakespeare", "shakespeare", "code", "code", "humaneval", "humaneval"]


class Characters:
    """A vocabulary of character codes (mod the tiny model's vocabulary, 0 left for the start token)."""

    def encode(self, text):
        return [1 + ord(c) % (VOCAB - 1) for c in text]


@pytest.fixture
def split(monkeypatch, target):
    texts = {d: [f"{d} text number {i}, long enough" for i in range(10)] for d in acceptance.DOMAINS}
    monkeypatch.setattr(acceptance, "held_out_texts", lambda domain, count, seed: texts[domain][:count])
    return acceptance.split_references(target, Characters(), 2, 6, max_new_tokens=5, max_gamma=3, seed=0)


def test_the_splits_take_the_first_and_second_half_of_each_domains_draw(split):
    evaluation, selection = split["evaluation"], split["selection"]
    assert evaluation.domains == selection.domains == tuple(d for d in acceptance.DOMAINS for _ in range(2))
    encode = Characters().encode
    first, third = (encode(f"shakespeare text number {i}, long enough")[:6] for i in (0, 2))
    np.testing.assert_array_equal(evaluation.prompts[0], [0, *first])
    np.testing.assert_array_equal(selection.prompts[0], [0, *third])
    assert evaluation.greedy.shape == (6, 7 + 5 + 3) and evaluation.sampled.shape == (6, 7 + 5)


def test_references_continue_the_prompt_with_the_targets_greedy_tokens(split, target):
    refs = split["evaluation"]
    agreement = np.asarray(acceptance.greedy_agreement(MODEL, target[1], refs.greedy, refs.lengths, 8))
    assert agreement.all()  # the target agrees with its own greedy continuation everywhere


def test_batch_rows_take_one_prompt_per_domain_or_round_robin():
    assert speculative.batch_rows(DOMAINS, 1) == [[0], [2], [4]]
    assert speculative.batch_rows(DOMAINS, 8) == [[0, 2, 4, 1, 3, 5]]
    assert speculative.batch_rows(DOMAINS, 4) == [[0, 2, 4, 1]]


def test_wall_clock_replays_the_greedy_block_efficiency_it_measures(split, target, draft):
    refs = split["evaluation"]
    agreement = np.asarray(acceptance.greedy_agreement(MODEL, draft[1], refs.greedy, refs.lengths, 5 + 2))
    greedy, sampled = generate.wall_clock(target, draft, refs, agreement, [(8, 0.0), (1, 1.0)], [2], 5, 1, 0)
    assert (greedy["batch"], greedy["temperature"], sampled["batch"], sampled["temperature"]) == (8, 0.0, 1, 1.0)
    assert greedy["tokens_equal"] and greedy["replayed_block_efficiency"] == pytest.approx(greedy["block_efficiency"])
    assert 1 < greedy["block_efficiency"] < 3  # some proposals accepted, not all
    assert "tokens_equal" not in sampled and greedy["speedup"] > 0 and sampled["speedup"] > 0


def test_lossy_decoding_accepts_more_as_eps_falls(split, target, draft):
    records = generate.lossy_decoding(target, draft, split["evaluation"], [1.0, 0.05], 3, 5, 1, 0)
    assert records[1]["acceptance"] > records[0]["acceptance"]
    assert all(r["target_log_likelihood"] < 0 and r["target_only_log_likelihood"] < 0 for r in records)


def test_target_log_likelihood_is_the_mean_log_softmax_of_the_tokens(target):
    prompts, lengths = np.array([[0, 3, 4], [0, 5, 0]], np.int32), np.array([3, 2], np.int32)
    tokens = np.array([[7, 8], [9, 10]], np.int32)
    sequences = acceptance.with_continuations(prompts, lengths, tokens)
    logits = np.asarray(MODEL.logits(target[1], {"decoder_input_tokens": sequences}), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = np.mean([log_probs[r, lengths[r] - 1 + j, tokens[r, j]] for r in range(2) for j in range(2)])
    assert acceptance.target_log_likelihood(target, prompts, lengths, tokens) == pytest.approx(expected, abs=1e-5)


def write_outcomes(tmp_path, outcomes):
    for arm, outcome in outcomes.items():
        context = study.ArmContext(reproduction.STUDY, reproduction.STUDY.arm(arm), 0, {}, tmp_path)
        study._write_json(context.folder / study.OUTCOME_FILE, outcome)
    return study.ArmContext(reproduction.STUDY, reproduction.STUDY.arm("best_sampled"), 0, {}, tmp_path)


def scored_outcome(evaluation, selection):
    return {"values": {"greedy_tau": evaluation, "alpha": evaluation}, "scores": {}, "agreement": [],
            "selection": {"greedy_tau": selection, "alpha": selection}}


def test_the_best_draft_is_chosen_on_the_selection_prompts(tmp_path):
    skipped = {"skipped": True, "values": dict.fromkeys(reproduction.SCORES)}
    outcomes = {arm: skipped for arm in reproduction.DISTILLED}
    # jsd_fixed scores best on the evaluation prompts, tvd_draft on the selection prompts: tvd_draft is chosen.
    outcomes.update(jsd_fixed=scored_outcome(1.5, 1.1), tvd_draft=scored_outcome(1.2, 1.3),
                    undistilled=scored_outcome(1.0, 1.0))
    context = write_outcomes(tmp_path, outcomes)
    chosen = reproduction.STUDY.arm("best_sampled").run(context)
    assert chosen["chosen"] == "tvd_draft" and chosen["values"]["alpha"] == 1.2
    study._write_json(context.folder / study.OUTCOME_FILE, chosen)
    assert reproduction.ratio("alpha")(context) == pytest.approx(1.2)
    assert reproduction.ratio("alpha")(context.replace("fkl_fixed")) is None


def test_a_quick_run_distils_one_draft_and_skips_the_others():
    settings = {**reproduction.STUDY.settings, **reproduction.STUDY.quick}
    assert set(settings) == set(reproduction.STUDY.settings)
    assert settings["drafts"] == ["jsd_fixed"] and settings["speedup_gamma"] in settings["timing_gammas"]
    assert reproduction.STUDY.settings["speedup_gamma"] in reproduction.STUDY.settings["timing_gammas"]
