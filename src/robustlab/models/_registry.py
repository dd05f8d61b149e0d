"""The model registry (kept apart so architecture modules can register without import cycles)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..core import Registry

ModelBuilder = Callable[..., nn.Module]
"""``fn(num_classes, in_channels, **kwargs) -> nn.Module``: the bare network on normalized input."""

MODELS: Registry[ModelBuilder] = Registry("model")
"""Builders of the bare networks; :func:`robustlab.models.create_model` wraps them."""
