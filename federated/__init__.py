"""FedAvg and FedPA (federated posterior averaging, docs/methods/fedpa.md) on simulated clients.

`FedConfig` holds every knob (gin: `federated.FedConfig.rho = 0.01`); `train` runs the rounds on
`ClientData` with a loss over flat parameter vectors (`make_classifier`, `least_squares_loss`);
`fedpa_delta` is the client's S_hat^{-1} (x_server - mean) by the O(n^2 d) rank-one recursion. Bad
knobs or client data are refused as a `FederatedInputError` naming the knob or the client.
"""

from federated.config import ALGORITHMS, FedConfig, FederatedInputError
from federated.data import ClientData, shard_split
from federated.models import FlatClassifier, LossFn, least_squares_loss, make_classifier
from federated.posterior import fedpa_delta, shrinkage_weight
from federated.training import ServerState, client_delta, local_trajectory, posterior_samples, train

__all__ = [
    "ALGORITHMS",
    "ClientData",
    "FedConfig",
    "FederatedInputError",
    "FlatClassifier",
    "LossFn",
    "ServerState",
    "client_delta",
    "fedpa_delta",
    "least_squares_loss",
    "local_trajectory",
    "make_classifier",
    "posterior_samples",
    "shard_split",
    "shrinkage_weight",
    "train",
]
