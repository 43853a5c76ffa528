"""The ``secagg.*`` config section: SecAgg+ neighbourhoods, the Shamir threshold, quantisation and
distributed DP. Secure aggregation itself is switched on by ``aggregation.secure``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedkd.config import register_section
from fedkd.errors import ConfigError
from fedkd.validate import positive


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation of logits (``secagg.*`` keys; on with ``aggregation.secure = true``).

    Parameters
    ----------
    neighbours
        SecAgg+ (Bell et al. 2020): each client masks with, and shares its secrets among, this
        many other clients of the round (a ring of the round's clients in a seeded random order,
        ``neighbours / 2`` on each side; an odd number is rounded up). 0: every other client
        (the original SecAgg, Bonawitz et al. 2017). Cost per client grows with it, not with
        the round's size.
    threshold
        Share of a client's neighbours whose Shamir shares reconstruct its secrets (rounded up,
        at least 2 and at most all of them). With neighbours it must exceed one half: then no
        pattern of dropouts splits a ring's survivors into groups unmasked separately, and a
        server that lies about who dropped cannot gather both secrets of one client.
    noise-multiplier
        Distributed DP: each client adds Gaussian noise of std
        ``noise-multiplier * clip / sqrt(min-clients)`` to its clipped contribution, so that the
        sum of at least ``min-clients`` carries ``noise-multiplier * clip``. 0: off.
    clip
        Distributed DP: the L2 norm each client's contribution (all its summands) is clipped to:
        the client-level sensitivity of the sum.
    min-clients
        Distributed DP: the fewest contributions the noise is calibrated for; a round where fewer
        clients' masked inputs arrive fails. 0: the round's Shamir threshold.
    max-weight
        The largest teacher weight (label count, data size) a contribution carries; larger
        weights are clipped to it (it bounds the quantisation range).
    """

    neighbours: int = 0
    threshold: float = 0.6
    noise_multiplier: float = 0.0
    clip: float = 10.0
    min_clients: int = 0
    max_weight: float = 100_000.0

    def __post_init__(self) -> None:
        if self.neighbours < 0:
            raise ConfigError(f"secagg.neighbours must be >= 0, got {self.neighbours!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"secagg.threshold must be in (0, 1], got {self.threshold!r}")
        if self.neighbours > 0 and self.threshold <= 0.5:
            raise ConfigError(
                f"secagg.threshold = {self.threshold!r} with secagg.neighbours = {self.neighbours}: "
                "on a ring, at most half the neighbours per secret lets a few dropouts split the "
                "survivors into groups whose sums the server could unmask separately; use > 0.5")
        if self.noise_multiplier < 0 or not math.isfinite(self.noise_multiplier):
            raise ConfigError(f"secagg.noise-multiplier must be >= 0, got {self.noise_multiplier!r}")
        positive("secagg.clip", self.clip)
        positive("secagg.max-weight", self.max_weight)
        if self.min_clients < 0:
            raise ConfigError(f"secagg.min-clients must be >= 0, got {self.min_clients!r}")

    @property
    def distributed_dp(self) -> bool:
        """Whether clients noise their contributions (client-level DP of the sum)."""
        return self.noise_multiplier > 0

    def calibrated_clients(self, threshold: int) -> int:
        """The number of noise shares the distributed DP noise is calibrated for:
        ``min-clients``, else the round's Shamir ``threshold``."""
        return self.min_clients or threshold

    def noise_std(self, threshold: int) -> float:
        """One client's share of the distributed DP noise: std
        ``noise-multiplier * clip / sqrt(m)`` (``m``: :meth:`calibrated_clients`), so that ``m``
        shares sum to std ``noise-multiplier * clip``; 0 when off."""
        return self.noise_multiplier * self.clip / math.sqrt(self.calibrated_clients(threshold))

    def shamir_threshold(self, num_neighbours: int) -> int:
        """Shares needed to reconstruct a secret shared among ``num_neighbours`` neighbours."""
        return min(num_neighbours, max(2, math.ceil(self.threshold * num_neighbours)))


register_section("secagg", SecAggConfig)
