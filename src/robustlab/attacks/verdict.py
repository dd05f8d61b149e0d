"""The one verdict rule: how a point is judged, kept and reported, on any model.

Every attack, restart, target, AutoAttack sub-attack and battery entry goes through this
module; it is the library's answer to "how robust is a randomized model?", written once.

**Badness.** A point's badness for the model is the fraction of ``k`` fresh draws of the
verdict that count it as an attack success (misclassified; on the target for a targeted
run), ties broken by the mean margin over the same draws (lower: worse for the model). A
*draw* is one forward, or the mean softmax over ``ensemble`` forwards when the defense is
meant to be used as an ensemble. On a deterministic model ``k`` is 1 and the badness is the
0/1 verdict of one forward. The loss drives an attack's gradient steps; it never decides
which point is kept (a few extreme draws dominate a mean loss: Athalye et al., 2018,
"Obfuscated Gradients Give a False Sense of Security", Sec. 4.3, ask for the expectation of
the *decision*, which is what an adversary wins on).

**The incumbent.** Each sample has one incumbent point, starting at the clean input.
A proposal (from any restart, target, sub-attack or battery entry) replaces it only when it is
at least as bad as the incumbent, both re-estimated on ``k`` fresh draws at the moment of the
comparison: never on the draws that produced the proposal, and never against a stored
estimate of the incumbent (the stored one is the luckiest of the estimates that made it win,
biased in its favour). So nesting an attack, or adding one to a battery, can only make the
incumbent worse for the model.

**The reported figure.** Per sample, the probability that a draw classifies the incumbent
correctly (untargeted), estimated on ``k`` *new* draws after the incumbent was chosen, so that
choosing does not bias it; averaged over the samples. Never one draw (a lucky draw inflates
it) and never a product of one-draw outcomes over several attacks (noise alone deflates it:
a sample right with probability ``p`` would survive ``m`` one-draw verdicts with probability
``p**m``). On a deterministic model the figure is the plain 0/1 robust accuracy.

Cost on a randomized model, counted apart from an attack's search passes
(``verdict_passes``): ``2 k`` verdict forwards per sample per proposal (the proposal and the
incumbent, both fresh) and ``k`` per sample for the final estimate. Per attack: PGD, MI-FGSM
and APGD propose two candidates per restart (the iterate most of its step's draws got wrong,
chosen from the draws the EOT steps already made, and the last / highest-loss iterate): ``4 k``
per restart, plus ``2 k`` per mid-run proposal of a sample whose step draws all got its
candidate wrong (at APGD's checkpoints, every quarter of PGD's steps), which lets a sample
its incumbent then breaks on every fresh draw leave the run; APGD-T ``4 k`` per target; FAB-T, DeepFool and Square ``2 k`` per target or
restart (Square also re-estimates its current point beside every candidate: ``2 eot``
forwards per query instead of ``eot``); ``Attack.run`` proposes the search's point to an
incumbent at the clean input (``2 k``, plus ``k`` for the clean estimate) and judges it
(``k``); a battery or AutoAttack adds ``k`` for the clean estimate, ``2 k`` per entry and
``k`` at the end. With ``k = 32`` and AutoAttack ``rand`` (two APGD runs of 100 steps with
EOT-20: 4,000 forward and backward passes per sample) in a battery, the rule adds about 500
forwards per sample (each APGD's own incumbent 160, the battery's 352), roughly 4% of the
search's cost in forward-pass units (a backward costs about two forwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..core.checks import check_int

if TYPE_CHECKING:
    from .model import ModelFn

__all__ = ["VERDICT_DRAWS", "Badness", "Incumbent", "IncumbentView", "Verdict", "badness_of"]

VERDICT_DRAWS = 16
"""``k``, the fresh draws per estimate on a randomized model. Each estimate's standard error
per sample is at most ``0.5 / sqrt(k)`` = 0.125; over ``n`` images the mean's sampling error
from the draws is at most ``0.125 / sqrt(n)`` (0.0125 at 100 images, a tenth of the
image-to-image spread a study's interval already carries), and the estimate is unbiased."""


def _margin(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """``z_c - max_{j != c} z_j`` with ``c`` the label (untargeted) or, targeted,
    ``max_{j != t} z_j - z_t``: negative where the point is an attack success."""
    cls = y if targets is None else targets
    k = logits.shape[-1]
    valid = cls < k  # a label the model cannot output (fewer logits than classes): never right
    idx = cls.clamp(max=k - 1).unsqueeze(-1)
    z_c = torch.where(valid, logits.gather(-1, idx).squeeze(-1), float("-inf"))
    other = torch.where(valid, logits.scatter(-1, idx, float("-inf")).amax(dim=-1), logits.amax(dim=-1))
    return z_c - other if targets is None else other - z_c


@dataclass(frozen=True)
class Badness:
    """How bad points are for the model, per sample.

    Attributes:
        wrong: the fraction of draws that count the point as a success (misclassified, or on
            the target).
        margin: the mean margin over the same draws (:func:`_margin`; lower is worse for the
            model). Breaks ties in ``wrong``.
        draws: how many draws the estimate used.
    """

    wrong: torch.Tensor
    margin: torch.Tensor
    draws: int

    def at_least_as_bad(self, other: Badness) -> torch.Tensor:
        """Per sample, whether these points are at least as bad as ``other``'s."""
        return (self.wrong > other.wrong) | ((self.wrong == other.wrong) & (self.margin <= other.margin))

    def __getitem__(self, idx: torch.Tensor) -> Badness:
        return Badness(self.wrong[idx], self.margin[idx], self.draws)

    @property
    def p_correct(self) -> torch.Tensor:
        """Per sample, the estimated probability that a draw does not count the point as a
        success (untargeted: classifies it correctly)."""
        return 1.0 - self.wrong


def badness_of(samples: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None) -> Badness:
    """The badness estimated from per-draw outputs ``samples`` of shape ``(D, N, K)`` (logits, or
    log mean softmax for ensemble draws)."""
    if samples.dim() == 2:
        samples = samples.unsqueeze(0)
    top = samples.argmax(dim=-1)
    hit = top == targets.unsqueeze(0) if targets is not None else top != y.unsqueeze(0)
    margin = _margin(samples.float(), y.unsqueeze(0).expand(samples.shape[:2]),
                     targets.unsqueeze(0).expand(samples.shape[:2]) if targets is not None else None)
    return Badness(hit.float().mean(dim=0), margin.mean(dim=0), int(samples.shape[0]))


@dataclass(frozen=True)
class Verdict:
    """The one rule that judges points (see the module docstring), used by :meth:`Attack.run`,
    AutoAttack, every attack's restarts and targets, and the battery runner alike.

    Args:
        draws: ``k``, fresh draws per estimate on a randomized model (1 on a deterministic one).
        ensemble: forwards per draw whose softmax is averaged (the prediction of a defense used
            as an ensemble); 1 judges single forwards.
        batch_size: samples per verdict forward.
    """

    draws: int = VERDICT_DRAWS
    ensemble: int = 1
    batch_size: int = 500

    def __post_init__(self) -> None:
        for name in ("draws", "ensemble", "batch_size"):
            check_int(getattr(self, name), f"the verdict's {name}", 1)

    def config(self) -> dict[str, int]:
        """The settings, JSON-ready (part of every result's configuration)."""
        return {"draws": self.draws, "ensemble": self.ensemble}

    def samples(self, fmodel: ModelFn, x: torch.Tensor) -> torch.Tensor:
        """Per-draw outputs ``(D, N, K)`` at ``x``: ``D = draws`` fresh draws on a randomized
        model (each the log mean softmax of ``ensemble`` forwards when ``ensemble > 1``), one
        forward on a deterministic one. Verdict passes, not search passes."""
        draws = self.draws if fmodel.stochastic else 1
        ensemble = self.ensemble if fmodel.stochastic else 1
        out = []
        for chunk in x.split(self.batch_size):
            per_draw = []
            for _ in range(draws):
                if ensemble == 1:
                    per_draw.append(fmodel.evaluate(chunk).float())
                    continue
                probs = fmodel.evaluate(chunk).float().softmax(dim=1)
                for _ in range(ensemble - 1):
                    probs = probs + fmodel.evaluate(chunk).float().softmax(dim=1)
                per_draw.append((probs / ensemble).log())
            out.append(torch.stack(per_draw))
        if not out:
            return x.new_zeros(draws, 0, 0)
        return torch.cat(out, dim=1)

    def logits(self, fmodel: ModelFn, x: torch.Tensor) -> torch.Tensor:
        """The mean over fresh draws of the per-draw outputs at ``x`` (one forward on a
        deterministic model)."""
        return self.samples(fmodel, x).mean(dim=0)

    def estimate(
        self, fmodel: ModelFn, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None
    ) -> Badness:
        """The badness of points ``x`` on fresh draws."""
        if x.shape[0] == 0:
            empty = x.new_zeros(0)
            return Badness(empty, empty, self.draws if fmodel.stochastic else 1)
        return badness_of(self.samples(fmodel, x), y, targets)

    def judge(
        self, fmodel: ModelFn, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(p_correct, logits)`` at points ``x`` on fresh draws: per sample the estimated
        probability that a draw does not count the point as a success, and the mean over the
        draws of the per-draw outputs (for reports)."""
        if x.shape[0] == 0:
            return x.new_zeros(0), x.new_zeros(0, 0)
        samples = self.samples(fmodel, x)
        return badness_of(samples, y, targets).p_correct, samples.mean(dim=0)


class Incumbent:
    """Per sample, the worst point found so far for the model (see the module docstring).

    Starts at ``x`` (the clean inputs, or a point an earlier stage chose) and only ever gets
    worse for the model: :meth:`propose` replaces a sample's point only when the proposal is
    at least as bad on fresh draws. ``badness`` is the estimate of the last comparison (known
    only after one); use it to choose which samples to attack next, never to report.

    Args:
        x: the starting points ``(N, ...)``.
        y: labels.
        targets: target classes for a targeted run, else ``None``.
        badness: a known estimate of the starting points (e.g. from a saved state).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        targets: torch.Tensor | None = None,
        badness: Badness | None = None,
    ) -> None:
        self.x = x.detach().clone()
        self.y = y
        self.targets = targets
        self.badness = badness

    def known(self, fmodel: ModelFn, verdict: Verdict) -> Badness:
        """The incumbents' badness, estimated on fresh draws if none is known yet."""
        if self.badness is None:
            self.badness = verdict.estimate(fmodel, self.x, self.y, self.targets)
        return self.badness

    def propose(
        self, fmodel: ModelFn, verdict: Verdict, ids: torch.Tensor, points: torch.Tensor
    ) -> torch.Tensor:
        """Offer ``points`` for samples ``ids``; returns which ones replaced the incumbent.

        On a randomized model the proposals and the current incumbents are both estimated on
        fresh draws; on a deterministic one the incumbent's (exact) estimate is reused.
        """
        if ids.numel() == 0:
            return torch.zeros(0, dtype=torch.bool, device=points.device)
        known = self.known(fmodel, verdict)
        targets = self.targets[ids] if self.targets is not None else None
        new = verdict.estimate(fmodel, points, self.y[ids], targets)
        old = verdict.estimate(fmodel, self.x[ids], self.y[ids], targets) if fmodel.stochastic else known[ids]
        better = new.at_least_as_bad(old)
        self.x[ids[better]] = points[better].detach()
        wrong, margin = known.wrong.clone(), known.margin.clone()
        wrong[ids] = torch.where(better, new.wrong, old.wrong)
        margin[ids] = torch.where(better, new.margin, old.margin)
        self.badness = Badness(wrong, margin, new.draws)
        return better

    def settled(self) -> torch.Tensor:
        """Samples whose incumbent every draw of its last estimate counted as a success: no
        point can be worse on the decision, so later attacks may skip them."""
        if self.badness is None:
            return torch.zeros(self.x.shape[0], dtype=torch.bool, device=self.x.device)
        return self.badness.wrong >= 1.0

    def offer(self, fmodel: ModelFn, verdict: Verdict, ids: torch.Tensor, points: torch.Tensor) -> None:
        """:meth:`propose` the rows of ``points`` that differ from the samples' incumbents (an
        attack that already proposed to this incumbent returns its points: nothing to judge)."""
        moved = (points != self.x[ids]).flatten(1).any(dim=1)
        if bool(moved.any()):
            self.propose(fmodel, verdict, ids[moved], points[moved])

    def view(self, idx: torch.Tensor) -> IncumbentView:
        """The incumbents of samples ``idx`` (an attack run on them proposes to this one)."""
        return IncumbentView(self, idx)


class IncumbentView:
    """The incumbents of some samples of an :class:`Incumbent`, indexed from 0: what an
    attack run inside a sequence proposes to, so that its restarts and the sequence share one
    incumbent (one comparison per proposal, not one inside the attack and another outside)."""

    def __init__(self, outer: Incumbent, idx: torch.Tensor) -> None:
        self.outer = outer
        self.idx = idx

    @property
    def x(self) -> torch.Tensor:
        """The incumbent points of the viewed samples."""
        return self.outer.x[self.idx]

    def known(self, fmodel: ModelFn, verdict: Verdict) -> Badness:
        return self.outer.known(fmodel, verdict)[self.idx]

    def propose(self, fmodel: ModelFn, verdict: Verdict, ids: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.outer.propose(fmodel, verdict, self.idx[ids], points)

    def settled(self) -> torch.Tensor:
        return self.outer.settled()[self.idx]

    def offer(self, fmodel: ModelFn, verdict: Verdict, ids: torch.Tensor, points: torch.Tensor) -> None:
        self.outer.offer(fmodel, verdict, self.idx[ids], points)

    def view(self, idx: torch.Tensor) -> IncumbentView:
        return IncumbentView(self.outer, self.idx[idx])
