"""Auto-PGD: step-size-free PGD with momentum (Croce & Hein, 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", ICML, Sec. 3)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..core.bpda import BPDAMode
from ..core.checks import check_int
from ..core.errors import InputError
from ..core.types import ThreatModel
from .base import (
    Ball,
    GradientEstimator,
    Pick,
    RunContext,
    batch_view,
    random_point,
    runner_up_targets,
)
from .gradient import GradientAttack, Tracker
from .losses import LossFn, dlr_loss
from .registry import register_attack

__all__ = ["APGD", "APGDT", "apgd_ce", "apgd_checkpoints", "apgd_dlr"]


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


@dataclass
class _State:
    """The per-sample state of one APGD run (Croce & Hein, 2020, Alg. 1); :meth:`index` keeps
    the rows of the samples still attacked, so the loop reads top to bottom.

    Attributes:
        ids: the samples' positions in the attack's batch.
        y: labels.
        loss_targets: classes the loss pulls toward (APGD-T), else ``None``.
        success_targets: classes success is measured against (targeted runs), else ``None``.
        ball: the feasible set around the clean inputs.
        x_adv, x_old: the current and the previous iterate.
        grad: the gradient at ``x_adv``.
        x_best, grad_best, loss_best: the highest-loss point so far, its gradient and loss.
        step: the step size ``eta``.
        prev_loss: the loss at the previous iterate.
        increases: steps since the last checkpoint whose loss rose (condition 1).
        loss_at_check: the best loss at the last checkpoint (condition 2).
        halved_at_check: whether the step was halved at the last checkpoint (condition 2).
    """

    ids: torch.Tensor
    y: torch.Tensor
    loss_targets: torch.Tensor | None
    success_targets: torch.Tensor | None
    ball: Ball
    x_adv: torch.Tensor
    x_old: torch.Tensor
    grad: torch.Tensor
    x_best: torch.Tensor
    grad_best: torch.Tensor
    loss_best: torch.Tensor
    step: torch.Tensor
    prev_loss: torch.Tensor
    increases: torch.Tensor
    loss_at_check: torch.Tensor
    halved_at_check: torch.Tensor

    @classmethod
    def start(
        cls,
        *,
        ids: torch.Tensor,
        y: torch.Tensor,
        ball: Ball,
        x_adv: torch.Tensor,
        grad: torch.Tensor,
        loss: torch.Tensor,
        step: float,
        loss_targets: torch.Tensor | None,
        success_targets: torch.Tensor | None,
    ) -> _State:
        """The state at the start point ``x_adv``, whose gradient and loss are ``grad`` and
        ``loss``."""
        n = x_adv.shape[0]
        zeros = loss.new_zeros(n)
        return cls(
            ids=ids, y=y, loss_targets=loss_targets, success_targets=success_targets,
            ball=ball, x_adv=x_adv, x_old=x_adv.clone(), grad=grad,
            x_best=x_adv.clone(), grad_best=grad.clone(), loss_best=loss.clone(),
            step=torch.full((n,), step, device=x_adv.device, dtype=x_adv.dtype),
            # As in the reference implementation (and torchattacks'): the first oscillation
            # window compares its first loss against an empty (zero) slot of the loss history,
            # and condition 2 cannot fire at the first checkpoint ("halved at the last check"
            # starts true).
            prev_loss=zeros.clone(), increases=zeros.clone(), loss_at_check=loss.clone(),
            halved_at_check=torch.ones(n, dtype=torch.bool, device=x_adv.device),
        )

    def observe(self, grad: torch.Tensor, loss: torch.Tensor) -> None:
        """Record the gradient and loss at the new iterate; keep the best point."""
        self.grad = grad
        self.increases += (loss > self.prev_loss).to(self.increases.dtype)
        self.prev_loss = loss
        better = loss > self.loss_best
        self.x_best[better], self.grad_best[better] = self.x_adv[better], grad[better]
        self.loss_best = torch.where(better, loss, self.loss_best)

    def checkpoint(self, window: int, rho: float) -> None:
        """At checkpoint ``w_j``: halve the step where (1) the loss rose in at most ``rho`` of
        the ``window`` steps since ``w_{j-1}``, or (2) the step was not halved at ``w_{j-1}``
        and the best loss has not improved since; those samples restart from their best point."""
        oscillating = self.increases <= window * rho
        stalled = ~self.halved_at_check & (self.loss_at_check >= self.loss_best)
        halve = oscillating | stalled
        self.step = torch.where(halve, self.step / 2, self.step)
        self.x_adv = torch.where(batch_view(halve, self.x_adv), self.x_best, self.x_adv)
        self.grad = torch.where(batch_view(halve, self.grad), self.grad_best, self.grad)
        self.halved_at_check, self.loss_at_check = halve, self.loss_best.clone()
        self.increases = torch.zeros_like(self.increases)

    def index(self, keep: torch.Tensor) -> _State:
        """The state of the samples ``keep`` only."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            values[f.name] = None if v is None else v[keep]
        return _State(**values)


class APGD(GradientAttack):
    """Auto-PGD (Croce & Hein, 2020, Sec. 3, Alg. 1).

    PGD with momentum ``alpha = 0.75`` and an adaptive step size: it starts at ``2 * eps`` and is
    halved at checkpoint ``w_j`` when (1) the loss increased in fewer than ``rho = 0.75`` of the
    steps since ``w_{j-1}``, or (2) the step size was not halved at ``w_{j-1}`` and the best loss
    has not improved since; on halving, the iterate restarts from the best point found.
    ``APGD-CE`` uses the cross-entropy loss, ``APGD-DLR`` the DLR loss (Sec. 3.2).

    On a deterministic model, samples misclassified at the clean input are returned as they
    are, and a sample whose iterate is adversarial keeps that point and leaves the batch
    (``early_stop``), which changes no verdict and saves passes. Otherwise a sample returns
    its highest-loss point on a deterministic model; on a randomized one (see
    :class:`~robustlab.attacks.Attack`) each restart or target proposes two candidates to the
    incumbent (:class:`~robustlab.attacks.gradient.Tracker`), which keeps the worse for the
    model on fresh draws: the iterate that most of its step's EOT draws call a success
    (:class:`~robustlab.attacks.base.Pick`) and the highest-loss iterate; the loss alone never
    decides what is returned.

    Args:
        threat: L-inf or L2.
        steps: iterations per restart (100 in AutoAttack).
        restarts: random restarts, each on the samples still robust.
        loss: ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR) or ``"cw"``.
        rho: the fraction of increasing steps below which the step size is halved.
        momentum: ``alpha`` of Alg. 1.
        early_stop: drop samples from the batch once confirmed adversarial (see
            :class:`~robustlab.attacks.Attack`); on a randomized model, at each checkpoint,
            once the candidate every draw of its step got wrong, proposed to the incumbent,
            fools every fresh draw of the comparison (broken by the worst-case rule,
            :meth:`~robustlab.attacks.gradient.Tracker.settle`).
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
        self.steps, self.restarts = self._budget(steps, restarts)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.early_stop = bool(early_stop)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threat.norm}, eps={self.threat.eps:.4g}, loss={self._loss_name})"

    def _attack(
        self,
        ctx: RunContext,
        track: Tracker,
        idx: torch.Tensor,
        loss_targets: torch.Tensor | None,
    ) -> None:
        """One APGD run on samples ``idx``; confirmed adversarial points go to ``track``.

        ``loss_targets`` are the classes the loss pulls toward (APGD-T), ``ctx.targets`` the
        ones success is measured against (``None``: misclassification).
        """
        shrink = ctx.shrink and self.early_stop
        ball = self._ball(ctx.x[idx])
        y = ctx.y[idx]
        goal = loss_targets[idx] if loss_targets is not None else None
        # the start: a random point on the sphere of radius eps (as in the reference code)
        x_adv = ball.project(random_point(ball.x, self.threat.norm, self.threat.eps, ctx.generator, on_sphere=True))
        est = self._estimate(ctx.model, x_adv, y, goal)
        st = _State.start(
            ids=idx, y=y, ball=ball, x_adv=x_adv, grad=est.grad, loss=est.loss,
            step=2.0 * self.threat.eps, loss_targets=goal,
            success_targets=ctx.targets[idx] if ctx.targets is not None else None,
        )
        # randomized: the candidate is the iterate most step draws call a success, not the
        # highest-loss one (confirmed is never true there; ``rows`` maps the state's rows to
        # the pick's, which differ once settled samples leave at a checkpoint)
        pick = Pick(x_adv) if ctx.stochastic else None
        rows = torch.arange(idx.numel(), device=x_adv.device)
        if pick is not None:
            pick.observe(rows, x_adv, est.samples, st.y, st.success_targets)
        confirmed = ctx.confirmed(est.logits, st.y, st.success_targets)
        track.adversarial(st.ids[confirmed], st.x_adv[confirmed])
        if shrink and bool(confirmed.any()):
            st = st.index(~confirmed)
        checkpoints = set(apgd_checkpoints(self.steps))
        last_check = 0
        for i in range(self.steps):
            if st.ids.numel() == 0:
                break
            a = self.momentum if i > 0 else 1.0
            z = st.ball.project(st.x_adv + self._ascent_step(st.grad, st.step))
            x_new = st.ball.project(st.x_adv + a * (z - st.x_adv) + (1 - a) * (st.x_adv - st.x_old))
            st.x_old, st.x_adv = st.x_adv, x_new
            est = self._estimate(ctx.model, st.x_adv, st.y, st.loss_targets)
            if pick is not None:
                pick.observe(rows, st.x_adv, est.samples, st.y, st.success_targets)
            confirmed = ctx.confirmed(est.logits, st.y, st.success_targets)
            track.adversarial(st.ids[confirmed], st.x_adv[confirmed])
            st.observe(est.grad, est.loss)
            if i + 1 in checkpoints:
                st.checkpoint(i + 1 - last_check, self.rho)
                last_check = i + 1
                if pick is not None and shrink and i + 1 < self.steps:
                    st, rows = self._settle(track, pick, st, rows)
            if shrink and bool(confirmed.any()):
                st = st.index(~confirmed)
        if pick is not None:  # the iterate most draws got wrong, then the highest-loss one
            track.fallback(st.ids, pick.x[rows])
        track.fallback(st.ids, st.x_best)

    @staticmethod
    def _settle(track: Tracker, pick: Pick, st: _State, rows: torch.Tensor) -> tuple[_State, torch.Tensor]:
        """At a checkpoint on a randomized model: the samples whose candidate every draw of
        its step called a success propose it to the incumbent now (on fresh draws); those whose
        incumbent then fools every fresh draw are broken by the worst-case rule and leave the
        run (:meth:`Tracker.settle`). The step's draws only choose whom to propose; fresh
        draws decide."""
        assert pick.badness is not None
        ready = pick.badness.wrong[rows] >= 1.0
        if not bool(ready.any()):
            return st, rows
        done = torch.zeros_like(ready)
        done[ready] = track.settle(st.ids[ready], pick.x[rows[ready]])
        if not bool(done.any()):
            return st, rows
        return st.index(~done), rows[~done]

    def _clean(self, ctx: RunContext, targets: torch.Tensor | None) -> Tracker:
        """A tracker that holds the clean inputs, with the samples confirmed adversarial at the
        clean input already done (as in the reference, they are not attacked)."""
        track = Tracker(ctx)
        confirmed = ctx.confirmed(ctx.clean_logits(), ctx.y, targets)
        track.adversarial(confirmed.nonzero().squeeze(1), ctx.x[confirmed])
        return track

    def _run(self, ctx: RunContext) -> torch.Tensor:
        track = self._clean(ctx, ctx.targets)
        for _ in range(self.restarts):
            idx = track.open()
            if idx.numel() == 0:
                break
            self._attack(ctx, track, idx, ctx.targets)
        return track.x


@register_attack("apgd-ce", "Croce & Hein 2020, Sec. 3", builds=APGD)
def apgd_ce(threat: ThreatModel, steps: int = 100, **kwargs: Any) -> APGD:
    """APGD with the cross-entropy loss (Croce & Hein, 2020, Sec. 3)."""
    return APGD(threat, steps, loss="ce", **kwargs)


@register_attack("apgd-dlr", "Croce & Hein 2020, Sec. 3.2", builds=APGD)
def apgd_dlr(threat: ThreatModel, steps: int = 100, **kwargs: Any) -> APGD:
    """APGD with the DLR loss (Croce & Hein, 2020, Sec. 3.2)."""
    return APGD(threat, steps, loss="dlr", **kwargs)


@register_attack("apgd-t", "Croce & Hein 2020, Sec. 3.2")
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
        self, threat: ThreatModel, steps: int = 100, *, n_target_classes: int = 9, restarts: int = 1,
        rho: float = 0.75, momentum: float = 0.75, early_stop: bool = True,
        grad: GradientEstimator | None = None, bpda: BPDAMode | None = None,
    ) -> None:
        # APGD's settings with the targeted DLR loss
        super().__init__(threat, steps, restarts=restarts, loss=dlr_loss, rho=rho, momentum=momentum,
                         early_stop=early_stop, grad=grad, bpda=bpda)
        self._loss_name = "dlr-targeted"
        self.n_target_classes = check_int(n_target_classes, "n_target_classes", 1)

    def _run(self, ctx: RunContext) -> torch.Tensor:
        track = self._clean(ctx, None)
        clean = ctx.clean_logits()
        n_classes = clean.shape[1]
        if n_classes < 4:
            raise InputError(
                f"APGD-T uses the targeted DLR loss, which needs >= 4 classes, got {n_classes}"
            )
        for targets in runner_up_targets(clean, self.n_target_classes):
            for _ in range(self.restarts):
                idx = track.open()
                if idx.numel() == 0:
                    return track.x
                self._attack(ctx, track, idx, targets)
        return track.x
