"""The attack base class, its result, the model-output adapter and the gradient estimators.

Following foolbox's and torchattacks' design, the base class owns the rules every attack must
keep: it validates inputs, counts model evaluations, projects the result onto the eps-ball and
into [0, 1] (and asserts both), and decides success. A subclass writes only its search in
:meth:`Attack._run`.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.bpda import BPDA_MODES, BPDAMode, bpda
from ..core.checks import check_images, check_labels
from ..core.errors import InputError
from ..core.randomness import is_frozen, is_stochastic, rows_differ, stochastic_layers
from ..core.types import ThreatModel
from .checks import (
    EvalWarning,
    gradient_warnings,
    late_randomness_warning,
    merge_warnings,
    randomness_warnings,
    train_mode_warning,
)
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


class LateRandomness(RuntimeError):
    """Raised when points an attack produced show randomness that the model's clean inputs did
    not (randomness that shows only near the decision boundary): the caller re-runs the
    evaluation under the randomized rule and says so."""


RANDOMNESS_KINDS = ("protocol", "frozen", "detected", "none")
"""How a model's randomness is known: an active :class:`core.randomness.Stochastic` layer
(``protocol``), such layers inside :func:`core.randomness.frozen` (``frozen``: one fixed
inference path, deterministic for the whole evaluation, see :class:`ModelFn`), two forwards
that differ (``detected``), or none."""

DETECTION_BATCH = 256
"""At most this many samples per chunk are forwarded twice by the randomness checks."""


class ModelFn:
    """A model seen through :func:`logits_of` that counts image evaluations.

    Attacks call the model only through this wrapper, so the counts in :class:`AttackResult` are
    complete. ``randomness`` is one of :data:`RANDOMNESS_KINDS`; ``stochastic`` is true for
    ``"protocol"`` and ``"detected"``. A ``"frozen"`` model is one fixed inference path for
    the whole evaluation, attacks and verdict alike: a frozen draw is tied to a batch shape
    (:func:`core.randomness.frozen`), so the wrapper forwards one image at a time and every
    image, in every attack and verdict, goes through the same single draw (slower: batch 1).
    Built without ``randomness``, only the protocol is consulted (use :func:`model_fn` to
    detect randomness on a batch).

    It also counts per-sample gradients that were all zero or non-finite (for
    :mod:`~robustlab.attacks.checks`) and, apart from the search, the passes of verdicts and
    checks (``verdict_passes``).
    """

    def __init__(
        self, model: nn.Module | Callable[[torch.Tensor], Any], randomness: str | None = None
    ) -> None:
        self.model = model
        self.forward_passes = 0
        self.backward_passes = 0
        self.verdict_passes = 0
        self.grad_evaluations = 0
        self.zero_grads = 0
        self.nonfinite_grads = 0
        if randomness is None:
            randomness = "none"
            if isinstance(model, nn.Module) and is_stochastic(model):
                randomness = "protocol"
            elif isinstance(model, nn.Module) and _frozen_random(model):
                randomness = "frozen"
        if randomness not in RANDOMNESS_KINDS:
            raise InputError(f"randomness must be one of {RANDOMNESS_KINDS}, got {randomness!r}")
        self.randomness = randomness
        self.stochastic = randomness in ("protocol", "detected")
        self.frozen = isinstance(model, nn.Module) and is_frozen(model)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.randomness == "frozen" and x.shape[0] > 1:  # one image a time: one draw for all
            return torch.cat([logits_of(self.model(x[i : i + 1])) for i in range(x.shape[0])])
        return logits_of(self.model(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_passes += x.shape[0]
        return self._forward(x)

    def grad(self, loss: torch.Tensor, x: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
        """Gradient of a scalar ``loss`` with respect to ``x`` (one backward per image of ``x``)."""
        self.backward_passes += x.shape[0]
        (g,) = torch.autograd.grad(loss, x, retain_graph=retain_graph)
        flat = g.detach().flatten(1)
        self.grad_evaluations += g.shape[0]
        finite = torch.isfinite(flat).all(dim=1)
        self.nonfinite_grads += int((~finite).sum())
        self.zero_grads += int((finite & (flat == 0).all(dim=1)).sum())
        return g

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits without building a graph (counted as a search pass)."""
        return self(x)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a verdict or a check: not counted as a search pass."""
        self.verdict_passes += x.shape[0]
        return self._forward(x)

    @torch.no_grad()
    def random_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Per row of ``x``, whether two forwards differ beyond that row's own float noise
        (:func:`core.randomness.rows_differ`); verdict passes."""
        if x.shape[0] == 0:
            return torch.zeros(0, dtype=torch.bool, device=x.device)
        return torch.cat([rows_differ(self.evaluate(c), self.evaluate(c)) for c in x.split(DETECTION_BATCH)])

    def check_points(self, x: torch.Tensor) -> None:
        """On a model found deterministic, raise :class:`LateRandomness` when the points ``x``
        an attack returned show randomness: it can show only near the decision boundary, where
        the attack's points are and the clean inputs are not."""
        if self.randomness == "none" and bool(self.random_rows(x).any()):
            raise LateRandomness("the model's outputs at the attacks' points are random")

    def check_agrees(self, first: torch.Tensor, second: torch.Tensor) -> None:
        """Two verdicts of a model found deterministic at the same points must agree; raise
        :class:`LateRandomness` when they do not."""
        if self.randomness == "none" and not torch.equal(first, second):
            raise LateRandomness("two verdicts at the same points disagree")


def _frozen_random(model: nn.Module) -> bool:
    return is_frozen(model) and any(m.stochastic_active for m in stochastic_layers(model))


def model_fn(
    model: nn.Module | Callable[[torch.Tensor], Any], x: torch.Tensor, randomness: str | None = None
) -> ModelFn:
    """The counting wrapper for a run on ``x``, with the model's randomness established.

    A model with an active :class:`core.randomness.Stochastic` layer is randomized by the
    protocol (``"frozen"`` when those layers are inside :func:`core.randomness.frozen`); any
    other model (plain callables included) is forwarded twice on up to
    :data:`DETECTION_BATCH` samples of ``x`` and treated as randomized when any row of the two
    outputs differs beyond that row's own float noise (the reference AutoAttack's check, made
    per row so that one row of huge logits cannot hide the noise of the others). Attacks'
    points are probed too (:meth:`ModelFn.check_points`). ``randomness`` skips the check (an
    evaluator that checked once for a whole run passes what it found).
    """
    if randomness is not None:
        return ModelFn(model, randomness)
    fm = ModelFn(model)
    if not fm.stochastic and x.shape[0]:
        probe = x[:DETECTION_BATCH]
        if bool(fm.random_rows(probe).any()):
            fm = ModelFn(model, "detected")
        fm.verdict_passes = 2 * probe.shape[0]
    return fm


@dataclass(frozen=True)
class Prediction:
    """A prediction at a batch, possibly averaged over random draws.

    Attributes:
        logits: logits (mean over the draws), detached.
        probs: mean softmax over the draws, detached: what a randomized model's step predicts.
        samples: the per-draw logits ``(D, N, K)``, detached: the draws' decisions, from which
            an attack picks its candidate point on a randomized model
            (:func:`~robustlab.attacks.verdict.badness_of`) at no extra pass.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    samples: torch.Tensor


@dataclass(frozen=True)
class GradEstimate(Prediction):
    """What a gradient estimator returns for a batch: the prediction at the input plus

    Attributes:
        grad: the (estimated) gradient of the per-sample objective w.r.t. the input.
        loss: per-sample objective (mean over draws for EOT), detached.
    """

    grad: torch.Tensor
    loss: torch.Tensor


class GradientEstimator(abc.ABC):
    """How a gradient attack obtains the gradient of its objective (plain, EOT, ...)."""

    @abc.abstractmethod
    def __call__(self, fmodel: ModelFn, x: torch.Tensor, objective: Objective) -> GradEstimate:
        """Estimate the gradient of ``objective(fmodel(x)).sum()`` with respect to ``x``."""

    def draws(self, fmodel: ModelFn) -> int:
        """Forward passes the estimator averages per step on ``fmodel``."""
        return 1

    @torch.no_grad()
    def predict(self, fmodel: ModelFn, x: torch.Tensor) -> Prediction:
        """The prediction at ``x`` averaged over the estimator's draws (no gradient)."""
        samples = torch.stack([fmodel(x) for _ in range(self.draws(fmodel))])
        return Prediction(samples.mean(dim=0), samples.float().softmax(dim=-1).mean(dim=0), samples)

    @staticmethod
    def _once(fmodel: ModelFn, x: torch.Tensor, objective: Objective) -> GradEstimate:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = fmodel(x)
            loss = objective(logits)
            grad = fmodel.grad(loss.sum(), x)
        logits = logits.detach()
        return GradEstimate(logits, logits.float().softmax(dim=1), logits.unsqueeze(0), grad.detach(),
                            loss.detach())


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
    passes draws fresh randomness from the model (its :class:`core.randomness.Stochastic`
    layers, or randomness found empirically, see :func:`model_fn`). The estimate's prediction
    is the mean softmax over the ``n`` draws: what an attack's early stop on a randomized model
    is judged on (see :class:`Attack`).

    Args:
        n: number of draws.
        normalize: average per-sample L2-normalized gradients, ``E_r[grad / ||grad||_2]``,
            instead of raw ones (Bakiskan et al., "A Neuro-Inspired Autoencoding Defense Against
            Adversarial Perturbations", Sec. 5, attack settings: found stronger against their
            randomized sparse encoder; each draw votes for a direction with equal weight, so a
            few draws with huge gradients cannot dominate).
        skip_deterministic: when the model is not randomized (no active random layer, frozen,
            and no randomness detected) every draw is the same, so take one pass; the result
            then equals :class:`Gradient` exactly (normalized if asked). Set ``False`` to force
            ``n`` passes.
    """

    n: int = 20
    normalize: bool = False
    skip_deterministic: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise InputError(f"EOT needs n >= 1 draws, got {self.n!r}")

    def draws(self, fmodel: ModelFn) -> int:
        return self.n if (fmodel.stochastic or not self.skip_deterministic) else 1

    def __call__(self, fmodel: ModelFn, x: torch.Tensor, objective: Objective) -> GradEstimate:
        draws = self.draws(fmodel)
        grads, losses, samples = [], [], []
        for _ in range(draws):
            est = self._once(fmodel, x, objective)
            g = est.grad
            if self.normalize:
                g = g / batch_view(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)
            grads.append(g)
            losses.append(est.loss)
            samples.append(est.logits)
        if draws == 1:
            return GradEstimate(samples[0], samples[0].float().softmax(dim=1), samples[0].unsqueeze(0),
                                grads[0], losses[0])
        stacked = torch.stack(samples)
        return GradEstimate(stacked.mean(dim=0), stacked.float().softmax(dim=-1).mean(dim=0), stacked,
                            torch.stack(grads).mean(dim=0), torch.stack(losses).mean(dim=0))


def lp_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample L-inf or L2 norm of a batch ``(N, ...)``."""
    flat = v.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return flat.norm(dim=1)


def batch_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector ``(N,)`` shaped to broadcast over a batch ``like`` of shape ``(N, ...)``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def random_point(
    x: torch.Tensor,
    norm: str,
    radius: float | torch.Tensor,
    generator: torch.Generator | None,
    *,
    on_sphere: bool = False,
) -> torch.Tensor:
    """A random point around ``x`` at most ``radius`` away (per sample when a tensor), in [0, 1].

    ``on_sphere=False`` is PGD's start (Madry et al., 2018, Sec. 5): uniform in the L-inf ball,
    or a uniform random direction at a uniform fraction of the radius for L2.
    ``on_sphere=True`` is APGD's and FAB's start (Croce & Hein, 2020, reference code): a uniform
    (L-inf) or Gaussian (L2) direction scaled to the sphere of that radius in the norm.
    Draws on ``generator``'s device and moves the draws to ``x``'s.
    """
    dev = generator.device if generator is not None else x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)

    r = radius if isinstance(radius, torch.Tensor) else torch.full(
        (x.shape[0],), float(radius), device=x.device, dtype=x.dtype
    )
    if norm == "linf":
        d = 2 * rand(*x.shape) - 1
        if on_sphere:
            d = d / batch_view(lp_norm(d, "linf").clamp_min(1e-12), d)
        return (x + d * batch_view(r, d)).clamp(0.0, 1.0)
    d = randn(*x.shape)
    d = d / batch_view(lp_norm(d, "l2").clamp_min(1e-12), d)
    if not on_sphere:
        r = r * rand(x.shape[0])
    return (x + d * batch_view(r, d)).clamp(0.0, 1.0)


def project(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project ``x_adv`` onto the ``threat`` ball around ``x`` and into [0, 1]."""
    delta = x_adv - x
    if threat.norm == "linf":
        delta = delta.clamp(-threat.eps, threat.eps)
    else:
        norms = lp_norm(delta, "l2")
        factor = (threat.eps / norms.clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * batch_view(factor, delta)
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
        x_adv = (x + delta * batch_view(factor, delta)).clamp(0.0, 1.0)
    bad = lp_norm(x_adv - x, threat.norm) > threat.eps
    return torch.where(batch_view(bad, x), x, x_adv)


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
        draw only about half the time; so every sample runs the attack's full budget, and
        its candidate is the iterate that most of its step's draws call a success
        (:meth:`pick`), proposed to the incumbent at the end of the restart.
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

    def index(self, keep: torch.Tensor) -> Pick:
        """The picks of rows ``keep`` only."""
        out = Pick(self.x[keep])
        out.badness = self.badness[keep] if self.badness is not None else None
        return out


class Attack(abc.ABC):
    """Base class of every attack: a configured, immutable object run on a model at call time.

    The base class owns the rules. :meth:`run` checks inputs, wraps the model in a counting
    :class:`ModelFn` (establishing whether the model is randomized, by the
    :class:`core.randomness.Stochastic` protocol or empirically), lets the subclass search
    (:meth:`_run`), projects the result onto the threat ball and into [0, 1] (and asserts that
    it is there), and judges it with the :class:`Verdict`, the one rule shared with AutoAttack
    and the battery runner. It also runs the sanity checks (:mod:`~robustlab.attacks.checks`).

    Early stopping, one rule for every attack (:meth:`RunContext.confirmed`): an attack keeps
    attacking a sample until the sample is *confirmed* broken or the budget is spent. On a
    deterministic model a step's prediction confirms it. On a randomized model nothing does:
    neither one draw nor the mean softmax over one step's EOT draws (measured: stopping at
    the first point whose EOT-20 mean softmax is wrong leaves points that fool a fresh draw
    about half the time, weaker than running on), so every sample gets the attack's full
    budget and returns its end point (last iterate, or highest-loss point). Either way the
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
            verdict: how the result is judged; default one fresh forward (:class:`Verdict`).
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
        ctx.model.check_agrees(p_robust, incumbent.known(ctx.model, verdict).p_correct)
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
