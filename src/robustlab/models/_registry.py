"""The model registry (kept apart so architecture modules can register without import cycles)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from ..core import Registry

ModelBuilder = Callable[..., nn.Module]
"""``fn(num_classes, in_channels, **kwargs) -> nn.Module``: the bare network on normalized input."""

MODELS: Registry[ModelBuilder] = Registry("model")
"""Builders of the bare networks; :func:`robustlab.models.create_model` wraps them."""

B = TypeVar("B", bound=ModelBuilder)


def register_model(
    name: str, *, description: str, paper: str | None = None, input_size: tuple[int, int, int] = (3, 32, 32)
) -> Callable[[B], B]:
    """Decorator: register a builder in :data:`MODELS` under ``name`` with its description, the
    paper section it comes from (if any) and the ``(C, H, W)`` input it is sized for."""
    meta: dict[str, Any] = {"description": description, "input_size": input_size}
    if paper is not None:
        meta["paper"] = paper

    def add(builder: B) -> B:
        MODELS.register(name, builder, **meta)
        return builder

    return add
