"""Text sources that need no download.

`stdlib_docstrings` collects the docstrings of the Python standard library on this machine: real
English prose, available everywhere Python is, split deterministically by module into train and
validation.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import sysconfig
from pathlib import Path

MIN_DOCSTRING_CHARS = 64
VALIDATION_PERCENT = 10


def _docstrings(path: Path) -> list[str]:
    """Docstrings of a module and of its classes and functions, whitespace-normalised."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)]
    texts = (ast.get_docstring(node) for node in nodes)
    return [" ".join(t.split()) for t in texts if t and len(t) >= MIN_DOCSTRING_CHARS]


def split_of(module_name: str) -> str:
    """The split a module's texts belong to, from a stable hash of its name."""
    bucket = int(hashlib.sha256(module_name.encode()).hexdigest(), 16) % 100
    return "validation" if bucket < VALIDATION_PERCENT else "train"


@functools.cache
def stdlib_docstrings(split: str) -> tuple[str, ...]:
    """The standard library's docstrings for `split` ("train" or "validation"), in a fixed order."""
    if split not in ("train", "validation"):
        raise ValueError(f"stdlib_docstrings: unknown split {split!r}; use 'train' or 'validation'")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for path in sorted(stdlib.glob("*.py")):
        if split_of(path.stem) == split:
            texts.extend(_docstrings(path))
    if not texts:
        raise FileNotFoundError(f"no docstrings found under the standard library at {stdlib}")
    return tuple(texts)
