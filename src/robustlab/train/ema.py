"""Exponential moving average of weights (Polyak averaging), a common robust-training trick."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``shadow = decay * shadow + (1 - decay) * weights`` after every optimizer step.

    Floating-point buffers (BatchNorm running statistics) are averaged the same way, so the
    averaged weights are evaluated with statistics that match them; integer buffers (batch
    counters) are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current weights of ``model`` into the average."""
        for s, p in zip(self.shadow.parameters(), model.parameters(), strict=True):
            s.lerp_(p.detach(), 1.0 - self.decay)
        # Float buffers (BatchNorm running statistics) are averaged like the weights: the
        # averaged weights need statistics of the averaged network, not of the live one.
        for sb, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            if sb.is_floating_point():
                sb.lerp_(b.detach(), 1.0 - self.decay)
            else:
                sb.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights."""
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the averaged weights."""
        self.shadow.load_state_dict(state)
