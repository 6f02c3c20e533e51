"""The DistillSpec study's machinery on tiny random models: held-out prompt splits, the target's
continuations, wall clock against target-only decoding, lossy decoding, and the study's choice of
the best draft (made on the selection prompts, never on the evaluation prompts it is scored on)."""

import numpy as np
import pytest

from distillspec import acceptance, reproduction, speculative
from littlehelp import study
from tests.distillspec import test_speculative
from tests.distillspec.test_speculative import MODEL, VOCAB

# The shared pytest fixtures of test_speculative.py.
draft = test_speculative.draft
target = test_speculative.target

DOMAINS = ["shakespeare", "shakespeare", "code", "code", "humaneval", "humaneval"]


class Characters:
    """A vocabulary of character codes (mod the tiny model's vocabulary, 0 left for the start token)."""

    def encode(self, text):
        return [1 + ord(c) % (VOCAB - 1) for c in text]


def text(domain, i):
    return f"{i}: a {domain} text, number {i}"  # distinct first and last 6 characters


def shuffled_texts(domain, seed):
    """Each domain's texts in a fixed order, the first one three times."""
    del seed
    return [text(domain, 0)] * 3 + [text(domain, i) for i in range(1, 10)]


@pytest.fixture
def split(monkeypatch, target):
    monkeypatch.setattr(acceptance, "held_out_texts", shuffled_texts)
    return acceptance.split_references(target, Characters(), 2, 6, max_new_tokens=5, max_gamma=3, seed=0)


def test_the_splits_take_the_first_and_second_half_of_each_domains_distinct_prompts(split):
    evaluation, selection = split["evaluation"], split["selection"]
    assert evaluation.domains == selection.domains == tuple(d for d in acceptance.DOMAINS for _ in range(2))
    encode = Characters().encode
    first, third = (encode(text("shakespeare", i))[:6] for i in (0, 2))
    np.testing.assert_array_equal(evaluation.prompts[0], [0, *first])
    np.testing.assert_array_equal(selection.prompts[0], [0, *third])  # the repeats of text 0 passed over
    np.testing.assert_array_equal(selection.prompts[4], [0, *encode(text("humaneval", 2))[-6:]])
    assert evaluation.greedy.shape == (6, 7 + 5 + 3) and evaluation.sampled.shape == (6, 7 + 5)
    rows = [tuple(r[:n]) for refs in (evaluation, selection) for r, n in zip(refs.prompts, refs.lengths)]
    assert len(set(rows)) == len(rows) == 12  # no prompt twice, so none in both halves


def test_too_few_distinct_prompts_are_refused_by_domain(monkeypatch):
    monkeypatch.setattr(acceptance, "held_out_texts", lambda domain, seed: ["same text"] * 5)
    with pytest.raises(ValueError, match="held-out shakespeare texts give 1 distinct prompts, fewer than the 2"):
        acceptance.held_out_prompts(Characters(), 2, 6, seed=0)


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
    greedy, sampled = reproduction.wall_clock(target, draft, refs, agreement, [(8, 0.0), (1, 1.0)], [2], 5, 1, 0)
    assert (greedy["batch"], greedy["temperature"], sampled["batch"], sampled["temperature"]) == (8, 0.0, 1, 1.0)
    assert greedy["tokens_equal"] and greedy["replayed_block_efficiency"] == pytest.approx(greedy["block_efficiency"])
    assert 1 < greedy["block_efficiency"] < 3  # some proposals accepted, not all
    assert "tokens_equal" not in sampled and greedy["speedup"] > 0 and sampled["speedup"] > 0


def test_lossy_decoding_accepts_more_as_eps_falls(split, target, draft):
    records = reproduction.lossy_decoding(target, draft, split["evaluation"], [1.0, 0.05], 3, 5, 1, 0)
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
    return {
        "values": {"greedy_tau": evaluation, "alpha": evaluation},
        "scores": {},
        "agreement": [],
        "selection": {"greedy_tau": selection, "alpha": selection},
    }


def test_the_best_drafts_are_chosen_on_the_selection_prompts_and_report_evaluation_values(tmp_path):
    skipped = {"skipped": True, "values": dict.fromkeys(reproduction.SCORES)}
    outcomes = {arm: skipped for arm in reproduction.DISTILLED}
    # jsd_fixed scores best on the evaluation prompts, tvd_draft on the selection prompts: tvd_draft is chosen
    # from every draft; rkl_fixed, best of the fixed-data drafts on the selection prompts, from those.
    outcomes.update(
        jsd_fixed=scored_outcome(1.5, 1.1),
        rkl_fixed=scored_outcome(1.05, 1.2),
        tvd_draft=scored_outcome(1.2, 1.3),
        fkl_draft=scored_outcome(1.4, 1.0),
        undistilled=scored_outcome(1.0, 1.0),
    )
    context = write_outcomes(tmp_path, outcomes)
    chosen = {
        name: reproduction.STUDY.arm(name).run(context.replace(name))  # (best_greedy also decodes)
        for name in ("best_sampled", "best_on_policy_greedy", "best_fixed_greedy", "best_fixed_sampled")
    }
    assert {n: (c["chosen"], c["values"]["alpha"]) for n, c in chosen.items()} == {
        "best_sampled": ("tvd_draft", 1.2),
        "best_on_policy_greedy": ("tvd_draft", 1.2),
        "best_fixed_greedy": ("rkl_fixed", 1.05),
        "best_fixed_sampled": ("rkl_fixed", 1.05),
    }
    study._write_json(context.folder / study.OUTCOME_FILE, chosen["best_sampled"])
    assert reproduction.ratio("alpha")(context) == pytest.approx(1.2)
    assert reproduction.ratio("alpha")(context.replace("fkl_fixed")) is None


def test_the_default_distils_fixed_and_on_policy_drafts_and_the_quick_run_one_of_each():
    settings = {**reproduction.STUDY.settings, **reproduction.STUDY.quick}
    assert set(settings) == set(reproduction.STUDY.settings)
    assert settings["drafts"] == ["jsd_fixed", "jsd_draft"] and settings["speedup_gamma"] in settings["timing_gammas"]
    assert reproduction.STUDY.settings["speedup_gamma"] in reproduction.STUDY.settings["timing_gammas"]
    assert sorted(reproduction.STUDY.settings["drafts"]) == sorted(
        a for a in reproduction.DISTILLED if not a.endswith("_target")
    )
    for drafts in (settings["drafts"], reproduction.STUDY.settings["drafts"]):
        reproduction.check_drafts(drafts)


@pytest.mark.parametrize(
    "drafts, message",
    [
        (["jsd_fixed", "kl_draft"], "drafts names 'kl_draft', not one of fkl_fixed"),
        (["jsd_fixed", "jsd_target"], "has no on-policy draft"),
        (["jsd_draft"], "has no fixed data draft"),
    ],
)
def test_drafts_the_claims_cannot_use_are_refused(drafts, message):
    with pytest.raises(study.StudyError, match=message):
        reproduction.check_drafts(drafts)
