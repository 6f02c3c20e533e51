"""federated.config and federated.data: bad knobs and bad client data are refused with one clear message."""

import dataclasses
import math

import gin
import jax.numpy as jnp
import numpy as np
import pytest

from federated import ClientData, FedConfig, FederatedInputError, least_squares_loss, shard_split, train
from littlehelp.errors import LittlehelpError


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"clients_per_round": 0}, "clients_per_round must be a positive integer, got 0"),
        (
            {"local_steps": 10, "burn_in_steps": 10},
            "burn_in_steps (10) must be less than local_steps (10): FedPA samples the iterates after burn-in",
        ),
        (
            {"local_steps": 40, "burn_in_steps": 60},
            "burn_in_steps (60) must be less than local_steps (40): FedPA samples the iterates after burn-in",
        ),
        (
            {"local_steps": 20, "burn_in_steps": 5, "num_samples": 4},
            "local_steps - burn_in_steps = 15 must be a multiple of num_samples (4): each sample averages an equal run "
            "of iterates",
        ),
        ({"rho": -0.1}, "rho must be a finite number >= 0.0, got -0.1"),
        ({"rho": math.inf}, "rho must be a finite number >= 0.0, got inf"),
        ({"rho": math.nan}, "rho must be a finite number >= 0.0, got nan"),
        ({"server_momentum": 1.0}, "server_momentum must be a finite number >= 0.0 and < 1.0, got 1.0"),
        ({"local_lr": 0.0}, "local_lr must be a finite number > 0.0, got 0.0"),
        ({"num_samples": True}, "num_samples must be a positive integer, got True"),
        ({"fedavg_rounds": -1}, "fedavg_rounds must be a non-negative integer, got -1"),
        ({"algorithm": "fedpa2"}, "algorithm must be one of ('fedavg', 'fedpa'), got 'fedpa2' (did you mean 'fedpa'?)"),
    ],
)
def test_bad_knobs_are_refused_naming_the_knob_and_value(changes, message):
    with pytest.raises(FederatedInputError) as refused:
        dataclasses.replace(FedConfig(), **changes)
    assert refused.value.one_line() == message  # gin appends the configurable's name below
    assert isinstance(refused.value, LittlehelpError) and isinstance(refused.value, ValueError)


def test_defaults_are_valid_and_gin_binds_the_knobs():
    assert FedConfig().steps_per_sample == (FedConfig().local_steps - FedConfig().burn_in_steps) // 10
    gin.parse_config(["federated.FedConfig.rho = 0.25", "FedConfig.num_samples = 5"])
    assert (FedConfig().rho, FedConfig().num_samples) == (0.25, 5)
    gin.parse_config(["federated.FedConfig.rho = -1"])
    with pytest.raises(FederatedInputError) as refused:
        FedConfig()
    assert refused.value.one_line() == "rho must be a finite number >= 0.0, got -1"


def test_bad_client_data_is_refused_naming_the_client():
    x, y = np.ones((5, 2), np.float32), np.zeros(5, np.float32)
    with pytest.raises(FederatedInputError, match=r"^clients: need at least one client, got none$"):
        ClientData.from_lists([], [])
    with pytest.raises(FederatedInputError, match=r"^clients: 1 client\(s\) have no examples \(first: client 1\)$"):
        ClientData.from_lists([x, x[:0], x], [y, y[:0], y])
    with pytest.raises(FederatedInputError, match=r"^clients: a client's inputs and targets differ in length$"):
        ClientData.from_lists([x], [y[:3]])
    with pytest.raises(FederatedInputError, match=r"^clients: need at least one client, got counts of shape \(0,\)$"):
        ClientData(np.zeros((0, 1, 2)), np.zeros((0, 1)), np.zeros((0,), int))


def test_train_refuses_more_clients_per_round_than_clients():
    x, y = np.ones((5, 2), np.float32), np.zeros(5, np.float32)
    clients = ClientData.from_lists([x, x], [y, y])
    config = FedConfig(clients_per_round=3, local_steps=4, burn_in_steps=2, num_samples=2)
    with pytest.raises(FederatedInputError, match=r"^clients_per_round \(3\) exceeds the 2 clients$"):
        train(config, least_squares_loss, jnp.zeros(2), clients)


def test_shard_split_gives_each_client_its_shards_and_every_example_once():
    labels = np.repeat(np.arange(5), 40)
    parts = shard_split(labels, num_clients=10, shards_per_client=2, rng=np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))
    assert all(len(p) == 20 and len(np.unique(labels[p])) <= 2 for p in parts)
    with pytest.raises(FederatedInputError, match=r"^num_clients x shards_per_client = 300 shards but only 200"):
        shard_split(labels, 150, 2, np.random.default_rng(0))
