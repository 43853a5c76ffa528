"""Privacy: DP-SGD on clients (dpsgd), noise on released outputs (output_noise), ledgers
(accounting), and the configuration check the composition root runs (:func:`check_privacy_config`).

Accountants come from registries: a client's example-level accountant from Opacus' own
(``opacus.accountants.create_accountant``: ``rdp``, ``prv``, ``gdp``, and any registered with
``opacus.accountants.registry.register_accountant``); the server's client-level ledger from
:data:`fedkd.privacy.accounting.ACCOUNTANTS` (dp-accounting's ``rdp`` and ``pld``).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import warnings

from fedkd.config import PrivacyConfig
from fedkd.errors import ConfigError


_OPACUS_LOCK = threading.Lock()


@functools.cache
def import_opacus() -> None:
    """Import opacus (once per process) without the logging handler its import installs.

    ``opacus.utils.module_utils``, which ``import opacus`` loads, calls ``logging.basicConfig``
    at import time: the root logger gets a stderr handler with no level. Flower's ``flwr``
    logger (level DEBUG, its own INFO console handler) propagates to the root, so in every
    process that imported opacus (a DP run's ServerApp, in the simulation process whose output
    is the run's log) each Flower line was printed twice (once in opacus' format) and Flower's
    DEBUG lines leaked into the log. ``basicConfig`` does nothing to a root logger that has a
    handler: while opacus is imported (seconds, during which Flower's other threads log) the
    root holds a :class:`logging.NullHandler`, and afterwards every handler the import left
    there is removed again (those that were there before stay). Every opacus import in fedkd
    goes through here first.
    """
    with _OPACUS_LOCK:
        root = logging.getLogger()
        before = list(root.handlers)
        root.addHandler(logging.NullHandler())
        try:
            import opacus  # noqa: F401  (its import is the point)
        finally:
            for handler in root.handlers[:]:
                if handler not in before:
                    root.removeHandler(handler)


def opacus_accountants() -> list[str]:
    """The accountant names Opacus' registry holds (imports opacus)."""
    import_opacus()
    from opacus.accountants import registry

    return sorted(getattr(registry, "_ACCOUNTANTS", {"rdp": None, "prv": None, "gdp": None}))


def check_privacy_config(cfg: PrivacyConfig, planned_releases: int = 0) -> None:
    """Reject accountant names no registry holds, and a ``target-epsilon`` that the run's
    ``planned_releases`` (at ``output-noise``) alone would spend. The client accountant is looked
    up in Opacus' registry only when privacy is on (it is unused otherwise, and opacus is slow to
    import)."""
    from fedkd.privacy.accounting import ACCOUNTANTS

    if cfg.server_accountant not in ACCOUNTANTS:
        raise ConfigError(f"privacy.server-accountant: unknown server accountant "
                          f"{cfg.server_accountant!r}; valid names: {', '.join(ACCOUNTANTS.names())}")
    if cfg.enabled:
        import_opacus()
        from opacus.accountants import create_accountant

        try:
            create_accountant(mechanism=cfg.accountant)
        except ValueError as err:
            raise ConfigError(f"privacy.accountant: unknown accountant {cfg.accountant!r}; valid "
                              f"names (Opacus' registry): {', '.join(opacus_accountants())}") from err
    if cfg.dp_sgd and cfg.target_epsilon > 0 and planned_releases > 0:
        from fedkd.privacy.dpsgd import epsilon_of

        floor = epsilon_of([(cfg.output_noise, 1.0, planned_releases)], cfg.delta, cfg.accountant)
        if floor >= cfg.target_epsilon:
            raise ConfigError(
                f"privacy.target-epsilon {cfg.target_epsilon:g}: the run's {planned_releases} "
                f"planned output releases at privacy.output-noise {cfg.output_noise:g} alone "
                f"spend epsilon {floor:.3f}; raise privacy.output-noise or the target")


def _round_up(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, rounded up (a bound to quote in a message)."""
    if not math.isfinite(value) or value <= 0:
        return f"{value:g}"
    scale = 10 ** (digits - 1 - math.floor(math.log10(value)))
    return f"{math.ceil(value * scale) / scale:g}"


def check_target_reachable(cfg: PrivacyConfig, *, train_size: int, batch_size: int,
                           steps_per_round: int, planned_rounds: int,
                           releases_per_round: int = 0) -> None:
    """Refuse a ``privacy.target-epsilon`` that no DP-SGD noise multiplier reaches over the
    planned run, which the clients would otherwise find out in their first round (Opacus:
    "The privacy budget is too low.").

    Which sample rate: a client calibrates its noise (:func:`~fedkd.privacy.dpsgd.
    planned_noise_multiplier`) at its own Poisson sample rate ``1 / ceil(n / min(batch, n))`` for
    its ``n`` training examples. The rate grows as ``n`` shrinks, and the epsilon of given noise
    grows with the rate, so the client with the fewest examples (``train_size``, the smallest
    local training set of the planned run) needs the most noise: if its calibration succeeds,
    every client's does, and if it fails, the run fails. Checking that one client is exact for
    the planned run, with the same steps (``planned_rounds`` x ``steps_per_round``), output
    releases, accountant, delta and search as the clients.

    Cost: one accountant evaluation (:func:`~fedkd.privacy.dpsgd.calibration_floor`, the epsilon
    at the largest noise multiplier the calibration tries) accepts a reachable target; only a
    target below that floor (or an accountant that cannot evaluate it) runs the clients' own
    calibration, whose error is the reason given. Imports opacus only when DP-SGD has a target.
    """
    if not (cfg.dp_sgd and cfg.target_epsilon > 0):
        return
    from fedkd.privacy.dpsgd import (
        ClientPrivacy,
        calibration_floor,
        largest_calibrated_sigma,
        planned_noise_multiplier,
    )

    q = ClientPrivacy.sample_rate(train_size, batch_size)
    with warnings.catch_warnings():
        # Opacus' RDP warns that the optimal order is its largest one: true at huge noise.
        warnings.simplefilter("ignore")
        try:
            floor: float | None = calibration_floor(cfg, q, steps_per_round, planned_rounds,
                                                    releases_per_round)
        except ValueError:
            floor = None
        if floor is not None and floor <= cfg.target_epsilon:
            return
        try:
            planned_noise_multiplier(cfg, q, steps_per_round, planned_rounds, releases_per_round)
        except ValueError as err:
            reason = str(err).rstrip(".")
        else:
            return
    releases = releases_per_round * planned_rounds
    plan = (f"{planned_rounds} rounds x {steps_per_round} steps, sample rate 1/{round(1 / q)} for "
            f"the smallest client's {train_size} examples at batch {batch_size}"
            + (f", {releases} output releases at noise {cfg.output_noise:g}" if releases else "")
            + f"; {cfg.accountant} accountant, delta {cfg.delta:g}")
    known = floor is not None and math.isfinite(floor)
    spent = (f"even noise multiplier {largest_calibrated_sigma():g} spends epsilon {floor:.4g} "
             f"over the planned run ({plan})" if known
             else f"no noise multiplier is found for the planned run ({plan})")
    raise ConfigError(
        f"privacy.target-epsilon {cfg.target_epsilon:g} is out of reach: {spent}, and the "
        f"clients' noise calibration would fail ({reason}); raise privacy.target-epsilon"
        + (f" above {_round_up(floor)}" if known else "")  # type: ignore[arg-type]
        + ", or set privacy.noise-multiplier without a target")
