"""Learning-rate schedules as per-step multipliers of the base learning rate.

Every schedule is a function of the global step, wrapped in ``LambdaLR`` and stepped once per
batch, so resuming from a saved scheduler state continues the exact curve.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..core import InputError, Registry

SCHEDULES: Registry[Callable[..., Callable[[int], float]]] = Registry("schedule")

HORIZON_FREE = frozenset({"constant", "multistep"})
"""Schedules whose rate at a step does not depend on the total number of steps, so a run can be
extended (``epochs`` raised on resume) without changing the rates already used. ``cosine``,
``onecycle`` and ``cyclic`` lay their curve over the whole run; a schedule registered elsewhere
counts as horizon-dependent unless added here."""


def horizon_free(name: str) -> bool:
    """Whether the schedule ``name`` allows changing the number of epochs of a started run."""
    return name in HORIZON_FREE


def _warmup(step: int, warmup_steps: int) -> float | None:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return None


@SCHEDULES.register("constant")
def constant(total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0) -> Callable[[int], float]:
    """Constant learning rate after an optional linear warmup."""
    w = int(warmup_epochs * steps_per_epoch)
    return lambda s: _warmup(s, w) or 1.0


@SCHEDULES.register("cosine")
def cosine(
    total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0, min_factor: float = 0.0
) -> Callable[[int], float]:
    """Linear warmup, then cosine annealing to ``min_factor`` of the base rate (SGDR without restarts)."""
    w = int(warmup_epochs * steps_per_epoch)

    def f(s: int) -> float:
        up = _warmup(s, w)
        if up is not None:
            return up
        t = min(1.0, (s - w) / max(1, total_steps - w))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return f


@SCHEDULES.register("multistep")
def multistep(
    total_steps: int,
    steps_per_epoch: int,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> Callable[[int], float]:
    """Multiply the rate by ``gamma`` at each milestone epoch (e.g. 100 and 105 in Rice et al.)."""
    if not milestones:
        raise InputError("the multistep schedule needs milestones (epochs), e.g. milestones=(100, 105)")
    w = int(warmup_epochs * steps_per_epoch)
    marks = sorted(int(m * steps_per_epoch) for m in milestones)

    def f(s: int) -> float:
        up = _warmup(s, w)
        if up is not None:
            return up
        return float(gamma ** sum(s >= m for m in marks))

    return f


@SCHEDULES.register("pang-100-105")
def pang_100_105(total_steps: int, steps_per_epoch: int, warmup_epochs: float = 0.0) -> Callable[[int], float]:
    """The rate divided by 10 at epoch 100 and again at epoch 105: ``multistep`` with
    ``milestones=(100, 105), gamma=0.1``, for a 110-epoch run.

    The early-stopping schedule of Pang et al. (2021, "Bag of Tricks for Adversarial Training"),
    which the stride-shrinking paper applies to AT, ALP and TRADES (Sec. V-A: "decayed by
    a factor 10 at 100 and 105 epoch", citing Pang et al. as [23]); its code calls it
    ``Pang2021ICLR``. It is not listed in :data:`HORIZON_FREE` (that list also phrases the
    trainer's refusal message), so a run on it cannot be lengthened on resume; ``multistep`` with
    the same milestones can.
    """
    return SCHEDULES.get("multistep")(total_steps, steps_per_epoch, milestones=(100, 105), gamma=0.1,
                                      warmup_epochs=warmup_epochs)


@SCHEDULES.register("onecycle")
def onecycle(
    total_steps: int, steps_per_epoch: int, pct_start: float = 0.25, div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Callable[[int], float]:
    """One-cycle policy (Smith & Topin 2019): cosine rise to the base rate, cosine fall to ~0."""
    up = max(1, int(pct_start * total_steps))
    start, end = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)

    def f(s: int) -> float:
        if s < up:
            t = s / up
            return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * t))
        t = min(1.0, (s - up) / max(1, total_steps - up))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))

    return f


@SCHEDULES.register("cyclic")
def cyclic(total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Triangular cycle 0 -> max -> 0: linear rise over the first half, linear fall over the second.

    The schedule of the sparse-encoder paper (Section 5, "cyclic learning rate scheduler (Smith
    2017) with eta_min = 0 and eta_max = 0.05"); the base learning rate is eta_max.
    """
    def f(s: int) -> float:
        # the continuous triangle 1 - |2t - 1| sampled at the middle of each step, t in [0, 1]
        t = min(1.0, (s + 0.5) / total_steps)
        return 1.0 - abs(2.0 * t - 1.0)

    return f


def create_schedule(
    name: str, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, **kwargs: object
) -> LambdaLR:
    """Build a per-step ``LambdaLR`` for the named schedule."""
    if total_steps <= 0 or steps_per_epoch <= 0:
        raise InputError(f"a schedule needs positive step counts, got total={total_steps}, per epoch={steps_per_epoch}")
    factory = SCHEDULES.get(name)
    accepted = [p for p in inspect.signature(factory).parameters if p not in ("total_steps", "steps_per_epoch")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise InputError(
            f"schedule {name!r} takes no option {', '.join(unknown)}; its options: "
            f"{', '.join(accepted) or 'none'}"
        )
    fn = factory(total_steps, steps_per_epoch, **kwargs)
    return LambdaLR(optimizer, fn)
