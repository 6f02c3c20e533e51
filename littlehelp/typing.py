"""The type aliases littlehelp's modules share; it imports nothing from littlehelp, so any module may import it."""

from collections.abc import Mapping
from typing import Any

import jax

Array = jax.Array
"""A JAX array."""

Params = Any
"""A params pytree: `Any`, as in flax.typing: no static type fits nested dicts with boxed or abstract leaves."""

Batch = Mapping[str, Array]
"""A batch: a feature name (`littlehelp.features`) to an array."""

BatchSpec = Mapping[str, Any]
"""A batch's shapes: a feature name to anything with `.shape` and `.dtype` (an array, a `jax.ShapeDtypeStruct`)."""

PRNGKey = jax.Array
"""A PRNG key: a typed key from `jax.random.key`."""

Metrics = dict[str, Array]
"""A step's metrics: a metric name to its value (a scalar array)."""

Dtype = Any
"""A dtype argument: a `jnp.dtype`, a scalar type such as `jnp.float32`, or its name."""
