"""The `littlehelp` command line, run in-process against fake gin-configurable commands."""

import subprocess
import sys
import types

import gin
import jax
import pytest

from littlehelp import config, launch, main

TARGETS_MODULE = "lh_cli_test_targets"


@gin.configurable(module="lh_cli_test")
def cli_train(model_dir=gin.REQUIRED, steps=1, tags=()):
    return {"command": "train", "model_dir": model_dir, "steps": steps, "tags": tags}


@gin.configurable(module="lh_cli_test")
def cli_evaluate(checkpoint=gin.REQUIRED):
    return {"command": "eval", "checkpoint": checkpoint}


@gin.configurable(module="lh_cli_test")
def cli_infer(prompt="hello"):
    return {"command": "infer", "prompt": prompt}


@pytest.fixture(autouse=True)
def fake_commands(monkeypatch):
    """Points the dispatch table at the fake commands and skips the real configurable modules."""
    targets = types.ModuleType(TARGETS_MODULE)
    targets.train, targets.evaluate, targets.infer = cli_train, cli_evaluate, cli_infer
    monkeypatch.setitem(sys.modules, TARGETS_MODULE, targets)
    commands = {"train": (TARGETS_MODULE, "train"), "eval": (TARGETS_MODULE, "evaluate"),
                "infer": (TARGETS_MODULE, "infer")}
    monkeypatch.setattr(launch, "COMMANDS", commands)
    monkeypatch.setattr(config, "CONFIGURABLE_MODULES", [])
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture
def run_gin(tmp_path):
    path = tmp_path / "gin" / "run.gin"
    path.parent.mkdir()
    path.write_text("MODEL_DIR = %gin.REQUIRED\ncli_train.model_dir = %MODEL_DIR\ncli_train.steps = 2\n")
    return path


def test_train_gets_file_and_override_values(run_gin):
    result = main.main(["train", f"--gin_file={run_gin}", "--gin.MODEL_DIR=runs/demo",
                        "--gin.cli_train.steps=10", "--gin.cli_train.tags=['a', 1]"])
    assert result == {"command": "train", "model_dir": "runs/demo", "steps": 10, "tags": ["a", 1]}


def test_override_with_space_separated_value(run_gin):
    result = main.main(["train", "--gin_file", str(run_gin), "--gin.MODEL_DIR", "runs/x"])
    assert result["model_dir"] == "runs/x" and result["steps"] == 2


def test_gin_search_paths_flag(run_gin, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "extra.gin").write_text("cli_train.tags = ('extra',)\n")
    result = main.main(["train", "--gin_file=run.gin", "--gin_file=extra.gin",
                        f"--gin_search_paths={other},{run_gin.parent}", "--gin.MODEL_DIR=m"])
    assert result == {"command": "train", "model_dir": "m", "steps": 2, "tags": ("extra",)}


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["eval", "--gin.cli_evaluate.checkpoint=ckpt/7"], {"command": "eval", "checkpoint": "ckpt/7"}),
        (["infer", "--gin.cli_infer.prompt='a b'"], {"command": "infer", "prompt": "a b"}),
        (["infer"], {"command": "infer", "prompt": "hello"}),
    ],
)
def test_subcommands_dispatch_to_their_function(argv, expected):
    assert main.main(argv) == expected


def test_config_is_locked_when_command_runs(run_gin):
    main.main(["train", f"--gin_file={run_gin}", "--gin.MODEL_DIR=d"])
    assert gin.config_is_locked()


def assert_one_line_error(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    err = stderr.strip().splitlines()[-1]
    assert err.startswith("littlehelp: error: ")
    for fragment in fragments:
        assert fragment in err


def test_misspelt_override_exits_2_with_suggestion(capsys, run_gin):
    assert_one_line_error(capsys, ["train", f"--gin_file={run_gin}", "--gin.MODEL_DIR=d",
                                   "--gin.cli_train.stpes=3"],
                          "command line", "cli_train.stpes", "did you mean 'steps'?")


def test_misspelt_configurable_in_file_exits_2(capsys, tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("cli_trian.steps = 3\n")
    assert_one_line_error(capsys, ["train", f"--gin_file={bad}"],
                          f"{bad}:1", "did you mean 'cli_train'?")


def test_unset_required_macro_exits_2_naming_it(capsys, run_gin):
    assert_one_line_error(capsys, ["train", f"--gin_file={run_gin}"], "MODEL_DIR")


def test_unset_required_argument_exits_2_naming_it(capsys):
    assert_one_line_error(capsys, ["eval"], "cli_evaluate.checkpoint")


def test_missing_gin_file_exits_2_naming_it(capsys):
    assert_one_line_error(capsys, ["train", "--gin_file=no/such/file.gin"], "no/such/file.gin")


def test_help_lists_subcommands_and_override_syntax(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("train", "eval", "infer", "--gin.NAME=VALUE"):
        assert text in out


def test_subcommand_help_lists_gin_options(capsys):
    with pytest.raises(SystemExit):
        main.main(["train", "--help"])
    out = capsys.readouterr().out
    for text in ("--gin_file", "--gin_search_paths", "--multihost"):
        assert text in out


def test_multihost_flag_initializes_jax_distributed(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda: calls.append("init"))
    main.main(["infer"])
    assert calls == []
    main.main(["infer", "--multihost"])
    assert calls == ["init"]


def test_console_module_help_runs_in_a_fresh_process():
    completed = subprocess.run([sys.executable, "-m", "littlehelp.main", "--help"],
                               capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0
    assert "{train,eval,infer,compile,convert,sweep,study}" in completed.stdout
