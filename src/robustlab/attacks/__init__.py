"""Attacks, losses and gradient estimators for honest robustness evaluation.

Every entry of :data:`ATTACKS` carries metadata (``ATTACKS.meta(name)``): ``paper``, ``kind``
(gradient, score, ensemble, transfer) and ``norms`` (the threat norms it supports).

Every attack is a configured object run on a model at call time::

    result = PGD(ThreatModel("linf", 0.1), steps=20).run(model, x, y)
    result.x_adv, result.success, result.forward_passes, result.backward_passes

Gradient attacks take ``grad=Gradient()|EOT(n, normalize=...)`` and ``loss="ce"|"cw"|"dlr"``;
randomized layers are met through ``core.randomness`` (or found empirically) and
non-differentiable ones through ``core.bpda`` (``bpda="identity"|"smooth"`` on any gradient
attack). One verdict rule (:mod:`~robustlab.attacks.verdict`) judges every attack, restart,
target, AutoAttack and battery alike: per sample an incumbent point that a proposal replaces
only when it is at least as bad on fresh draws, and a reported probability that a draw
classifies it correctly, estimated on new draws. The early stop follows one rule
(:class:`Attack`); :mod:`~robustlab.attacks.checks` reports sanity-check findings on every
result.
"""

from .apgd import APGD, APGDT, apgd_ce, apgd_checkpoints, apgd_dlr
from .base import (
    EOT,
    Attack,
    AttackResult,
    GradEstimate,
    Gradient,
    GradientEstimator,
    LateRandomness,
    ModelFn,
    Pick,
    Prediction,
    RunContext,
    batch_view,
    enforce,
    in_ball,
    logits_of,
    lp_norm,
    model_fn,
    project,
    random_point,
)
from .checks import EvalWarning, merge_warnings
from .ensemble import AutoAttack, Transfer, autoattack_rand, transfer_factory
from .fab import FABT, project_hyperplane_box
from .fixed_path import FixedPathPGD
from .gradient import FGSM, MIFGSM, PGD, GradientAttack, Tracker
from .losses import LOSSES, LossFn, ce_loss, cw_loss, dlr_loss, get_loss
from .minimal import CWL2, DeepFool
from .registry import ATTACKS, create_attack, register_attack
from .sequence import SequenceResult, StageResult, run_sequence, sequence_warnings
from .square import Square, square_p_schedule
from .verdict import VERDICT_DRAWS, Badness, Incumbent, Verdict, badness_of

__all__ = [
    "APGD",
    "APGDT",
    "ATTACKS",
    "CWL2",
    "VERDICT_DRAWS",
    "EOT",
    "FABT",
    "FGSM",
    "FixedPathPGD",
    "LOSSES",
    "MIFGSM",
    "PGD",
    "Attack",
    "AttackResult",
    "AutoAttack",
    "Badness",
    "DeepFool",
    "EvalWarning",
    "GradEstimate",
    "Gradient",
    "GradientAttack",
    "GradientEstimator",
    "Incumbent",
    "LateRandomness",
    "LossFn",
    "ModelFn",
    "Pick",
    "Prediction",
    "RunContext",
    "SequenceResult",
    "Square",
    "StageResult",
    "Tracker",
    "Transfer",
    "Verdict",
    "apgd_ce",
    "apgd_checkpoints",
    "apgd_dlr",
    "autoattack_rand",
    "badness_of",
    "batch_view",
    "ce_loss",
    "create_attack",
    "cw_loss",
    "dlr_loss",
    "enforce",
    "get_loss",
    "in_ball",
    "logits_of",
    "lp_norm",
    "merge_warnings",
    "model_fn",
    "project",
    "project_hyperplane_box",
    "random_point",
    "register_attack",
    "run_sequence",
    "sequence_warnings",
    "square_p_schedule",
    "transfer_factory",
]
