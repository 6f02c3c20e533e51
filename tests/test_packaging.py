"""The wheel: it carries every gin file and the `littlehelp` entry point, its import names clash with no
well-known PyPI distribution, and installed outside the checkout it finds its gin files from any folder."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("littlehelp", "spactor", "salt_lm", "distillspec", "softsrv", "active", "federated")
# Import names of well-known distributions that a top-level package of ours must not take.
TAKEN = ("salt", "gin", "jax", "flax", "optax", "seqio", "t5x")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built (no dependencies, the venv's pinned setuptools) from a copy of the sources, so no stale
    build/ folder of the checkout can slip files into it."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("littlehelp-*.whl")
    return built


def test_the_wheel_carries_every_gin_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    gin_files = {str(p.relative_to(REPO)) for package in PACKAGES for p in (REPO / package / "gin").rglob("*.gin")}
    assert len(gin_files) > 40
    assert gin_files <= names, sorted(gin_files - names)


def test_the_wheel_declares_the_littlehelp_command(wheel):
    archive = zipfile.ZipFile(wheel)
    (entry_points,) = (n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "littlehelp = littlehelp.main:run" in archive.read(entry_points).decode().splitlines()


def test_the_top_level_import_names_are_ours_alone(wheel):
    top = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert top == set(PACKAGES)
    assert not top & set(TAKEN)


def test_installed_outside_the_checkout_it_parses_the_demo_from_any_folder(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "from littlehelp import config; "
        "print(config.PACKAGE_GIN_DIR); "
        "config.parse_gin(['runs/demo.gin'], ['MODEL_DIR=\"/tmp/unused\"']); "
        "print(config.resolve_gin_file('salt/salt.gin', config.gin_search_path()))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    core, method_file = (Path(line) for line in done.stdout.splitlines()[-2:])
    assert core == site / "littlehelp" / "gin" and method_file == site / "salt_lm" / "gin" / "salt" / "salt.gin"
