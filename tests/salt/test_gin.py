"""gin/salt: the CPU-sized and the paper-scale teacher/student pairs build with jax.eval_shape (no memory)
at the sizes their files promise, and salt.gin's curriculum switches from distillation to the plain
LM objective at N_KD."""

import gin
import jax
import jax.numpy as jnp
import pytest

from littlehelp import config
from littlehelp.objectives import DecoderObjective
from salt import DistillationObjective, salt_curriculum

# gin files -> (teacher parameters, student parameters) ranges, N_KD, TRAIN_STEPS
PAIRS = {
    (): ((0.9e6, 1.1e6), (3.8e6, 4.3e6), 100, 300),
    ("salt/paper.gin",): ((1.4e9, 1.6e9), (2.7e9, 2.9e9), 36_000, 208_000),
}


def _parameters(model, length: int) -> int:
    shapes = jax.eval_shape(model.init, jax.random.key(0), {"decoder_input_tokens": jax.ShapeDtypeStruct((1, length),
                                                                                                         jnp.int32)})
    return sum(x.size for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("extra", sorted(PAIRS))
def test_the_pairs_build_at_their_sizes_and_switch_at_n_kd(extra):
    (teacher_range, student_range, n_kd, steps) = PAIRS[extra]
    config.import_configurable_modules(["salt.objective"])
    config.parse_gin(["salt/salt.gin", *extra], ["MODEL_DIR='/tmp/unused'", "TEACHER_DIR='/tmp/unused'"])
    try:
        curriculum = salt_curriculum()
        length = gin.query_parameter("%TASK_FEATURE_LENGTHS")["targets"]
        assert gin.query_parameter("%TRAIN_STEPS") == steps
    finally:
        gin.clear_config()
    distillation, language_model = curriculum.objectives
    assert curriculum.starts == [0, n_kd] and isinstance(distillation, DistillationObjective)
    assert isinstance(language_model, DecoderObjective) and language_model.model.config == distillation.model.config
    teacher, student = _parameters(distillation.teacher, length), _parameters(distillation.model, length)
    assert teacher_range[0] < teacher < teacher_range[1] and student_range[0] < student < student_range[1]
    assert 1.7 < student / teacher < 4.5
