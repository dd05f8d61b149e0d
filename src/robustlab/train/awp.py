"""Adversarial weight perturbation (Wu, Xia & Wang 2020, "Adversarial Weight Perturbation Helps
Robust Generalization", Sec. 4, Alg. 1) on top of PGD-AT or TRADES.

Each step: craft the base objective's adversarial batch; take one ascent step of the base loss
on the weights, layer by layer, ``v_l = ||w_l|| * g_l / ||g_l||`` (``g_l`` the gradient of the
base loss for the weight matrix or kernel ``w_l``; every parameter with more than one dimension,
as the official ``diff_in_weights`` does for weights); compute the base loss at ``w + gamma * v``
and let the optimizer apply that gradient to ``w``.

How this differs in form, not in gradient, from the official code: the official code copies the
model into a proxy, steps the proxy's SGD on ``-loss``, adds ``gamma * v`` into the model's
weights, trains, and subtracts ``gamma * v`` again after ``optimizer.step()``. Here the model's
weights are never modified: both passes run through :func:`torch.func.functional_call`, the
ascent pass on detached weights and copies of the buffers (so batch-norm statistics see only the
training forward, as with the official proxy), the training pass on ``w + gamma * v`` with ``v``
held constant, so ``d loss(w + gamma v) / dw`` is exactly the gradient at the perturbed point.
No restore hook is needed and an exception can never leave perturbed weights behind. One
consequence: weight decay (and AdamW's decoupled decay) is computed at ``w``, not at
``w + gamma * v`` as in the official code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..core import InputError, check_int, check_number
from .objectives import OBJECTIVES, ObjectiveOutput
from .robust import PGDAT, TRADES, EpochClock, attack_mode

_EPS = 1e-20

AWP_DEFAULTS: dict[str, tuple[float, int]] = {"pgd-at": (0.01, 0), "trades": (0.005, 10)}
"""``base -> (gamma, warmup)``: the official code's defaults (``AT_AWP/train_cifar10.py``:
``--awp-gamma 0.01 --awp-warmup 0``; ``TRADES_AWP/train_trades_cifar.py``: ``0.005``, ``10``),
which the stride-shrinking paper's code (rcm ``AWP/AT.py``, ``AWP/TRADES.py``) keeps."""


@OBJECTIVES.register("awp", paper="Wu et al. 2020, Sec. 4, Alg. 1")
@dataclass(frozen=True)
class AWP:
    """Adversarial weight perturbation on top of ``pgd-at`` or ``trades`` (see the module
    docstring for the computation and how it differs from the official code).

    Args:
        base: ``"pgd-at"`` (AT-AWP) or ``"trades"`` (TRADES-AWP).
        gamma: relative size of the weight perturbation; ``None`` is the base's default
            (:data:`AWP_DEFAULTS`: 0.01 for AT, 0.005 for TRADES).
        warmup: epochs trained with the plain base objective before the perturbation starts
            (0-based epochs ``< warmup``; the trainer reports the epoch through
            :meth:`set_epoch`); ``None`` is the base's default (0 for AT, 10 for TRADES).
        eps, norm, steps, step_size, craft_in_eval: the base's attack (:class:`PGDAT`).
        beta: TRADES' weight (``None`` is 6, TRADES' default); only with ``base="trades"``.

    The logits returned are the base's, computed at the perturbed weights.
    """

    base: str = "pgd-at"
    gamma: float | None = None
    warmup: int | None = None
    eps: float = 0.1
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    beta: float | None = None
    craft_in_eval: bool = True
    name: str = "awp"
    inner: PGDAT | TRADES = field(init=False, repr=False, compare=False)
    _epoch: EpochClock = field(default_factory=EpochClock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.base not in AWP_DEFAULTS:
            raise InputError(f"awp's base must be one of {', '.join(AWP_DEFAULTS)}, got {self.base!r}")
        gamma, warmup = AWP_DEFAULTS[self.base]
        if self.gamma is None:
            object.__setattr__(self, "gamma", gamma)
        if self.warmup is None:
            object.__setattr__(self, "warmup", warmup)
        check_number(self.gamma, "awp gamma", 0)
        check_int(self.warmup, "awp warmup", 0)
        threat = {"eps": self.eps, "norm": self.norm, "steps": self.steps, "step_size": self.step_size,
                  "craft_in_eval": self.craft_in_eval}
        inner: PGDAT | TRADES
        if self.base == "trades":
            if self.beta is None:
                object.__setattr__(self, "beta", TRADES.beta)
            inner = TRADES(beta=self.beta, **threat)  # type: ignore[arg-type]
        else:
            if self.beta is not None:
                raise InputError(f"beta applies to awp's base 'trades' only, not {self.base!r}")
            inner = PGDAT(**threat)  # type: ignore[arg-type]
        object.__setattr__(self, "inner", inner)

    def set_epoch(self, epoch: int) -> None:
        """Move to the 0-based ``epoch`` (the trainer calls this before each epoch)."""
        self._epoch.value = int(epoch)

    @property
    def active(self) -> bool:
        """Whether the current epoch is past the warmup (weights are perturbed)."""
        assert self.warmup is not None
        return self._epoch.value >= self.warmup

    def perturbation(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``v``: per parameter with more than one dimension, ``||w|| * g / ||g||`` where ``g``
        is the gradient of the base loss at the current weights (one ascent step, normalized
        layer by layer). The model's weights, buffers and ``.grad`` are left untouched."""
        weights = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()
                   if p.requires_grad and p.dim() > 1}
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        state = {**weights, **buffers}

        def proxy(z: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = functional_call(model, state, (z,))
            return out

        with torch.enable_grad():
            loss = self.inner.loss(proxy, x, x_adv, y).loss
            grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
        out: dict[str, torch.Tensor] = {}
        for (n, w), g in zip(weights.items(), grads, strict=True):
            if g is None:
                continue
            out[n] = (w.detach().norm() / (g.norm() + _EPS)) * g.detach()
        return out

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        """The base's attack, then the base's loss at ``w + gamma * v`` (at ``w`` during warmup)."""
        inner = self.inner
        with attack_mode(model, inner.craft_in_eval):
            x_adv = inner.craft(model, x, y, generator)
        if not self.active or not self.gamma:  # warmup, or a zero step: the base's update exactly
            return inner.loss(model, x, x_adv, y)
        v = self.perturbation(model, x, x_adv, y)
        gamma = float(self.gamma)
        perturbed = {n: p + gamma * v[n] for n, p in model.named_parameters() if n in v}

        def at_perturbed(z: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = functional_call(model, perturbed, (z,))
            return out

        return inner.loss(at_perturbed, x, x_adv, y)

    def config(self) -> dict[str, Any]:
        """JSON-ready description (defaults resolved)."""
        return {"name": self.name, "base": self.base, "gamma": self.gamma, "warmup": self.warmup,
                "eps": self.eps, "norm": self.norm, "steps": self.steps, "step_size": self.step_size,
                "beta": self.beta, "craft_in_eval": self.craft_in_eval}


__all__ = ["AWP", "AWP_DEFAULTS"]
