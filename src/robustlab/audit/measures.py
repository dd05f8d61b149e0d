"""Measurements the checklist reads (:mod:`.checks`): the largest meaningful eps, the per-image
worst case over results, how often draws disagree (Gao et al. 2022), and the health of input
gradients (Athalye et al. 2018, Sec. 3).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import (
    logits_of,
)
from ..core.bpda import BPDAMode
from ..core.bpda import bpda as bpda_context
from ..core.checks import check_int
from ..core.errors import InputError
from ..core.types import ThreatModel
from ..evaluate import (
    EvalResult,
    worst_case,
)
from .checklist import EXPLODING_RATIO

__all__ = ["disagreement", "gradient_health", "max_eps", "worst_of"]

def max_eps(threat: ThreatModel, x: torch.Tensor) -> float:
    """The radius at which any image in [0, 1] can become any other: 1 in L-inf, the box's
    diagonal ``sqrt(d)`` in L2 (``d`` values per image). Carlini et al. (2019, Sec. 5.2): no
    classifier does better than chance there (at half of it every image can become solid grey)."""
    if threat.norm == "linf":
        return 1.0
    return math.sqrt(x[0].numel())


def worst_of(results: Sequence[EvalResult] | Mapping[str, EvalResult]) -> torch.Tensor:
    """Per image, the figure of the evaluation that is worst for it (the first repeat).

    Each image takes the evaluation with the lowest choosing estimate (``p_select``) and reports
    that evaluation's fresh estimate (``p_robust``), so the choice does not bias the figure
    (:func:`robustlab.evaluate.worst_case`). On a deterministic model this is the AND over the
    evaluations' 0/1 outcomes.
    """
    runs = list(results.values()) if isinstance(results, Mapping) else list(results)
    if not runs:
        raise InputError("worst_of needs at least one EvalResult")
    probs = [r.probabilities() for r in runs]
    robust = [p["robust"][0].tolist() for p in probs]
    select = [p["select"][0].tolist() for p in probs]
    return torch.tensor(worst_case(robust, select), dtype=torch.float64)


def sampling_noise(p: torch.Tensor, k: int) -> float:
    """Standard error of the mean of per-image probabilities ``p``, each estimated on ``k`` draws."""
    p = p.double()
    return math.sqrt(float((p * (1 - p)).sum()) / k) / max(p.numel(), 1)


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def pts(v: float) -> str:
    return f"{100 * v:.1f} points"


@torch.no_grad()
def disagreement(model: nn.Module, x: torch.Tensor, draws: int, batch_size: int = 256) -> torch.Tensor:
    """Per image, the fraction of pairs of ``draws`` forwards whose predicted labels differ.

    Gao et al. (2022) measure how random a randomized defense's predictions are; a model whose
    figure comes from disagreeing draws is robust only on average. 0 on a deterministic model.
    """
    check_int(draws, "draws", 2)
    out = []
    for lo in range(0, x.shape[0], batch_size):
        xb = x[lo: lo + batch_size]
        preds = torch.stack([logits_of(model(xb)).argmax(dim=1) for _ in range(draws)])  # (R, n)
        classes = int(preds.max()) + 1
        counts = F.one_hot(preds, classes).sum(dim=0).double()  # (n, C)
        same = (counts * (counts - 1)).sum(dim=1) / (draws * (draws - 1))
        out.append(1 - same)
    return torch.cat(out).cpu()


def gradient_health(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    draws: int = 1,
    ratio: float = EXPLODING_RATIO,
    bpda: BPDAMode | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Fractions of all-zero, non-finite and exploding per-image input gradients of the
    cross-entropy at ``x``, over ``draws`` forwards (Athalye et al. 2018, Sec. 3: shattered,
    stochastic, exploding and vanishing gradients).

    A gradient is *exploding* when its norm is infinite, or when its norm divided by ``1 - p_y``
    (``p_y`` the softmax probability of the label) exceeds ``ratio`` times the median of these
    values over every finite, non-zero gradient. Dividing by ``1 - p_y`` turns the cross-entropy's
    gradient ``sum_k (p_k - [k = y]) grad z_k`` into a convex combination of logit-margin
    gradients, so a confident image's naturally small gradient does not make the median tiny.

    Returns:
        ``{"evaluations", "zero", "nonfinite", "exploding"}`` (fractions) and ``"median"`` (the
        median normalized norm, ``None`` when no gradient was finite and non-zero).
    """
    norms: list[torch.Tensor] = []
    zero = nonfinite = infinite = total = 0
    scope = bpda_context(model, bpda) if bpda is not None else contextlib.nullcontext()
    with scope:
        for _ in range(draws):
            for lo in range(0, x.shape[0], batch_size):
                xb = x[lo: lo + batch_size].detach().clone().requires_grad_(True)
                yb = y[lo: lo + batch_size].to(xb.device)
                with torch.enable_grad():
                    z = logits_of(model(xb))
                    loss = F.cross_entropy(z, yb, reduction="sum")
                    grad = (torch.autograd.grad(loss, xb, allow_unused=True)[0]
                            if loss.requires_grad else None)
                flat = (torch.zeros_like(xb) if grad is None else grad.detach()).flatten(1).double()
                finite = torch.isfinite(flat).all(dim=1)
                is_zero = finite & (flat == 0).all(dim=1)
                norm = flat.norm(dim=1)
                logp = F.log_softmax(z.detach().double(), dim=1)
                other = (-torch.expm1(logp.gather(1, yb.unsqueeze(1)).squeeze(1))).clamp_min(0)
                usable = finite & ~is_zero & torch.isfinite(norm) & (other > 0)
                total += flat.shape[0]
                zero += int(is_zero.sum())
                nonfinite += int((~finite).sum())
                infinite += int((finite & ~torch.isfinite(norm)).sum())
                norms.append((norm[usable] / other[usable]).cpu())
    scaled = torch.cat(norms) if norms else torch.zeros(0, dtype=torch.float64)
    median = float(scaled.median()) if scaled.numel() else None
    exploding = infinite + (int((scaled > ratio * median).sum()) if median else 0)
    return {"evaluations": total, "zero": zero / total if total else 0.0,
            "nonfinite": nonfinite / total if total else 0.0,
            "exploding": exploding / total if total else 0.0, "median": median}
