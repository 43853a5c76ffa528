"""``pate``: noisy teacher voting, GNMax and Confident-GNMax (Papernot et al., ICLR 2017 / 2018).

Mechanism
---------
The teachers are the clients. For every sample ``n`` each valid teacher ``k`` (``mask[k, n]``)
casts one vote, for ``argmax_c z_{k,n,c}`` (ties: the lowest class index; the temperature is
accepted for interface uniformity but cannot change an argmax, so it is ignored). With
``v_n[j]`` the number of valid teachers voting for class ``j``:

* **GNMax** (2018): ``label_n = argmax_j (v_n[j] + N(0, sigma^2))``.
* **Confident-GNMax** (2018), when a ``threshold`` is set: the sample is answered only if
  ``max_j v_n[j] + N(0, sigma_threshold^2) >= threshold``; otherwise it is left unanswered
  (``Targets.answered[n]`` false, its row of ``probs`` uniform: it carries no information).
  The answered samples get the GNMax label above.

The target of an answered sample is the one-hot vector of its label. With ``sigma = 0`` and no
threshold the rule is the plain (noiseless, non-private) plurality vote, ties to the lowest class.
Noise is drawn from the ``rng`` given to :meth:`PateRule.aggregate`: first the ``N`` threshold
draws (if any), then an ``[N, C]`` block for the votes.

Privacy unit and sensitivity
----------------------------
The unit is **one teacher's whole data** (client-level privacy). Replacing one teacher's data
changes at most its own vote on each sample: one count goes down by one and another up by one,
so the vote histogram of a sample has L2 sensitivity ``sqrt(2)``. Each GNMax answer is therefore
a Gaussian mechanism with noise multiplier ``sigma / sqrt(2)`` (per-query RDP ``alpha / sigma^2``;
the argmax is post-processing). The threshold step releases a noisy ``max_j v_n[j]``, which moves
by at most 1: a Gaussian mechanism with noise multiplier ``sigma_threshold`` (RDP
``alpha / (2 sigma_threshold^2)``).

Accounting (data-independent bound only)
----------------------------------------
:attr:`Targets.privacy_events` holds ``dp_accounting`` events for the server's ledger
(:class:`fedkd.privacy.accounting.ServerLedger`)::

    SelfComposedDpEvent(GaussianDpEvent(sigma / sqrt(2)), N)            # every vote
    SelfComposedDpEvent(GaussianDpEvent(sigma_threshold), N)            # with a threshold

Every one of the ``N`` queries is charged, answered or not. This is conservative: the number of
answered queries is itself data-dependent, so charging only the answered ones would leak; the
threshold test is charged for every query as well. With ``sigma = 0`` (or a threshold with
``sigma_threshold = 0``) a step is released without noise and the events are a single
``NonPrivateDpEvent`` (the ledger then reports ``epsilon = inf``).

The **data-dependent** analysis of PATE 2018 (Theorem 6 / Proposition 7, with smooth-sensitivity
sanitisation of the resulting epsilon, :mod:`fedkd.privacy.pate_analysis`) runs once, at the end
of a run, on the vote histograms every aggregation returned (:attr:`Targets.votes`); the server
reports its sanitised figure beside the data-independent one above (``server-epsilon-data-
dependent`` in the last round's metrics). It pays off only with many teachers and strong
consensus: for the paper's MNIST setting (250 teachers, 640 queries, ``sigma = 40``,
``sigma_threshold = 150``, ``delta = 1e-5``) the data-independent bound is ``epsilon = 4.25``
with RDP against about 2 data-dependent; with 20 clients it is barely below the data-independent
one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedkd.aggregation.base import (
    AGGREGATORS,
    AggregationRule,
    BoolArray,
    FloatArray,
    Targets,
)
from fedkd.config import AggregationConfig
from fedkd.validate import finite_non_negative

__all__ = ["PateOptions", "PateRule", "vote_counts"]


@dataclass(frozen=True)
class PateOptions:
    """``aggregation.pate.*``: ``sigma`` (GNMax vote noise), ``threshold`` (Confident-GNMax
    threshold on the noisy top vote count; 0: none) and ``sigma-threshold`` (its noise)."""

    sigma: float = 40.0
    threshold: float = 0.0
    sigma_threshold: float = 150.0


def vote_counts(logits: FloatArray, mask: BoolArray) -> NDArray[np.int64]:
    """Vote histogram ``[N, C]``: how many valid teachers have each class as their argmax.

    Parameters
    ----------
    logits
        Float ``[K, N, C]`` (any monotone rescaling gives the same votes).
    mask
        Boolean ``[K, N]``; teachers with ``mask[k, n]`` false do not vote on sample ``n``.
    """
    k, n, c = logits.shape
    votes = np.argmax(logits, axis=2)  # [K, N], ties -> lowest class
    counts = np.zeros((n, c), dtype=np.int64)
    kk, nn = np.nonzero(mask)
    np.add.at(counts, (nn, votes[kk, nn]), 1)
    return counts


@AGGREGATORS.register("pate")
class PateRule(AggregationRule):
    """PATE noisy plurality vote of the teachers' argmax labels (GNMax, Confident-GNMax).

    Parameters
    ----------
    temperature
        Accepted for interface uniformity; ignored (it cannot change an argmax).
    sigma
        Standard deviation ``>= 0`` of the Gaussian noise added to each vote count (GNMax's
        ``sigma_2``; the default, :class:`PateOptions`'s, is the paper's). 0 gives the noiseless,
        non-private vote.
    threshold
        Confident-GNMax threshold ``T`` on the noisy top count, or ``None`` (default) to answer
        every sample.
    sigma_threshold
        Standard deviation ``>= 0`` of the noise on the top count in the threshold step
        (``sigma_1``; default: :class:`PateOptions`); used only with a ``threshold``.

    Notes
    -----
    The rule is randomised: call :meth:`aggregate` with an ``rng``. The deterministic entry
    point ``rule(logits)`` works only for ``sigma = 0`` without a threshold (the plain vote).
    """

    Options = PateOptions
    randomized = True
    client_level_privacy = True
    data_dependent_privacy = True

    @classmethod
    def from_options(cls, temperature: float, options: PateOptions | None) -> PateRule:
        """The configured rule; a ``threshold`` of 0 in the config means no threshold."""
        options = options or PateOptions()
        return cls(temperature, sigma=options.sigma, sigma_threshold=options.sigma_threshold,
                   threshold=options.threshold if options.threshold > 0 else None)

    def __init__(
        self,
        temperature: float = AggregationConfig.temperature,
        *,
        sigma: float = PateOptions.sigma,
        threshold: float | None = None,  # PateOptions.threshold = 0: none
        sigma_threshold: float = PateOptions.sigma_threshold,
    ) -> None:
        super().__init__(temperature)
        self.sigma = finite_non_negative("sigma", sigma)
        self.sigma_threshold = finite_non_negative("sigma_threshold", sigma_threshold)
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, Real):
                raise ValueError(f"threshold must be a real number or None, got {threshold!r}")
            if not math.isfinite(float(threshold)):
                raise ValueError(f"threshold must be finite, got {threshold!r}")
            threshold = float(threshold)
        self.threshold: float | None = threshold

    # -- properties ----------------------------------------------------------------------------

    @property
    def noisy(self) -> bool:
        """Whether any step draws noise (and :meth:`aggregate` therefore needs an ``rng``)."""
        return self.sigma > 0.0 or (self.threshold is not None and self.sigma_threshold > 0.0)

    def privacy_events(self, num_queries: int) -> tuple[Any, ...]:
        """The ``dp_accounting`` events of ``num_queries`` queries (data-independent, client-level).

        Every query is charged, answered or not (see the module docstring).
        """
        import dp_accounting  # deferred: it pulls in scipy (about 1 s), needed only here

        if self.sigma == 0.0 or (self.threshold is not None and self.sigma_threshold == 0.0):
            return (dp_accounting.NonPrivateDpEvent(),)
        events: list[Any] = [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.GaussianDpEvent(self.sigma / math.sqrt(2.0)), num_queries
            )
        ]
        if self.threshold is not None:
            events.append(
                dp_accounting.SelfComposedDpEvent(
                    dp_accounting.GaussianDpEvent(self.sigma_threshold), num_queries
                )
            )
        return tuple(events)

    # -- entry points --------------------------------------------------------------------------

    def aggregate(
        self,
        logits: ArrayLike,
        *,
        weights: ArrayLike | None = None,
        mask: ArrayLike | None = None,
        rng: np.random.Generator | None = None,
    ) -> Targets:
        """Noisy vote on every sample.

        Returns
        -------
        Targets
            ``probs``: one-hot float32 ``[N, C]`` of the noisy label (uniform ``1/C`` rows for
            unanswered samples); ``answered``: bool ``[N]``; ``privacy_events``: see
            :meth:`privacy_events`.

        Raises
        ------
        ValueError
            On invalid logits or mask, on any ``weights`` (the rule takes none), or when the rule
            is noisy and no ``rng`` is given.
        TypeError
            If ``rng`` is not a :class:`numpy.random.Generator`.
        """
        z = self._validate_logits(logits)
        k, n, c = z.shape
        m = self._validate_mask(mask, k, n)
        self._validate_weights(weights, k, n, m, c)  # raises: the rule takes no weights
        if self.noisy:
            if rng is None:
                raise ValueError(
                    f"aggregation rule 'pate' (sigma={self.sigma}, threshold={self.threshold}, "
                    f"sigma_threshold={self.sigma_threshold}) is randomised: pass "
                    "rng=np.random.Generator to aggregate()"
                )
            if not isinstance(rng, np.random.Generator):
                raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        z = np.where(m[..., None], z, 0.0)
        counts = vote_counts(z, m).astype(np.float64)

        answered = np.ones(n, dtype=bool)
        if self.threshold is not None:
            top = counts.max(axis=1)
            if self.sigma_threshold > 0.0:
                assert rng is not None
                top = top + rng.normal(0.0, self.sigma_threshold, size=n)
            answered = top >= self.threshold
        noisy_counts = counts
        if self.sigma > 0.0:
            assert rng is not None
            noisy_counts = counts + rng.normal(0.0, self.sigma, size=(n, c))
        labels = np.argmax(noisy_counts, axis=1)

        probs = np.full((n, c), 1.0 / c, dtype=np.float32)
        probs[answered] = 0.0
        probs[np.flatnonzero(answered), labels[answered]] = 1.0
        return Targets(probs=probs, answered=answered, privacy_events=self.privacy_events(n),
                       votes=counts.astype(np.int32))

    def _aggregate(
        self, scaled_logits: FloatArray, mask: BoolArray, weights: FloatArray | None
    ) -> FloatArray:
        if self.sigma > 0.0 or self.threshold is not None:
            raise ValueError(
                "aggregation rule 'pate' is randomised (sigma > 0 or a threshold): call "
                "rule.aggregate(logits, mask=..., rng=np.random.Generator) instead of "
                "rule(logits), which gives the plain vote only for sigma=0 without a threshold"
            )
        counts = vote_counts(scaled_logits, mask)
        n, c = counts.shape
        out = np.zeros((n, c), dtype=np.float64)
        out[np.arange(n), np.argmax(counts, axis=1)] = 1.0
        return out
