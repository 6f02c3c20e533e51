"""Gin configuration: search path, file and override parsing, friendly errors, operative config.

`parse_gin` replaces gin's global configuration with the given files followed by `NAME=VALUE`
overrides, checks it, and locks it. Every problem it can detect before a run starts (a misspelt
configurable, parameter, reference or macro; a required value left unset; a command-line macro
nothing reads; a literal that its parameter's type annotation refuses; a missing file) is raised as
a `ConfigError` whose one-line message names the binding, where it came from, and, when a registered
name is close, what was probably meant.
"""

from __future__ import annotations

import collections.abc
import contextlib
import difflib
import functools
import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import inspect
import io
import logging as python_logging
import re
import tokenize
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
from absl import logging
from gin import config_parser

from littlehelp.errors import EXIT_CONFIG, LittlehelpError

# The core's modules whose import registers gin configurables; imported before any gin file is
# parsed. A method package is not listed: its gin files import it (`import spactor.objective`), which
# registers its configurables, so a new package needs no edit here.
CONFIGURABLE_MODULES: list[str] = [
    "littlehelp.models",
    "littlehelp.objectives",
    "littlehelp.trainer",
    "littlehelp.checkpoints",
    "littlehelp.partitioning",
    "littlehelp.data",
    "littlehelp.optimizers",
    "littlehelp.inference",
    "littlehelp.frozen",
]
# The core's gin files shipped inside the package (littlehelp/gin/: models/, runs/), found through
# importlib.resources so that a wheel install has them; searched after the user's folders.
PACKAGE_GIN_DIR = Path(str(importlib.resources.files("littlehelp") / "gin"))
# Method packages ship their gin files in their own gin/ folder (salt_lm/gin/salt/salt.gin is `salt/salt.gin`)
# and name the package in this entry-point group (pyproject.toml), so the core imports none of them.
GIN_ENTRY_POINTS = "littlehelp.gin"
COMMAND_LINE = "command line"
OVERRIDE_PREFIX = "--gin."  # a command-line argument `--gin.NAME=VALUE` is the override `NAME=VALUE`
OPERATIVE_CONFIG_NAME = "config.gin"
_MACRO_SELECTOR = "gin.macro"
_MACRO_SUFFIX = "/" + _MACRO_SELECTOR
_REQUIRED_REFERENCE = "gin.REQUIRED/gin.constant"
_MACRO_ARG = "value"  # gin stores macro NAME's value as parameter "value" of (NAME, "gin.macro")
# (scope, complete selector, parameter): the key of one binding in gin's config.
_BindingKey = tuple[str, str, str]
# Annotations checked as scalars -> the types of the values they accept (bool is refused where
# another type is expected, although it is an int).
_SCALARS: dict[Any, tuple[type, ...]] = {
    bool: (bool,),
    int: (int,),
    float: (int, float),
    str: (str,),
    type(None): (type(None),),
}
# Container annotations (bare or subscripted) -> the gin literal types they accept.
_CONTAINERS: dict[Any, tuple[type, ...]] = {
    list: (list,),
    tuple: (tuple,),
    dict: (dict,),
    collections.abc.Sequence: (list, tuple),
    collections.abc.Mapping: (dict,),
}


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


@functools.cache
def method_gin_dirs() -> tuple[Path, ...]:
    """The gin/ folders of the method packages registered in the `littlehelp.gin` entry-point group, found
    without importing the packages."""
    folders = []
    for point in importlib.metadata.entry_points(group=GIN_ENTRY_POINTS):
        spec = importlib.util.find_spec(point.value)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"gin entry point {point.name} = {point.value!r} names no installed package")
        folders.append(Path(spec.submodule_search_locations[0]) / "gin")
    return tuple(folders)


def gin_search_path(search_paths: Sequence[str] = ()) -> list[Path]:
    """The folders searched for gin files: the working directory, `search_paths`, the core's gin folder, then
    the method packages' gin folders."""
    folders = [Path.cwd(), *(Path(p) for p in search_paths), PACKAGE_GIN_DIR, *method_gin_dirs()]
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


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--gin.NAME=VALUE` (or `--gin.NAME VALUE`) overrides from the other arguments.

    Returns (other arguments, overrides as `NAME=VALUE`).
    """
    rest: list[str] = []
    overrides: list[str] = []
    args = iter(argv)
    for arg in args:
        if not arg.startswith(OVERRIDE_PREFIX):
            rest.append(arg)
        elif "=" in arg:
            overrides.append(arg.removeprefix(OVERRIDE_PREFIX))
        else:
            value = next(args, None)
            if value is None:
                raise ConfigError(f"override '{arg}' ({COMMAND_LINE}) has no value")
            overrides.append(f"{arg.removeprefix(OVERRIDE_PREFIX)}={value}")
    return rest, overrides


def _is_single_binding(text: str) -> bool:
    """Whether `text` is exactly one well-formed gin binding statement."""
    try:
        statements = list(config_parser.ConfigParser(text, _RecordingDelegate()))
    except (SyntaxError, ValueError, tokenize.TokenError):
        return False
    return len(statements) == 1 and isinstance(statements[0], config_parser.BindingStatement)


def parse_gin(gin_files: Sequence[str], overrides: Sequence[str], search_paths: Sequence[str] = ()) -> None:
    """Replaces gin's config with `gin_files` then `overrides` (`NAME=VALUE`), checks and locks it.

    Files are looked up in `gin_search_path(search_paths)`; so are their `include`s.
    Raises `ConfigError` for a missing file, a bad binding, a required value left unset, a
    command-line macro that nothing reads, or a literal value (reached directly or through
    `%MACRO` references) that the annotated type of its parameter refuses.
    """
    gin.clear_config()
    search_path = gin_search_path(search_paths)
    _use_search_path(search_path)
    origins: dict[_BindingKey, str] = {}
    command_line: dict[_BindingKey, str] = {}
    with _quiet_search_misses():
        for name in gin_files:
            path = resolve_gin_file(name, search_path)
            logging.info("Parsing gin file %s", path)
            origins.update(_parse_bindings(path.read_text(), str(path), search_path))
        for override in overrides:
            command_line.update(_parse_bindings(parse_override(override), COMMAND_LINE, search_path))
    _check_macros_and_required_values()
    _check_command_line_macros_are_read(command_line)
    _check_types({**origins, **command_line})
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


def _parse_bindings(text: str, source: str, search_path: Sequence[Path]) -> dict[_BindingKey, str]:
    """Parses `text` (from `source`) into gin, translating failures into `ConfigError`.

    Returns `_binding_origins(text, source, search_path)`.
    """
    try:
        gin.parse_config(_named_stream(text, source))
    except (ValueError, NameError, SyntaxError, OSError, tokenize.TokenError) as error:
        problem = _find_bad_statement(text, source, search_path)
        raise ConfigError(problem or f"{source}: {_one_line(str(error))}") from None
    return _binding_origins(text, source, search_path)


def _binding_origins(text: str, source: str, search_path: Sequence[Path]) -> dict[_BindingKey, str]:
    """{gin config key: `_where` it is bound} for the bindings of `text` and of its `include`s.

    A key bound twice keeps its last place, as gin keeps its last value. `text` must parse.
    """
    origins = {}
    for statement in config_parser.ConfigParser(text, _RecordingDelegate()):
        if isinstance(statement, config_parser.IncludeStatement):
            path = resolve_gin_file(statement.filename, search_path)
            origins.update(_binding_origins(path.read_text(), str(path), search_path))
        elif isinstance(statement, config_parser.BindingStatement):
            key = _config_key(statement)
            if key is not None:
                origins[key] = _where(source, statement.location)
    return origins


def _config_key(statement: config_parser.BindingStatement) -> _BindingKey | None:
    """The key under which gin stores `statement`'s value; None for an unregistered selector."""
    if not statement.arg_name:
        scoped = f"{statement.scope}/{statement.selector}" if statement.scope else statement.selector
        return scoped, _MACRO_SELECTOR, _MACRO_ARG
    configurable = _registry().get_match(statement.selector)
    if configurable is None:
        return None
    return statement.scope, configurable.selector, statement.arg_name


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
    names: set[str] = set()
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


def _macro_values() -> dict[str, Any]:
    """{macro name: bound value} of every macro in gin's config."""
    return {scope: value for scope, selector, _, value in _bound_values() if selector == _MACRO_SELECTOR}


def _macro_of(scoped_selector: str) -> str | None:
    """The macro name a reference's scoped selector (`NAME/gin.macro`) denotes, or None."""
    return scoped_selector.removesuffix(_MACRO_SUFFIX) if scoped_selector.endswith(_MACRO_SUFFIX) else None


def _check_macros_and_required_values() -> None:
    """Raises `ConfigError` for a `%macro` used but never set, or a value left `%gin.REQUIRED`."""
    macros = sorted(_macro_values())
    required = []
    for scope, selector, arg_name, value in _bound_values():
        for name in _referenced_selectors(value):
            macro = _macro_of(name)
            if name == _REQUIRED_REFERENCE:
                required.append(_binding_name(scope, selector, arg_name))
            elif macro is not None and macro not in macros:
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


def _check_command_line_macros_are_read(command_line: Mapping[_BindingKey, str]) -> None:
    """Raises `ConfigError` for a macro set on the command line that no binding reads.

    gin takes such a name as a new macro, so a misspelt `--gin.TRAIN_STEPZ=3` would otherwise be
    ignored. `command_line` maps the overrides' keys to where they are written. Macros set in files
    and read by nothing stay allowed: files are shared by runs that read different macros.
    """
    read = sorted(
        {
            macro
            for *_, value in _bound_values()
            for macro in map(_macro_of, _referenced_selectors(value))
            if macro is not None
        }
    )
    for (name, selector, _), where in command_line.items():
        if selector == _MACRO_SELECTOR and name not in read:
            hint = _did_you_mean(name, read)
            raise ConfigError(f"{where}: no gin file or binding reads macro {name}{hint}")


def _check_types(origins: Mapping[_BindingKey, str]) -> None:
    """Raises `ConfigError` for the first bound literal that its parameter's annotation refuses.

    A `%MACRO` is followed to the literal it holds; the message names the binding that writes that
    literal (from `origins`), the parameter and the expected type. See `_conforms` for what is checked.
    """
    macros = _macro_values()
    for scope, selector, arg_name, value in _bound_values():
        hint = _parameter_hints(selector).get(arg_name)
        if hint is None:
            continue
        key, literal = _follow_macros((scope, selector, arg_name), value, macros)
        if not _conforms(literal, hint):
            where = origins.get(key, "gin config")
            name = _binding_name(scope, selector, arg_name)
            got = f"{type(literal).__name__} {literal!r}"
            raise ConfigError(f"{where}: {name} expects {_type_name(hint)}, got {got}")


def _parameter_hints(selector: str) -> dict[str, Any]:
    """The resolved parameter annotations of the configurable `selector`; {} if unresolvable."""
    fn_or_cls = _registry().get_match(selector).wrapped
    try:
        return typing.get_type_hints(fn_or_cls.__init__ if inspect.isclass(fn_or_cls) else fn_or_cls)
    except (NameError, TypeError):  # e.g. a name imported only for type checkers
        return {}


def bound_value(binding: str) -> Any:
    """The value gin binds to `binding` (e.g. 'trainer.train.steps') once its `%MACRO` references are followed."""
    return _follow_macros(("", binding, ""), gin.query_parameter(binding), _macro_values())[1]


def macro_value(name: str) -> Any:
    """The parsed config's value of macro `name`: a literal as bound, a reference called in the macro's own
    scope (as config.gin scopes it), so `MODEL_CONFIG = @decoder.DecoderConfig()` gives the config; None
    where no file binds it."""
    try:
        value = gin.query_parameter(f"%{name}")
    except ValueError:
        return None
    if not isinstance(value, gin.config.ConfigurableReference):
        return value
    with gin.config_scope(name):
        return value.scoped_configurable_fn()


def _follow_macros(key: _BindingKey, value: Any, macros: Mapping[str, Any]) -> tuple[_BindingKey, Any]:
    """(key, value) of the binding that holds what `value` denotes once its `%MACRO` references are followed."""
    followed = set()
    while isinstance(value, gin.config.ConfigurableReference):
        macro = _macro_of(value.scoped_selector)
        if macro is None or macro not in macros or macro in followed:
            break
        followed.add(macro)
        key, value = (macro, _MACRO_SELECTOR, _MACRO_ARG), macros[macro]
    return key, value


def _conforms(value: Any, hint: Any) -> bool:
    """Whether the gin literal `value` fits the type annotation `hint`.

    Checked: bool, int (a bool is not one), float (an int is one), str, None, unions (`X | None`,
    Optional), and the kind and items of list, tuple, dict, Sequence and Mapping (a str is not a
    Sequence here). Any other annotation, and any `@reference` or `%constant`, passes.
    """
    if isinstance(value, gin.config.ConfigurableReference):
        return True
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if hint in _SCALARS:
        return isinstance(value, _SCALARS[hint]) and (hint is bool or not isinstance(value, bool))
    if origin not in _CONTAINERS:
        return True
    return isinstance(value, _CONTAINERS[origin]) and _items_conform(value, origin, args)


def _items_conform(value: Any, origin: Any, args: tuple[Any, ...]) -> bool:
    """Whether the items of a container literal fit the arguments of its annotation `origin[args]`."""
    if not args:
        return True
    if isinstance(value, dict):
        key_hint, value_hint = args
        return all(_conforms(k, key_hint) and _conforms(v, value_hint) for k, v in value.items())
    if origin is tuple and args[-1] is not Ellipsis:
        return len(value) == len(args) and all(map(_conforms, value, args))
    return all(_conforms(item, args[0]) for item in value)


def _type_name(hint: Any) -> str:
    """An annotation as written in code, without module prefixes: `Mapping[str, int]`, `int | None`."""
    return re.sub(r"\b(?:\w+\.)+", "", inspect.formatannotation(hint))


def _finalize() -> None:
    """Runs gin's finalize hooks and locks the config."""
    try:
        gin.finalize()
    except ValueError as error:
        raise ConfigError(_one_line(str(error))) from None


def missing_required_arguments(configurable: Callable[..., Any]) -> list[str]:
    """Parameters of a gin configurable that have no default (or `gin.REQUIRED`) and are not bound.

    Reads the bindings without calling the configurables they reference.
    """
    bound = gin.get_bindings(configurable, resolve_references=False)
    return [name for name in _required_parameters(configurable) if name not in bound]


def missing_reference_arguments(configurable: Callable[..., Any]) -> list[str]:
    """`scope/name.parameter` of each unbound required parameter of the configurables that gin calls
    (`@name()`, also through `%MACRO` references) to fill `configurable`'s bound arguments; none is called."""
    macros, missing = _macro_values(), []
    for value in gin.get_bindings(configurable, resolve_references=False).values():
        for reference in _called_references(value, macros):  # gin calls each in its own scope
            selector = "/".join([*reference.scopes, reference.configurable.selector])
            bound = gin.get_bindings(selector, resolve_references=False)
            name = reference.scoped_selector  # as the gin file writes it
            missing += [f"{name}.{p}" for p in _required_parameters(reference.configurable.wrapped) if p not in bound]
    return list(dict.fromkeys(missing))


def _called_references(value: Any, macros: Mapping[str, Any], followed: frozenset[str] = frozenset()) -> Iterator[Any]:
    """Each `@name()` reference in a bound value, `%MACRO` references followed to their values."""
    for leaf in _leaves(value):
        if not isinstance(leaf, gin.config.ConfigurableReference) or not leaf.evaluate:
            continue
        macro = _macro_of(leaf.scoped_selector)
        if macro is None:
            yield leaf
        elif macro in macros and macro not in followed:
            yield from _called_references(macros[macro], macros, followed | {macro})


def _required_parameters(fn_or_cls: Callable[..., Any]) -> list[str]:
    """Parameters that a call without arguments leaves unset (no default, or `gin.REQUIRED`); [] when
    the signature cannot be read (some builtins)."""
    try:
        parameters = inspect.signature(fn_or_cls).parameters
    except (ValueError, TypeError):
        return []
    return [
        name
        for name in _parameter_names(fn_or_cls)
        if parameters[name].default is inspect.Parameter.empty or parameters[name].default is gin.REQUIRED
    ]


def gin_bindings(text: str) -> dict[str, Any]:
    """{"scope/configurable.parameter" or macro name: value} of the bindings in gin `text` (e.g. a run's
    config.gin), values as plain Python: references read "@name", macros "%name"."""
    bindings = {}
    for statement in config_parser.ConfigParser(text, _RecordingDelegate()):
        if isinstance(statement, config_parser.BindingStatement):
            name = f"{statement.selector}.{statement.arg_name}" if statement.arg_name else statement.selector
            bindings[f"{statement.scope}/{name}" if statement.scope else name] = _plain_value(statement.value)
    return bindings


def _plain_value(value: Any) -> Any:
    """A parsed gin value with its references and macros as "@name" / "%name" strings."""
    if isinstance(value, _Reference):
        return ("%" if value.is_macro else "@") + value.name
    if isinstance(value, (list, tuple)):
        return [_plain_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain_value(item) for key, item in value.items()}
    return value


def write_operative_config(model_dir: str) -> Path:
    """Writes `gin.operative_config_str()` (the values actually used) to `model_dir/config.gin`.

    Only process 0 writes it; the other processes of a multi-process run return the same path.
    """
    import jax  # pylint: disable=import-outside-toplevel (only runs that write a config need it)

    path = Path(model_dir) / OPERATIVE_CONFIG_NAME
    if jax.process_index() != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(gin.operative_config_str())
    logging.info("Wrote operative gin config to %s", path)
    return path
