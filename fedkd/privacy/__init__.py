"""Privacy: DP-SGD on clients (dpsgd), noise on released outputs (output_noise), ledgers
(accounting), and the configuration check the composition root runs (:func:`check_privacy_config`).

Accountants come from registries: a client's example-level accountant from Opacus' own
(``opacus.accountants.create_accountant``: ``rdp``, ``prv``, ``gdp``, and any registered with
``opacus.accountants.registry.register_accountant``); the server's client-level ledger from
:data:`fedkd.privacy.accounting.ACCOUNTANTS` (dp-accounting's ``rdp`` and ``pld``).
"""

from __future__ import annotations

from fedkd.config import PrivacyConfig
from fedkd.errors import ConfigError


def opacus_accountants() -> list[str]:
    """The accountant names Opacus' registry holds (imports opacus)."""
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
