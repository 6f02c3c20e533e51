"""The knobs of a federated run (docs/methods/fedpa.md) and the refusals of bad ones.

Every refusal is a `FederatedInputError`, a `LittlehelpError` (a CLI prints it as one line) and a
`ValueError`, whose message names the knob and the bad value.
"""

from __future__ import annotations

import dataclasses
import difflib
import math

import gin

from littlehelp.errors import LittlehelpError

ALGORITHMS = ("fedavg", "fedpa")


class FederatedInputError(LittlehelpError, ValueError):
    """Bad federated configuration or client data; the message names the knob or the client."""


def check_integer(name: str, value: object, minimum: int) -> None:
    """Refuses anything but an integer (not a bool) >= `minimum`."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return
    wanted = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    raise FederatedInputError(f"{name} must be {wanted}, got {value!r}")


def check_number(
    name: str, value: object, low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False
) -> None:
    """Refuses a non-number, NaN or infinity, or a value outside the interval from `low` to `high`
    (each end closed unless `low_open` / `high_open`)."""
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if finite and (low < value if low_open else low <= value) and (value < high if high_open else value <= high):
        return
    bound = f"{'>' if low_open else '>='} {low}"
    if high != math.inf:
        bound += f" and {'<' if high_open else '<='} {high}"
    raise FederatedInputError(f"{name} must be a finite number {bound}, got {value!r}")


@gin.configurable(module="federated")
@dataclasses.dataclass(frozen=True)
class FedConfig:
    """One FedAvg or FedPA run on simulated clients.

    Each round samples `clients_per_round` clients uniformly without replacement; each runs
    `local_steps` SGD steps (learning rate `local_lr`, minibatches of `batch_size` examples drawn
    with replacement from its own data) from the server parameters. FedAvg sends
    x_server - (last iterate). FedPA drops the first `burn_in_steps` iterates, averages the rest in
    `num_samples` equal runs (iterate-averaged SGD samples of the local posterior) and sends
    S_hat^{-1} (x_server - sample mean) with S_hat = r I + (1 - r) S, r = 1 / (1 + (n - 1) rho).
    FedPA runs in FedAvg mode for its first `fedavg_rounds` rounds. The server averages the deltas
    weighted by the clients' example counts and takes an SGD step (`server_lr`, `server_momentum`).
    The sampling knobs are checked for both algorithms, so one config serves both. The defaults are
    those of the digits study (`littlehelp study fedpa`); rho = 0.01 is the paper's.
    """

    algorithm: str = "fedpa"
    num_rounds: int = 300
    clients_per_round: int = 10
    local_steps: int = 100
    local_lr: float = 0.05
    batch_size: int = 20
    burn_in_steps: int = 50
    num_samples: int = 10
    rho: float = 0.01
    server_lr: float = 1.0
    server_momentum: float = 0.0
    fedavg_rounds: int = 75
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            close = difflib.get_close_matches(str(self.algorithm), ALGORITHMS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise FederatedInputError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}{hint}")
        for name in ("num_rounds", "clients_per_round", "local_steps", "batch_size", "num_samples"):
            check_integer(name, getattr(self, name), 1)
        for name in ("burn_in_steps", "fedavg_rounds", "seed"):
            check_integer(name, getattr(self, name), 0)
        check_number("local_lr", self.local_lr, 0.0, low_open=True)
        check_number("server_lr", self.server_lr, 0.0, low_open=True)
        check_number("rho", self.rho, 0.0)
        check_number("server_momentum", self.server_momentum, 0.0, 1.0, high_open=True)
        if self.burn_in_steps >= self.local_steps:
            raise FederatedInputError(
                f"burn_in_steps ({self.burn_in_steps}) must be less than local_steps "
                f"({self.local_steps}): FedPA samples the iterates after burn-in"
            )
        if (self.local_steps - self.burn_in_steps) % self.num_samples:
            raise FederatedInputError(
                f"local_steps - burn_in_steps = {self.local_steps - self.burn_in_steps} must be a multiple of "
                f"num_samples ({self.num_samples}): each sample averages an equal run of iterates"
            )

    @property
    def steps_per_sample(self) -> int:
        """SGD iterates averaged into one FedPA posterior sample."""
        return (self.local_steps - self.burn_in_steps) // self.num_samples

    def uses_fedpa(self, round_index: int) -> bool:
        """Whether round `round_index` (from 0) computes FedPA deltas (else FedAvg deltas)."""
        return self.algorithm == "fedpa" and round_index >= self.fedavg_rounds
