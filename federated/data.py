"""Simulated clients: every client's examples padded into one array, and a label-skewed split.

Padding to the largest client lets one vmapped program serve all clients; each client draws its
minibatches from its first `counts[i]` rows only, so the padding is never read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from federated.config import FederatedInputError


@dataclasses.dataclass(frozen=True)
class ClientData:
    """inputs [clients, max_examples, ...], targets [clients, max_examples], counts [clients]."""

    inputs: np.ndarray
    targets: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        if self.counts.ndim != 1 or self.counts.shape[0] == 0:
            raise FederatedInputError(f"clients: need at least one client, got counts of shape {self.counts.shape}")
        if self.inputs.shape[:2] != self.targets.shape[:2] or self.inputs.shape[0] != self.counts.shape[0]:
            raise FederatedInputError(
                f"clients: inputs {self.inputs.shape}, targets {self.targets.shape} and counts "
                f"{self.counts.shape} disagree on clients or examples"
            )
        empty = np.flatnonzero(self.counts <= 0)
        if empty.size:
            raise FederatedInputError(f"clients: {empty.size} client(s) have no examples (first: client {empty[0]})")
        if self.counts.max() > self.inputs.shape[1]:
            raise FederatedInputError(
                f"clients: counts go up to {self.counts.max()} but inputs hold "
                f"{self.inputs.shape[1]} examples per client"
            )

    @property
    def num_clients(self) -> int:
        return int(self.counts.shape[0])

    @classmethod
    def from_lists(cls, inputs: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> ClientData:
        """Pads per-client arrays (client i: inputs[i] [n_i, ...], targets[i] [n_i]) with zeros."""
        if len(inputs) != len(targets):
            raise FederatedInputError(f"clients: {len(inputs)} input arrays but {len(targets)} target arrays")
        if not inputs:
            raise FederatedInputError("clients: need at least one client, got none")
        counts = np.array([len(x) for x in inputs])
        if any(len(x) != len(y) for x, y in zip(inputs, targets)):
            raise FederatedInputError("clients: a client's inputs and targets differ in length")
        width = max(int(counts.max()), 1)
        padded_x = np.zeros((len(inputs), width, *np.shape(inputs[0])[1:]), np.asarray(inputs[0]).dtype)
        padded_y = np.zeros((len(inputs), width), np.asarray(targets[0]).dtype)
        for i, (x, y) in enumerate(zip(inputs, targets)):
            padded_x[i, : len(x)], padded_y[i, : len(y)] = x, y
        return cls(padded_x, padded_y, counts)


def shard_split(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label-skewed split (McMahan et al. 2017): sort the examples by label, cut them into
    num_clients x shards_per_client equal shards and give each client `shards_per_client` random
    shards. Returns each client's example indices; every example goes to exactly one client."""
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise FederatedInputError(
            f"num_clients x shards_per_client = {num_shards} shards but only {len(labels)} examples"
        )
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, num_shards)
    owner = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in owner]
