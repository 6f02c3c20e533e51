"""Resuming the input stream from the tf.data iterator's saved state (shuffle and packing buffers
included) instead of replaying every batch before it: the same batches as the uninterrupted stream,
from a position the state alone fixes, through a checkpoint and on another device count."""

import logging
import pathlib
import shutil
from collections.abc import Callable

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from littlehelp import checkpoints, partitioning
from littlehelp.data import DatasetConfig, GlobalBatches, pipeline, tasks

from .fixtures import BYTE_SENTINEL_VOCABULARY, generated_documents, register_generated_tasks


def _config(**changes) -> DatasetConfig:
    settings = dict(
        name=f"{register_generated_tasks()}_span_corruption",
        task_feature_lengths={"inputs": 64, "targets": 14},
        batch_size=8,
        seed=3,
    )
    return DatasetConfig(**{**settings, **changes})


def _mesh(data: int) -> jax.sharding.Mesh:
    return partitioning.make_mesh(partitioning.MeshConfig(data=data, fsdp=1, tensor=1))


def _tokens(batches: GlobalBatches, count: int) -> list[np.ndarray]:
    return [np.asarray(next(batches)["encoder_input_tokens"]) for _ in range(count)]


def test_saved_state_resumes_the_stream_where_it_stopped_not_where_the_count_says(tmp_path):
    """Saved after 3 batches, the state alone sets the position: a resume point that claims batch
    10**6 (which a replay could not reach in a test's time) still continues with batch 3, on 2 devices
    after 8, with the count carried on. A stream opened by replaying saves a state that reads back too."""
    straight = GlobalBatches(_config(), _mesh(8))
    _tokens(straight, 3)
    saved = straight.iterator_checkpoint().write(str(tmp_path / "straight"))
    want = _tokens(straight, 2)
    resumed = GlobalBatches(_config(), _mesh(2), pipeline.ResumePoint(10**6, saved))
    assert all(np.array_equal(a, b) for a, b in zip(_tokens(resumed, 2), want, strict=True))
    assert resumed.batches_consumed == 10**6 + 2
    replayed = GlobalBatches(_config(), _mesh(1), pipeline.ResumePoint(3))
    assert np.array_equal(_tokens(replayed, 1)[0], want[0])
    saved_after_replay = replayed.iterator_checkpoint().write(str(tmp_path / "replayed"))
    resumed_again = GlobalBatches(_config(), _mesh(1), pipeline.ResumePoint(10**6, saved_after_replay))
    assert np.array_equal(_tokens(resumed_again, 1)[0], want[1])


@pytest.fixture(scope="module")
def state_after_two_batches(tmp_path_factory) -> tuple[pathlib.Path, list[np.ndarray]]:
    """The files of a stream's iterator state saved after 2 batches, and the stream's batches 2 and 3."""
    folder = tmp_path_factory.mktemp("saved")
    straight = GlobalBatches(_config(), _mesh(1))
    _tokens(straight, 2)
    straight.iterator_checkpoint().write(str(folder / "iterator"))
    return folder, _tokens(straight, 2)


def _cut(suffix: str, keep: Callable[[int], int]) -> Callable[[pathlib.Path], None]:
    """A damage that keeps the first `keep(size)` bytes of the state's file ending in `suffix`."""

    def damage(prefix: pathlib.Path) -> None:
        path = next(prefix.parent.glob(f"{prefix.name}{suffix}"))
        path.write_bytes(path.read_bytes()[: keep(path.stat().st_size)])

    return damage


@pytest.mark.parametrize(
    "damage",
    [
        lambda prefix: prefix.with_name(prefix.name + ".index").write_bytes(b"not a checkpoint"),
        _cut(".index", lambda size: 0),
        _cut(".data-*", lambda size: 0),
        _cut(".data-*", lambda size: size // 2),
        _cut(".data-*", lambda size: size - 1),
    ],
    ids=["overwritten index", "emptied index", "emptied data", "data cut in half", "data short of its last byte"],
)
def test_unreadable_state_falls_back_to_replaying_with_a_warning(tmp_path, caplog, state_after_two_batches, damage):
    """Whatever makes the saved state unreadable, the stream replays to the same batches an
    uninterrupted one gives, and one warning names the state's files."""
    saved, want = state_after_two_batches
    shutil.copytree(saved, tmp_path / "state")
    prefix = tmp_path / "state" / "iterator"
    damage(prefix)
    with caplog.at_level(logging.WARNING):
        resumed = GlobalBatches(_config(), _mesh(1), pipeline.ResumePoint(2, str(prefix)))
        got = _tokens(resumed, 2)
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "iterator" in r.getMessage()]
    assert len(warnings) == 1 and f"the input iterator state {prefix} does not read back" in warnings[0]
    assert "replaying 2 batches instead" in warnings[0]


def _two_batches_in(stages: pipeline.DataStages) -> pipeline.StagedBatches:
    batches = pipeline.StagedBatches(stages, _mesh(1), step=0)
    for step in range(2):
        batches.batch_for(step)
    return batches


def _saved_and_resumed(
    tmp_path, stages: pipeline.DataStages, batches: pipeline.StagedBatches, feature: str
) -> tuple[pipeline.ResumePoint, dict, np.ndarray, np.ndarray]:
    """Saves `batches` as step 2 through a Checkpointer, restores it through another (as a resumed
    run does) and resumes the stream: (resume point, restored data state, batch 2 of the
    uninterrupted stream, batch 2 of the resumed one)."""
    config = checkpoints.CheckpointConfig(async_save=False)
    ckpt = checkpoints.Checkpointer(str(tmp_path / "ckpt"), config)
    state = {"w": jax.numpy.arange(3.0)}
    assert ckpt.save(2, state, batches.state(), force=True, iterator=batches.iterator_checkpoint())
    ckpt.close()
    want = np.asarray(batches.batch_for(2)[feature])
    ckpt = checkpoints.Checkpointer(str(tmp_path / "ckpt"), config)
    _, data_state, step = ckpt.restore(jax.eval_shape(lambda: state))
    ckpt.close()
    point = pipeline.resume_position(stages, step, data_state)
    resumed = pipeline.StagedBatches(stages, _mesh(1), step=2, resume=point)
    return point, data_state, want, np.asarray(resumed.batch_for(2)[feature])


def test_checkpoint_carries_the_state_and_resume_uses_it_only_for_the_same_stream(tmp_path, caplog):
    """The state comes back through a checkpoint, and orbax restores it without a warning."""
    stages = [(0, _config())]
    with caplog.at_level(logging.WARNING):
        point, data_state, want, got = _saved_and_resumed(
            tmp_path, stages, _two_batches_in(stages), "encoder_input_tokens"
        )
    assert [r.getMessage() for r in caplog.records if "orbax" in r.pathname and r.levelno >= logging.WARNING] == []
    assert point.batch == 2 and point.iterator_state == data_state[checkpoints.ITERATOR_STATE]
    assert np.array_equal(got, want)
    other_seed = [(0, _config(seed=4))]
    assert pipeline.resume_position(other_seed, 2, data_state) == (2, None)


def _generator_source(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    """The generated documents through a Python generator, as in-memory Tasks build theirs."""
    documents = generated_documents(split)
    return tf.data.Dataset.from_generator(
        lambda: ({"text": d} for d in documents), output_signature={"text": tf.TensorSpec((), tf.string)}
    )


def test_a_pipeline_tf_data_cannot_save_gives_no_state_and_resumes_by_replaying(tmp_path, caplog):
    source = seqio.FunctionDataSource(_generator_source, splits=["train"])
    name = tasks.register_text_tasks("from_generator", source, BYTE_SENTINEL_VOCABULARY, shuffle_buffer_size=64)[2]
    stages = [(0, _config(name=name, task_feature_lengths={"targets": 32}, feature_converter="lm"))]
    batches = _two_batches_in(stages)
    with caplog.at_level(logging.INFO):
        assert batches.iterator_checkpoint() is None
    assert f"the input iterator of {name} cannot be saved" in caplog.text
    point, _, want, got = _saved_and_resumed(tmp_path, stages, batches, "decoder_target_tokens")
    assert point == (2, None) and np.array_equal(got, want)
