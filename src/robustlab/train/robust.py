"""Robust training objectives (adversarial training), one small class each.

Every objective crafts its own training-time attack, then computes its loss; all register in
``OBJECTIVES`` (``awp`` lives in :mod:`robustlab.train.awp`):

============ ============================ =====================================================
name         paper                        loss on a batch
============ ============================ =====================================================
``pgd-at``   Madry et al. 2018            CE(adv)
``alp``      Kannan et al. 2018           CE(nat) + CE(adv) + lam * mean_ik (z_nat - z_adv)^2
``trades``   Zhang et al. 2019            CE(nat) + beta * KL(p_nat || p_adv)
``mart``     Wang et al. 2020             BCE(adv) + lam * mean_i KL(p_nat || p_adv) (1 - p_nat,y)
``mart-rcm`` the strides paper's code     the same with the log dropped and the KL swapped
``fat``      Zhang et al. 2020            CE on early-stopped ("friendly") PGD
``fast-at``  Wong et al. 2020             CE on FGSM from a uniform random start
============ ============================ =====================================================

Threat defaults follow the house plan and the stride-shrinking paper (Sec. V-A: "PGD-10"):
``eps=0.1`` L-inf (Fashion-MNIST), 10 steps of ``2.5 * eps / steps`` (Madry et al. 2018). The
original CIFAR codes use a step of 0.007 at eps 0.031 (2.26 eps / steps); pass ``step_size``
to reproduce them exactly.

Attack mode (the issue's rule): each attack runs in the mode the paper's code uses, through
:func:`attack_mode`. ``craft_in_eval=True`` (every objective but ``fast-at``) crafts with the
model in eval mode, so batch norm uses and keeps its running statistics. ``fast-at`` crafts in
train mode as Wong et al.'s code does (the attack's forward uses batch statistics), and the
running statistics are restored afterwards, so only the training forwards ever update them.

Epoch-dependent objectives (FAT's tau schedule, AWP's warmup) have ``set_epoch(epoch)``, which
:class:`~robustlab.train.Trainer` calls with the 0-based epoch before each epoch; used on its
own, such an objective is at epoch 0 until told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..core import ThreatModel, check_int, check_number
from .objectives import OBJECTIVES, ObjectiveOutput, objective_config
from .perturb import (
    NOISE_START_STD,
    ascend,
    attack_mode,
    fat_perturb,
    fgsm_rs_perturb,
    pgd_perturb,
    start_point,
)

ModelLike = Callable[[torch.Tensor], torch.Tensor]
"""A module, or a function of the input that stands for one (AWP's model at perturbed weights)."""


# ----------------------------------------------------------------------------- shared machinery
@dataclass
class EpochClock:
    """The mutable epoch an epoch-dependent objective is at (set by ``set_epoch``)."""

    value: int = 0


def _check_number(owner: str, what: str, value: float, minimum: float = 0.0) -> None:
    check_number(value, f"{owner} {what}", minimum)


class AdversarialObjective:
    """Behaviour shared by the adversarial objectives: a subclass (a frozen dataclass) writes
    :meth:`craft` (the attack) and :meth:`loss` (the training loss); ``__call__`` runs the attack
    under :func:`attack_mode` and the loss in the model's own mode. ``config()`` lists every
    constructor field, so ``create_objective(**config)`` rebuilds the objective."""

    name: str
    eps: float
    norm: str
    craft_in_eval: bool

    loss_weights: ClassVar[tuple[str, ...]] = ()
    """The fields that weigh a term of the loss; each must be a finite number >= 0."""

    def __post_init__(self) -> None:
        self._validate()
        for what in self.loss_weights:
            _check_number(self.name, what, getattr(self, what))

    @property
    def threat(self) -> ThreatModel:
        """The training threat model."""
        return ThreatModel(self.norm, self.eps)  # type: ignore[arg-type]

    @property
    def alpha(self) -> float:
        """The attack's step: ``step_size``, or ``2.5 * eps / steps`` (Madry et al. 2018)."""
        step_size: float | None = getattr(self, "step_size", None)
        steps: int = getattr(self, "steps", 1)
        return step_size if step_size is not None else 2.5 * self.eps / steps

    def _validate(self) -> None:
        self.threat  # noqa: B018  (validates norm and eps)
        check_int(getattr(self, "steps", 1), f"{self.name} steps", 1)
        step_size = getattr(self, "step_size", None)
        if step_size is not None:
            _check_number(self.name, "step_size", step_size)

    def craft(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The adversarial batch for ``(x, y)`` (called inside :func:`attack_mode`)."""
        raise NotImplementedError

    def loss(self, model: ModelLike, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        """The training loss given the clean and adversarial batches; by default cross-entropy
        on the adversarial batch, whose logits are returned (PGD-AT, FAT, fast-AT)."""
        logits = model(x_adv)
        return ObjectiveOutput(F.cross_entropy(logits, y), logits)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        """Craft the attack (model in eval mode, or in train mode with its buffers restored),
        then compute the loss in the model's own mode."""
        with attack_mode(model, self.craft_in_eval):
            x_adv = self.craft(model, x, y, generator)
        return self.loss(model, x, x_adv, y)

    def config(self) -> dict[str, Any]:
        """JSON-ready description: the name and every constructor field."""
        return objective_config(self)


# ----------------------------------------------------------------------------------- objectives
@dataclass(frozen=True)
class PGDSettings(AdversarialObjective):
    """The threat model and training attack every PGD-based objective takes (a base class).

    Args:
        eps: radius of the threat ball in [0, 1] pixels (0.1 for Fashion-MNIST, 8/255 CIFAR).
        norm: ``"linf"`` or ``"l2"``.
        steps: attack iterations per batch (10 in Madry et al. and the stride-shrinking paper).
        step_size: attack step; default ``2.5 * eps / steps``.
        craft_in_eval: craft the attack with the model in eval mode (batch-norm uses its running
            statistics and is not updated by the attack's passes).
    """

    eps: float = 0.1
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    craft_in_eval: bool = True

    start: ClassVar[str] = "uniform"
    """The attack's start (:func:`start_point`)."""

    def craft(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """PGD on the cross-entropy from :attr:`start` (:func:`pgd_perturb` for a uniform start)."""
        start = start_point(x, self.threat, self.start, generator)
        return ascend(lambda z: F.cross_entropy(model(z), y), x, start, self.threat, self.steps, self.alpha)


@OBJECTIVES.register("pgd-at", paper="Madry et al. 2018, Sec. 2-5")
@dataclass(frozen=True)
class PGDAT(PGDSettings):
    """PGD adversarial training (Madry et al. 2018, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", Sec. 2-5): cross-entropy on the last iterate of PGD from a uniform
    random start, crafted on the fly.

    Args:
        eps: radius of the threat ball in [0, 1] pixels (0.1 Fashion-MNIST, 8/255 CIFAR).
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD iterations per batch (10: Madry et al. on CIFAR; the strides paper, Sec. V-A).
        step_size: PGD step; ``None`` is ``2.5 * eps / steps`` (Madry et al.).
        craft_in_eval: craft in eval mode (see :func:`attack_mode`).

    The logits returned are the adversarial batch's (the running training accuracy is robust
    accuracy on the training attack).
    """

    name: str = "pgd-at"


@OBJECTIVES.register("alp", paper="Kannan et al. 2018")
@dataclass(frozen=True)
class ALP(PGDSettings):
    """Adversarial logit pairing (Kannan, Kurakin & Goodfellow 2018, "Adversarial Logit
    Pairing"): ``CE(z_nat, y) + CE(z_adv, y) + lam * mean_{i,k} (z_nat - z_adv)^2``.

    The pairing term is the squared L2 distance of the logits averaged over samples and classes
    (``F.mse_loss``); ``lam = 0.5`` and the unit weights of both cross-entropies are the
    stride-shrinking paper's code (the rcm repository, ``Major/ALP.py``: ``--leverage 0.5``,
    ``loss_nat + loss_adv + leverage * mse_loss``), which produced its Table V ALP rows (Kannan
    et al. pair the logits under an L2 loss; the normalization and weight here are that code's).
    The attack is PGD on the cross-entropy from a uniform start, crafted in eval mode (that code).

    Args:
        eps, norm, steps, step_size, craft_in_eval: as :class:`PGDAT`.
        lam: weight of the pairing term.

    Returns the clean logits.
    """

    lam: float = 0.5
    name: str = "alp"
    loss_weights: ClassVar[tuple[str, ...]] = ("lam",)

    def loss(self, model: ModelLike, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        """Both cross-entropies plus the weighted logit pairing."""
        logits_nat = model(x)
        logits_adv = model(x_adv)
        loss = (F.cross_entropy(logits_nat, y) + F.cross_entropy(logits_adv, y)
                + self.lam * F.mse_loss(logits_adv, logits_nat))
        return ObjectiveOutput(loss, logits_nat)


@OBJECTIVES.register("trades", paper="Zhang et al. 2019, Sec. 4")
@dataclass(frozen=True)
class TRADES(PGDSettings):
    """TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
    Accuracy", Sec. 4, Alg. 1): ``CE(z_nat, y) + beta * KL(p_nat || p_adv)``, the KL averaged
    over the batch (``batchmean``).

    The attack maximizes ``KL(p_nat || p_adv)`` (summed over the batch; ``p_nat`` from the
    eval-mode clean forward, held fixed) from ``x + 0.001 N(0, I)``, crafted in eval mode, as the
    official code does. ``beta = 6`` (the paper's CIFAR-10 setting, 1/lambda = 6, and the
    official code's default); ``beta = 0`` is plain cross-entropy training.

    Args:
        eps, norm, steps, step_size, craft_in_eval: as :class:`PGDAT`.
        beta: weight of the robust (KL) term.

    Returns the clean logits.
    """

    beta: float = 6.0
    name: str = "trades"
    loss_weights: ClassVar[tuple[str, ...]] = ("beta",)

    def craft(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Maximize ``KL(p_nat || p_adv)`` from the noise start."""
        with torch.no_grad():
            p_nat = F.softmax(model(x), dim=1)

        def kl(z: torch.Tensor) -> torch.Tensor:
            return F.kl_div(F.log_softmax(model(z), dim=1), p_nat, reduction="sum")

        start = start_point(x, self.threat, "normal", generator)
        return ascend(kl, x, start, self.threat, self.steps, self.alpha)

    def loss(self, model: ModelLike, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        """Clean cross-entropy plus ``beta`` times the batch-mean KL."""
        logits_nat = model(x)
        logits_adv = model(x_adv)
        robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="batchmean")
        return ObjectiveOutput(F.cross_entropy(logits_nat, y) + self.beta * robust, logits_nat)


def _top_wrong(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``argmax_{k != y} logits_k`` per sample (the most likely wrong class)."""
    return logits.detach().scatter(1, y.unsqueeze(1), float("-inf")).argmax(dim=1)


def mart_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """MART's objective (Wang et al. 2020, Sec. 3), averaged over the batch::

        CE(p_adv, y) - log(1 - max_{k != y} p_adv,k) + lam * KL(p_nat || p_adv) * (1 - p_nat,y)

    ``log(1 - p_k)`` is computed exactly as ``logsumexp_{j != k} z_j - logsumexp_j z_j`` (no
    epsilon, unlike the official code's ``log(1.0001 - p + 1e-12)``); gradients flow through the
    weight ``1 - p_nat,y`` as in the official code.
    """
    log_p_adv = F.log_softmax(logits_adv, dim=1)
    others = logits_adv.scatter(1, _top_wrong(logits_adv, y).unsqueeze(1), float("-inf"))
    log_not_top_wrong = torch.logsumexp(others, dim=1) - torch.logsumexp(logits_adv, dim=1)
    boosted = F.nll_loss(log_p_adv, y) - log_not_top_wrong.mean()
    log_p_nat = F.log_softmax(logits_nat, dim=1)
    p_nat = log_p_nat.exp()
    kl = (p_nat * (log_p_nat - log_p_adv)).sum(dim=1)
    weight = 1.0 - p_nat.gather(1, y.unsqueeze(1)).squeeze(1)
    return boosted + lam * (kl * weight).mean()


def mart_rcm_loss(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """MART as written in the stride-shrinking paper's code (rcm repository,
    ``MART/src/loss_zoo.py``), averaged over the batch::

        CE(p_adv, y) - (1 - max_{k != y} p_adv,k) + lam * KL(p_adv || p_nat) * (1 - p_nat,y)

    Two departures from :func:`mart_loss`: the boosted term has no log (that code passes
    ``1.0001 - p + 1e-12`` to ``nll_loss`` where the paper takes its log; the constants only
    shift the loss), and the KL's arguments are swapped (``kl_div(log p_nat, p_adv)``).
    """
    p_adv = F.softmax(logits_adv, dim=1)
    top_wrong = p_adv.gather(1, _top_wrong(logits_adv, y).unsqueeze(1)).squeeze(1)
    boosted = F.cross_entropy(logits_adv, y) - (1.0 - top_wrong).mean()
    log_p_nat = F.log_softmax(logits_nat, dim=1)
    kl = (p_adv * (F.log_softmax(logits_adv, dim=1) - log_p_nat)).sum(dim=1)
    weight = 1.0 - log_p_nat.exp().gather(1, y.unsqueeze(1)).squeeze(1)
    return boosted + lam * (kl * weight).mean()


@OBJECTIVES.register("mart", paper="Wang et al. 2020, Sec. 3")
@dataclass(frozen=True)
class MART(PGDSettings):
    """Misclassification-aware adversarial training (Wang et al. 2020, "Improving Adversarial
    Robustness Requires Revisiting Misclassified Examples", Sec. 3): the paper's form,
    :func:`mart_loss` (boosted cross-entropy with its log term, ``KL(p_nat || p_adv)`` weighted
    by ``1 - p_nat,y``). This is the default MART; ``mart-rcm`` is the strides paper's variant.

    The attack is PGD on the cross-entropy from ``x + 0.001 N(0, I)``, crafted in eval mode (the
    official code). ``lam = 6`` is the official code's ``--beta`` default (its WRN-34-10 script;
    its ResNet-18 script uses 5).

    Args:
        eps, norm, steps, step_size, craft_in_eval: as :class:`PGDAT`.
        lam: weight of the misclassification-aware KL term.

    Returns the clean logits.
    """

    lam: float = 6.0
    name: str = "mart"

    start: ClassVar[str] = "normal"
    loss_weights: ClassVar[tuple[str, ...]] = ("lam",)

    def loss_from_logits(self, logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss given both batches' logits (:func:`mart_loss`)."""
        return mart_loss(logits_nat, logits_adv, y, self.lam)

    def loss(self, model: ModelLike, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        """:meth:`loss_from_logits` on the clean and adversarial forwards."""
        logits_nat = model(x)
        logits_adv = model(x_adv)
        return ObjectiveOutput(self.loss_from_logits(logits_nat, logits_adv, y), logits_nat)


@OBJECTIVES.register("mart-rcm", paper="Wang et al. 2020, as in the strides paper's code")
@dataclass(frozen=True)
class MARTRCM(MART):
    """MART as the stride-shrinking paper's code (the rcm repository, ``MART/``) trains it, for
    reproducing its Table V MART rows: :func:`mart_rcm_loss` (the boosted term without its log,
    ``KL(p_adv || p_nat)`` instead of ``KL(p_nat || p_adv)``). Not the default MART (``mart``).

    The attack is that code's PGD on the cross-entropy from a uniform start, crafted in eval mode;
    ``lam = 5`` is that code's ``--leverage`` default for MART.
    """

    lam: float = 5.0
    name: str = "mart-rcm"

    start: ClassVar[str] = "uniform"

    def loss_from_logits(self, logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss given both batches' logits (:func:`mart_rcm_loss`)."""
        return mart_rcm_loss(logits_nat, logits_adv, y, self.lam)


@OBJECTIVES.register("fat", paper="Zhang et al. 2020, Alg. 1")
@dataclass(frozen=True)
class FAT(PGDSettings):
    """Friendly adversarial training (Zhang et al. 2020, "Attacks Which Do Not Kill Training
    Make Adversarial Learning Stronger", Alg. 1): cross-entropy on early-stopped PGD
    (:func:`fat_perturb`), crafted in eval mode from a uniform start, as the official code does.

    The budget ``tau`` grows during training: at 0-based epoch ``e`` it is
    ``tau + #{m in tau_milestones : e >= m}`` (:meth:`tau_at`). The defaults are the official
    code's dynamic tau for its 120-epoch CIFAR run: 0 for epochs 1-50, 1 for 51-90, 2 after
    (``tau=0, tau_milestones=(50, 90)``); shorter runs should scale the milestones. ``omega =
    0.001`` is that code's per-step Gaussian noise.

    Args:
        eps, norm, steps, step_size, craft_in_eval: as :class:`PGDAT` (``steps`` is the maximum
            number of PGD steps, K).
        tau: the budget at epoch 0.
        tau_milestones: 0-based epochs at which the budget grows by one.
        omega: standard deviation of the noise added at each step.

    The logits returned are the adversarial batch's (as :class:`PGDAT`).
    """

    tau: int = 0
    tau_milestones: tuple[int, ...] = (50, 90)
    omega: float = 0.001
    name: str = "fat"
    _epoch: EpochClock = field(default_factory=EpochClock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate()
        object.__setattr__(self, "tau_milestones", tuple(self.tau_milestones))
        for value, what in [(self.tau, "tau"), *((m, "tau milestone") for m in self.tau_milestones)]:
            check_int(value, f"fat {what}", 0)
        _check_number(self.name, "omega", self.omega)

    def set_epoch(self, epoch: int) -> None:
        """Move to the 0-based ``epoch`` (the trainer calls this before each epoch)."""
        self._epoch.value = int(epoch)

    def tau_at(self, epoch: int) -> int:
        """The early-stop budget at 0-based ``epoch``."""
        return self.tau + sum(epoch >= m for m in self.tau_milestones)

    @property
    def current_tau(self) -> int:
        """The budget at the epoch last set by :meth:`set_epoch`."""
        return self.tau_at(self._epoch.value)

    def craft(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Early-stopped PGD with the current budget."""
        x_adv, _ = fat_perturb(model, x, y, self.threat, self.steps, self.alpha, self.current_tau,
                               generator, omega=self.omega)
        return x_adv



@OBJECTIVES.register("fast-at", paper="Wong et al. 2020, Alg. 3")
@dataclass(frozen=True)
class FastAT(AdversarialObjective):
    """Fast adversarial training (Wong, Rice & Kolter 2020, "Fast is better than free", Alg. 3):
    cross-entropy on FGSM from a uniform random start (:func:`fgsm_rs_perturb`), with a step of
    ``step_factor * eps``; ``step_factor = 1.25`` is the paper's choice (alpha = 1.25 eps).

    Wong et al.'s code crafts in train mode, so ``craft_in_eval=False`` by default: the attack's
    forward uses batch statistics and the running statistics are restored afterwards
    (:func:`attack_mode`). The paper pairs it with a cyclic learning rate (``schedule="cyclic"``).

    Args:
        eps, norm: the threat ball.
        step_factor: the FGSM step in units of ``eps``.
        craft_in_eval: craft in eval mode instead.

    The logits returned are the adversarial batch's (as :class:`PGDAT`).
    """

    eps: float = 0.1
    norm: str = "linf"
    step_factor: float = 1.25
    craft_in_eval: bool = False
    name: str = "fast-at"
    loss_weights: ClassVar[tuple[str, ...]] = ("step_factor",)

    @property
    def alpha(self) -> float:
        """The FGSM step, ``step_factor * eps``."""
        return self.step_factor * self.eps

    def craft(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """FGSM from a uniform start (:func:`fgsm_rs_perturb`)."""
        return fgsm_rs_perturb(model, x, y, self.threat, self.alpha, generator)



__all__ = [
    "ALP",
    "FAT",
    "MART",
    "MARTRCM",
    "NOISE_START_STD",
    "PGDAT",
    "TRADES",
    "AdversarialObjective",
    "EpochClock",
    "FastAT",
    "ascend",
    "attack_mode",
    "fat_perturb",
    "fgsm_rs_perturb",
    "mart_loss",
    "mart_rcm_loss",
    "pgd_perturb",
    "start_point",
]
