"""provenance.git_state: the commit, and dirty only when code differs from it (not the results and
Markdown that studies and benchmarks write)."""

import subprocess

from littlehelp import provenance


def git(repo, *arguments):
    subprocess.run(["git", "-C", str(repo), *arguments], check=True, capture_output=True)


def test_dirty_means_code_changed_not_results(tmp_path):
    (tmp_path / "results").mkdir()
    for name in ("code.py", "README.md", "results/table.md", "results/result.json"):
        (tmp_path / name).write_text("one\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    state = provenance.git_state(tmp_path)
    assert len(state["commit"]) == 40 and not state["dirty"]
    for name in ("README.md", "results/table.md", "results/result.json"):
        (tmp_path / name).write_text("two\n")
    assert not provenance.git_state(tmp_path)["dirty"]
    (tmp_path / "code.py").write_text("two\n")
    assert provenance.git_state(tmp_path)["dirty"]


def test_outside_a_repository_there_is_no_commit(tmp_path):
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None}
