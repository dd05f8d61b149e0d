"""Input-gradient and loss-geometry analyses of the gradient-norm thesis
(``papers/gradient-norm-regularization``).

===================================== =============================================== ==========
function                              what                                            thesis
===================================== =============================================== ==========
:func:`gradient_norm_stats`           L1 norm of grad_x CE, overall and split by      Table 4.1
                                      PGD-10 failure / success
:func:`saliency_edge_correlation`     Pearson correlation of log saliency (and log    Table 5.1,
                                      abs loss gradient) with log oriented energy     Fig. 5.1
:func:`channel_gradient_distribution` share of the gradient's L1 mass per channel     (Fig. 1.1)
:func:`hessian_top_eigenvalue`        largest-magnitude eigenvalue of the input       Table A.1
                                      Hessian by power iteration on Hessian-vector
                                      products
:func:`geometry_stats`                ||grad||_2, ||Hessian||_2 and normalized        Table A.1,
                                      curvature (Srinivas et al.)                     Fig. A.1
:func:`local_linearity_error`         Eq. A.1 (Rocamora et al.)                       Table A.2
:func:`attack_direction_profile`      loss, L1 gradient norm and curvature along      Fig. A.3
                                      x + t (PGD-5(x) - x)
:func:`robust_accuracy_curve`         PGD robust accuracy vs eps                      Fig. 4.1
:func:`plot_gradient_grid`            PNG grid of input gradients of several models   Fig. 1.1
:func:`analyze_gradients`             all of the above for one model: JSON + figures  (CLI)
===================================== =============================================== ==========

Conventions: every gradient is taken with respect to the [0, 1] pixels (the house threat space;
the normalized-input gradient differs by the per-channel std), of the SUM of per-sample losses, so
each sample gets its own gradient (the Hessian of a sum of per-sample losses is block diagonal,
so one batched Hessian-vector product gives every sample's). The model should be in eval mode (a
train-mode batch norm couples the samples); the functions do not change its mode. Random draws
take a ``torch.Generator``.

This module imports ``core`` and ``attacks`` only (the house plan).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import PGD
from ..core import InputError, ThreatModel
from ..core.filters import oriented_energy

Model = Callable[[torch.Tensor], torch.Tensor]

ENERGY_FLOOR = 1e-3
"""Oriented energy is clamped at this value before its log (Fig. 5.1 caption)."""

CURVATURE_STABILITY = 1e-12
"""Added to ``||grad||_2`` in the normalized curvature's denominator (Srinivas et al.)."""


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
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int = 10,
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
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sigma: float = 1.0,
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


# ------------------------------------------------------------------------------- Appendix A
def hessian_top_eigenvalue(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    iters: int = 20,
    init: str = "random",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The largest-magnitude eigenvalue of each sample's input Hessian ``grad_x^2 CE`` by power
    iteration on Hessian-vector products (thesis Appendix A.1; its absolute value is the
    spectral norm ``||grad^2 L||_2`` of Table A.1).

    The input gradient is built once with ``create_graph=True``; each iteration is one
    double-backward ``H v = grad_x <grad_x L, v>`` for the whole batch. The value returned is
    the Rayleigh quotient ``<v, H v>`` of the last unit iterate (signed).

    Args:
        model, x, y: as :func:`input_gradient`.
        iters: power iterations (Fig. A.3 uses a few, started from the gradient).
        init: ``"random"`` (a normal draw from ``generator``) or ``"gradient"`` (the input
            gradient itself, as Fig. A.3 does to save iterations).
        generator: the random start.
    """
    _check_batch(x, y)
    if iters < 1:
        raise InputError(f"power iteration needs iters >= 1, got {iters}")
    if init not in ("random", "gradient"):
        raise InputError(f"init must be 'random' or 'gradient', got {init!r}")
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(_per_sample_ce(model, xg, y).sum(), xg, create_graph=True)
        if init == "gradient":
            v = grad.detach().clone()
        else:
            device = generator.device if generator is not None else x.device
            v = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
        rayleigh = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for _ in range(iters):
            v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
            (hv,) = torch.autograd.grad((grad * v).sum(), xg, retain_graph=True)
            rayleigh = (v * hv).flatten(1).sum(1)
            v = hv.detach()
    return rayleigh.detach()


@dataclass
class GeometryStats:
    """Table A.1 per sample: ``||grad_x L||_2``, ``||grad_x^2 L||_2`` and the normalized curvature
    ``C_L = ||grad^2 L||_2 / (||grad L||_2 + CURVATURE_STABILITY)`` (Srinivas et al.)."""

    grad_l2: torch.Tensor
    hessian_norm: torch.Tensor
    curvature: torch.Tensor

    def summary(self) -> dict[str, Any]:
        """Mean and standard deviation of each statistic, and of its base-10 logarithm
        (Fig. A.1 plots the curvature on a log axis)."""
        out: dict[str, Any] = {"n": int(self.curvature.numel())}
        for key, values in asdict(self).items():
            out[f"{key}_mean"] = _mean(values)
            out[f"{key}_std"] = _std(values)
            out[f"log10_{key}_mean"] = _mean(values.double().clamp_min(1e-300).log10())
        return out


def geometry_stats(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    iters: int = 20,
    init: str = "random",
    generator: torch.Generator | None = None,
) -> GeometryStats:
    """Srinivas et al.'s geometry statistics (thesis Appendix A.1, Table A.1, Fig. A.1)."""
    grad_l2 = input_gradient(model, x, y).flatten(1).norm(dim=1)
    hessian = hessian_top_eigenvalue(model, x, y, iters=iters, init=init, generator=generator).abs()
    return GeometryStats(
        grad_l2.cpu(), hessian.cpu(), (hessian / (grad_l2 + CURVATURE_STABILITY)).cpu()
    )


def local_linearity_error(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    samples: int = 8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rocamora et al.'s local linearity error (thesis Appendix A.2, Eq. A.1-A.2), per sample:

        E_{alpha, eta1, eta2} |alpha L(x + eta1) + (1 - alpha) L(x + eta2) - L(x + alpha eta1 + (1 - alpha) eta2)|^2

    with ``alpha ~ U(0, 1)`` and ``eta1, eta2 ~ U(-eps, eps)`` per pixel, estimated from
    ``samples`` draws. The points are not clipped to [0, 1] (the definition's convex
    combination would not survive clipping).
    """
    _check_batch(x, y)
    if samples < 1:
        raise InputError(f"local_linearity_error needs samples >= 1, got {samples}")
    device = generator.device if generator is not None else x.device
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    view = (-1,) + (1,) * (x.dim() - 1)
    with torch.no_grad():
        for _ in range(samples):
            eta1 = (
                torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype) * 2 - 1
            ).to(x.device) * eps
            eta2 = (
                torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype) * 2 - 1
            ).to(x.device) * eps
            alpha = torch.rand(x.shape[0], generator=generator, device=device, dtype=x.dtype).to(
                x.device
            )
            a = alpha.view(view)
            mixed = (
                alpha * _per_sample_ce(model, x + eta1, y)
                + (1 - alpha) * _per_sample_ce(model, x + eta2, y)
                - _per_sample_ce(model, x + a * eta1 + (1 - a) * eta2, y)
            )
            total += mixed.double() ** 2
    return (total / samples).cpu()


def attack_direction_profile(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int = 5,
    points: int = 9,
    hessian_iters: int = 5,
    generator: torch.Generator | None = None,
) -> dict[str, list[float]]:
    """Loss, L1 gradient norm and normalized curvature along the attack direction (thesis
    Appendix A.3, Eq. A.3, Fig. A.3): ``x(t) = x + t (PGD-steps(x) - x)`` for ``t`` on
    ``points`` values in [0, 1] (the radius ``t * eps``), each averaged over the batch. The
    curvature's power iteration starts from the gradient, as in Fig. A.3.

    Returns:
        ``{"eps": [...], "loss": [...], "l1": [...], "curvature": [...]}``.
    """
    if points < 2:
        raise InputError(f"attack_direction_profile needs points >= 2, got {points}")
    x_adv = PGD(threat, steps=steps).run(model, x, y, generator=generator, full_budget=True).x_adv
    direction = x_adv - x
    out: dict[str, list[float]] = {"eps": [], "loss": [], "l1": [], "curvature": []}
    for t in torch.linspace(0, 1, points).tolist():
        xt = x + t * direction
        with torch.no_grad():
            loss = _per_sample_ce(model, xt, y)
        grad = input_gradient(model, xt, y)
        geometry = geometry_stats(
            model, xt, y, iters=hessian_iters, init="gradient", generator=generator
        )
        out["eps"].append(t * threat.eps)
        out["loss"].append(float(loss.double().mean()))
        out["l1"].append(float(grad.flatten(1).abs().sum(1).double().mean()))
        out["curvature"].append(float(geometry.curvature.double().mean()))
    return out


def robust_accuracy_curve(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_values: Sequence[float],
    *,
    norm: str = "linf",
    steps: int = 100,
    generator: torch.Generator | None = None,
) -> list[dict[str, float]]:
    """PGD robust accuracy for each radius (thesis Sec. 4.2, Fig. 4.1: PGD-100, eps 0 to 16/255);
    ``eps = 0`` is clean accuracy."""
    _check_batch(x, y)
    curve = []
    for eps in eps_values:
        if eps == 0:
            with torch.no_grad():
                acc = float((model(x).argmax(1) == y).double().mean())
        else:
            threat = ThreatModel(norm, float(eps))  # type: ignore[arg-type]
            result = PGD(threat, steps=steps).run(model, x, y, generator=generator)
            acc = float((~result.success.bool()).double().mean())
        curve.append({"eps": float(eps), "accuracy": acc})
    return curve


# ------------------------------------------------------------------------------- figures
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    plt = _pyplot()
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
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _plot_lines(
    path: Path,
    x_values: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    title: str,
) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 2.8), squeeze=False)
    for ax, (label, values) in zip(axes[0], series.items(), strict=True):
        ax.plot(list(x_values), list(values), marker="o")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_histogram(path: Path, values: torch.Tensor, xlabel: str, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    finite = values.double()[torch.isfinite(values.double()) & (values.double() > 0)]
    if finite.numel():
        ax.hist(finite.log10().numpy(), bins=min(30, max(5, finite.numel() // 2)))
    ax.set_xlabel(f"log10 {xlabel}")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------- all at once
def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become ``None``, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def analyze_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    out_dir: str | Path,
    *,
    threat: ThreatModel,
    eps_values: Sequence[float] | None = None,
    pgd_steps: int = 10,
    curve_steps: int = 20,
    hessian_iters: int = 10,
    lle_samples: int = 4,
    profile_points: int = 5,
    grid_images: int = 6,
    batch_size: int = 100,
    generator: torch.Generator | None = None,
    name: str = "model",
) -> dict[str, Any]:
    """Every analysis of this module on one model: writes ``OUT/gradients.json`` (the numbers)
    and the figures ``gradient_grid.png`` (Fig. 1.1), ``robust_accuracy_vs_eps.png`` (Fig. 4.1),
    ``attack_direction.png`` (Fig. A.3) and ``curvature_hist.png`` (Fig. A.1).

    Per-sample statistics run in batches of ``batch_size``; the curve and the attack-direction
    profile on the first batch. ``eps_values`` default to ``[0, eps/2, eps, 2 eps, 4 eps]``.

    Returns:
        The JSON document (also written), with the figures' paths under ``"figures"``.
    """
    _check_batch(x, y)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eps = threat.eps
    eps_values = (
        list(eps_values) if eps_values is not None else [0.0, eps / 2, eps, 2 * eps, 4 * eps]
    )
    norms: list[GradientNormStats] = []
    edges: list[EdgeCorrelation] = []
    geometry: list[GeometryStats] = []
    lle: list[torch.Tensor] = []
    channel_shares: list[dict[str, Any]] = []
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        norms.append(
            gradient_norm_stats(model, xb, yb, threat, steps=pgd_steps, generator=generator)
        )
        edges.append(saliency_edge_correlation(model, xb, yb))
        geometry.append(geometry_stats(model, xb, yb, iters=hessian_iters, generator=generator))
        lle.append(
            local_linearity_error(model, xb, yb, eps, samples=lle_samples, generator=generator)
        )
        channel_shares.append(channel_gradient_distribution(model, xb, yb))
    norm_all = GradientNormStats(
        *(torch.cat([getattr(s, k) for s in norms]) for k in ("l1", "clean_correct", "broken"))
    )
    edge_all = EdgeCorrelation(
        *(torch.cat([getattr(s, k) for s in edges]) for k in ("saliency", "loss_gradient"))
    )
    geo_all = GeometryStats(
        *(
            torch.cat([getattr(s, k) for s in geometry])
            for k in ("grad_l2", "hessian_norm", "curvature")
        )
    )
    lle_all = torch.cat(lle)
    first_x, first_y = x[:batch_size], y[:batch_size]
    curve = robust_accuracy_curve(
        model,
        first_x,
        first_y,
        eps_values,
        norm=threat.norm,
        steps=curve_steps,
        generator=generator,
    )
    profile = attack_direction_profile(
        model,
        first_x,
        first_y,
        threat,
        points=profile_points,
        hessian_iters=max(1, hessian_iters // 2),
        generator=generator,
    )
    weights = torch.tensor(
        [float(min(batch_size, x.shape[0] - s)) for s in range(0, x.shape[0], batch_size)]
    )
    share = (torch.tensor([c["share_mean"] for c in channel_shares]) * weights[:, None]).sum(
        0
    ) / weights.sum()
    figures = {
        "gradient_grid": str(
            plot_gradient_grid(
                {name: model}, x[:grid_images], y[:grid_images], out / "gradient_grid.png"
            )
        ),
        "robust_accuracy_vs_eps": str(
            _plot_lines(
                out / "robust_accuracy_vs_eps.png",
                [c["eps"] for c in curve],
                {"robust accuracy": [c["accuracy"] for c in curve]},
                "eps",
                f"PGD-{curve_steps} ({threat.norm})",
            )
        ),
        "attack_direction": str(
            _plot_lines(
                out / "attack_direction.png",
                profile["eps"],
                {
                    "loss": profile["loss"],
                    "L1 grad norm": profile["l1"],
                    "normalized curvature": profile["curvature"],
                },
                "eps along the PGD-5 direction",
                "Fig. A.3",
            )
        ),
        "curvature_hist": str(
            _plot_histogram(
                out / "curvature_hist.png", geo_all.curvature, "normalized curvature", "Fig. A.1"
            )
        ),
    }
    document = _finite(
        {
            "model": name,
            "n": int(x.shape[0]),
            "threat": {"norm": threat.norm, "eps": eps},
            "gradient_norm": norm_all.summary(),
            "edge_correlation": edge_all.summary(),
            "channel_share": {
                "channels": channel_shares[0]["channels"],
                "share_mean": share.tolist(),
            },
            "geometry": geo_all.summary(),
            "local_linearity_error": {
                "mean": _mean(lle_all),
                "std": _std(lle_all),
                "log10_mean": _mean((lle_all + 1e-17).log10()),
                "log10_std": _std((lle_all + 1e-17).log10()),
            },
            "robust_accuracy_curve": curve,
            "attack_direction": profile,
            "figures": figures,
        }
    )
    (out / "gradients.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


__all__ = [
    "CURVATURE_STABILITY",
    "ENERGY_FLOOR",
    "EdgeCorrelation",
    "GeometryStats",
    "GradientNormStats",
    "analyze_gradients",
    "attack_direction_profile",
    "channel_gradient_distribution",
    "class_gradient",
    "edge_map",
    "geometry_stats",
    "gradient_image",
    "gradient_norm_stats",
    "hessian_top_eigenvalue",
    "input_gradient",
    "local_linearity_error",
    "pearson_per_row",
    "plot_gradient_grid",
    "robust_accuracy_curve",
    "saliency_edge_correlation",
]
