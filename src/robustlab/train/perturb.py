"""The training-time attacks of the robust objectives (:mod:`robustlab.train.robust`).

Unlike the evaluation attacks of :mod:`robustlab.attacks` (which keep the first adversarial point
they find and stop early), a training attack returns the end point of its whole ascent, as in
Madry et al. (2018); every random start is drawn from the objective's ``generator``.
:func:`attack_mode` runs an attack without letting it touch batch-norm running statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import project, random_point
from ..core import InputError, ThreatModel

__all__ = [
    "NOISE_START_STD",
    "ascend",
    "attack_mode",
    "fat_perturb",
    "fgsm_rs_perturb",
    "pgd_perturb",
    "start_point",
]

NOISE_START_STD = 1e-3
"""The TRADES / MART start: ``x + 0.001 * N(0, I)`` (both official codes)."""


@contextlib.contextmanager
def attack_mode(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Run an attack on ``model`` without letting it touch batch-norm running statistics.

    ``eval_mode=True``: the model is put in eval mode (batch norm uses its running statistics
    and does not update them) and its previous mode is restored on exit. ``eval_mode=False``:
    the mode is left as it is (a training-mode attack sees batch statistics, as in Wong et al.'s
    fast AT) and every buffer (running means, variances, batch counters) is restored on exit.
    """
    was_training = model.training
    if eval_mode:
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)
        return
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit norm: ``sign(g)`` (L-inf) or ``g / ||g||_2`` (L2)."""
    if norm == "linf":
        return g.sign()
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))


def _draw(kind: str, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``torch.rand`` / ``torch.randn`` shaped like ``like``, drawn on the generator's device."""
    dev = generator.device if generator is not None else like.device
    fn = torch.rand if kind == "uniform" else torch.randn
    return fn(like.shape, generator=generator, device=dev, dtype=like.dtype).to(like.device)


def start_point(
    x: torch.Tensor, threat: ThreatModel, kind: str, generator: torch.Generator | None
) -> torch.Tensor:
    """An attack's start: ``"uniform"`` in the ball (:func:`robustlab.attacks.random_point`, the
    PGD start of Madry et al.), ``"normal"`` at ``x + 0.001 N(0, I)`` (TRADES, MART), or
    ``"none"`` (``x`` itself); projected onto the ball and into [0, 1]."""
    x = x.detach()
    if kind == "none" or threat.eps == 0:
        return x.clone()
    if kind == "uniform":
        return project(x, random_point(x, threat.norm, threat.eps, generator), threat)
    if kind == "normal":
        return project(x, x + NOISE_START_STD * _draw("normal", x, generator), threat)
    raise InputError(f"unknown start {kind!r}; use 'uniform', 'normal' or 'none'")


def ascend(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    start: torch.Tensor,
    threat: ThreatModel,
    steps: int,
    step_size: float,
) -> torch.Tensor:
    """Projected steepest ascent on ``loss_fn`` (input -> scalar) from ``start``: ``steps`` steps
    of ``step_size`` along :func:`_direction`, each projected onto the ball around ``x`` and into
    [0, 1]. Returns the last iterate, detached."""
    x = x.detach()
    x_adv = start.detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss_fn(x_adv), x_adv)
        with torch.no_grad():
            x_adv = project(x, x_adv.detach() + step_size * _direction(g, threat.norm), threat)
    return x_adv.detach()


def pgd_perturb(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int, step_size: float,
    generator: torch.Generator | None = None, random_start: bool = True,
) -> torch.Tensor:
    """The training-time PGD: maximize cross-entropy for ``steps`` steps, return the LAST iterate.

    Unlike :class:`robustlab.attacks.PGD` (an evaluation attack that keeps the first adversarial
    point it finds and stops early), training uses the end point of the full ascent, as in
    Madry et al. (2018). The random start is the attacks' (:func:`robustlab.attacks.random_point`),
    drawn from ``generator`` (on its device; moved to ``x``'s device).
    """
    start = start_point(x, threat, "uniform" if random_start else "none", generator)
    return ascend(lambda z: F.cross_entropy(model(z), y), x, start, threat, steps, step_size)


def fgsm_rs_perturb(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, step_size: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """FGSM with a random start (Wong et al. 2020, Alg. 3): a uniform point of the ball
    (:func:`robustlab.attacks.random_point`), one signed-gradient step of ``step_size`` on the
    cross-entropy, projected back onto the ball and into [0, 1]."""
    return pgd_perturb(model, x, y, threat, 1, step_size, generator)


def fat_perturb(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, steps: int, step_size: float,
    tau: int, generator: torch.Generator | None = None, omega: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Early-stopped PGD (Zhang et al. 2020, Alg. 1, as in the official ``earlystop``).

    From a uniform start, each of at most ``steps`` iterations first classifies the current
    points: a misclassified sample with no budget left stops there (its current point is kept);
    a misclassified one with budget left spends one unit of its budget ``tau``; the samples
    still running take one cross-entropy ascent step (plus ``omega * N(0, I)`` noise, the
    official code's escape from local optima) and are projected. So a sample takes at most
    ``tau`` steps after it is first misclassified, and one misclassified at the start takes at
    most ``tau`` steps in all. Only running samples are forwarded.

    Returns:
        ``(x_adv, steps_taken)``: the friendly adversarial points and the number of steps each
        sample took.
    """
    x = x.detach()
    y = y.to(x.device)
    x_adv = start_point(x, threat, "uniform", generator)
    budget = torch.full((x.shape[0],), int(tau), dtype=torch.long, device=x.device)
    running = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    taken = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(steps):
        ids = running.nonzero().squeeze(1)
        current = x_adv[ids].requires_grad_(True)
        with torch.enable_grad():
            logits = model(current)
            (g,) = torch.autograd.grad(F.cross_entropy(logits, y[ids], reduction="sum"), current)
        with torch.no_grad():
            wrong = logits.argmax(1) != y[ids]
            left = budget[ids]
            stop = wrong & (left == 0)
            budget[ids] = torch.where(wrong & (left > 0), left - 1, left)
            running[ids[stop]] = False
            go = ~stop
            ids = ids[go]
            if ids.numel() == 0:
                break
            moved = current.detach()[go] + step_size * _direction(g[go], threat.norm)
            if omega > 0:
                moved = moved + omega * _draw("normal", moved, generator)
            x_adv[ids] = project(x[ids], moved, threat)
            taken[ids] += 1
    return x_adv.detach(), taken
