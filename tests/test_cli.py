"""The `littlehelp` command line, run in-process against fake gin-configurable commands, and as a program
(a subprocess) for what it prints on stderr: its own lines, an error line last, tracebacks in a debug log."""

import logging
import os
import subprocess
import sys
import tempfile
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
    commands = {
        "train": (TARGETS_MODULE, "train"),
        "eval": (TARGETS_MODULE, "evaluate"),
        "infer": (TARGETS_MODULE, "infer"),
    }
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
    result = main.main(
        [
            "train",
            f"--gin_file={run_gin}",
            "--gin.MODEL_DIR=runs/demo",
            "--gin.cli_train.steps=10",
            "--gin.cli_train.tags=['a', 1]",
        ]
    )
    assert result == {"command": "train", "model_dir": "runs/demo", "steps": 10, "tags": ["a", 1]}


def test_override_with_space_separated_value(run_gin):
    result = main.main(["train", "--gin_file", str(run_gin), "--gin.MODEL_DIR", "runs/x"])
    assert result["model_dir"] == "runs/x" and result["steps"] == 2


def test_gin_search_paths_flag(run_gin, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "extra.gin").write_text("cli_train.tags = ('extra',)\n")
    result = main.main(
        [
            "train",
            "--gin_file=run.gin",
            "--gin_file=extra.gin",
            f"--gin_search_paths={other},{run_gin.parent}",
            "--gin.MODEL_DIR=m",
        ]
    )
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
    assert_one_line_error(
        capsys,
        ["train", f"--gin_file={run_gin}", "--gin.MODEL_DIR=d", "--gin.cli_train.stpes=3"],
        "command line",
        "cli_train.stpes",
        "did you mean 'steps'?",
    )


def test_misspelt_configurable_in_file_exits_2(capsys, tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("cli_trian.steps = 3\n")
    assert_one_line_error(capsys, ["train", f"--gin_file={bad}"], f"{bad}:1", "did you mean 'cli_train'?")


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
    completed = subprocess.run(
        [sys.executable, "-m", "littlehelp.main", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0
    assert "{train,eval,infer,compile,convert,sweep,study,report}" in completed.stdout


SAVE_ERROR = (
    "littlehelp: error: cannot save checkpoint step 2 to /runs/x/checkpoints: No space left on device "
    "[Errno 28]; the steps already there are untouched"
)
# `littlehelp train` whose save fails as a full disk makes orbax's fail: a callback of a closed event loop
# raises (Python ignores it and prints its traceback), a background thread reports the failure again
# after the main thread has raised, and native code writes at interpreter exit.
FAILING_SAVE = f"""
import atexit, os, sys, threading, time, traceback
from littlehelp import errors, launch, main

class ClosedLoopCallback:
    def __del__(self):
        raise RuntimeError("Event loop is closed")

def report_late():
    time.sleep(0.3)
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        traceback.print_exc()

def failing_train():
    ClosedLoopCallback()
    threading.Thread(target=report_late).start()
    raise errors.LittlehelpError({SAVE_ERROR.removeprefix("littlehelp: error: ")!r})

atexit.register(os.write, 2, b"E0000 native noise at exit\\n")
launch.configure = lambda *args, **kwargs: failing_train
sys.argv = ["littlehelp", "train"]
main.run()
"""


def test_the_error_line_is_the_last_thing_on_stderr_and_tracebacks_go_to_a_debug_log(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", FAILING_SAVE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    running, *rest = completed.stderr.splitlines()
    assert completed.returncode == 1 and rest[-1] == SAVE_ERROR
    (log,) = tmp_path.glob("littlehelp-*.log")
    assert running.endswith("] Running train")
    assert rest == [f"littlehelp: what is printed after this error goes to {log}", SAVE_ERROR]
    for text in (
        "RuntimeError: Event loop is closed",
        "OSError: [Errno 28] No space left on device",
        "E0000 native noise at exit",
    ):
        assert text in log.read_text()


def test_a_library_record_keeps_its_line_and_moves_its_traceback_to_the_debug_log(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    debug_log = main.DebugLog()
    try:
        raise ValueError("RESOURCE_EXHAUSTED: Error writing")
    except ValueError:
        record = logging.LogRecord(
            "absl",
            logging.ERROR,
            "/site-packages/orbax/checkpoint/future.py",
            1,
            "save thread failed",
            (),
            sys.exc_info(),
        )
    assert debug_log._library_traceback(record) and record.exc_info is None
    assert logging.Formatter().format(record) == "save thread failed"
    assert "ValueError: RESOURCE_EXHAUSTED: Error writing" in debug_log.path.read_text()


# Lines TensorFlow and orbax print on every command that no run needs.
LIBRARY_NOISE = (
    "absl::InitializeLog",
    "oneDNN",
    "cuda drivers",
    "cuInit",
    "PyFunc is stateful",
    "Metadata file does not exist",
)


# `littlehelp train` whose command module is TensorFlow itself, loaded as `littlehelp.trainer` loads it
# (without the rest of the framework, to keep the test short), before the gin file is found missing.
LOADS_TENSORFLOW = """
import sys
from littlehelp import config, launch, main

launch.COMMANDS["train"] = ("tensorflow", "constant")
config.CONFIGURABLE_MODULES = []
sys.argv = ["littlehelp", "train", "--gin_file=missing.gin"]
main.run()
"""


def test_a_command_that_loads_tensorflow_prints_only_its_own_lines(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", LOADS_TENSORFLOW],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert completed.returncode == 2
    assert not [line for line in completed.stderr.splitlines() if any(noise in line for noise in LIBRARY_NOISE)]
    assert completed.stderr.splitlines()[-1].startswith("littlehelp: error: gin file 'missing.gin' not found")


@pytest.mark.parametrize(
    "path, level, message, shown",
    [
        (
            "/site-packages/orbax/checkpoint/_src/metadata/checkpoint.py",
            logging.WARNING,
            "Metadata file does not exist: %s",
            False,
        ),
        ("/site-packages/orbax/checkpoint/_src/metadata/checkpoint.py", logging.WARNING, "Some other warning", True),
        ("/site-packages/orbax/checkpoint/checkpoint_manager.py", logging.INFO, "Saving step", False),
        ("/littlehelp/checkpoints.py", logging.WARNING, "Metadata file does not exist: %s", True),
    ],
)
def test_known_library_noise_is_dropped_but_other_warnings_show(path, level, message, shown):
    record = logging.LogRecord("absl", level, path, 1, message, ("/x",), None)
    assert launch._quiet_libraries(record) is shown
