"""A converted model folder (`littlehelp convert`'s output) through the CLI: `eval` reads it as a run
folder, `train` fine-tunes from it as INITIAL_CHECKPOINT_PATH with a fresh optimizer, a folder that
is not empty is refused with one line. The model here is a tiny T5 with random parameters (the
real imports are tested in tests/models/)."""

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from littlehelp import checkpoints, main, metrics, partitioning
from littlehelp.data import GlobalBatches
from littlehelp.models import build_model, convert
from littlehelp.models.convert import Pretrained, run_folder
from littlehelp.objectives import EncoderDecoderObjective
from tests.helpers import TINY_DECODER, TINY_T5, random_params, t5_data

DATA = [
    "--gin.TASK='docstrings_prefix_lm'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}",
    "--gin.BATCH_SIZE=8",
    "--gin.partitioning.MeshConfig.data=1",
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(folder, params): a random tiny T5 written as a converted run folder."""
    model = build_model(TINY_T5)
    example = {
        "encoder_input_tokens": jnp.zeros((1, 8), jnp.int32),
        "decoder_input_tokens": jnp.zeros((1, 8), jnp.int32),
    }
    params = jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.key(7), example)))
    folder = tmp_path_factory.mktemp("converted") / "tiny_t5"
    run_folder.write_run_folder(Pretrained("t5", TINY_T5, model, params, None, "random tiny T5"), folder)
    return folder, params


def first_batch_loss(params, data) -> float:
    """The objective's loss of `params` on the first batch of `data`, computed here."""
    batch = next(iter(GlobalBatches(data, partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1)))))
    objective = EncoderDecoderObjective(build_model(TINY_T5))
    return float(objective.loss({"model": params}, batch, jax.random.key(0), 0)[0])


def test_eval_reads_a_converted_folder_as_a_run_folder(converted):
    folder, params = converted
    result = main.main(
        [
            "eval",
            f"--gin_file={folder / 'model.gin'}",
            "--gin_file=runs/pretrain.gin",
            "--gin_file=runs/eval.gin",
            "--gin.EVAL_BATCHES=1",
            f"--gin.MODEL_DIR={folder}",
            "--gin.TRAIN_STEPS=0",
            *DATA,
        ]
    )
    expected = first_batch_loss(params, t5_data(batch_size=8).evaluation())
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)


def test_finetuning_starts_from_the_converted_parameters_with_a_fresh_optimizer(converted, tmp_path):
    folder, params = converted
    run = tmp_path / "finetune"
    main.main(
        [
            "train",
            f"--gin_file={folder / 'model.gin'}",
            "--gin_file=runs/finetune.gin",
            f"--gin.INITIAL_CHECKPOINT_PATH={folder}",
            f"--gin.MODEL_DIR={run}",
            "--gin.TRAIN_STEPS=1",
            "--gin.trainer.train.eval_every=0",
            "--gin.trainer.train.log_every=1",
            "--gin.trainer.train.peak_flops_per_device=1e9",
            *DATA,
        ]
    )
    logged = metrics.read_jsonl(run / "metrics.jsonl")
    step_one = next(r for r in logged if r["step"] == 1)
    np.testing.assert_allclose(step_one["train/loss"], first_batch_loss(params, t5_data(batch_size=8)), rtol=1e-5)


def test_a_folder_that_is_not_empty_is_refused_and_left_as_it_was(converted, tmp_path, capsys):
    folder, _ = converted
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as stopped:
        main.main(["convert", f"--from={folder}", f"--to={target}"])
    assert stopped.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"littlehelp: error: {target} is not empty; choose a new folder for the converted model"
    )
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_convert_cli_writes_the_imported_parameters_and_a_model_gin_that_rebuilds_the_config(tmp_path):
    from littlehelp import config as gin_config
    from tests.models.test_convert_llama import hf_model

    hf_dir = tmp_path / "hf"
    hf_model("llama", tied=False).save_pretrained(hf_dir)
    folder = main.main(["convert", f"--from={hf_dir}", f"--to={tmp_path / 'out'}"])
    imported = convert.load(hf_dir)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), imported.params)
    saved, step = checkpoints.restore_params(folder, abstract, select="model")
    assert step == 0
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(saved), imported.params)
    gin_config.import_configurable_modules()
    gin_config.parse_gin([str(folder / "model.gin")], [], [])
    assert gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn() == imported.config


@pytest.fixture(scope="module")
def converted_with_vocabulary(tmp_path_factory):
    """A random tiny decoder with a six-word vocabulary, written as a converted run folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from littlehelp.data.hf_vocab import TokenizerVocabulary

    words = ["<pad>", "<eos>", "<unk>", "hello", "world", "again"]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    vocabulary = TokenizerVocabulary(tokenizer, {"eos_token": "<eos>", "unk_token": "<unk>"})
    model = build_model(TINY_DECODER)
    folder = tmp_path_factory.mktemp("converted") / "tiny_decoder"
    pretrained = Pretrained("llama", TINY_DECODER, model, random_params(model, 0), vocabulary, "random tiny decoder")
    return run_folder.write_run_folder(pretrained, folder)


def test_infer_decodes_a_prompt_with_the_converted_folder_model_gin_alone(
    converted_with_vocabulary, tmp_path, monkeypatch
):
    folder = converted_with_vocabulary
    monkeypatch.chdir(tmp_path)  # MODEL_DIR defaults to runs/infer/<folder name> under the working folder
    records = main.main(
        [
            "infer",
            f"--gin_file={folder / 'model.gin'}",
            "--gin.PROMPT='hello world'",
            "--gin.inference.DecodingConfig.max_decode_length=4",
        ]
    )
    (record,) = records
    assert record["prompt"] == "hello world"  # as the model read it
    assert set(record["prediction"].split()) <= {"hello", "world", "again", "<unk>", "<pad>"}
    assert (tmp_path / "runs" / "infer" / folder.name / "inference.jsonl").is_file()
    assert not (folder / "inference.jsonl").exists()  # nothing written into the converted folder


def test_infer_with_runs_infer_gin_on_a_converted_folder_names_the_unset_data_values(converted_with_vocabulary, capsys):
    folder = converted_with_vocabulary
    with pytest.raises(SystemExit) as stopped:
        main.main(
            ["infer", f"--gin_file={folder / 'model.gin'}", "--gin_file=runs/infer.gin", f"--gin.MODEL_DIR={folder}"]
        )
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "littlehelp: error: required value(s) not set: validation/pipeline.DatasetConfig.name, "
        "validation/pipeline.DatasetConfig.task_feature_lengths, validation/pipeline.DatasetConfig.batch_size"
    )
