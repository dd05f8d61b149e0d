"""The attack base class, its result, the model-output adapter and the gradient estimators.

Following foolbox's and torchattacks' design, the base class owns the rules every attack must
keep: it validates inputs, counts model evaluations, projects the result onto the eps-ball and
into [0, 1] (and asserts both), and decides success. A subclass writes only its search in
:meth:`Attack._run`.

Counting convention: ``forward_passes`` and ``backward_passes`` count *image evaluations*, i.e.
the sum over model calls of the batch size of each call (an attack that stops attacking broken
samples is charged only for the samples it still evaluates). A forward through the model and a
backward of a loss through it to the input each count once per image; EOT with ``n`` draws
counts ``n`` of each.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.bpda import BPDAMode, bpda
from ..core.checks import check_images, check_labels
from ..core.errors import InputError
from ..core.randomness import is_frozen, is_stochastic
from ..core.types import ThreatModel

__all__ = [
    "EOT",
    "Attack",
    "AttackResult",
    "Ball",
    "GradEstimate",
    "Gradient",
    "GradientEstimator",
    "ModelFn",
    "Objective",
    "RunContext",
    "enforce",
    "in_ball",
    "logits_of",
    "linf_bounds",
    "lp_norm",
    "project",
    "select_targets",
]

logger = logging.getLogger(__name__)

Objective = Callable[[torch.Tensor], torch.Tensor]
"""Maps logits ``(N, K)`` to a per-sample loss ``(N,)`` that the attack maximizes."""


def logits_of(output: Any) -> torch.Tensor:
    """Turn whatever a model returns into a ``(N, K)`` logit tensor.

    Rules (documented so that every attack and evaluator agrees):

    - a tensor of shape ``(N, K)`` with ``K >= 2`` is returned as is;
    - a tuple or list gives its first element (models that also return features or aux heads);
    - a mapping gives its ``"logits"`` entry;
    - a single logit per sample, shape ``(N,)`` or ``(N, 1)``, is a binary classifier and becomes
      the two-class logits ``[0, z]`` (class 1 when ``z > 0``), so softmax equals the sigmoid.

    Raises:
        InputError: for any other output.
    """
    if isinstance(output, (tuple, list)):
        if not output:
            raise InputError("the model returned an empty tuple; expected logits first")
        output = output[0]
    elif isinstance(output, Mapping):
        if "logits" not in output:
            raise InputError(
                f"the model returned a dict without a 'logits' key (keys: {sorted(output)}); "
                "return logits under 'logits'"
            )
        output = output["logits"]
    if not isinstance(output, torch.Tensor):
        raise InputError(f"the model must return logits as a tensor, got {type(output).__name__}")
    if output.dim() == 1:
        output = output.unsqueeze(1)
    if output.dim() != 2:
        raise InputError(f"expected logits of shape (N, K), got {tuple(output.shape)}")
    if output.shape[1] == 1:
        output = torch.cat([torch.zeros_like(output), output], dim=1)
    return output


class ModelFn:
    """A model seen through :func:`logits_of` that counts image evaluations.

    Attacks call the model only through this wrapper, so the counts in :class:`AttackResult` are
    complete. ``stochastic`` is fixed when the run starts (:func:`core.randomness.is_stochastic`;
    a plain callable that is not an ``nn.Module`` counts as deterministic).
    """

    def __init__(self, model: nn.Module | Callable[[torch.Tensor], Any]) -> None:
        self.model = model
        self.forward_passes = 0
        self.backward_passes = 0
        self.stochastic = isinstance(model, nn.Module) and is_stochastic(model)
        self.frozen = isinstance(model, nn.Module) and is_frozen(model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_passes += x.shape[0]
        return logits_of(self.model(x))

    def grad(self, loss: torch.Tensor, x: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
        """Gradient of a scalar ``loss`` with respect to ``x`` (one backward per image of ``x``)."""
        self.backward_passes += x.shape[0]
        (g,) = torch.autograd.grad(loss, x, retain_graph=retain_graph)
        return g

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits without building a graph."""
        return self(x)


@dataclass(frozen=True)
class GradEstimate:
    """What a gradient estimator returns for a batch.

    Attributes:
        grad: the (estimated) gradient of the per-sample objective w.r.t. the input.
        loss: per-sample objective (mean over draws for EOT), detached.
        logits: logits at the input (mean over draws for EOT), detached; attacks reuse them to
            track success without another forward pass.
    """

    grad: torch.Tensor
    loss: torch.Tensor
    logits: torch.Tensor


class GradientEstimator(abc.ABC):
    """How a gradient attack obtains the gradient of its objective (plain, EOT, ...)."""

    @abc.abstractmethod
    def __call__(self, fmodel: ModelFn, x: torch.Tensor, objective: Objective) -> GradEstimate:
        """Estimate the gradient of ``objective(fmodel(x)).sum()`` with respect to ``x``."""

    @staticmethod
    def _once(fmodel: ModelFn, x: torch.Tensor, objective: Objective) -> GradEstimate:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = fmodel(x)
            loss = objective(logits)
            grad = fmodel.grad(loss.sum(), x)
        return GradEstimate(grad.detach(), loss.detach(), logits.detach())


@dataclass(frozen=True)
class Gradient(GradientEstimator):
    """The plain gradient: one forward and one backward pass."""

    def __call__(self, fmodel: ModelFn, x: torch.Tensor, objective: Objective) -> GradEstimate:
        return self._once(fmodel, x, objective)


@dataclass(frozen=True)
class EOT(GradientEstimator):
    """Expectation over Transformation: the gradient averaged over ``n`` random draws.

    Athalye et al., 2018 ("Obfuscated Gradients Give a False Sense of Security", Sec. 4.3; and
    "Synthesizing Robust Adversarial Examples", ICML 2018). Each of the ``n`` forward/backward
    passes draws fresh randomness from the model's :class:`core.randomness.Stochastic` layers.

    Args:
        n: number of draws.
        normalize: average per-sample L2-normalized gradients, ``E_r[grad / ||grad||_2]``,
            instead of raw ones (Bakiskan et al., "A Neuro-Inspired Autoencoding Defense Against
            Adversarial Perturbations", Sec. 5, attack settings: found stronger against their
            randomized sparse encoder; each draw votes for a direction with equal weight, so a
            few draws with huge gradients cannot dominate).
        skip_deterministic: when the model has no active random layer (or is frozen) every draw
            is the same, so take one pass; the result then equals :class:`Gradient` exactly
            (normalized if asked). Set ``False`` to force ``n`` passes (e.g. for a model whose
            randomness does not follow the protocol).
    """

    n: int = 20
    normalize: bool = False
    skip_deterministic: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise InputError(f"EOT needs n >= 1 draws, got {self.n!r}")

    def __call__(self, fmodel: ModelFn, x: torch.Tensor, objective: Objective) -> GradEstimate:
        draws = self.n if (fmodel.stochastic or not self.skip_deterministic) else 1
        grad: torch.Tensor | None = None
        loss: torch.Tensor | None = None
        logits: torch.Tensor | None = None
        for _ in range(draws):
            est = self._once(fmodel, x, objective)
            g = est.grad
            if self.normalize:
                norms = g.flatten(1).norm(dim=1).clamp_min(1e-12)
                g = g / norms.view(-1, *([1] * (g.dim() - 1)))
            if grad is None or loss is None or logits is None:
                grad, loss, logits = g, est.loss, est.logits
            else:
                grad, loss, logits = grad + g, loss + est.loss, logits + est.logits
        assert grad is not None and loss is not None and logits is not None
        if draws == 1:
            return GradEstimate(grad, loss, logits)
        return GradEstimate(grad / draws, loss / draws, logits / draws)


def lp_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample L-inf or L2 norm of a batch ``(N, ...)``."""
    flat = v.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return flat.norm(dim=1)


def project(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project ``x_adv`` onto the ``threat`` ball around ``x`` and into [0, 1]."""
    delta = x_adv - x
    if threat.norm == "linf":
        delta = delta.clamp(-threat.eps, threat.eps)
    else:
        norms = lp_norm(delta, "l2")
        factor = (threat.eps / norms.clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
    return (x + delta).clamp(0.0, 1.0)


def linf_bounds(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel bounds ``lo <= x_adv <= hi`` of the L-inf ball intersected with [0, 1], made
    exact in floating point: ``hi - x <= eps`` and ``x - lo <= eps`` as computed.

    Rounding is monotone, so every ``v`` in ``[lo, hi]`` then has ``|v - x| <= eps`` as computed
    too, and projecting is a single ``torch.clamp(v, lo, hi)``.
    """
    lo = (x - eps).clamp_min(0.0)
    hi = (x + eps).clamp_max(1.0)
    for _ in range(64):
        bad_hi = (hi - x) > eps
        bad_lo = (x - lo) > eps
        if not bool(bad_hi.any() or bad_lo.any()):
            break
        hi = torch.where(bad_hi, torch.nextafter(hi, x), hi)
        lo = torch.where(bad_lo, torch.nextafter(lo, x), lo)
    return lo, hi


def enforce(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """:func:`project` made exact: the computed ``lp_norm(x_adv - x)`` is ``<= eps`` with no
    rounding slack.

    L-inf: a clamp to :func:`linf_bounds`. L2: rows that overshoot shrink by a margin that grows
    4x per round (rounding in ``x + delta`` can undo a tiny shrink); a row that still does not
    fit after 16 rounds (never seen) falls back to ``x``.
    """
    if threat.norm == "linf":
        lo, hi = linf_bounds(x, threat.eps)
        return torch.clamp(x_adv, lo, hi)
    x_adv = project(x, x_adv, threat)
    tiny = 4 * torch.finfo(x.dtype).eps
    for it in range(16):
        delta = x_adv - x
        norms = lp_norm(delta, "l2")
        over = norms > threat.eps
        if not bool(over.any()):
            return x_adv
        shrink = (threat.eps / norms.clamp_min(1e-30)) * (1 - tiny * 4**it)
        factor = torch.where(over, shrink, torch.ones_like(shrink))
        x_adv = (x + delta * factor.view(-1, *([1] * (delta.dim() - 1)))).clamp(0.0, 1.0)
    bad = lp_norm(x_adv - x, threat.norm) > threat.eps
    return torch.where(bad.view(-1, *([1] * (x.dim() - 1))), x, x_adv)


class Ball:
    """The feasible set of a threat model around a batch ``x``: the eps-ball within [0, 1].

    Precomputes the L-inf bounds once, so an iterative attack projects with one clamp per step;
    index it (``ball[keep]``) to follow a shrinking batch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        threat: ThreatModel,
        bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.x = x
        self.threat = threat
        self.bounds = bounds
        if threat.norm == "linf" and bounds is None:
            self.bounds = linf_bounds(x, threat.eps)

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """The exact projection of ``v`` (see :func:`enforce`)."""
        if self.bounds is not None:
            return torch.clamp(v, self.bounds[0], self.bounds[1])
        return enforce(self.x, v, self.threat)

    def __getitem__(self, idx: torch.Tensor) -> Ball:
        bounds = (self.bounds[0][idx], self.bounds[1][idx]) if self.bounds is not None else None
        return Ball(self.x[idx], self.threat, bounds)


def in_ball(
    x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel, tol: float = 0.0
) -> torch.Tensor:
    """Per-sample check that ``x_adv`` is in [0, 1] and within ``eps + tol`` of ``x``."""
    dist = lp_norm(x_adv - x, threat.norm)
    flat = x_adv.flatten(1)
    inside = dist <= threat.eps + tol
    if flat.shape[1]:
        inside &= (flat.amin(dim=1) >= 0) & (flat.amax(dim=1) <= 1)
    return inside


@dataclass(frozen=True)
class AttackResult:
    """The outcome of :meth:`Attack.run`.

    Attributes:
        x_adv: adversarial inputs, detached, in [0, 1] and inside the threat ball (the computed
            ``lp_norm(x_adv - x)`` is ``<= eps`` with no rounding tolerance).
        success: per-sample bool; untargeted: ``argmax(model(x_adv)) != y``, targeted:
            ``== target``. For a stochastic model this is one draw; evaluators repeat it.
        logits: the logits the success mask was computed from.
        forward_passes: image forward evaluations spent (see the module docstring).
        backward_passes: image backward evaluations spent.
        queries: per-sample forward queries, for score-based attacks (Square); else ``None``.
        attack: name of the attack that produced the result.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    logits: torch.Tensor
    forward_passes: int
    backward_passes: int
    queries: torch.Tensor | None = None
    attack: str = ""

    @property
    def robust(self) -> torch.Tensor:
        """Per-sample ``~success``."""
        return ~self.success

    @property
    def robust_accuracy(self) -> float:
        """Fraction of samples the attack did not break (untargeted: robust accuracy)."""
        return float((~self.success).float().mean()) if self.success.numel() else float("nan")


@dataclass
class RunContext:
    """Everything one call of :meth:`Attack._run` needs.

    Attributes:
        model: the counting model wrapper; call it for logits, use ``model.grad`` to backprop.
        x: clean inputs (detached).
        y: true labels.
        targets: target labels for a targeted run, else ``None``.
        generator: the only source of randomness an attack may use.
        shrink: whether the attack may drop samples from its batch as they break. ``False``
            inside :func:`core.randomness.frozen` (a smaller batch would get another draw).
        clean: logits at ``x`` if already known (see :meth:`clean_logits`).
        queries: per-sample query counts a score-based attack reports (it sets them).
    """

    model: ModelFn
    x: torch.Tensor
    y: torch.Tensor
    targets: torch.Tensor | None
    generator: torch.Generator
    shrink: bool
    clean: torch.Tensor | None = None
    queries: torch.Tensor | None = None

    @property
    def stochastic(self) -> bool:
        """Whether the model draws fresh randomness on each forward."""
        return self.model.stochastic

    def clean_logits(self) -> torch.Tensor:
        """Logits at the clean inputs, computed once and shared (an ensemble such as AutoAttack
        passes its own so that sub-attacks do not repeat the forward pass)."""
        if self.clean is None:
            self.clean = self.model.predict(self.x)
        return self.clean

    def subset(self, idx: torch.Tensor) -> RunContext:
        """The context restricted to samples ``idx``."""
        return RunContext(
            model=self.model,
            x=self.x[idx],
            y=self.y[idx],
            targets=self.targets[idx] if self.targets is not None else None,
            generator=self.generator,
            shrink=self.shrink,
            clean=self.clean[idx] if self.clean is not None else None,
        )


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


class Attack(abc.ABC):
    """Base class of every attack: a configured, immutable object run on a model at call time.

    The base class checks inputs, wraps the model in a counting :class:`ModelFn`, calls
    :meth:`_run`, projects its output onto the threat ball and into [0, 1] (and asserts that the
    result is there), and computes the success mask, reusing logits the subclass returns where
    they are valid.

    The model's train/eval mode is never changed: call ``model.eval()`` first if that is what
    you want to attack (batch-norm in train mode makes predictions depend on the batch). Nothing
    here seeds anything: random starts and random searches draw from the ``generator`` passed to
    :meth:`run`, or from a fresh ``torch.Generator`` with torch's default seed when none is given
    (so an unseeded run still repeats).

    Args:
        threat: the threat model (norm and radius in [0, 1] pixel space).
        bpda: if set, run the attack inside ``core.bpda.bpda(model, mode)``: every BPDA layer of
            the model keeps its exact forward and backpropagates through the identity or its
            smooth surrogate. ``None`` leaves the model as it is (an evaluator may wrap the call
            itself).
    """

    name: ClassVar[str] = "attack"
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
        if bpda is not None and bpda not in ("identity", "smooth"):
            raise InputError(f"unknown BPDA mode {bpda!r}; use 'identity', 'smooth' or None")
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
    ) -> AttackResult:
        """Attack ``model`` at ``(x, y)``.

        Args:
            model: a module or callable mapping [0, 1] images to logits (see :func:`logits_of`).
            x: clean images, NCHW floats in [0, 1].
            y: true labels ``(N,)``.
            targets: target labels for a targeted attack (only attacks with
                ``supports_targets``); success then means ``argmax == target``.
            generator: source of all randomness (on ``x``'s device).

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
        x = x.detach()
        y = y.to(x.device)
        fmodel = ModelFn(model)
        ctx = RunContext(
            model=fmodel, x=x, y=y, targets=targets, generator=generator, shrink=not fmodel.frozen
        )
        use_bpda = self.bpda is not None and isinstance(model, nn.Module)
        with bpda(model, self.bpda or "identity") if use_bpda else contextlib.nullcontext():  # type: ignore[arg-type]
            if x.shape[0] == 0:
                out: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None] = x.clone()
            else:
                out = self._run(ctx)
            x_raw, logits = out if isinstance(out, tuple) else (out, None)
            x_adv = enforce(x, x_raw.detach(), self.threat)
            if logits is None or fmodel.stochastic:
                logits = fmodel.predict(x_adv)
            else:
                changed = (x_adv != x_raw).flatten(1).any(dim=1)
                if bool(changed.any()):
                    logits = logits.clone()
                    logits[changed] = fmodel.predict(x_adv[changed])
        inside = in_ball(x, x_adv, self.threat)
        if not bool(inside.all()):  # enforce() guarantees this; the check guards the rules
            raise AssertionError(
                f"{self.name} produced {int((~inside).sum())} inputs outside [0, 1] or the ball"
            )
        pred = logits.argmax(dim=1)
        success = pred == targets if targets is not None else pred != y
        return AttackResult(
            x_adv=x_adv.detach(),
            success=success,
            logits=logits.detach(),
            forward_passes=fmodel.forward_passes,
            backward_passes=fmodel.backward_passes,
            queries=ctx.queries,
            attack=self.name,
        )

    @abc.abstractmethod
    def _run(self, ctx: RunContext) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """The search itself: return ``x_adv``, or ``(x_adv, logits_at_x_adv)`` to save a forward.

        Logits are reused for rows the base projection leaves unchanged (deterministic models
        only); the subclass need not clamp exactly, the base projects anyway.
        """

    # helpers for subclasses -------------------------------------------------------------------
    def _project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        return enforce(x, x_adv, self.threat)

    def _ball(self, x: torch.Tensor) -> Ball:
        return Ball(x, self.threat)

    @staticmethod
    def _is_adv(
        logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        pred = logits.argmax(dim=1)
        return pred == targets if targets is not None else pred != y

    def _random_start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A uniform point of the L-inf ball, or a point on a random direction of the L2 ball with
        a uniform radius fraction (the usual PGD starts, Madry et al., 2018, Sec. 5)."""
        eps = self.threat.eps
        if self.threat.norm == "linf":
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = (2 * u - 1) * eps
        else:
            d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            d = d / _expand(lp_norm(d, "l2").clamp_min(1e-12), d)
            r = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
            delta = d * _expand(r * eps, d)
        return (x + delta).clamp(0.0, 1.0)


def select_targets(logits: torch.Tensor, rank: int) -> torch.Tensor:
    """The class with the ``rank``-th highest logit per sample (``rank=2``: the runner-up).

    AutoAttack's choice of target classes for APGD-T and FAB-T (Croce & Hein, 2020, Sec. 4):
    the classes with the 2nd, 3rd, ... highest clean logit.
    """
    return logits.topk(rank, dim=1).indices[:, rank - 1]


def _check_choices(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
