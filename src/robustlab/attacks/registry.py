"""The attack registry and factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.registry import Registry
from ..core.types import ThreatModel
from .base import Attack

__all__ = ["ATTACKS", "apgd_ce", "apgd_dlr", "autoattack_rand", "create_attack"]

ATTACKS: Registry[Callable[..., Attack]] = Registry("attack")
"""Attack name -> constructor taking ``(threat, **kwargs)``."""


def create_attack(name: str, threat: ThreatModel, **kwargs: Any) -> Attack:
    """Build the attack registered as ``name`` for ``threat`` with keyword settings.

    Raises:
        UnknownNameError: listing the registered attacks.
    """
    return ATTACKS.get(name)(threat, **kwargs)


def apgd_ce(threat: ThreatModel, steps: int = 100, **kwargs: Any) -> Attack:
    """APGD with the cross-entropy loss (Croce & Hein, 2020, Sec. 3)."""
    from .apgd import APGD

    return APGD(threat, steps, loss="ce", **kwargs)


def apgd_dlr(threat: ThreatModel, steps: int = 100, **kwargs: Any) -> Attack:
    """APGD with the DLR loss (Croce & Hein, 2020, Sec. 3.2)."""
    from .apgd import APGD

    return APGD(threat, steps, loss="dlr", **kwargs)


def autoattack_rand(threat: ThreatModel, **kwargs: Any) -> Attack:
    """AutoAttack's version for randomized defenses: APGD-CE and APGD-DLR with EOT over 20 draws."""
    from .ensemble import AutoAttack

    return AutoAttack(threat, "rand", **kwargs)
