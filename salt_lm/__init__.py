"""SALT: a small LM's soft labels and data selection early in a larger LM's pre-training (docs/methods/salt.md).

`salt_lm.objective`: the distillation stage and the two-stage curriculum; `salt_lm.selection`: SALT_DS's
streamed teacher scoring and selection of a new seqio Task through the active-learning stage.
"""

from salt_lm.objective import TRANSITIONS, DistillationObjective, salt_curriculum

__all__ = ["TRANSITIONS", "DistillationObjective", "salt_curriculum"]
