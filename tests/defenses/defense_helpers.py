"""Checks shared by the defense tests (test-only; not library code)."""

from __future__ import annotations

import torch
from torch import nn

import robustlab
from robustlab.core.randomness import seed_stochastic


def reload_and_compare_draws(model: nn.Module, path, x_shape: tuple[int, ...], **save_options) -> nn.Module:  # type: ignore[no-untyped-def]
    """Save ``model`` and load it back: the recipe is the same, both draw alike once their random
    layers are seeded alike (on a batch of ``x_shape`` drawn after the load), and both
    are random. Returns the rebuilt model."""
    robustlab.save(model, path, **save_options)
    again = robustlab.load(path)
    assert again.robustlab_recipe == model.robustlab_recipe
    x = torch.rand(*x_shape)
    seed_stochastic(model, 5)
    seed_stochastic(again, 5)
    with torch.no_grad():
        a, b = model(x), again(x)
        assert torch.equal(a, b)
        assert not torch.equal(model(x), a) and not torch.equal(again(x), b)  # and both are random
    return again
