"""Tiny models, data and spy attacks for the evaluate tests (fast on 2 CPU cores)."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks import Attack, RunContext
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

    fingerprint_exclude = ("calls", "images")  # instrumentation, not behaviour

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
    """Leaves its inputs unchanged (after one forward, so it is charged for what it saw) and
    logs what it was given."""

    name = "spy"

    def __init__(self, threat, log: list) -> None:  # type: ignore[no-untyped-def]
        super().__init__(threat)
        self.log = log

    def _run(self, ctx: RunContext) -> torch.Tensor:
        pred = ctx.model.predict(ctx.x).argmax(dim=1)
        self.log.append({"x": ctx.x.clone(), "y": ctx.y.clone(), "pred": pred})
        return ctx.x.clone()


class BinaryLinear(nn.Module):
    """``z = w . x + b`` on 1x4x4 images (``b`` centres ``z`` on uniform images), returning the single logit (class 1 when ``z > 0``);
    optional Gaussian input noise drawn from the global RNG on every forward (randomness the
    library is not told about)."""

    def __init__(self, seed: int = 0, noise: float = 0.0, features: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(features, generator=g)
        self.w = nn.Parameter(w, requires_grad=False)
        self.b = nn.Parameter(-0.5 * w.sum(), requires_grad=False)  # centred on [0, 1] images
        self.noise = noise
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        if self.noise:
            flat = flat + self.noise * torch.randn_like(flat)
        return flat @ self.w + self.b


def worst_case_margin(w: torch.Tensor, b: float, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The smallest signed margin ``(2y - 1) * z`` of a binary linear model over the L-inf ball
    of radius ``eps`` intersected with [0, 1], in closed form: each pixel moves against the
    class, as far as the ball and the box allow."""
    flat = x.flatten(1).double()
    s = (2 * y.double() - 1).unsqueeze(1)  # +1 for class 1
    direction = -s * torch.sign(w.double())  # lowers the margin
    step = torch.where(direction > 0, torch.clamp(1 - flat, max=eps), torch.clamp(flat, max=eps))
    worst = flat + direction * step
    return s.squeeze(1) * (worst @ w.double() + b)
