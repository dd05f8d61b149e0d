"""Per-sample attack objectives, all to be *maximized* by an attack.

Each loss maps ``(logits, y, targets)`` to a ``(N,)`` tensor. With ``targets=None`` it is the
untargeted version (push away from ``y``); with targets, the targeted one (pull toward
``targets``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core.errors import InputError
from ..core.registry import Registry

__all__ = ["LOSSES", "LossFn", "ce_loss", "cw_loss", "dlr_loss", "get_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

LOSSES: Registry[LossFn] = Registry("loss")


def _other_max(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Largest logit among the classes other than ``cls``."""
    masked = logits.scatter(1, cls.unsqueeze(1), float("-inf"))
    return masked.amax(dim=1)


def _true(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, cls.unsqueeze(1)).squeeze(1)


def ce_loss(
    logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy: ``CE(z, y)`` untargeted, ``-CE(z, t)`` targeted (Madry et al., 2018)."""
    if targets is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, targets, reduction="none")


def cw_loss(
    logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """The Carlini-Wagner margin on logits (Carlini & Wagner, 2017, Sec. V.A, f_6).

    Untargeted: ``max_{j != y} z_j - z_y``; targeted: ``z_t - max_{j != t} z_j``. Positive
    exactly when the attack has succeeded.
    """
    if targets is None:
        return _other_max(logits, y) - _true(logits, y)
    return _true(logits, targets) - _other_max(logits, targets)


def dlr_loss(
    logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein, 2020, "Reliable evaluation of adversarial
    robustness with an ensemble of diverse parameter-free attacks", Sec. 3.2).

    Untargeted: ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``; targeted:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, where ``z_pi`` are the sorted logits. Both
    are invariant to shifting and scaling the logits. Needs at least 3 (targeted: 4) classes.
    """
    k = logits.shape[1]
    need = 3 if targets is None else 4
    if k < need:
        raise InputError(f"the DLR loss needs at least {need} classes, the model has {k}")
    top = logits.topk(need, dim=1).values
    z_y = _true(logits, y)
    if targets is None:
        return -(z_y - _other_max(logits, y)) / (top[:, 0] - top[:, 2] + 1e-12)
    z_t = _true(logits, targets)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


LOSSES.register("ce", ce_loss, paper="Madry et al. 2018")
LOSSES.register("cw", cw_loss, paper="Carlini & Wagner 2017, Sec. V.A")
LOSSES.register("dlr", dlr_loss, paper="Croce & Hein 2020, Sec. 3.2")


def get_loss(loss: str | LossFn) -> LossFn:
    """A loss by registry name (``ce``, ``cw``, ``dlr``), or the callable itself."""
    if isinstance(loss, str):
        return LOSSES.get(loss)
    if callable(loss):
        return loss
    raise InputError(f"loss must be a name ({', '.join(LOSSES.names())}) or a callable")
