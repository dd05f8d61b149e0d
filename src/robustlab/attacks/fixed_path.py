"""The evaluation protocol of the DCS paper (``deformable-conv-stochasticity.txt``, Algorithm 2).

For each batch: sample one inference path of the randomized model (step 4), attack that path with
PGD for ``t`` iterations (steps 5-8), sample a new path (step 9) and classify the adversarial
batch on it (step 10). Here the path is fixed with :func:`~robustlab.core.randomness.frozen`
(every random layer reuses one draw for all PGD iterations) and the verdict is the attack base
class's fresh draw, taken after the frozen context is left and
:func:`~robustlab.core.randomness.resample` is called. The attack knows random layers only
through ``core``'s protocol; it never imports a defense.

This is a transfer attack between two random paths (Sec. 3.2, Eq. 4), not an expectation over
the randomness: against a model whose random paths disagree it is much weaker than EOT-PGD
(Athalye et al., 2018, Sec. 4.3). It exists to reproduce the paper's numbers (the ``dcs-paper``
battery); an honest evaluation adds EOT attacks (the ``rand`` battery). Its results carry the
``randomized-without-eot`` warning for that reason.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.bpda import BPDAMode
from ..core.checks import check_int
from ..core.errors import InputError
from ..core.randomness import frozen, resample
from ..core.types import ThreatModel
from .base import Attack, ModelFn, RunContext
from .gradient import PGD
from .losses import LossFn
from .registry import register_attack

__all__ = ["FixedPathPGD"]


@register_attack("fixed-path-pgd", "deformable-conv-stochasticity, Alg. 2")
class FixedPathPGD(Attack):
    """PGD on one frozen random path, judged on a fresh path (the DCS paper's Algorithm 2).

    Args:
        threat: the threat model.
        steps: PGD iterations ``t`` (the paper: 20, Sec. 5.1 "Benchmarks").
        step_size: default ``eps / 4`` (the paper: 2/255 at eps 8/255).
        random_start: start from a random point of the ball (the paper: random starts).
        loss: objective to maximize (see :class:`~robustlab.attacks.GradientAttack`).
        bpda: BPDA mode for non-differentiable layers (see :class:`~robustlab.attacks.Attack`).
    """

    name = "fixed-path-pgd"
    kind = "gradient"
    supports_targets = True

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 20,
        *,
        step_size: float | None = None,
        random_start: bool = True,
        loss: str | LossFn = "ce",
        bpda: BPDAMode | None = None,
    ) -> None:
        super().__init__(threat, bpda=bpda)
        self.steps = check_int(steps, "steps", 1)
        self.step_size = threat.eps / 4 if step_size is None else float(step_size)
        self.random_start = bool(random_start)
        self._pgd = PGD(
            threat,
            steps,
            step_size=self.step_size,
            random_start=random_start,
            early_stop=False,
            loss=loss,
        )
        self._loss_name = self._pgd._loss_name

    def _run(self, ctx: RunContext) -> torch.Tensor:
        model = ctx.model.model
        if not isinstance(model, nn.Module):
            raise InputError(
                "fixed-path-pgd freezes the model's random layers; it needs an nn.Module, "
                f"got {type(model).__name__}"
            )
        with frozen(model):
            resample(model)  # step 4: a new path for this batch
            inner = RunContext(
                model=_Counted(ctx.model),
                x=ctx.x,
                y=ctx.y,
                targets=ctx.targets,
                generator=ctx.generator,
                shrink=False,
            )
            x_adv = self._pgd._run(inner)
        resample(model)  # step 9: the verdict's forward draws a new path
        return x_adv


class _Counted(ModelFn):
    """``ctx.model`` seen as deterministic (the path is frozen), its counts kept in the original."""

    def __init__(self, outer: ModelFn) -> None:
        super().__init__(outer.model, "none")
        self._outer = outer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._outer(x)

    def grad(self, loss: torch.Tensor, x: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
        return self._outer.grad(loss, x, retain_graph)
