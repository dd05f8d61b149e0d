"""One audit verdict: can the number an evaluation reports be trusted?

:func:`audit` runs, on the same images, the evaluation under audit (a battery or attack, with the
user's EOT / BPDA settings), the passive checklist (:mod:`.checks`) and the decision-boundary
binarization test (:mod:`.binarization`), and joins them:

- **the worst case**: per image, the worst point found by *any* evaluation the audit ran on it at
  the audit's threat model (the rule of :func:`robustlab.evaluate.worst_case`: each image takes
  the evaluation whose choosing estimate is lowest and reports that evaluation's fresh estimate,
  so the choice does not bias it). On a deterministic model it can only lower the battery's number; on a
  randomized one it lowers it in expectation (each figure is a fresh estimate).
- **the flags**: every check of the checklist that flagged, the sanity warnings among them.
- **the binarization result**: whether the attack under audit finds the adversarial example that
  the binarized model provably has (Zimmermann et al., 2022).

The one-line verdict (:attr:`AuditResult.summary`): ``BROKEN EVALUATION (binarization test
failed)`` when the binarization test fails, else ``SUSPECT (k flags)`` when any check flagged (an
inconclusive binarization test, where no sample could be tested, counts as a flag), else
``TRUSTWORTHY``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..attacks import Attack
from ..attacks.verdict import VERDICT_DRAWS
from ..core.bpda import BPDA_MODES, BPDAMode
from ..core.checks import check_images, check_int, check_labels
from ..core.errors import InputError
from ..core.types import ThreatModel
from ..evaluate import Battery, EvalResult, battery_threat, model_name, run_battery
from .binarization import BinarizationResult, BinarizationSettings, binarization_test
from .checklist import result_summary
from .checks import Check, Checklist, CheckSettings, run_checks
from .features import find_head

__all__ = ["AUDIT_PROFILES", "AuditResult", "AuditSettings", "audit", "audit_settings"]


@dataclass(frozen=True)
class AuditSettings:
    """How much work an audit does.

    Attributes:
        profile: the profile's name (``quick`` or ``full``), for reports.
        checks: the passive checklist's settings.
        binarization: the binarization test's settings.
        binarization_n: run the binarization test on the first this many images (each image has
            its own binarized model, so the test costs about one attack per image plus
            ``inner + 2 * random_points`` forwards); ``None``: every image.
        checks_n: run the checklist on the first this many images (``None``: every image); the
            other images keep the evaluation's own worst case.
    """

    profile: str = "full"
    checks: CheckSettings = field(default_factory=CheckSettings)
    binarization: BinarizationSettings = field(default_factory=BinarizationSettings)
    binarization_n: int | None = 100
    checks_n: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"profile": self.profile, "binarization_n": self.binarization_n, "checks_n": self.checks_n,
                "checks": dataclasses.asdict(self.checks), "binarization": self.binarization.to_dict()}


def _quick() -> AuditSettings:
    # The reference's smaller case-study setting (49 inner points) and a cheaper random-ASR control.
    return AuditSettings(profile="quick", checks=CheckSettings.quick(),
                         binarization=BinarizationSettings(inner=49, random_points=50, feature_draws=4),
                         binarization_n=16)


def _demo() -> AuditSettings:
    # The demo's slice (four models in about a minute on 2 CPU cores): every check, with the
    # smallest budgets that still compare what the check compares (PGD-10 against APGD-20; the
    # eps curve at eps and where any image reaches any other), on 12 images; the binarization
    # test on 6 (a failing attack, 0 of 6, has an interval ending at 39%).
    checks = CheckSettings.quick(pgd_steps=(10,), apgd_steps=20, attack_eot=4, eps_multiples=(),
                                 eot_draws=(1, 2, 4), square_queries=100, square_eot=2, gradient_draws=2,
                                 disagreement_draws=4, profile="demo")
    return AuditSettings(profile="demo", checks=checks, checks_n=12, binarization_n=6,
                         binarization=BinarizationSettings(inner=49, random_points=50, feature_draws=4))


AUDIT_PROFILES: dict[str, Callable[[], AuditSettings]] = {"demo": _demo, "quick": _quick, "full": AuditSettings}
"""Named audit settings: ``demo`` (the demo's slice: small budgets, the checklist on 12 images and
the binarization test on 6), ``quick`` (the cheap checklist on every image, the binarization test
on 16 images with 49 inner points, as 19 of the reference's case studies use) and ``full`` (the
whole checklist, the reference's 999 inner points on 100 images)."""


def audit_settings(profile: str) -> AuditSettings:
    """The settings of a named profile (:data:`AUDIT_PROFILES`)."""
    if profile not in AUDIT_PROFILES:
        raise InputError(f"unknown audit profile {profile!r}; use one of {', '.join(AUDIT_PROFILES)}")
    return AUDIT_PROFILES[profile]()


@dataclass
class AuditResult:
    """The outcome of :func:`audit`.

    Attributes:
        model_name: the audited model's short name.
        threat: the threat model, ``{"norm", "eps"}``.
        evaluation: the label of the evaluation under audit (a battery or attack).
        n: images audited.
        clean_acc: mean probability that a draw classifies the clean image correctly.
        reported: the evaluation's own robust accuracy (the number under audit).
        worst: the audit's per-image worst case over every evaluation it ran at ``threat``.
        worst_per_sample: that worst case per image.
        worst_source: per image, the label of the evaluation that gave it.
        worst_select: per image, the choosing estimate of that evaluation (what a further worst
            case over other evaluations selects on).
        evaluation_result: the evaluation under audit's :class:`EvalResult`.
        checklist: the passive checklist.
        binarization: the binarization test's result (``None`` when skipped).
        seconds: wall time of the whole audit.
        settings: the settings used, JSON-ready.
    """

    model_name: str
    threat: dict[str, Any]
    evaluation: str
    n: int
    clean_acc: float
    reported: float
    worst: float
    worst_per_sample: list[float]
    worst_source: list[str]
    worst_select: list[float]
    evaluation_result: EvalResult
    checklist: Checklist
    binarization: BinarizationResult | None
    seconds: float
    settings: dict[str, Any]

    @property
    def flags(self) -> list[Check]:
        """The flagged checks (a binarization test that could test no sample is one of them)."""
        out = list(self.checklist.flags)
        b = self.binarization
        if b is not None and b.verdict == "inconclusive":
            out.append(Check("binarization-inconclusive", "binarization test could test a sample", "flag",
                             f"no sample of {b.testable + b.not_testable} could be tested (features not "
                             "linearly separable): the active test says nothing about this evaluation",
                             {"not_testable": b.not_testable}, "Zimmermann et al. 2022, Sec. 3"))
        return out

    @property
    def broken(self) -> bool:
        """The binarization test failed: the attack under audit misses adversarial examples that exist."""
        return self.binarization is not None and self.binarization.verdict == "fail"

    @property
    def summary(self) -> str:
        """``TRUSTWORTHY``, ``SUSPECT (k flags)`` or ``BROKEN EVALUATION (binarization test failed)``."""
        if self.broken:
            return "BROKEN EVALUATION (binarization test failed)"
        k = len(self.flags)
        if k:
            return f"SUSPECT ({k} flag{'s' if k != 1 else ''})"
        return "TRUSTWORTHY"

    def worst_result(self) -> EvalResult:
        """The evaluation under audit with its robust figures replaced by the audit's worst case:
        the ledger row of an audit."""
        r = self.evaluation_result
        worst = torch.tensor([self.worst_per_sample], dtype=torch.float64)
        config = dict(r.config)
        config["audit"] = {"summary": self.summary, "reported": self.reported,
                           "worst_over": sorted(set(self.worst_source))}
        return dataclasses.replace(r, robust_acc=self.worst, robust_std=0.0, robust_accs=[self.worst],
                                   p_robust=worst, robust=worst >= 0.5, config=config)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``audit.json``)."""
        return {
            "summary": self.summary,
            "model": self.model_name,
            "threat": self.threat,
            "evaluation": self.evaluation,
            "n": self.n,
            "clean_acc": self.clean_acc,
            "reported": self.reported,
            "worst": self.worst,
            "worst_per_sample": self.worst_per_sample,
            "worst_source": self.worst_source,
            "flags": [c.code for c in self.flags],
            "checks": [c.to_dict() for c in self.checklist.checks],
            "curves": {k: [list(p) for p in v] for k, v in self.checklist.curves.items()},
            "evaluations": {label: result_summary(res) for label, res in self.evaluations().items()},
            "binarization": None if self.binarization is None else self.binarization.to_dict(),
            "randomness": self.evaluation_result.randomness,
            "seconds": self.seconds,
            "settings": self.settings,
        }

    def evaluations(self) -> dict[str, EvalResult]:
        """Every evaluation the audit ran, the one under audit first."""
        return {self.evaluation: self.evaluation_result, **self.checklist.results}


def _label(evaluation: Battery | Attack | str) -> str:
    if isinstance(evaluation, str):
        return evaluation
    if isinstance(evaluation, Battery):
        return evaluation.name
    return str(getattr(evaluation, "name", type(evaluation).__name__))


def _as_battery(evaluation: Battery | Attack | str) -> Battery | str:
    if isinstance(evaluation, Attack):
        return Battery([evaluation], name=_label(evaluation), labels=[_label(evaluation)])
    return evaluation


def _same_threat(result: EvalResult, threat: ThreatModel) -> bool:
    t = battery_threat(result.config)
    return t is not None and t.get("norm") == threat.norm and abs(float(t.get("eps", -1)) - threat.eps) <= 1e-9


def _probe(model: nn.Module, x: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as e:  # a user's model may raise anything; say so in one line
        raise InputError(f"the model raised {type(e).__name__} on a forward of 2 images: {e}; fix the model "
                         "(or the checkpoint) so that it maps a batch of [0, 1] images to logits") from e
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"the model must return (batch, classes) logits, got {shape}; return the logits tensor")


def audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel,
    evaluation: Battery | Attack | str = "standard",
    settings: AuditSettings | None = None,
    seed: int = 0,
    draws: int = VERDICT_DRAWS,
    bpda: BPDAMode | None = None,
    surrogate: nn.Module | None = None,
    battery_options: Mapping[str, Any] | None = None,
    batch_size: int = 256,
    progress: Callable[[str], None] | None = None,
    name: str | None = None,
    evaluation_result: EvalResult | None = None,
) -> AuditResult:
    """Audit ``evaluation`` of ``model`` on the images ``x``, ``y`` at ``threat``.

    Runs the evaluation under audit (a battery name, a :class:`Battery` or an :class:`Attack`,
    with ``bpda`` and ``draws`` as the user would run it), the passive checklist and the
    binarization test with the same evaluation as the attack under audit, and returns the one
    verdict (see the module docstring). ``progress`` is called with a line per stage.
    ``evaluation_result``: the evaluation under audit's result when it already ran on these
    images (a study's column), so that it is not run again; it must cover the same images.

    Raises:
        InputError: for images outside [0, 1] or of the wrong shape, labels that do not match,
            a model that raises or returns no logits, a model with no penultimate layer (from the
            binarization test), or an eps outside the threat model's range.
    """
    settings = settings or AuditSettings()
    check_images(x, "x")
    check_labels(y, x.shape[0])
    check_int(draws, "draws", 1)
    if bpda is not None and bpda not in BPDA_MODES:
        raise InputError(f"unknown bpda mode {bpda!r}; use one of {', '.join(BPDA_MODES)} (or None)")
    _probe(model, x)
    k = len(x) if settings.binarization_n is None else min(len(x), settings.binarization_n)
    if k > 0:
        find_head(model, x[:2])  # a model with no penultimate layer is refused before any work
    say = progress or (lambda _: None)
    label = _label(evaluation)
    t0 = time.perf_counter()
    if evaluation_result is None:
        say(f"{label}: the evaluation under audit on {len(x)} images")
        result = run_battery(model, (x, y), _as_battery(evaluation), threat=threat, battery_options=battery_options,
                             batch_size=batch_size, seed=seed, draws=draws, bpda=bpda)  # type: ignore[arg-type]
    elif evaluation_result.n != len(x):
        raise InputError(f"evaluation_result covers {evaluation_result.n} images but {len(x)} were given; pass the "
                         "result of the evaluation on these images, or none to run it")
    else:
        result = evaluation_result
    m = len(x) if settings.checks_n is None else min(len(x), settings.checks_n)
    say(f"the passive checklist on {m} images")
    checklist = run_checks(model, x[:m], y[:m], threat=threat, settings=settings.checks, battery_result=result.head(m),
                           surrogate=surrogate, seed=seed, draws=draws, bpda=bpda, progress=say)
    binarization = None
    if k > 0:
        say(f"the binarization test of {label} on {k} images")
        binarization = binarization_test(model, x[:k], y[:k], _as_battery(evaluation), threat=threat,
                                         settings=settings.binarization, seed=seed, draws=draws, bpda=bpda)
    runs = {label: result, **{lbl: r for lbl, r in checklist.results.items() if _same_threat(r, threat)}}
    labels = list(runs)
    masks = [runs[lbl].probabilities()["robust"][0].tolist() for lbl in labels]
    selects = [runs[lbl].probabilities()["select"][0].tolist() for lbl in labels]
    # per image, the evaluations that ran on it (the checklist may cover only the first images)
    def worst_for(i: int) -> int:
        return min((a for a in range(len(labels)) if len(masks[a]) > i), key=lambda a: selects[a][i])

    chosen = [worst_for(i) for i in range(len(x))]
    worst = [masks[a][i] for i, a in enumerate(chosen)]
    return AuditResult(
        model_name=name or model_name(model), threat={"norm": threat.norm, "eps": threat.eps}, evaluation=label,
        n=len(x), clean_acc=result.clean_acc, reported=result.robust_acc, worst=sum(worst) / len(worst),
        worst_per_sample=worst, worst_source=[labels[a] for a in chosen],
        worst_select=[selects[a][i] for i, a in enumerate(chosen)], evaluation_result=result, checklist=checklist,
        binarization=binarization, seconds=time.perf_counter() - t0, settings=settings.to_dict())
