"""Test set-up: 8 fake CPU devices for the sharding tests (set before JAX is imported)."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import gin  # noqa: E402  (after the environment above is set)
import pytest  # noqa: E402


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
