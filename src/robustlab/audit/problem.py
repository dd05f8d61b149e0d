"""One image's binarized problem (:mod:`.binarization`): the test's settings, the inner and boundary
points, the features, the perfectly separating linear readout (scikit-learn, as the reference) and
its logit rescaling, and the binarized model; the random-ASR control.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..attacks import logits_of
from ..attacks.model import model_fn
from ..attacks.verdict import VERDICT_DRAWS
from ..core.checks import check_images, check_int, check_number, check_probability
from ..core.errors import InputError
from ..core.randomness import is_frozen, seed_stochastic, stochastic_layers
from ..core.types import ThreatModel
from ..evaluate import derive_seed
from .features import binarized, features_and_outputs, find_head, frozen_path
from .points import on_surface, uniform_in_ball

__all__ = ["READOUTS", "RESCALES", "BinarizationSettings", "BinarizedProblem", "binarize_sample"]

ReadoutKind = Literal["logistic", "svm"]
RescaleKind = Literal["fixed", "adaptive", "tight"]
READOUTS = ("logistic", "svm")
RESCALES = ("fixed", "adaptive", "tight", None)

LAYER_SEED_BITS = 40  # seed_stochastic multiplies by ~2**20; keep the product below 2**63
_MAX_ITER = 10_000  # the reference's sklearn runs use max(1000, lr) with lr = 10000
_SVM_C = 1e6  # the reference's LinearSVC: "C should not have any effect" on a separable problem
_TIGHT = 0.999  # the reference's "tight" rescaling keeps 0.1% of the nearest boundary margin


@dataclass(frozen=True)
class BinarizationSettings:
    """How each binarized problem is built (defaults: the reference's case studies).

    Attributes:
        inner: random inner points per image (class 0), the clean point not counted (the case
            studies: 999; a quick run: 49).
        boundary: points at distance ``eps`` (class 1); the reference uses 1.
        eta: inner points lie within ``eta * eps`` (the reference: ``1 - 0.05``).
        far_off: points at ``xi * eps`` (class 1), outside the threat model.
        xi: the far-off points' distance in units of ``eps`` (the reference: 1.5).
        corners: L-inf only: boundary points at random corners of the box instead of rescaled
            uniform points.
        readout: ``"logistic"`` (no penalty; the case studies' ``sklearn``) or ``"svm"``
            (``sklearn-svm``).
        rescale: the logit rescaling: ``"adaptive"`` (most case studies), ``"fixed"`` (the
            reference function's default), ``"tight"`` or ``None``.
        closeness: how close the decision boundary moves to the boundary points (the case
            studies: 0.999 to 0.9999); ``None`` keeps the fitted boundary.
        random_points: points of each kind of the random control (the case studies: 200);
            0 skips the control.
        feature_draws: forwards averaged per point's features on a randomized model.
        threshold: the ASR the test asks for (robustlab's choice, see the module docstring).
        level: the confidence level of the test ASR's interval.
    """

    inner: int = 999
    boundary: int = 1
    eta: float = 0.95
    far_off: int = 0
    xi: float = 1.5
    corners: bool = False
    readout: ReadoutKind = "logistic"
    rescale: RescaleKind | None = "adaptive"
    closeness: float | None = 0.999
    random_points: int = 200
    feature_draws: int = 8
    threshold: float = 0.95
    level: float = 0.95

    def __post_init__(self) -> None:
        check_int(self.inner, "inner", 1)
        check_int(self.boundary, "boundary", 1)
        check_number(self.eta, "eta", 0, 1, low_open=True, high_open=True)
        check_int(self.far_off, "far_off", 0)
        check_number(self.xi, "xi", 1, low_open=True)
        if not isinstance(self.corners, bool):
            raise InputError(f"corners must be True or False, got {self.corners!r}")
        if self.readout not in READOUTS:
            raise InputError(f"unknown readout {self.readout!r}; use 'logistic' or 'svm'")
        if self.rescale not in RESCALES:
            raise InputError(f"unknown rescale {self.rescale!r}; use 'fixed', 'adaptive', 'tight' or None")
        if self.closeness is not None:
            check_probability(self.closeness, "closeness", high_open=True)
        check_int(self.random_points, "random_points", 0)
        check_int(self.feature_draws, "feature_draws", 1)
        check_number(self.threshold, "threshold", 0, 1, low_open=True)
        check_number(self.level, "level", 0, 1, low_open=True, high_open=True)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BinarizationSettings:
        """Inverse of :meth:`to_dict` (unknown keys are refused)."""
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown binarization settings {unknown}; known: {sorted(names)}")
        return cls(**dict(d))


def _logistic() -> Any:
    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    if (major, minor) >= (1, 8):  # 1.8 deprecates penalty=None for C=inf
        return LogisticRegression(C=np.inf, max_iter=_MAX_ITER)
    return LogisticRegression(penalty=None, max_iter=_MAX_ITER)


def _fit_readout(feats: torch.Tensor, labels: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit a linear separator of ``labels`` on ``feats``; returns ``(w, b)`` (``(F,)`` and
    ``()``, float64, on the CPU) with class 1 where ``f @ w + b > 0``. Features are
    standardized for the optimizer and the scaling is folded back into ``w`` and ``b``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    data = feats.detach().double().cpu().numpy()
    mean = data.mean(axis=0)
    scale = data.std(axis=0)
    tiny = scale <= 1e-6 * max(float(scale.max(initial=0.0)), 1e-30)
    scale = np.where(tiny, 1.0, scale)
    z = (data - mean) / scale
    clf = _logistic() if kind == "logistic" else LinearSVC(C=_SVM_C, max_iter=_MAX_ITER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        clf.fit(z, labels.cpu().numpy())
    coef = np.asarray(clf.coef_, dtype=np.float64).reshape(-1) / scale
    intercept = float(np.asarray(clf.intercept_).reshape(-1)[0]) - float((coef * mean).sum())
    return torch.from_numpy(coef), torch.tensor(intercept, dtype=torch.float64)


def _class_one(feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Which rows the two-class readout puts in class 1 (as the binarized model computes it)."""
    logits = feats.float() @ weight.float().T + bias.float()
    return logits.argmax(dim=1) == 1


@dataclass
class BinarizedProblem:
    """One image's binarized problem (:func:`binarize_sample`).

    Attributes:
        model: the binarized model (``None`` when not testable).
        weight: the readout's ``(2, F)`` weight (``None`` when no readout was fitted).
        bias: its ``(2,)`` bias.
        train_accuracy: the fitted readout's accuracy on its training features.
        reason: why the image is not testable (``""`` when it is).
        inner: the class-0 points, the clean point first.
        boundary: the class-1 points at distance ``eps``.
        far_off: the class-1 points at ``xi * eps``.
        boundary_asr: the fraction of ``draws`` fresh draws of the binarized model that put
            the best boundary point in class 1 (1.0 on a deterministic model).
    """

    model: nn.Module | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    train_accuracy: float | None
    reason: str
    inner: torch.Tensor
    boundary: torch.Tensor
    far_off: torch.Tensor
    boundary_asr: float | None = None

    @property
    def testable(self) -> bool:
        """Whether the readout separated the points and the binarized model was built."""
        return self.model is not None


def generator_for(seed: int, index: int, what: str) -> torch.Generator:
    """The generator of one draw (``what``) of image ``index``, derived from the test's ``seed``."""
    return torch.Generator().manual_seed(derive_seed(seed, "binarization", index, what))


def seed_layers(model: nn.Module, seed: int, index: int, what: str) -> None:
    """Seed ``model``'s random layers for one stage (``what``) of image ``index`` (unless frozen)."""
    if stochastic_layers(model) and not is_frozen(model):
        seed_stochastic(model, derive_seed(seed, "binarization", index, what, bits=LAYER_SEED_BITS))


def _accuracy_text(correct: torch.Tensor, labels: torch.Tensor) -> str:
    inner = float(correct[labels == 0].float().mean())
    outer = float(correct[labels == 1].float().mean())
    return f"train accuracy {float(correct.float().mean()):.4f} (inner {inner:.4f}, boundary {outer:.4f})"


def binarize_sample(
    model: nn.Module,
    x: torch.Tensor,
    *,
    threat: ThreatModel,
    settings: BinarizationSettings | None = None,
    seed: int = 0,
    index: int = 0,
    head: str | None = None,
    randomized: bool | None = None,
    draws: int = VERDICT_DRAWS,
    batch_size: int = 256,
) -> BinarizedProblem:
    """Build the binarized problem of one image ``x`` (``(1, C, H, W)``): steps 1-5 of the
    module docstring. Seeds ``model``'s random layers (from ``seed`` and ``index``).

    Args:
        model: the classifier (in eval mode).
        x: the image.
        threat: the threat model.
        settings: how to build it.
        seed, index: every random draw derives from them.
        head: the head's module name; default :func:`.features.find_head`.
        randomized: whether to average features over ``settings.feature_draws`` forwards;
            default: established on ``x`` (the randomness protocol, else two forwards differ).
        draws: on a randomized model, the fresh draws that estimate ``boundary_asr``.
        batch_size: points per forward.
    """
    settings = settings or BinarizationSettings()
    draws = check_int(draws, "draws", 1)
    check_images(x, "x")
    if x.shape[0] != 1:
        raise InputError(f"binarize_sample takes one image (1, C, H, W), got {tuple(x.shape)}")
    head = find_head(model, x) if head is None else head
    if randomized is None:
        randomized = model_fn(model, x.expand(2, *x.shape[1:])).randomness in ("protocol", "detected")
    eps = float(threat.eps)
    gen = generator_for(seed, index, "points")
    inner = torch.cat([x, uniform_in_ball(x, threat.norm, settings.eta * eps, settings.inner, gen)])
    boundary = on_surface(x, threat.norm, eps, settings.boundary, gen, corners=settings.corners)
    far_off = on_surface(x, threat.norm, settings.xi * eps, settings.far_off, gen)
    points = torch.cat([inner, boundary, far_off])
    labels = torch.cat([torch.zeros(len(inner), dtype=torch.long), torch.ones(len(boundary) + len(far_off),
                                                                             dtype=torch.long)])
    seed_layers(model, seed, index, "features")
    feature_draws = settings.feature_draws if randomized else 1
    feats, outputs = features_and_outputs(model, points, head=head, draws=feature_draws, batch_size=batch_size)
    feats, outputs = feats.cpu(), outputs.cpu()

    def untestable(reason: str, accuracy: float | None = None, w: torch.Tensor | None = None,
                   b: torch.Tensor | None = None) -> BinarizedProblem:
        return BinarizedProblem(None, w, b, accuracy, reason, inner, boundary, far_off)

    if not bool(torch.isfinite(feats).all()):
        return untestable("the features are not finite (NaN or inf)")
    try:
        w, b = _fit_readout(feats, labels, settings.readout)
    except ValueError as e:  # sklearn refuses degenerate data
        return untestable(f"the readout could not be fitted: {e}")
    weight = torch.stack([-w, w])
    bias = torch.stack([-b, b])
    correct = _class_one(feats, weight, bias) == (labels == 1)
    accuracy = float(correct.float().mean())
    if accuracy < 1.0:
        return untestable("no linear readout separates the inner from the boundary features: "
                          + _accuracy_text(correct, labels), accuracy, weight.float(), bias.float())
    score = feats.double() @ w + b  # class-1 margin (half the logit difference)
    on_boundary = slice(len(inner), len(inner) + len(boundary))
    logits = torch.stack([-score, score], dim=1)  # before the shift, as the reference rescales
    if settings.closeness is not None:
        nearest = float(score[on_boundary].min())
        bias = bias + torch.tensor([1.0, -1.0], dtype=torch.float64) * settings.closeness * nearest
    if settings.rescale is not None:
        span = float(logits.max() - logits.min())
        offset = 0.0
        factor = 1.0
        if settings.rescale == "fixed":
            factor = span
        elif settings.rescale == "adaptive":
            target = float(outputs.max() - outputs.min())
            if not target > 0:
                return untestable("the model's outputs are constant on the points (adaptive rescaling "
                                  "has no logit range to match)", accuracy)
            factor = span / target
            offset = float(outputs.min()) - float(logits.min()) / factor
        if settings.rescale == "tight":
            nearest = float((feats[on_boundary].double() @ weight[1] + bias[1]).min())
            bias = bias + torch.tensor([1.0, -1.0], dtype=torch.float64) * _TIGHT * nearest
        else:
            weight = weight / factor
            bias = bias / factor + offset
    weight, bias = weight.float(), bias.float()
    ones = _class_one(feats, weight, bias)
    if bool(ones[: len(inner)].any()) or not bool(ones[on_boundary].all()):
        return untestable("the separation does not survive the closeness shift and rescaling in float32 "
                          "(the margin is too small)", accuracy, weight, bias)
    device = next(iter(model.parameters()), x).device
    result = binarized(model, weight.to(device), bias.to(device), head=head)
    if not randomized:
        fresh = class_one_votes(result, torch.cat([inner[:1], boundary]), 1, batch_size) > 0.5
        if bool(fresh[0]) or not bool(fresh[1:].all()):
            return untestable("a fresh forward of the binarized model does not reproduce the readout's "
                              "separation (the features change with the batch)", accuracy, weight, bias)
        return BinarizedProblem(result, weight, bias, accuracy, "", inner, boundary, far_off, 1.0)
    seed_layers(result, seed, index, "boundary")
    votes = class_one_votes(result, boundary, draws, batch_size)
    best = float(votes.max())
    if best == 0.0:
        return untestable(f"the boundary point is class 1 on none of {draws} draws of the randomized binarized "
                          "model (its class-1 margin is below the draws' noise): no adversarial example is "
                          "known to an attack judged by draws", accuracy, weight, bias)
    return BinarizedProblem(result, weight, bias, accuracy, "", inner, boundary, far_off, best)


# ------------------------------------------------------------------ the control


@torch.no_grad()
def class_one_votes(model: nn.Module, points: torch.Tensor, draws: int, batch_size: int) -> torch.Tensor:
    """Per point, the fraction of ``draws`` forwards of the binarized model that say class 1
    (a frozen random model is forwarded one image at a time, as attacks see it)."""
    chunk = 1 if frozen_path(model) else batch_size
    votes = torch.zeros(len(points))
    for _ in range(draws):
        pred = torch.cat([logits_of(model(p)).argmax(dim=1).cpu() for p in points.split(chunk)])
        votes += (pred == 1).float()
    return votes / draws


def random_success_of(
    model: nn.Module, x: torch.Tensor, threat: ThreatModel, settings: BinarizationSettings,
    gen: torch.Generator, randomized: bool, draws: int, batch_size: int,
) -> bool:
    """The random-ASR control of one image: whether any random point (on the sphere of radius
    eps, at the box's corners, uniform in the ball) is class 1 for the binarized ``model`` (on a
    randomized model: for most of ``draws`` fresh draws)."""
    n = settings.random_points
    eps = float(threat.eps)
    parts = [on_surface(x, threat.norm, eps, n, gen), uniform_in_ball(x, threat.norm, eps, n, gen)]
    if threat.norm == "linf":
        parts.append(on_surface(x, threat.norm, eps, n, gen, corners=True))
    votes = class_one_votes(model, torch.cat(parts), draws if randomized else 1, batch_size)
    return bool((votes > 0.5).any())
