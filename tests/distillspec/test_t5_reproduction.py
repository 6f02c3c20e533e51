"""The T5 DistillSpec study (`distillspec_t5`): outputs that end at EOS (by hand), the replayed block efficiency
and the scores on tiny random T5s conditioned on encoder inputs (against the engine and float64), the held-out
split, the gin files' pair, the drafts setting, and the quick run end to end (slow)."""

import json

import gin
import numpy as np
import pytest

from distillspec import acceptance, speculative
from distillspec import t5_reproduction as t5_study
from littlehelp import config, study
from tests.distillspec import test_speculative_encoder_decoder
from tests.distillspec.helpers import distributions, sometimes_early
from tests.distillspec.test_speculative_encoder_decoder import INPUTS, MODEL

# The shared pytest fixtures of test_speculative_encoder_decoder.py.
draft = test_speculative_encoder_decoder.draft
target = test_speculative_encoder_decoder.target

NEW_TOKENS = 8
MAX_GAMMA = 3


def test_outputs_end_at_their_first_eos_and_the_replay_stops_there_by_hand():
    tokens = np.array([[5, 1, 7, 1], [5, 6, 7, 8], [1, 2, 3, 4]])
    assert acceptance.output_lengths(tokens, 1).tolist() == [2, 4, 1]
    assert acceptance.output_lengths(tokens, None).tolist() == [4, 4, 4]
    assert acceptance.until_eos(tokens, 1).tolist() == [[5, 1, 0, 0], [5, 6, 7, 8], [1, 0, 0, 0]]
    agreement = np.array([[1, 1, 0, 1, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]], bool)
    # gamma 2: row 0 to 8 tokens accepts 2 (+1), 1 (+1), 0 (+1), 2 (+1): 5 in 4 rounds. Row 1 ending after 3 tokens
    # (or 2: a round's proposals count even past the output's end) takes one round, 2 accepted (+1); after 4, a
    # second round accepts 0 (+1).
    assert acceptance.greedy_block_efficiency(agreement, 2, np.array([8, 3])) == pytest.approx((5 + 2) / (4 + 1) + 1)
    assert acceptance.greedy_block_efficiency(agreement, 2, np.array([8, 2])) == pytest.approx((5 + 2) / (4 + 1) + 1)
    assert acceptance.greedy_block_efficiency(agreement, 2, np.array([8, 4])) == pytest.approx((5 + 2) / (4 + 2) + 1)


@pytest.fixture(scope="module")
def refs(target):
    """The target's greedy and sampled continuations of 8 ragged sources (decoder prompt: the start token)."""
    prompts, lengths = np.zeros((8, 1), np.int32), np.ones(8, np.int32)
    return acceptance.references(target, prompts, lengths, ["code"] * 8, NEW_TOKENS, MAX_GAMMA, 0, INPUTS)


@pytest.fixture(scope="module")
def eos(refs):
    """A token the target's greedy outputs emit early in some rows and nowhere in others."""
    return sometimes_early(refs.greedy[:, 1 : 1 + NEW_TOKENS])


def test_the_replayed_block_efficiency_with_eos_is_the_engines(target, draft, refs, eos):
    expected = acceptance.until_eos(refs.greedy[:, 1 : 1 + NEW_TOKENS], eos)
    lengths = acceptance.output_lengths(expected, eos)
    assert lengths.min() < NEW_TOKENS == lengths.max()
    agreement = np.asarray(
        acceptance.greedy_agreement(MODEL, draft[1], refs.greedy, refs.lengths, NEW_TOKENS + MAX_GAMMA, refs.inputs)
    )
    assert 0.1 < agreement.mean() < 0.9
    decoded = speculative.generate(
        target,
        draft,
        refs.prompts,
        prompt_lengths=refs.lengths,
        gamma=MAX_GAMMA,
        max_new_tokens=NEW_TOKENS,
        eos_id=eos,
        inputs=refs.inputs,
    )
    np.testing.assert_array_equal(decoded.tokens, expected)
    replayed = acceptance.greedy_block_efficiency(agreement, MAX_GAMMA, lengths)
    assert replayed == pytest.approx(decoded.stats.block_efficiency)


def test_scores_count_each_output_up_to_its_eos_against_float64(target, draft, refs, eos):
    scores, agreement = acceptance.score(target, draft, refs, NEW_TOKENS, MAX_GAMMA, eos)
    p, q = (
        distributions(MODEL, params, refs.sampled, inputs=refs.inputs)[:, :NEW_TOKENS]
        for params in (target[1], draft[1])
    )
    tvd = 0.5 * np.abs(p - q).sum(-1)
    sampled = acceptance.output_lengths(refs.sampled[:, 1:], eos)
    mask = np.arange(NEW_TOKENS) < sampled[:, None]
    assert scores["alpha"] == pytest.approx((1 - tvd)[mask].mean(), abs=2e-5)
    greedy = acceptance.output_lengths(refs.greedy[:, 1 : 1 + NEW_TOKENS], eos)
    greedy_mask = np.arange(NEW_TOKENS) < greedy[:, None]
    assert scores["greedy_acceptance"] == pytest.approx(agreement[:, :NEW_TOKENS][greedy_mask].mean())
    assert scores["greedy_tau"] == [
        pytest.approx(acceptance.greedy_block_efficiency(agreement, g, greedy)) for g in range(1, MAX_GAMMA + 1)
    ]
    assert not mask.all()  # some outputs end early


class Characters:
    """A vocabulary of character codes, EOS 1."""

    eos_id = 1

    def encode(self, text):
        return [2 + ord(c) % 50 for c in text]


def test_held_out_sources_are_distinct_truncated_rows_ending_in_eos(monkeypatch):
    from littlehelp.data import downstream

    examples = [downstream.Example(f"{i}: def f(): pass", f"summary {i}") for i in range(6)]
    monkeypatch.setattr(downstream, "code_summarisation_examples", lambda split: (examples[0], *examples))
    drawn = t5_study.held_out_sources(Characters(), 4, 6, seed=0)
    rows = [tuple(row) for row, _ in drawn]
    assert len(set(rows)) == 4 and all(len(r) == 6 and r[-1] == 1 for r in rows)
    by_row = {tuple(Characters().encode(e.inputs)[:5]) + (1,): e.targets for e in examples}
    assert all(by_row[row] == summary for row, summary in zip(rows, (s for _, s in drawn)))
    assert t5_study.held_out_sources(Characters(), 4, 6, seed=1) != drawn  # another seed, another draw
    with pytest.raises(ValueError, match="give 6 distinct rows, fewer than the 7 asked"):
        t5_study.held_out_sources(Characters(), 7, 6, seed=0)


def config_of(name: str, macro: str, required: tuple[str, ...] = ()):
    """The value of `macro` in distillspec/gin/distillspec/`name`.gin, its required macros set to a dummy folder."""
    config.import_configurable_modules()
    config.parse_gin([f"distillspec/{name}.gin"], [f"{macro_name}='folder'" for macro_name in ("MODEL_DIR", *required)])
    try:
        return config.macro_value(macro)
    finally:
        gin.clear_config()


def test_the_distillation_file_binds_the_targets_sizes_and_the_draft_is_smaller():
    configs = {name: config_of(name, "MODEL_CONFIG") for name in ("t5_target", "t5_draft")}
    configs["distill_t5"] = config_of("distill_t5", "TARGET_CONFIG", ("INITIAL_CHECKPOINT_PATH", "TARGET_DIR"))
    assert configs["distill_t5"] == configs["t5_target"]
    target_config, draft_config = configs["t5_target"], configs["t5_draft"]
    assert draft_config.vocab_size == target_config.vocab_size
    assert draft_config.emb_dim < target_config.emb_dim
    assert draft_config.num_decoder_layers < target_config.num_decoder_layers


def test_the_default_distils_every_divergence_on_both_sources_and_the_quick_run_one_of_each():
    default, quick = t5_study.STUDY.settings, {**t5_study.STUDY.settings, **t5_study.STUDY.quick}
    assert set(quick) == set(default)
    assert sorted(default["drafts"]) == sorted(t5_study.DISTILLED) and quick["drafts"] == ["jsd_fixed", "jsd_draft"]
    for drafts in (default["drafts"], quick["drafts"]):
        t5_study.check_drafts(drafts, t5_study.DISTILLED, "distillspec_t5")
    with pytest.raises(study.StudyError, match="distillspec_t5: drafts names 'jsd_target', not one of fkl_fixed"):
        t5_study.check_drafts(["jsd_fixed", "jsd_draft", "jsd_target"], t5_study.DISTILLED, "distillspec_t5")


@pytest.mark.slow
def test_the_quick_run_writes_a_complete_result_with_the_greedy_checks(tmp_path):
    request = study.Request("distillspec_t5", quick=True, work_dir=str(tmp_path / "work"))
    study.run_named(request, command="littlehelp study distillspec_t5 --quick")
    written = json.loads((tmp_path / "work" / "result" / "result.json").read_text())
    assert [c["name"] for c in written["claims"]] == [c.name for c in t5_study.CLAIMS]
    assert written["values"]["best_greedy"]["greedy_output_equal"] == [1.0]
    assert written["values"]["undistilled"]["greedy_output_equal"] == [1.0]
    for arm in t5_study.CHECKED_ARMS:
        outcome = json.loads((tmp_path / "work" / arm / "seed_0" / study.OUTCOME_FILE).read_text())
        assert [r["gamma"] for r in outcome["greedy_check"]] == list(t5_study.GAMMAS)
        for record in outcome["greedy_check"]:
            assert record["rows_equal"] == 1.0
            assert record["block_efficiency"] == pytest.approx(record["replayed_block_efficiency"])
    skipped = json.loads((tmp_path / "work" / "fkl_fixed" / "seed_0" / study.OUTCOME_FILE).read_text())
    assert skipped["skipped"] and written["values"]["fkl_fixed"]["greedy_tau_7"] == [None]
