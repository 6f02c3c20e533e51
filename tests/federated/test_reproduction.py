"""The FedPA study's own measure: the share of rounds an arm needs to reach FedAvg's final objective."""

import pytest

from federated import reproduction
from littlehelp import study


def history(gaps: list[float]) -> list[dict]:
    return [{"round": 10 * i, "suboptimality": g} for i, g in enumerate(gaps)]


def context_with(tmp_path, fedavg: list[float], fedpa: list[float]) -> study.ArmContext:
    context = study.ArmContext(reproduction.STUDY, reproduction.STUDY.arm("fedpa_0.01"), 0, {}, tmp_path)
    for arm, gaps in (("fedavg", fedavg), ("fedpa_0.01", fedpa)):
        study._write_json(
            context.folder_of(arm) / study.OUTCOME_FILE,
            {"history": history(gaps), "values": {"suboptimality": gaps[-1]}},
        )
    return context


@pytest.mark.parametrize(
    "fedpa, share", [([3, 1.5, 0.8, 0.5], 2 / 3), ([3, 2, 1.2, 1.0], 1.0), ([3, 2, 1.5, 1.2], 2.0)]
)
def test_rounds_to_fedavg_objective(tmp_path, fedpa, share):
    # FedAvg ends at 1.0 after 30 rounds; FedPA reaches it at round 20, at round 30, or never (2 by convention)
    context = context_with(tmp_path, [3, 2, 1.4, 1.0], fedpa)
    assert reproduction.rounds_to_fedavg_objective(context) == pytest.approx(share)


def test_the_step_control_takes_fedpa_s_step_factor():
    assert reproduction.step_factor(0.1) == pytest.approx(1 + 9 * 0.1)  # num_samples n = 10
    assert reproduction.STUDY.arm("fedavg_step_0.1").title == "FedAvg, server_lr x 1.9"
