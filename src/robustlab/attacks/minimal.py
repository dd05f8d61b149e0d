"""Minimal-perturbation gradient attacks: DeepFool and Carlini-Wagner L2.

Both search for the smallest adversarial perturbation; inside a threat model the base class
projects their result onto the eps-ball, so success means "adversarial within eps".
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.bpda import BPDAMode
from ..core.checks import check_int, check_number
from ..core.types import ThreatModel
from .base import GradientEstimator, RunContext, batch_view, lp_norm
from .gradient import GradientAttack, Tracker
from .registry import register_attack

__all__ = ["CWL2", "DeepFool"]


def _pick(z: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return z.gather(1, cls.unsqueeze(1)).squeeze(1)


def _class_gap(cls: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Objective ``z_cls - z_y``."""
    return lambda z: _pick(z, cls) - _pick(z, y)


@register_attack("deepfool", "Moosavi-Dezfooli et al. 2016")
class DeepFool(GradientAttack):
    """DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, 2016, "DeepFool: a simple and accurate
    method to fool deep neural networks", CVPR, Alg. 2; the Lp version of Sec. 3.3).

    At each step it linearizes the ``candidates - 1`` boundaries between the true class and the
    top classes of the clean logits, moves to the closest linearized boundary (distance measured
    in the dual norm of the threat norm), and accumulates the steps; the total is applied with an
    ``overshoot``. A sample stops once misclassified.

    Args:
        threat: L-inf or L2.
        steps: maximum iterations.
        overshoot: relative overshoot of the accumulated step.
        candidates: number of top clean classes considered (the true class included).
        grad, bpda: see :class:`~robustlab.attacks.gradient.GradientAttack` (one estimator
            call per candidate class and step).
    """

    name = "deepfool"

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 50,
        *,
        overshoot: float = 0.02,
        candidates: int = 10,
        grad: GradientEstimator | None = None,
        bpda: BPDAMode | None = None,
    ) -> None:
        super().__init__(threat, grad=grad, bpda=bpda)
        check_int(steps, "DeepFool steps", 1)
        check_int(candidates, "DeepFool candidates", 2)
        self.steps = int(steps)
        self.overshoot = float(overshoot)
        self.candidates = int(candidates)

    def _run(self, ctx: RunContext) -> torch.Tensor:
        fm, x, y = ctx.model, ctx.x, ctx.y
        track = Tracker(ctx)
        clean = ctx.clean_logits()
        k = min(self.candidates, clean.shape[1])
        others = clean.scatter(1, y.unsqueeze(1), float("-inf")).topk(k - 1, dim=1).indices
        confirmed = ctx.confirmed(ctx.clean_logits(), y, None)
        track.adversarial(confirmed.nonzero().squeeze(1), x[confirmed])
        active = (~confirmed).nonzero().squeeze(1)
        r_tot = torch.zeros_like(x)
        x_cur = x.clone()
        dual = "l1" if self.threat.norm == "linf" else "l2"
        for _ in range(self.steps):
            if active.numel() == 0:
                break
            xa, ya = x_cur[active], y[active]
            gaps, grads, est = [], [], None
            for j in range(others.shape[1]):
                cls = others[active, j]
                est = self._grad(fm, xa, _class_gap(cls, ya))
                gaps.append(est.loss)
                grads.append(est.grad)
            assert est is not None
            confirmed = ctx.confirmed(est.logits, ya, None)
            track.adversarial(active[confirmed], xa[confirmed])
            f = torch.stack(gaps, dim=1)  # (n, k-1)
            w = torch.stack(grads, dim=1)  # (n, k-1, ...)
            wf = w.flatten(2)
            wn = wf.abs().sum(dim=2) if dual == "l1" else wf.norm(dim=2)
            dist = f.abs() / wn.clamp_min(1e-12)
            best = dist.argmin(dim=1)
            ar = torch.arange(active.numel(), device=x.device)
            wl, fl, nl = w[ar, best], f[ar, best], wn[ar, best].clamp_min(1e-12)
            if dual == "l1":
                r = batch_view((fl.abs() + 1e-4) / nl, wl) * wl.sign()
            else:
                r = batch_view((fl.abs() + 1e-4) / nl**2, wl) * wl
            keep = ~confirmed
            r_tot[active[keep]] += r[keep]
            active = active[keep]
            x_cur[active] = (x[active] + (1 + self.overshoot) * r_tot[active]).clamp(0.0, 1.0)
        if active.numel():
            if not ctx.stochastic:
                confirmed = ctx.confirmed(fm.predict(x_cur[active]), y[active], None)
                track.adversarial(active[confirmed], x_cur[active][confirmed])
            track.fallback(active, x_cur[active])
        return track.x


@register_attack("cw-l2", "Carlini & Wagner 2017")
class CWL2(GradientAttack):
    """Carlini-Wagner L2 attack (Carlini & Wagner, 2017, "Towards Evaluating the Robustness of
    Neural Networks", IEEE S&P, Sec. VI.A).

    Minimizes ``||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j, -kappa)`` (targeted:
    ``max(max_{j != t} z_j - z_t, -kappa)``) over ``x' = (tanh(w) + 1) / 2`` with Adam, and
    binary-searches the constant ``c`` per sample: down after a success, up (x10 until an upper
    bound is known) after a failure. Keeps the smallest adversarial perturbation found.

    Args:
        threat: L2 (the result is projected onto the eps-ball).
        steps: Adam iterations per value of ``c``.
        c: initial constant.
        search_steps: binary-search steps over ``c``.
        kappa: confidence margin.
        lr: Adam learning rate.
        grad, bpda: see :class:`~robustlab.attacks.gradient.GradientAttack`.
    """

    name = "cw-l2"
    norms = ("l2",)
    supports_targets = True

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 100,
        *,
        c: float = 1.0,
        search_steps: int = 5,
        kappa: float = 0.0,
        lr: float = 0.01,
        grad: GradientEstimator | None = None,
        bpda: BPDAMode | None = None,
    ) -> None:
        super().__init__(threat, loss="cw", grad=grad, bpda=bpda)
        check_int(steps, "CW-L2 steps", 1)
        check_int(search_steps, "CW-L2 search_steps", 1)
        check_number(c, "CW-L2 c", 0, low_open=True)
        self.steps = int(steps)
        self.c = float(c)
        self.search_steps = int(search_steps)
        self.kappa = float(kappa)
        self.lr = float(lr)

    def _run(self, ctx: RunContext) -> torch.Tensor:
        fm, x, y, t = ctx.model, ctx.x, ctx.y, ctx.targets
        n = x.shape[0]
        kappa = self.kappa
        best_x = x.clone()
        best_d = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        c = torch.full((n,), self.c, device=x.device, dtype=x.dtype)
        lower = torch.zeros_like(c)
        upper = torch.full_like(c, 1e10)

        def objective(z: torch.Tensor) -> torch.Tensor:  # to maximize: -max(margin, -kappa)
            if t is None:
                margin = _pick(z, y) - z.scatter(1, y.unsqueeze(1), float("-inf")).amax(dim=1)
            else:
                margin = z.scatter(1, t.unsqueeze(1), float("-inf")).amax(dim=1) - _pick(z, t)
            return -margin.clamp_min(-kappa)

        w0 = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        for _ in range(self.search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.lr)
            hit = torch.zeros(n, dtype=torch.bool, device=x.device)
            for _ in range(self.steps):
                xa = (torch.tanh(w.detach()) + 1) / 2
                est = self._grad(fm, xa, objective)
                adv = ctx.is_adversarial(est, y, t)
                d = lp_norm(xa - x, "l2")
                better = adv & (d < best_d)
                best_x[better], best_d[better] = xa[better], d[better]
                hit |= adv
                dx = 2 * (xa - x) - batch_view(c, x) * est.grad  # d/dx' of ||x'-x||^2 - c * objective
                w.grad = dx * (1 - torch.tanh(w.detach()) ** 2) / 2
                opt.step()
            upper = torch.where(hit, torch.minimum(upper, c), upper)
            lower = torch.where(hit, lower, torch.maximum(lower, c))
            c = torch.where(upper < 1e9, (lower + upper) / 2, c * 10)
        return best_x
