"""`python -m softsrv.run`: a soft method trains, then samples one continuation per training example's
context in a seeded order (greedy: the same context gives the same sample); a hard-prompt method
samples without training after prompts that open with the instruction file's text and show training
examples, then fine-tunes a small decoder on its samples and measures it on the test file; both write
samples, MAUVE and a summary. Bad files, files that share an example and a bad instruction file are
refused by name before any model is read. The soft run goes through the module run as `__main__`, as
`python -m softsrv.run` does (no configurable may be registered twice then)."""

import gzip
import json
import runpy
import sys
import warnings
from unittest import mock

import numpy as np
import pytest

from littlehelp import checkpoints, metrics
from littlehelp.config import ConfigError
from softsrv import generate, run
from softsrv.synthesis import context_rows
from tests.softsrv.helpers import LM_SIZES, TEXTS, tiny_setup


def _files(tmp_path, train="train.txt", validation="validation.jsonl", test="test.txt") -> list[str]:
    return [
        f"--train_file={tmp_path / train}",
        f"--validation_file={tmp_path / validation}",
        f"--test_file={tmp_path / test}",
    ]


def _command(tmp_path, method: str, out: str) -> list[str]:
    return [
        *_files(tmp_path),
        f"--method={method}",
        f"--out={tmp_path / out}",
        "--steps=2",
        "--num_samples=6",
        "--max_new_tokens=4",
        "--temperature=0",
        "--mauve_seeds",
        "0",
        "1",
    ]


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
    rows = list(context_rows(len(TEXTS), 6, seed=0))  # 5 training contexts, then one of them again
    assert len(samples) == 6 and samples[5] == samples[rows.index(rows[5])]
    scored = json.loads((tmp_path / "nsp" / "mauve.json").read_text())
    assert scored["seeds"] == [0, 1] and summary["mauve_mean"] == pytest.approx(sum(scored["mauve"]) / 2)
    assert summary["final_train_loss"] is not None
    saved = checkpoints.read_arrays(tmp_path / "nsp" / "run" / "checkpoints" / "2")
    assert set(saved["params"]) == {"prompt"}  # the frozen LM and embedder are never saved
    (tmp_path / "instruction.txt").write_text("  Write one more line of Python.\n")
    tiny = [f"--finetune_binding=decoder.DecoderConfig.{k}={v}" for k, v in LM_SIZES.items()]
    with mock.patch.object(generate, "hard_prompted", wraps=generate.hard_prompted) as sampler:
        few = run.run(
            [
                *_command(tmp_path, "few_shot", "few"),
                "--shots=2",
                "--finetune_steps=2",
                *tiny,
                f"--instruction_file={tmp_path / 'instruction.txt'}",
                "--finetune_binding=partitioning.MeshConfig.data=1",
                "--finetune_binding=BATCH_SIZE=2",
                "--finetune_binding=TASK_FEATURE_LENGTHS={'targets': 16}",
                *overrides,
            ]
        )
    prompts = sampler.call_args.args[2]
    assert len(prompts) == 6 and all(p.startswith("Write one more line of Python.\n\nExample:\n") for p in prompts)
    assert all(sum(f"Example:\n{t}\n\n" in p for t in TEXTS) == 2 for p in prompts)  # two training examples each
    assert few["final_train_loss"] is None and not (tmp_path / "few" / "run").exists()
    assert len((tmp_path / "few" / "samples.jsonl").read_text().splitlines()) == 6
    logged = [
        r for r in metrics.read_jsonl(tmp_path / "few" / "finetune" / "metrics.jsonl") if "eval/cross_entropy" in r
    ]
    assert few["finetune_nll"] == logged[-1]["eval/cross_entropy"] and logged[-1]["step"] == 2
    assert few["test_file"].endswith("test.txt") and few["instruction"] == "Write one more line of Python."


def test_a_bad_file_is_refused_by_name_before_any_model_loads(tmp_path):
    (tmp_path / "validation.txt").write_text("only one\n")
    with pytest.raises(ConfigError, match="cannot read examples from .*missing.txt: FileNotFoundError"):
        run.run(
            [
                f"--train_file={tmp_path / 'missing.txt'}",
                f"--validation_file={tmp_path / 'validation.txt'}",
                "--method=mlp",
                f"--out={tmp_path / 'out'}",
            ]
        )


@pytest.mark.parametrize(
    "shared, files, message",
    [
        ("validation", {}, r"train.txt and .*validation.txt share 1 example\(s\), e.g. 'import   sys'"),
        ("test", {}, r"train.txt and .*test.txt share 1 example\(s\), e.g. 'import   sys'"),
        (None, {"validation": "train.txt"}, r"train.txt and .*train.txt share 5 example\(s\)"),
    ],
)
def test_files_that_share_an_example_are_refused_by_name_before_any_model_loads(tmp_path, shared, files, message):
    texts = {
        "train": ["a = 1", "b = 2", "c = 3", "d = 4", "import   sys"],
        "validation": ["e = 5", "f = 6", "g = 7", "h = 8"],
        "test": ["i = 9", "j = 10", "k = 11", "l = 12"],
    }
    if shared:
        texts[shared][0] = "import sys"  # the same example up to whitespace
    for name, lines in texts.items():
        (tmp_path / f"{name}.txt").write_text("\n".join(lines))
    names = {split: files.get(split, f"{split}.txt") for split in texts}
    with pytest.raises(ConfigError, match=message):
        run.run(
            [
                *_files(tmp_path, names["train"], names["validation"], names["test"]),
                "--method=mlp",
                f"--out={tmp_path / 'out'}",
            ]
        )


def test_finetuning_without_a_test_file_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.run(
            ["--train_file=a.txt", "--validation_file=b.txt", "--method=few_shot", "--out=out", "--finetune_steps=2"]
        )
    assert "--finetune_steps needs --test_file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [(None, "cannot read the instruction from .*instruction.txt"), ("  \n", "instruction.txt holds no instruction")],
)
def test_a_bad_instruction_file_is_refused_by_name_before_any_model_loads(tmp_path, content, message):
    for name, lines in (("train", "abcd"), ("validation", "efgh"), ("test", "ijkl")):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines))
    if content is not None:
        (tmp_path / "instruction.txt").write_text(content)
    with pytest.raises(ConfigError, match=message):
        run.run(
            [
                *_files(tmp_path, validation="validation.txt"),
                "--method=zero_shot",
                f"--instruction_file={tmp_path / 'instruction.txt'}",
                f"--out={tmp_path / 'out'}",
            ]
        )


BAD_FILES = {  # name: (content of validation.txt, or None for no file; what the one line says of it)
    "empty": (b"", "{path} holds no examples (every line is blank)"),
    "gzip": (gzip.compress(b"one example\n" * 8), "cannot read examples from {path}: UnicodeDecodeError"),
    "random bytes": (
        bytes(np.random.default_rng(0).integers(128, 256, 64, np.uint8)),
        "cannot read examples from {path}: UnicodeDecodeError",
    ),
    "jsonl without text": (b'{"title": "a"}\n' * 4, "{path}: line 1 has no string field 'text'"),
    "non-string text": (b'{"text": "a"}\n{"text": 3}\n', "{path}: line 2 has no string field 'text'"),
    "too few": (b"a\nb\n", "{path} holds 2 examples; SoftSRV needs at least 4"),
    "missing": (None, "cannot read examples from {path}: FileNotFoundError"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_the_command_refuses_a_bad_file_in_one_line_with_the_errors_exit_code(case, tmp_path, capsys):
    """`python -m softsrv.run` ends in one line naming the file (no traceback) and exit status 2, before any
    model loads and before anything is written."""
    content, message = BAD_FILES[case]
    (tmp_path / "train.txt").write_text("\n".join(TEXTS))
    path = tmp_path / "validation.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as stopped:
        run.main(
            [
                f"--train_file={tmp_path / 'train.txt'}",
                f"--validation_file={path}",
                "--method=zero_shot",
                f"--out={tmp_path / 'out'}",
            ]
        )
    assert stopped.value.code == ConfigError.exit_code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"softsrv.run: error: {message.format(path=path)}")
    assert not (tmp_path / "out").exists()


def test_mauve_of_too_few_samples_is_flagged_unreliable_in_the_output_and_the_files(tmp_path, capsys):
    """16 gibberish samples against 4 real examples: the score is printed and written with a warning that
    MAUVE is unreliable at that size (sampling and scoring stubbed: only the reporting is under test)."""
    for name, lines in (("train", TEXTS), ("validation", ["e = 5", "f = 6", "g = 7", "h = 8"])):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines))
    scored = {"seeds": [0], "mauve": [0.962], "mean": 0.962, "std": float("nan"), "num_p": 4, "num_q": 16}
    with (
        mock.patch.object(run.synthesis, "synthesize", return_value=["qz xv"] * 16),
        mock.patch.object(run.pretrained, "ensure"),
        mock.patch.object(run.SentenceEmbedder, "load"),
        mock.patch.object(run.mauve, "mauve_of_texts", return_value=scored),
    ):
        run.main(
            [
                *_files(tmp_path, validation="validation.txt")[:2],
                "--method=zero_shot",
                "--num_samples=16",
                f"--out={tmp_path / 'out'}",
                "--mauve_seeds",
                "0",
            ]
        )
    warning = "MAUVE of 16 samples against 4 real examples is unreliable: it needs at least 50 of each"
    printed = capsys.readouterr().out
    assert "MAUVE 0.962" in printed and f"warning: {warning}" in printed
    assert json.loads((tmp_path / "out" / "mauve.json").read_text())["warning"].startswith(warning)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["mauve_warning"].startswith(warning)
