"""Toy models and layers shared by the attack tests (test-only; not library code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from toys import NoiseInjection  # noqa: F401  (re-exported for the attack tests)

from robustlab.core.bpda import BPDALayer
from robustlab.data import load_dataset


class Quantize(BPDALayer):
    """Hard quantization to ``k`` levels per unit (a shattered-gradient toy defense);
    ``enabled=False`` makes it the identity. The smooth surrogate is ``x`` plus a sine ripple."""

    def __init__(self, k: float = 4.0, enabled: bool = True) -> None:
        super().__init__()
        self.k = k
        self.enabled = enabled

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return torch.round(x * self.k) / self.k

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return x - torch.sin(2 * torch.pi * self.k * x) / (2 * torch.pi * self.k)


class SmallCNN(nn.Module):
    """A CNN small enough to adversarially train in seconds on two CPU cores."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def fashion_mnist(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of a Fashion-MNIST split (a class-balanced deterministic subset) as [0, 1]
    floats and labels, through ``robustlab.data``."""
    ds = load_dataset("fashion-mnist", split, limit=n)
    images = ds.images[:n]
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return x.contiguous(), torch.as_tensor(ds.targets[:n]).long()


def train_fgsm_at(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    epochs: int,
    clean_epochs: int = 1,
) -> nn.Module:
    """Clean warm-up, then FGSM adversarial training with a random start (Wong et al., 2020,
    "Fast is better than free"), step 1.25 eps. Deterministic under a seeded global RNG."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    n = x.shape[0]
    for epoch in range(clean_epochs + epochs):
        perm = torch.randperm(n)
        for i in range(0, n, 128):
            xb, yb = x[perm[i : i + 128]], y[perm[i : i + 128]]
            if epoch >= clean_epochs:
                delta = (torch.rand_like(xb) * 2 - 1) * eps
                delta.requires_grad_(True)
                loss = F.cross_entropy(model((xb + delta).clamp(0, 1)), yb)
                (g,) = torch.autograd.grad(loss, delta)
                delta = (delta + 1.25 * eps * g.sign()).clamp(-eps, eps).detach()
                xb = (xb + delta).clamp(0, 1)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


class CountCalls(nn.Module):
    """The wrapped module, counting its forwards (model calls, not rows)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)  # type: ignore[no-any-return]
