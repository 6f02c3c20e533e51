"""Stored teacher labels: the store holds the live teacher's top-k (float64 reference), the labelled
Task carries them through packing to the batch exactly as per example, an interrupted build resumes
without recomputing its finished shards, and a store for another teacher, Task or k, an unfinished one
and a corrupt shard are refused by name."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import seqio
from scipy.special import log_softmax, logsumexp

from littlehelp import frozen, losses
from littlehelp.data import pipeline, teacher_labels
from littlehelp.features import TEACHER_IDS, TEACHER_LOG_PROBS, TEACHER_LOG_REST
from littlehelp.models import DecoderConfig, build_model
from tests.helpers import random_params, register_token_task

TASK, LENGTH, VOCAB, TOP_K = "teacher_labels_test_lm", 12, 264, 8
TEACHER = build_model(
    DecoderConfig(vocab_size=VOCAB, emb_dim=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
)
PARAMS = random_params(TEACHER, 0)
_rng = np.random.default_rng(0)
SEQUENCES = {  # lengths 1..20: some padded, some trimmed to LENGTH
    "train": [_rng.integers(3, 259, size=n).astype(np.int32) for n in (9, 12, 3, 20, 7, 1, 12, 5, 15, 11, 4)],
    "validation": [_rng.integers(3, 259, size=n).astype(np.int32) for n in (6, 12)],
}
register_token_task(TASK, SEQUENCES)


def config(**knobs) -> teacher_labels.StoreConfig:
    return teacher_labels.StoreConfig(
        TASK, {"targets": LENGTH}, **({"top_k": TOP_K, "batch_size": 4, "examples_per_shard": 3} | knobs)
    )


RECORD = {"path": "teacher", "select": "model", "step": 0, "fingerprint": frozen.fingerprint(PARAMS)}


def build(folder, **knobs) -> dict:
    return teacher_labels.build_store(TEACHER, PARAMS, RECORD, config(**knobs), folder)


def stored_examples(folder) -> list[dict[str, np.ndarray]]:
    return list(teacher_labels.read_store(folder)[1].as_numpy_iterator())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labels")
    return folder, build(folder)


def reference_logits(examples: list[np.ndarray]) -> list[np.ndarray]:
    """Each example's float32 teacher logits [n, vocab], from one call on the examples padded at the end
    (a causal decoder: what follows a position does not change it)."""
    inputs = np.zeros((len(examples), LENGTH), np.int32)
    for row, targets in enumerate(examples):
        inputs[row, 1 : len(targets)] = targets[:-1]
    logits = jax.jit(lambda x: TEACHER.logits_from_hidden(PARAMS, TEACHER.hidden_states(PARAMS, x)))(
        {"decoder_input_tokens": inputs}
    )
    return [np.asarray(logits[row, : len(targets)]) for row, targets in enumerate(examples)]


def reference(logits: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """float64 labels of one example from the teacher's logits of it."""
    logits = logits.astype(np.float64)
    log_p = log_softmax(logits, axis=-1)
    ids = np.argsort(-log_p, axis=-1, kind="stable")[:, :TOP_K]
    masked = log_p.copy()
    np.put_along_axis(masked, ids, -np.inf, axis=-1)
    target = np.take_along_axis(logits, targets[:, None], -1)
    return {
        "ids": ids,
        "log_probs": np.take_along_axis(log_p, ids, -1),
        "log_rest": logsumexp(masked, axis=-1),
        "target_log_prob": np.take_along_axis(log_p, targets[:, None], -1)[:, 0],
        "rank": (logits > target).sum(-1),
    }


def test_stored_labels_are_the_live_teachers_top_k_and_the_true_tokens_log_probability_and_rank(store):
    folder, manifest = store
    examples = stored_examples(folder)
    expected_targets = [s[:LENGTH] for s in SEQUENCES["train"]]
    assert manifest["complete"] and manifest["examples"] == len(examples) == len(expected_targets)
    assert manifest["tokens"] == sum(len(t) for t in expected_targets)
    assert [s["examples"] for s in manifest["shards"]] == [3, 3, 3, 2]
    for stored, targets, logits in zip(examples, expected_targets, reference_logits(expected_targets)):
        np.testing.assert_array_equal(stored["targets"], targets)
        want = reference(logits, targets)
        np.testing.assert_array_equal(stored[TEACHER_IDS], want["ids"])
        # float16: a relative rounding error of at most 2^-11
        np.testing.assert_allclose(stored[TEACHER_LOG_PROBS], want["log_probs"], rtol=2**-11, atol=1e-7)
        np.testing.assert_allclose(stored[TEACHER_LOG_REST], want["log_rest"], rtol=2**-11, atol=1e-7)
        np.testing.assert_allclose(stored["target_log_prob"], want["target_log_prob"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(stored["target_rank"], want["rank"])
    assert manifest["bytes"] == sum((folder / s["file"]).stat().st_size for s in manifest["shards"])


def test_the_labelled_task_carries_each_examples_labels_through_packing(store):
    folder, _ = store
    teacher_labels.register_labelled_task("teacher_labels_test_labelled", [folder])
    by_targets = {tuple(e["targets"]): e for e in stored_examples(folder)}
    rows = seqio.get_dataset(
        "teacher_labels_test_labelled",
        {"targets": 2 * LENGTH},
        pipeline.LMFeatureConverter(pack=True),
        dataset_split="train",
        shuffle=True,
        seed=3,
        num_epochs=1,
        verbose=False,
    ).as_numpy_iterator()
    seen = 0
    for row in rows:
        for segment in np.unique(row["decoder_segment_ids"][row["decoder_segment_ids"] > 0]):
            at = row["decoder_segment_ids"] == segment
            example = by_targets[tuple(row["decoder_target_tokens"][at])]
            ids, log_probs = (row[name].reshape(len(at), TOP_K)[at] for name in (TEACHER_IDS, TEACHER_LOG_PROBS))
            np.testing.assert_array_equal(ids, example[TEACHER_IDS])
            np.testing.assert_array_equal(log_probs, example[TEACHER_LOG_PROBS].astype(np.float32))
            np.testing.assert_array_equal(row[TEACHER_LOG_REST][at], example[TEACHER_LOG_REST].astype(np.float32))
            seen += 1
        padding = row["decoder_segment_ids"] == 0
        ids, log_probs = (row[name].reshape(len(padding), TOP_K)[padding] for name in (TEACHER_IDS, TEACHER_LOG_PROBS))
        assert not ids.any() and not log_probs.any() and not row[TEACHER_LOG_REST][padding].any()
    assert seen == len(SEQUENCES["train"])
    in_order = lambda task: [  # noqa: E731
        (row["decoder_target_tokens"].tolist(), row["decoder_segment_ids"].tolist())
        for row in seqio.get_dataset(
            task, {"targets": LENGTH}, pipeline.LMFeatureConverter(pack=True), shuffle=False, verbose=False
        ).as_numpy_iterator()
    ]
    assert in_order("teacher_labels_test_labelled") == in_order(TASK)  # at the store's length: the source's rows
    validation = seqio.get_mixture_or_task("teacher_labels_test_labelled").get_dataset(
        {"targets": LENGTH}, split="validation", shuffle=False
    )
    assert TEACHER_IDS not in validation.element_spec  # the other splits are the source's


def test_an_interrupted_build_resumes_after_its_finished_shards_and_ends_as_an_uninterrupted_one(
    store, tmp_path, monkeypatch
):
    calls = []
    original = teacher_labels.batch_labels

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("stopped")
        return original(*args, **kwargs)

    monkeypatch.setattr(teacher_labels, "batch_labels", counted)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path)
    partial = teacher_labels.read_manifest(tmp_path)
    assert not partial["complete"] and [s["examples"] for s in partial["shards"]] == [3, 3]  # 8 rows labelled
    with pytest.raises(teacher_labels.StoreError, match="unfinished"):
        teacher_labels.read_store(tmp_path)
    calls.clear()
    monkeypatch.setattr(teacher_labels, "batch_labels", lambda *a, **k: calls.append(1) or original(*a, **k))
    resumed = build(tmp_path)
    assert len(calls) == 2  # examples 6..10: two batches of 4, none before them again
    assert [s["sha256"] for s in resumed["shards"][:2]] == [s["sha256"] for s in partial["shards"]]
    for got, want in zip(stored_examples(tmp_path), stored_examples(store[0]), strict=True):
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6)
    calls.clear()
    assert build(tmp_path)["shards"] == resumed["shards"] and not calls  # complete: nothing to do


def test_a_store_for_another_teacher_task_or_k_and_a_corrupt_shard_are_refused_by_name(store, tmp_path):
    folder, _ = store
    other = dataclasses.replace(config(), top_k=TOP_K + 1)
    with pytest.raises(teacher_labels.StoreError, match=r"top_k \(8 there, 9 here\)"):
        teacher_labels.build_store(TEACHER, PARAMS, RECORD, other, folder)
    with pytest.raises(teacher_labels.StoreError, match="teacher fingerprint"):
        teacher_labels.build_store(TEACHER, PARAMS, {**RECORD, "fingerprint": "another"}, config(), folder)
    with pytest.raises(teacher_labels.StoreError, match="split"):
        teacher_labels.build_store(TEACHER, PARAMS, RECORD, config(split="validation"), folder)
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    shard = copy / teacher_labels.read_manifest(copy)["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[40] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(teacher_labels.StoreError, match=shard.name):
        teacher_labels.read_store(copy)
    (copy / teacher_labels.MANIFEST_FILE).write_text(json.dumps({"task": TASK}))
    with pytest.raises(teacher_labels.StoreError, match="lacks format"):
        teacher_labels.read_store(copy)


def test_knobs_and_tasks_the_store_cannot_use_are_refused_before_the_teacher_is_read():
    with pytest.raises(teacher_labels.ConfigError, match="top_k must be an integer >= 1"):
        config(top_k=0)
    with pytest.raises(teacher_labels.ConfigError, match="no split 'test'"):
        teacher_labels.check_task(config(split="test"), VOCAB)
    with pytest.raises(teacher_labels.ConfigError, match="top_k 300 is above"):
        teacher_labels.check_task(config(top_k=300), VOCAB)
    with pytest.raises(teacher_labels.ConfigError, match="decoder LM Tasks only"):
        teacher_labels.check_task(dataclasses.replace(config(), task="docstrings_prefix_lm"), VOCAB)


def test_labels_made_from_the_store_equal_top_k_labels_of_the_same_logits(store):
    """The objectives' reading of a batch (`stored_teacher_labels`) gives `losses.TopKLabels` whose
    sparse divergence matches the one of labels computed live, up to float16 rounding."""
    from littlehelp.objectives import stored_teacher_labels

    folder, _ = store
    example = stored_examples(folder)[1]
    flat = lambda x: x.reshape(1, -1)  # noqa: E731  as the feature converters give them
    batch = {
        TEACHER_IDS: flat(example[TEACHER_IDS]),
        TEACHER_LOG_PROBS: flat(example[TEACHER_LOG_PROBS]).astype(np.float32),
        TEACHER_LOG_REST: example[TEACHER_LOG_REST][None].astype(np.float32),
    }
    labels = stored_teacher_labels(batch)
    logits = reference_logits([example["targets"]])[0][None]
    live = losses.top_k_labels(logits, TOP_K)
    student = jax.random.normal(jax.random.key(0), logits.shape)
    weights = np.ones(logits.shape[:2], np.float32)
    np.testing.assert_allclose(
        losses.sparse_divergence("fkl", student, labels, weights),
        losses.sparse_divergence("fkl", student, live, weights),
        rtol=2e-3,
    )
