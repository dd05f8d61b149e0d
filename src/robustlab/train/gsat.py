"""Gradient-Selective Adversarial Training (``deformable-conv-stochasticity.txt``, Sec. 4.4,
Algorithm 1, Eq. 13).

For each batch the attack is crafted on one sampled inference path ``h_1`` (Algorithm 1, steps
6-10: one deformed kernel per DCS layer, kept for every PGD iteration: here ``with frozen(model)``);
the positions that path used are the attacked points ``X^s`` (step 7). The weights are then
updated on a path drawn from the complement: every DCS layer resamples its ``n`` positions among
the window positions its attacked kernel did not use (step 11, "Set points in X^s as 0 and
re-sample"; Eq. 13: ``h_2 in C_H h_1``), so the training path never contains an attacked
position. Plain adversarial training of a DCS model (the paper's "Normal AT" ablation, Table 3)
is ``pgd-at`` on the converted model.

The attack is PGD from a uniform random start on the cross-entropy, returning its last iterate
and crafted in eval mode, as :class:`~robustlab.train.PGDAT`. The paper's CIFAR settings (Sec.
5.1) are ``eps=8/255``, ``step_size=2/255``, ``steps=7``; the defaults are the house's (as every
objective here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import InputError
from ..core.randomness import frozen, resample
from ..defenses.dcs import dcs_layers, excluding_paths
from .callbacks import Callback
from .objectives import OBJECTIVES, ObjectiveOutput
from .robust import PGDSettings, attack_mode


@OBJECTIVES.register("gsat", paper="deformable-conv-stochasticity, Sec. 4.4, Alg. 1")
@dataclass(frozen=True)
class GSAT(PGDSettings):
    """Gradient-selective adversarial training (Sec. 4.4, Algorithm 1): PGD crafted on one
    frozen DCS path, cross-entropy on the adversarial batch through a fresh path that avoids
    every attacked position.

    Args:
        eps, norm, steps, step_size, craft_in_eval: as :class:`~robustlab.train.PGDAT`.

    The logits returned are the adversarial batch's on the training path.

    Raises:
        InputError: when the model has no DCS layer (use ``convert_dcs`` first).
    """

    name: str = "gsat"

    def attack_path(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Craft the adversarial batch on one sampled path (Algorithm 1, steps 5-10) and return
        it with the positions each DCS layer used on that path (``X^s``, step 7)."""
        layers = dcs_layers(model)
        if not layers:
            raise InputError(
                f"gsat trains DCS models; {type(model).__name__} has no RandomKernelConv2d "
                "(convert it with robustlab.defenses.convert_dcs)"
            )
        with frozen(model), attack_mode(model, self.craft_in_eval):
            x_adv = self.craft(model, x, y, generator)
            attacked = []
            for layer in layers:
                if layer.last_positions is None:
                    raise InputError(
                        f"a DCS layer of {type(model).__name__} was not run by the forward"
                    )
                attacked.append(layer.last_positions.detach().clone())
        return x_adv, attacked

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        """Craft on one path, then train on a resampled path that excludes the attacked points."""
        x_adv, attacked = self.attack_path(model, x, y, generator)
        with excluding_paths(model, attacked):
            resample(model)  # step 11: a new kernel for each DCS layer
            logits = model(x_adv)
        return ObjectiveOutput(F.cross_entropy(logits, y), logits)


class ResampleEachBatch(Callback):
    """Call :func:`~robustlab.core.randomness.resample` on the trained model after every batch,
    so DCS layers built with ``redraw="batch"`` draw one kernel per training batch (Algorithm 1,
    step 6) and keep it for the attack and the update of that batch."""

    def on_batch_end(self, trainer: Any, step: int, loss: float) -> None:
        """Resample the trainer's model."""
        resample(trainer.model)


__all__ = ["GSAT", "ResampleEachBatch"]
