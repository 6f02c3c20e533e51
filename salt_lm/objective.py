"""SALT's distillation stage (docs/methods/salt.md): a small LM's soft labels early in a larger LM's training.

For the first n_KD steps the student q trains on

    (1 - omega) CE(y, q) + omega FKL(p_teacher || q)        per target token,

the teacher p a frozen model (`trainer.train.frozen_models`, read from a checkpoint path in gin),
both models' logits divided by `temperature` inside the FKL term; then on the plain LM loss.

With `teacher = None` the soft labels are the teacher's stored top-k (a labelled Task,
`littlehelp.data.teacher_labels`): FKL becomes the KL divergence between the teacher's k + 1 buckets
(its top k tokens and the rest of the vocabulary as one) and the student's mass on the same buckets
(`losses.sparse_divergence`), the step runs no teacher and holds no teacher parameters, and the
temperature must be 1 (the labels are stored at temperature 1). The
transition is abrupt (omega constant until n_KD, the default) or linear (omega decays from its
value at step 0 to 0 at n_KD). The two heads run chunked over the sequence in one pass
(`losses.chunked_labels_and_divergence`), so no [batch, length, vocab] logits exist.

`salt_curriculum` builds the two stages. After n_KD the step is the plain LM objective's own compiled
step: the teacher is neither run nor an argument of it (jit drops the frozen parameters a step does
not read), so its FLOPs and argument bytes equal a run without a teacher.

    TRAIN_CURRICULUM = @salt.salt_curriculum()
    salt.salt_curriculum.distillation = @salt.DistillationObjective()
    salt.salt_curriculum.language_model = %OBJECTIVE
    salt.salt_curriculum.n_kd = %N_KD
"""

from __future__ import annotations

import copy
from typing import NoReturn

import gin
import jax.numpy as jnp

from littlehelp import flops, losses
from littlehelp.config import ConfigError
from littlehelp.features import DECODER_TARGET_TOKENS
from littlehelp.models import Model
from littlehelp.objectives import Curriculum, Objective, stored_teacher_labels, token_metrics, token_weights
from littlehelp.typing import Array, Batch, Metrics, Params

TRANSITIONS = ("abrupt", "linear")


def _refuse(problem: str) -> NoReturn:
    """Raises the one-line ConfigError naming the knob."""
    raise ConfigError(f"salt: {problem}")


def _check_knobs(
    model: Model, teacher: Model | None, omega: float, temperature: float, decay_steps: int | None
) -> None:
    """Refuses, by name, a mixing weight, temperature, decay or teacher vocabulary the objective cannot use."""
    if not 0.0 <= omega <= 1.0:
        _refuse(f"DistillationObjective.omega must be in [0, 1], got {omega!r}")
    if not temperature > 0:
        _refuse(f"DistillationObjective.temperature must be > 0, got {temperature!r}")
    if decay_steps is not None and (
        isinstance(decay_steps, bool) or not isinstance(decay_steps, int) or decay_steps < 1
    ):
        _refuse(f"DistillationObjective.decay_steps must be None or an integer >= 1, got {decay_steps!r}")
    if teacher is None:
        if temperature != 1.0:
            _refuse(
                f"DistillationObjective.temperature={temperature!r} with stored labels (teacher None): "
                "they are stored at temperature 1"
            )
        return
    student_vocab, teacher_vocab = model.config.vocab_size, teacher.config.vocab_size
    if student_vocab != teacher_vocab:
        _refuse(
            f"the teacher's vocabulary ({teacher_vocab} ids) differs from the student's ({student_vocab} ids): "
            "soft labels need the same tokenizer"
        )


@gin.configurable(module="salt")
class DistillationObjective:
    """(1 - omega) CE + omega FKL(teacher || student) per token (see the module docstring).

    model: the student (trained, under `model_key`); teacher: the frozen teacher's seam (its
    parameters are the trainer's frozen model `teacher_key`), or None to read stored labels from the
    batch; omega: the soft labels' share;
    temperature: on both models' logits in the FKL term; decay_steps: None (omega constant) or the
    step at which a linear decay of omega reaches 0 (`salt_curriculum` sets it for 'linear');
    z_loss: as the plain LM objective's; chunk_size: positions per chunk of the two heads.
    """

    def __init__(
        self,
        model: Model = gin.REQUIRED,
        teacher: Model | None = gin.REQUIRED,
        omega: float = 0.5,
        temperature: float = 1.0,
        decay_steps: int | None = None,
        z_loss: float = 1e-4,
        model_key: str = "model",
        teacher_key: str = "teacher",
        chunk_size: int = losses.DEFAULT_CHUNK_SIZE,
    ):
        _check_knobs(model, teacher, omega, temperature, decay_steps)
        self.model, self.teacher, self.omega, self.temperature = model, teacher, float(omega), float(temperature)
        self.decay_steps, self.z_loss, self.chunk_size = decay_steps, z_loss, chunk_size
        self.model_key, self.teacher_key = model_key, teacher_key
        self.trainable_keys = (model_key,)

    @property
    def name(self) -> str:
        decay = "" if self.decay_steps is None else f",linear to {self.decay_steps}"
        return f"salt[omega={self.omega:g}{decay}]"

    def omega_at(self, step: Array | int) -> Array:
        """The soft labels' share at `step`: omega, or omega (1 - step / decay_steps) clipped at 0."""
        if self.decay_steps is None:
            return jnp.asarray(self.omega, jnp.float32)
        remaining = 1.0 - jnp.asarray(step, jnp.float32) / self.decay_steps
        return self.omega * jnp.clip(remaining, 0.0, 1.0)

    def init_params(self, rng: Array, batch: Batch) -> Params:
        """The student's parameters only (the teacher is a frozen model, loaded by the trainer)."""
        return {self.model_key: self.model.init(rng, batch)}

    def loss(self, params: Params, batch: Batch, rng: Array, step: Array) -> tuple[Array, Metrics]:
        """Mean mixed loss per target token; metrics: cross-entropy, FKL, accuracy, z-loss, omega."""
        student = params[self.model_key]
        weights = token_weights(batch)
        omega = self.omega_at(step)
        hidden = self.model.hidden_states(student, batch, rng)
        head = lambda h: self.model.logits_from_hidden(student, h)  # noqa: E731
        targets = batch[DECODER_TARGET_TOKENS]
        if self.teacher is None:
            labels = stored_teacher_labels(batch)
            mixed = losses.chunked_labels_and_stored_divergence(
                "fkl", hidden, head, labels, targets, weights, omega, self.z_loss, self.chunk_size
            )
        else:
            teacher = params[self.teacher_key]
            mixed = losses.chunked_labels_and_divergence(
                "fkl",
                hidden,
                head,
                self.teacher.hidden_states(teacher, batch),
                lambda h: self.teacher.logits_from_hidden(teacher, h),
                targets,
                weights,
                omega,
                self.z_loss,
                self.chunk_size,
                temperature=self.temperature,
            )
        hard, soft = mixed.per_token
        sums = losses.token_sums(hard, weights)
        loss, metrics = token_metrics(sums, mixed.total)
        return loss, metrics | {"fkl": jnp.sum(soft) / jnp.maximum(sums.weight, 1.0), "omega": omega}

    def train_flops(self, batch: Batch) -> float:
        """Student forward + backward and teacher forward (heads over every position; no teacher with
        stored labels)."""
        teacher = 0.0 if self.teacher is None else self.teacher.forward_flops(batch)
        return flops.TRAIN_MULTIPLIER * self.model.forward_flops(batch) + teacher


@gin.configurable(module="salt")
def salt_curriculum(
    distillation: DistillationObjective = gin.REQUIRED,
    language_model: Objective = gin.REQUIRED,
    n_kd: int | None = gin.REQUIRED,
    transition: str = "abrupt",
) -> Curriculum:
    """Distillation for steps [0, n_kd), then `language_model` (the plain LM objective on the same model).

    transition: 'abrupt' (omega constant until n_kd) or 'linear' (omega decays to 0 at n_kd).
    n_kd None: distil throughout; 0: the plain LM objective alone (the baseline).
    """
    if transition not in TRANSITIONS:
        _refuse(f"salt_curriculum.transition={transition!r} is not one of {', '.join(TRANSITIONS)}")
    if n_kd is not None and (isinstance(n_kd, bool) or not isinstance(n_kd, int) or n_kd < 0):
        _refuse(f"salt_curriculum.n_kd must be None or an integer >= 0, got {n_kd!r}")
    if distillation.model_key != getattr(language_model, "model_key", distillation.model_key):
        _refuse(
            f"the distillation trains '{distillation.model_key}' but the LM objective trains "
            f"'{language_model.model_key}': both stages must train the same model"
        )
    if n_kd == 0:
        return Curriculum.single(language_model)
    if transition == "linear":
        if n_kd is None:
            _refuse("salt_curriculum.transition='linear' needs n_kd, the step at which omega reaches 0")
        distillation = copy.copy(distillation)
        distillation.decay_steps = n_kd
    return Curriculum.single(distillation) if n_kd is None else Curriculum([(0, distillation), (n_kd, language_model)])
