"""Input-gradient objectives of the gradient-norm thesis (``papers/gradient-norm-regularization``).

============== ============== =============================================================
name           thesis         loss on a batch
============== ============== =============================================================
``gradnorm``   Sec. 4, (4.1)  lambda_CE CE + w(e) lambda_GN (eps / sigma) mean_i ||grad_x CE_i||_1
``edge-align`` Sec. 5, (5.1)  lambda_CE CE + lambda_edge L_align(grad_x f(x)_t, edge(x))
============== ============== =============================================================

Both train on clean inputs only and differentiate an input gradient with respect to the weights
(double backpropagation: the input gradient is taken with ``create_graph=True``), so a network
with non-smooth activations (ReLU) has a piecewise-constant input gradient that the weights can
hardly steer; the thesis (Sec. 4.3, Table 4.4) swaps them for GELU / SiLU first
(:func:`robustlab.defenses.swap_activations`) and keeps batch norm in eval mode
(``TrainConfig(bn_eval=True)``).

Per-sample gradients: the batch's cross-entropy is a mean, whose input gradient for sample ``i``
is ``grad_x CE_i / B``: it would shrink with the batch size and make ``lambda_GN`` mean something
else at every batch size. Both objectives therefore differentiate the batch SUM of the per-sample
quantity (the mean times ``B``); since sample ``i``'s output depends on ``x_i`` alone (batch norm in
eval mode, or its small train-mode coupling ignored, as every double-backprop code does), the
gradient of the sum with respect to ``x_i`` is sample ``i``'s own input gradient. The penalty is
then averaged over the batch, like the cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core import InputError, check_int, check_number
from ..core.filters import oriented_energy
from ..models import Normalized
from .objectives import OBJECTIVES, ObjectiveOutput, objective_config
from .robust import EpochClock

ALIGNMENTS = ("cosine", "batch-mse")
"""The ``edge-align`` alignment losses (see :class:`EdgeAlign`)."""


def _check(
    owner: str, what: str, value: Any, minimum: float = 0.0, *, strict: bool = False
) -> None:
    check_number(value, f"{owner} {what}", minimum, low_open=strict)


def input_std(model: nn.Module) -> torch.Tensor | None:
    """The per-channel normalization std ``(1, C, 1, 1)`` of ``model``'s :class:`Normalized`
    wrapper (the root, else the only one inside it), or ``None`` for a model without one."""
    if isinstance(model, Normalized):
        return model.std
    found = [m for m in model.modules() if isinstance(m, Normalized)]
    return found[0].std if len(found) == 1 else None


def normalized_input_gradient(
    model: nn.Module, x: torch.Tensor, per_sample_loss: torch.Tensor, *, create_graph: bool = True
) -> torch.Tensor:
    """``grad_{x_n} sum_i loss_i``: the gradient with respect to the NORMALIZED input
    ``x_n = (x - mean) / std``, computed as ``std * grad_x`` (the chain rule through
    :class:`Normalized`'s affine map; ``std = 1`` without a wrapper). ``x`` must require grad
    and ``per_sample_loss`` must come from ``model(x)``."""
    (grad,) = torch.autograd.grad(per_sample_loss.sum(), x, create_graph=create_graph)
    std = input_std(model)
    return grad if std is None else grad * std.to(grad.dtype)


class InputGradientObjective:
    """What :class:`GradNorm` and :class:`EdgeAlign` share: the loss of the clean batch, computed
    with the input requiring grad and grad mode on, so the loss may hold input gradients taken
    with ``create_graph=True`` (double backpropagation). A subclass (a frozen dataclass) writes
    :meth:`loss`; ``config()`` lists every constructor field."""

    name: str

    def loss(
        self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """The loss given the input ``x`` (requiring grad) and its ``logits = model(x)``."""
        raise NotImplementedError

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        """:meth:`loss` on one clean batch; the logits returned are the clean ones."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            loss = self.loss(model, x, logits, y, generator)
        return ObjectiveOutput(loss, logits)

    def config(self) -> dict[str, Any]:
        """JSON-ready description (every constructor field)."""
        return objective_config(self)


@OBJECTIVES.register("gradnorm", paper="gradient-norm thesis, Sec. 4, Eq. 4.1")
@dataclass(frozen=True)
class GradNorm(InputGradientObjective):
    """Gradient norm regularization (thesis Sec. 4, Eq. 4.1; Simon-Gabriel et al. 2019, Eq. 4):

        L = lambda_CE CE(f(x), y) + w(e) lambda_GN (eps / sigma) mean_i ||grad_{x_n} CE_i||_1

    where ``x_n`` is the normalized input (the official code differentiates the network's input,
    which is normalized) and ``sigma`` the normalization std. With ``sigma=None`` the std is read
    per channel from the model's :class:`~robustlab.models.Normalized` wrapper (1 without one), so
    ``(eps / sigma) ||grad_{x_n} CE||_1 = eps ||grad_x CE||_1`` in [0, 1] pixels: the first-order
    loss increase under an L-inf perturbation of radius ``eps`` (why the thesis scales by
    ``eps / sigma``). A number reproduces the official single ``sigma`` (0.225 on ImageNet).
    The input gradient is per sample (the module docstring): the SUM of the cross-entropies is
    differentiated, then the L1 norms are averaged over the batch.

    ``w(e) = min(1, (e + 1) / warmup_epochs)`` warms ``lambda_GN`` up linearly over the first
    ``warmup_epochs`` epochs (thesis Appendix B: 5), one step per epoch through ``set_epoch``
    (called by :class:`~robustlab.train.Trainer`); 0 turns the warm-up off.

    Args:
        eps: the radius in [0, 1] pixels (thesis: 4/255 on ImageNet; house default 0.1).
        lambda_ce: weight of the cross-entropy (thesis: 0.8).
        lambda_gn: weight of the gradient-norm penalty (thesis: 1.2).
        warmup_epochs: epochs of linear warm-up of ``lambda_gn``.
        sigma: the normalization std; ``None`` reads it from the model.

    Returns the clean logits.
    """

    eps: float = 0.1
    lambda_ce: float = 0.8
    lambda_gn: float = 1.2
    warmup_epochs: int = 5
    sigma: float | None = None
    name: str = "gradnorm"
    _epoch: EpochClock = field(default_factory=EpochClock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check(self.name, "eps", self.eps)
        _check(self.name, "lambda_ce", self.lambda_ce)
        _check(self.name, "lambda_gn", self.lambda_gn)
        check_int(self.warmup_epochs, "gradnorm warmup_epochs", 0)
        if self.sigma is not None:
            _check(self.name, "sigma", self.sigma, strict=True)

    def set_epoch(self, epoch: int) -> None:
        """Move to the 0-based ``epoch`` (the trainer calls this before each epoch)."""
        self._epoch.value = int(epoch)

    def warmup_at(self, epoch: int) -> float:
        """The warm-up factor ``w(epoch)`` of ``lambda_gn``."""
        return 1.0 if self.warmup_epochs == 0 else min(1.0, (epoch + 1) / self.warmup_epochs)

    @property
    def current_lambda_gn(self) -> float:
        """``lambda_gn`` at the epoch last set by :meth:`set_epoch`."""
        return self.lambda_gn * self.warmup_at(self._epoch.value)

    def penalty(
        self, model: nn.Module, x: torch.Tensor, per_sample_ce: torch.Tensor
    ) -> torch.Tensor:
        """``(eps / sigma) mean_i ||grad_{x_n} CE_i||_1``, differentiable in the weights; ``x``
        requires grad and ``per_sample_ce`` comes from ``model(x)``."""
        grad_n = normalized_input_gradient(model, x, per_sample_ce, create_graph=True)
        if self.sigma is None:
            std = input_std(model)
            scaled = grad_n if std is None else grad_n / std.to(grad_n.dtype)
        else:
            scaled = grad_n / self.sigma
        return self.eps * scaled.abs().flatten(1).sum(dim=1).mean()

    def loss(
        self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Eq. 4.1 on one batch (no random draws)."""
        per_sample = F.cross_entropy(logits, y, reduction="none")
        loss = self.lambda_ce * per_sample.mean()
        weight = self.current_lambda_gn
        if weight > 0:
            loss = loss + weight * self.penalty(model, x, per_sample)
        return loss


def sample_classes(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One class per sample drawn from ``softmax(logits / temperature)`` (thesis Eq. 5.2), on the
    generator's device (moved to the logits')."""
    probs = F.softmax(logits.detach().float() / temperature, dim=1)
    device = generator.device if generator is not None else probs.device
    drawn = torch.multinomial(probs.to(device), 1, generator=generator)
    return drawn.squeeze(1).to(logits.device)


def cosine_alignment(grad: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean_i (1 - cos(grad_i, teacher_i))`` over flattened samples (thesis Eq. 5.1's L_cos)."""
    return (1.0 - F.cosine_similarity(grad.flatten(1), teacher.flatten(1), dim=1, eps=1e-12)).mean()


def batch_mse_alignment(grad: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``MSE(grad / rms(grad), teacher / rms(teacher))`` with one RMS over the whole batch (the
    official code's variant of Eq. 5.1)."""

    def unit(t: torch.Tensor) -> torch.Tensor:
        return t / t.pow(2).mean().sqrt().clamp_min(1e-12)

    return F.mse_loss(unit(grad), unit(teacher))


@OBJECTIVES.register("edge-align", paper="gradient-norm thesis, Sec. 5, Eq. 5.1-5.2")
@dataclass(frozen=True)
class EdgeAlign(InputGradientObjective):
    """Edge alignment of class gradients (thesis Sec. 5, Eq. 5.1-5.2):

        L = lambda_CE CE(f(x), y) + lambda_edge L_align(grad_x f(x)_t, edge(x)),
        t ~ softmax(f(x) / temperature)

    ``t`` is drawn per sample from the tempered softmax (temperature 0.5, Eq. 5.2) with the
    objective's ``generator``; the gradient of the class-``t`` logit with respect to the [0, 1]
    input is taken with ``create_graph=True`` (the SUM of the selected logits is differentiated:
    each sample gets its own gradient, see the module docstring); the teacher ``edge(x)`` is the
    oriented energy of Gaussian-derivative filters (:func:`robustlab.core.filters.oriented_energy`,
    per channel, the gradient's shape), held constant.

    ``alignment``:

    - ``"cosine"`` (default, the thesis's Eq. 5.1): ``mean_i (1 - cos(grad_i, edge_i))``; each
      sample is aligned on its own and its gradient's scale does not matter (the thesis notes the
      loss regularizes the direction only).
    - ``"batch-mse"`` (the official code): both maps are divided by their RMS over the whole
      batch, then compared by the mean squared error. One scale per batch, so this is a
      batch-level alignment: a sample whose gradient is large relative to the batch's is pulled
      toward its teacher's magnitude too, and samples trade off against each other.

    Eq. 5.1 aligns the signed gradient; ``magnitude=True`` aligns ``|grad|`` instead (the
    saliency the analysis correlates, Table 5.1), a departure offered as an option.

    Args:
        lambda_ce: weight of the cross-entropy.
        lambda_edge: weight of the alignment loss.
        temperature: the sampling temperature (0.5 in Eq. 5.2).
        alignment: ``"cosine"`` or ``"batch-mse"``.
        sigma: the Gaussian's standard deviation of the derivative filters, in pixels.
        magnitude: align the gradient's absolute value.

    Returns the clean logits.
    """

    lambda_ce: float = 1.0
    lambda_edge: float = 1.0
    temperature: float = 0.5
    alignment: Literal["cosine", "batch-mse"] = "cosine"
    sigma: float = 1.0
    magnitude: bool = False
    name: str = "edge-align"

    def __post_init__(self) -> None:
        _check(self.name, "lambda_ce", self.lambda_ce)
        _check(self.name, "lambda_edge", self.lambda_edge)
        _check(self.name, "temperature", self.temperature, strict=True)
        _check(self.name, "sigma", self.sigma, strict=True)
        if self.alignment not in ALIGNMENTS:
            raise InputError(
                f"edge-align alignment must be one of {', '.join(ALIGNMENTS)}, got {self.alignment!r}"
            )

    def alignment_loss(self, grad: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The chosen alignment of a batch of gradients with their teachers."""
        if self.magnitude:
            grad = grad.abs()
        if self.alignment == "cosine":
            return cosine_alignment(grad, teacher)
        return batch_mse_alignment(grad, teacher)

    def loss(
        self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Eq. 5.1-5.2 on one batch; the classes are drawn from ``generator``."""
        loss = self.lambda_ce * F.cross_entropy(logits, y)
        if self.lambda_edge > 0:
            t = sample_classes(logits, self.temperature, generator)
            selected = logits.gather(1, t.unsqueeze(1)).sum()
            (grad,) = torch.autograd.grad(selected, x, create_graph=True)
            with torch.no_grad():
                teacher = oriented_energy(x.detach(), self.sigma)
            loss = loss + self.lambda_edge * self.alignment_loss(grad, teacher.to(grad.dtype))
        return loss


__all__ = [
    "ALIGNMENTS",
    "EdgeAlign",
    "GradNorm",
    "InputGradientObjective",
    "batch_mse_alignment",
    "cosine_alignment",
    "input_std",
    "normalized_input_gradient",
    "sample_classes",
]
