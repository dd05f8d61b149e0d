"""Attack ensembles: AutoAttack and transfer attacks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from ..core.bpda import BPDAMode
from ..core.errors import InputError
from ..core.types import ThreatModel
from .apgd import APGD, APGDT
from .base import EOT, Attack, RunContext, enforce
from .fab import FABT
from .square import Square

__all__ = ["AutoAttack", "Transfer"]

logger = logging.getLogger(__name__)


class AutoAttack(Attack):
    """AutoAttack (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML, Sec. 4).

    Runs its attacks in order, each only on the samples every earlier attack left robust (and
    only on clean-correct samples), and keeps per sample the first adversarial point found:

    - ``"standard"``: APGD-CE, APGD-T (targeted DLR, 9 target classes), FAB-T (9 target
      classes), Square (5,000 queries); 100 iterations for the gradient attacks, one restart each.
    - ``"rand"`` (for randomized defenses): APGD-CE and APGD-DLR, each with EOT over 20 draws.

    Args:
        threat: L-inf or L2.
        version: ``"standard"`` or ``"rand"``.
        steps: iterations of APGD / APGD-T / FAB-T.
        n_target_classes: target classes of APGD-T and FAB-T.
        n_queries: Square's query budget.
        eot: draws of the ``rand`` version.
        bpda: run every sub-attack with the model's BPDA layers in this mode.
    """

    name = "autoattack"
    supports_targets = False

    def __init__(
        self,
        threat: ThreatModel,
        version: Literal["standard", "rand"] = "standard",
        *,
        steps: int = 100,
        n_target_classes: int = 9,
        n_queries: int = 5000,
        eot: int = 20,
        bpda: BPDAMode | None = None,
    ) -> None:
        super().__init__(threat, bpda=bpda)
        if version == "standard":
            attacks: tuple[Attack, ...] = (
                APGD(threat, steps, loss="ce"),
                APGDT(threat, steps, n_target_classes=n_target_classes),
                FABT(threat, steps, n_target_classes=n_target_classes),
                Square(threat, n_queries),
            )
        elif version == "rand":
            attacks = (
                APGD(threat, steps, loss="ce", grad=EOT(eot)),
                APGD(threat, steps, loss="dlr", grad=EOT(eot)),
            )
        else:
            raise InputError(f"unknown AutoAttack version {version!r}; use 'standard' or 'rand'")
        self.version = version
        self.attacks = attacks

    def __repr__(self) -> str:
        return f"AutoAttack({self.threat.norm}, eps={self.threat.eps:.4g}, {self.version})"

    def _run(self, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = ctx.x, ctx.y
        clean = ctx.clean_logits()
        x_adv, logits = x.clone(), clean.clone()
        robust = clean.argmax(dim=1) == y
        queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        logger.info(
            "AutoAttack %s: clean accuracy %.4f", self.version, float(robust.float().mean())
        )
        for attack in self.attacks:
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            sub = ctx.subset(idx)
            out = attack._run(sub)
            xa, la = out if isinstance(out, tuple) else (out, None)
            xa_raw, xa = xa, enforce(sub.x, xa.detach(), self.threat)
            if la is None or ctx.stochastic:
                la = ctx.model.predict(xa)
            else:
                changed = (xa != xa_raw).flatten(1).any(dim=1)
                if bool(changed.any()):
                    la = la.clone()
                    la[changed] = ctx.model.predict(xa[changed])
            broke = la.argmax(dim=1) != sub.y
            x_adv[idx[broke]] = xa[broke]
            logits[idx[broke]] = la[broke]
            robust[idx[broke]] = False
            if sub.queries is not None:
                queries[idx] += sub.queries
            logger.info(
                "AutoAttack after %r: robust accuracy %.4f", attack, float(robust.float().mean())
            )
        ctx.queries = queries
        return x_adv, logits


class Transfer(Attack):
    """A transfer attack: craft on a surrogate model, evaluate on the target (Papernot et al.,
    2017, "Practical Black-Box Attacks against Machine Learning"; Athalye et al., 2018, Sec. 5).

    ``run(model, x, y)`` runs ``attack`` on ``surrogate`` and reports success on ``model``. The
    pass counts are the target model's (one forward per sample); the surrogate's are not
    counted.

    Args:
        surrogate: the model the adversarial examples are crafted on.
        attack: any attack; its threat model is the transfer attack's.
    """

    name = "transfer"
    supports_targets = True

    def __init__(
        self, surrogate: nn.Module | Callable[[torch.Tensor], Any], attack: Attack
    ) -> None:
        if not isinstance(attack, Attack):
            raise InputError(f"Transfer needs an Attack to run on the surrogate, got {attack!r}")
        super().__init__(attack.threat)
        self.surrogate = surrogate
        self.attack = attack

    def __repr__(self) -> str:
        return f"Transfer({self.attack!r})"

    def _run(self, ctx: RunContext) -> torch.Tensor:
        res = self.attack.run(
            self.surrogate, ctx.x, ctx.y, targets=ctx.targets, generator=ctx.generator
        )
        return res.x_adv


def transfer_factory(
    threat: ThreatModel,
    surrogate: nn.Module | Callable[[torch.Tensor], Any] | None = None,
    attack: Attack | None = None,
    **kwargs: Any,
) -> Transfer:
    """Registry constructor: ``create_attack("transfer", threat, surrogate=m, attack=...)``;
    without ``attack``, PGD with ``kwargs`` is run on the surrogate."""
    from .gradient import PGD

    if surrogate is None:
        raise InputError("the transfer attack needs surrogate=<model>")
    if attack is None:
        attack = PGD(threat, **kwargs)
    elif kwargs:
        raise InputError(f"pass settings to the inner attack, not to Transfer: {sorted(kwargs)}")
    if attack.threat != threat:
        raise InputError(f"the inner attack's threat {attack.threat} differs from {threat}")
    return Transfer(surrogate, attack)
