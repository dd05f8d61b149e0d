"""Optimizers: SGD (momentum, Nesterov, weight decay) and AdamW."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..core import Registry, check_number

OPTIMIZERS: Registry[type[torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("sgd", torch.optim.SGD)
OPTIMIZERS.register("adamw", torch.optim.AdamW)


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict[str, object]]:
    """Split parameters so normalization weights and biases get no weight decay (unless asked)."""
    if decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def create_optimizer(
    name: str,
    params: Iterable[nn.Parameter] | list[dict[str, object]],
    lr: float,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 5e-4,
) -> torch.optim.Optimizer:
    """Create the named optimizer with the usual robust-training settings."""
    check_number(lr, "learning rate", 0, low_open=True)
    cls = OPTIMIZERS.get(name)
    if cls is torch.optim.SGD:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                               weight_decay=weight_decay)
    return cls(params, lr=lr, weight_decay=weight_decay)  # type: ignore[call-arg]
