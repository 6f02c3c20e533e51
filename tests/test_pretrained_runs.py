"""The real SmolLM2-135M through the CLI: `infer` with the pretrained gin file continues a prompt as HF
transformers does on the same GGUF file, and `train` fine-tunes it from its converted folder (the
first step's loss is the imported model's, and the loss on the batch it trained on drops)."""

import gin
import jax
import numpy as np
import pytest
import torch

from littlehelp import checkpoints, main, metrics, partitioning
from littlehelp.data import DatasetConfig, GlobalBatches
from littlehelp.models.convert import run_folder
from littlehelp.objectives import DecoderObjective

PRETRAINED_GIN = "--gin_file=models/pretrained/smollm2_135m.gin"


@pytest.fixture(scope="module")
def smollm2_folder(smollm2):
    """The converted folder the pretrained gin file points at (written from the session's import)."""
    return run_folder.converted("smollm2_135m", imported=smollm2)


def test_infer_with_the_pretrained_gin_file_continues_like_hf(
    smollm2_folder, hf_smollm2, smollm2, tmp_path, monkeypatch
):
    prompt, new_tokens = "The capital of France is", 8
    monkeypatch.chdir(tmp_path)  # its output goes to runs/infer/smollm2_135m there, not into the data cache
    records = main.main(
        [
            "infer",
            PRETRAINED_GIN,
            f"--gin.PROMPT='{prompt}'",
            f"--gin.inference.DecodingConfig.max_decode_length={new_tokens}",
        ]
    )
    ids = torch.tensor([smollm2.vocabulary.encode(prompt)])
    with torch.no_grad():
        reference = hf_smollm2.generate(ids, max_new_tokens=new_tokens, do_sample=False)[0, ids.shape[1] :]
    expected = smollm2.vocabulary.decode([int(t) for t in reference if int(t) != smollm2.vocabulary.eos_id])
    assert records[0]["prediction"] == expected
    assert expected.startswith(" Paris")
    assert (tmp_path / "runs" / "infer" / "smollm2_135m" / "inference.jsonl").is_file()


def first_batch_loss(model, params, data: DatasetConfig) -> float:
    batch = next(iter(GlobalBatches(data, partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1)))))
    return float(DecoderObjective(model).loss({"model": params}, batch, jax.random.key(0), 0)[0])


def test_finetuning_smollm2_from_its_converted_folder(smollm2_folder, smollm2, tmp_path):
    run = tmp_path / "finetune"
    main.main(
        [
            "train",
            PRETRAINED_GIN,
            "--gin_file=runs/finetune.gin",
            f"--gin.INITIAL_CHECKPOINT_PATH={smollm2_folder}",
            f"--gin.MODEL_DIR={run}",
            "--gin.TASK=@tasks.text_task()",
            "--gin.tasks.text_task.name='shakespeare_lm'",
            "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
            "--gin.BATCH_SIZE=2",
            "--gin.TRAIN_STEPS=2",
            "--gin.partitioning.MeshConfig.data=1",
            "--gin.trainer.train.eval_every=0",
            "--gin.trainer.train.log_every=1",
            "--gin.trainer.train.peak_flops_per_device=1e9",
        ]
    )
    data = DatasetConfig("smollm2_135m.shakespeare_lm", {"targets": 32}, 2, feature_converter="lm")
    before = first_batch_loss(smollm2.model, smollm2.params, data)
    logged = next(r for r in metrics.read_jsonl(run / "metrics.jsonl") if r["step"] == 1)
    np.testing.assert_allclose(logged["train/loss"], before, rtol=1e-4)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), smollm2.params)
    tuned, step = checkpoints.restore_params(run, abstract, select="model")
    assert step == 2
    assert first_batch_loss(smollm2.model, tuned, data) < before - 0.05


@pytest.mark.parametrize("name", ["smollm2_135m", "minilm_l6"])
def test_pretrained_gin_files_bind_the_config_the_import_reads(name, smollm2, minilm_dir):
    """littlehelp/gin/models/pretrained/<name>.gin states the imported model's config (a stale binding would fail)."""
    from littlehelp import config as gin_config
    from littlehelp.models import convert

    imported = smollm2 if name == "smollm2_135m" else convert.load(minilm_dir)
    gin_config.import_configurable_modules()
    gin_config.parse_gin([f"models/pretrained/{name}.gin"], [], [])
    assert gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn() == imported.config
