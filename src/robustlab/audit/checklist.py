"""The checklist's data: its settings, one check's outcome, the whole list (see :mod:`.checks`).

The tolerance, the exploding-gradient bound and the sources every check cites live here, so the
checks, the verdict and the reports read one definition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..attacks.checks import GRADIENT_FRACTION
from ..core.checks import check_int, check_number, check_probability
from ..core.errors import InputError
from ..evaluate import (
    EvalResult,
    battery_threat,
)

__all__ = ["CHECK_CODES", "EXPLODING_RATIO", "TOLERANCE", "Check", "CheckSettings", "Checklist", "Status", "result_summary"]

Status = Literal["pass", "flag", "n/a"]

TOLERANCE = 0.05
"""Default absolute tolerance on a difference of robust accuracies (fractions): 5 points."""

EXPLODING_RATIO = 1000.0
"""Default bound of an exploding gradient: a (confidence-normalized) input-gradient norm this many
times the median over the clean images."""

CHECK_CODES = (
    "iterative-beats-single-step",
    "white-box-beats-black-box",
    "accuracy-falls-with-eps",
    "attack-converged",
    "eot-converged",
    "bpda-vs-plain",
    "gradient-health",
    "white-box-beats-transfer",
    "draw-disagreement",
)
"""The codes of checks 1-9, in order; check 10 adds one ``warning:<code>`` item per warning."""

CARLINI = "Carlini et al. 2019, On Evaluating Adversarial Robustness"
ATHALYE = "Athalye et al. 2018, Obfuscated Gradients Give a False Sense of Security"
GAO = "Gao et al. 2022, On the Limitations of Stochastic Pre-processing Defenses"


def _ints(value: object, name: str, low: int = 1) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise InputError(f"{name} must be a non-empty tuple of ints, got {value!r}")
    return tuple(check_int(v, f"{name} entry", low) for v in value)


@dataclass(frozen=True)
class CheckSettings:
    """How much work the checklist does (the ``full`` profile by default; :meth:`quick` is cheap).

    Attributes:
        tolerance: absolute tolerance on a difference of robust accuracies (fractions in [0, 1]):
            a check flags a difference larger than this (plus two standard errors of the verdict's
            sampling noise on a randomized model). 0.05 (5 points) is our choice; the papers give
            no number.
        pgd_steps: the PGD budgets; the first is the cheap attack of checks 1, 3 and 5, the others
            are the larger budgets of check 4 (Carlini et al. 2019, Sec. 4.8: doubling the
            iterations must not change the result).
        apgd_steps: the APGD-CE budget of check 4 (AutoAttack's 100).
        restarts: random restarts of the larger PGD budgets and of APGD (Carlini et al. 2019,
            Sec. 4.9).
        attack_eot: EOT draws of every gradient attack on a randomized model (AutoAttack
            ``rand``'s 20; ignored on a deterministic model).
        eps_multiples: multiples of the threat's eps of the accuracy-vs-eps curve (check 3); the
            curve always ends at :func:`max_eps`, where any image can become any other.
        eot_draws: EOT draws of the convergence curve (check 5), ascending, doubling.
        square_queries: Square's query budget (check 2).
        square_eot: draws Square averages its margin over on a randomized model (expectation
            over the randomness for a score-based attack).
        transfer: run check 8 when a surrogate is given.
        exploding_ratio: a per-image input gradient is exploding when its norm (divided by
            ``1 - p_y``, see :func:`gradient_health`) exceeds this many times the median.
        exploding_fraction: check 7 flags when more than this fraction of gradients explode
            (zero and non-finite ones flag above
            :data:`robustlab.attacks.checks.GRADIENT_FRACTION`).
        gradient_draws: draws of the gradient-health measurement on a randomized model.
        disagreement_draws: draws of the disagreement measurement (check 9).
        profile: the profile's name, for reports.
    """

    tolerance: float = TOLERANCE
    pgd_steps: tuple[int, ...] = (10, 100)
    apgd_steps: int = 100
    restarts: int = 1
    attack_eot: int = 20
    eps_multiples: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    eot_draws: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    square_queries: int = 1000
    square_eot: int = 8
    transfer: bool = True
    exploding_ratio: float = EXPLODING_RATIO
    exploding_fraction: float = GRADIENT_FRACTION
    gradient_draws: int = 8
    disagreement_draws: int = 16
    profile: str = "full"

    def __post_init__(self) -> None:
        check_probability(self.tolerance, "tolerance")
        object.__setattr__(self, "pgd_steps", _ints(self.pgd_steps, "pgd_steps"))
        check_int(self.apgd_steps, "apgd_steps", 1)
        check_int(self.restarts, "restarts", 1)
        check_int(self.attack_eot, "attack_eot", 1)
        if isinstance(self.eps_multiples, (str, bytes)) or not isinstance(self.eps_multiples, Sequence):
            raise InputError(f"eps_multiples must be a tuple of positive numbers, got {self.eps_multiples!r}")
        object.__setattr__(self, "eps_multiples", tuple(
            check_number(m, "eps_multiples entry", 0, low_open=True) for m in self.eps_multiples))
        draws = _ints(self.eot_draws, "eot_draws")
        if list(draws) != sorted(set(draws)):
            raise InputError(f"eot_draws must be strictly ascending (e.g. (1, 2, 4, 8)), got {draws!r}")
        object.__setattr__(self, "eot_draws", draws)
        check_int(self.square_queries, "square_queries", 1)
        check_int(self.square_eot, "square_eot", 1)
        if not isinstance(self.transfer, bool):
            raise InputError(f"transfer must be True or False, got {self.transfer!r}")
        check_number(self.exploding_ratio, "exploding_ratio", 1, low_open=True)
        check_probability(self.exploding_fraction, "exploding_fraction")
        check_int(self.gradient_draws, "gradient_draws", 1)
        check_int(self.disagreement_draws, "disagreement_draws", 2)

    @classmethod
    def quick(cls, **overrides: Any) -> CheckSettings:
        """The cheap profile: PGD-10 vs PGD-50 and APGD-50, EOT-8 gradients, EOT curve up to 8
        draws, Square with 300 queries."""
        base: dict[str, Any] = dict(pgd_steps=(10, 50), apgd_steps=50, restarts=1, attack_eot=8,
                                    eps_multiples=(0.5, 1.0, 2.0, 4.0), eot_draws=(1, 2, 4, 8),
                                    square_queries=300, square_eot=4, gradient_draws=4,
                                    disagreement_draws=8, profile="quick")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def full(cls, **overrides: Any) -> CheckSettings:
        """The full profile (the defaults)."""
        return cls(**overrides)


@dataclass
class Check:
    """One item of the checklist.

    Attributes:
        code: a stable code (:data:`CHECK_CODES`, or ``warning:<code>`` for a sanity warning).
        title: what an honest evaluation shows, in words.
        status: ``"pass"``, ``"flag"`` or ``"n/a"``.
        evidence: one sentence with the numbers (or why the check does not apply).
        numbers: the numbers themselves, JSON-ready.
        source: the paper and section the check comes from.
    """

    code: str
    title: str
    status: Status
    evidence: str
    numbers: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def flagged(self) -> bool:
        """Whether the check flagged."""
        return self.status == "flag"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"code": self.code, "title": self.title, "status": self.status, "evidence": self.evidence,
                "numbers": dict(self.numbers), "source": self.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Check:
        """Inverse of :meth:`to_dict`."""
        status = str(d["status"])
        if status not in ("pass", "flag", "n/a"):
            raise InputError(f"a check's status must be 'pass', 'flag' or 'n/a', got {status!r}")
        return cls(str(d["code"]), str(d["title"]), status, str(d["evidence"]),  # type: ignore[arg-type]
                   dict(d.get("numbers", {})), str(d.get("source", "")))


def result_summary(r: EvalResult) -> dict[str, Any]:
    """One evaluation in a few JSON-ready numbers: robust and clean accuracy, threat, time, warnings."""
    return {"robust_acc": r.robust_acc, "clean_acc": r.clean_acc, "threat": battery_threat(r.config),
            "seconds": r.seconds, "warnings": [w.code for w in r.warnings]}


@dataclass
class Checklist:
    """The outcome of :func:`run_checks`.

    Attributes:
        checks: checks 1-9 in order, then one item per sanity warning seen.
        results: every evaluation the checklist ran, by label (``pgd-10``, ``square``, ``pgd-10
            eps=0.2``, ...). Those of the eps curve are at other radii (their ``config`` says
            which, :func:`robustlab.evaluate.battery_threat`): a worst case takes only those at
            the audited threat model.
        curves: ``"eps"``: ``(eps, robust accuracy)`` from eps 0 (clean) to :func:`max_eps`;
            ``"eot"`` (randomized models): ``(EOT draws, robust accuracy)``.
        randomized: whether the model was evaluated as randomized.
        seconds: wall time of the checklist.
        settings: the settings used, JSON-ready.
    """

    checks: list[Check]
    results: dict[str, EvalResult] = field(default_factory=dict)
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    randomized: bool = False
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def flags(self) -> list[Check]:
        """The flagged checks."""
        return [c for c in self.checks if c.status == "flag"]

    def check(self, code: str) -> Check:
        """The check with ``code``.

        Raises:
            InputError: when no check has that code (listing the codes there are).
        """
        for c in self.checks:
            if c.code == code:
                return c
        raise InputError(f"no check {code!r}; the checklist has {', '.join(c.code for c in self.checks)}")

    def to_dict(self, results: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; with ``results``, a summary of every evaluation (not its masks)."""
        out: dict[str, Any] = {
            "checks": [c.to_dict() for c in self.checks],
            "flags": [c.code for c in self.flags],
            "curves": {k: [[float(a), float(b)] for a, b in v] for k, v in self.curves.items()},
            "randomized": self.randomized,
            "seconds": self.seconds,
            "settings": dict(self.settings),
        }
        if results:
            out["results"] = {label: result_summary(r) for label, r in self.results.items()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Checklist:
        """Inverse of :meth:`to_dict` (the evaluations themselves are not in it: ``results`` is
        empty)."""
        return cls(checks=[Check.from_dict(c) for c in d["checks"]], results={},
                   curves={k: [(float(a), float(b)) for a, b in v] for k, v in d.get("curves", {}).items()},
                   randomized=bool(d.get("randomized", False)), seconds=float(d.get("seconds", 0.0)),
                   settings=dict(d.get("settings", {})))
