"""Auto-PGD: step-size-free PGD with momentum (Croce & Hein, 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", ICML, Sec. 3)."""

from __future__ import annotations

import torch

from ..core.bpda import BPDAMode
from ..core.errors import InputError
from ..core.types import ThreatModel
from .base import GradientEstimator, RunContext, lp_norm, select_targets
from .gradient import GradientAttack, Tracker
from .losses import LossFn, dlr_loss

__all__ = ["APGD", "APGDT", "apgd_checkpoints"]


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD may halve its step size (Croce & Hein, 2020, Sec. 3.1).

    ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, i.e. gaps that start at 22% of the
    budget and shrink by 3% down to 6%. Computed on integer iteration counts (gap
    ``max(0.22 * steps, 1)``, decreasing by ``max(0.03 * steps, 1)`` to ``max(0.06 * steps, 1)``)
    so that small budgets still get checkpoints.
    """
    gap = max(int(0.22 * steps), 1)
    dec = max(int(0.03 * steps), 1)
    low = max(int(0.06 * steps), 1)
    out, w = [], 0
    while w + gap <= steps:
        w += gap
        out.append(w)
        gap = max(gap - dec, low)
    return out


class APGD(GradientAttack):
    """Auto-PGD (Croce & Hein, 2020, Sec. 3, Alg. 1).

    PGD with momentum ``alpha = 0.75`` and an adaptive step size: it starts at ``2 * eps`` and is
    halved at checkpoint ``w_j`` when (1) the loss increased in fewer than ``rho = 0.75`` of the
    steps since ``w_{j-1}``, or (2) the step size was not halved at ``w_{j-1}`` and the best loss
    has not improved since; on halving, the iterate restarts from the best point found.
    ``APGD-CE`` uses the cross-entropy loss, ``APGD-DLR`` the DLR loss (Sec. 3.2).

    A sample is attacked only while it is correctly classified (misclassified clean samples are
    returned as they are); a sample that becomes adversarial keeps that point and leaves the
    batch (``early_stop``), which changes no outcome and saves passes.

    Args:
        threat: L-inf or L2.
        steps: iterations per restart (100 in AutoAttack).
        restarts: random restarts, each on the samples still robust.
        loss: ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR) or ``"cw"``.
        rho: the fraction of increasing steps below which the step size is halved.
        momentum: ``alpha`` of Alg. 1.
        early_stop: drop samples from the batch once adversarial.
        grad: gradient estimator (``EOT(20)`` in AutoAttack's ``rand`` version).
        bpda: see :class:`~robustlab.attacks.base.Attack`.
    """

    name = "apgd"
    supports_targets = True

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 100,
        *,
        restarts: int = 1,
        loss: str | LossFn = "ce",
        rho: float = 0.75,
        momentum: float = 0.75,
        early_stop: bool = True,
        grad: GradientEstimator | None = None,
        bpda: BPDAMode | None = None,
    ) -> None:
        super().__init__(threat, loss=loss, grad=grad, bpda=bpda)
        if steps < 1 or restarts < 1:
            raise InputError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.early_stop = bool(early_stop)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threat.norm}, eps={self.threat.eps:.4g}, loss={self._loss_name})"

    def _start(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A random point on the boundary of the ball (as in the reference implementation)."""
        eps = self.threat.eps
        if self.threat.norm == "linf":
            t = 2 * torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) - 1
            t = t / _expand(lp_norm(t, "linf").clamp_min(1e-12), t)
        else:
            t = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            t = t / _expand(lp_norm(t, "l2").clamp_min(1e-12), t)
        return (x + eps * t).clamp(0.0, 1.0)

    def _step(self, g: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        if self.threat.norm == "linf":
            return _expand(step, g) * g.sign()
        return _expand(step, g) * g / _expand(lp_norm(g, "l2").clamp_min(1e-12), g)

    def _attack(
        self,
        ctx: RunContext,
        track: Tracker,
        idx: torch.Tensor,
        loss_targets: torch.Tensor | None,
    ) -> None:
        """One APGD run on samples ``idx``; adversarial points go to ``track``.

        ``loss_targets`` are the classes the loss pulls toward (APGD-T), ``ctx.targets`` the
        ones success is measured against (``None``: misclassification).
        """
        fm, x, y = ctx.model, ctx.x[idx], ctx.y[idx]
        lt = loss_targets[idx] if loss_targets is not None else None
        st = ctx.targets[idx] if ctx.targets is not None else None
        ids = idx
        eps = self.threat.eps
        shrink = ctx.shrink and self.early_stop

        ball = self._ball(x)
        x_adv = ball.project(self._start(x, ctx.generator))
        est = self._estimate(fm, x_adv, y, lt)
        g, loss = est.grad, est.loss
        adv = self._is_adv(est.logits, y, st)
        track.adversarial(ids[adv], x_adv[adv], est.logits[adv])
        x_best, g_best, loss_best, logits_best = x_adv.clone(), g.clone(), loss.clone(), est.logits
        step = torch.full((x.shape[0],), 2.0 * eps, device=x.device, dtype=x.dtype)
        x_old = x_adv.clone()
        # As in the reference implementation (and torchattacks'): the first oscillation window
        # compares its first loss against an empty (zero) slot of the loss history, and condition
        # 2 cannot fire at the first checkpoint ("reduced at the last check" starts true).
        prev_loss = torch.zeros_like(loss)
        n_up = torch.zeros_like(loss)
        loss_at_check = loss_best.clone()
        halved_at_check = torch.ones_like(adv)
        checkpoints = set(apgd_checkpoints(self.steps))
        last_check = 0

        def keep_only(keep: torch.Tensor) -> None:
            nonlocal x, y, lt, st, ids, x_adv, g, x_best, g_best, loss_best, logits_best
            nonlocal step, x_old, prev_loss, n_up, loss_at_check, halved_at_check, ball
            x, y, ids, x_adv, g = x[keep], y[keep], ids[keep], x_adv[keep], g[keep]
            ball = ball[keep]
            lt = lt[keep] if lt is not None else None
            st = st[keep] if st is not None else None
            x_best, g_best, loss_best = x_best[keep], g_best[keep], loss_best[keep]
            logits_best, step, x_old = logits_best[keep], step[keep], x_old[keep]
            prev_loss, n_up = prev_loss[keep], n_up[keep]
            loss_at_check, halved_at_check = loss_at_check[keep], halved_at_check[keep]

        if shrink and bool(adv.any()):
            keep_only(~adv)
        for i in range(self.steps):
            if x.shape[0] == 0:
                break
            a = self.momentum if i > 0 else 1.0
            z = ball.project(x_adv + self._step(g, step))
            x_new = ball.project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_old))
            x_old, x_adv = x_adv, x_new
            est = self._estimate(fm, x_adv, y, lt)
            g, loss = est.grad, est.loss
            adv = self._is_adv(est.logits, y, st)
            track.adversarial(ids[adv], x_adv[adv], est.logits[adv])
            n_up += (loss > prev_loss).to(n_up.dtype)
            prev_loss = loss
            better = loss > loss_best
            x_best[better], g_best[better] = x_adv[better], g[better]
            loss_best = torch.where(better, loss, loss_best)
            logits_best = torch.where(better.unsqueeze(1), est.logits, logits_best)
            if i + 1 in checkpoints:
                k = i + 1 - last_check
                oscillating = n_up <= k * self.rho  # condition 1
                stalled = ~halved_at_check & (loss_at_check >= loss_best)  # condition 2
                halve = oscillating | stalled
                step = torch.where(halve, step / 2, step)
                x_adv = torch.where(_expand(halve, x_adv), x_best, x_adv)
                g = torch.where(_expand(halve, g), g_best, g)
                halved_at_check, loss_at_check = halve, loss_best.clone()
                n_up = torch.zeros_like(n_up)
                last_check = i + 1
            if shrink and bool(adv.any()):
                keep_only(~adv)
        track.fallback(ids, x_best, logits_best)

    def _run(self, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        track = Tracker(ctx.x)
        clean = ctx.clean_logits()
        done = self._is_adv(clean, ctx.y, ctx.targets)
        track.adversarial(done.nonzero().squeeze(1), ctx.x[done], clean[done])
        track.fallback(torch.arange(ctx.x.shape[0], device=ctx.x.device), ctx.x, clean)
        for _ in range(self.restarts):
            idx = (~track.found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            self._attack(ctx, track, idx, ctx.targets)
        return track.result()


class APGDT(APGD):
    """Targeted APGD with the targeted DLR loss (Croce & Hein, 2020, Sec. 3.2 and 4).

    For each of the ``n_target_classes`` classes with the highest clean logits after the
    predicted one, runs APGD (one run per target and restart) on the samples still robust,
    maximizing ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``. Success is misclassification.

    Args:
        threat: L-inf or L2.
        steps: iterations per target (100 in AutoAttack).
        n_target_classes: how many target classes to try (9 in AutoAttack).
        restarts: runs per target class.
        rho, momentum, early_stop, grad, bpda: see :class:`APGD`.
    """

    name = "apgd-t"
    supports_targets = False

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 100,
        *,
        n_target_classes: int = 9,
        restarts: int = 1,
        rho: float = 0.75,
        momentum: float = 0.75,
        early_stop: bool = True,
        grad: GradientEstimator | None = None,
        bpda: BPDAMode | None = None,
    ) -> None:
        super().__init__(
            threat,
            steps,
            restarts=restarts,
            loss=dlr_loss,
            rho=rho,
            momentum=momentum,
            early_stop=early_stop,
            grad=grad,
            bpda=bpda,
        )
        self._loss_name = "dlr-targeted"
        if n_target_classes < 1:
            raise InputError(f"n_target_classes must be >= 1, got {n_target_classes}")
        self.n_target_classes = int(n_target_classes)

    def _run(self, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        track = Tracker(ctx.x)
        clean = ctx.clean_logits()
        done = self._is_adv(clean, ctx.y, None)
        track.adversarial(done.nonzero().squeeze(1), ctx.x[done], clean[done])
        track.fallback(torch.arange(ctx.x.shape[0], device=ctx.x.device), ctx.x, clean)
        n_classes = clean.shape[1]
        if n_classes < 4:
            raise InputError(
                f"APGD-T uses the targeted DLR loss, which needs >= 4 classes, got {n_classes}"
            )
        for rank in range(2, min(self.n_target_classes + 2, n_classes + 1)):
            targets = select_targets(clean, rank)
            for _ in range(self.restarts):
                idx = (~track.found).nonzero().squeeze(1)
                if idx.numel() == 0:
                    return track.result()
                self._attack(ctx, track, idx, targets)
        return track.result()
