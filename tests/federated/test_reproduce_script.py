"""scripts/reproduce_fedpa.py: its tables, paired differences and verdicts on hand-made learning curves."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from federated import FedConfig

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reproduce_fedpa.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("reproduce_fedpa", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def history(accuracy: list[float], gap: list[float]) -> list[dict]:
    return [{"round": 10 * i, "test_accuracy": a, "test_loss": g + 0.1, "train_loss": g + 0.2, "suboptimality": g}
            for i, (a, g) in enumerate(zip(accuracy, gap))]


def synthetic_runs() -> list[dict[str, list[dict]]]:
    """Three seeds: FedPA rho=0.1 gets there sooner and ends better; the controls match FedAvg."""
    runs = []
    for seed in range(3):
        jitter = 0.001 * seed
        fedavg = history([0.5, 0.7, 0.8, 0.85 + jitter], [0.4, 0.2, 0.1, 0.08 - jitter])
        runs.append({"FedAvg": fedavg,
                     "FedPA rho=0.01": history([0.5, 0.7, 0.8, 0.85 + 2 * jitter], [0.4, 0.2, 0.1, 0.08]),
                     "FedPA rho=0.1": history([0.5, 0.86, 0.9, 0.95 + jitter], [0.4, 0.07, 0.05, 0.02 - jitter]),
                     "FedAvg, server_lr x 1.09": fedavg, "FedAvg, server_lr x 1.9": fedavg})
    return runs


def test_variants_are_fedavg_fedpa_per_rho_and_the_step_size_control(script):
    configs = script.variants(FedConfig(num_samples=10, server_lr=0.5), [0.1, 0.01])
    assert list(configs) == ["FedAvg", "FedPA rho=0.01", "FedPA rho=0.1", "FedAvg, server_lr x 1.09",
                             "FedAvg, server_lr x 1.9"]
    assert [c.algorithm for c in configs.values()] == ["fedavg", "fedpa", "fedpa", "fedavg", "fedavg"]
    assert [c.rho for c in configs.values()][1:3] == [0.01, 0.1]
    assert configs["FedAvg, server_lr x 1.9"].server_lr == pytest.approx(0.95)


def test_summary_pairs_differences_per_seed(script):
    table = script.summary(synthetic_runs(), fedavg_rounds=10)
    assert list(table["test_accuracy"]) == [10, 20, 30]
    last = table["test_accuracy"][30]
    assert last["FedAvg"][0] == pytest.approx(0.851) and last["FedAvg"][1] == pytest.approx(0.001 / np.sqrt(3))
    assert last["FedPA rho=0.1 - FedAvg"] == pytest.approx((0.1, 0.0))  # paired: the shared jitter cancels
    text = script.format_table(table, "test_accuracy")
    assert text.startswith("| run | round 10 | round 20 | round 30 |\n|---|---|---|---|\n")
    assert "| FedAvg | 0.7000 ± 0.0000 | 0.8000 ± 0.0000 | 0.8510 ± 0.0006 |" in text
    assert "| FedPA rho=0.1 - FedAvg | 0.1600 ± 0.0000 | 0.1000 ± 0.0000 | 0.1000 ± 0.0000 |" in text


def test_verdicts_follow_the_numbers(script):
    controls = {"FedPA rho=0.01": "FedAvg, server_lr x 1.09", "FedPA rho=0.1": "FedAvg, server_lr x 1.9"}
    fedpa_small, control_small, fedpa_large, control = script.verdicts(synthetic_runs(), controls)
    assert fedpa_small.endswith('"Converges faster, to better optima" does not hold.')
    assert control_small.endswith("Against the control: FedAvg with the same larger step does as well or better, so "
                                  "whatever FedPA gains over FedAvg here comes from the step size, not from the "
                                  "covariance correction.")
    assert "at round 30 by FedAvg and 10 by FedPA rho=0.1" in fedpa_large
    assert fedpa_large.endswith('"Converges faster, to better optima" holds: it gets there sooner and ends at a '
                                'better optimum.')
    assert control.startswith("**FedPA rho=0.1** minus **FedAvg, server_lr x 1.9** at round 30")
    assert control.endswith("Against the control: FedPA keeps its edge over the larger FedAvg step: sooner and better.")
