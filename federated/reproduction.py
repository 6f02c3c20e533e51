"""FedPA against FedAvg on label-skewed digits clients (`littlehelp study fedpa`).

Data: scikit-learn's bundled digits (no download), pixels / 16, a stratified 70/30 split per seed;
the train split dealt to 20 clients by label shards (two per client, so mostly two classes each).
Model: multinomial logistic regression with an l2 term (a Gaussian prior), so the training objective
is convex and its minimum, found per seed by full-batch L-BFGS, makes "better optima" measurable as
the objective's distance above it. Every arm of a seed shares the split, shards, initialisation,
client sampling and minibatches. The controls take FedPA's larger step without its covariance
correction: FedPA's delta is the FedAvg-like x - mean scaled by 1 + (n - 1) rho wherever the samples
barely vary.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from federated import ClientData, FedConfig, make_classifier, shard_split, shrinkage_weight, train
from littlehelp.study import Arm, ArmContext, Claim, Curve, Metric, Study

NUM_CLASSES, NUM_CLIENTS, SHARDS_PER_CLIENT, TEST_FRACTION, L2 = 10, 20, 2, 0.3, 1e-3
RHOS = (0.01, 0.1)


@functools.cache
def seed_problem(seed: int) -> dict[str, Any]:
    """One seed's clients, test and train arrays, model, initial parameters and the objective's minimum."""
    import jax  # pylint: disable=import-outside-toplevel
    from scipy import optimize  # pylint: disable=import-outside-toplevel
    from sklearn import datasets, model_selection  # pylint: disable=import-outside-toplevel

    images, labels = datasets.load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = model_selection.train_test_split(
        (images / 16.0).astype(np.float32),
        labels.astype(np.int32),
        test_size=TEST_FRACTION,
        random_state=seed,
        stratify=labels,
    )
    parts = shard_split(train_y, NUM_CLIENTS, SHARDS_PER_CLIENT, np.random.default_rng(seed))
    clients = ClientData.from_lists([train_x[p] for p in parts], [train_y[p] for p in parts])
    model, params = make_classifier(train_x.shape[1], NUM_CLASSES, [], jax.random.PRNGKey(seed), L2)
    value_and_grad = jax.jit(jax.value_and_grad(lambda p: model.loss(p, train_x, train_y)))
    minimum = optimize.minimize(
        lambda p: tuple(map(np.asarray, value_and_grad(p.astype(np.float32)))),
        np.asarray(params, np.float64),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 10_000, "gtol": 1e-9, "ftol": 1e-15},
    ).fun
    return {
        "clients": clients,
        "model": model,
        "params": params,
        "minimum": float(minimum),
        "test": (test_x, test_y),
        "train": (train_x, train_y),
    }


def run_federated(context: ArmContext, algorithm: str, rho: float = 0.01, lr_factor: float = 1.0) -> dict[str, Any]:
    """One federated run of this seed's problem; its evaluation history."""
    problem, settings = seed_problem(context.seed), context.settings
    config = FedConfig(
        algorithm=algorithm,
        rho=rho,
        num_rounds=settings["num_rounds"],
        fedavg_rounds=settings["fedavg_rounds"],
        seed=context.seed,
    )
    config = dataclasses.replace(config, server_lr=config.server_lr * lr_factor)
    model = problem["model"]

    def evaluate(params: Any) -> dict[str, float]:
        train_loss = float(model.loss(params, *problem["train"]))
        return {
            "test_accuracy": float(model.accuracy(params, *problem["test"])),
            "test_loss": float(model.cross_entropy(params, *problem["test"])),
            "suboptimality": train_loss - problem["minimum"],
        }

    _, history = train(config, model.loss, problem["params"], problem["clients"], evaluate, settings["eval_every"])
    return {"history": history, "values": {k: v for k, v in history[-1].items() if k != "round"}}


def step_factor(rho: float) -> float:
    """1 + (n - 1) rho: how much larger FedPA's delta is than x - mean where the samples barely vary."""
    return 1 / shrinkage_weight(FedConfig().num_samples, rho)


def rounds_to_fedavg_objective(context: ArmContext) -> float:
    """The share of the rounds after which the arm's objective first reaches FedAvg's final one."""
    history = context.outcome()["history"]
    target = context.outcome("fedavg")["values"]["suboptimality"]
    reached = [r["round"] for r in history if r["suboptimality"] <= target]
    return (reached[0] if reached else 2 * history[-1]["round"]) / history[-1]["round"]


def history_curve(metric: str) -> Curve:
    """A metric of the evaluation history against the round."""

    def read(context: ArmContext) -> tuple[list[float], list[float]]:
        history = context.outcome()["history"]
        return [r["round"] for r in history], [r[metric] for r in history]

    return Curve(metric, metric.replace("_", " "), "round", read)


def fedpa_arm(rho: float) -> Arm:
    """FedPA with shrinkage `rho`."""
    return Arm(f"fedpa_{rho:g}", run=lambda context: run_federated(context, "fedpa", rho), label=f"FedPA rho={rho:g}")


def step_control_arm(rho: float) -> Arm:
    """FedAvg whose server step is FedPA's (rho) step factor larger."""
    return Arm(
        f"fedavg_step_{rho:g}",
        run=lambda context: run_federated(context, "fedavg", lr_factor=step_factor(rho)),
        label=f"FedAvg, server_lr x {step_factor(rho):g}",
    )


ARMS = (
    Arm("fedavg", run=lambda context: run_federated(context, "fedavg"), label="FedAvg"),
    *map(fedpa_arm, RHOS),
    *map(step_control_arm, RHOS),
)
CLAIMS = tuple(
    claim
    for rho in RHOS
    for claim in (
        Claim(
            f"better_optimum_{rho:g}",
            f"FedPA (rho {rho:g}) ends nearer the optimum than FedAvg",
            "suboptimality",
            f"fedpa_{rho:g}",
            "fedavg",
        ),
        Claim(
            f"faster_{rho:g}",
            f"FedPA (rho {rho:g}) reaches FedAvg's final objective in fewer rounds",
            "rounds_to_fedavg_objective",
            f"fedpa_{rho:g}",
            "fedavg",
        ),
        Claim(
            f"not_just_step_{rho:g}",
            f"FedPA (rho {rho:g}) ends nearer the optimum than FedAvg with its larger step",
            "suboptimality",
            f"fedpa_{rho:g}",
            f"fedavg_step_{rho:g}",
        ),
    )
)

STUDY = Study(
    name="fedpa",
    title="FedPA vs FedAvg on label-skewed digits clients",
    description=__doc__.split("\n\n", 1)[1].strip(),
    arms=ARMS,
    metrics=(
        Metric("test_accuracy", "test accuracy", True),
        Metric("test_loss", "test cross-entropy", False),
        Metric("suboptimality", "objective above its minimum", False),
        Metric(
            "rounds_to_fedavg_objective",
            "rounds to FedAvg's final objective (share; never: 2)",
            False,
            compute=rounds_to_fedavg_objective,
            digits=3,
        ),
    ),
    claims=CLAIMS,
    seeds=8,
    settings={"num_rounds": 300, "fedavg_rounds": 75, "eval_every": 5},
    quick={"num_rounds": 6, "fedavg_rounds": 2, "eval_every": 2},
    curves=(history_curve("suboptimality"), history_curve("test_accuracy")),
)
