"""Gradient estimators: how a gradient attack obtains the gradient of its objective.

:class:`Gradient` (one forward and backward) and :class:`EOT` (the mean over ``n`` random
draws, Athalye et al., 2018), both returning the step's prediction with its per-draw logits
(from which an attack picks its candidate point on a randomized model at no extra pass).
Where the model draws its randomness independently per batch row (:func:`rowwise_draws`),
:class:`EOT` takes several draws in one forward and one backward of the batch repeated.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.checks import check_int
from ..core.randomness import rowwise_random
from .model import ModelFn

__all__ = [
    "EOT",
    "GradEstimate",
    "Gradient",
    "GradientEstimator",
    "Objective",
    "Prediction",
    "rowwise_draws",
]

Objective = Callable[[torch.Tensor], torch.Tensor]
"""Maps logits ``(N, K)`` to a per-sample loss ``(N,)`` that the attack maximizes."""


@dataclass(frozen=True)
class Prediction:
    """A prediction at a batch, possibly averaged over random draws.

    Attributes:
        logits: logits (mean over the draws), detached.
        probs: mean softmax over the draws, detached: what a randomized model's step predicts.
        samples: the per-draw logits ``(D, N, K)``, detached: the draws' decisions, from which
            an attack picks its candidate point on a randomized model
            (:func:`~robustlab.attacks.verdict.badness_of`) at no extra pass.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    samples: torch.Tensor


@dataclass(frozen=True)
class GradEstimate(Prediction):
    """What a gradient estimator returns for a batch: the prediction at the input plus

    Attributes:
        grad: the (estimated) gradient of the per-sample objective w.r.t. the input.
        loss: per-sample objective (mean over draws for EOT), detached.
    """

    grad: torch.Tensor
    loss: torch.Tensor


class GradientEstimator(abc.ABC):
    """How a gradient attack obtains the gradient of its objective (plain, EOT, ...)."""

    @abc.abstractmethod
    def __call__(self, fmodel: ModelFn, x: torch.Tensor, objective: Objective) -> GradEstimate:
        """Estimate the gradient of ``objective(fmodel(x)).sum()`` with respect to ``x``."""

    def draws(self, fmodel: ModelFn) -> int:
        """Forward passes the estimator averages per step on ``fmodel``."""
        return 1

    @torch.no_grad()
    def predict(self, fmodel: ModelFn, x: torch.Tensor) -> Prediction:
        """The prediction at ``x`` averaged over the estimator's draws (no gradient)."""
        samples = torch.stack([fmodel(x) for _ in range(self.draws(fmodel))])
        return Prediction(samples.mean(dim=0), samples.float().softmax(dim=-1).mean(dim=0), samples)

    @staticmethod
    def _once(fmodel: ModelFn, x: torch.Tensor, objective: Objective) -> GradEstimate:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = fmodel(x)
            loss = objective(logits)
            grad = fmodel.grad(loss.sum(), x)
        logits = logits.detach()
        return GradEstimate(logits, logits.float().softmax(dim=1), logits.unsqueeze(0), grad.detach(),
                            loss.detach())


@dataclass(frozen=True)
class Gradient(GradientEstimator):
    """The plain gradient: one forward and one backward pass."""

    def __call__(self, fmodel: ModelFn, x: torch.Tensor, objective: Objective) -> GradEstimate:
        return self._once(fmodel, x, objective)


def rowwise_draws(fmodel: ModelFn) -> bool:
    """Whether ``fmodel`` may take several random draws of a batch in one forward.

    True when its randomness is known by the protocol (not frozen, not only detected, not a
    plain callable), every active random layer draws independently per batch row
    (:func:`core.randomness.rowwise_random`), and no module is in training mode (batch norm
    would couple the rows, so a batch repeated ``n`` times would not be ``n`` forwards of it).
    A forward of the batch repeated ``n`` times then gives each row ``n`` independent draws
    from the same distribution as ``n`` separate forwards.
    """
    model = fmodel.model
    return (
        fmodel.randomness == "protocol"
        and isinstance(model, nn.Module)
        and not fmodel.frozen
        and not any(m.training for m in model.modules())
        and rowwise_random(model)
    )


def _repeat(x: torch.Tensor, copies: int) -> torch.Tensor:
    """``x`` stacked ``copies`` times along the batch (copy ``j`` is rows ``j*N .. (j+1)*N-1``)."""
    return x if copies == 1 else torch.cat([x] * copies)


@dataclass(frozen=True)
class EOT(GradientEstimator):
    """Expectation over Transformation: the gradient averaged over ``n`` random draws.

    Athalye et al., 2018 ("Obfuscated Gradients Give a False Sense of Security", Sec. 4.3; and
    "Synthesizing Robust Adversarial Examples", ICML 2018). Each of the ``n`` draws is a fresh
    sample of the model's randomness (its :class:`core.randomness.Stochastic` layers, or
    randomness found empirically, see :func:`model_fn`). The estimate's prediction is the mean
    softmax over the ``n`` draws: what an attack's early stop on a randomized model is judged
    on (see :class:`Attack`).

    On a model whose random layers all draw per batch row (:func:`rowwise_draws`), the draws
    are taken ``k`` at a time: one forward and one backward of the batch repeated ``k`` times,
    where copy ``j`` of row ``i`` is draw ``j`` of sample ``i`` and its input gradient is that
    draw's gradient. The estimate has the same distribution as the loop's and the same pass
    counts (``n`` forwards and backwards per image), but not the same numbers for a given seed:
    the layers' generators are consumed in another order. Any other model (a layer that draws
    once per forward for the whole batch, randomness only detected, a frozen model, a plain
    callable, a model in training mode) gets one forward per draw.

    Args:
        n: number of draws.
        normalize: average per-sample L2-normalized gradients, ``E_r[grad / ||grad||_2]``,
            instead of raw ones (Bakiskan et al., "A Neuro-Inspired Autoencoding Defense Against
            Adversarial Perturbations", Sec. 5, attack settings: found stronger against their
            randomized sparse encoder; each draw votes for a direction with equal weight, so a
            few draws with huge gradients cannot dominate).
        skip_deterministic: when the model is not randomized (no active random layer, frozen,
            and no randomness detected) every draw is the same, so take one pass; the result
            then equals :class:`Gradient` exactly (normalized if asked). Set ``False`` to force
            ``n`` passes.
        batched: take several draws per forward where the model allows it (see above);
            ``False`` always loops, one forward per draw.
        max_rows: at most this many rows (images times draws) per batched forward: it bounds
            the extra memory, and on a CPU larger forwards were slower (the demo's SD model
            with per-sample jitter, 32 images, 20 draws: 128 to 256 rows per forward 5-15%
            faster per step than the loop, 512 rows 15-20% slower than it). A batch of more
            than ``max_rows / 2`` images is not batched.
    """

    n: int = 20
    normalize: bool = False
    skip_deterministic: bool = True
    batched: bool = True
    max_rows: int = 256

    def __post_init__(self) -> None:
        check_int(self.n, "EOT n (draws)", 1)
        check_int(self.max_rows, "EOT max_rows", 1)

    def draws(self, fmodel: ModelFn) -> int:
        return self.n if (fmodel.stochastic or not self.skip_deterministic) else 1

    def draws_per_pass(self, fmodel: ModelFn, rows: int) -> int:
        """How many draws one forward takes for a batch of ``rows`` images on ``fmodel``."""
        draws = self.draws(fmodel)
        if draws == 1 or rows == 0 or not self.batched or not rowwise_draws(fmodel):
            return 1
        return max(1, min(draws, self.max_rows // rows))

    def _passes(self, fmodel: ModelFn, rows: int) -> list[int]:
        """The number of draws each forward takes: ``draws_per_pass`` until ``n`` are taken."""
        draws, per_pass = self.draws(fmodel), self.draws_per_pass(fmodel, rows)
        return [per_pass] * (draws // per_pass) + ([draws % per_pass] if draws % per_pass else [])

    @torch.no_grad()
    def predict(self, fmodel: ModelFn, x: torch.Tensor) -> Prediction:
        n, samples = x.shape[0], []
        for copies in self._passes(fmodel, n):
            logits = fmodel(_repeat(x, copies))
            samples.append(logits.reshape(copies, n, logits.shape[-1]))
        stacked = torch.cat(samples)
        return Prediction(stacked.mean(dim=0), stacked.float().softmax(dim=-1).mean(dim=0), stacked)

    def __call__(self, fmodel: ModelFn, x: torch.Tensor, objective: Objective) -> GradEstimate:
        n = x.shape[0]
        grads, losses, samples = [], [], []
        for copies in self._passes(fmodel, n):
            xr = _repeat(x.detach(), copies).requires_grad_(True)
            with torch.enable_grad():
                logits = fmodel(xr)
                per_draw = logits.reshape(copies, n, logits.shape[-1])
                # one call per draw: the objective is per sample and may hold the batch's labels
                loss = torch.stack([objective(draw) for draw in per_draw]) if copies > 1 else objective(logits)[None]
                grad = fmodel.grad(loss.sum(), xr)
            g = grad.detach().reshape(copies, *x.shape)
            if self.normalize:
                norms = g.flatten(2).norm(dim=2).clamp_min(1e-12)
                g = g / norms.view(copies, n, *([1] * (x.dim() - 1)))
            grads.append(g)
            losses.append(loss.detach())
            samples.append(per_draw.detach())
        if len(samples) == 1 and samples[0].shape[0] == 1:  # one draw: exactly the plain gradient
            logits = samples[0][0]
            return GradEstimate(logits, logits.float().softmax(dim=1), samples[0], grads[0][0], losses[0][0])
        stacked = torch.cat(samples)
        return GradEstimate(stacked.mean(dim=0), stacked.float().softmax(dim=-1).mean(dim=0), stacked,
                            torch.cat(grads).mean(dim=0), torch.cat(losses).mean(dim=0))
