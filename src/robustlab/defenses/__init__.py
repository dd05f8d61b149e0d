"""Defenses: one module per technique, each a layer plus the ``convert_*`` surgery that installs it.

Every conversion registers in ``CONVERSIONS`` so a checkpoint's recipe (its ordered list of
conversions) can be replayed by :func:`robustlab.load`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..core import CheckpointError, Registry

CONVERSIONS: Registry[Callable[..., nn.Module]] = Registry("conversion")


def apply_conversion(model: nn.Module, conversion: dict[str, Any]) -> nn.Module:
    """Replay one recorded conversion ``{"name": ..., "options": {...}}`` on ``model``."""
    name = conversion.get("name") if isinstance(conversion, dict) else None
    if not isinstance(name, str):
        raise CheckpointError(f"malformed conversion entry in recipe: {conversion!r}")
    if name not in CONVERSIONS:
        raise CheckpointError(
            f"checkpoint needs conversion {name!r}, which this robustlab does not provide "
            f"(known: {', '.join(CONVERSIONS.names()) or 'none'}); upgrade robustlab"
        )
    return CONVERSIONS.get(name)(model, **conversion.get("options", {}))


from .downsampling import (  # noqa: E402  (registers into CONVERSIONS defined above)
    DOWNSAMPLERS,
    METHODS,
    AddNoise,
    BlurPool,
    Downsampled,
    FLCPool,
    convert_downsampling,
    deterministic_twin,
)
from .stochastic_downsampling import SharedJitter, StochasticDownsample  # noqa: E402

__all__ = [
    "CONVERSIONS",
    "DOWNSAMPLERS",
    "METHODS",
    "AddNoise",
    "BlurPool",
    "Downsampled",
    "FLCPool",
    "SharedJitter",
    "StochasticDownsample",
    "apply_conversion",
    "convert_downsampling",
    "deterministic_twin",
]
