"""`littlehelp.runs.load_run`: a run folder's model, parameters (the newest step or the one asked for),
vocabulary and config, sharded on a mesh by the logical-axis rules; one-line errors naming the folder."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from littlehelp import checkpoints, partitioning, runs
from littlehelp.models import DecoderConfig, build_model
from littlehelp.models.convert import Pretrained
from littlehelp.models.convert.run_folder import ParamsOnlyState, gin_bindings, write_run_folder
from tests.helpers import TINY_T5, random_params

CONFIG = DecoderConfig(vocab_size=32, emb_dim=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
WORDS = ["<pad>", "<eos>", "<unk>", *(f"w{i}" for i in range(3, 32))]


def word_vocabulary():
    """A 32-word vocabulary (0 padding, 1 EOS, 2 unknown)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from littlehelp.data.hf_vocab import TokenizerVocabulary

    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return TokenizerVocabulary(tokenizer, {"eos_token": "<eos>", "unk_token": "<unk>"})


def save_step(folder, step, params, key="model"):
    """A parameters-only checkpoint of `step` in `folder`/checkpoints (as `littlehelp convert` writes step 0)."""
    checkpointer = checkpoints.Checkpointer(str(folder / "checkpoints"), checkpoints.CheckpointConfig(async_save=False))
    checkpointer.save(
        step, ParamsOnlyState(np.asarray(step, np.int32), {key: params}), {"batches_consumed": 0}, force=True
    )
    checkpointer.close()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """`converted`: a decoder written by `write_run_folder` (step 0, vocabulary/) and given a step 3 with other
    parameters; `trained`: a T5 whose config.gin (a training run's file name) binds MODEL_KEY 't5' and takes
    its VOCABULARY from the converted folder; the parameters of each step."""
    root = tmp_path_factory.mktemp("runs")
    model = build_model(CONFIG)
    params = {step: random_params(model, step) for step in (0, 3)}
    converted = write_run_folder(
        Pretrained("llama", CONFIG, model, params[0], word_vocabulary(), "random"), root / "converted"
    )
    save_step(converted, 3, params[3])
    trained = root / "trained"
    t5_params = random_params(build_model(TINY_T5), 5)
    save_step(trained, 7, t5_params, key="t5")
    (trained / "config.gin").write_text(
        "\n".join(
            [
                "import littlehelp.models.t5",
                "import littlehelp.models.convert.run_folder",
                "MODEL_CONFIG = @t5.T5Config()",
                *gin_bindings(TINY_T5),
                "MODEL_KEY = 't5'",
                "VOCABULARY = @convert.folder_vocabulary()",
                f"convert.folder_vocabulary.model_dir = '{converted}'",
                "",
            ]
        )
    )
    return {"converted": converted, "trained": trained, "params": params, "t5_params": t5_params}


def assert_equal_trees(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(actual), expected)


def test_a_converted_folder_loads_its_newest_step_or_the_step_asked_for(folders):
    folder = folders["converted"]
    run = runs.load_run(folder)
    assert run.step == 3 and run.folder == folder and run.model.config == CONFIG
    assert_equal_trees(run.params, folders["params"][3])
    assert run.config == (folder / "model.gin").read_text()
    assert run.vocabulary.pieces_fingerprint == word_vocabulary().pieces_fingerprint
    first = runs.load_run(folder, step=0)
    assert first.step == 0
    assert_equal_trees(first.params, folders["params"][0])
    assert runs.open_run(folder).steps == [0, 3]


def test_a_training_runs_config_gin_names_the_model_its_key_and_its_vocabulary(folders):
    """config.gin (no model.gin): an encoder-decoder saved as 't5', its VOCABULARY bound in the file."""
    run = runs.load_run(folders["trained"])
    assert run.step == 7 and run.model.config == TINY_T5
    assert_equal_trees(run.params, folders["t5_params"])
    assert run.config == (folders["trained"] / "config.gin").read_text()
    assert run.vocabulary.pieces_fingerprint == word_vocabulary().pieces_fingerprint


def test_on_a_mesh_the_parameters_are_sharded_by_the_logical_rules(folders):
    mesh = partitioning.make_mesh(partitioning.MeshConfig(2, 2, 2))  # the 8 fake CPU devices
    run = runs.load_run(folders["converted"], mesh=mesh)
    assert_equal_trees(run.params, folders["params"][3])
    embedding = run.params["token_embedder"]["embedding"]  # logical (vocab, embed) -> (tensor, fsdp)
    assert embedding.sharding.mesh == mesh and embedding.sharding.spec == P("tensor", "fsdp")
    assert embedding.addressable_shards[0].data.shape == (16, 16)
    assert all(len(leaf.sharding.device_set) == 8 for leaf in jax.tree.leaves(run.params))
    replicated = runs.load_run(folders["converted"], mesh=mesh, rules=(("vocab", None), ("embed", None)))
    assert replicated.params["token_embedder"]["embedding"].sharding.spec == P(None, None)


def one_line_error(call) -> str:
    with pytest.raises(runs.RunFolderError) as refused:
        call()
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_what_is_not_a_run_folder_or_lacks_the_step_is_refused_in_one_line_naming_it(folders, tmp_path):
    converted = folders["converted"]
    assert one_line_error(lambda: runs.load_run(converted, step=2)) == (
        f"run folder {converted} has no checkpoint of step 2; its steps: 0, 3"
    )
    assert (
        one_line_error(lambda: runs.load_run(tmp_path / "missing"))
        == f"run folder {tmp_path / 'missing'} does not exist"
    )
    (tmp_path / "bare" / "checkpoints").mkdir(parents=True)
    assert one_line_error(lambda: runs.load_run(tmp_path / "bare")) == (
        f"{tmp_path / 'bare'} is not a run folder: it holds no model.gin or config.gin"
    )
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "model.gin").write_text((converted / "model.gin").read_text())
    opened = runs.open_run(untrained)  # the gin file alone is read: no checkpoint needed yet
    assert opened.model.config == CONFIG and opened.steps == []
    assert one_line_error(opened.load) == (
        f"run folder {untrained} holds no finished checkpoint (no checkpoints/<step>/ with its state)"
    )
    (tmp_path / "no_model").mkdir()
    (tmp_path / "no_model" / "config.gin").write_text("MODEL_KEY = 'model'\n")
    assert one_line_error(lambda: runs.open_run(tmp_path / "no_model")) == (
        f"{tmp_path / 'no_model' / 'config.gin'} binds no MODEL_CONFIG"
    )
