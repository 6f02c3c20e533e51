"""Model families: each registers itself at the bottom of its own module; the core reads them here.

A family is its config class, the builder of its `api.Model` from that config, and rules for any
logical axes it introduces beyond `partitioning.LOGICAL_AXES` (most families use those names only).
`build_model` builds from the family of a config's type, and `partitioning.logical_axis_rules` adds the
families' rules. FLOPs need no entry: each model's seam counts its own (`Model.forward_flops`, with the
helpers in `littlehelp/flops.py`). So a new family is one module, imported by whatever uses it (a gin
file's `import`), and no edit elsewhere:

    registry.register(registry.ModelFamily("mine", MyConfig, MyModel, logical_axes=(("experts", "tensor"),)))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from littlehelp.config import ConfigError
from littlehelp.models.api import Model


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """One model family: `build(config)` is the seam of a model of `config_class`."""

    name: str
    config_class: type
    build: Callable[[Any], Model]
    logical_axes: tuple[tuple[str, Any], ...] = ()  # (axis name, mesh axes) for axis names it introduces


FAMILIES: dict[type, ModelFamily] = {}  # config class -> its family


def register(family: ModelFamily) -> ModelFamily:
    """Adds `family` (each family's module calls this once, at import); a config class has one family."""
    taken = FAMILIES.get(family.config_class)
    if taken is not None:
        raise ValueError(
            f"model family {family.name!r}: {family.config_class.__name__} already belongs to "
            f"model family {taken.name!r}"
        )
    FAMILIES[family.config_class] = family
    return family


def family_of(config: Any) -> ModelFamily:
    """The family of `config`'s type, or ConfigError naming the type and the known ones."""
    family = FAMILIES.get(type(config))
    if family is None:
        known = ", ".join(sorted(c.__name__ for c in FAMILIES))
        raise ConfigError(f"no model family for a {type(config).__name__}; known configs: {known}")
    return family
