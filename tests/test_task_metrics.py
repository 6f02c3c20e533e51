"""`inference.task_metrics` (what `littlehelp eval` adds for a task with metric functions): every
validation example decoded once, in order, the padded last batch included, each prediction equal to
decoding that example alone, and the task's postprocessor and metric functions applied to the texts."""

import functools
import json

import numpy as np
import pytest
import seqio
import tensorflow as tf

from littlehelp import inference, partitioning, trainer
from littlehelp.data import DatasetConfig
from littlehelp.data.tasks import BYTE_VOCABULARY
from littlehelp.models import build_model
from littlehelp.objectives import EncoderDecoderObjective
from tests.helpers import TINY_T5, random_params, save_params_only

TASK = "test_task_metrics_echo"
EXAMPLES = [{"inputs": f"question {i}", "targets": "ab" * (i % 4 + 1)} for i in range(11)]  # 11: not a batch multiple


def _mean_length(targets: list[str], predictions: list[str]) -> dict[str, float]:
    return {
        "mean_length": float(np.mean([len(p) for p in predictions])),
        "upper_targets": float(np.mean([t == t.upper() != t.lower() for t in targets])),
    }


def _register() -> None:
    if TASK in seqio.TaskRegistry.names():
        return
    features = {k: seqio.Feature(BYTE_VOCABULARY, add_eos=True) for k in ("inputs", "targets")}
    dataset = lambda split, shuffle_files=False, seed=None: tf.data.Dataset.from_tensor_slices(  # noqa: E731
        {k: [e[k] for e in EXAMPLES] for k in ("inputs", "targets")}
    )
    seqio.TaskRegistry.add(
        TASK,
        source=seqio.FunctionDataSource(dataset, splits=["validation"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features=features,
        postprocess_fn=lambda text, **_: text.upper(),
        metric_fns=[_mean_length],
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    _register()
    folder = tmp_path_factory.mktemp("run")
    model = build_model(TINY_T5)
    params = random_params(model, seed=3)
    save_params_only(params, folder)
    data = DatasetConfig(
        TASK, {"inputs": 16, "targets": 8}, batch_size=4, split="validation", shuffle=False, repeat=False
    )
    metrics = trainer.evaluate(
        model_dir=str(folder),
        eval_data=data,
        objective=EncoderDecoderObjective(model),
        eval_batches=1,
        mesh_config=partitioning.MeshConfig(1, 1, 1),
        task_metrics=functools.partial(inference.task_metrics, model=model),
    )
    records = [json.loads(line) for line in (folder / "eval_predictions.jsonl").read_text().splitlines()]
    return model, params, data, metrics, records


def test_every_example_is_decoded_once_in_order(evaluated):
    _, _, _, _, records = evaluated
    assert [r["input"] for r in records] == [e["inputs"] for e in EXAMPLES]
    assert [r["target"] for r in records] == [e["targets"] for e in EXAMPLES]


def test_each_prediction_equals_decoding_the_example_alone(evaluated):
    model, params, data, _, records = evaluated
    every = inference.first_examples(data, len(EXAMPLES))
    for index in (0, 9, 10):  # a full batch's first row and the padded last batch's rows
        batch = {k: v[index : index + 1] for k, v in every.items()}
        _, prediction = inference.decode_examples(
            model, params, batch, inference.DecodingConfig(max_decode_length=8), BYTE_VOCABULARY.eos_id
        )
        assert inference._text(BYTE_VOCABULARY, prediction[0]) == records[index]["prediction"]


def test_metrics_apply_the_postprocessor_to_targets_and_predictions(evaluated):
    _, _, _, metrics, records = evaluated
    assert metrics["task/mean_length"] == pytest.approx(np.mean([len(r["prediction"]) for r in records]))
    assert metrics["task/upper_targets"] == 1.0  # the raw targets are lower case
    assert np.isfinite(metrics["loss"])


def test_max_examples_stops_early(evaluated):
    model, params, data, _, records = evaluated
    assert inference.decode_split(model, params, data, max_examples=5) == records[:5]


def test_spread_examples_take_the_middle_of_equal_parts_of_the_split(evaluated):
    _, _, data, _, _ = evaluated
    every = inference.first_examples(data, len(EXAMPLES))
    spread = inference.spread_examples(data, 3)
    middles = [int((i + 0.5) * len(EXAMPLES) / 3) for i in range(3)]  # 1, 5, 9 of 11
    assert middles == [1, 5, 9]
    for key, values in spread.items():
        np.testing.assert_array_equal(values, every[key][middles])
    with pytest.raises(ValueError, match="fewer than 12 examples"):
        inference.spread_examples(data, 12)
