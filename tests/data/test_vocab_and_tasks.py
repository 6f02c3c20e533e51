"""Vocabulary (T5 ids, sentinels at the top, lossless byte fallback), task registrations, TFDS c4 via
mock data, the mixture, and global batches that resume exactly and carry the host batch."""

import re

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from littlehelp import partitioning
from littlehelp.config import ConfigError
from littlehelp.data import DatasetConfig, GlobalBatches, pipeline, tasks, vocab

from .fixtures import BYTE_SENTINEL_VOCABULARY, generated_documents, register_generated_tasks, requires_corpus

EXPECTED_TASKS = [
    f"{source}_{objective}"
    for source in ("shakespeare", "code", "c4")
    for objective in ("span_corruption", "lm", "prefix_lm")
]


def test_small_sentencepiece_has_t5_ids_and_sentinels_at_the_top(tmp_path):
    lines = [line for doc in generated_documents("train") for line in doc.split(" of ")]
    model = vocab.train_sentencepiece(lines, tmp_path / "small.model", vocab_size=300)
    vocabulary = seqio.SentencePieceVocabulary(str(model), extra_ids=100)
    assert vocabulary.vocab_size == 400 and (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
    assert vocabulary.encode("<extra_id_0>") == [399] and vocabulary.encode("<extra_id_99>") == [300]
    unusual = "naïve café — ∑ 日本"  # unseen characters (NFKC-stable): byte fallback keeps them exact
    assert vocabulary.decode(vocabulary.encode(unusual)) == unusual and 2 not in vocabulary.encode(unusual)


def test_tasks_and_mixtures_are_registered():
    assert set(EXPECTED_TASKS) <= set(seqio.TaskRegistry.names())
    mixture = seqio.get_mixture_or_task("shakespeare_code_span_corruption")
    assert sorted(t.name for t in mixture.tasks) == ["code_span_corruption", "shakespeare_span_corruption"]


def test_c4_task_reads_tfds_with_mock_data():
    # The registered c4 task, rebuilt with the byte vocabulary so that no data cache is needed.
    c4 = seqio.get_mixture_or_task("c4_span_corruption")
    assert isinstance(c4.source, seqio.TfdsDataSource) and c4.source.tfds_dataset.name == tasks.C4_TFDS_NAME
    names = tasks.register_text_tasks("mock_c4", c4.source, BYTE_SENTINEL_VOCABULARY)
    with tfds.testing.mock_data(num_examples=20):
        task = seqio.get_mixture_or_task(names[0])
        examples = list(
            task.get_dataset(
                {"inputs": 64, "targets": 14}, split="validation", shuffle=False, seed=0, try_in_mem_cache=False
            ).as_numpy_iterator()
        )
    assert examples and all(
        len(e["inputs"]) <= 64 and e["targets"][0] == BYTE_SENTINEL_VOCABULARY.vocab_size - 1 for e in examples
    )


def _first_host_batch(name: str, lengths: dict) -> dict:
    config = DatasetConfig(name, lengths, batch_size=8, seed=3)
    return next(pipeline.host_dataset(config).as_numpy_iterator())


def test_global_batches_are_sharded_over_the_data_axis():
    prefix = register_generated_tasks()
    mesh = partitioning.make_mesh(partitioning.MeshConfig(data=-1, fsdp=1, tensor=1))
    config = DatasetConfig(f"{prefix}_span_corruption", {"inputs": 64, "targets": 14}, batch_size=8, seed=3)
    batch = next(GlobalBatches(config, mesh))
    host = _first_host_batch(config.name, dict(config.task_feature_lengths))
    tokens = batch["encoder_input_tokens"]
    assert tokens.sharding == partitioning.batch_sharding(mesh) and len(tokens.addressable_shards) == 8
    assert {s.data.shape for s in tokens.addressable_shards} == {(1, 64)}
    assert np.array_equal(np.asarray(tokens), host["encoder_input_tokens"])


# Simulated process of each device: in blocks of 4 (jax orders devices by process), alternating, in pairs.
SIMULATED_PROCESSES = {"blocks": lambda d: d.id // 4, "alternating": lambda d: d.id % 2, "pairs": lambda d: d.id // 2}


@pytest.mark.parametrize("processes", sorted(SIMULATED_PROCESSES))
@pytest.mark.parametrize("shape", [(2, 4, 1), (2, 2, 2), (1, 8, 1)])
def test_rows_kept_by_simulated_processes_rebuild_the_global_batch(shape, processes):
    """Each simulated process keeps `local_rows` of its devices' slices; laid out as
    `make_array_from_process_local_data` documents (a process's slices in increasing order, each
    once), every device gets its own rows of the single-process global batch."""
    global_batch = np.arange(8 * 3).reshape(8, 3)  # row i holds 3i..3i+2
    mesh = partitioning.make_mesh(partitioning.MeshConfig(*shape))
    indices = partitioning.batch_sharding(mesh).devices_indices_map((8,))
    process_of = SIMULATED_PROCESSES[processes]
    kept = {}
    for process in sorted({process_of(d) for d in indices}):
        slices = [index[0] for d, index in indices.items() if process_of(d) == process]
        rows = kept[process] = pipeline.local_rows(slices, 8)
        local = global_batch[rows]
        starts = sorted({s.start for s in slices})
        for s in slices:
            size = s.stop - s.start
            position = starts.index(s.start) * size
            assert np.array_equal(local[position : position + size], global_batch[s])
    assert set(np.concatenate(list(kept.values())).tolist()) == set(range(8))
    if processes == "blocks":  # contiguous blocks in process order: the local batches concatenate to the global one
        assert np.array_equal(np.concatenate([global_batch[kept[p]] for p in sorted(kept)]), global_batch)


def test_one_process_keeps_every_row_in_order():
    sharding = partitioning.batch_sharding(partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2)))
    assert pipeline.process_rows(sharding, 8).tolist() == list(range(8))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "DatasetConfig.batch_size must be positive, got 0"),
        ({"batch_size": -8}, "DatasetConfig.batch_size must be positive, got -8"),
        (
            {"task_feature_lengths": {"inputs": 64, "targets": 0}},
            "DatasetConfig.task_feature_lengths['targets'] must be positive, got 0",
        ),
        (
            {"task_feature_lengths": {"inputs": -1, "targets": 14}},
            "DatasetConfig.task_feature_lengths['inputs'] must be positive, got -1",
        ),
        (
            {"feature_converter": "enc_dec"},
            "DatasetConfig.feature_converter='enc_dec'; choose one of ['encoder_decoder', 'lm']",
        ),
        (
            {"name": "generated_span_corruptoin"},
            "DatasetConfig.name='generated_span_corruptoin' is not a registered "
            "seqio Task or Mixture; did you mean 'generated_span_corruption'?",
        ),
    ],
)
def test_dataset_config_refuses_sizes_below_one_and_unknown_names(changes, message):
    fields = {
        "name": f"{register_generated_tasks()}_span_corruption",
        "task_feature_lengths": {"inputs": 64, "targets": 14},
        "batch_size": 8,
        **changes,
    }
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        DatasetConfig(**fields)
    assert error.value.one_line() == message  # what the CLI prints (gin appends the configurable below)


def test_unloadable_vocabulary_is_reported_by_file_before_the_pipeline_is_traced(tmp_path):
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    names = tasks.register_text_tasks(
        "garbage_vocab",
        tasks.TextSource(generated_documents),
        seqio.SentencePieceVocabulary(str(garbage), extra_ids=100),
    )
    config = DatasetConfig(names[0], {"inputs": 64, "targets": 14}, batch_size=8)
    message = (
        f"vocabulary {garbage} cannot be loaded: DecodeError: Error parsing message with type "
        "'sentencepiece.ModelProto': Wire format was corrupt"
    )
    with pytest.raises(vocab.VocabularyError, match=re.escape(message) + "$"):
        pipeline.host_dataset(config)


@requires_corpus
def test_default_vocabulary_and_real_span_corruption():
    vocabulary = vocab.default_vocabulary()
    assert vocabulary.vocab_size == vocab.VOCAB_PIECES + vocab.NUM_SENTINELS <= vocab.MODEL_VOCAB_SIZE
    assert vocabulary.encode("<extra_id_0>") == [vocabulary.vocab_size - 1]
    task = seqio.get_mixture_or_task("shakespeare_span_corruption")
    dataset = task.get_dataset({"inputs": 512, "targets": 114}, split="validation", shuffle=False, seed=0)
    examples = [e for _, e in zip(range(20), dataset.as_numpy_iterator())]
    assert all(len(e["inputs"]) == 512 and len(e["targets"]) == 114 for e in examples)
    assert all(np.sum(e["inputs"] >= vocab.VOCAB_PIECES) == 28 for e in examples)  # 85 noise tokens in 28 spans
    text = vocabulary.decode(examples[0]["inputs"].tolist())
    assert "<extra_id_0>" in text and sum(c.isalpha() for c in text) > len(text) // 2


@requires_corpus
def test_real_lm_task_yields_full_examples_of_corpus_tokens():
    dataset = seqio.get_mixture_or_task("shakespeare_lm").get_dataset(
        {"targets": 64}, split="validation", shuffle=False, seed=0
    )
    examples = [e["targets"] for _, e in zip(range(8), dataset.as_numpy_iterator())]
    assert all(len(e) == 64 and max(e) < vocab.VOCAB_PIECES for e in examples)  # no sentinels in LM data
