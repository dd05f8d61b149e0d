"""Input gradients and their statistics, from the gradient-norm thesis
(``papers/gradient-norm-regularization``): the L1 norm of ``grad_x CE`` split by PGD success
(Table 4.1), the correlation of saliency with oriented energy (Table 5.1, Fig. 5.1), how the
gradient's mass spreads over channels, and the grid of gradients of several models (Fig. 1.1).

Conventions (shared with :mod:`~robustlab.analysis.loss_geometry`): every gradient is taken with
respect to the [0, 1] pixels (the house threat space; the normalized-input gradient differs by
the per-channel std), of the SUM of per-sample losses, so each sample gets its own gradient. The
model should be in eval mode (a train-mode batch norm couples the samples); the functions do not
change its mode. Random draws take a ``torch.Generator``.

This module imports ``core`` and ``attacks`` only (the house plan).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..attacks import PGD
from ..core import InputError, ThreatModel
from ..core.filters import oriented_energy
from .figures import pyplot, save_figure

__all__ = [
    "ENERGY_FLOOR",
    "EdgeCorrelation",
    "GradientNormStats",
    "Model",
    "channel_gradient_distribution",
    "class_gradient",
    "edge_map",
    "gradient_image",
    "gradient_norm_stats",
    "input_gradient",
    "pearson_per_row",
    "plot_gradient_grid",
    "saliency_edge_correlation",
]

Model = Callable[[torch.Tensor], torch.Tensor]
"""A classifier on [0, 1] images: a module, or a function standing for one."""

ENERGY_FLOOR = 1e-3
"""Oriented energy is clamped at this value before its log (Fig. 5.1 caption)."""


def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise InputError(
            f"expected NCHW float images, got shape {tuple(x.shape)} and dtype {x.dtype}"
        )
    if y.shape != (x.shape[0],):
        raise InputError(
            f"expected one label per image, shape ({x.shape[0]},), got {tuple(y.shape)}"
        )


def _per_sample_ce(model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y, reduction="none")


def input_gradient(model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``grad_x CE(f(x_i), y_i)`` per sample (thesis Sec. 4.1), detached, ``x``'s shape."""
    _check_batch(x, y)
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(_per_sample_ce(model, xg, y).sum(), xg)
    return grad.detach()


def class_gradient(model: Model, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``grad_x f(x_i)_{c_i}``: the gradient of one logit per sample (thesis Sec. 5), detached."""
    _check_batch(x, classes)
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        selected = model(xg).gather(1, classes.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(selected, xg)
    return grad.detach()


def _mean(values: torch.Tensor) -> float | None:
    return float(values.double().mean()) if values.numel() else None


def _std(values: torch.Tensor) -> float | None:
    return float(values.double().std(unbiased=False)) if values.numel() else None


# ------------------------------------------------------------------------------- Table 4.1
@dataclass
class GradientNormStats:
    """Table 4.1 for one model: per-sample L1 norms of ``grad_x CE`` and the PGD verdicts.

    Attributes:
        l1: per-sample ``||grad_x CE||_1`` in [0, 1] pixel units.
        clean_correct: per-sample clean correctness.
        broken: per-sample PGD success (misclassified at the attack's point; a sample already
            misclassified counts as broken).
    """

    l1: torch.Tensor
    clean_correct: torch.Tensor
    broken: torch.Tensor

    def summary(self) -> dict[str, Any]:
        """The table's columns: accuracies, ``E[L1]``, ``E[L1 | attack fails]``,
        ``E[L1 | attack succeeds]`` (``None`` where the condition holds for no sample)."""
        return {
            "n": int(self.l1.numel()),
            "clean_accuracy": _mean(self.clean_correct.float()),
            "pgd_accuracy": _mean((~self.broken).float()),
            "mean_l1": _mean(self.l1),
            "std_l1": _std(self.l1),
            "mean_l1_attack_fails": _mean(self.l1[~self.broken]),
            "mean_l1_attack_succeeds": _mean(self.l1[self.broken]),
        }


def gradient_norm_stats(
    model: Model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, steps: int = 10,
    generator: torch.Generator | None = None,
) -> GradientNormStats:
    """L1 input-gradient norms of ``model`` split by PGD success (thesis Sec. 4.1, Table 4.1:
    ``E[L1]`` is far smaller for robust models, and smaller where PGD-10 fails).

    Args:
        model: a classifier on [0, 1] images, in eval mode.
        x, y: clean images and labels.
        threat: the attack's threat model.
        steps: PGD iterations (10 in the thesis).
        generator: PGD's random start.
    """
    grad = input_gradient(model, x, y)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    result = PGD(threat, steps=steps).run(model, x, y, generator=generator)
    return GradientNormStats(
        grad.flatten(1).abs().sum(1).cpu(), correct.cpu(), result.success.bool().cpu()
    )


# ------------------------------------------------------------------------------- Table 5.1
@dataclass
class EdgeCorrelation:
    """Table 5.1: per-image Pearson correlations with log oriented energy.

    Attributes:
        saliency: of log saliency (per-pixel max over channels of ``|grad_x f(x)_y|``).
        loss_gradient: of log ``|grad_x CE|`` (max over channels).
    """

    saliency: torch.Tensor
    loss_gradient: torch.Tensor

    def summary(self) -> dict[str, Any]:
        """Mean and standard deviation across images of both correlations."""
        return {
            "n": int(self.saliency.numel()),
            "saliency_mean": _mean(self.saliency),
            "saliency_std": _std(self.saliency),
            "loss_gradient_mean": _mean(self.loss_gradient),
            "loss_gradient_std": _std(self.loss_gradient),
        }


def pearson_per_row(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (NaN for a constant
    row)."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def edge_map(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Per-pixel oriented energy ``(N, H, W)``: :func:`~robustlab.core.filters.oriented_energy`
    summed over channels."""
    return oriented_energy(x.detach(), sigma).sum(1)


def saliency_edge_correlation(
    model: Model, x: torch.Tensor, y: torch.Tensor, *, sigma: float = 1.0,
    floor: float = ENERGY_FLOOR,
) -> EdgeCorrelation:
    """Log-log Pearson correlation of gradient maps with the image's oriented energy (thesis
    Sec. 5, Table 5.1, Fig. 5.1: about -0.45 for vulnerable models, +0.56 for robust ones).

    The saliency is the per-pixel maximum over channels of ``|grad_x f(x)_y|`` (the label's
    logit); the loss map the same for ``grad_x CE``. The energy is clamped at ``floor`` (the
    figure's 1e-3) and the gradient maps at the smallest positive float32 before the log.
    """
    energy = edge_map(x, sigma).clamp_min(floor).log()
    tiny = torch.finfo(torch.float32).tiny
    saliency = class_gradient(model, x, y).abs().amax(1).clamp_min(tiny).log()
    loss_map = input_gradient(model, x, y).abs().amax(1).clamp_min(tiny).log()
    return EdgeCorrelation(
        pearson_per_row(saliency, energy).cpu(), pearson_per_row(loss_map, energy).cpu()
    )


def channel_gradient_distribution(model: Model, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """How the L1 mass of ``grad_x CE`` spreads over input channels (the per-channel magnitudes
    behind Fig. 1.1's colour): per channel, the mean ``|grad|`` per pixel and the mean and std
    across images of that channel's share of the image's L1 norm."""
    grad = input_gradient(model, x, y).abs().double()
    per_channel = grad.sum((2, 3))  # (N, C)
    share = per_channel / per_channel.sum(1, keepdim=True).clamp_min(1e-300)
    return {
        "channels": int(grad.shape[1]),
        "mean_abs_per_pixel": grad.mean((0, 2, 3)).tolist(),
        "share_mean": share.mean(0).tolist(),
        "share_std": share.std(0, unbiased=False).tolist(),
    }


# ------------------------------------------------------------------------------- Fig. 1.1
def gradient_image(grad: torch.Tensor) -> torch.Tensor:
    """A gradient ``(C, H, W)`` as an ``(H, W, C)`` picture in [0, 1]: ``0.5 + 0.5 g / max|g|``
    (zero is mid-grey, the sign is kept), the usual way Fig. 1.1's gradients are shown."""
    scale = grad.abs().max().clamp_min(1e-30)
    return (0.5 + 0.5 * grad / scale).clamp(0, 1).permute(1, 2, 0).cpu()


def plot_gradient_grid(
    models: Mapping[str, Model], x: torch.Tensor, y: torch.Tensor, path: str | Path
) -> Path:
    """Write a PNG grid of loss input gradients (thesis Fig. 1.1): one row per image, the image
    first, then one column per model (robust models' gradients look like the image, vulnerable
    models' like noise).

    Raises:
        InputError: with no model or no image.
    """
    if not models or x.shape[0] == 0:
        raise InputError("plot_gradient_grid needs at least one model and one image")
    grads = {name: input_gradient(model, x, y) for name, model in models.items()}
    plt = pyplot()
    rows, cols = x.shape[0], len(models) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    gray = x.shape[1] == 1
    for i in range(rows):
        pictures = [("image", x[i].detach().permute(1, 2, 0).cpu())]
        pictures += [(name, gradient_image(g[i])) for name, g in grads.items()]
        for j, (title, picture) in enumerate(pictures):
            ax = axes[i][j]
            ax.imshow(
                picture.squeeze(-1).numpy() if gray else picture.numpy(),
                cmap="gray" if gray else None,
                vmin=0,
                vmax=1,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path, 100)
