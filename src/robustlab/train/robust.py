"""Robust training objectives (adversarial training).

``pgd-at`` is Madry et al. (2018, "Towards Deep Learning Models Resistant to Adversarial
Attacks", Sec. 2-5): minimize the cross-entropy on the last iterate of an L-inf/L2 PGD attack
started at a random point of the ball. The other robust objectives (TRADES, MART, ALP, FAT,
AWP, ...) register into the same ``OBJECTIVES`` registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import project, random_point
from ..core import InputError, ThreatModel
from .objectives import OBJECTIVES, ObjectiveOutput


def pgd_perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
    random_start: bool = True,
) -> torch.Tensor:
    """The training-time PGD: maximize cross-entropy for ``steps`` steps, return the LAST iterate.

    Unlike :class:`robustlab.attacks.PGD` (an evaluation attack that keeps the first adversarial
    point it finds and stops early), training uses the end point of the full ascent, as in
    Madry et al. (2018). The random start is the attacks' (:func:`robustlab.attacks.random_point`),
    drawn from ``generator`` (on its device; moved to ``x``'s device).
    """
    x = x.detach()
    if random_start and threat.eps > 0:
        x_adv = project(x, random_point(x, threat.norm, threat.eps, generator), threat)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
            (g,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            if threat.norm == "linf":
                step = g.sign()
            else:
                step = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
            x_adv = project(x, x_adv.detach() + step_size * step, threat)
    return x_adv.detach()


@OBJECTIVES.register("pgd-at", paper="Madry et al. 2018, Sec. 2-5")
@dataclass(frozen=True)
class PGDAT:
    """PGD adversarial training: cross-entropy on PGD examples crafted on the fly.

    Args:
        eps: radius of the threat ball in [0, 1] pixels (e.g. 0.1 for Fashion-MNIST, 8/255 CIFAR).
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD iterations per batch (10 in Madry et al. and the stride-shrinking paper).
        step_size: PGD step; default ``2.5 * eps / steps``.
        craft_in_eval: craft the attack with the model in eval mode (batch-norm uses its running
            statistics and is not updated by the attack's passes); the training step itself
            always runs in train mode.
    """

    eps: float = 0.1
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    craft_in_eval: bool = True
    name: str = "pgd-at"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InputError(f"pgd-at needs steps >= 1, got {self.steps}")
        ThreatModel(self.norm, self.eps)  # type: ignore[arg-type]  # validates

    @property
    def threat(self) -> ThreatModel:
        """The training threat model."""
        return ThreatModel(self.norm, self.eps)  # type: ignore[arg-type]

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        """Cross-entropy of ``model`` on PGD examples of ``(x, y)``."""
        alpha = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        was_training = model.training
        if self.craft_in_eval:
            model.eval()
        try:
            x_adv = pgd_perturb(model, x, y, self.threat, self.steps, alpha, generator)
        finally:
            model.train(was_training)
        logits = model(x_adv)
        return ObjectiveOutput(F.cross_entropy(logits, y), logits)

    def config(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"name": self.name, "eps": self.eps, "norm": self.norm, "steps": self.steps,
                "step_size": self.step_size, "craft_in_eval": self.craft_in_eval}
