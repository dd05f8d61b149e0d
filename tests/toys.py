"""Toy modules and callbacks shared by the test folders (test-only; not library code)."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.core.randomness import Stochastic
from robustlab.train.callbacks import Callback


class NoiseInjection(Stochastic):
    """Adds Gaussian noise of standard deviation ``std`` on every forward (a toy randomized
    defense in the style of random-noise-injection defenses); ``std = 0`` is the identity."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    @property
    def stochastic_active(self) -> bool:
        return self.std > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return x
        noise = self.draw(
            lambda g: torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype),
            key=tuple(x.shape),
            device=x.device,
        )
        return x + self.std * noise


class Linear2(nn.Module):
    """Two-class linear model with logits ``[0, <w, x> + b]``: class 1 when ``<w, x> > -b``; for
    label 0 the cross-entropy's input gradient is ``sigmoid(z) * w``, so its sign is ``sign(w)``
    everywhere, and the margin of a point is known in closed form."""

    def __init__(self, w: torch.Tensor, b: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x * self.w.view(x.shape[1:]).to(x.dtype)).flatten(1).sum(1) + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


class Crash(Exception):
    """What :class:`CrashAfter` raises."""


class CrashAfter(Callback):
    """Simulates a killed run: dies right after epoch ``n``'s checkpoint is on disk."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_epoch_end(self, trainer, epoch, metrics):  # type: ignore[no-untyped-def]
        if epoch + 1 == self.n:
            raise Crash
