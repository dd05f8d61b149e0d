"""The decision-boundary binarization test: does the attack under audit find an adversarial
example that provably exists?

Zimmermann, Brendel, Tramèr and Carlini, "Increasing Confidence in Adversarial Robustness
Evaluations", NeurIPS 2022, Sec. 3 (reference implementation:
``active_tests/decision_boundary_binarization.py`` of google-research/active-adversarial-tests).

**The construction**, per test image ``x`` (its label plays no part):

1. ``inner`` points drawn uniformly in the eps-ball shrunk by ``eta`` (L-inf: the box of radius
   ``eta * eps``; L2: the ball of that radius), plus ``x`` itself, all clipped to [0, 1]:
   class 0. ``boundary`` points at distance exactly ``eps`` (L-inf: a uniform point of the box,
   rescaled so that its distance *after clipping* is ``eps``, or a random corner of the box with
   ``corners``; L2: a uniform point of the sphere, rescaled likewise): class 1. Optionally
   ``far_off`` points at ``xi * eps``, class 1 (reference points for logit-matching attacks).
2. The model's penultimate features of every point (the input of its classifier head,
   :mod:`.features`), averaged over ``feature_draws`` forwards on a randomized model.
3. A linear readout fitted to separate the inner from the boundary features *perfectly*
   (logistic regression without penalty, or a linear SVM with ``C = 1e6``). When no perfect fit
   is found the image is **not testable**, and it is reported so with the reason; it is never
   dropped silently.
4. The readout as a two-class head (rows ``-w`` and ``+w``, the reference's layout), its
   decision boundary moved toward the boundary points (``closeness``: the boundary point
   nearest the decision boundary keeps ``1 - closeness`` of its margin, so it is only just
   class 1), its logits rescaled (``rescale``: ``"fixed"``, the training logits span 1;
   ``"adaptive"``, they span what the original model's logits span on the same points;
   ``"tight"``, the reference's extra shift that leaves the nearest boundary point a margin of
   0.1%; ``None``).
5. The binarized model: the model with its head replaced by that readout
   (:func:`.features.binarized`). Everything in front of the head, random layers and BPDA
   layers included, is the defense's own.

**Why an attack must succeed.** The binarized model classifies the clean point as 0 and a point
inside the threat model (the boundary point, at distance ``eps``) as 1, so every binarized
problem has an adversarial example inside the threat model by construction. An attack that
works on the defense's feature extractor finds one on nearly every image: the paper reads an
attack success rate (ASR) near 100% as a pass, and a clearly lower one as an attack that fails
against this defense, i.e. an evaluation that overestimates robustness.

**The test statistic.** The attack under audit runs on each binarized model with the clean
point and label 0 through :func:`robustlab.evaluate.run_battery`, so the library's one verdict
rule judges it: the image's ASR is ``1 - p_robust`` (0 or 1 on a deterministic model; on a
randomized one the probability that a fresh draw puts the attack's point in class 1). The test
ASR is the mean over testable images, with a Wilson score interval at ``level`` (the summed
per-image ASR as the success count over ``n`` testable images).

**The threshold is robustlab's choice.** The reference implementation reports the ASR (and the
random control below) without a threshold; the paper reads the numbers by eye. robustlab turns
them into a verdict with ``threshold = 0.95`` (on a randomized model the ASR asked for is
``threshold * boundary_asr``, see below):

- ``"fail"`` when the whole interval lies below the threshold (the ASR is significantly below
  95%: the attack misses adversarial examples that exist);
- ``"pass"`` when the interval's upper end reaches the threshold (the ASR is *not
  significantly* below 95%; with few images this is weak evidence for the attack, it only
  means the test could not convict it);
- ``"inconclusive"`` when no image is testable.

**Randomized models.** The readout is fitted to features averaged over draws, so it is the
*mean* feature of the boundary point that lies on the class-1 side; a single draw may put it in
class 0. What an attack can provably reach is then not ASR 1 but the probability that a draw
puts a point of the ball in class 1, at least the boundary point's own: ``boundary_asr``,
estimated per image on ``draws`` fresh draws (the best boundary point; 1.0 on a deterministic
model, where a fresh forward confirms it). The verdict asks for ``threshold * boundary_asr``
(mean over testable images), which on a deterministic model is ``threshold`` itself: the test
convicts an attack only when it does significantly worse than 95% of a point the construction
knows. An image whose boundary point is class 1 on none of the draws is not testable.

**The control** (the reference's "random ASR"): ``random_points`` fresh points on the sphere of
radius ``eps``, as many corners of the box (L-inf only) and as many points uniform in the whole
ball, classified by the binarized model; an image is a random success when any of them is class
1 (on a randomized model: class 1 for most of ``draws`` fresh draws). A high random ASR means the
binarized problem is too easy to tell a good attack from a bad one.

**Departures from the reference**, each for a stated reason:

- ``inner`` counts the random inner points; the clean point comes on top (the reference's code
  draws ``n_inner_points`` random points and adds the clean one too, so its 999 means 1000
  inner points, as here).
- The ``closeness`` shift is measured on the boundary point (at distance ``eps``) nearest the
  decision boundary, so every boundary point stays class 1; the reference measures it on the
  training point farthest on the class-1 side, which with several boundary points turns the
  others to class 0 and with ``far_off`` points can move the decision boundary outside the
  eps-ball, where the existence argument no longer holds. With the defaults (one boundary
  point, no far-off points) the two are the same.
- The readout is fitted on standardized features (folded back into the weights, so it is still
  linear in the features); this only helps the optimizer reach the perfect fit.
- On a deterministic model the binarized model is forwarded once more on the clean and boundary
  points; if a fresh forward does not reproduce the separation (features that change with the
  batch), the image is not testable.
- Features of a randomized model are averaged over draws (the reference repeats points instead).
- The DLR losses (APGD-DLR, APGD-T: the ``standard`` and ``rand`` batteries) need 3 and 4
  classes; the reference patches them on two classes to the plain logit difference (its
  normalizer dropped). Here, when the attack under audit uses a DLR loss, the attack sees the
  binarized model with dummy classes appended (:class:`PaddedLogits`), each at ``C`` below the
  top logit with ``C`` a per-sample constant much larger than the logits: softmax gives them no
  mass (cross-entropy, margins and the verdict are unchanged) and DLR's normalizer becomes
  ``C``, i.e. the reference's patched loss up to a constant factor. Targeted attacks also try
  the dummy classes as targets: wasted work, never a success.

Every random draw comes from a ``torch.Generator`` derived from ``seed`` and the image's index
(:func:`robustlab.evaluate.derive_seed`), and the model's random layers are seeded the same way,
so a run repeats bit for bit (randomness outside the :class:`~robustlab.core.randomness.Stochastic`
protocol, found only empirically, is the model's own and cannot be seeded).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..attacks import Attack, create_attack, logits_of
from ..attacks.model import model_fn
from ..attacks.registry import ATTACKS
from ..attacks.verdict import VERDICT_DRAWS
from ..core.bpda import BPDA_MODES
from ..core.checks import check_images, check_int, check_labels, check_number
from ..core.errors import InputError
from ..core.types import ThreatModel
from ..evaluate import BATTERIES, Battery, create_battery, derive_seed, run_battery
from .features import find_head
from .problem import (
    BinarizationSettings,
    BinarizedProblem,
    binarize_sample,
    generator_for,
    random_success_of,
    seed_layers,
)

__all__ = [
    "BinarizationResult",
    "BinarizationSample",
    "BinarizationSettings",
    "BinarizedProblem",
    "PaddedLogits",
    "binarization_test",
    "binarize_sample",
    "binarization_verdict",
    "wilson_interval",
]

@dataclass
class BinarizationSample:
    """One image of the test.

    Attributes:
        index: the image's position in the batch.
        testable: whether a readout separated its inner and boundary features perfectly.
        reason: why it is not testable (``""`` when it is).
        asr: the probability that the attack's point is class 1 (``1 - p_robust`` of the
            binarized model's verdict; 0 or 1 on a deterministic model); ``None`` when not
            testable.
        random_success: whether a random point of the control is class 1 (``None`` when not
            testable or without control).
        train_accuracy: the fitted readout's accuracy on its training features (1.0 when
            testable; ``None`` when no readout was fitted).
        boundary_asr: the probability that a fresh draw puts the construction's own boundary
            point in class 1 (the best of them): an ASR the attack can at least reach, 1.0 on
            a deterministic model (``None`` when not testable).
    """

    index: int
    testable: bool
    reason: str
    asr: float | None
    random_success: bool | None
    train_accuracy: float | None
    boundary_asr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BinarizationSample:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["index"]), bool(d["testable"]), str(d["reason"]),
                   None if d["asr"] is None else float(d["asr"]),
                   None if d["random_success"] is None else bool(d["random_success"]),
                   None if d["train_accuracy"] is None else float(d["train_accuracy"]),
                   None if d.get("boundary_asr") is None else float(d["boundary_asr"]))


@dataclass
class BinarizationResult:
    """The outcome of :func:`binarization_test`.

    Attributes:
        attack: the label of the attack or battery under audit.
        samples: one entry per image, testable or not.
        test_asr: mean ASR over the testable images (``None`` when none is).
        interval: the Wilson interval of the test ASR at ``level`` (``None`` when no image is
            testable).
        random_asr: the fraction of testable images where the random control succeeded.
        boundary_asr: the mean over testable images of their ``boundary_asr`` (1.0 on a
            deterministic model): the verdict asks for ``threshold * boundary_asr``.
        testable: images tested.
        not_testable: images whose features could not be separated (see their ``reason``).
        threshold: the ASR asked for.
        verdict: ``"pass"``, ``"fail"`` or ``"inconclusive"`` (module docstring).
        seconds: wall time of the test.
        settings: the :class:`BinarizationSettings` used, as a dict.
        level: the interval's confidence level.
        randomness: how the model's randomness is known (``"none"``, ``"protocol"``,
            ``"frozen"``, ``"detected"``).
        warnings: the attack runs' sanity warnings (``[code] message``), each once.
        config: the run's other settings (threat, seed, draws, bpda, head, battery).
    """

    attack: str
    samples: list[BinarizationSample]
    test_asr: float | None
    interval: tuple[float, float] | None
    random_asr: float | None
    testable: int
    not_testable: int
    threshold: float
    verdict: Literal["pass", "fail", "inconclusive"]
    seconds: float
    settings: dict[str, Any]
    level: float = 0.95
    randomness: str = "none"
    warnings: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    boundary_asr: float | None = None

    @property
    def required_asr(self) -> float | None:
        """The ASR the verdict asks for: ``threshold`` times ``boundary_asr`` (``threshold`` on
        a deterministic model); ``None`` when no image is testable."""
        return None if self.boundary_asr is None else self.threshold * self.boundary_asr

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "attack": self.attack,
            "verdict": self.verdict,
            "test_asr": self.test_asr,
            "interval": None if self.interval is None else [float(v) for v in self.interval],
            "random_asr": self.random_asr,
            "boundary_asr": self.boundary_asr,
            "required_asr": self.required_asr,
            "testable": self.testable,
            "not_testable": self.not_testable,
            "threshold": self.threshold,
            "level": self.level,
            "seconds": self.seconds,
            "randomness": self.randomness,
            "warnings": list(self.warnings),
            "settings": dict(self.settings),
            "config": dict(self.config),
            "samples": [s.to_dict() for s in self.samples],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BinarizationResult:
        """Inverse of :meth:`to_dict`."""
        interval = d.get("interval")
        return cls(
            attack=str(d["attack"]),
            samples=[BinarizationSample.from_dict(s) for s in d["samples"]],
            test_asr=None if d["test_asr"] is None else float(d["test_asr"]),
            interval=None if interval is None else (float(interval[0]), float(interval[1])),
            random_asr=None if d["random_asr"] is None else float(d["random_asr"]),
            boundary_asr=None if d.get("boundary_asr") is None else float(d["boundary_asr"]),
            testable=int(d["testable"]),
            not_testable=int(d["not_testable"]),
            threshold=float(d["threshold"]),
            verdict=d["verdict"],
            seconds=float(d["seconds"]),
            settings=dict(d["settings"]),
            level=float(d.get("level", 0.95)),
            randomness=str(d.get("randomness", "none")),
            warnings=[str(w) for w in d.get("warnings", [])],
            config=dict(d.get("config", {})),
        )


# ------------------------------------------------------------------ statistics


def wilson_interval(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``successes / n`` at ``level``
    (Wilson, 1927); ``successes`` may be fractional (a sum of per-image probabilities)."""
    n = check_int(n, "n", 1)
    successes = check_number(successes, "successes", 0, n)
    level = check_number(level, "level", 0, 1, low_open=True, high_open=True)
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def binarization_verdict(
    interval: tuple[float, float] | None, required: float
) -> Literal["pass", "fail", "inconclusive"]:
    """``"fail"`` when the whole interval lies below the ``required`` ASR, ``"pass"`` when its
    upper end reaches it, ``"inconclusive"`` without an interval (no testable image)."""
    if interval is None:
        return "inconclusive"
    return "fail" if interval[1] < required else "pass"


# ------------------------------------------------------------------ the attack under audit


class PaddedLogits(nn.Module):
    """A binarized model's logits plus ``extra`` dummy classes, so that attacks whose loss needs
    more than two classes (DLR: 3, targeted DLR: 4) run on a two-class problem.

    Each dummy logit is ``max(z) - C`` with ``C = 100 (1 + max |z|)`` per sample, held constant
    (no gradient): far below every real logit, so softmax gives it no mass, and DLR's
    normalizer ``z_pi1 - z_pi3`` is exactly ``C``: the loss is the logit difference over a
    constant, the two-class DLR of the reference implementation up to a factor.
    """

    def __init__(self, model: nn.Module, extra: int) -> None:
        super().__init__()
        self.model = model
        self.extra = check_int(extra, "extra", 1)
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = logits_of(self.model(x))
        gap = 100 * (1 + z.detach().abs().amax(dim=1, keepdim=True))
        dummy = z.amax(dim=1, keepdim=True) - gap
        return torch.cat([z, dummy.expand(-1, self.extra)], dim=1)


def _classes_needed(battery: Battery) -> int:
    """How many classes the battery's losses need: 4 with a targeted DLR loss (APGD-T), 3 with
    the DLR loss, else 2."""
    blob = json.dumps(battery.config(), sort_keys=True)
    if '"dlr-targeted"' in blob or '"APGDT"' in blob:
        return 4
    return 3 if '"dlr"' in blob else 2


def _battery(attack: Attack | Battery | str, threat: ThreatModel) -> Battery:
    if isinstance(attack, Battery):
        battery = attack
    elif isinstance(attack, Attack):
        label = str(getattr(attack, "name", type(attack).__name__))
        battery = Battery([attack], name=label, labels=[label])
    elif isinstance(attack, str):
        if attack in BATTERIES:
            battery = create_battery(attack, threat)
        elif attack in ATTACKS:
            battery = Battery([create_attack(attack, threat)], name=attack, labels=[attack])
        else:
            raise InputError(
                f"unknown attack {attack!r}: not a battery ({', '.join(BATTERIES.names())}) nor a "
                f"registered attack ({', '.join(ATTACKS.names())}); pass one of those names, an Attack "
                "or a Battery"
            )
    else:
        raise InputError(f"attack must be an Attack, a Battery or a name, got {type(attack).__name__}")
    for a in battery.attacks:
        t = a.threat
        if t.norm != threat.norm or abs(float(t.eps) - float(threat.eps)) > 1e-12:
            raise InputError(
                f"the attack {a.name!r} is built for {t.norm} eps {t.eps:g} but the test's threat is "
                f"{threat.norm} eps {threat.eps:g}; build the attack with the test's ThreatModel"
            )
    return battery


def _check_threat(threat: ThreatModel, x: torch.Tensor, settings: BinarizationSettings) -> None:
    if not isinstance(threat, ThreatModel):
        raise InputError(f"threat must be a robustlab.core.ThreatModel, got {type(threat).__name__}")
    if not threat.eps > 0:
        raise InputError(
            f"eps must be > 0 for the binarization test (its boundary points lie at distance eps), got "
            f"{threat.eps!r}; pass threat=ThreatModel(norm, eps) with eps > 0"
        )
    top = 0.5 if threat.norm == "linf" else 0.5 * math.sqrt(x[0].numel())
    if threat.eps > top:
        raise InputError(
            f"{threat.norm} eps {threat.eps:g} is too large for the binarization test: every image must reach "
            f"the sphere of radius eps inside [0, 1], which holds up to eps {top:g}; use a smaller eps"
        )
    if settings.corners and threat.norm != "linf":
        raise InputError("corners=True needs the linf threat model (an L2 ball has no corners); "
                         "use corners=False")


def binarization_test(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    attack: Attack | Battery | str,
    *,
    threat: ThreatModel,
    settings: BinarizationSettings | None = None,
    seed: int = 0,
    draws: int = VERDICT_DRAWS,
    bpda: str | None = None,
    head: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = 256,
) -> BinarizationResult:
    """Run the decision-boundary binarization test of ``attack`` on ``model`` at the images ``x``.

    Per image, one at a time (each has its own binarized model): the binarized problem
    (:func:`binarize_sample`), the random control, and ``attack`` run on the binarized model
    with the clean image and label 0 through :func:`robustlab.evaluate.run_battery` (with
    ``draws``, ``bpda`` and a seed derived from ``seed`` and the image). Then the test ASR, its
    interval and the verdict (module docstring).

    Args:
        model: the classifier under evaluation (in eval mode; not changed: the test works on a
            copy, whose random layers it seeds).
        x: images ``(N, C, H, W)`` in [0, 1].
        y: their labels (validated, otherwise unused: the binarized problem ignores labels), or
            ``None``.
        attack: the attack under audit: an :class:`~robustlab.attacks.Attack`, a
            :class:`~robustlab.evaluate.Battery`, a battery name in
            :data:`~robustlab.evaluate.BATTERIES` or a registered attack name (built for
            ``threat``).
        threat: the threat model; the attack's must be the same.
        settings: how the problems are built and judged.
        seed: the root of every random draw.
        draws: the verdict's fresh draws on a randomized model (``run_battery(draws=...)``).
        bpda: the BPDA mode of the attack's gradients (``run_battery(bpda=...)``).
        head: the classifier head's module name; default :func:`.features.find_head`.
        progress: called as ``progress(done, total)`` after each image.
        batch_size: points per forward when computing features and the control.

    Raises:
        InputError: for images outside [0, 1] or not NCHW, labels that do not match, an eps of
            0 or one the images cannot reach, a model in training mode, an unknown attack name,
            an attack built for another threat, or a model with no detectable head.
    """
    t0 = time.perf_counter()
    settings = BinarizationSettings() if settings is None else settings
    if not isinstance(settings, BinarizationSettings):
        raise InputError(f"settings must be a BinarizationSettings, got {type(settings).__name__}")
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_images(x, "x")
    if x.shape[0] == 0:
        raise InputError("x holds no image; pass at least one image (N >= 1)")
    if y is not None:
        check_labels(y, x.shape[0])
    _check_threat(threat, x, settings)
    seed = check_int(seed, "seed", 0)
    draws = check_int(draws, "draws", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    if bpda is not None and bpda not in BPDA_MODES:
        raise InputError(f"unknown BPDA mode {bpda!r}; use 'identity', 'smooth', 'bypass' or None")
    if progress is not None and not callable(progress):
        raise InputError("progress must be a callable progress(done, total), or None")
    if model.training:
        raise InputError("the binarization test got a model in training mode (batch-norm statistics would "
                         "change, dropout would be active); call model.eval() first")
    battery = _battery(attack, threat)
    classes = _classes_needed(battery)
    device = next(iter(model.parameters()), x).device
    x = x.to(device)
    work = copy.deepcopy(model)  # seeding its random layers leaves the caller's model as it was
    seed_layers(work, seed, -1, "setup")  # the probes below draw from seeded layers, not the global RNG
    head = find_head(work, x[:1]) if head is None else head
    randomness = model_fn(work, x[: min(len(x), 8)]).randomness
    randomized = randomness in ("protocol", "detected")
    samples: list[BinarizationSample] = []
    found: dict[str, None] = {}
    total = int(x.shape[0])
    for i in range(total):
        problem = binarize_sample(work, x[i : i + 1], threat=threat, settings=settings, seed=seed, index=i,
                                  head=head, randomized=randomized, draws=draws, batch_size=batch_size)
        if problem.model is None:
            samples.append(BinarizationSample(i, False, problem.reason, None, None, problem.train_accuracy))
        else:
            bmodel = problem.model
            random_success: bool | None = None
            if settings.random_points:
                seed_layers(bmodel, seed, i, "control")
                random_success = random_success_of(bmodel, x[i : i + 1], threat, settings,
                                                 generator_for(seed, i, "control"), randomized, draws, batch_size)
            zero = torch.zeros(1, dtype=torch.long, device=device)
            attacked = bmodel if classes == 2 else PaddedLogits(bmodel, classes - 2)
            result = run_battery(attacked, (x[i : i + 1], zero), battery, threat=threat, draws=draws,
                                 seed=derive_seed(seed, "binarization", i, "attack"), bpda=bpda,  # type: ignore[arg-type]
                                 batch_size=batch_size)
            for w in result.warnings:
                found.setdefault(str(w))
            assert result.p_robust is not None
            asr = 1.0 - float(result.p_robust[0, 0])
            samples.append(BinarizationSample(i, True, "", asr, random_success, problem.train_accuracy,
                                              problem.boundary_asr))
        if progress is not None:
            progress(i + 1, total)
    tested = [s for s in samples if s.testable]
    test_asr: float | None = None
    boundary_asr: float | None = None
    interval: tuple[float, float] | None = None
    if tested:
        total_asr = sum(float(s.asr) for s in tested if s.asr is not None)
        test_asr = total_asr / len(tested)
        boundary_asr = sum(float(s.boundary_asr) for s in tested if s.boundary_asr is not None) / len(tested)
        interval = wilson_interval(min(max(total_asr, 0.0), float(len(tested))), len(tested), settings.level)
    controls = [s.random_success for s in tested if s.random_success is not None]
    random_asr = sum(controls) / len(controls) if controls else None
    config = {"threat": threat.to_dict(), "seed": seed, "draws": draws, "bpda": bpda, "head": head,
              "battery": battery.config(), "attacked_classes": classes}
    return BinarizationResult(
        attack=battery.name,
        samples=samples,
        test_asr=test_asr,
        interval=interval,
        random_asr=random_asr,
        testable=len(tested),
        not_testable=len(samples) - len(tested),
        threshold=float(settings.threshold),
        verdict=binarization_verdict(interval, settings.threshold * (boundary_asr or 0.0)),
        seconds=time.perf_counter() - t0,
        settings=settings.to_dict(),
        level=float(settings.level),
        randomness=randomness,
        warnings=list(found),
        config=config,
        boundary_asr=boundary_asr,
    )
