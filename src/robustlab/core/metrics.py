"""Plain accuracy over batches, shared by training and evaluation."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class predictions (argmax of the logits) for one batch."""
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    elif isinstance(out, dict):
        out = out["logits"]
    return out.argmax(dim=1)


@torch.no_grad()
def accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | str | None = None,
) -> float:
    """Top-1 accuracy of ``model`` over ``(x, y)`` batches, on the model's device by default.

    The caller chooses train/eval mode; this function does not change it.
    """
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    correct = total = 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        correct += int((predict(model, x) == y).sum())
        total += int(y.numel())
    if total == 0:
        raise ValueError("accuracy over an empty set of batches")
    return correct / total
