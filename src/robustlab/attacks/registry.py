"""The attack registry and factory.

Every attack registers where it is defined, with :func:`register_attack` (the timm pattern: the
registry's entry sits beside the code it names).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..core.registry import Registry
from ..core.types import ThreatModel
from .base import Attack

__all__ = ["ATTACKS", "create_attack", "register_attack"]

ATTACKS: Registry[Callable[..., Attack]] = Registry("attack")
"""Attack name -> constructor taking ``(threat, **kwargs)``."""

Constructor = TypeVar("Constructor", bound=Callable[..., Attack])


def register_attack(
    name: str, paper: str, builds: type[Attack] | None = None
) -> Callable[[Constructor], Constructor]:
    """Register an attack constructor under ``name`` with the paper it follows.

    The entry's metadata (``ATTACKS.meta(name)``) is ``paper`` and the ``kind`` and ``norms``
    of the class the constructor builds: the constructor itself, or ``builds`` for a factory
    function.
    """

    def add(constructor: Constructor) -> Constructor:
        cls: Any = constructor if builds is None else builds
        ATTACKS.register(name, constructor, paper=paper, kind=cls.kind, norms=cls.norms)
        return constructor

    return add


def create_attack(name: str, threat: ThreatModel, **kwargs: Any) -> Attack:
    """Build the attack registered as ``name`` for ``threat`` with keyword settings.

    Raises:
        UnknownNameError: listing the registered attacks.
    """
    return ATTACKS.get(name)(threat, **kwargs)
