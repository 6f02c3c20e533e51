"""federated.training: the reductions FedPA -> FedAvg that are exactly true, and the fixed points on a
federated least-squares problem against their closed forms in numpy float64."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from federated import (
    ClientData,
    FedConfig,
    client_delta,
    least_squares_loss,
    local_trajectory,
    train,
)

TINY = FedConfig(
    num_rounds=6,
    clients_per_round=3,
    local_steps=12,
    local_lr=0.05,
    batch_size=4,
    burn_in_steps=4,
    num_samples=4,
    rho=0.5,
    server_lr=1.0,
    server_momentum=0.5,
    fedavg_rounds=2,
)


def regression_clients(seed: int, sizes=(9, 14, 20, 7), d: int = 3) -> ClientData:
    rng = np.random.default_rng(seed)
    inputs = [rng.normal(size=(n, d)).astype(np.float32) for n in sizes]
    targets = [(x @ rng.normal(size=d) + 0.5 * rng.normal(size=len(x))).astype(np.float32) for x in inputs]
    return ClientData.from_lists(inputs, targets)


def one_client(clients: ClientData, i: int):
    return jnp.asarray(clients.inputs[i]), jnp.asarray(clients.targets[i]), jnp.asarray(clients.counts[i])


def test_fedavg_delta_is_x_minus_the_last_local_iterate_of_plain_sgd():
    clients, x, key = regression_clients(0), jnp.array([0.3, -0.2, 0.1]), jax.random.PRNGKey(3)
    inputs, targets, count = one_client(clients, 1)
    iterates = local_trajectory(least_squares_loss, TINY, x, inputs, targets, count, key)
    point, grad = np.asarray(x, np.float64), jax.grad(least_squares_loss)
    for step_key, iterate in zip(jax.random.split(key, TINY.local_steps), iterates):
        rows = jax.random.randint(step_key, (TINY.batch_size,), 0, count)
        assert int(rows.max()) < 14  # minibatches never read the padding
        point = point - TINY.local_lr * np.asarray(grad(jnp.asarray(point, jnp.float32), inputs[rows], targets[rows]))
        np.testing.assert_allclose(np.asarray(iterate), point, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        client_delta(least_squares_loss, TINY, False, x, inputs, targets, count, key), x - iterates[-1], rtol=1e-6
    )


def test_fedpa_with_rho_zero_sends_x_minus_the_mean_of_the_iterates_after_burn_in():
    """rho = 0 makes S_hat = I; the sample mean is the mean of all iterates after burn-in (equal runs)."""
    clients, x, key = regression_clients(1), jnp.array([1.0, 0.0, -1.0]), jax.random.PRNGKey(4)
    config = dataclasses.replace(TINY, rho=0.0)
    iterates = local_trajectory(least_squares_loss, config, x, *one_client(clients, 2), key)
    delta = client_delta(least_squares_loss, config, True, x, *one_client(clients, 2), key)
    np.testing.assert_allclose(delta, x - iterates[config.burn_in_steps :].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_fedpa_with_one_sample_of_the_last_iterate_is_fedavg_round_for_round():
    """One sample (n = 1: r = 1, S_hat = I for any rho) averaging only the last iterate is FedAvg exactly."""
    clients = regression_clients(2)
    config = dataclasses.replace(TINY, num_samples=1, burn_in_steps=TINY.local_steps - 1, rho=0.7, fedavg_rounds=0)
    x0 = jnp.array([0.5, 0.5, -0.5])
    fedpa, _ = train(config, least_squares_loss, x0, clients)
    fedavg, _ = train(dataclasses.replace(config, algorithm="fedavg"), least_squares_loss, x0, clients)
    np.testing.assert_allclose(fedpa, fedavg, rtol=1e-6, atol=1e-7)
    assert float(jnp.abs(fedpa - x0).max()) > 0.05  # the runs did move


def test_fedpa_runs_fedavg_rounds_first_and_the_server_averages_by_example_count():
    """Round 0 of FedPA with fedavg_rounds=1 is a FedAvg round: x - lr * sum_i n_i delta_i / sum_i n_i."""
    clients = regression_clients(3)
    config = dataclasses.replace(
        TINY, clients_per_round=4, num_rounds=1, server_momentum=0.0, server_lr=0.5, fedavg_rounds=1
    )
    x0 = jnp.zeros(3)
    select_key, clients_key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0))
    chosen = np.asarray(jax.random.choice(select_key, 4, (4,), replace=False))
    deltas = [
        client_delta(least_squares_loss, config, False, x0, *one_client(clients, i), key)
        for i, key in zip(chosen, jax.random.split(clients_key, 4))
    ]
    counts = clients.counts[chosen].astype(np.float64)
    expected = -0.5 * sum(n * np.asarray(d, np.float64) for n, d in zip(counts, deltas)) / counts.sum()
    unweighted = -0.5 * np.mean([np.asarray(d, np.float64) for d in deltas], axis=0)
    params, _ = train(config, least_squares_loss, x0, clients)
    np.testing.assert_allclose(params, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected - unweighted).max() > 1e-3  # the counts matter here


def quadratic_clients(seed: int = 0, sizes=(60, 120, 90, 150), d: int = 3) -> ClientData:
    """Least squares whose client losses are 1/2 (x - c_i)^T A_i (x - c_i) + const with A_i = R_i diag(0.5, 1, 2)
    R_i^T (R_i random rotations). Every input appears twice, with residual +1 and -1 at c_i, so c_i is the
    exact client optimum and the per-example gradients at c_i have covariance exactly A_i, the case in which
    iterate-averaged SGD samples a Gaussian whose precision is proportional to A_i."""
    rng = np.random.default_rng(seed)
    inputs, targets = [], []
    for n in sizes:
        rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
        a = np.repeat(rng.normal(size=(n // 2, d)) * np.sqrt([0.5, 1.0, 2.0]) @ rotation.T, 2, axis=0)
        inputs.append(a.astype(np.float32))
        targets.append((a @ (2 * rng.normal(size=d)) + np.tile([1.0, -1.0], n // 2)).astype(np.float32))
    return ClientData.from_lists(inputs, targets)


def test_fedpa_finds_the_global_optimum_of_a_federated_quadratic_where_fedavg_is_biased():
    clients = quadratic_clients()
    a = [clients.inputs[i, :n].astype(np.float64) for i, n in enumerate(clients.counts)]
    y = [clients.targets[i, :n].astype(np.float64) for i, n in enumerate(clients.counts)]
    hessians = [x.T @ x / len(x) for x in a]
    optima = [np.linalg.solve(h, x.T @ t / len(x)) for h, x, t in zip(hessians, a, y)]
    n = clients.counts.astype(np.float64)
    global_optimum = np.linalg.solve(
        sum(k * h for k, h in zip(n, hessians)), sum(k * h @ c for k, h, c in zip(n, hessians, optima))
    )
    fedavg_fixed_point = sum(k * c for k, c in zip(n, optima)) / n.sum()  # local SGD run to each c_i
    assert np.linalg.norm(fedavg_fixed_point - global_optimum) > 0.9

    base = FedConfig(
        num_rounds=300,
        clients_per_round=4,
        local_steps=500,
        local_lr=0.3,
        batch_size=5,
        burn_in_steps=100,
        num_samples=10,
        rho=1000.0,
        server_momentum=0.0,
        fedavg_rounds=10,
    )

    def mean_server_params(config: FedConfig) -> np.ndarray:
        _, history = train(config, least_squares_loss, jnp.zeros(3), clients, lambda p: {"x": np.asarray(p)})
        return np.mean([h["x"] for h in history[-250:]], axis=0)

    fedavg = mean_server_params(dataclasses.replace(base, algorithm="fedavg", server_lr=1.0))
    fedpa = mean_server_params(dataclasses.replace(base, server_lr=5e-4))
    np.testing.assert_allclose(fedavg, fedavg_fixed_point, atol=0.05)
    fedavg_error, fedpa_error = (np.linalg.norm(x - global_optimum) for x in (fedavg, fedpa))
    assert fedpa_error < 0.3 * fedavg_error, (fedpa_error, fedavg_error)
