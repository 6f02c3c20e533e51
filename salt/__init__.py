"""SALT: a small LM's soft labels and data selection early in a larger LM's pre-training (methods.md section 2)."""

from salt.objective import TRANSITIONS, DistillationObjective, salt_curriculum

__all__ = ["TRANSITIONS", "DistillationObjective", "salt_curriculum"]
