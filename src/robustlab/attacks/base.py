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
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..core.bpda import BPDA_MODES, BPDAMode, bpda
from ..core.checks import check_images, check_labels
from ..core.errors import InputError
from ..core.randomness import detect_randomness, is_frozen, is_stochastic
from ..core.types import ThreatModel
from .checks import (
    EvalWarning,
    gradient_warnings,
    merge_warnings,
    randomness_warnings,
    train_mode_warning,
)

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


class ModelFn:
    """A model seen through :func:`logits_of` that counts image evaluations.

    Attacks call the model only through this wrapper, so the counts in :class:`AttackResult` are
    complete. ``randomness`` is fixed when the run starts: ``"protocol"`` (an active, unfrozen
    :class:`core.randomness.Stochastic` layer), ``"detected"`` (two forwards of one batch
    differ; :func:`core.randomness.detect_randomness`) or ``"none"``; ``stochastic`` is true for
    the first two. Built without ``randomness``, only the protocol is consulted (use
    :func:`model_fn` to detect randomness on a batch).

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
            randomness = "protocol" if isinstance(model, nn.Module) and is_stochastic(model) else "none"
        if randomness not in ("protocol", "detected", "none"):
            raise InputError(f"randomness must be 'protocol', 'detected' or 'none', got {randomness!r}")
        self.randomness = randomness
        self.stochastic = randomness != "none"
        self.frozen = isinstance(model, nn.Module) and is_frozen(model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_passes += x.shape[0]
        return logits_of(self.model(x))

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
        return logits_of(self.model(x))


DETECTION_BATCH = 256
"""At most this many samples are forwarded twice by :func:`model_fn`'s randomness check."""


def model_fn(
    model: nn.Module | Callable[[torch.Tensor], Any], x: torch.Tensor, randomness: str | None = None
) -> ModelFn:
    """The counting wrapper for a run on ``x``, with the model's randomness established.

    A model with an active :class:`core.randomness.Stochastic` layer is randomized by the
    protocol; any other model (frozen ones and plain callables included) is forwarded twice on
    up to :data:`DETECTION_BATCH` samples of ``x`` and treated as randomized when the two
    outputs differ (the reference AutoAttack's check). ``randomness`` skips the check (an
    evaluator that checked once for a whole run passes what it found).
    """
    if randomness is not None:
        fm = ModelFn(model, randomness)
    else:
        fm = ModelFn(model)
        if not fm.stochastic and x.shape[0]:
            probe = x[:DETECTION_BATCH]
            if detect_randomness(fm.evaluate, probe):
                fm = ModelFn(model, "detected")
            fm.verdict_passes = 2 * probe.shape[0]
    return fm


@dataclass(frozen=True)
class Prediction:
    """A prediction at a batch, possibly averaged over random draws.

    Attributes:
        logits: logits (mean over the draws), detached.
        probs: mean softmax over the draws, detached: what a randomized model's step predicts.
    """

    logits: torch.Tensor
    probs: torch.Tensor


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
        logits_sum: torch.Tensor | None = None
        probs_sum: torch.Tensor | None = None
        k = self.draws(fmodel)
        for _ in range(k):
            z = fmodel(x)
            p = z.float().softmax(dim=1)
            logits_sum = z if logits_sum is None else logits_sum + z
            probs_sum = p if probs_sum is None else probs_sum + p
        assert logits_sum is not None and probs_sum is not None
        return Prediction(logits_sum / k, probs_sum / k)

    @staticmethod
    def _once(fmodel: ModelFn, x: torch.Tensor, objective: Objective) -> GradEstimate:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = fmodel(x)
            loss = objective(logits)
            grad = fmodel.grad(loss.sum(), x)
        logits = logits.detach()
        return GradEstimate(logits, logits.float().softmax(dim=1), grad.detach(), loss.detach())


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
        grad: torch.Tensor | None = None
        loss: torch.Tensor | None = None
        logits: torch.Tensor | None = None
        probs: torch.Tensor | None = None
        for _ in range(draws):
            est = self._once(fmodel, x, objective)
            g = est.grad
            if self.normalize:
                g = g / batch_view(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)
            if grad is None or loss is None or logits is None or probs is None:
                grad, loss, logits, probs = g, est.loss, est.logits, est.probs
            else:
                grad, loss = grad + g, loss + est.loss
                logits, probs = logits + est.logits, probs + est.probs
        assert grad is not None and loss is not None and logits is not None and probs is not None
        if draws == 1:
            return GradEstimate(logits, probs, grad, loss)
        return GradEstimate(logits / draws, probs / draws, grad / draws, loss / draws)


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
        success: per-sample bool, the :class:`Verdict` on ``x_adv``: untargeted
            ``argmax != y``, targeted ``argmax == target``. For a randomized model the verdict
            is a fresh draw (or the mean softmax over the verdict's draws), never the draws the
            attack optimized against.
        logits: the verdict's logits (log of the mean softmax when it averaged several draws).
        forward_passes: image forward evaluations of the search (see the module docstring).
        backward_passes: image backward evaluations of the search.
        queries: per-sample forward queries, for score-based attacks (Square); else ``None``.
        attack: name of the attack that produced the result.
        randomness: ``"protocol"``, ``"detected"`` or ``"none"`` (see :func:`model_fn`).
        verdict_passes: image forwards of the verdict and the randomness check.
        warnings: the sanity checks' findings (:mod:`robustlab.attacks.checks`).
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

    @property
    def robust(self) -> torch.Tensor:
        """Per-sample ``~success``."""
        return ~self.success

    @property
    def robust_accuracy(self) -> float:
        """Fraction of samples the attack did not break (untargeted: robust accuracy)."""
        return float((~self.success).float().mean()) if self.success.numel() else float("nan")


@dataclass(frozen=True)
class Verdict:
    """The one rule that decides whether a point breaks a sample, used by :meth:`Attack.run`,
    :class:`~robustlab.attacks.AutoAttack` and the battery runner alike.

    A sample is broken when the verdict's prediction at the attack's point is wrong
    (untargeted: ``argmax != y``; targeted: ``argmax == target``). The prediction is a fresh
    forward in evaluation batches of ``batch_size`` (never the attack's internal logits): on a
    deterministic model one forward; on a randomized one ``draws`` fresh draws whose softmax is
    averaged (one fresh draw by default), so the draws an attack optimized against never judge
    it. A sample is robust only if no attack produced a point the verdict calls broken.

    Args:
        draws: forwards averaged (mean softmax) on a randomized model.
        batch_size: samples per verdict forward.
    """

    draws: int = 1
    batch_size: int = 500

    def __post_init__(self) -> None:
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise InputError(f"the verdict needs draws >= 1, got {self.draws!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"the verdict needs batch_size >= 1, got {self.batch_size!r}")

    def logits(self, fmodel: ModelFn, x: torch.Tensor) -> torch.Tensor:
        """The verdict's logits at ``x``: one forward, or the log mean softmax over the draws."""
        draws = self.draws if fmodel.stochastic else 1
        out = []
        for chunk in x.split(self.batch_size):
            if draws == 1:
                out.append(fmodel.evaluate(chunk))
                continue
            probs = fmodel.evaluate(chunk).float().softmax(dim=1)
            for _ in range(draws - 1):
                probs = probs + fmodel.evaluate(chunk).float().softmax(dim=1)
            out.append((probs / draws).log())
        return torch.cat(out) if out else x.new_zeros(0, 0)

    def judge(
        self, fmodel: ModelFn, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(success, logits)`` at points ``x`` for labels ``y`` (and ``targets``)."""
        if x.shape[0] == 0:
            return torch.zeros(0, dtype=torch.bool, device=x.device), x.new_zeros(0, 0)
        logits = self.logits(fmodel, x)
        pred = logits.argmax(dim=1)
        return (pred == targets if targets is not None else pred != y), logits


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
        """Logits at the clean inputs (one forward), computed once."""
        if self.clean is None:
            self.clean = self.model.predict(self.x)
        return self.clean

    def is_adversarial(
        self, pred: Prediction, y: torch.Tensor, targets: torch.Tensor | None
    ) -> torch.Tensor:
        """Whether a step's prediction is wrong (untargeted) or hits the target, judged on the
        mean softmax over the step's draws on a randomized model (a *candidate*: FAB and CW
        keep the closest such point; the verdict judges it later)."""
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
        draw only about half the time; so every sample runs the attack's full budget and
        returns the attack's end point (its last iterate, or its highest-loss point).
        """
        if self.stochastic:
            return torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        top = logits.argmax(dim=1)
        return top == targets if targets is not None else top != y

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
            clean=clean[idx] if clean is not None else None,
        )


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
        ctx = RunContext(
            model=fmodel, x=x, y=y, targets=targets, generator=generator,
            shrink=not (fmodel.frozen or full_budget),
        )
        x_adv, success, logits, checks = self._execute(ctx, verdict)
        found += self._checks(fmodel) + checks
        return AttackResult(
            x_adv=x_adv.detach(),
            success=success,
            logits=logits.detach(),
            forward_passes=fmodel.forward_passes,
            backward_passes=fmodel.backward_passes,
            queries=ctx.queries,
            attack=self.name,
            randomness=fmodel.randomness,
            verdict_passes=fmodel.verdict_passes,
            warnings=merge_warnings(found),
        )

    def _execute(
        self, ctx: RunContext, verdict: Verdict
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[EvalWarning]]:
        """Search, then judge: ``(x_adv, success, verdict logits, findings)``. Ensembles
        override it (and report their own findings)."""
        x_adv = self.perturb(ctx)
        success, logits = verdict.judge(ctx.model, x_adv, ctx.y, ctx.targets)
        return x_adv, success, logits, []

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
