"""The attack base class, its result and its run context.

Following foolbox's and torchattacks' design, the base class owns the rules every attack must
keep: it validates inputs, counts model evaluations, projects the result onto the eps-ball and
into [0, 1] (and asserts both), and decides success. A subclass writes only its search in
:meth:`Attack._run`.

The model wrapper lives in :mod:`.model`, the gradient estimators in :mod:`.estimators`, the
verdict rule in :mod:`.verdict` and the threat geometry in :mod:`robustlab.core.geometry`; their
names are re-exported here for code that imports them from ``base``.

Counting convention: ``forward_passes`` and ``backward_passes`` count *image evaluations* of
the search, i.e. the sum over model calls of the batch size of each call (an attack that stops
attacking broken samples is charged only for the samples it still evaluates). A forward through
the model and a backward of a loss through it to the input each count once per image; EOT with
``n`` draws counts ``n`` of each. The verdict's forwards and the randomness check are counted
apart, in ``verdict_passes``.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.bpda import BPDA_MODES, BPDAMode, bpda
from ..core.checks import check_images, check_labels
from ..core.errors import InputError
from ..core.geometry import (
    Ball,
    batch_view,
    enforce,
    in_ball,
    linf_bounds,
    lp_norm,
    project,
    random_point,
)
from ..core.types import ThreatModel
from .checks import (
    EvalWarning,
    gradient_warnings,
    late_randomness_warning,
    merge_warnings,
    randomness_warnings,
    train_mode_warning,
)
from .estimators import EOT, GradEstimate, Gradient, GradientEstimator, Objective, Prediction
from .model import LateRandomness, ModelFn, logits_of, model_fn
from .verdict import Badness, Incumbent, IncumbentView, Verdict, badness_of

__all__ = [
    "EOT",
    "Attack",
    "AttackResult",
    "Ball",
    "GradEstimate",
    "Gradient",
    "GradientEstimator",
    "LateRandomness",
    "ModelFn",
    "Objective",
    "Pick",
    "Prediction",
    "RunContext",
    "Verdict",
    "batch_view",
    "enforce",
    "in_ball",
    "logits_of",
    "linf_bounds",
    "lp_norm",
    "model_fn",
    "project",
    "random_point",
    "runner_up_targets",
    "select_targets",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackResult:
    """The outcome of :meth:`Attack.run`.

    Attributes:
        x_adv: adversarial inputs, detached, in [0, 1] and inside the threat ball (the computed
            ``lp_norm(x_adv - x)`` is ``<= eps`` with no rounding tolerance).
        success: per-sample bool, ``p_robust < 0.5``: untargeted ``argmax != y``, targeted
            ``argmax == target`` on a deterministic model; on a randomized one, most fresh
            draws count ``x_adv`` as a success.
        logits: the final verdict's outputs, averaged over its draws.
        forward_passes: image forward evaluations of the search (see the module docstring).
        backward_passes: image backward evaluations of the search.
        queries: per-sample forward queries, for score-based attacks (Square); else ``None``.
        attack: name of the attack that produced the result.
        randomness: ``"protocol"``, ``"detected"`` or ``"none"`` (see :func:`model_fn`).
        verdict_passes: image forwards of the verdict and the randomness check.
        warnings: the sanity checks' findings (:mod:`robustlab.attacks.checks`).
        p_robust: per sample, the probability that a draw does not count ``x_adv`` as a
            success (untargeted: classifies it correctly), estimated on fresh draws after
            ``x_adv`` was chosen (:mod:`~robustlab.attacks.verdict`); 0/1 on a deterministic
            model. ``None`` only for results built by hand: ``~success`` then stands for it.
        verdict: the verdict's settings as run (``draws``: k; ``ensemble``).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    logits: torch.Tensor
    forward_passes: int
    backward_passes: int
    queries: torch.Tensor | None = None
    attack: str = ""
    randomness: str = "none"
    verdict_passes: int = 0
    warnings: tuple[EvalWarning, ...] = ()
    p_robust: torch.Tensor | None = None
    verdict: Mapping[str, int] = field(default_factory=dict)

    @property
    def robust(self) -> torch.Tensor:
        """Per-sample ``~success``."""
        return ~self.success

    @property
    def robust_accuracy(self) -> float:
        """The mean over samples of ``p_robust``: the probability that a draw classifies the
        attack's point correctly (untargeted: robust accuracy; the fraction not broken on a
        deterministic model)."""
        if not self.success.numel():
            return float("nan")
        p = self.p_robust if self.p_robust is not None else (~self.success).float()
        return float(p.float().mean())


@dataclass
class RunContext:
    """Everything one call of :meth:`Attack._run` needs.

    Attributes:
        model: the counting model wrapper; call it for logits, use ``model.grad`` to backprop.
        x: clean inputs (detached).
        y: true labels.
        targets: target labels for a targeted run, else ``None``.
        generator: the only source of randomness an attack may use.
        shrink: whether the attack may drop samples from its batch once they are confirmed
            broken (:meth:`confirmed`). ``False`` inside :func:`core.randomness.frozen` (a
            smaller batch would get another draw) and for ``full_budget`` runs (transfer).
        verdict: the one verdict rule (:mod:`~robustlab.attacks.verdict`): an attack's restarts
            and targets propose their points to a :class:`~robustlab.attacks.verdict.Incumbent`
            judged by it (see :meth:`incumbent`).
        clean: logits at ``x`` if already known (see :meth:`clean_logits`).
        queries: per-sample query counts a score-based attack reports (it sets them).
        shared: the incumbent of the run or sequence this attack is part of, if any: its
            restarts and targets propose to it directly (see :meth:`incumbent`).
    """

    model: ModelFn
    x: torch.Tensor
    y: torch.Tensor
    targets: torch.Tensor | None
    generator: torch.Generator
    shrink: bool
    verdict: Verdict = field(default_factory=Verdict)
    clean: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    shared: Incumbent | IncumbentView | None = None

    @property
    def stochastic(self) -> bool:
        """Whether the model draws fresh randomness on each forward."""
        return self.model.stochastic

    def clean_logits(self) -> torch.Tensor:
        """Logits at the clean inputs (one forward), computed once."""
        if self.clean is None:
            self.clean = self.model.predict(self.x)
        return self.clean

    def is_adversarial(
        self, pred: Prediction, y: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        """Whether a step's prediction is wrong (untargeted) or hits the target, judged on the
        mean softmax over the step's draws on a randomized model (a *candidate*: FAB and CW
        keep the closest such point; its restart or target proposes it to the incumbent)."""
        top = (pred.probs if self.stochastic else pred.logits).argmax(dim=1)
        return top == targets if targets is not None else top != y

    def confirmed(
        self, logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        """The early-stop rule: which samples a step's logits confirm broken, so that the
        attack may keep the point and drop the sample.

        On a deterministic model, those the logits misclassify (or put on the target). On a randomized model
        none: a step's draw, or the mean softmax over a step's EOT draws, is one more random
        sample and can be lucky, and a point just across the averaged boundary fools a fresh
        draw only about half the time; so a sample runs on until the worst-case rule breaks
        it (PGD and APGD check at intervals: the candidate every draw of its step got wrong is
        proposed to the incumbent, and the sample leaves once its incumbent fools every
        *fresh* draw of the comparison, :meth:`~robustlab.attacks.gradient.Tracker.settle`)
        or its budget is spent; its candidate is the iterate that most of its step's draws
        call a success (:class:`Pick`), proposed to the incumbent at the end of the restart.
        """
        if self.stochastic:
            return torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        top = logits.argmax(dim=1)
        return top == targets if targets is not None else top != y

    def incumbent(self) -> Incumbent | IncumbentView:
        """What an attack's restarts and targets propose to
        (:class:`~robustlab.attacks.gradient.Tracker`): the run's or sequence's incumbent when
        there is one (:attr:`shared`), else a fresh one at the clean inputs."""
        return self.shared if self.shared is not None else Incumbent(self.x, self.y, self.targets)

    def subset(self, idx: torch.Tensor) -> RunContext:
        """The context restricted to samples ``idx``."""
        clean = self.clean
        return RunContext(
            model=self.model,
            x=self.x[idx],
            y=self.y[idx],
            targets=self.targets[idx] if self.targets is not None else None,
            generator=self.generator,
            shrink=self.shrink,
            verdict=self.verdict,
            clean=clean[idx] if clean is not None else None,
        )


class Pick:
    """Per sample, the iterate that most of its step's draws call a success (ties: lower mean
    margin over those draws): an attack's candidate on a randomized model, chosen at no extra
    pass from the draws its gradient estimate already made. The loss drives the steps; this,
    not the loss, decides which iterate the attack proposes (:mod:`~robustlab.attacks.verdict`).
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.clone()
        self.badness: Badness | None = None

    def observe(
        self, rows: torch.Tensor, x: torch.Tensor, samples: torch.Tensor, y: torch.Tensor,
        targets: torch.Tensor | None,
    ) -> None:
        """Consider iterates ``x`` of rows ``rows`` with their step's per-draw logits."""
        new = badness_of(samples, y, targets)
        if self.badness is None:
            n = self.x.shape[0]
            self.badness = Badness(torch.full((n,), -1.0, device=x.device),
                                   torch.full((n,), float("inf"), device=x.device), new.draws)
        better = new.at_least_as_bad(self.badness[rows])
        self.x[rows[better]] = x[better]
        self.badness.wrong[rows[better]] = new.wrong[better]
        self.badness.margin[rows[better]] = new.margin[better]


class Attack(abc.ABC):
    """Base class of every attack: a configured, immutable object run on a model at call time.

    The base class owns the rules. :meth:`run` checks inputs, wraps the model in a counting
    :class:`ModelFn` (establishing whether the model is randomized, by the
    :class:`core.randomness.Stochastic` protocol or empirically), lets the subclass search
    (:meth:`_run`), projects the result onto the threat ball and into [0, 1] (and asserts that
    it is there), proposes it to an incumbent at the clean input and judges that on fresh
    draws: the one verdict rule (:mod:`~robustlab.attacks.verdict`) shared with AutoAttack and
    the battery runner. It also runs the sanity checks (:mod:`~robustlab.attacks.checks`).

    Early stopping, one rule for every attack (:meth:`RunContext.confirmed`): an attack keeps
    attacking a sample until the sample is *confirmed* broken or the budget is spent. On a
    deterministic model a step's prediction confirms it. On a randomized model nothing does:
    neither one draw nor the mean softmax over one step's EOT draws (measured: stopping at
    the first point whose EOT-20 mean softmax is wrong leaves points that fool a fresh draw
    about half the time, weaker than running on), so a sample runs on until its incumbent
    fools every fresh draw of a comparison (the worst-case rule's "broken": PGD and APGD
    propose mid-run, at intervals, the candidates every draw of their step got wrong, and
    drop the samples this settles; a sequence's later attacks skip such samples too) or the
    budget is spent, and each restart proposes its candidates to the incumbent (the iterate
    most of its step's draws got wrong, and the last or highest-loss one). Either way the
    verdict, with fresh draws, decides the result. Runs with ``full_budget=True`` (transfer
    attacks, which maximize the loss on the surrogate) never stop early.

    The model's train/eval mode is never changed: call ``model.eval()`` first (batch-norm in
    train mode makes predictions depend on the batch and the attack would update its
    statistics; :meth:`run` warns unless told the mode is intended). Nothing here seeds
    anything: random starts and random searches draw from the ``generator`` passed to
    :meth:`run`, or from a fresh ``torch.Generator`` with torch's default seed when none is
    given (so an unseeded run still repeats).

    Args:
        threat: the threat model (norm and radius in [0, 1] pixel space).
        bpda: if set, run the search inside ``core.bpda.bpda(model, mode)``: every BPDA layer of
            the model keeps its exact forward and backpropagates through the identity or its
            smooth surrogate. ``None`` leaves the model as it is (an evaluator may wrap the call
            itself).
    """

    name: ClassVar[str] = "attack"
    kind: ClassVar[str] = "attack"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    supports_targets: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def sealed_init(self: Attack, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if type(self).__init__ is sealed_init:  # the outermost constructor has finished
                object.__setattr__(self, "_rl_sealed", True)

        cls.__init__ = sealed_init  # type: ignore[method-assign]

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_rl_sealed", False):
            raise AttributeError(
                f"{type(self).__name__} is configured once at construction; build a new attack "
                f"instead of setting {name!r}"
            )
        object.__setattr__(self, name, value)

    def __init__(self, threat: ThreatModel, *, bpda: BPDAMode | None = None) -> None:
        if not isinstance(threat, ThreatModel):
            raise InputError(
                f"threat must be a core.ThreatModel, got {type(threat).__name__}; "
                "e.g. ThreatModel('linf', 8/255)"
            )
        if threat.norm not in self.norms:
            raise InputError(
                f"{self.name} supports the {', '.join(self.norms)} threat model(s), "
                f"got {threat.norm!r}"
            )
        if bpda is not None and bpda not in BPDA_MODES:
            raise InputError(f"unknown BPDA mode {bpda!r}; use 'identity', 'smooth', 'bypass' or None")
        self._threat = threat
        self._bpda: BPDAMode | None = bpda
        if type(self).__init__ is Attack.__init__:
            object.__setattr__(self, "_rl_sealed", True)

    @property
    def threat(self) -> ThreatModel:
        """The threat model the attack was built for."""
        return self._threat

    @property
    def bpda(self) -> BPDAMode | None:
        """The BPDA mode the attack runs the model in, if any."""
        return self._bpda

    @property
    def expects_randomness(self) -> bool:
        """Whether the attack takes an expectation over a randomized model's draws (EOT
        gradients, Square's mean margin), or does not use the target's gradients at all."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threat.norm}, eps={self.threat.eps:.4g})"

    def run(
        self,
        model: nn.Module | Callable[[torch.Tensor], Any],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        targets: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        verdict: Verdict | None = None,
        full_budget: bool = False,
        train_mode_ok: bool = False,
    ) -> AttackResult:
        """Attack ``model`` at ``(x, y)``.

        Args:
            model: a module or callable mapping [0, 1] images to logits (see :func:`logits_of`).
            x: clean images, NCHW floats in [0, 1].
            y: true labels ``(N,)``.
            targets: target labels for a targeted attack (only attacks with
                ``supports_targets``); success then means ``argmax == target``.
            generator: source of all randomness (on ``x``'s device).
            verdict: how points are judged (:class:`~robustlab.attacks.verdict.Verdict`; default
                ``k = 16`` fresh draws on a randomized model, one forward on a deterministic one).
            full_budget: never stop early (maximize the loss for the whole budget).
            train_mode_ok: the model is in training mode on purpose (no warning).

        Raises:
            InputError: for images outside [0, 1] or of the wrong shape, label count mismatch,
                or targets for an attack that takes none.
        """
        check_images(x, "x")
        check_labels(y, x.shape[0])
        if targets is not None:
            if not self.supports_targets:
                raise InputError(f"{self.name} is untargeted; it takes no targets")
            check_labels(targets, x.shape[0])
            targets = targets.to(x.device)
        if generator is None:
            generator = torch.Generator(device=x.device)
        elif generator.device.type != x.device.type:
            raise InputError(
                f"the generator lives on {generator.device}, the inputs on {x.device}; "
                "create it with torch.Generator(device=x.device)"
            )
        verdict = Verdict() if verdict is None else verdict
        found: list[EvalWarning] = []
        if isinstance(model, nn.Module) and model.training and not train_mode_ok:
            found.append(train_mode_warning(self.name))
            warnings.warn(str(found[-1]), stacklevel=2)
        x = x.detach()
        y = y.to(x.device)
        fmodel = model_fn(model, x)
        start = generator.get_state()
        try:
            ctx = self._context(fmodel, x, y, targets, generator, verdict, full_budget)
            x_adv, p_robust, logits, checks = self._execute(ctx, verdict)
        except LateRandomness:
            # random only near the boundary: judged again from the start as randomized
            found.append(late_randomness_warning(repr(self)))
            fmodel = ModelFn(model, "detected")
            generator.set_state(start)
            ctx = self._context(fmodel, x, y, targets, generator, verdict, full_budget)
            x_adv, p_robust, logits, checks = self._execute(ctx, verdict)
        found += self._checks(fmodel) + checks
        return AttackResult(
            x_adv=x_adv.detach(),
            success=p_robust < 0.5,
            logits=logits.detach(),
            forward_passes=fmodel.forward_passes,
            backward_passes=fmodel.backward_passes,
            queries=ctx.queries,
            attack=self.name,
            randomness=fmodel.randomness,
            verdict_passes=fmodel.verdict_passes,
            warnings=merge_warnings(found),
            p_robust=p_robust,
            verdict=verdict.config() if fmodel.stochastic else {"draws": 1, "ensemble": 1},
        )

    @staticmethod
    def _context(
        fmodel: ModelFn, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None,
        generator: torch.Generator, verdict: Verdict, full_budget: bool,
    ) -> RunContext:
        return RunContext(model=fmodel, x=x, y=y, targets=targets, generator=generator,
                          shrink=not (fmodel.frozen or full_budget), verdict=verdict)

    def _execute(
        self, ctx: RunContext, verdict: Verdict
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[EvalWarning]]:
        """Search, then judge: ``(x_adv, p_robust, verdict outputs, findings)``. The search's
        point is proposed to an incumbent at the clean input (a clean misclassification stays
        one), then the incumbent is judged on fresh draws (:mod:`~robustlab.attacks.verdict`).
        Ensembles override it (and report their own findings)."""
        incumbent = Incumbent(ctx.x, ctx.y, ctx.targets)
        if ctx.model.stochastic:
            ctx.shared = incumbent
        points = self.perturb(ctx)
        ctx.model.check_points(points)
        incumbent.offer(ctx.model, verdict, torch.arange(points.shape[0], device=points.device), points)
        p_robust, logits = verdict.judge(ctx.model, incumbent.x, ctx.y, ctx.targets)
        return incumbent.x, p_robust, logits, []

    def _checks(self, fmodel: ModelFn) -> list[EvalWarning]:
        """The sanity checks of a finished run on ``fmodel``."""
        found = gradient_warnings(
            fmodel.grad_evaluations, fmodel.zero_grads, fmodel.nonfinite_grads, self.name
        )
        return found + randomness_warnings(fmodel.randomness, self.expects_randomness, repr(self))

    def perturb(self, ctx: RunContext) -> torch.Tensor:
        """The search alone, with no verdict: :meth:`_run` (inside the attack's BPDA mode),
        projected exactly onto the threat ball and into [0, 1]. For sequences and transfer
        attacks, which judge (or do not judge) the result themselves."""
        model = ctx.model.model
        use_bpda = self.bpda is not None and isinstance(model, nn.Module)
        with bpda(model, self.bpda or "identity") if use_bpda else contextlib.nullcontext():  # type: ignore[arg-type]
            x_raw = ctx.x.clone() if ctx.x.shape[0] == 0 else self._run(ctx)
        x_adv = enforce(ctx.x, x_raw.detach(), self.threat)
        inside = in_ball(ctx.x, x_adv, self.threat)
        if not bool(inside.all()):  # enforce() guarantees this; the check guards the rules
            raise AssertionError(
                f"{self.name} produced {int((~inside).sum())} inputs outside [0, 1] or the ball"
            )
        return x_adv

    @abc.abstractmethod
    def _run(self, ctx: RunContext) -> torch.Tensor:
        """The search itself: return ``x_adv`` (the base projects it exactly anyway)."""

    # helpers for subclasses -------------------------------------------------------------------
    def _project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return enforce(x, x_adv, self.threat)

    def _ball(self, x: torch.Tensor) -> Ball:
        return Ball(x, self.threat)


def select_targets(logits: torch.Tensor, rank: int) -> torch.Tensor:
    """The class with the ``rank``-th highest logit per sample (``rank=2``: the runner-up).

    AutoAttack's choice of target classes for APGD-T and FAB-T (Croce & Hein, 2020, Sec. 4):
    the classes with the 2nd, 3rd, ... highest clean logit.
    """
    return logits.topk(rank, dim=1).indices[:, rank - 1]


def runner_up_targets(logits: torch.Tensor, count: int) -> Iterator[torch.Tensor]:
    """The target classes of APGD-T and FAB-T, in order: :func:`select_targets` at ranks 2, 3,
    ..., ``count`` of them, or as many as there are other classes."""
    for rank in range(2, min(count + 2, logits.shape[1] + 1)):
        yield select_targets(logits, rank)
