"""Gradient attacks: the shared machinery, FGSM, PGD and MI-FGSM."""

from __future__ import annotations

import torch

from ..core.bpda import BPDAMode
from ..core.errors import InputError
from ..core.types import ThreatModel
from .base import Attack, Gradient, GradientEstimator, ModelFn, RunContext, lp_norm
from .losses import LossFn, get_loss

__all__ = ["FGSM", "MIFGSM", "PGD", "GradientAttack", "Tracker"]


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


class Tracker:
    """Per-sample bookkeeping of the best point an attack has found so far.

    ``record`` stores points that are adversarial (first priority) and, for samples without one
    yet, the latest point given as a fallback, together with their logits, so the base class can
    reuse the logits instead of running another forward pass.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.clone()
        self.found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.logits: torch.Tensor | None = None
        self.has_logits = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def _store_logits(self, ids: torch.Tensor, logits: torch.Tensor) -> None:
        if self.logits is None:
            self.logits = logits.new_zeros(self.x.shape[0], logits.shape[1])
        self.logits[ids] = logits
        self.has_logits[ids] = True

    def adversarial(self, ids: torch.Tensor, x: torch.Tensor, logits: torch.Tensor) -> None:
        """Record adversarial points ``x`` for samples ``ids``."""
        if ids.numel():
            self.x[ids] = x
            self.found[ids] = True
            self._store_logits(ids, logits)

    def fallback(self, ids: torch.Tensor, x: torch.Tensor, logits: torch.Tensor | None) -> None:
        """Record non-adversarial end points for samples ``ids`` that have no adversarial one."""
        keep = ~self.found[ids]
        ids = ids[keep]
        if ids.numel():
            self.x[ids] = x[keep]
            if logits is not None:
                self._store_logits(ids, logits[keep])
            else:
                self.has_logits[ids] = False

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x_adv, logits)``; logits only when known for every sample."""
        if self.logits is None or not bool(self.has_logits.all()):
            return self.x, None
        return self.x, self.logits


class GradientAttack(Attack):
    """Base of attacks that follow a (possibly estimated) gradient of a loss.

    Args:
        threat: the threat model.
        loss: objective to maximize: ``"ce"``, ``"cw"``, ``"dlr"`` or a callable
            ``(logits, y, targets) -> (N,)``.
        grad: gradient estimator, :class:`~robustlab.attacks.base.Gradient` (default) or
            :class:`~robustlab.attacks.base.EOT` for randomized models.
        bpda: run the model's BPDA layers with a surrogate backward (see :class:`Attack`).
    """

    def __init__(
        self,
        threat: ThreatModel,
        *,
        loss: str | LossFn = "ce",
        grad: GradientEstimator | None = None,
        bpda: BPDAMode | None = None,
    ) -> None:
        super().__init__(threat, bpda=bpda)
        self._loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self._loss = get_loss(loss)
        grad = Gradient() if grad is None else grad
        if not isinstance(grad, GradientEstimator):
            raise InputError(f"grad must be a GradientEstimator (Gradient(), EOT(n)), got {grad!r}")
        self._grad = grad

    @property
    def grad(self) -> GradientEstimator:
        """The gradient estimator."""
        return self._grad

    @property
    def loss(self) -> LossFn:
        """The objective."""
        return self._loss

    def _estimate(
        self,
        fmodel: ModelFn,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None,
    ):  # type: ignore[no-untyped-def]
        loss = self._loss
        return self._grad(fmodel, x, lambda z: loss(z, y, targets))

    def _ascent_step(self, g: torch.Tensor, alpha: float) -> torch.Tensor:
        """The steepest-ascent step of length ``alpha`` in the threat norm."""
        if self.threat.norm == "linf":
            return g.sign().mul_(alpha)
        return g * _expand(alpha / lp_norm(g, "l2").clamp_min(1e-12), g)


class FGSM(GradientAttack):
    """Fast Gradient Sign Method (Goodfellow et al., 2015, "Explaining and Harnessing
    Adversarial Examples", Sec. 4): one step of size eps along the gradient's sign (L-inf) or
    its normalized direction (L2, the fast gradient method)."""

    name = "fgsm"
    supports_targets = True

    def _run(self, ctx: RunContext) -> torch.Tensor:
        est = self._estimate(ctx.model, ctx.x, ctx.y, ctx.targets)
        return self._project(ctx.x, ctx.x + self._ascent_step(est.grad, self.threat.eps))


class PGD(GradientAttack):
    """Projected Gradient Descent (Madry et al., 2018, "Towards Deep Learning Models Resistant
    to Adversarial Attacks", Sec. 2.1 and 5).

    Iterates ``x <- P(x + alpha * step(grad))`` from a random point of the ball. The returned
    point of a sample is an adversarial iterate when one was found (the first one when
    ``early_stop``), else the last iterate of the last restart; further restarts run only on
    samples not yet broken.

    Args:
        threat: the threat model (L-inf or L2).
        steps: iterations per restart.
        step_size: ``alpha``; default ``2.5 * eps / steps`` (Madry et al., 2018).
        random_start: start from a random point of the ball instead of ``x``.
        restarts: number of random restarts.
        early_stop: stop attacking a sample once it is adversarial (saves passes; the
            per-sample result is an adversarial point either way). Off inside ``frozen``.
        loss, grad, bpda: see :class:`GradientAttack`.
    """

    name = "pgd"
    supports_targets = True

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 10,
        *,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        early_stop: bool = True,
        loss: str | LossFn = "ce",
        grad: GradientEstimator | None = None,
        bpda: BPDAMode | None = None,
    ) -> None:
        super().__init__(threat, loss=loss, grad=grad, bpda=bpda)
        if steps < 1 or restarts < 1:
            raise InputError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
        self.steps = int(steps)
        self.step_size = 2.5 * threat.eps / steps if step_size is None else float(step_size)
        self.random_start = bool(random_start)
        self.restarts = int(restarts)
        self.early_stop = bool(early_stop)

    def _init_state(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def _direction(self, g: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return g

    def _run(self, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y, t = ctx.x, ctx.y, ctx.targets
        track = Tracker(x)
        shrink = ctx.shrink and self.early_stop
        for _ in range(self.restarts):
            idx = (~track.found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            ids, ys = idx, y[idx]
            ts = t[idx] if t is not None else None
            ball = self._ball(x[idx])
            cur = (
                ball.project(self._random_start(ball.x, ctx.generator))
                if self.random_start
                else ball.x
            )
            state = self._init_state(cur)
            for _step in range(self.steps):
                est = self._estimate(ctx.model, cur, ys, ts)
                g, logits = est.grad, est.logits
                adv = self._is_adv(logits, ys, ts)
                if bool(adv.any()):
                    track.adversarial(ids[adv], cur[adv], logits[adv])
                    if shrink:
                        keep = ~adv
                        ids, ys, cur, g, ball = ids[keep], ys[keep], cur[keep], g[keep], ball[keep]
                        ts = ts[keep] if ts is not None else None
                        state = {k: v[keep] for k, v in state.items()}
                        if ids.numel() == 0:
                            break
                d = self._direction(g, state)
                cur = ball.project(cur + self._ascent_step(d, self.step_size))
            if ids.numel():
                logits = ctx.model.predict(cur)
                adv = self._is_adv(logits, ys, ts)
                track.adversarial(ids[adv], cur[adv], logits[adv])
                track.fallback(ids[~adv], cur[~adv], logits[~adv])
        return track.result()


class MIFGSM(PGD):
    """Momentum Iterative FGSM (Dong et al., 2018, "Boosting Adversarial Attacks with Momentum",
    Sec. 3.1, Alg. 1): ``g <- mu * g + grad / ||grad||_1``, step ``alpha * sign(g)`` with
    ``alpha = eps / steps`` from the clean input (L2: along ``g / ||g||_2``).

    Args:
        threat: the threat model.
        steps: iterations.
        decay: momentum factor ``mu``.
        step_size: default ``eps / steps``.
        early_stop, loss, grad, bpda: see :class:`PGD`.
    """

    name = "mifgsm"

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 10,
        *,
        decay: float = 1.0,
        step_size: float | None = None,
        early_stop: bool = True,
        loss: str | LossFn = "ce",
        grad: GradientEstimator | None = None,
        bpda: BPDAMode | None = None,
    ) -> None:
        super().__init__(
            threat,
            steps,
            step_size=threat.eps / steps if step_size is None else step_size,
            random_start=False,
            restarts=1,
            early_stop=early_stop,
            loss=loss,
            grad=grad,
            bpda=bpda,
        )
        self.decay = float(decay)

    def _init_state(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"momentum": torch.zeros_like(x)}

    def _direction(self, g: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        l1 = g.flatten(1).abs().sum(dim=1).clamp_min(1e-12)
        m = self.decay * state["momentum"] + g / _expand(l1, g)
        state["momentum"] = m
        return m
