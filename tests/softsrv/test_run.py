"""`python -m softsrv.run`: a soft method trains, then samples one continuation per held-out context,
cycling through the held-out examples in order (greedy: the same context gives the same sample); a
hard-prompt method samples without training, then fine-tunes a small decoder on its samples; both write
samples, MAUVE and a summary; a bad file is
refused before any model is read. The soft run goes through the module run as `__main__`, as
`python -m softsrv.run` does (no configurable may be registered twice then)."""

import json
import runpy
import sys
import warnings
from unittest import mock

import pytest

from littlehelp import checkpoints, metrics
from littlehelp.config import ConfigError
from softsrv import run
from tests.softsrv.helpers import LM_SIZES, tiny_setup


def _command(tmp_path, method: str, out: str) -> list[str]:
    return [f"--train_file={tmp_path / 'train.txt'}", f"--eval_file={tmp_path / 'eval.jsonl'}", f"--method={method}",
            f"--out={tmp_path / out}", "--steps=2", "--num_samples=6", "--max_new_tokens=4", "--temperature=0",
            "--mauve_seeds", "0", "1"]


def _as_command(argv: list[str]) -> None:
    """`python -m softsrv.run ARGV`, in this process."""
    with mock.patch.object(sys, "argv", ["softsrv.run", *argv]), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported (by this file)
        runpy.run_module("softsrv.run", run_name="__main__")


def test_soft_and_hard_prompted_runs_write_samples_mauve_and_a_summary(tmp_path):
    overrides = tiny_setup(tmp_path)
    _as_command([*_command(tmp_path, "nsp", "nsp"), *overrides])
    summary = json.loads((tmp_path / "nsp" / "summary.json").read_text())
    samples = [json.loads(line)["text"] for line in (tmp_path / "nsp" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and samples[4:] == samples[:2]  # 4 held-out contexts, then the first two again
    scored = json.loads((tmp_path / "nsp" / "mauve.json").read_text())
    assert scored["seeds"] == [0, 1] and summary["mauve_mean"] == pytest.approx(sum(scored["mauve"]) / 2)
    assert summary["final_train_loss"] is not None
    saved = checkpoints.read_arrays(tmp_path / "nsp" / "run" / "checkpoints" / "2")
    assert set(saved["params"]) == {"prompt"}  # the frozen LM and embedder are never saved
    tiny = [f"--finetune_binding=decoder.DecoderConfig.{k}={v}" for k, v in LM_SIZES.items()]
    few = run.run([*_command(tmp_path, "few_shot", "few"), "--shots=2", "--finetune_steps=2", *tiny,
                   "--finetune_binding=partitioning.MeshConfig.data=1", "--finetune_binding=BATCH_SIZE=2",
                   "--finetune_binding=TASK_FEATURE_LENGTHS={'targets': 16}", *overrides])
    assert few["final_train_loss"] is None and not (tmp_path / "few" / "run").exists()
    assert len((tmp_path / "few" / "samples.jsonl").read_text().splitlines()) == 6
    logged = [r for r in metrics.read_jsonl(tmp_path / "few" / "finetune" / "metrics.jsonl") if "eval/cross_entropy" in r]
    assert few["finetune_nll"] == logged[-1]["eval/cross_entropy"] and logged[-1]["step"] == 2


def test_a_bad_file_is_refused_by_name_before_any_model_loads(tmp_path):
    (tmp_path / "eval.txt").write_text("only one\n")
    with pytest.raises(ConfigError, match="eval.txt holds 1 examples"):
        run.run([f"--train_file={tmp_path / 'missing.txt'}", f"--eval_file={tmp_path / 'eval.txt'}", "--method=mlp",
                 f"--out={tmp_path / 'out'}"])
