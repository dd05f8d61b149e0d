"""Tiny models, data and spy attacks for the evaluate tests (fast on 2 CPU cores)."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks import Attack, AttackResult, RunContext
from robustlab.core.randomness import Stochastic


def linear_model(num_classes: int = 3, features: int = 16, seed: int = 0, hidden: int = 0) -> nn.Module:
    """A fixed random linear (or one-hidden-layer) classifier on 1x4x4 images, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    if hidden:
        layers += [nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes)]
    else:
        layers += [nn.Linear(features, num_classes)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 1 else 1.0))
    return net.eval()


def toy_data(model: nn.Module, n: int = 64, wrong: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random 1x4x4 images labelled by ``model``, the first ``wrong`` labels shifted."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    y[:wrong] = (y[:wrong] + 1) % logits.shape[1]
    return x, y


class AddNoise(Stochastic):
    """Gaussian input noise (a noise-injection defense); counts forwards and images."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std
        self.calls = 0
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += x.shape[0]
        noise = self.draw(
            lambda g: torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype),
            key=tuple(x.shape),
            device=x.device,
        )
        return x + self.std * noise


def noisy_model(std: float = 0.3, num_classes: int = 3, seed: int = 0) -> nn.Sequential:
    """``AddNoise`` in front of :func:`linear_model`."""
    return nn.Sequential(AddNoise(std), *linear_model(num_classes, seed=seed)).eval()


class CoinFlip(Stochastic):
    """A randomized classifier whose every prediction is right with probability ``p``.

    The true class of an image is ``floor(K * pixel[0])``; each forward draws, per sample, whether
    the logits point at it or at the next class. Counts image evaluations.
    """

    def __init__(self, p: float = 0.5, num_classes: int = 3) -> None:
        super().__init__()
        self.p = p
        self.k = num_classes
        self.images = 0

    def label(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1)[:, 0] * self.k).long().clamp(0, self.k - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        self.images += n
        right = self.draw(
            lambda g: torch.rand(n, generator=g, device=x.device) < self.p, key=(n,), device=x.device
        )
        true = self.label(x)
        cls = torch.where(right, true, (true + 1) % self.k)
        return 5.0 * nn.functional.one_hot(cls, self.k).float() + 0 * x.flatten(1)[:, :1]


class Spy(Attack):
    """Leaves its inputs unchanged and logs what it was given and what it returned."""

    name = "spy"

    def __init__(self, threat, log: list) -> None:  # type: ignore[no-untyped-def]
        super().__init__(threat)
        self.log = log

    def run(self, model, x, y, **kw) -> AttackResult:  # type: ignore[no-untyped-def]
        res = super().run(model, x, y, **kw)
        self.log.append({"x": x.clone(), "y": y.clone(), "result": res})
        return res

    def _run(self, ctx: RunContext) -> torch.Tensor:
        return ctx.x.clone()
