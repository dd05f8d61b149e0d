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
from .base import EOT, Attack, RunContext, Verdict, model_fn
from .checks import EvalWarning, probability_warning
from .fab import FABT
from .registry import register_attack
from .sequence import run_sequence, sequence_warnings
from .square import AUTOATTACK_SQUARE, Square

__all__ = ["AutoAttack", "Transfer", "autoattack_rand", "transfer_factory"]

logger = logging.getLogger(__name__)


@register_attack("autoattack", "Croce & Hein 2020, Sec. 4")
class AutoAttack(Attack):
    """AutoAttack (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML, Sec. 4).

    Runs its attacks in order with :func:`~robustlab.attacks.sequence.run_sequence`, the loop
    the battery runner uses too, under the one verdict rule (:mod:`~robustlab.attacks.verdict`):
    each attack proposes its points to a per-sample incumbent that only gets worse for the
    model, and the incumbent is judged on fresh draws at the end. Nested in a battery it
    returns its incumbents, which the battery proposes to its own, so a direct and a nested
    run agree:

    - ``"standard"``: APGD-CE, APGD-T (targeted DLR, 9 target classes), FAB-T (9 target
      classes), Square (5,000 queries, ``p_init`` 0.8, no schedule rescaling); 100 iterations
      for the gradient attacks, one restart each: the reference settings.
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
    kind = "ensemble"
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
                APGD(threat, steps, loss="ce", bpda=bpda),
                APGDT(threat, steps, n_target_classes=n_target_classes, bpda=bpda),
                FABT(threat, steps, n_target_classes=n_target_classes, bpda=bpda),
                Square(threat, **{**AUTOATTACK_SQUARE, "n_queries": n_queries}),
            )
        elif version == "rand":
            attacks = (
                APGD(threat, steps, loss="ce", grad=EOT(eot), bpda=bpda),
                APGD(threat, steps, loss="dlr", grad=EOT(eot), bpda=bpda),
            )
        else:
            raise InputError(f"unknown AutoAttack version {version!r}; use 'standard' or 'rand'")
        self.version = version
        self.attacks = attacks

    def __repr__(self) -> str:
        return f"AutoAttack({self.threat.norm}, eps={self.threat.eps:.4g}, {self.version})"

    @property
    def expects_randomness(self) -> bool:
        return any(a.expects_randomness for a in self.attacks)

    def _run(self, ctx: RunContext) -> torch.Tensor:
        """The sequence's incumbents alone (AutoAttack nested in a battery, or run on a
        transfer surrogate), chosen under ``ctx``'s verdict like a direct run's; the outer
        sequence proposes them to its own incumbent, so nesting never changes the rule."""
        out = run_sequence(self.attacks, ctx.model, ctx.x, ctx.y, verdict=ctx.verdict,
                           generator=lambda i: ctx.generator, shrink=ctx.shrink, final=False,
                           shared=ctx.shared)
        return out.x_adv

    def _execute(
        self, ctx: RunContext, verdict: Verdict
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[EvalWarning]]:
        out = run_sequence(self.attacks, ctx.model, ctx.x, ctx.y, verdict=verdict,
                           generator=lambda i: ctx.generator, shrink=ctx.shrink)
        queries = torch.zeros(ctx.x.shape[0], dtype=torch.long, device=ctx.x.device)
        for attack, stage in zip(self.attacks, out.stages, strict=True):
            logger.info("AutoAttack after %r: %d broken of %d attacked", attack,
                        int(stage.broken.sum()), int(stage.seen.sum()))
            if stage.queries is not None:
                queries += stage.queries
        ctx.queries = queries
        found = sequence_warnings(self.attacks, [int(s.broken.sum()) for s in out.stages],
                                  [int(s.seen.sum()) for s in out.stages])
        prob = probability_warning(out.probability_rows, ctx.x.shape[0])
        return out.x_adv, out.p_robust, out.logits, [*found, *([prob] if prob else [])]


@register_attack("autoattack-rand", "Croce & Hein 2020", builds=AutoAttack)
def autoattack_rand(threat: ThreatModel, **kwargs: Any) -> Attack:
    """AutoAttack's version for randomized defenses: APGD-CE and APGD-DLR with EOT over 20 draws."""
    return AutoAttack(threat, "rand", **kwargs)


class Transfer(Attack):
    """A transfer attack: craft on a surrogate model, evaluate on the target (Papernot et al.,
    2017, "Practical Black-Box Attacks against Machine Learning"; Athalye et al., 2018, Sec. 5).

    ``run(model, x, y)`` runs ``attack``'s search on ``surrogate`` with its whole budget
    (``full_budget``: no early stop, whatever attack it wraps): the point that maximizes the
    loss on the surrogate, not the first one across the surrogate's boundary, which rarely
    carries over to the target. The target's verdict judges the result. The pass counts are
    the target model's (none in the search); the surrogate's are not counted.

    Args:
        surrogate: the model the adversarial examples are crafted on.
        attack: any attack; its threat model is the transfer attack's.
    """

    name = "transfer"
    kind = "transfer"
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

    @property
    def expects_randomness(self) -> bool:
        return True  # the target's gradients are never used

    def _run(self, ctx: RunContext) -> torch.Tensor:
        surrogate = model_fn(self.surrogate, ctx.x)
        inner = RunContext(model=surrogate, x=ctx.x, y=ctx.y, targets=ctx.targets,
                           generator=ctx.generator, shrink=False)
        return self.attack.perturb(inner)


@register_attack("transfer", "Papernot et al. 2017", builds=Transfer)
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
