"""`littlehelp convert` on damaged inputs: a truncated GGUF file, safetensors whose shapes do not fit
their config. Each is refused with one line naming the file and the tensor, and nothing is written."""

import json

import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file, save_file

from littlehelp import main
from littlehelp.models import convert
from littlehelp.models.convert import ConversionError
from tests.models.test_bert import HF_TINY as BERT_SIZES
from tests.models.test_convert_llama import hf_model, write_gguf
from tests.models.test_convert_t5 import hf_t5


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(bytes of a tiny Llama GGUF file, its reader) for cutting."""
    from gguf import GGUFReader

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(path, hf_model("llama", tied=True))
    return path.read_bytes(), GGUFReader(path)


def _cut(reader, where: str) -> int:
    """A byte offset inside the metadata header, the tensor-info table or the second tensor's data."""
    if where == "header":
        return reader.fields["llama.block_count"].offset + 3
    if where == "tensor table":
        return reader.tensors[1].field.offset + 5
    return reader.tensors[1].data_offset + 7


@pytest.mark.parametrize(
    "where, named",
    [
        ("header", "inside its metadata header"),
        ("tensor table", "inside its tensor-info table"),
        ("tensor data", "inside the data of tensor 'blk.0.attn_q.weight'"),
    ],
)
def test_a_truncated_gguf_file_is_refused_in_one_line_naming_it(tiny_gguf, where, named, tmp_path, capsys):
    data, reader = tiny_gguf
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: _cut(reader, where)])
    with pytest.raises(SystemExit) as stopped:
        main.main(["convert", f"--from={path}", f"--to={tmp_path / 'out'}"])
    assert stopped.value.code == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(path) in error and named in error, error
    assert not (tmp_path / "out").exists()


def _set_config(folder, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def _replace_tensor(folder, name: str, shape: tuple[int, ...]) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    tensors[name] = np.zeros(shape, np.float32)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _llama_heads_changed(folder) -> str:
    hf_model("llama", tied=False).save_pretrained(folder)
    _set_config(folder, num_attention_heads=2)  # q_proj is [4 * 16, 48]; the config now says [2 * 16, 48]
    return r"model\.layers\.0\.self_attn\.q_proj\.weight has shape \(64, 48\), the config needs \(32, 48\)"


def _llama_heads_refused(folder) -> str:
    hf_model("llama", tied=False).save_pretrained(folder)
    _set_config(folder, num_attention_heads=3)  # not a multiple of the 2 key/value heads
    return r"config\.json: DecoderConfig\.num_heads \(3\) must be a multiple of num_kv_heads"


def _t5_head_size_changed(folder) -> str:
    hf_t5().save_pretrained(folder)
    _set_config(folder, d_kv=6)
    return r"encoder\.block\.0\.layer\.0\.SelfAttention\.q\.weight has shape \(32, 32\), the config needs \(24, 32\)"


def _bert_query_replaced(folder) -> str:
    transformers.BertModel(transformers.BertConfig(**BERT_SIZES)).save_pretrained(folder)
    _replace_tensor(folder, "encoder.layer.1.attention.self.query.weight", (24, 32))
    return r"encoder\.layer\.1\.attention\.self\.query\.weight has shape \(24, 32\), the config needs \(32, 32\)"


@pytest.mark.parametrize(
    "damage", [_llama_heads_changed, _llama_heads_refused, _t5_head_size_changed, _bert_query_replaced]
)
def test_safetensors_that_do_not_fit_the_config_are_refused_naming_the_tensor(damage, tmp_path):
    folder = tmp_path / "hf"
    named = damage(folder)
    with pytest.raises(ConversionError, match=named) as refused:
        convert.load(folder)
    assert str(refused.value).startswith(str(folder)) and len(str(refused.value).splitlines()) == 1
