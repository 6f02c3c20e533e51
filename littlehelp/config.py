"""Gin configuration: search path, file and override parsing, friendly errors, operative config.

`parse_gin` replaces gin's global configuration with the given files followed by `NAME=VALUE`
overrides, checks it, and locks it. Every problem it can detect before a run starts (a misspelt
configurable, parameter, reference or macro; a required value left unset; a missing file) is raised
as a `ConfigError` whose one-line message names the binding, where it came from, and, when a
registered name is close, what was probably meant.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import io
import logging as python_logging
import tokenize
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import gin
from absl import logging
from gin import config_parser

from littlehelp.errors import EXIT_CONFIG, LittlehelpError

# Modules whose import registers gin configurables; imported before any gin file is parsed.
CONFIGURABLE_MODULES: list[str] = [
    "littlehelp.models",
    "littlehelp.objectives",
    "littlehelp.trainer",
    "littlehelp.checkpoints",
    "littlehelp.partitioning",
    "littlehelp.data",
    "littlehelp.optimizers",
    "littlehelp.inference",
    "spactor",
]
# The repository's gin/ folder, always on the search path (after the working directory).
REPO_GIN_DIR = Path(__file__).resolve().parent.parent / "gin"
COMMAND_LINE = "command line"
OPERATIVE_CONFIG_NAME = "config.gin"
_MACRO_SELECTOR = "gin.macro"
_MACRO_SUFFIX = "/" + _MACRO_SELECTOR
_REQUIRED_REFERENCE = "gin.REQUIRED/gin.constant"


class ConfigError(LittlehelpError, ValueError):
    """A gin file or binding that cannot be used; the message names the culprit."""

    exit_code = EXIT_CONFIG


class _Reference:
    """A configurable reference (`@name`) or macro (`%name`) seen by `_RecordingDelegate`."""

    def __init__(self, name: str, is_macro: bool):
        self.name = name
        self.is_macro = is_macro


class _RecordingDelegate(config_parser.ParserDelegate):
    """Parses gin syntax without consulting gin's registry, keeping references as `_Reference`."""

    def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> _Reference:
        return _Reference(scoped_configurable_name, is_macro=False)

    def macro(self, macro_name: str) -> _Reference:
        return _Reference(macro_name, is_macro=True)


def import_configurable_modules(modules: Sequence[str] | None = None) -> list[str]:
    """Imports `modules` (default `CONFIGURABLE_MODULES`) and returns the names imported.

    A module that does not exist is skipped; an import error raised inside a module propagates.
    """
    imported = []
    for name in CONFIGURABLE_MODULES if modules is None else modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            logging.info("Configurable module %s does not exist; skipped.", name)
            continue
        imported.append(name)
    return imported


def gin_search_path(search_paths: Sequence[str] = ()) -> list[Path]:
    """The folders searched for gin files: the working directory, `search_paths`, the repo gin/."""
    folders = [Path.cwd(), *(Path(p) for p in search_paths), REPO_GIN_DIR]
    return list(dict.fromkeys(folder.resolve() for folder in folders))


def resolve_gin_file(name: str, search_path: Sequence[Path]) -> Path:
    """Returns the first existing `folder / name` (or `name` itself when absolute)."""
    candidates = [Path(name)] if Path(name).is_absolute() else [f / name for f in search_path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(folder) for folder in search_path)
    raise ConfigError(f"gin file '{name}' not found; searched: {searched}")


def parse_override(binding: str) -> str:
    """Turns a command-line `NAME=VALUE` into a gin binding.

    VALUE is kept as written when it is a gin value (number, bool, None, quoted string, @ref,
    %macro, list/tuple/dict of those); anything else is taken as a bare string and quoted, so
    `MODEL_DIR=runs/demo` becomes `MODEL_DIR = 'runs/demo'`.
    """
    name, separator, value = binding.partition("=")
    name, value = name.strip(), value.strip()
    if not separator or not name:
        raise ConfigError(f"override '{binding}' ({COMMAND_LINE}) must look like NAME=VALUE")
    if not _is_single_binding(f"{name} = {value}"):
        value = repr(value)
    return f"{name} = {value}"


def _is_single_binding(text: str) -> bool:
    """Whether `text` is exactly one well-formed gin binding statement."""
    try:
        statements = list(config_parser.ConfigParser(text, _RecordingDelegate()))
    except (SyntaxError, ValueError, tokenize.TokenError):
        return False
    return len(statements) == 1 and isinstance(statements[0], config_parser.BindingStatement)


def parse_gin(
    gin_files: Sequence[str], overrides: Sequence[str], search_paths: Sequence[str] = ()
) -> None:
    """Replaces gin's config with `gin_files` then `overrides` (`NAME=VALUE`), checks and locks it.

    Files are looked up in `gin_search_path(search_paths)`; so are their `include`s.
    Raises `ConfigError` for a missing file, a bad binding, or a required value left unset.
    """
    gin.clear_config()
    search_path = gin_search_path(search_paths)
    _use_search_path(search_path)
    with _quiet_search_misses():
        for name in gin_files:
            path = resolve_gin_file(name, search_path)
            logging.info("Parsing gin file %s", path)
            _parse_bindings(path.read_text(), str(path), search_path)
        for override in overrides:
            _parse_bindings(parse_override(override), COMMAND_LINE, search_path)
    _check_macros_and_required_values()
    _finalize()


def _use_search_path(search_path: Sequence[Path]) -> None:
    """Makes gin look for `include`d files in exactly `search_path`, in order."""
    # gin only appends to its private prefix list; set it so folders of earlier calls drop out.
    prefixes = gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
    prefixes[:] = [str(folder) for folder in search_path]


class _DropSearchMisses(python_logging.Filter):
    """Drops gin's 'Path not found' errors, which it logs for each search-path folder it misses."""

    def filter(self, record: python_logging.LogRecord) -> bool:
        from_gin_reader = record.module == "resource_reader"
        return not (from_gin_reader and str(record.msg).startswith("Path not found"))


@contextlib.contextmanager
def _quiet_search_misses() -> Iterator[None]:
    root = python_logging.getLogger()
    search_misses = _DropSearchMisses()
    root.addFilter(search_misses)
    try:
        yield
    finally:
        root.removeFilter(search_misses)


def _parse_bindings(text: str, source: str, search_path: Sequence[Path]) -> None:
    """Parses `text` (from `source`) into gin, translating failures into `ConfigError`."""
    try:
        gin.parse_config(_named_stream(text, source))
    except (ValueError, NameError, SyntaxError, OSError, tokenize.TokenError) as error:
        problem = _find_bad_statement(text, source, search_path)
        raise ConfigError(problem or f"{source}: {_one_line(str(error))}") from None


def _named_stream(text: str, name: str) -> io.StringIO:
    """`text` as a stream whose name gin's parser reports in its error locations."""
    stream = io.StringIO(text)
    stream.name = name
    return stream


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _find_bad_statement(text: str, source: str, search_path: Sequence[Path]) -> str | None:
    """Explains the first statement of `text` that gin rejects, or None if none is found.

    Files using dynamic registration name configurables by import path; those are not explained.
    """
    if "dynamic_registration" in text:
        return None
    try:
        for statement in config_parser.ConfigParser(text, _RecordingDelegate()):
            problem = _statement_problem(statement, source, search_path)
            if problem:
                return problem
    except (SyntaxError, tokenize.TokenError):
        return None
    return None


def _statement_problem(statement: Any, source: str, search_path: Sequence[Path]) -> str | None:
    """Describes what is wrong with one parsed statement, or None."""
    if isinstance(statement, config_parser.IncludeStatement):
        try:
            path = resolve_gin_file(statement.filename, search_path)
        except ConfigError as error:
            return f"{_where(source, statement.location)}: {error}"
        return _find_bad_statement(path.read_text(), str(path), search_path)
    if not isinstance(statement, config_parser.BindingStatement):
        return None
    problem = _binding_key_problem(statement, source) if statement.arg_name else None
    return problem or _reference_problem(statement, source)


def _where(source: str, location: config_parser.Location) -> str:
    """`file:line: `binding``, or `command line: `binding``."""
    binding = location.line_content.strip()
    place = source if source == COMMAND_LINE else f"{source}:{location.line_num}"
    return f"{place}: `{binding}`"


def _binding_key_problem(statement: config_parser.BindingStatement, source: str) -> str | None:
    """Checks `selector.arg_name` the way gin does; explains an unknown name."""
    try:
        gin.config.ParsedBindingKey.parse((statement.scope, statement.selector, statement.arg_name))
    except ValueError as error:
        where = _where(source, statement.location)
        configurable = _registry().get_match(statement.selector)
        if configurable is None:
            hint = _did_you_mean(statement.selector, _configurable_names())
            return f"{where}: unknown configurable '{statement.selector}'{hint}"
        if statement.arg_name not in _parameter_names(configurable.wrapped):
            hint = _did_you_mean(statement.arg_name, _parameter_names(configurable.wrapped))
            return f"{where}: '{statement.selector}' has no parameter '{statement.arg_name}'{hint}"
        return f"{where}: {_one_line(str(error))}"
    return None


def _reference_problem(statement: config_parser.BindingStatement, source: str) -> str | None:
    """Explains the first `@reference` in the bound value that names no configurable."""
    references = (leaf for leaf in _leaves(statement.value) if isinstance(leaf, _Reference))
    for reference in references:
        selector = reference.name.rsplit("/", 1)[-1]
        if not reference.is_macro and _registry().get_match(selector) is None:
            hint = _did_you_mean(selector, _configurable_names())
            where = _where(source, statement.location)
            return f"{where}: unknown configurable reference '@{selector}'{hint}"
    return None


def _leaves(value: Any) -> Iterator[Any]:
    """Yields the non-container values inside nested lists, tuples and dicts (keys included)."""
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in (*value.keys(), *value.values()):
            yield from _leaves(item)
    else:
        yield value


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
    matches = difflib.get_close_matches(name, candidates, n=1)
    return f"; did you mean '{matches[0]}'?" if matches else ""


def _registry() -> Any:
    # gin keeps its configurables in a private SelectorMap; there is no public way to list them.
    return gin.config._REGISTRY  # pylint: disable=protected-access


def _configurable_names() -> list[str]:
    """Every registered selector and each of its dotted suffixes (`a.b.c`, `b.c`, `c`)."""
    names = set()
    for selector, _ in _registry().items():
        parts = selector.split(".")
        names.update(".".join(parts[i:]) for i in range(len(parts)))
    return sorted(names)


def _parameter_names(fn_or_cls: Callable[..., Any]) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(fn_or_cls).parameters.values()
    return [p.name for p in parameters if p.kind in kinds]


def _bound_values() -> Iterator[tuple[str, str, str, Any]]:
    """Yields (scope, selector, parameter, value) for every binding in gin's config."""
    # gin exposes its bindings only through this private dict (or per configurable).
    bindings = gin.config._CONFIG  # pylint: disable=protected-access
    for (scope, selector), parameters in bindings.items():
        for arg_name, value in parameters.items():
            yield scope, selector, arg_name, value


def _binding_name(scope: str, selector: str, arg_name: str) -> str:
    """A macro's name, or `scope/selector.parameter` for a configurable's parameter."""
    if selector == _MACRO_SELECTOR:
        return scope
    minimal = _registry().minimal_selector(selector)
    return f"{scope}/{minimal}.{arg_name}" if scope else f"{minimal}.{arg_name}"


def _check_macros_and_required_values() -> None:
    """Raises `ConfigError` for a `%macro` used but never set, or a value left `%gin.REQUIRED`."""
    bindings = list(_bound_values())
    macros = sorted(scope for scope, selector, _, _ in bindings if selector == _MACRO_SELECTOR)
    required = []
    for scope, selector, arg_name, value in bindings:
        for name in _referenced_selectors(value):
            if name == _REQUIRED_REFERENCE:
                required.append(_binding_name(scope, selector, arg_name))
            elif name.endswith(_MACRO_SUFFIX) and name.removesuffix(_MACRO_SUFFIX) not in macros:
                macro = name.removesuffix(_MACRO_SUFFIX)
                where = _binding_name(scope, selector, arg_name)
                hint = _did_you_mean(macro, macros)
                raise ConfigError(f"'{where}' uses macro %{macro}, which is never set{hint}")
    if required:
        flags = " ".join(f"--gin.{name}=..." for name in required)
        raise ConfigError(f"required value(s) not set: {', '.join(required)} (set e.g. {flags})")


def _referenced_selectors(value: Any) -> Iterator[str]:
    """The scoped selectors of the gin references (`@x`, `%x`) inside a bound value."""
    for leaf in _leaves(value):
        if isinstance(leaf, gin.config.ConfigurableReference):
            yield leaf.scoped_selector


def _finalize() -> None:
    """Runs gin's finalize hooks and locks the config."""
    try:
        gin.finalize()
    except ValueError as error:
        raise ConfigError(_one_line(str(error))) from None


def missing_required_arguments(configurable: Callable[..., Any]) -> list[str]:
    """Parameters of a gin configurable that default to `gin.REQUIRED` and are not bound."""
    signature = inspect.signature(configurable)
    bound = gin.get_bindings(configurable)
    return [
        name
        for name, parameter in signature.parameters.items()
        if parameter.default is gin.REQUIRED and name not in bound
    ]


def write_operative_config(model_dir: str) -> Path:
    """Writes `gin.operative_config_str()` (the values actually used) to `model_dir/config.gin`."""
    path = Path(model_dir) / OPERATIVE_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(gin.operative_config_str())
    logging.info("Wrote operative gin config to %s", path)
    return path
