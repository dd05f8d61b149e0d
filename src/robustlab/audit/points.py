"""Points of the binarization test (:mod:`.binarization`): uniform in a ball, and on its surface at an
exact distance after clipping to [0, 1] (L-inf: in the box or at its corners; L2: on the sphere).
"""

from __future__ import annotations

import torch

from ..core.geometry import enforce, linf_bounds, lp_norm, random_point
from ..core.types import ThreatModel


def _rand(gen: torch.Generator, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=like.dtype).to(like.device)


def _randn(gen: torch.Generator, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=like.dtype).to(like.device)


def uniform_in_ball(x: torch.Tensor, norm: str, radius: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` points uniform in the volume of the ``radius`` ball around ``x`` (``(1, ...)``),
    clipped to [0, 1] (clipping moves each coordinate toward ``x``, so the points stay in the
    ball). L-inf is PGD's start (:func:`robustlab.core.geometry.random_point`); L2 draws the radius
    as ``r * u^(1/d)``, uniform in volume as the reference's inner points are, where PGD's start
    is uniform in radius."""
    shape = (n, *x.shape[1:])
    if norm == "linf":
        return random_point(x.expand(shape), "linf", radius, gen)
    d = _randn(gen, shape, x)
    d = d / lp_norm(d, "l2").clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    dims = x[0].numel()
    r = radius * _rand(gen, (n,), x) ** (1.0 / dims)
    return (x + d * r.view(-1, *([1] * (x.dim() - 1)))).clamp(0.0, 1.0)


def _linf_surface(x: torch.Tensor, d: torch.Tensor, radius: float) -> torch.Tensor:
    """Scale each direction ``d`` so that the point's L-inf distance from ``x`` after clipping
    to [0, 1] is ``radius``: the largest coordinate among those that can move ``radius`` in
    their direction sets the scale (coordinates that cannot are clipped short). A direction
    with no such coordinate turns every coordinate toward its roomier side first; if even then
    none can move ``radius`` (only beyond eps 0.5), the point is the farthest corner."""
    flat_x = x.flatten(1).double()
    flat_d = d.flatten(1).double()
    room_up, room_down = 1 - flat_x, flat_x
    room = torch.where(flat_d > 0, room_up, room_down)
    feasible = (room >= radius) & (flat_d != 0)
    stuck = ~feasible.any(dim=1)
    if bool(stuck.any()):
        toward = torch.where(room_up >= room_down, 1.0, -1.0).expand_as(flat_d)
        flat_d = torch.where(stuck.unsqueeze(1), flat_d.abs().clamp_min(1e-12) * toward, flat_d)
        room = torch.where(flat_d > 0, room_up, room_down)
        feasible = (room >= radius) & (flat_d != 0)
    biggest = torch.where(feasible, flat_d.abs(), torch.zeros_like(flat_d)).amax(dim=1)
    scale = torch.where(biggest > 0, radius / biggest.clamp_min(1e-300), torch.full_like(biggest, 1e6))
    points = (flat_x + scale.unsqueeze(1) * flat_d).clamp(0.0, 1.0)
    return points.to(x.dtype).view(d.shape)


def _l2_surface(x: torch.Tensor, d: torch.Tensor, radius: float) -> torch.Tensor:
    """Scale each unit direction ``d`` so that the point's L2 distance from ``x`` after clipping
    to [0, 1] is ``radius`` (bisection on the scale: the clipped distance grows monotonically
    with it), or as far as the cube allows when it cannot reach ``radius``."""
    flat_x = x.flatten(1).double()
    flat_d = d.flatten(1).double()
    flat_d = flat_d / flat_d.norm(dim=1, keepdim=True).clamp_min(1e-300)

    def dist(s: torch.Tensor) -> torch.Tensor:
        return ((flat_x + s.unsqueeze(1) * flat_d).clamp(0.0, 1.0) - flat_x).norm(dim=1)

    lo = torch.zeros(flat_d.shape[0], dtype=torch.float64)
    hi = torch.full_like(lo, radius)
    for _ in range(64):  # grow the bracket until it holds the radius (or the cube's corner)
        short = dist(hi) < radius
        if not bool(short.any()):
            break
        hi = torch.where(short, 2 * hi, hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = dist(mid) <= radius
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    points = (flat_x + lo.unsqueeze(1) * flat_d).clamp(0.0, 1.0)
    return points.to(x.dtype).view(d.shape)


def on_surface(
    x: torch.Tensor, norm: str, radius: float, n: int, gen: torch.Generator, *, corners: bool = False
) -> torch.Tensor:
    """``n`` points at distance ``radius`` from ``x`` after clipping to [0, 1], never beyond it
    as computed in floating point."""
    shape = (n, *x.shape[1:])
    if n == 0:
        return x.new_zeros(shape)
    ball = ThreatModel(norm, radius)  # type: ignore[arg-type]
    if norm == "linf":
        if corners:
            signs = torch.randint(0, 2, shape, generator=gen).to(device=x.device, dtype=x.dtype) * 2 - 1
            points = (x + signs * radius).clamp(0.0, 1.0)
        else:
            points = _linf_surface(x.cpu(), _rand(gen, shape, x.cpu()) * 2 - 1, radius).to(x.device)
        lo, hi = linf_bounds(x.expand(shape), radius)
        return torch.clamp(points, lo, hi)
    points = _l2_surface(x.cpu(), _randn(gen, shape, x.cpu()), radius).to(x.device)
    return enforce(x.expand(shape), points, ball)
