"""SpacTor: span corruption + replaced token detection with a two-stage curriculum (docs/methods/spactor.md)."""

from spactor.flops import flops_ratio, total_flops_ratio
from spactor.generator import Generator, generator_config
from spactor.objective import HybridObjective, spactor_curriculum, task_vocabulary_size

__all__ = [
    "Generator",
    "HybridObjective",
    "flops_ratio",
    "generator_config",
    "spactor_curriculum",
    "task_vocabulary_size",
    "total_flops_ratio",
]
