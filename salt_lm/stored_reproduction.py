"""SALT from stored soft labels against SALT with the live teacher: what keeping only the top 64 costs.

The SALT study's teacher (`salt/teacher.gin`, the same settings, so the same run) is trained once;
its top LABELS_TOP_K tokens per target token over the plays' training and validation splits are
stored once (`salt/salt_stored.gin`: the first seed's run builds the store in the work folder, the
others read it). Per seed (initialisation and data order, the SALT study's seeds) two students train
the SALT study's steps: SALT with the live teacher (`salt/salt.gin`) and SALT reading the stored labels
(`salt/salt_stored.gin`: FKL on the teacher's k + 1 buckets, no teacher pass during KD). Both see the
same batches in the same order, so each seed pairs them. Scored as in the SALT study: validation
cross-entropy on held-out plays (final, and at step n_KD, linear between evaluations) and the final
student's cross-entropy on held-out standard-library code; descriptive: the store's bytes per token
and its teacher pass's FLOPs as a share of a live-SALT run's.

Claims, stated before the run: the stored-label student ends no more than 0.02 nats of validation loss
above the live-teacher student (a quarter of SALT's 0.08 gain over the baseline in the SALT study);
exploratory: the same on the held-out code loss. The quick mode shrinks both models and the plays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from littlehelp.study import Arm, ArmContext, Claim, Curve, Metric, Study
from salt_lm import reproduction as salt

LABELS_TOP_K = 64
MARGIN = 0.02  # nats: how much worse than live SALT the stored-label student may end


def labels_dir(context: ArmContext) -> Any:
    """The store shared by every seed: under the study's work folder."""
    return context.work_dir / "teacher_labels"


def stored_bindings(context: ArmContext) -> dict[str, Any]:
    """SALT's bindings with the stored labels: the store's folder and k, the plays as its source Task."""
    values = salt.student_bindings("salt")(context)
    values |= {"LABELS_DIR": labels_dir(context), "LABELS_TOP_K": LABELS_TOP_K}
    if "TASK" in values:  # the quick run's shortened plays: the store labels them
        values["SOURCE_TASK"] = values.pop("TASK")
    return values


def store_record(context: ArmContext) -> dict[str, Any]:
    """The training split's store manifest."""
    from littlehelp.data import teacher_labels  # pylint: disable=import-outside-toplevel

    return teacher_labels.read_manifest(labels_dir(context) / "train")


def store_bytes_per_token(context: ArmContext) -> float:
    """The training split's store's disk bytes per token."""
    from littlehelp.data import teacher_labels  # pylint: disable=import-outside-toplevel

    return teacher_labels.bytes_per_token(store_record(context))


def store_flops_share(context: ArmContext) -> float:
    """The store's teacher passes (training and validation splits) over a live-SALT run's training FLOPs."""
    from littlehelp import study  # pylint: disable=import-outside-toplevel
    from littlehelp.data import teacher_labels  # pylint: disable=import-outside-toplevel

    passes = sum(teacher_labels.read_manifest(labels_dir(context) / s)["flops"] for s in ("train", "validation"))
    return passes / study.train_flops(context.folder_of("salt"))


def final_loss(context: ArmContext) -> float:
    """The run's last validation cross-entropy."""
    return salt.validation_curve(context)[1][-1]


def within_margin(metric: str, label: str, exploratory: bool = False) -> Claim:
    """Stored-label SALT ends no more than MARGIN above live SALT on `metric`, paired by seed."""
    return Claim(
        f"stored_within_{metric}",
        f"SALT from the stored top-{LABELS_TOP_K} labels ends with a {label} no more than {MARGIN} nats above "
        "SALT with the live teacher",
        metric,
        "salt_stored",
        "salt",
        threshold=-MARGIN,
        exploratory=exploratory,
    )


def _descriptive(name: str, label: str, compute: Callable[[ArmContext], float], digits: int = 3) -> Metric:
    return Metric(name, label, None, compute=compute, arms=("salt_stored",), digits=digits)


STUDY = Study(
    name="salt_stored",
    title=f"SALT from stored top-{LABELS_TOP_K} teacher labels against SALT with the live teacher",
    description=__doc__.split("\n\n", 1)[1].strip(),
    arms=(
        Arm("teacher", ("salt/teacher.gin",), salt.teacher_bindings, per_seed=False),
        Arm("salt", ("salt/salt.gin",), salt.student_bindings("salt"), label="SALT (live teacher)"),
        Arm("salt_stored", ("salt/salt_stored.gin",), stored_bindings, label=f"SALT (stored top-{LABELS_TOP_K})"),
    ),
    metrics=(
        Metric(
            "loss_at_n_kd",
            "val loss at step n_KD",
            False,
            compute=lambda c: float(np.interp(c.settings["n_kd"], *salt.validation_curve(c))),
        ),
        Metric("final_loss", "final val loss", False, compute=final_loss),
        Metric("held_out_loss", "held-out code loss", False, compute=salt.held_out_loss),
        _descriptive(
            "bytes_per_token",
            "store bytes per token",
            store_bytes_per_token,
            4,
        ),
        _descriptive(
            "store_flops_share", "store's teacher passes (share of a live-SALT run's FLOPs)", store_flops_share
        ),
    ),
    claims=(
        within_margin("final_loss", "final validation loss"),
        within_margin("held_out_loss", "held-out code loss", exploratory=True),
    ),
    seeds=3,
    settings=dict(salt.STUDY.settings),
    quick=dict(salt.STUDY.quick),
    quick_seeds=1,
    curves=(
        Curve(
            "validation cross-entropy (held-out plays)",
            "validation cross-entropy",
            "student step",
            salt.validation_curve,
        ),
    ),
)
