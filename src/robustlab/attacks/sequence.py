"""Attack sequences judged by one verdict: the per-sample worst case over attacks.

AutoAttack (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", Sec. 4) and every battery run the same loop, written once
here, under the one verdict rule of :mod:`~robustlab.attacks.verdict`: each sample has an
incumbent point (its clean input at first); each attack runs on every sample whose incumbent
does not yet fool every draw of its last estimate, and proposes its point, which replaces the
incumbent only if it is at least as bad on fresh draws. After the last attack the incumbent is
judged on new draws: per sample, the probability that a draw classifies it correctly. On a
deterministic model this is AutoAttack's rule exactly (a sample broken by an attack stays
broken and is not attacked again; one forward judges each point).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core.errors import InputError
from .base import Attack, ModelFn, RunContext
from .checks import EvalWarning, black_box_warning, probability_rows
from .verdict import Badness, Incumbent, IncumbentView, Verdict, badness_of

__all__ = ["SequenceResult", "SequenceState", "StageResult", "run_sequence", "sequence_warnings"]


@dataclass
class StageResult:
    """What one attack of a sequence did on a batch.

    Attributes:
        seen: per-sample, the attack ran on the sample.
        broken: per-sample, the attack's point became the incumbent and most draws of its
            estimate count it as a success (deterministic models: the verdict broke it).
        p_after: per-sample, the estimated probability that a draw classifies the incumbent
            correctly after this attack (the estimate that chose it: for cumulative tables,
            not the reported figure).
        forward_passes: image forwards of the attack's search.
        backward_passes: image backwards of the attack's search.
        grad_evaluations, zero_grads, nonfinite_grads: per-sample gradients the search
            evaluated, and how many were all zero / non-finite.
        seconds: wall time of the attack and its verdict.
        queries: per-sample queries of a score-based attack (``None`` for others).
    """

    seen: torch.Tensor
    broken: torch.Tensor
    p_after: torch.Tensor
    forward_passes: int = 0
    backward_passes: int = 0
    grad_evaluations: int = 0
    zero_grads: int = 0
    nonfinite_grads: int = 0
    seconds: float = 0.0
    queries: torch.Tensor | None = None


@dataclass
class SequenceState:
    """Where a sequence stands on a batch after some of its attacks: what an evaluator saves
    mid-batch, and what :func:`run_sequence` resumes from.

    Attributes:
        p_clean: per sample, the estimated probability that a draw classifies the clean input
            correctly (fresh draws; 0/1 on a deterministic model).
        x_inc: the incumbent points.
        wrong, margin: the incumbents' badness from their last comparison
            (:class:`~robustlab.attacks.verdict.Badness`).
        stages: one :class:`StageResult` per finished attack, in order; the next attack to
            run is ``len(stages)``.
        probability_rows: clean output rows that looked like probabilities.
    """

    p_clean: torch.Tensor
    x_inc: torch.Tensor
    wrong: torch.Tensor
    margin: torch.Tensor
    stages: list[StageResult]
    probability_rows: int

    @property
    def robust(self) -> torch.Tensor:
        """Samples whose incumbent fools fewer than half the draws of its last estimate (for
        progress displays; never the reported figure)."""
        return self.wrong < 0.5


@dataclass
class SequenceResult:
    """The outcome of :func:`run_sequence` on a batch of ``N`` samples.

    Attributes:
        x_adv: per sample, the incumbent: the worst point for the model any attack found (the
            clean input when none was worse).
        p_clean: per sample, the probability that a draw classifies the clean input correctly.
        p_robust: per sample, the probability that a draw classifies ``x_adv`` correctly,
            estimated on draws made after the incumbent was chosen (the reported figure).
        p_select: per sample, the same probability as estimated by the comparison that chose
            the incumbent (what a worst case over several runs selects on).
        logits: the final verdict's mean outputs at ``x_adv``.
        stages: one :class:`StageResult` per attack, in order.
        probability_rows: clean output rows that looked like probabilities.
    """

    x_adv: torch.Tensor
    p_clean: torch.Tensor
    p_robust: torch.Tensor
    p_select: torch.Tensor
    logits: torch.Tensor
    stages: list[StageResult]
    probability_rows: int

    @property
    def clean_correct(self) -> torch.Tensor:
        """Per sample, most clean draws are right (0/1 on a deterministic model)."""
        return self.p_clean >= 0.5

    @property
    def robust(self) -> torch.Tensor:
        """Per sample, most final draws classify the incumbent correctly."""
        return self.p_robust >= 0.5


def run_sequence(
    attacks: Sequence[Attack],
    fmodel: ModelFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    verdict: Verdict,
    generator: Callable[[int], torch.Generator],
    shrink: bool = True,
    on_stage: Callable[[str, int], None] | None = None,
    after_attack: Callable[[int, SequenceState], None] | None = None,
    resume: SequenceState | None = None,
    final: bool = True,
    shared: Incumbent | IncumbentView | None = None,
) -> SequenceResult:
    """Run ``attacks`` in order on ``(x, y)`` (untargeted) under the one verdict rule.

    Args:
        attacks: the attacks.
        fmodel: the model, wrapped once for the whole sequence (its randomness established).
        x, y: clean inputs and labels.
        verdict: estimates the clean inputs, every comparison and the final figure.
        generator: ``generator(i)`` is attack ``i``'s generator.
        shrink: whether attacks may stop early on confirmed samples.
        on_stage: called with ``("clean", -1)``, ``("attack", i)``, ``("verdict", i)`` and
            ``("final", -1)`` before each step (an evaluator seeds the model's random layers
            there).
        after_attack: called with ``(i, state)`` after attack ``i``'s proposals were judged;
            ``state`` is the live :class:`SequenceState`, which an evaluator may save.
        resume: a state saved after some attacks on this very batch: the clean estimate and
            those attacks are skipped, and the sequence continues with attack
            ``len(resume.stages)`` from ``resume``'s incumbents. With per-attack generators and
            per-stage seeds the outcome equals an uninterrupted run's.
        final: estimate the final figure on fresh draws (``False`` for a nested sequence whose
            points an outer one judges: ``p_robust`` is then ``p_select``).
        shared: the outer run's incumbent for these samples (a nested sequence proposes to it,
            randomized models only); its points are where the sequence starts.

    Raises:
        LateRandomness: when an attack's points show randomness a model found deterministic
            did not show on the clean inputs (the caller re-runs under the randomized rule).
    """
    def stage(kind: str, i: int) -> None:
        if on_stage is not None:
            on_stage(kind, i)

    if shared is not None:  # nested: the outer run's incumbents are where this one starts
        known = shared.known(fmodel, verdict)
        state = SequenceState(known.p_correct, shared.x, known.wrong, known.margin, [], 0)
    elif resume is None:
        stage("clean", -1)
        samples = verdict.samples(fmodel, x)
        clean = badness_of(samples, y)
        state = SequenceState(clean.p_correct, x.clone(), clean.wrong, clean.margin, [],
                              probability_rows(samples.mean(dim=0)))
    else:
        if not 0 <= len(resume.stages) <= len(attacks):
            raise InputError(f"resume holds {len(resume.stages)} stages for {len(attacks)} attacks")
        state = SequenceState(resume.p_clean.to(x.device).clone(), resume.x_inc.to(x.device).clone(),
                              resume.wrong.to(x.device).clone(), resume.margin.to(x.device).clone(),
                              list(resume.stages), resume.probability_rows)
    draws = verdict.draws if fmodel.stochastic else 1
    incumbent: Incumbent | IncumbentView = (
        shared if shared is not None else Incumbent(state.x_inc, y, badness=Badness(state.wrong, state.margin, draws)))
    for i in range(len(state.stages), len(attacks)):
        attack = attacks[i]
        idx = (~incumbent.settled()).nonzero().squeeze(1)
        seen = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        broken = torch.zeros_like(seen)
        record = StageResult(seen, broken, incumbent.known(fmodel, verdict).p_correct.clone())
        if idx.numel():
            t0 = time.perf_counter()
            counts = (fmodel.forward_passes, fmodel.backward_passes, fmodel.grad_evaluations,
                      fmodel.zero_grads, fmodel.nonfinite_grads)
            stage("attack", i)
            before = incumbent.x[idx].clone()
            ctx = RunContext(model=fmodel, x=x[idx], y=y[idx], targets=None, generator=generator(i),
                             shrink=shrink, verdict=verdict,
                             shared=incumbent.view(idx) if fmodel.stochastic else None)
            points = attack.perturb(ctx)
            stage("verdict", i)
            fmodel.check_points(points)
            incumbent.offer(fmodel, verdict, idx, points)
            known = incumbent.known(fmodel, verdict)
            replaced = (incumbent.x[idx] != before).flatten(1).any(dim=1)
            seen[idx] = True
            broken[idx] = replaced & (known.wrong[idx] >= 0.5)
            record.p_after = known.p_correct.clone()
            record.forward_passes = fmodel.forward_passes - counts[0]
            record.backward_passes = fmodel.backward_passes - counts[1]
            record.grad_evaluations = fmodel.grad_evaluations - counts[2]
            record.zero_grads = fmodel.zero_grads - counts[3]
            record.nonfinite_grads = fmodel.nonfinite_grads - counts[4]
            record.seconds = time.perf_counter() - t0
            if ctx.queries is not None:
                record.queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
                record.queries[idx] = ctx.queries
        state.stages.append(record)
        known = incumbent.known(fmodel, verdict)
        state.x_inc, state.wrong, state.margin = incumbent.x, known.wrong, known.margin
        if after_attack is not None:
            after_attack(i, state)
    known = incumbent.known(fmodel, verdict)
    p_select = known.p_correct
    if final:
        stage("final", -1)
        p_robust, logits = verdict.judge(fmodel, incumbent.x, y)
    else:
        p_robust, logits = p_select, x.new_zeros(x.shape[0], 0)
    return SequenceResult(incumbent.x, state.p_clean, p_robust, p_select, logits, state.stages,
                          state.probability_rows)


def sequence_warnings(
    attacks: Sequence[Attack], broken: Sequence[int], seen: Sequence[int]
) -> list[EvalWarning]:
    """The ``black-box-beats-white-box`` check of a sequence: a score-based attack that broke
    samples after a gradient attack had run on them (``broken[i]`` of ``seen[i]`` samples)."""
    out = []
    for i, attack in enumerate(attacks):
        white_box_before = any(a.kind == "gradient" for a in attacks[:i])
        if attack.kind == "score" and white_box_before and broken[i] > 0:
            out.append(black_box_warning(repr(attack), broken[i], seen[i]))
    return out
