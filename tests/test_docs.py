"""The documentation site: it builds strictly (every page in a toctree, every link and every reference to
littlehelp's API resolved), a broken one fails the build, the snippets marked runnable run, and every gin
file a page names exists."""

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from littlehelp import study_report

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
RUNNABLE = re.compile(r"<!-- runnable -->\n```(python|bash)\n(.*?)```", re.S)
STRICT = ["-W", "--keep-going", "-n", "-q", "-E", "-b", "dummy"]  # dummy: read and resolve, write nothing


def sphinx_build(source: Path, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sphinx", *STRICT, str(source), str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_the_site_builds_strictly(tmp_path):
    built = sphinx_build(DOCS, tmp_path / "out")
    problems = [line for line in built.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    problems = [line for line in problems if "absl::InitializeLog" not in line]  # TensorFlow's own stderr
    assert built.returncode == 0 and not problems, "\n".join(problems or [built.stderr[-3000:]])


@pytest.mark.parametrize(
    ("page", "message"),
    [
        ("[a link](nowhere.md)\n", "cross-reference target not found: 'nowhere.md'"),
        ("{py:func}`littlehelp.launch.no_such_function`\n", "py:func reference target not found"),
        (None, "document isn't included in any toctree"),
    ],
)
def test_a_broken_link_a_missing_page_or_an_unresolved_reference_fails(tmp_path, page, message):
    source = tmp_path / "docs"
    source.mkdir()
    shutil.copy(DOCS / "conf.py", source / "conf.py")
    (source / "index.md").write_text("# Home\n\n" + (page or "Nothing wrong here.\n"))
    (source / "other.md").write_text("# A page in no toctree\n" if page is None else "")
    if page is not None:
        (source / "other.md").unlink()
    built = sphinx_build(source, tmp_path / "out")
    assert built.returncode != 0 and message in built.stderr


def _expand(path: str) -> list[str]:
    """Expands one {a,b,c} brace group, as the pages write families of files."""
    match = re.search(r"\{([^}]*)\}", path)
    if not match:
        return [path]
    return list(
        itertools.chain.from_iterable(
            _expand(path[: match.start()] + option + path[match.end() :]) for option in match.group(1).split(",")
        )
    )


def test_every_gin_file_the_docs_name_exists():
    text = "\n".join(p.read_text() for p in [REPO / "README.md", *study_report.docs_pages(DOCS)])
    named = set(re.findall(r"(?:littlehelp/gin/)?(?:models|runs)/[\w/{},]*\.gin", text))
    paths = {p.removeprefix("littlehelp/gin/") for name in named for p in _expand(name)}
    assert len(paths) >= 15
    missing = sorted(p for p in paths if not (REPO / "littlehelp" / "gin" / p).is_file())
    assert not missing, f"the docs name gin files that do not exist: {missing}"


def test_the_readme_stays_short_and_links_only_existing_pages():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    linked = re.findall(r"\]\((docs/[^)#]+)\)", readme)
    assert len(linked) >= 20 and all((REPO / path).is_file() for path in linked)


def runnable_snippets(language: str) -> list[tuple[str, str]]:
    """[(page and line, code)] of the `language` blocks marked `<!-- runnable -->` in the docs."""
    found = []
    for page in study_report.docs_pages(DOCS):
        text = page.read_text()
        for match in RUNNABLE.finditer(text):
            if match.group(1) == language:
                line = text.count("\n", 0, match.start()) + 2
                found.append((f"{page.relative_to(REPO)}:{line}", match.group(2)))
    return found


# One interpreter runs every Python snippet, each in a fresh namespace: imports are paid once.
SNIPPET_RUNNER = """
import json, sys, traceback
failures = []
for where, code in json.load(sys.stdin):
    try:
        exec(compile(code, where, "exec"), {"__name__": "__snippet__"})
    except Exception:
        failures.append(where + "\\n" + traceback.format_exc(limit=3))
print("\\n".join(failures), file=sys.stderr)
sys.exit(1 if failures else 0)
"""


def test_runnable_python_snippets_run(tmp_path):
    snippets = runnable_snippets("python")
    assert len(snippets) >= 2
    ran = subprocess.run(
        [sys.executable, "-c", SNIPPET_RUNNER],
        input=json.dumps(snippets),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-4000:]


@pytest.mark.parametrize(("where", "code"), runnable_snippets("bash"))
def test_runnable_shell_snippets_run(tmp_path, where, code):
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # littlehelp, as after activating .venv
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PATH": path},
        timeout=600,
    )
    assert ran.returncode == 0, f"{where}: {ran.stderr[-3000:]}"
