"""The loss surface's geometry around the inputs, from the gradient-norm thesis
(``papers/gradient-norm-regularization``, Appendix A): the largest eigenvalue of the input
Hessian by power iteration on Hessian-vector products and Srinivas et al.'s statistics
(Table A.1, Fig. A.1), Rocamora et al.'s local linearity error (Eq. A.1-A.2, Table A.2) and the
loss, gradient norm and curvature along the attack direction (Fig. A.3).

The conventions are :mod:`~robustlab.analysis.input_gradients`'s; the Hessian of a sum of
per-sample losses is block diagonal, so one batched Hessian-vector product gives every
sample's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..attacks import PGD
from ..core import InputError, ThreatModel, check_int
from .input_gradients import Model, _check_batch, _mean, _per_sample_ce, _std, input_gradient

__all__ = [
    "CURVATURE_STABILITY",
    "GeometryStats",
    "attack_direction_profile",
    "geometry_stats",
    "hessian_top_eigenvalue",
    "local_linearity_error",
]

CURVATURE_STABILITY = 1e-12
"""Added to ``||grad||_2`` in the normalized curvature's denominator (Srinivas et al.)."""


def hessian_top_eigenvalue(
    model: Model, x: torch.Tensor, y: torch.Tensor, *, iters: int = 20, init: str = "random",
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
    check_int(iters, "power iteration iters", 1)
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
    model: Model, x: torch.Tensor, y: torch.Tensor, *, iters: int = 20, init: str = "random",
    generator: torch.Generator | None = None,
) -> GeometryStats:
    """Srinivas et al.'s geometry statistics (thesis Appendix A.1, Table A.1, Fig. A.1)."""
    grad_l2 = input_gradient(model, x, y).flatten(1).norm(dim=1)
    hessian = hessian_top_eigenvalue(model, x, y, iters=iters, init=init, generator=generator).abs()
    return GeometryStats(
        grad_l2.cpu(), hessian.cpu(), (hessian / (grad_l2 + CURVATURE_STABILITY)).cpu()
    )


def local_linearity_error(
    model: Model, x: torch.Tensor, y: torch.Tensor, eps: float, *, samples: int = 8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rocamora et al.'s local linearity error (thesis Appendix A.2, Eq. A.1-A.2), per sample:

        E_{alpha, eta1, eta2} |alpha L(x + eta1) + (1 - alpha) L(x + eta2) - L(x + alpha eta1 + (1 - alpha) eta2)|^2

    with ``alpha ~ U(0, 1)`` and ``eta1, eta2 ~ U(-eps, eps)`` per pixel, estimated from
    ``samples`` draws. The points are not clipped to [0, 1] (the definition's convex
    combination would not survive clipping).
    """
    _check_batch(x, y)
    check_int(samples, "local_linearity_error samples", 1)
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
    model: Model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, steps: int = 5,
    points: int = 9, hessian_iters: int = 5, generator: torch.Generator | None = None,
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
