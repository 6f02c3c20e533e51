"""SoftSRV: soft prompts trained in front of a frozen LM generate targeted synthetic data (docs/methods/softsrv.md).

`softsrv.prompts`: the parameterisations (NSP, MPk, MLP); `softsrv.objective`: the NLL of an example
given the prompt of its context vector, the LM and the sentence embedder frozen; `softsrv.data`:
examples from any file as a seqio Task; `softsrv.generate`: soft- and hard-prompted samples through the
core's sampling loop; `softsrv.mauve`: MAUVE on sentence-embedder features (the optional extra `eval`).
"""

from softsrv.objective import SoftPromptObjective
from softsrv.prompts import PARAMETERISATIONS, MixturePrompt, MLPPrompt, NonContextualPrompt

__all__ = ["PARAMETERISATIONS", "MLPPrompt", "MixturePrompt", "NonContextualPrompt", "SoftPromptObjective"]
