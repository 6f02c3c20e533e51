"""FedAvg and FedPA rounds: local SGD vmapped over the sampled clients, weighted averaging, server SGD.

A round is one jitted program: sample clients, run every client's local SGD at once (`jax.vmap`),
turn each trajectory into a delta (FedAvg: x_server - last iterate; FedPA: `posterior.fedpa_delta` of
its iterate-averaged samples), average the deltas weighted by example counts and apply the server
optimiser (optax SGD with momentum) with the average as the gradient. Round k's randomness is
`fold_in(PRNGKey(seed), k)`, so FedAvg and FedPA runs with one seed see the same clients and minibatches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from federated.config import FedConfig, FederatedInputError, check_integer
from federated.data import ClientData
from federated.models import LossFn
from federated.posterior import fedpa_delta

RoundFn = Callable[["ServerState", jax.Array, tuple[jax.Array, jax.Array, jax.Array]], "ServerState"]


class ServerState(NamedTuple):
    """The server's flat parameters and its optimiser state."""

    params: jax.Array
    opt_state: optax.OptState


def local_trajectory(
    loss_fn: LossFn,
    config: FedConfig,
    params: jax.Array,
    inputs: jax.Array,
    targets: jax.Array,
    count: jax.Array,
    key: jax.Array,
) -> jax.Array:
    """The iterates [local_steps, d] of one client's SGD from `params`; minibatches are drawn with
    replacement from its first `count` examples."""
    optimizer = optax.sgd(config.local_lr)
    grad_fn = jax.grad(loss_fn)

    def step(carry, step_key):
        x, opt_state = carry
        rows = jax.random.randint(step_key, (config.batch_size,), 0, count)
        updates, opt_state = optimizer.update(grad_fn(x, inputs[rows], targets[rows]), opt_state, x)
        x = optax.apply_updates(x, updates)
        return (x, opt_state), x

    _, iterates = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, config.local_steps))
    return iterates


def posterior_samples(iterates: jax.Array, config: FedConfig) -> jax.Array:
    """Iterate-averaged SGD samples [num_samples, d]: the iterates after burn-in, averaged in equal runs."""
    kept = iterates[config.burn_in_steps :]
    return kept.reshape(config.num_samples, config.steps_per_sample, -1).mean(axis=1)


def client_delta(
    loss_fn: LossFn,
    config: FedConfig,
    fedpa: bool,
    params: jax.Array,
    inputs: jax.Array,
    targets: jax.Array,
    count: jax.Array,
    key: jax.Array,
) -> jax.Array:
    """One client's delta: FedAvg's x_server - last iterate, or FedPA's S_hat^{-1} (x_server - mean)."""
    iterates = local_trajectory(loss_fn, config, params, inputs, targets, count, key)
    if fedpa:
        return fedpa_delta(posterior_samples(iterates, config), params, config.rho)
    return params - iterates[-1]


def server_optimizer(config: FedConfig) -> optax.GradientTransformation:
    """SGD with momentum on the averaged client delta."""
    return optax.sgd(config.server_lr, momentum=config.server_momentum)


def make_round(loss_fn: LossFn, config: FedConfig, num_clients: int, fedpa: bool) -> RoundFn:
    """The jitted round `(state, key, (inputs, targets, counts)) -> state` in FedPA or FedAvg mode."""
    deltas_fn = jax.vmap(functools.partial(client_delta, loss_fn, config, fedpa), in_axes=(None, 0, 0, 0, 0))
    optimizer = server_optimizer(config)

    @jax.jit
    def round_fn(state: ServerState, key: jax.Array, data: tuple[jax.Array, jax.Array, jax.Array]) -> ServerState:
        inputs, targets, counts = data
        select_key, clients_key = jax.random.split(key)
        chosen = jax.random.choice(select_key, num_clients, (config.clients_per_round,), replace=False)
        keys = jax.random.split(clients_key, config.clients_per_round)
        deltas = deltas_fn(state.params, inputs[chosen], targets[chosen], counts[chosen], keys)
        weights = counts[chosen].astype(deltas.dtype)
        mean_delta = weights @ deltas / weights.sum()
        updates, opt_state = optimizer.update(mean_delta, state.opt_state, state.params)
        return ServerState(optax.apply_updates(state.params, updates), opt_state)

    return round_fn


def train(
    config: FedConfig,
    loss_fn: LossFn,
    params: jax.Array,
    clients: ClientData,
    evaluate: Callable[[jax.Array], dict[str, Any]] | None = None,
    eval_every: int = 1,
) -> tuple[jax.Array, list[dict[str, Any]]]:
    """Runs `config.num_rounds` rounds from `params`; returns the final parameters and, when `evaluate`
    is given, `{"round": k, **evaluate(params)}` at round 0, every `eval_every` rounds and the last."""
    if config.clients_per_round > clients.num_clients:
        raise FederatedInputError(
            f"clients_per_round ({config.clients_per_round}) exceeds the {clients.num_clients} clients"
        )
    check_integer("eval_every", eval_every, 1)
    if params.ndim != 1:
        raise FederatedInputError(f"params must be a flat vector (ravel_pytree), got shape {params.shape}")
    data = (jnp.asarray(clients.inputs), jnp.asarray(clients.targets), jnp.asarray(clients.counts))
    rounds = {mode: make_round(loss_fn, config, clients.num_clients, mode) for mode in (False, True)}
    state = ServerState(params, server_optimizer(config).init(params))
    key = jax.random.PRNGKey(config.seed)
    history = [{"round": 0, **evaluate(params)}] if evaluate else []
    for k in range(config.num_rounds):
        state = rounds[config.uses_fedpa(k)](state, jax.random.fold_in(key, k), data)
        if evaluate and ((k + 1) % eval_every == 0 or k + 1 == config.num_rounds):
            history.append({"round": k + 1, **evaluate(state.params)})
    return state.params, history
