"""Client-level privacy ledger of the server's randomised aggregation (PATE votes).

Privacy unit: **one client's (teacher's) whole data**. This ledger is separate from the clients'
example-level DP-SGD accountants; the two units must never be added up (notes: opacus-1.6 §8).

The server's randomised rules (:mod:`fedkd.aggregation.pate`) report what they released as
``dp_accounting`` events in :attr:`fedkd.aggregation.Targets.privacy_events`; the server passes
them to :meth:`ServerLedger.record` every round and reports :meth:`ServerLedger.epsilon` at its
``delta``. Supported events: ``GaussianDpEvent``, ``SelfComposedDpEvent`` and ``ComposedDpEvent``
built from Gaussian events, ``PoissonSampledDpEvent`` of those, ``NoOpDpEvent`` (free) and
``NonPrivateDpEvent`` (``epsilon = inf``).

Amplification by sampling: a ledger built with a ``sampling_rate`` ``q`` (the server's
``federation.sampling = "poisson"``: each client takes part in a round independently with
probability ``q``, :meth:`fedkd.config.RunConfig.client_sampling_rate`) wraps every round's
releases in one ``PoissonSampledDpEvent(q, ...)``: the releases of one round are computed from
one sample, so they are composed *inside* the sampled event (:meth:`ServerLedger.end_round`
closes a round; the round loop calls it). A round's Gaussian releases compose exactly into one
Gaussian (noise multiplier ``(sum_i 1 / z_i^2) ** -0.5``; the privacy loss of a shifted
isotropic Gaussian depends only on the shift's norm, sampled or not), so a sampled round is
recorded as one ``(q, z)`` pair. Without a sampling rate every release is recorded as it is
(fixed-size sampling: the zero-out accounting, no amplification).

Events are reduced when recorded to one count per distinct Gaussian noise multiplier (and per
distinct ``(q, z)`` pair of sampled rounds), so the ledger's size and the cost of :meth:`ServerLedger.epsilon` do not grow with the number of rounds:
epsilon is computed by a fresh accountant over that compact list (``k`` self-compositions of
one Gaussian mechanism compose in one step for both the RDP and the PLD accountants) and cached
until the next :meth:`ServerLedger.record`. RDP takes about a millisecond; PLD is tighter but
takes 0.2 s to 2 s (growing with the number of queries: 640 -> 0.5 s, 10,000 -> 2 s).

:func:`gnmax_epsilon` gives the data-independent epsilon of GNMax / Confident-GNMax directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from numbers import Integral, Real
from typing import Any

from fedkd.registry import Registry
from fedkd.validate import finite_non_negative

# dp_accounting (with scipy, about 1 s to import) is imported where it is used, not here: a
# process that builds a ServerLedger but never reports an epsilon (a client, a run without DP)
# does not pay for it.

__all__ = ["ACCOUNTANTS", "ServerLedger", "gnmax_epsilon", "planned_epsilon"]

ACCOUNTANTS: Registry[Callable[[], Any]] = Registry("server accountant")
"""The server ledger's accountants by name (``privacy.server-accountant``), as factories of a
``dp_accounting.PrivacyAccountant``: ``"rdp"`` (``RdpAccountant``), ``"pld"``
(``PLDAccountant``, tighter, slower)."""


@ACCOUNTANTS.register("rdp")
def _rdp() -> Any:
    """Renyi DP accounting (``dp_accounting``'s ``RdpAccountant``)."""
    from dp_accounting import rdp

    return rdp.RdpAccountant()


@ACCOUNTANTS.register("pld")
def _pld() -> Any:
    """Privacy loss distributions (``dp_accounting``'s ``PLDAccountant``): tighter, slower."""
    from dp_accounting import pld

    return pld.PLDAccountant()

_STATE_VERSION = 2  # 2: sampled rounds (["poisson", z, count, q]) and the sampling rate
_GAUSSIAN = "gaussian"
_NON_PRIVATE = "non_private"
_POISSON = "poisson"


def _check_delta(delta: object) -> float:
    if isinstance(delta, bool) or not isinstance(delta, Real):
        raise ValueError(f"delta must be a real number, got {delta!r}")
    out = float(delta)
    if not 0.0 < out < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    return out


def _check_sampling_rate(rate: object) -> float | None:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, Real) or not 0.0 < float(rate) <= 1.0:
        raise ValueError(f"sampling_rate must be None or a number in (0, 1], got {rate!r}")
    return float(rate)


def _check_accountant(accountant: object) -> str:
    if accountant not in ACCOUNTANTS:
        raise ValueError(
            f"accountant must be one of {', '.join(map(repr, ACCOUNTANTS))}, got {accountant!r}"
        )
    return str(accountant)


def _new_accountant(accountant: str) -> Any:  # a dp_accounting.PrivacyAccountant
    return ACCOUNTANTS.get(accountant)()


def _combined_noise(gaussian: Mapping[float, int]) -> float:
    """The noise multiplier of one Gaussian mechanism equivalent to the composition of
    ``gaussian`` (noise multiplier -> count): ``(sum k / z^2) ** -0.5`` (exact: both release a
    Gaussian whose shift, in noise units, has the same norm)."""
    return 1.0 / math.sqrt(math.fsum(k / (z * z) for z, k in gaussian.items()))


def _flatten(event: Any, times: int, gaussian: dict[float, int],
             sampled: dict[tuple[float, float], int] | None = None) -> bool:
    """Add ``times`` copies of ``event`` to ``gaussian`` (noise multiplier -> count), and of a
    ``PoissonSampledDpEvent`` to ``sampled`` ((q, combined noise multiplier) -> count).

    Returns whether the event contains a non-private release. Raises on unsupported events
    (a sampled event inside a sampled event included: ``sampled`` is None there).
    """
    import dp_accounting

    if isinstance(event, dp_accounting.PoissonSampledDpEvent) and sampled is not None:
        q = event.sampling_probability
        if isinstance(q, bool) or not isinstance(q, Real) or not 0.0 <= float(q) <= 1.0:
            raise ValueError(f"PoissonSampledDpEvent sampling probability must be in [0, 1], "
                             f"got {q!r}")
        inner: dict[float, int] = {}
        non_private = _flatten(event.event, 1, inner)
        if times == 0 or float(q) == 0.0:
            return False  # nobody is ever sampled: nothing released
        if non_private:
            return True
        if inner:
            key = (float(q), _combined_noise(inner))
            sampled[key] = sampled.get(key, 0) + times
        return False

    if isinstance(event, dp_accounting.NonPrivateDpEvent):
        return times > 0
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return False
    if isinstance(event, dp_accounting.GaussianDpEvent):
        z = float(event.noise_multiplier)
        if math.isnan(z) or z < 0.0:
            raise ValueError(f"GaussianDpEvent noise multiplier must be >= 0, got {z}")
        if times == 0:
            return False
        if z == 0.0:
            return True  # no noise: not private
        if math.isinf(z):
            return False  # infinite noise: releases nothing
        gaussian[z] = gaussian.get(z, 0) + times
        return False
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        count = event.count
        if isinstance(count, bool) or not isinstance(count, Integral) or count < 0:
            raise ValueError(f"SelfComposedDpEvent count must be an integer >= 0, got {count!r}")
        return _flatten(event.event, times * int(count), gaussian, sampled)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        non_private = False
        for inner in event.events:
            non_private |= _flatten(inner, times, gaussian, sampled)
        return non_private
    raise ValueError(
        f"ServerLedger records only Gaussian, self-composed, composed, Poisson-sampled (of "
        f"Gaussian), no-op and non-private dp_accounting events, got {type(event).__name__}: "
        f"{event!r}"
    )


class ServerLedger:
    """Client-level privacy spent by the server's randomised aggregation, over a whole run.

    Parameters
    ----------
    delta
        The ``delta`` in ``(0, 1)`` at which :meth:`epsilon` is reported.
    accountant
        ``"rdp"`` (``dp_accounting.rdp.RdpAccountant``) or ``"pld"``
        (``dp_accounting.pld.PLDAccountant``, tighter).
    sampling_rate
        ``None`` (fixed-size sampling: every release is charged as it is) or ``q`` in
        ``(0, 1]``: each client takes part in a round independently with probability ``q``
        (Poisson sampling), and each round's releases are charged as one
        ``PoissonSampledDpEvent(q, ...)`` (amplification by sampling, add-or-remove adjacency
        of dp_accounting, which is the zero-out adjacency of a client whose contribution is
        replaced by nothing). A round runs from the first :meth:`record` after
        :meth:`end_round` to the next :meth:`end_round`.

    Examples
    --------
    >>> ledger = ServerLedger(delta=1e-5)
    >>> ledger.record(targets.privacy_events)  # doctest: +SKIP
    >>> ledger.epsilon()  # doctest: +SKIP
    """

    def __init__(self, delta: float, accountant: str = "rdp",
                 sampling_rate: float | None = None) -> None:
        self.delta = _check_delta(delta)
        self.accountant = _check_accountant(accountant)
        self.sampling_rate = _check_sampling_rate(sampling_rate)
        self._gaussian: dict[float, int] = {}  # noise multiplier -> number of releases
        self._sampled: dict[tuple[float, float], int] = {}  # (q, z) -> number of sampled rounds
        self._round: dict[float, int] = {}  # the open sampled round's releases (z -> count)
        self._non_private = False
        self._num_events = 0
        self._cached: dict[bool, float] = {}

    # -- recording ----------------------------------------------------------------------------

    def record(self, events: Iterable[Any]) -> None:
        """Record released ``dp_accounting`` events (e.g. ``Targets.privacy_events``).

        All or nothing: if one event is unsupported, none of ``events`` is recorded. With a
        :attr:`sampling_rate`, unsampled events join the open round (charged, sampled, by
        :meth:`end_round`); ``PoissonSampledDpEvent`` events are charged as they are.

        Raises
        ------
        ValueError
            On an unsupported event type (Laplace, sampled without replacement...) or an
            invalid event.
        """
        import dp_accounting

        if isinstance(events, dp_accounting.DpEvent):
            raise TypeError("record() takes an iterable of events; wrap a single event: [event]")
        staged: dict[float, int] = {}
        sampled: dict[tuple[float, float], int] = {}
        non_private = False
        count = 0
        for event in events:
            non_private |= _flatten(event, 1, staged, sampled)
            count += 1
        if count == 0:
            return
        target = self._gaussian if self.sampling_rate is None else self._round
        for z, k in staged.items():
            target[z] = target.get(z, 0) + k
        for key, k in sampled.items():
            self._sampled[key] = self._sampled.get(key, 0) + k
        self._non_private |= non_private
        self._num_events += count
        self._cached = {}

    def end_round(self) -> None:
        """Close the open round: with a :attr:`sampling_rate` ``q``, its releases (composed into
        one Gaussian of noise multiplier ``z``) are charged as one
        ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``. Nothing to do without a sampling rate
        or when the round released nothing (a skipped round). Until then :meth:`epsilon` and
        :meth:`state_dict` count the open round as closed."""
        for key, k in self._open_round().items():
            self._sampled[key] = self._sampled.get(key, 0) + k
        self._round = {}

    def _open_round(self) -> dict[tuple[float, float], int]:
        if not self._round:
            return {}
        assert self.sampling_rate is not None
        return {(self.sampling_rate, _combined_noise(self._round)): 1}

    @property
    def num_events(self) -> int:
        """How many events :meth:`record` has received (top-level events, not queries)."""
        return self._num_events

    # -- reporting ----------------------------------------------------------------------------

    def epsilon(self, amplified: bool = True) -> float | None:
        """Epsilon at :attr:`delta` spent so far.

        ``amplified=False``: the same releases without amplification by sampling (each
        sampled round charged as its Gaussian): the bound against whoever knows which clients
        each round sampled (the server that draws them). Equal to the amplified figure when
        nothing was sampled.

        Returns ``None`` if nothing was recorded, ``math.inf`` if a non-private release was
        recorded, and ``0.0`` if only no-op events were.
        """
        if self._num_events == 0:
            return None
        if self._non_private:
            return math.inf
        if amplified not in self._cached:
            sampled = dict(self._sampled)
            for key, k in self._open_round().items():
                sampled[key] = sampled.get(key, 0) + k
            gaussian = dict(self._gaussian)
            if not amplified:
                for (_, z), k in sampled.items():
                    gaussian[z] = gaussian.get(z, 0) + k
                sampled = {}
            self._cached[amplified] = _epsilon(gaussian, self.delta, self.accountant, sampled)
        return self._cached[amplified]

    @property
    def amplified(self) -> bool:
        """Whether anything was charged as sampled (amplification by sampling claimed)."""
        return bool(self._sampled or self._round)

    def __repr__(self) -> str:
        return (
            f"ServerLedger(delta={self.delta!r}, accountant={self.accountant!r}, "
            f"sampling_rate={self.sampling_rate!r}, num_events={self._num_events}, "
            f"epsilon={self.epsilon()!r})"
        )

    # -- checkpointing ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot: ``delta``, ``accountant``, ``sampling_rate``, ``num_events``
        and the compact events as ``[kind, noise_multiplier, count]`` lists (``kind``
        ``"gaussian"`` or ``"non_private"``, whose noise multiplier is ``None``) and
        ``["poisson", noise_multiplier, count, q]`` for sampled rounds (an open round counted
        as closed)."""
        events: list[list[Any]] = [[_GAUSSIAN, z, k] for z, k in sorted(self._gaussian.items())]
        sampled = dict(self._sampled)
        for key, k in self._open_round().items():
            sampled[key] = sampled.get(key, 0) + k
        events += [[_POISSON, z, k, q] for (q, z), k in sorted(sampled.items())]
        if self._non_private:
            events.append([_NON_PRIVATE, None, 1])
        return {
            "version": _STATE_VERSION,
            "delta": self.delta,
            "accountant": self.accountant,
            "sampling_rate": self.sampling_rate,
            "num_events": self._num_events,
            "events": events,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot (this version's or version 1, which predates
        sampling), replacing what this ledger holds.

        Raises
        ------
        ValueError
            On a malformed snapshot, or one taken with another ``delta``, ``accountant`` or
            ``sampling_rate`` (the ledger would otherwise silently report a different quantity).
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"ledger state must be a mapping, got {type(state).__name__}")
        missing = {"version", "delta", "accountant", "num_events", "events"} - set(state)
        if missing:
            raise ValueError(f"ledger state lacks key(s): {', '.join(sorted(missing))}")
        if state["version"] not in (1, _STATE_VERSION):
            raise ValueError(f"unsupported ledger state version {state['version']!r}")
        if _check_delta(state["delta"]) != self.delta:
            raise ValueError(f"ledger state has delta {state['delta']!r}, this ledger {self.delta}")
        if _check_accountant(state["accountant"]) != self.accountant:
            raise ValueError(
                f"ledger state has accountant {state['accountant']!r}, "
                f"this ledger {self.accountant!r}"
            )
        rate = state.get("sampling_rate") if state["version"] != 1 else None
        if _check_sampling_rate(rate) != self.sampling_rate:
            raise ValueError(f"ledger state has sampling rate {rate!r}, "
                             f"this ledger {self.sampling_rate!r}")
        num_events = state["num_events"]
        if isinstance(num_events, bool) or not isinstance(num_events, Integral) or num_events < 0:
            raise ValueError(f"num_events must be an integer >= 0, got {num_events!r}")
        gaussian: dict[float, int] = {}
        sampled: dict[tuple[float, float], int] = {}
        non_private = False
        for entry in state["events"]:
            if (not isinstance(entry, (list, tuple))
                    or len(entry) != (4 if entry and entry[0] == _POISSON else 3)):
                raise ValueError(f"ledger event must be [kind, noise_multiplier, count] "
                                 f"(and q for {_POISSON!r}): {entry!r}")
            kind, z, k = entry[:3]
            if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
                raise ValueError(f"ledger event count must be an integer >= 1: {entry!r}")
            if kind == _NON_PRIVATE:
                non_private = True
                continue
            if kind not in (_GAUSSIAN, _POISSON) or (kind == _POISSON and state["version"] == 1):
                raise ValueError(f"unknown ledger event kind {kind!r} in {entry!r}")
            if isinstance(z, bool) or not isinstance(z, Real) or not 0.0 < float(z) < math.inf:
                raise ValueError(f"ledger noise multiplier must be finite and > 0: {entry!r}")
            if kind == _GAUSSIAN:
                gaussian[float(z)] = gaussian.get(float(z), 0) + int(k)
            else:
                q = _check_sampling_rate(entry[3])
                if q is None:
                    raise ValueError(f"ledger sampling rate must be in (0, 1]: {entry!r}")
                sampled[(q, float(z))] = sampled.get((q, float(z)), 0) + int(k)
        self._gaussian = gaussian
        self._sampled = sampled
        self._round = {}
        self._non_private = non_private
        self._num_events = int(num_events)
        self._cached = {}


def _epsilon(gaussian: Mapping[float, int], delta: float, accountant: str,
             sampled: Mapping[tuple[float, float], int] | None = None) -> float:
    import dp_accounting

    acct = _new_accountant(accountant)
    for z, k in sorted(gaussian.items()):
        acct.compose(dp_accounting.GaussianDpEvent(z), k)
    for (q, z), k in sorted((sampled or {}).items()):
        acct.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), k)
    return float(acct.get_epsilon(delta))


def gnmax_epsilon(
    sigma: float,
    queries: int,
    delta: float,
    accountant: str = "rdp",
    sigma_threshold: float | None = None,
) -> float:
    """Data-independent client-level epsilon of ``queries`` GNMax (or Confident-GNMax) answers.

    Each vote is a Gaussian mechanism with noise multiplier ``sigma / sqrt(2)`` (the vote
    histogram has L2 sensitivity ``sqrt(2)``); with ``sigma_threshold`` the threshold step adds,
    for every query, one with noise multiplier ``sigma_threshold`` (sensitivity 1). Every query
    is charged as answered.

    Returns ``math.inf`` if ``sigma`` (or a given ``sigma_threshold``) is 0 and ``0.0`` for
    ``queries = 0``. Example: ``gnmax_epsilon(40, 1000, 1e-5)`` is 5.3777 (RDP), 4.983 (PLD).
    """
    for name, value in (("sigma", sigma), ("sigma_threshold", sigma_threshold)):
        if value is not None:
            finite_non_negative(name, value)
    if isinstance(queries, bool) or not isinstance(queries, Integral) or queries < 0:
        raise ValueError(f"queries must be an integer >= 0, got {queries!r}")
    delta = _check_delta(delta)
    accountant = _check_accountant(accountant)
    if queries == 0:
        return 0.0
    if sigma == 0.0 or sigma_threshold == 0.0:
        return math.inf
    gaussian = {float(sigma) / math.sqrt(2.0): int(queries)}
    if sigma_threshold is not None:
        z = float(sigma_threshold)
        gaussian[z] = gaussian.get(z, 0) + int(queries)
    return _epsilon(gaussian, delta, accountant)


def planned_epsilon(
    round_events: Iterable[Any],
    rounds: int,
    delta: float,
    accountant: str = "rdp",
    sampling_rate: float | None = None,
) -> float | None:
    """The epsilon a :class:`ServerLedger` reports after ``rounds`` rounds that each release
    ``round_events`` (one round's client-level ``dp_accounting`` events), sampled or not: the
    accounting to calibrate a client-level noise to a target epsilon with, so that the
    calibration and the run's ledger agree (under ``federation.sampling = "poisson"`` pass
    ``sampling_rate`` = ``fraction-train``). Example: ``planned_epsilon([GaussianDpEvent(1.0)],
    100, 1e-5, sampling_rate=0.01)`` is 1.2141 (RDP); without ``sampling_rate`` 96.12."""
    if isinstance(rounds, bool) or not isinstance(rounds, Integral) or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    events = list(round_events)
    ledger = ServerLedger(delta, accountant, sampling_rate)
    for _ in range(int(rounds)):
        ledger.record(events)
        ledger.end_round()
    return ledger.epsilon()
