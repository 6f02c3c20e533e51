"""Test set-up: 8 fake CPU devices for the sharding tests (set before JAX is imported)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA compiles with most optimizations off (LLVM at -O0; the optimized HLO, and so FLOPs counts and results'
# semantics, are the same): the suite's time is mostly compiling tiny programs, which this about halves
# (test_aot + test_run_files: 125 s -> 89 s). Subprocesses of tests inherit it. Tests check what programs
# compute, never how fast they run.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# One thread per OpenMP pool (torch, behind the HF reference models; faiss; OpenBLAS): xdist runs a worker per
# core, and a pool's threads spin while waiting for a core: HF generate took 10x the CPU time with 2 threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")


import gin
import pytest

# Real pretrained models, session-scoped: the tests that use them run on one xdist worker, which loads them once.
ONE_WORKER_SESSION_FIXTURES = frozenset({"smollm2", "hf_smollm2"})
GROUPS_DIR = "LITTLEHELP_TEST_GROUPS_DIR"  # where xdist workers leave {nodeid: group} for the controller


def shared_fixture_groups(items) -> dict[str, str]:
    """{nodeid: group} of the tests that share a module-scoped fixture (built once per module and worker)
    or one of ONE_WORKER_SESSION_FIXTURES; groups that share a test are merged, so a group names one
    fixture or module. Other tests are in no group."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keyed = {}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        keys = set()
        for name in info.names_closure if info else ():
            fixturedefs = info.name2fixturedefs.get(name)
            scope = fixturedefs[-1].scope if fixturedefs else None
            if scope == "module" or (scope == "session" and name in ONE_WORKER_SESSION_FIXTURES):
                keys.add(item.nodeid.split("::")[0] if scope == "module" else name)
        if keys:
            first, *rest = sorted(keys)
            for key in rest:
                parent[root(key)] = root(first)
            keyed[item.nodeid] = first
    return {nodeid: root(key) for nodeid, key in keyed.items()}


def pytest_configure(config):
    """The xdist controller (`-n N`, `--dist loadgroup`: pyproject.toml) gives its workers a folder for
    their groups (`pytest_collection_modifyitems`): it collects no tests itself."""
    if config.getoption("dist", None) == "loadgroup" and not os.environ.get("PYTEST_XDIST_WORKER"):
        import tempfile

        os.environ[GROUPS_DIR] = config._littlehelp_groups_dir = tempfile.mkdtemp(prefix="littlehelp-test-groups-")


def pytest_unconfigure(config):
    if getattr(config, "_littlehelp_groups_dir", None):
        import shutil

        shutil.rmtree(config._littlehelp_groups_dir, ignore_errors=True)
        os.environ.pop(GROUPS_DIR, None)


def pytest_collection_modifyitems(items):
    """An xdist worker writes the groups of the tests it collected (`shared_fixture_groups`) for the
    controller's scheduler (`pytest_xdist_make_scheduler`)."""
    worker, folder = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get(GROUPS_DIR)
    if worker and folder:
        import json
        from pathlib import Path

        path = Path(folder) / f"{worker}.json"
        path.with_suffix(".tmp").write_text(json.dumps(shared_fixture_groups(items)))
        path.with_suffix(".tmp").replace(path)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` with the groups of `shared_fixture_groups` as well as `xdist_group` marks: each
    group is one unit of work (one worker), other tests are spread one by one. (pytest-xdist 3.8 reads
    the marks from node ids it renames, which pytest 9.2 ignores: pytest-xdist issue #1386.)"""
    if config.getoption("dist", None) != "loadgroup" or not os.environ.get(GROUPS_DIR):
        return None
    import json
    from pathlib import Path

    from xdist.scheduler import LoadGroupScheduling

    class SharedFixtureScheduling(LoadGroupScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # first called once every worker has collected (and written its groups)
                self.groups = {}
                for path in sorted(Path(os.environ[GROUPS_DIR]).glob("*.json")):
                    self.groups |= json.loads(path.read_text())
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return SharedFixtureScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
    """One XLA compilation cache for the whole session, shared by the xdist workers: many tests compile
    the same tiny train, eval and decode steps again (a straight run and its resumed twin)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    jax.config.update("jax_compilation_cache_dir", str(shared / "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()


@pytest.fixture(autouse=True)
def _fresh_gin_config():
    """Each test starts and ends with no gin bindings: a CLI test's parsed (and locked) config
    must not leak into a later test that calls configurables directly."""
    gin.clear_config()
    yield
    gin.clear_config()


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # HF transformers (the parity reference) never reaches a hub


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of the real SmolLM2-135M-Instruct GGUF file (from the data cache; set-up fetches it)."""
    from littlehelp.data import pretrained

    return pretrained.ensure("smollm2_135m")


@pytest.fixture(scope="session")
def minilm_dir():
    """The real all-MiniLM-L6-v2 HF folder (from the data cache; set-up fetches it)."""
    from littlehelp.data import pretrained

    return pretrained.ensure("minilm_l6")


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    """SmolLM2-135M imported once per session (`convert.load`): shared by every test that needs it."""
    from littlehelp.models import convert

    return convert.load(smollm2_gguf)


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_gguf):
    """HF transformers' own reading of the same GGUF file (the parity reference), once per session."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name).eval()
