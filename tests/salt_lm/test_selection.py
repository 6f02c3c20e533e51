"""SALT_DS: per-token teacher losses and top-k membership equal float64 numpy (ties included, any chunk
size), scores are the numpy median over the kept tokens, streamed scores equal a one-batch float64
reference, scores round-trip through disk and are reused or refused, and the selected Task holds
exactly the top fraction of the source split in source order."""

import dataclasses
import logging
import re

import gin
import jax
import numpy as np
import pytest
import seqio
from scipy.special import logsumexp

from littlehelp import frozen
from littlehelp.config import ConfigError
from littlehelp.data import teacher_labels
from littlehelp.models import DecoderConfig, build_model
from salt_lm import selection
from tests.helpers import random_params, register_token_task, save_params_only

TASK, LENGTH, VOCAB = "salt_ds_test_lm", 16, 264  # the byte vocabulary (259 ids) fits VOCAB
TEACHER = build_model(
    DecoderConfig(vocab_size=VOCAB, emb_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
)
PARAMS = random_params(TEACHER, 0)
TOP_K = 64  # of 264 ids: random teacher, so about a quarter of the targets are kept and scores vary
_rng = np.random.default_rng(0)
SEQUENCES = {  # lengths 1..24: some padded, some trimmed to LENGTH
    "train": [_rng.integers(3, 259, size=n).astype(np.int32) for n in (9, 16, 3, 24, 12, 1, 16, 7, 20, 14, 5, 16, 11)],
    "validation": [_rng.integers(3, 259, size=n).astype(np.int32) for n in (8, 16, 4)],
    "empty": [],
}


register_token_task(TASK, SEQUENCES)


@gin.configurable(module="test_salt_selection")
def consume(task: str = gin.REQUIRED) -> str:
    return task


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> frozen.FrozenModel:
    folder = tmp_path_factory.mktemp("teacher")
    save_params_only(PARAMS, folder)
    return frozen.FrozenModel(path=str(folder), model=TEACHER)


def scoring(**knobs) -> selection.Scoring:
    return selection.Scoring(TASK, {"targets": LENGTH}, **({"top_k": TOP_K, "batch_size": 4} | knobs))


def numpy_token_values(logits: np.ndarray, targets: np.ndarray, weights: np.ndarray, top_k: int):
    """float64 (weighted cross-entropy, rank of the target < top_k) from full logits."""
    logits = np.asarray(logits, np.float64)
    target = np.take_along_axis(logits, targets[..., None], axis=-1)
    rank = (logits > target).sum(axis=-1)
    return (logsumexp(logits, axis=-1) - target[..., 0]) * weights, rank < top_k


def numpy_median_scores(values: np.ndarray, kept: np.ndarray, weights: np.ndarray) -> np.ndarray:
    rows = [values[i][kept[i] & (weights[i] > 0)] for i in range(len(values))]
    return np.array([np.median(row) if len(row) else 0.0 for row in rows])


# ----------------------------------------------------------------------------------------------
# Per-token values and sequence scores.


@dataclasses.dataclass(frozen=True)
class GivenLogits:
    """A model seam whose hidden states are params["hidden"] and whose head is `hidden @ params["kernel"]`."""

    def hidden_states(self, params, batch, rng=None, input_embeddings=None):
        return params["hidden"]

    def logits_from_hidden(self, params, hidden):
        return hidden @ params["kernel"]


def integer_logits_case(length: int = 10):
    """Small-integer hidden states and kernel (exact float32 logits, many ties), targets, weights."""
    rng = np.random.default_rng(1)
    kernel = rng.integers(-2, 3, (4, 40)).astype(np.float32)
    kernel[:, 30:] = kernel[:, :10]  # ids 30..39 tie with ids 0..9 everywhere
    params = {"hidden": rng.integers(-1, 2, (3, length, 4)).astype(np.float32), "kernel": kernel}
    targets = rng.integers(0, 40, (3, length)).astype(np.int32)
    weights = np.ones((3, length), np.float32)
    weights[2, 6:] = 0.0
    batch = {"decoder_input_tokens": targets, "decoder_target_tokens": targets, "decoder_loss_weights": weights}
    return params, batch


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 10, 16])
@pytest.mark.parametrize("top_k", [1, 5, 40])
def test_token_losses_and_top_k_equal_float64_numpy_with_ties_and_any_chunk_size(chunk_size, top_k):
    params, batch = integer_logits_case()
    values, kept = selection.token_losses(GivenLogits(), params, batch, top_k, chunk_size)
    logits = params["hidden"].astype(np.float64) @ params["kernel"]
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    expected_values, expected_kept = numpy_token_values(logits, targets, weights, top_k)
    target_logit = np.take_along_axis(logits, targets[..., None], axis=-1)
    assert ((logits == target_logit).sum(axis=-1) > 1).mean() > 0.5  # most targets tie with another id
    assert values.shape == kept.shape == (3, 10) and kept.dtype == bool
    np.testing.assert_allclose(np.asarray(values), expected_values, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(kept), expected_kept)
    if top_k == 40:
        assert np.asarray(kept).all()


def test_sequence_scores_are_the_numpy_median_over_weighted_top_k_tokens():
    rng = np.random.default_rng(2)
    values = rng.exponential(size=(6, 9)).astype(np.float32)
    kept = rng.random((6, 9)) < 0.6
    weights = np.ones((6, 9), np.float32)
    kept[0], kept[1] = True, False  # every token; none (scores 0)
    kept[2], kept[3] = np.arange(9) < 4, np.arange(9) < 5  # even and odd counts
    weights[4, :5], weights[5] = 0.0, 0.0  # padding is never counted; an all-padding row scores 0
    scores = np.asarray(selection.sequence_scores(values, kept, weights))
    expected = numpy_median_scores(values, kept, weights)
    assert expected[1] == expected[5] == 0.0 and expected[0] > 0
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Streamed scoring over a registered Task.


def reference_scores(split: str = "train", top_k: int = TOP_K) -> np.ndarray:
    """float64 SALT_DS scores from the full logits of all the split's sequences in one hand-built batch."""
    trimmed = [s[:LENGTH] for s in SEQUENCES[split]]
    targets = np.stack([np.pad(s, (0, LENGTH - len(s))) for s in trimmed])
    weights = (np.arange(LENGTH)[None] < np.array([len(s) for s in trimmed])[:, None]).astype(np.float32)
    inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    logits = jax.jit(TEACHER.logits)(PARAMS, {"decoder_input_tokens": inputs})
    values, kept = numpy_token_values(logits, targets, weights, top_k)
    return numpy_median_scores(values, kept, weights)


def test_streamed_scores_equal_a_one_batch_float64_reference():
    scores = selection.score_split(TEACHER, PARAMS, scoring(batch_size=4, chunk_size=5))  # 13 rows: 4 + 4 + 4 + 1
    expected = reference_scores()
    assert scores.dtype == np.float32 and scores.shape == (13,)
    assert 0 < (expected == 0).sum() < 6  # both kinds: sequences with kept tokens and without (scores 0)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_scores_round_trip_through_disk_and_are_reused(teacher, tmp_path, monkeypatch):
    folder = tmp_path / "scores"
    selection.select(scoring(), teacher, folder, name="salt_ds_first")
    scores, metadata = selection.read_scores(folder)
    np.testing.assert_allclose(scores, reference_scores(), rtol=1e-5, atol=1e-6)
    assert {k: metadata[k] for k in ("task", "split", "sequence_length", "top_k", "count")} == {
        "task": TASK,
        "split": "train",
        "sequence_length": {"targets": LENGTH},
        "top_k": TOP_K,
        "count": 13,
    }
    assert metadata["teacher"] == {
        "path": teacher.path,
        "select": "model",
        "step": 0,
        "fingerprint": frozen.fingerprint(PARAMS),
    }
    padded_batch = {"decoder_input_tokens": np.zeros((4, LENGTH), np.int32)}
    assert metadata["flops"] == 4 * TEACHER.forward_flops(padded_batch)  # 13 rows in 4 batches, the last padded
    written = {name: (folder / name).read_bytes() for name in ("scores.npy", "scores.json")}
    monkeypatch.setattr(selection, "score_split", lambda *a: pytest.fail("scored although the scores were on disk"))
    result = selection.select(scoring(batch_size=8), teacher, folder, name="salt_ds_again")
    assert {name: (folder / name).read_bytes() for name in written} == written
    assert sorted(result.indices) == sorted(np.argsort(-scores, kind="stable")[:7])


def test_scores_for_another_top_k_are_computed_again_and_logged(teacher, tmp_path, monkeypatch, caplog):
    folder = tmp_path / "scores"
    selection.select(scoring(), teacher, folder, name="salt_ds_first")
    calls = []
    score_split = selection.score_split
    monkeypatch.setattr(selection, "score_split", lambda *a: calls.append(1) or score_split(*a))
    with caplog.at_level(logging.INFO):
        selection.select(scoring(top_k=8), teacher, folder, name="salt_ds_top8")
    assert calls == [1]
    assert f"the scores in {folder} differ in top_k; scoring again" in caplog.text
    scores, metadata = selection.read_scores(folder)
    assert metadata["top_k"] == 8
    np.testing.assert_allclose(scores, reference_scores(top_k=8), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "damage, culprit, message",
    [
        (lambda f: f.write_bytes(f.read_bytes()[:-8]), "scores.npy", "is missing, truncated or changed"),
        (lambda f: f.write_text('{"task": '), "scores.json", "is not a readable scores record: JSONDecodeError"),
        (lambda f: f.write_text('{"task": "x"}'), "scores.json", "is not a scores record: it lacks split"),
    ],
)
def test_a_corrupt_scores_file_is_refused_in_one_line_naming_it(tmp_path, damage, culprit, message):
    metadata = scoring().metadata({"fingerprint": "f"}) | {"seconds": 0.5, "flops": 1e6}
    selection.write_scores(tmp_path, np.arange(5, dtype=np.float32), metadata)
    np.testing.assert_array_equal(selection.read_scores(tmp_path)[0], np.arange(5))  # intact before the damage
    damage(tmp_path / culprit)
    with pytest.raises(selection.ScoresFileError, match=f"^{re.escape(str(tmp_path / culprit))} {message}") as error:
        selection.read_scores(tmp_path)
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------------------------
# The selected Task.


def task_targets(name: str, split: str) -> list[list[int]]:
    dataset = seqio.get_mixture_or_task(name).get_dataset({"targets": LENGTH}, split=split, shuffle=False)
    return [example["targets"].tolist() for example in dataset.as_numpy_iterator()]


def test_selected_task_holds_the_top_fraction_in_source_order_and_the_source_validation_split(teacher, tmp_path):
    result = selection.select(scoring(), teacher, tmp_path, fraction=0.5, name="salt_ds_half")
    expected = reference_scores()
    top = np.sort(np.argsort(-expected)[:7])  # round(0.5 x 13) = 7, halves up
    assert expected[top].min() > np.delete(expected, top).max()  # no tie at the cut
    np.testing.assert_array_equal(np.sort(result.indices), top)
    assert task_targets("salt_ds_half", "train") == [SEQUENCES["train"][i][:LENGTH].tolist() for i in top]
    assert task_targets("salt_ds_half", "validation") == task_targets(TASK, "validation")


def test_scores_from_a_label_store_equal_the_teachers_and_select_the_same_labelled_examples(teacher, tmp_path):
    store = tmp_path / "labels"
    config = teacher_labels.StoreConfig(TASK, {"targets": LENGTH}, top_k=4, batch_size=4)
    record = {"path": teacher.path, "select": "model", "step": 0, "fingerprint": frozen.fingerprint(PARAMS)}
    manifest = teacher_labels.build_store(TEACHER, PARAMS, record, config, store)
    teacher_labels.register_labelled_task("salt_ds_labelled", [store])
    labelled = dataclasses.replace(scoring(), task="salt_ds_labelled")
    result = selection.select(
        labelled, None, tmp_path / "scores", fraction=0.5, name="salt_ds_half_labelled", labels_dir=store
    )
    scores, saved = selection.read_scores(tmp_path / "scores")
    np.testing.assert_allclose(scores, reference_scores(), rtol=1e-5, atol=1e-6)  # top_k 64 from a k = 4 store
    assert saved["flops"] == manifest["flops"] > 0 and saved["teacher"]["fingerprint"] == record["fingerprint"]
    top = np.sort(np.argsort(-reference_scores())[:7])
    np.testing.assert_array_equal(np.sort(result.indices), top)
    rows = list(
        seqio.get_mixture_or_task("salt_ds_half_labelled")
        .get_dataset({"targets": LENGTH}, split="train", shuffle=False)
        .as_numpy_iterator()
    )
    assert [r["targets"].tolist() for r in rows] == [SEQUENCES["train"][i][:LENGTH].tolist() for i in top]
    assert all(r["teacher_ids"].shape == (len(r["targets"]), 4) for r in rows)  # the labels came along
    with pytest.raises(ConfigError, match="holds salt_ds_test_lm:train at"):
        selection.select(dataclasses.replace(scoring(), split="validation"), None, tmp_path / "other", labels_dir=store)
    with pytest.raises(ConfigError, match="a teacher or a teacher-label store"):
        selection.select(scoring(), teacher, tmp_path / "both", labels_dir=store)


def test_the_gin_entry_point_selects_once_per_process(teacher, tmp_path, monkeypatch):
    gin.parse_config(
        "\n".join(
            [
                "import littlehelp.frozen",
                "import littlehelp.models",
                "import salt_lm.selection",
                "TASK = @salt.selected_task()",
                f"salt.selected_task.task = '{TASK}'",
                f"salt.selected_task.sequence_length = {{'targets': {LENGTH}}}",
                f"salt.selected_task.scores_dir = '{tmp_path}'",
                f"salt.selected_task.top_k = {TOP_K}",
                "salt.selected_task.fraction = 0.25",
                "salt.selected_task.teacher = @teacher/frozen.FrozenModel()",
                f"teacher/frozen.FrozenModel.path = '{teacher.path}'",
                "teacher/frozen.FrozenModel.model = @teacher/models.build_model()",
                "teacher/models.build_model.config = @teacher/decoder.DecoderConfig()",
                *[
                    f"teacher/decoder.DecoderConfig.{k} = {v}"
                    for k, v in dataclasses.asdict(TEACHER.config).items()
                    if v != getattr(DecoderConfig, k)
                ],
                "test_salt_selection.consume.task = %TASK",
            ]
        )
    )
    calls = []
    select = selection.select
    monkeypatch.setattr(selection, "select", lambda *a: calls.append(a[0].task) or select(*a))
    assert consume() == consume() == f"{TASK}_salt_ds_0.25"
    assert calls == [TASK]
    top = np.sort(np.argsort(-reference_scores())[:3])  # round(0.25 x 13) = 3
    assert task_targets(f"{TASK}_salt_ds_0.25", "train") == [SEQUENCES["train"][i][:LENGTH].tolist() for i in top]


# ----------------------------------------------------------------------------------------------
# Bad input is refused before the teacher is read.


@pytest.mark.parametrize(
    "knobs, error, message",
    [
        ({"fraction": 0.0}, ConfigError, r"^SALT_DS fraction must be in \(0, 1\], got 0.0$"),
        ({"fraction": 1.5}, ConfigError, r"^SALT_DS fraction must be in \(0, 1\], got 1.5$"),
        ({"top_k": 0}, ConfigError, r"^SALT_DS top_k must be an integer >= 1, got 0$"),
        ({"split": "empty"}, ValueError, rf"^split 'empty' of task '{TASK}' is empty: 0 rows$"),
        ({"split": "tets"}, ValueError, rf"^unknown split 'tets'; splits of '{TASK}': empty, train, validation$"),
        (
            {"task": "salt_ds_tset_lm"},
            ValueError,
            r"^unknown task 'salt_ds_tset_lm' \(did you mean 'salt_ds_test_lm'\?\)",
        ),
        (
            {"task": "shakespeare_code_lm"},
            ConfigError,
            r"^SALT_DS selects from a Task's split, and 'shakespeare_code_lm' is a "
            r"Mixture; select from each of its Tasks$",
        ),
        (
            {"task": "docstrings_prefix_lm"},
            ConfigError,
            r"^SALT_DS scores decoder LM Tasks \(one 'targets' feature\); "
            r"'docstrings_prefix_lm' has features \['inputs', 'targets'\]$",
        ),
        (
            {"vocab_size": 200},
            ConfigError,
            rf"^SALT_DS teacher vocabulary size 200 is smaller than task '{TASK}''s vocabulary size 259$",
        ),
    ],
)
def test_bad_input_is_refused_by_name_before_the_teacher_is_read(teacher, tmp_path, monkeypatch, knobs, error, message):
    monkeypatch.setattr(selection.frozen, "load_on_one_device", lambda *a: pytest.fail("the teacher was read"))
    model = build_model(dataclasses.replace(TEACHER.config, vocab_size=knobs.pop("vocab_size", VOCAB)))
    arguments = {"task": TASK, "sequence_length": {"targets": LENGTH}, "scores_dir": str(tmp_path)} | knobs
    with pytest.raises(error) as refused:
        selection.selected_task(teacher=dataclasses.replace(teacher, model=model), name="salt_ds_refused", **arguments)
    assert re.match(message, refused.value.one_line())  # gin appends "In call to configurable ..." lines


def test_the_scoring_pass_flops_are_xla_s_count_of_the_compiled_program_less_its_elementwise_work():
    """One batch's count is XLA's for the compiled scoring program, less its elementwise work (<10% for a
    teacher wide enough that matrix products dominate, as any real one)."""
    batch = {name: np.zeros((4, LENGTH), np.int32) for name in teacher_labels.LM_FEATURES}
    wide = build_model(
        DecoderConfig(
            vocab_size=VOCAB,
            emb_dim=256,
            num_layers=1,
            num_heads=4,
            num_kv_heads=2,
            head_dim=64,
            mlp_dim=1024,
            scan_layers=False,
        )
    )  # XLA counts a scan's body once
    analysis = selection.batch_scores.lower(wide, random_params(wide, 0), batch, TOP_K).compile().cost_analysis()
    traced = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    assert 0.9 * traced <= selection.scoring_flops(wide, scoring(), 4) <= traced  # 4 rows: one batch
