"""Fixtures of the attack tests: a small adversarially trained CNN on Fashion-MNIST."""

from __future__ import annotations

import time

import pytest
import torch
from attack_toys import SmallCNN, fashion_mnist, train_fgsm_at

from robustlab.core.randomness import seeded

EPS = 0.1


@pytest.fixture(scope="session")
def fmnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    return fashion_mnist("test", 1000)


@pytest.fixture(scope="session")
def robust_cnn() -> torch.nn.Module:
    """Width-8 CNN, FGSM-RS adversarially trained at eps=0.1 on 6,000 images (~3 s on 2 cores)."""
    x, y = fashion_mnist("train", 6000)
    t = time.perf_counter()
    with seeded(0):
        model = train_fgsm_at(SmallCNN(8), x, y, eps=EPS, epochs=3)
    for p in model.parameters():
        p.requires_grad_(False)
    print(f"robust_cnn trained in {time.perf_counter() - t:.1f}s")
    return model
