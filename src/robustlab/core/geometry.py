"""Threat-model geometry: norms, random points, exact projections onto the eps-ball in [0, 1].

Everything an attack needs to stay inside its threat model, exact in floating point
(:func:`enforce`: the computed norm of ``x_adv - x`` is at most ``eps`` with no rounding slack).
"""

from __future__ import annotations

import torch

from .types import ThreatModel

__all__ = [
    "Ball",
    "batch_view",
    "enforce",
    "in_ball",
    "linf_bounds",
    "lp_norm",
    "project",
    "random_point",
]


def lp_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample L-inf or L2 norm of a batch ``(N, ...)``."""
    flat = v.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return flat.norm(dim=1)


def batch_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector ``(N,)`` shaped to broadcast over a batch ``like`` of shape ``(N, ...)``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def random_point(
    x: torch.Tensor,
    norm: str,
    radius: float | torch.Tensor,
    generator: torch.Generator | None,
    *,
    on_sphere: bool = False,
) -> torch.Tensor:
    """A random point around ``x`` at most ``radius`` away (per sample when a tensor), in [0, 1].

    ``on_sphere=False`` is PGD's start (Madry et al., 2018, Sec. 5): uniform in the L-inf ball,
    or a uniform random direction at a uniform fraction of the radius for L2.
    ``on_sphere=True`` is APGD's and FAB's start (Croce & Hein, 2020, reference code): a uniform
    (L-inf) or Gaussian (L2) direction scaled to the sphere of that radius in the norm.
    Draws on ``generator``'s device and moves the draws to ``x``'s.
    """
    dev = generator.device if generator is not None else x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)

    r = radius if isinstance(radius, torch.Tensor) else torch.full(
        (x.shape[0],), float(radius), device=x.device, dtype=x.dtype
    )
    if norm == "linf":
        d = 2 * rand(*x.shape) - 1
        if on_sphere:
            d = d / batch_view(lp_norm(d, "linf").clamp_min(1e-12), d)
        return (x + d * batch_view(r, d)).clamp(0.0, 1.0)
    d = randn(*x.shape)
    d = d / batch_view(lp_norm(d, "l2").clamp_min(1e-12), d)
    if not on_sphere:
        r = r * rand(x.shape[0])
    return (x + d * batch_view(r, d)).clamp(0.0, 1.0)


def project(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project ``x_adv`` onto the ``threat`` ball around ``x`` and into [0, 1]."""
    delta = x_adv - x
    if threat.norm == "linf":
        delta = delta.clamp(-threat.eps, threat.eps)
    else:
        norms = lp_norm(delta, "l2")
        factor = (threat.eps / norms.clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * batch_view(factor, delta)
    return (x + delta).clamp(0.0, 1.0)


def linf_bounds(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel bounds ``lo <= x_adv <= hi`` of the L-inf ball intersected with [0, 1], made
    exact in floating point: ``hi - x <= eps`` and ``x - lo <= eps`` as computed.

    Rounding is monotone, so every ``v`` in ``[lo, hi]`` then has ``|v - x| <= eps`` as computed
    too, and projecting is a single ``torch.clamp(v, lo, hi)``.
    """
    lo = (x - eps).clamp_min(0.0)
    hi = (x + eps).clamp_max(1.0)
    for _ in range(64):
        bad_hi = (hi - x) > eps
        bad_lo = (x - lo) > eps
        if not bool(bad_hi.any() or bad_lo.any()):
            break
        hi = torch.where(bad_hi, torch.nextafter(hi, x), hi)
        lo = torch.where(bad_lo, torch.nextafter(lo, x), lo)
    return lo, hi


def enforce(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """:func:`project` made exact: the computed ``lp_norm(x_adv - x)`` is ``<= eps`` with no
    rounding slack.

    L-inf: a clamp to :func:`linf_bounds`. L2: rows that overshoot shrink by a margin that grows
    4x per round (rounding in ``x + delta`` can undo a tiny shrink); a row that still does not
    fit after 16 rounds (never seen) falls back to ``x``.
    """
    if threat.norm == "linf":
        lo, hi = linf_bounds(x, threat.eps)
        return torch.clamp(x_adv, lo, hi)
    x_adv = project(x, x_adv, threat)
    tiny = 4 * torch.finfo(x.dtype).eps
    for it in range(16):
        delta = x_adv - x
        norms = lp_norm(delta, "l2")
        over = norms > threat.eps
        if not bool(over.any()):
            return x_adv
        shrink = (threat.eps / norms.clamp_min(1e-30)) * (1 - tiny * 4**it)
        factor = torch.where(over, shrink, torch.ones_like(shrink))
        x_adv = (x + delta * batch_view(factor, delta)).clamp(0.0, 1.0)
    bad = lp_norm(x_adv - x, threat.norm) > threat.eps
    return torch.where(batch_view(bad, x), x, x_adv)


class Ball:
    """The feasible set of a threat model around a batch ``x``: the eps-ball within [0, 1].

    Precomputes the L-inf bounds once, so an iterative attack projects with one clamp per step;
    index it (``ball[keep]``) to follow a shrinking batch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        threat: ThreatModel,
        bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.x = x
        self.threat = threat
        self.bounds = bounds
        if threat.norm == "linf" and bounds is None:
            self.bounds = linf_bounds(x, threat.eps)

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """The exact projection of ``v`` (see :func:`enforce`)."""
        if self.bounds is not None:
            return torch.clamp(v, self.bounds[0], self.bounds[1])
        return enforce(self.x, v, self.threat)

    def __getitem__(self, idx: torch.Tensor) -> Ball:
        bounds = (self.bounds[0][idx], self.bounds[1][idx]) if self.bounds is not None else None
        return Ball(self.x[idx], self.threat, bounds)


def in_ball(
    x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel, tol: float = 0.0
) -> torch.Tensor:
    """Per-sample check that ``x_adv`` is in [0, 1] and within ``eps + tol`` of ``x``."""
    dist = lp_norm(x_adv - x, threat.norm)
    flat = x_adv.flatten(1)
    inside = dist <= threat.eps + tol
    if flat.shape[1]:
        inside &= (flat.amin(dim=1) >= 0) & (flat.amax(dim=1) <= 1)
    return inside
