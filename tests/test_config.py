"""Gin parsing: overrides, search path, friendly errors, type checks, operative config."""

from __future__ import annotations  # annotations are strings, as in the package

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import gin
import pytest

from littlehelp import config


@gin.configurable(module="lh_config_test")
def toy_trainer(steps, model_dir, learning_rate=0.1, optimizer=None, schedule=()):
    return {
        "steps": steps,
        "model_dir": model_dir,
        "learning_rate": learning_rate,
        "optimizer": optimizer,
        "schedule": schedule,
    }


@gin.configurable(module="lh_config_test")
def toy_optimizer(momentum=0.9):
    return {"momentum": momentum}


@gin.configurable(module="lh_config_test")
def toy_evaluator(checkpoint=gin.REQUIRED, batch_size=4):
    return checkpoint, batch_size


@gin.configurable(module="lh_config_test")
def typed_toy(
    steps: int = 1,
    rate: float = 0.1,
    name: str = "a",
    flag: bool = False,
    limit: int | None = None,
    ratio: Optional[float] = None,  # noqa: UP045 (the typing.Optional spelling is checked too)
    lengths: Mapping[str, int] | None = None,
    rules: Sequence[tuple[str, Any]] = (),
    ids: list[int] | None = None,
    pair: tuple[int, int] = (0, 0),
    anything: Any = None,
    optimizer: dict | None = None,
):
    return locals()


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model_dir=runs/demo", "runs/demo"),
        ("model_dir=gs://bucket/run 1", "gs://bucket/run 1"),
        ("model_dir=1/2", "1/2"),
        ("model_dir=abc", "abc"),
        ("model_dir='quoted'", "quoted"),
        ('model_dir="double quoted"', "double quoted"),
        ("model_dir=None", None),
        ("steps=10", 10),
        ("steps=-3", -3),
        ("learning_rate=1e-3", 0.001),
        ("steps=True", True),
        ("schedule=[1, 2.5, 'a']", [1, 2.5, "a"]),
        ("schedule=(1, (2, 3))", (1, (2, 3))),
        ("schedule={'warmup': 5}", {"warmup": 5}),
    ],
)
def test_override_value_is_gin_literal_or_bare_string(override, expected):
    config.parse_gin([], [f"toy_trainer.{override}"])
    name = override.partition("=")[0]
    assert gin.query_parameter(f"toy_trainer.{name}") == expected


def test_parse_override_text():
    assert config.parse_override("MODEL_DIR=runs/demo") == "MODEL_DIR = 'runs/demo'"
    assert config.parse_override(" train.steps = 10 ") == "train.steps = 10"
    assert config.parse_override("x.opt=@toy_optimizer()") == "x.opt = @toy_optimizer()"
    assert config.parse_override("x.lr=%LR") == "x.lr = %LR"
    assert config.parse_override("x.y=[1, 2") == "x.y = '[1, 2'"
    with pytest.raises(config.ConfigError, match="NAME=VALUE"):
        config.parse_override("no_equals_sign")


def test_override_references_and_macros_are_resolved_when_called():
    overrides = [
        "toy_trainer.steps=1",
        "toy_trainer.model_dir=d",
        "LR=0.25",
        "toy_trainer.learning_rate=%LR",
        "toy_optimizer.momentum=0.5",
        "toy_trainer.optimizer=@toy_optimizer()",
    ]
    config.parse_gin([], overrides)
    result = toy_trainer()
    assert result["learning_rate"] == 0.25
    assert result["optimizer"] == {"momentum": 0.5}


def test_overrides_apply_after_files(tmp_path):
    gin_file = write(tmp_path / "a.gin", "toy_trainer.steps = 1\ntoy_trainer.model_dir = 'x'\n")
    config.parse_gin([str(gin_file)], ["toy_trainer.steps=2"])
    assert gin.query_parameter("toy_trainer.steps") == 2
    assert gin.query_parameter("toy_trainer.model_dir") == "x"


def test_files_parse_in_order(tmp_path):
    first = write(tmp_path / "first.gin", "toy_trainer.steps = 1\n")
    second = write(tmp_path / "second.gin", "toy_trainer.steps = 2\n")
    config.parse_gin([str(second), str(first)], [])
    assert gin.query_parameter("toy_trainer.steps") == 1


def test_relative_file_found_in_working_directory(tmp_path, monkeypatch):
    write(tmp_path / "runs" / "local.gin", "toy_trainer.steps = 5\n")
    monkeypatch.chdir(tmp_path)
    config.parse_gin(["runs/local.gin"], [])
    assert gin.query_parameter("toy_trainer.steps") == 5


def test_search_paths_in_order(tmp_path):
    write(tmp_path / "one" / "run.gin", "toy_trainer.steps = 1\n")
    write(tmp_path / "two" / "run.gin", "toy_trainer.steps = 2\n")
    write(tmp_path / "two" / "only_two.gin", "toy_trainer.learning_rate = 0.5\n")
    paths = [str(tmp_path / "one"), str(tmp_path / "two")]
    config.parse_gin(["run.gin", "only_two.gin"], [], search_paths=paths)
    assert gin.query_parameter("toy_trainer.steps") == 1
    assert gin.query_parameter("toy_trainer.learning_rate") == 0.5


def test_default_search_path_ends_with_the_core_then_the_method_gin_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    repo = Path(__file__).parent.parent.resolve()
    methods = sorted(repo / package / "gin" for package in ("spactor", "salt_lm", "distillspec", "softsrv"))
    search = config.gin_search_path(["extra"])
    assert search[:3] == [tmp_path.resolve(), tmp_path / "extra", repo / "littlehelp" / "gin"]
    assert sorted(search[3:]) == methods


def test_file_found_in_the_package_gin_folder(tmp_path, monkeypatch):
    package_gin = tmp_path / "package" / "gin"
    write(package_gin / "models" / "toy.gin", "toy_trainer.steps = 9\n")
    monkeypatch.setattr(config, "PACKAGE_GIN_DIR", package_gin)
    monkeypatch.chdir(tmp_path)
    config.parse_gin(["models/toy.gin"], [])
    assert gin.query_parameter("toy_trainer.steps") == 9


def test_include_resolved_against_search_path(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "configs"
    write(folder / "models" / "base.gin", "toy_trainer.steps = 3\n")
    write(folder / "runs" / "run.gin", "include 'models/base.gin'\ntoy_trainer.model_dir = 'r'\n")
    monkeypatch.chdir(tmp_path)
    config.parse_gin(["runs/run.gin"], [], search_paths=[str(folder)])
    assert gin.query_parameter("toy_trainer.steps") == 3
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_include_not_found_in_folders_of_an_earlier_call(tmp_path):
    write(tmp_path / "old" / "base.gin", "toy_trainer.steps = 3\n")
    config.parse_gin(["base.gin"], [], search_paths=[str(tmp_path / "old")])
    run = write(tmp_path / "new" / "run.gin", "include 'base.gin'\n")
    with pytest.raises(config.ConfigError) as error:
        config.parse_gin([str(run)], [], search_paths=[str(tmp_path / "new")])
    message = str(error.value)
    assert f"{run}:1: `include 'base.gin'`: gin file 'base.gin' not found" in message
    assert str(tmp_path / "old") not in message


def test_missing_file_names_file_and_search_path(tmp_path):
    with pytest.raises(config.ConfigError) as error:
        config.parse_gin(["nowhere/absent.gin"], [], search_paths=[str(tmp_path)])
    message = str(error.value)
    assert "nowhere/absent.gin" in message
    assert str(tmp_path) in message and str(config.PACKAGE_GIN_DIR) in message


def test_unknown_configurable_in_file(tmp_path):
    gin_file = write(tmp_path / "bad.gin", "toy_trainer.steps = 1\ntoy_trainr.steps = 3\n")
    with pytest.raises(config.ConfigError) as error:
        config.parse_gin([str(gin_file)], [])
    message = str(error.value)
    assert f"{gin_file}:2" in message
    assert "toy_trainr.steps = 3" in message
    assert "did you mean 'toy_trainer'?" in message


def test_unknown_parameter_in_file(tmp_path):
    gin_file = write(tmp_path / "bad.gin", "toy_trainer.learning_rat = 0.1\n")
    with pytest.raises(config.ConfigError) as error:
        config.parse_gin([str(gin_file)], [])
    message = str(error.value)
    assert str(gin_file) in message and "learning_rat" in message
    assert "did you mean 'learning_rate'?" in message


def test_unknown_parameter_in_override_names_command_line():
    with pytest.raises(config.ConfigError) as error:
        config.parse_gin([], ["toy_optimizer.momentun=0.1"])
    message = str(error.value)
    assert message.startswith("command line: `toy_optimizer.momentun = 0.1`")
    assert "did you mean 'momentum'?" in message


def test_unknown_reference_suggests_configurable():
    with pytest.raises(config.ConfigError, match="'@toy_optimiser'; did you mean 'toy_optimizer'"):
        config.parse_gin([], ["toy_trainer.optimizer=@toy_optimiser()"])


def test_error_in_included_file_names_that_file(tmp_path):
    included = write(tmp_path / "inner.gin", "toy_optimizer.momentum = 0.1\ntoy_optimizer.momentm = 1\n")
    outer = write(tmp_path / "outer.gin", "include 'inner.gin'\n")
    with pytest.raises(config.ConfigError) as error:
        config.parse_gin([str(outer)], [], search_paths=[str(tmp_path)])
    assert f"{included}:2" in str(error.value)
    assert "did you mean 'momentum'?" in str(error.value)


def test_no_suggestion_when_nothing_is_close():
    with pytest.raises(config.ConfigError) as error:
        config.parse_gin([], ["zzqqxx.steps=1"])
    assert "unknown configurable 'zzqqxx'" in str(error.value)
    assert "did you mean" not in str(error.value)


def test_required_macro_unset_names_it(tmp_path):
    run = write(tmp_path / "run.gin", "MODEL_DIR = %gin.REQUIRED\ntoy_trainer.model_dir = %MODEL_DIR\n")
    with pytest.raises(config.ConfigError, match="required value.*MODEL_DIR"):
        config.parse_gin([str(run)], [])
    config.parse_gin([str(run)], ["MODEL_DIR=runs/demo", "toy_trainer.steps=1"])
    assert toy_trainer()["model_dir"] == "runs/demo"


def test_required_parameter_binding_unset_names_it():
    with pytest.raises(config.ConfigError, match="toy_trainer.model_dir"):
        config.parse_gin([], ["toy_trainer.model_dir=%gin.REQUIRED"])


def test_undefined_macro_suggests_defined_one():
    with pytest.raises(config.ConfigError) as error:
        config.parse_gin([], ["TRAIN_STEPS=5", "toy_trainer.steps=%TRAIN_STEP"])
    assert "%TRAIN_STEP" in str(error.value)
    assert "did you mean 'TRAIN_STEPS'?" in str(error.value)


def test_missing_required_arguments_of_signature():
    config.parse_gin([], [])
    assert config.missing_required_arguments(toy_evaluator) == ["checkpoint"]
    config.parse_gin([], ["toy_evaluator.checkpoint=ckpt"])
    assert config.missing_required_arguments(toy_evaluator) == []


@gin.configurable(module="lh_config_test")
class ToyData:
    """Counts its constructions: the config check must not build what gin binds."""

    built = 0

    def __init__(self, name, batch_size, seed=0):
        ToyData.built += 1


def test_required_arguments_are_read_without_calling_the_referenced_configurables():
    bindings = [
        "DATA = @validation/ToyData()",
        "toy_evaluator.checkpoint = %DATA",
        "ToyData.name = 'task'",
        "MODEL = @toy_optimizer()",
        "toy_evaluator.batch_size = %MODEL",
    ]
    config.parse_gin([], bindings)
    ToyData.built = 0
    assert config.missing_required_arguments(toy_evaluator) == []
    assert config.missing_reference_arguments(toy_evaluator) == ["validation/ToyData.batch_size"]
    assert ToyData.built == 0
    config.parse_gin([], [*bindings, "validation/ToyData.batch_size = 2"])  # the scope gin builds it in
    assert config.missing_reference_arguments(toy_evaluator) == []
    assert ToyData.built == 0


def test_parse_gin_locks_config():
    config.parse_gin([], ["toy_trainer.steps=1"])
    assert gin.config_is_locked()


def test_import_configurable_modules_skips_only_absent_modules(tmp_path, monkeypatch):
    write(tmp_path / "lh_fake_pkg" / "__init__.py", "")
    write(tmp_path / "lh_fake_pkg" / "present.py", "VALUE = 1\n")
    write(tmp_path / "lh_fake_pkg" / "broken.py", "import lh_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("lh_fake_pkg", "lh_fake_pkg.present", "lh_fake_pkg.broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    names = ["lh_fake_pkg.present", "lh_fake_pkg.absent"]
    assert config.import_configurable_modules(names) == ["lh_fake_pkg.present"]
    with pytest.raises(ModuleNotFoundError) as error:
        config.import_configurable_modules(["lh_fake_pkg.broken"])
    assert error.value.name == "lh_no_such_dependency"


def test_operative_config_written_and_reparseable(tmp_path):
    model_dir = tmp_path / "runs" / "demo"
    overrides = [
        f"MODEL_DIR={model_dir}",
        "toy_trainer.model_dir=%MODEL_DIR",
        "toy_trainer.steps=7",
        "toy_trainer.optimizer=@toy_optimizer()",
        "toy_optimizer.momentum=0.5",
    ]
    config.parse_gin([], overrides)
    used = toy_trainer()
    path = config.write_operative_config(str(model_dir))
    assert path == model_dir / "config.gin"
    text = path.read_text()
    assert "toy_trainer.steps = 7" in text and "toy_optimizer.momentum = 0.5" in text
    gin.clear_config()
    gin.parse_config_file(str(path))
    assert (
        toy_trainer()
        == used
        == {
            "steps": 7,
            "model_dir": str(model_dir),
            "learning_rate": 0.1,
            "optimizer": {"momentum": 0.5},
            "schedule": (),
        }
    )


def test_syntax_error_names_file_and_line(tmp_path):
    gin_file = write(tmp_path / "broken.gin", "toy_trainer.steps = 1\ntoy_trainer.model_dir = 1 2\n")
    with pytest.raises(config.ConfigError) as error:
        config.parse_gin([str(gin_file)], [])
    assert str(gin_file) in str(error.value) and "line 2" in str(error.value)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("steps=True", "typed_toy.steps expects int, got bool True"),
        ("steps=2.0", "typed_toy.steps expects int, got float 2.0"),
        ("rate='fast'", "typed_toy.rate expects float, got str 'fast'"),
        ("rate=False", "typed_toy.rate expects float, got bool False"),
        ("name=[1]", "typed_toy.name expects str, got list [1]"),
        ("flag=1", "typed_toy.flag expects bool, got int 1"),
        ("limit=2.5", "typed_toy.limit expects int | None, got float 2.5"),
        ("ratio='x'", "typed_toy.ratio expects Optional[float], got str 'x'"),
        ("lengths={'inputs': '8'}", "typed_toy.lengths expects Mapping[str, int] | None, got dict {'inputs': '8'}"),
        ("lengths=[8]", "typed_toy.lengths expects Mapping[str, int] | None, got list [8]"),
        ("rules='batch'", "typed_toy.rules expects Sequence[tuple[str, Any]], got str 'batch'"),
        (
            "rules=[['batch', 'data']]",
            "typed_toy.rules expects Sequence[tuple[str, Any]], got list [['batch', 'data']]",
        ),
        ("ids=(1, 2)", "typed_toy.ids expects list[int] | None, got tuple (1, 2)"),
        ("ids=[1, 'two']", "typed_toy.ids expects list[int] | None, got list [1, 'two']"),
        ("pair=(1, 2, 3)", "typed_toy.pair expects tuple[int, int], got tuple (1, 2, 3)"),
    ],
)
def test_literal_refused_by_its_annotation(override, expected):
    binding = config.parse_override(f"typed_toy.{override}")
    with pytest.raises(config.ConfigError, match=re.escape(f"command line: `{binding}`: {expected}") + "$"):
        config.parse_gin([], [f"typed_toy.{override}"])


def test_literals_accepted_by_their_annotations(tmp_path):
    gin_file = write(tmp_path / "a.gin", "typed_toy.steps = 'ten'\n")
    overrides = [
        "typed_toy.steps=3",
        "typed_toy.rate=2",
        "typed_toy.limit=None",
        "typed_toy.ratio=1",
        "typed_toy.lengths={'inputs': 8}",
        "typed_toy.rules=[('batch', ('data', 'fsdp')), ('kv', None)]",
        "typed_toy.ids=[]",
        "typed_toy.pair=(1, 2)",
        "typed_toy.anything=[{1: 'x'}]",
        "typed_toy.optimizer=@toy_optimizer()",
        "typed_toy.name=runs/demo",
        "toy_trainer.steps='any'",
    ]
    config.parse_gin([str(gin_file)], overrides)
    result = typed_toy()
    assert (result["steps"], result["rate"], result["optimizer"]) == (3, 2, {"momentum": 0.9})


def test_macro_followed_to_the_literal_it_holds(tmp_path):
    gin_file = write(tmp_path / "run.gin", "STEPS = 'ten'\nALIAS = %STEPS\ntyped_toy.steps = %ALIAS\n")
    expected = f"{gin_file}:1: `STEPS = 'ten'`: typed_toy.steps expects int, got str 'ten'"
    with pytest.raises(config.ConfigError, match=re.escape(expected) + "$"):
        config.parse_gin([str(gin_file)], [])
    config.parse_gin([str(gin_file)], ["STEPS=10"])
    assert typed_toy()["steps"] == 10


def test_run_file_macro_of_the_wrong_type_is_refused_before_anything_is_built():
    expected = "command line: `TRAIN_STEPS = 'abc'`: train.steps expects int, got str 'abc'"
    with pytest.raises(config.ConfigError, match=re.escape(expected) + "$"):
        config.parse_gin(["runs/demo.gin"], ["MODEL_DIR=/tmp/x", "TRAIN_STEPS=abc"])


def test_misspelt_command_line_macro_is_refused():
    config.parse_gin(["runs/demo.gin"], ["MODEL_DIR=/tmp/x", "TRAIN_STEPS=3"])
    expected = (
        "command line: `TRAIN_STEPZ = 3`: no gin file or binding reads macro TRAIN_STEPZ; did you mean 'TRAIN_STEPS'?"
    )
    with pytest.raises(config.ConfigError, match=re.escape(expected) + "$"):
        config.parse_gin(["runs/demo.gin"], ["MODEL_DIR=/tmp/x", "TRAIN_STEPZ=3"])


def test_macro_set_in_a_file_and_read_by_nothing_is_allowed_but_not_set_again(tmp_path):
    gin_file = write(tmp_path / "shared.gin", "NOT_READ_HERE = 1\ntoy_trainer.steps = 1\n")
    config.parse_gin([str(gin_file)], [])
    assert gin.query_parameter("%NOT_READ_HERE") == 1
    expected = "command line: `NOT_READ_HERE = 2`: no gin file or binding reads macro NOT_READ_HERE"
    with pytest.raises(config.ConfigError, match=re.escape(expected) + "$"):
        config.parse_gin([str(gin_file)], ["NOT_READ_HERE=2"])


def test_a_method_package_registers_itself_through_its_gin_files_import(tmp_path, monkeypatch):
    """A package the core has never heard of: its gin file's `import` line registers it."""
    package = tmp_path / "lh_new_method"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import gin\n\n@gin.configurable(module='lh_new_method')\ndef strength(value: int = gin.REQUIRED) -> int:\n"
        "    return value\n"
    )
    (tmp_path / "method.gin").write_text("import lh_new_method\n\nlh_new_method.strength.value = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "lh_new_method" not in " ".join(config.CONFIGURABLE_MODULES)
    config.import_configurable_modules()
    config.parse_gin([str(tmp_path / "method.gin")], [])
    import lh_new_method

    assert lh_new_method.strength() == 7
    with pytest.raises(config.ConfigError, match="strength.value expects int, got str 'x'"):
        config.parse_gin([str(tmp_path / "method.gin")], ["lh_new_method.strength.value='x'"])
