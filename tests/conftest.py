"""Test set-up: 8 fake CPU devices for the sharding tests (set before JAX is imported)."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import gin  # noqa: E402  (after the environment above is set)
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_gin_config():
    """Each test starts and ends with no gin bindings: a CLI test's parsed (and locked) config
    must not leak into a later test that calls configurables directly."""
    gin.clear_config()
    yield
    gin.clear_config()
