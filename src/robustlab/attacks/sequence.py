"""Attack sequences judged by one verdict: the worst case over attacks, per sample.

AutoAttack (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", Sec. 4) and every battery run the same loop, written once
here: the :class:`~robustlab.attacks.Verdict` judges the clean inputs, then each attack runs on
every sample that is still robust by the verdict, and the verdict judges its output once, right
after it. A sample is robust only if no attack produced a point the verdict calls broken; a
sample is never re-judged afterwards (a second fresh draw could call a broken sample robust).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core.errors import InputError
from .base import Attack, ModelFn, RunContext, Verdict
from .checks import EvalWarning, black_box_warning, probability_rows

__all__ = ["SequenceResult", "SequenceState", "StageResult", "run_sequence", "sequence_warnings"]


@dataclass
class StageResult:
    """What one attack of a sequence did on a batch.

    Attributes:
        seen: per-sample, the attack ran on the sample.
        broken: per-sample, the verdict called the attack's point broken.
        forward_passes: image forwards of the attack's search.
        backward_passes: image backwards of the attack's search.
        grad_evaluations, zero_grads, nonfinite_grads: per-sample gradients the search
            evaluated, and how many were all zero / non-finite.
        seconds: wall time of the attack and its verdict.
        queries: per-sample queries of a score-based attack (``None`` for others).
    """

    seen: torch.Tensor
    broken: torch.Tensor
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
        clean_correct: the verdict classified the clean input correctly.
        robust: clean-correct and no finished attack broke it.
        stages: one :class:`StageResult` per finished attack, in order; the next attack to
            run is ``len(stages)``.
        probability_rows: clean output rows that looked like probabilities.
    """

    clean_correct: torch.Tensor
    robust: torch.Tensor
    stages: list[StageResult]
    probability_rows: int


@dataclass
class SequenceResult:
    """The outcome of :func:`run_sequence` on a batch of ``N`` samples.

    Attributes:
        x_adv: per sample, the point that broke it; for a sample that stayed robust, the last
            attack's point; the clean input when it was misclassified clean or never attacked.
        clean_correct: the verdict classified the clean input correctly.
        robust: clean-correct and no attack broke it.
        logits: the verdict's logits at ``x_adv``.
        stages: one :class:`StageResult` per attack, in order.
        probability_rows: clean output rows that looked like probabilities.
    """

    x_adv: torch.Tensor
    clean_correct: torch.Tensor
    robust: torch.Tensor
    logits: torch.Tensor
    stages: list[StageResult]
    probability_rows: int


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
) -> SequenceResult:
    """Run ``attacks`` in order on ``(x, y)`` (untargeted), each on the samples still robust.

    Args:
        attacks: the attacks.
        fmodel: the model, wrapped once for the whole sequence (its randomness established).
        x, y: clean inputs and labels.
        verdict: judges the clean inputs and every attack's output, once each.
        generator: ``generator(i)`` is attack ``i``'s generator.
        shrink: whether attacks may stop early on confirmed samples.
        on_stage: called with ``("clean", -1)``, ``("attack", i)`` and ``("verdict", i)``
            before each step (an evaluator seeds the model's random layers there).
        after_attack: called with ``(i, state)`` after attack ``i`` was judged; ``state`` is the
            live :class:`SequenceState` (``state.robust``, ``state.stages[i]``), which an
            evaluator may save to resume from.
        resume: a state saved after some attacks on this very batch: the clean verdict and
            those attacks are skipped, and the sequence continues with attack
            ``len(resume.stages)`` from ``resume``'s masks. With per-attack generators and
            per-stage seeds (``generator``, ``on_stage``) the outcome equals an uninterrupted
            run's, except that ``x_adv`` holds the clean input and ``logits`` NaN for the
            samples the skipped attacks settled.
    """
    def stage(kind: str, i: int) -> None:
        if on_stage is not None:
            on_stage(kind, i)

    x_adv = x.clone()
    logits: torch.Tensor | None
    if resume is None:
        stage("clean", -1)
        wrong, clean_logits = verdict.judge(fmodel, x, y)
        state = SequenceState(~wrong, (~wrong).clone(), [], probability_rows(clean_logits))
        logits = clean_logits.clone()
    else:
        if not 0 <= len(resume.stages) <= len(attacks):
            raise InputError(f"resume holds {len(resume.stages)} stages for {len(attacks)} attacks")
        state = SequenceState(resume.clean_correct.to(x.device).clone(), resume.robust.to(x.device).clone(),
                              list(resume.stages), resume.probability_rows)
        logits = None
    robust = state.robust
    for i in range(len(state.stages), len(attacks)):
        attack = attacks[i]
        idx = robust.nonzero().squeeze(1)
        seen = torch.zeros_like(robust)
        broken = torch.zeros_like(robust)
        record = StageResult(seen, broken)
        state.stages.append(record)
        if idx.numel():
            t0 = time.perf_counter()
            counts = (fmodel.forward_passes, fmodel.backward_passes, fmodel.grad_evaluations,
                      fmodel.zero_grads, fmodel.nonfinite_grads)
            stage("attack", i)
            ctx = RunContext(model=fmodel, x=x[idx], y=y[idx], targets=None,
                             generator=generator(i), shrink=shrink)
            points = attack.perturb(ctx)
            stage("verdict", i)
            success, at_points = verdict.judge(fmodel, points, y[idx])
            hit = idx[success]
            x_adv[idx] = points
            if logits is None:
                logits = at_points.new_full((x.shape[0], at_points.shape[1]), float("nan"))
            logits[idx] = at_points
            robust[hit] = False
            seen[idx] = True
            broken[hit] = True
            record.forward_passes = fmodel.forward_passes - counts[0]
            record.backward_passes = fmodel.backward_passes - counts[1]
            record.grad_evaluations = fmodel.grad_evaluations - counts[2]
            record.zero_grads = fmodel.zero_grads - counts[3]
            record.nonfinite_grads = fmodel.nonfinite_grads - counts[4]
            record.seconds = time.perf_counter() - t0
            if ctx.queries is not None:
                record.queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
                record.queries[idx] = ctx.queries
        if after_attack is not None:
            after_attack(i, state)
    if logits is None:
        logits = x.new_full((x.shape[0], 0), float("nan"))
    return SequenceResult(x_adv, state.clean_correct, robust, logits, state.stages, state.probability_rows)


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
