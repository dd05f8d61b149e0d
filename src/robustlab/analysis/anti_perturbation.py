"""The anti-perturbation ratio of Table II: how many predictions survive a PGD attack.

Xu & Yang, "Understanding Adversarial Robustness from Feature Maps of Convolutional Layers"
(``papers/feature-map-strides``), Sec. III-A (condition III.2) and Sec. IV-B ("Anti-perturbation
ability", Table II): "the proportion of samples, whose classification results remain unchanged
after perturbation ... Here we only care about the invariance of the predicted results,
regardless of the correctness." So the ratio at a radius ``eps`` is, over *all* samples
(misclassified ones included),

    ratio(eps) = #{i : f(x_i + delta_i) = f(x_i)} / N,

with ``f`` the predicted class and ``delta_i`` found by PGD within the ``eps``-ball. It is 1 at
``eps = 0`` by definition (Table II's first column is 100 for every model).

Which label the PGD ascends against the paper does not say. III.2 asks for a perturbation that
changes the prediction, so by default (``labels="predicted"``) PGD maximizes the cross-entropy
of the clean *prediction*: for a correctly classified sample this is the usual attack on ``y``;
for a misclassified one it searches for a change of the (wrong) prediction, which an attack on
``y`` would not. ``labels="true"`` attacks ``y`` instead (the usual PGD evaluation) and then runs
the full budget, because an early stop at the first misclassified iterate would stop a
misclassified sample at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..attacks import PGD, EvalWarning, Verdict, merge_warnings, model_fn
from ..core.checks import check_images, check_int, check_labels
from ..core.errors import InputError
from ..core.types import ThreatModel

__all__ = ["AntiPerturbationResult", "anti_perturbation_ratio"]

AttackLabels = Literal["predicted", "true"]


@dataclass(frozen=True)
class AntiPerturbationResult:
    """Per-radius counts of unchanged predictions (Table II).

    Attributes:
        eps: the radii, in the order given.
        unchanged: per radius, samples whose prediction at the PGD point equals the clean one.
        total: number of samples.
        clean_correct: samples whose clean prediction equals ``y`` (natural accuracy's count;
            the ratio itself ignores correctness).
        norm: the threat norm.
        steps: PGD iterations.
        step_sizes: per radius, the PGD step size used.
        labels: what PGD attacked: ``"predicted"`` (clean predictions) or ``"true"`` (``y``).
        warnings: the attacks' sanity-check findings (e.g. all-zero gradients), merged.
    """

    eps: tuple[float, ...]
    unchanged: tuple[int, ...]
    total: int
    clean_correct: int
    norm: str
    steps: int
    step_sizes: tuple[float, ...]
    labels: str
    warnings: tuple[EvalWarning, ...] = ()

    @property
    def ratios(self) -> tuple[float, ...]:
        """Per radius, ``unchanged / total`` (NaN for an empty batch)."""
        return tuple(u / self.total if self.total else math.nan for u in self.unchanged)

    @property
    def clean_accuracy(self) -> float:
        """``clean_correct / total``."""
        return self.clean_correct / self.total if self.total else math.nan

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (ratios included)."""
        return {
            "eps": list(self.eps),
            "ratios": list(self.ratios),
            "unchanged": list(self.unchanged),
            "total": self.total,
            "clean_correct": self.clean_correct,
            "norm": self.norm,
            "steps": self.steps,
            "step_sizes": list(self.step_sizes),
            "labels": self.labels,
            "warnings": [w.to_dict() for w in self.warnings],
        }


def _step_size(step_size: float | Callable[[float], float], eps: float) -> float:
    value = float(step_size(eps)) if callable(step_size) else float(step_size)
    if not (math.isfinite(value) and value >= 0):
        raise InputError(f"the PGD step size must be a finite number >= 0, got {value!r} at eps={eps}")
    return value


def anti_perturbation_ratio(
    model: nn.Module | Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: torch.Tensor,
    eps_grid: Sequence[float],
    *,
    steps: int,
    step_size: float | Callable[[float], float],
    norm: Literal["linf", "l2"] = "linf",
    labels: AttackLabels = "predicted",
    generator: torch.Generator | None = None,
    verdict: Verdict | None = None,
    batch_size: int = 256,
) -> AntiPerturbationResult:
    """The fraction of predictions a PGD attack does not change, per radius (Table II).

    Each radius runs the library's :class:`~robustlab.attacks.PGD` (random start, one restart)
    on every sample; the prediction at its point is compared with the clean prediction, both
    judged by the same :class:`~robustlab.attacks.Verdict` (a fresh forward on a deterministic
    model; on a randomized one each is a fresh draw or a mean over ``verdict.draws``, so even
    ``eps = 0`` can show changes there). See the module docstring for the definition.

    Args:
        model: maps [0, 1] images to logits; put it in eval mode first.
        x: images, NCHW in [0, 1].
        y: true labels (counted in ``clean_correct``; attacked only with ``labels="true"``).
        eps_grid: radii in pixel space (Table II: 0, 2/255, ..., 10/255).
        steps: PGD iterations per radius.
        step_size: PGD step, a number for every radius or a function of the radius
            (e.g. ``lambda eps: eps / 4``).
        norm: ``"linf"`` (Table II) or ``"l2"``.
        labels: ``"predicted"`` (default) or ``"true"``; see the module docstring.
        generator: source of PGD's random starts (on ``x``'s device); one stream for all radii
            and batches, so a seeded run repeats.
        verdict: how predictions are judged (default one fresh forward).
        batch_size: samples attacked at once.

    Raises:
        InputError: for bad images or labels, an empty grid, a negative radius or step size, or
            an unknown ``labels``.
    """
    check_images(x, "x")
    check_labels(y, x.shape[0])
    if labels not in ("predicted", "true"):
        raise InputError(f"labels must be 'predicted' or 'true', got {labels!r}")
    if isinstance(eps_grid, (int, float)) or len(eps_grid) == 0:
        raise InputError(f"eps_grid must be a non-empty sequence of radii, got {eps_grid!r}")
    check_int(batch_size, "batch_size", 1)
    threats = [ThreatModel(norm, float(eps)) for eps in eps_grid]  # validates norm and radii
    step_sizes = [_step_size(step_size, t.eps) for t in threats]
    attacks = [
        PGD(threat, steps, step_size=alpha) for threat, alpha in zip(threats, step_sizes, strict=True)
    ]
    verdict = Verdict() if verdict is None else verdict
    if generator is None:
        generator = torch.Generator(device=x.device)
    y = y.to(x.device)

    unchanged = [0] * len(attacks)
    clean_correct = 0
    found: list[EvalWarning] = []
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size].detach(), y[start : start + batch_size]
        clean_pred = verdict.logits(model_fn(model, xb), xb).argmax(dim=1)
        clean_correct += int((clean_pred == yb).sum())
        attacked = clean_pred if labels == "predicted" else yb
        for i, attack in enumerate(attacks):
            result = attack.run(
                model, xb, attacked, generator=generator, verdict=verdict,
                full_budget=labels == "true",
            )
            unchanged[i] += int((result.logits.argmax(dim=1) == clean_pred).sum())
            found.extend(result.warnings)
    return AntiPerturbationResult(
        eps=tuple(t.eps for t in threats),
        unchanged=tuple(unchanged),
        total=int(x.shape[0]),
        clean_correct=clean_correct,
        norm=norm,
        steps=int(steps),
        step_sizes=tuple(step_sizes),
        labels=labels,
        warnings=merge_warnings(found),
    )
