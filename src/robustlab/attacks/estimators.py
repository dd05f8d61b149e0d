"""Gradient estimators: how a gradient attack obtains the gradient of its objective.

:class:`Gradient` (one forward and backward) and :class:`EOT` (the mean over ``n`` random
draws, Athalye et al., 2018), both returning the step's prediction with its per-draw logits
(from which an attack picks its candidate point on a randomized model at no extra pass).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.checks import check_int
from ..core.geometry import batch_view
from .model import ModelFn

__all__ = ["EOT", "GradEstimate", "Gradient", "GradientEstimator", "Objective", "Prediction"]

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


@dataclass(frozen=True)
class EOT(GradientEstimator):
    """Expectation over Transformation: the gradient averaged over ``n`` random draws.

    Athalye et al., 2018 ("Obfuscated Gradients Give a False Sense of Security", Sec. 4.3; and
    "Synthesizing Robust Adversarial Examples", ICML 2018). Each of the ``n`` forward/backward
    passes draws fresh randomness from the model (its :class:`core.randomness.Stochastic`
    layers, or randomness found empirically, see :func:`model_fn`). The estimate's prediction
    is the mean softmax over the ``n`` draws: what an attack's early stop on a randomized model
    is judged on (see :class:`Attack`).

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
    """

    n: int = 20
    normalize: bool = False
    skip_deterministic: bool = True

    def __post_init__(self) -> None:
        check_int(self.n, "EOT n (draws)", 1)

    def draws(self, fmodel: ModelFn) -> int:
        return self.n if (fmodel.stochastic or not self.skip_deterministic) else 1

    def __call__(self, fmodel: ModelFn, x: torch.Tensor, objective: Objective) -> GradEstimate:
        draws = self.draws(fmodel)
        grads, losses, samples = [], [], []
        for _ in range(draws):
            est = self._once(fmodel, x, objective)
            g = est.grad
            if self.normalize:
                g = g / batch_view(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)
            grads.append(g)
            losses.append(est.loss)
            samples.append(est.logits)
        if draws == 1:
            return GradEstimate(samples[0], samples[0].float().softmax(dim=1), samples[0].unsqueeze(0),
                                grads[0], losses[0])
        stacked = torch.stack(samples)
        return GradEstimate(stacked.mean(dim=0), stacked.float().softmax(dim=-1).mean(dim=0), stacked,
                            torch.stack(grads).mean(dim=0), torch.stack(losses).mean(dim=0))
