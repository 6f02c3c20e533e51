"""Every gin file the README names exists (and tests/test_run_files.py and the model tests run them)."""

import itertools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _expand(path: str) -> list[str]:
    """Expands one {a,b,c} brace group, as the README writes families of files."""
    match = re.search(r"\{([^}]*)\}", path)
    if not match:
        return [path]
    return list(
        itertools.chain.from_iterable(
            _expand(path[: match.start()] + option + path[match.end() :]) for option in match.group(1).split(",")
        )
    )


def test_readme_gin_files_exist():
    text = (REPO / "README.md").read_text()
    named = set(re.findall(r"(?:littlehelp/gin/)?(?:models|runs)/[\w/{},]*\.gin", text))
    paths = {p.removeprefix("littlehelp/gin/") for name in named for p in _expand(name)}
    assert len(paths) >= 15
    missing = sorted(p for p in paths if not (REPO / "littlehelp" / "gin" / p).is_file())
    assert not missing, f"README names gin files that do not exist: {missing}"
