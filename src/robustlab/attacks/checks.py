"""Sanity checks of an evaluation, reported as structured warnings on every result.

The reference AutoAttack prints warnings when an evaluation shows signs of gradient masking or
of a misused model (Croce & Hein, 2020, ``autoattack/checks.py``); here they are data: each
:class:`EvalWarning` has a stable ``code`` (for code and the ledger) and a message for people
that says what was seen and what to do. They travel with every
:class:`~robustlab.attacks.AttackResult` and :class:`~robustlab.evaluate.EvalResult`, into the
ledger and the reports.

Codes:

- ``zero-gradients`` / ``nonfinite-gradients``: more than :data:`GRADIENT_FRACTION` of the
  gradients an attack evaluated were all zero / held NaN or inf (shattered or saturated
  gradients: try BPDA, the DLR loss, or a black-box attack);
- ``probability-outputs``: the model returns rows that are non-negative and sum to 1 (softmax
  outputs instead of logits flatten the cross-entropy's gradient);
- ``randomized-without-eot``: a randomized model attacked with no expectation over its
  randomness (e.g. the ``standard`` battery; use ``rand``);
- ``detected-randomness``: the model's forward is random without using the ``Stochastic``
  protocol (found by two forwards of one batch); it was treated as randomized;
- ``late-randomness``: the model looked deterministic on the clean inputs but its outputs at
  an attack's points were random; the evaluation was re-run under the randomized rule;
- ``frozen-randomness``: the model's random layers were frozen; it was evaluated as that one
  fixed inference path;
- ``black-box-beats-white-box``: a score-based attack (Square) broke samples the gradient
  attacks before it did not (a sign of gradient masking);
- ``train-mode``: the model was attacked in training mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "GRADIENT_FRACTION",
    "EvalWarning",
    "black_box_warning",
    "detected_randomness_warning",
    "frozen_randomness_warning",
    "gradient_warnings",
    "late_randomness_warning",
    "merge_warnings",
    "probability_rows",
    "probability_warning",
    "randomized_without_eot",
    "randomness_warnings",
    "train_mode_warning",
]

GRADIENT_FRACTION = 0.01
"""Fraction of bad gradient evaluations above which a gradient warning is raised."""


@dataclass(frozen=True)
class EvalWarning:
    """One sanity-check finding: a stable ``code`` and a message saying what to do."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready dict."""
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalWarning:
        """Inverse of :meth:`to_dict`."""
        return cls(str(d["code"]), str(d["message"]))

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


def merge_warnings(*groups: Iterable[EvalWarning]) -> tuple[EvalWarning, ...]:
    """The warnings of ``groups`` in order, one per ``(code, message)``."""
    out: dict[tuple[str, str], EvalWarning] = {}
    for group in groups:
        for w in group:
            out.setdefault((w.code, w.message), w)
    return tuple(out.values())


def gradient_warnings(evaluations: int, zero: int, nonfinite: int, attack: str) -> list[EvalWarning]:
    """Warnings for an attack whose ``evaluations`` per-sample gradients held ``zero`` all-zero
    and ``nonfinite`` non-finite ones (above :data:`GRADIENT_FRACTION`)."""
    out = []
    if evaluations and zero / evaluations > GRADIENT_FRACTION:
        out.append(EvalWarning(
            "zero-gradients",
            f"{attack}: {zero} of {evaluations} per-sample gradients ({zero / evaluations:.1%}) were "
            "exactly zero; the model may shatter or saturate its gradients: attack it with BPDA "
            "(bpda='identity' or 'smooth'), the DLR loss, or a black-box attack (Square)",
        ))
    if evaluations and nonfinite / evaluations > GRADIENT_FRACTION:
        out.append(EvalWarning(
            "nonfinite-gradients",
            f"{attack}: {nonfinite} of {evaluations} per-sample gradients ({nonfinite / evaluations:.1%}) "
            "held NaN or inf; the attack could not follow them: check the model's numerics, use BPDA "
            "or a black-box attack",
        ))
    return out


def probability_rows(logits: torch.Tensor, atol: float = 1e-4) -> int:
    """How many rows of ``logits`` look like probabilities (non-negative, summing to 1)."""
    if logits.numel() == 0 or logits.shape[1] < 2:
        return 0
    z = logits.detach().float()
    rows = (z >= 0).all(dim=1) & ((z.sum(dim=1) - 1).abs() <= atol)
    return int(rows.sum())


def probability_warning(rows: int, total: int) -> EvalWarning | None:
    """The ``probability-outputs`` warning when most of ``total`` output rows are probabilities."""
    if total and rows / total > 0.5:
        return EvalWarning(
            "probability-outputs",
            f"{rows} of {total} output rows are non-negative and sum to 1: the model seems to return "
            "probabilities (softmax) instead of logits, which flattens the attacks' losses; return "
            "the logits (remove the final softmax)",
        )
    return None


def randomized_without_eot(randomness: str, what: str) -> EvalWarning:
    """The ``randomized-without-eot`` warning for a randomized model attacked by ``what``."""
    return EvalWarning(
        "randomized-without-eot",
        f"the model is randomized ({randomness}) but {what} takes no expectation over its "
        "randomness, so each of its steps follows a single random draw: use the 'rand' battery "
        "(APGD-CE and APGD-DLR with EOT), grad=EOT(n), or Square(eot=n)",
    )


def detected_randomness_warning() -> EvalWarning:
    """The ``detected-randomness`` warning."""
    return EvalWarning(
        "detected-randomness",
        "two forwards of the same batch differ, but the model has no robustlab Stochastic layer: "
        "it was treated as randomized (EOT draws, fresh-draw verdicts); build random layers on "
        "core.randomness.Stochastic to make them seedable and freezable",
    )


def late_randomness_warning(what: str) -> EvalWarning:
    """The ``late-randomness`` warning."""
    return EvalWarning(
        "late-randomness",
        f"{what}: the model looked deterministic on the clean inputs, but its outputs at the "
        "attacks' points are random (randomness that shows only near the decision boundary); "
        "the evaluation was run again from the start under the randomized rule (EOT draws, "
        "fresh-draw verdicts); attack it with EOT (e.g. the 'rand' battery)",
    )


def frozen_randomness_warning(what: str) -> EvalWarning:
    """The ``frozen-randomness`` warning."""
    return EvalWarning(
        "frozen-randomness",
        f"{what}: the model's random layers are inside frozen(): it was evaluated as one fixed "
        "inference path, attacks and verdict alike (one image per forward, so that every image "
        "goes through the same draw); the number is that path's, not the randomized model's "
        "(evaluate outside frozen() with EOT, e.g. the 'rand' battery, for that)",
    )


def black_box_warning(attack: str, broken: int, attacked: int) -> EvalWarning:
    """The ``black-box-beats-white-box`` warning."""
    return EvalWarning(
        "black-box-beats-white-box",
        f"{attack} broke {broken} of {attacked} samples that the gradient attacks before it did not: "
        "the gradients may be masked; trust the worst case over every attack, and try BPDA or EOT",
    )


def randomness_warnings(randomness: str, expects_randomness: bool, what: str) -> list[EvalWarning]:
    """The checks on how a model's randomness was met by ``what`` (an attack or a battery):
    ``detected-randomness`` and ``randomized-without-eot``."""
    found = [detected_randomness_warning()] if randomness == "detected" else []
    if randomness == "frozen":
        return [frozen_randomness_warning(what)]
    if randomness != "none" and not expects_randomness:
        found.append(randomized_without_eot(randomness, what))
    return found


def train_mode_warning(what: str) -> EvalWarning:
    """The ``train-mode`` warning."""
    return EvalWarning(
        "train-mode",
        f"{what} attacked a model in training mode (batch-norm statistics updated by the attack, "
        "dropout active); call model.eval() first unless that is intended",
    )
