"""The passive checklist: sanity checks that an honest robustness evaluation passes.

Carlini et al. (2019, "On Evaluating Adversarial Robustness") and Athalye et al. (2018,
"Obfuscated Gradients Give a False Sense of Security", Sec. 3.1) list behaviours that betray a
masked gradient or an attack that has not converged. :func:`run_checks` runs them on the *same*
images, each as a comparison between evaluations, and reports each as ``pass``, ``flag`` or
``n/a`` (with the reason) together with its numbers:

==  ===========================  ==================================================================
 #  code                         flags when
==  ===========================  ==================================================================
 1  iterative-beats-single-step  FGSM leaves fewer images robust than PGD (Carlini Sec. 5.2)
 2  white-box-beats-black-box    Square breaks images no white-box attack broke (Carlini Sec. 5.4)
 3  accuracy-falls-with-eps      accuracy at the eps where any image can become any other stays
                                 above chance, or rises with eps (Carlini Sec. 5.2, 5.3)
 4  attack-converged             more steps, restarts or APGD lower PGD's figure (Carlini Sec. 4.8,
                                 4.9)
 5  eot-converged                the last doubling of EOT draws still lowers the figure
                                 (randomized models; Carlini Sec. 4.6, Athalye et al. 2018 EOT)
 6  bpda-vs-plain                the other gradient (BPDA vs plain) is stronger (models with BPDA
                                 layers; Athalye et al. 2018 BPDA, Carlini Sec. 4.7)
 7  gradient-health              input gradients at the clean points are zero, non-finite or
                                 exploding too often (Athalye et al. 2018, Sec. 3)
 8  white-box-beats-transfer     a transfer attack breaks images no white-box attack broke
                                 (Carlini Sec. 4.5)
 9  draw-disagreement            measured on randomized models: how often two draws disagree;
                                 flags when the evaluation under audit took no expectation (Gao et
                                 al. 2022)
10  warning:<code>               one item per sanity warning (:mod:`robustlab.attacks.checks`) seen
                                 on any evaluation the audit ran or on the evaluation under audit
==  ===========================  ==================================================================

Every attack runs through :func:`robustlab.evaluate.run_battery` (a one-attack battery), so the
library's one verdict rule judges it (docs/ARCHITECTURE.md, "The verdict rule"): on a randomized
model each image's figure is the probability that a draw classifies the attack's point correctly,
estimated on fresh draws. Every result is kept in :attr:`Checklist.results` under its label, so a
caller can take the per-image worst case over all of them (those at the audited threat model).

**Tolerance.** Checks compare robust accuracies (fractions of the images) and flag a difference
larger than :attr:`CheckSettings.tolerance`, an absolute 0.05 by default (5 points; our choice:
the papers name no number; it is one image in 20, so on fewer than 20 images a single image
decides). On a randomized model every accuracy is a mean of per-image probabilities estimated on
``k`` draws, so a difference flags only beyond the tolerance plus two standard errors of that
sampling noise (``sqrt(sum p (1 - p) / k) / n`` per accuracy).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..attacks import (
    APGD,
    EOT,
    FGSM,
    PGD,
    Attack,
    GradientEstimator,
    RunContext,
    Square,
    create_attack,
    logits_of,
)
from ..attacks.checks import GRADIENT_FRACTION, EvalWarning
from ..attacks.model import model_fn
from ..attacks.verdict import VERDICT_DRAWS
from ..core.bpda import BPDA_MODES, BPDAMode, bpda_layers
from ..core.checks import check_images, check_int, check_labels
from ..core.errors import InputError
from ..core.randomness import is_frozen, seed_stochastic, stochastic_layers
from ..core.types import ThreatModel
from ..evaluate import (
    Battery,
    EvalResult,
    derive_seed,
    describe_attack,
    run_battery,
)
from .checklist import (
    ATHALYE,
    CARLINI,
    CHECK_CODES,
    GAO,
    TOLERANCE,
    Check,
    Checklist,
    CheckSettings,
)
from .measures import disagreement, gradient_health, max_eps, pct, pts, sampling_noise, worst_of

__all__ = [
    "CHECK_CODES",
    "TOLERANCE",
    "Check",
    "CheckSettings",
    "Checklist",
    "disagreement",
    "gradient_health",
    "max_eps",
    "run_checks",
    "worst_of",
]

logger = logging.getLogger(__name__)


class _Recorded(Attack):
    """Runs ``attack`` and keeps the points it returns (to measure disagreement there)."""

    name = "recorded"

    def __init__(self, attack: Attack) -> None:
        super().__init__(attack.threat)
        self.attack = attack
        self.points: list[torch.Tensor] = []

    @property
    def expects_randomness(self) -> bool:
        return self.attack.expects_randomness

    def config(self) -> dict[str, Any]:
        return describe_attack(self.attack)

    def _run(self, ctx: RunContext) -> torch.Tensor:
        points = self.attack.perturb(ctx)
        self.points.append(points.detach().clone())
        return points


class _Runs:
    """The evaluations of one checklist, run through :func:`run_battery` and kept by label."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, seed: int,
                 draws: int, bpda: BPDAMode | None, batch_size: int, say: Callable[[str], None]) -> None:
        self.model, self.x, self.y, self.threat = model, x, y, threat
        self.seed, self.draws, self.bpda, self.batch_size, self.say = seed, draws, bpda, batch_size, say
        self.results: dict[str, EvalResult] = {}
        self.diagnostic: dict[str, set[str]] = {}
        """Label -> warning codes that the run provokes on purpose (not the evaluation's fault)."""

    def run(self, label: str, attack: Attack, *, bpda: BPDAMode | None | str = "default",
            accepted: Sequence[str] = ()) -> EvalResult:
        self.say(f"checklist: {label}")
        mode = self.bpda if bpda == "default" else bpda
        result = run_battery(self.model, (self.x, self.y), Battery([attack], name=label, labels=[label]),
                             seed=derive_seed(self.seed, "audit-checks", label, bits=31), draws=self.draws,
                             bpda=mode, batch_size=self.batch_size)  # type: ignore[arg-type]
        self.results[label] = result
        if accepted:
            self.diagnostic[label] = set(accepted)
        return result


def _acc(result: EvalResult) -> float:
    return float(result.robust_acc)


def _p(result: EvalResult) -> torch.Tensor:
    return result.probabilities()["robust"][0].double()


class _Checker:
    """Runs the evaluations and builds the checks; one object per :func:`run_checks` call."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                 settings: CheckSettings, battery_result: EvalResult | None, surrogate: nn.Module | None,
                 seed: int, draws: int, bpda: BPDAMode | None, batch_size: int,
                 say: Callable[[str], None]) -> None:
        self.model, self.x, self.y, self.threat, self.s = model, x, y, threat, settings
        self.battery_result, self.surrogate, self.seed, self.draws, self.bpda = (
            battery_result, surrogate, seed, draws, bpda)
        self.runs = _Runs(model, x, y, threat, seed, draws, bpda, batch_size, say)
        self.randomized = model_fn(model, x).randomness in ("protocol", "detected")
        self.recorder: _Recorded | None = None
        self.curves: dict[str, list[tuple[float, float]]] = {}
        self.white_box: list[str] = []

    # -- helpers --------------------------------------------------------------------------------
    def grad(self, n: int | None = None) -> GradientEstimator | None:
        """EOT over ``n`` (default ``attack_eot``) draws on a randomized model, else plain."""
        return EOT(self.s.attack_eot if n is None else n) if self.randomized else None

    def threshold(self, *ps: torch.Tensor) -> float:
        """The tolerance, plus two standard errors of a difference of the accuracies ``ps`` on a
        randomized model."""
        if not self.randomized:
            return self.s.tolerance
        return self.s.tolerance + 2 * math.sqrt(sum(sampling_noise(p, self.draws) ** 2 for p in ps))

    @property
    def cheap(self) -> str:
        return f"pgd-{self.s.pgd_steps[0]}"

    def pgd(self, steps: int, restarts: int = 1, threat: ThreatModel | None = None,
            grad: GradientEstimator | None = None) -> PGD:
        return PGD(threat or self.threat, steps, restarts=restarts, grad=grad if grad is not None else self.grad())

    def white(self, label: str, attack: Attack, **kw: Any) -> EvalResult:
        result = self.runs.run(label, attack, **kw)
        self.white_box.append(label)
        return result

    def white_worst(self) -> torch.Tensor:
        return worst_of([self.runs.results[k] for k in self.white_box])

    # -- the evaluations ------------------------------------------------------------------------
    def evaluate(self) -> None:
        s = self.s
        cheap = self.pgd(s.pgd_steps[0])
        self.recorder = _Recorded(cheap)
        first = self.white(self.cheap, self.recorder)
        if not self.randomized and first.randomness != "none" and first.config.get("stochastic"):
            # random only near the decision boundary: everything with EOT from here on
            self.randomized = True
            self.runs.results.pop(self.cheap)
            self.white_box.remove(self.cheap)
            self.recorder = _Recorded(self.pgd(s.pgd_steps[0]))
            self.white(self.cheap, self.recorder)
        self.white("fgsm", FGSM(self.threat, grad=self.grad()))
        for steps in s.pgd_steps[1:]:
            self.white(self.budget_label(steps), self.pgd(steps, s.restarts))
        self.white(f"apgd-ce-{s.apgd_steps}",
                   APGD(self.threat, s.apgd_steps, restarts=s.restarts, loss="ce", grad=self.grad()))
        if self.randomized:
            for n in s.eot_draws:
                if n == s.attack_eot:
                    continue
                single: tuple[str, ...] = ("randomized-without-eot",) if n == 1 else ()
                self.white(f"{self.cheap} eot-{n}", self.pgd(s.pgd_steps[0], grad=EOT(n)), accepted=single)
        if bpda_layers(self.model):
            other = self.other_bpda()
            label = f"{self.cheap} plain" if other is None else f"{self.cheap} bpda-{other}"
            masked: tuple[str, ...] = ("zero-gradients", "nonfinite-gradients") if other is None else ()
            self.white(label, self.pgd(s.pgd_steps[0]), bpda=other, accepted=masked)
        self.runs.run("square", Square(self.threat, s.square_queries,
                                       eot=s.square_eot if self.randomized else 1))
        if self.surrogate is not None and s.transfer:
            surrogate_random = model_fn(self.surrogate, self.x).randomness in ("protocol", "detected")
            inner = PGD(self.threat, s.pgd_steps[0],
                        grad=EOT(s.attack_eot) if surrogate_random else None)
            self.runs.run("transfer", create_attack("transfer", self.threat, surrogate=self.surrogate,
                                                    attack=inner))
        self.eps_curve()

    def budget_label(self, steps: int) -> str:
        return f"pgd-{steps}" + (f"x{self.s.restarts}" if self.s.restarts > 1 else "")

    def other_bpda(self) -> BPDAMode | None:
        """The gradient check 6 compares against: BPDA when the evaluation uses plain
        gradients (``identity`` on layer-scope BPDA layers, else ``bypass`` on blocks), plain
        gradients when it uses BPDA."""
        if self.bpda is not None:
            return None
        return "identity" if any(m.bpda_scope == "layer" for m in bpda_layers(self.model)) else "bypass"

    def eps_curve(self) -> None:
        top = max_eps(self.threat, self.x)
        radii = sorted({min(m * self.threat.eps, top) for m in self.s.eps_multiples} | {top})
        cheap = self.runs.results[self.cheap]
        points = [(0.0, float(cheap.clean_acc))]
        for eps in radii:
            if eps <= 0:
                continue
            if abs(eps - self.threat.eps) <= 1e-12:
                points.append((eps, _acc(cheap)))
                continue
            threat = ThreatModel(self.threat.norm, eps)
            result = self.runs.run(f"{self.cheap} eps={eps:.6g}", self.pgd(self.s.pgd_steps[0], threat=threat))
            points.append((eps, _acc(result)))
        self.curves["eps"] = points

    # -- the checks -----------------------------------------------------------------------------
    def check_single_step(self) -> Check:
        r = self.runs.results
        fgsm, pgd = _acc(r["fgsm"]), _acc(r[self.cheap])
        diff, limit = pgd - fgsm, self.threshold(_p(r["fgsm"]), _p(r[self.cheap]))
        flag = diff > limit
        numbers = {"fgsm": fgsm, self.cheap: pgd, "difference": diff, "threshold": limit}
        if flag:
            text = (f"FGSM leaves {pct(fgsm)} robust but {self.cheap.upper()} leaves {pct(pgd)}: the single-step "
                    f"attack is stronger by {pts(diff)} (threshold {pts(limit)}), a sign of masked gradients or "
                    "an iterative attack that does not follow them")
        else:
            text = (f"FGSM leaves {pct(fgsm)} robust and {self.cheap.upper()} {pct(pgd)}: the iterative attack is "
                    f"at least as strong (threshold {pts(limit)})")
        return Check("iterative-beats-single-step", "iterative attacks beat single-step ones",
                     "flag" if flag else "pass", text, numbers,
                     f"{CARLINI}, Sec. 5.2; {ATHALYE}, Sec. 3.1")

    def gain(self, label: str) -> tuple[float, float, float, int, int]:
        """``(white-box worst case, with label's result added, threshold, images only label
        broke, images white-box broke)`` of a black-box or transfer result."""
        white = self.white_worst()
        both = worst_of([*[self.runs.results[k] for k in self.white_box], self.runs.results[label]])
        acc_white, acc_both = float(white.mean()), float(both.mean())
        only = int(((_p(self.runs.results[label]) < 0.5) & (white >= 0.5)).sum())
        return acc_white, acc_both, self.threshold(white, both), only, int((white < 0.5).sum())

    def check_black_box(self) -> Check:
        acc_white, acc_both, limit, only, _ = self.gain("square")
        gain = acc_white - acc_both
        square = _acc(self.runs.results["square"])
        flag = gain > limit
        queries = f"Square ({self.s.square_queries} queries" + (
            f", margin averaged over {self.s.square_eot} draws)" if self.randomized else ")")
        numbers = {"square": square, "white_box_worst": acc_white, "with_square": acc_both, "gain": gain,
                   "images_only_square_broke": only, "threshold": limit,
                   "white_box": list(self.white_box)}
        if flag:
            text = (f"{queries} lowers the white-box worst case from {pct(acc_white)} to {pct(acc_both)} "
                    f"({pts(gain)} > {pts(limit)}; {only} images only Square broke): the gradient attacks "
                    "miss what a score-based search finds, a sign of masked gradients")
        else:
            text = (f"{queries} leaves {pct(square)} robust and lowers the white-box worst case "
                    f"{pct(acc_white)} by {pts(gain)} (threshold {pts(limit)})")
        return Check("white-box-beats-black-box", "white-box attacks beat the black-box one",
                     "flag" if flag else "pass", text, numbers, f"{CARLINI}, Sec. 5.4 and 4.4; {ATHALYE}, Sec. 3.1")

    def check_eps(self, chance: float) -> Check:
        curve = self.curves["eps"]
        top_eps, top_acc = curve[-1]
        attacked = curve[1:]
        labels = [self.cheap if abs(e - self.threat.eps) <= 1e-12 else f"{self.cheap} eps={e:.6g}"
                  for e, _ in attacked]
        ps = [_p(self.runs.results[k]) for k in labels]
        limit = self.threshold(ps[-1])
        high = top_acc > chance + limit
        rises = [(attacked[i][0], attacked[i + 1][0], attacked[i + 1][1] - attacked[i][1])
                 for i in range(len(attacked) - 1)
                 if attacked[i + 1][1] - attacked[i][1] > self.threshold(ps[i], ps[i + 1])]
        numbers = {"curve": [[e, a] for e, a in curve], "chance": chance, "max_eps": top_eps,
                   "accuracy_at_max_eps": top_acc, "threshold": limit,
                   "rises": [[a, b, d] for a, b, d in rises]}
        where = f"{self.threat.norm} eps {top_eps:.4g}"
        if high:
            text = (f"at {where}, where any image can become any other, {self.cheap.upper()} still leaves "
                    f"{pct(top_acc)} robust, above chance {pct(chance)} + {pts(limit)}: the attack cannot "
                    "follow the model's gradients (or the threat model is not what it seems)")
        elif rises:
            a, b, d = rises[0]
            text = (f"robust accuracy rises by {pts(d)} from eps {a:.4g} to {b:.4g}: a larger budget must "
                    "never help the model, so the attack is not finding what exists")
        else:
            text = (f"robust accuracy falls to {pct(top_acc)} at {where} (chance {pct(chance)}) and never "
                    f"rises with eps by more than the threshold")
        return Check("accuracy-falls-with-eps", "accuracy falls to chance as eps grows",
                     "flag" if high or rises else "pass", text, numbers,
                     f"{CARLINI}, Sec. 5.2 and 5.3; {ATHALYE}, Sec. 3.1")

    def check_budget(self) -> Check:
        r = self.runs.results
        cheap = r[self.cheap]
        more = [self.budget_label(s) for s in self.s.pgd_steps[1:]] + [f"apgd-ce-{self.s.apgd_steps}"]
        accs = {k: _acc(r[k]) for k in more}
        strongest = min(more, key=lambda k: accs[k])
        drop = _acc(cheap) - accs[strongest]
        limit = self.threshold(_p(cheap), _p(r[strongest]))
        flag = drop > limit
        numbers = {self.cheap: _acc(cheap), **accs, "drop": drop, "threshold": limit, "strongest": strongest}
        listing = ", ".join(f"{k.upper()} {pct(v)}" for k, v in accs.items())
        if flag:
            text = (f"{self.cheap.upper()} leaves {pct(_acc(cheap))} robust but {listing}: more budget lowers "
                    f"it by {pts(drop)} (threshold {pts(limit)}), so the cheap evaluation has not converged; "
                    "evaluate with the larger budget (or more)")
        else:
            text = (f"{self.cheap.upper()} leaves {pct(_acc(cheap))} robust and {listing}: more budget lowers "
                    f"it by {pts(max(drop, 0.0))} at most (threshold {pts(limit)})")
        return Check("attack-converged", "more steps, restarts and APGD do not help the defense",
                     "flag" if flag else "pass", text, numbers, f"{CARLINI}, Sec. 4.8 and 4.9")

    def check_eot(self) -> Check:
        source = f"{CARLINI}, Sec. 4.6; {ATHALYE}, EOT (Attacking Randomized Classifiers)"
        title = "the evaluation has converged in its EOT draws"
        if not self.randomized:
            return Check("eot-converged", title, "n/a", "the model is deterministic: there is no randomness to "
                         "take an expectation over", {}, source)
        labels = [self.cheap if n == self.s.attack_eot else f"{self.cheap} eot-{n}" for n in self.s.eot_draws]
        curve = [(float(n), _acc(self.runs.results[k])) for n, k in zip(self.s.eot_draws, labels, strict=True)]
        self.curves["eot"] = curve
        if len(curve) < 2:
            return Check("eot-converged", title, "n/a", "one EOT setting was asked for; the check needs two",
                         {"curve": [[a, b] for a, b in curve]}, source)
        (n1, a1), (n2, a2) = curve[-2], curve[-1]
        drop = a1 - a2
        limit = self.threshold(_p(self.runs.results[labels[-2]]), _p(self.runs.results[labels[-1]]))
        flag = drop > limit
        numbers = {"curve": [[a, b] for a, b in curve], "last_drop": drop, "threshold": limit}
        if flag:
            text = (f"going from {n1:.0f} to {n2:.0f} EOT draws still lowers robust accuracy from {pct(a1)} to "
                    f"{pct(a2)} ({pts(drop)} > {pts(limit)}): the expectation has not converged; attack with "
                    "more draws")
        else:
            text = (f"from {n1:.0f} to {n2:.0f} EOT draws robust accuracy moves from {pct(a1)} to {pct(a2)} "
                    f"(threshold {pts(limit)}): more draws no longer help")
        return Check("eot-converged", title, "flag" if flag else "pass", text, numbers, source)

    def check_bpda(self) -> Check:
        source = f"{ATHALYE}, BPDA (Backward Pass Differentiable Approximation); {CARLINI}, Sec. 4.7"
        title = "the evaluation's gradients are not beaten by the other kind (BPDA vs plain)"
        layers = bpda_layers(self.model)
        if not layers:
            return Check("bpda-vs-plain", title, "n/a", "the model declares no BPDA layer (core.bpda.BPDALayer) "
                         "with a surrogate backward", {}, source)
        other = self.other_bpda()
        alt = f"{self.cheap} plain" if other is None else f"{self.cheap} bpda-{other}"
        mine = f"{self.cheap} ({'bpda-' + self.bpda if self.bpda else 'plain gradients'})"
        r = self.runs.results
        a_mine, a_alt = _acc(r[self.cheap]), _acc(r[alt])
        drop = a_mine - a_alt
        limit = self.threshold(_p(r[self.cheap]), _p(r[alt]))
        flag = drop > limit
        numbers = {"evaluation_gradients": self.bpda or "plain", "other": other or "plain", self.cheap: a_mine,
                   alt: a_alt, "difference": drop, "threshold": limit, "bpda_layers": len(layers)}
        if flag and other is not None:
            text = (f"with BPDA ({other}) {self.cheap.upper()} leaves {pct(a_alt)} robust, with plain gradients "
                    f"{pct(a_mine)} ({pts(drop)} > {pts(limit)}): the {len(layers)} non-differentiable "
                    "layer(s) mask the plain gradients; evaluate with bpda=" + repr(other))
        elif flag:
            text = (f"plain gradients leave {pct(a_alt)} robust, BPDA ({self.bpda}) {pct(a_mine)} "
                    f"({pts(drop)} > {pts(limit)}): the chosen surrogate is weaker than the plain gradient")
        else:
            text = (f"{mine} leaves {pct(a_mine)} robust, {alt} {pct(a_alt)}: the other gradient is not "
                    f"stronger by more than {pts(limit)}")
        return Check("bpda-vs-plain", title, "flag" if flag else "pass", text, numbers, source)

    def check_gradients(self) -> Check:
        draws = self.s.gradient_draws if self.randomized else 1
        self._seed_layers("gradients")
        h = gradient_health(self.model, self.x, self.y, draws=draws, ratio=self.s.exploding_ratio, bpda=self.bpda)
        bad = []
        if h["zero"] > GRADIENT_FRACTION:
            bad.append(f"{pct(h['zero'])} all zero")
        if h["nonfinite"] > GRADIENT_FRACTION:
            bad.append(f"{pct(h['nonfinite'])} non-finite")
        if h["exploding"] > self.s.exploding_fraction:
            bad.append(f"{pct(h['exploding'])} exploding")
        numbers = {**h, "draws": draws, "zero_limit": GRADIENT_FRACTION, "nonfinite_limit": GRADIENT_FRACTION,
                   "exploding_limit": self.s.exploding_fraction, "exploding_ratio": self.s.exploding_ratio,
                   "bpda": self.bpda}
        where = f"{h['evaluations']} per-image cross-entropy gradients at the clean images" + (
            f" ({draws} draws each)" if draws > 1 else "")
        if bad:
            text = (f"of {where}, {', '.join(bad)} (limits {pct(GRADIENT_FRACTION)} zero or non-finite, "
                    f"{pct(self.s.exploding_fraction)} above {self.s.exploding_ratio:g} times the median): "
                    "gradient attacks cannot follow them; use BPDA, a smooth surrogate or a black-box attack")
        else:
            text = (f"of {where}, {pct(h['zero'])} are zero, {pct(h['nonfinite'])} non-finite and "
                    f"{pct(h['exploding'])} exploding: within the limits")
        return Check("gradient-health", "input gradients are neither zero, non-finite nor exploding",
                     "flag" if bad else "pass", text, numbers, f"{ATHALYE}, Sec. 3")

    def check_transfer(self) -> Check:
        title = "transfer attacks do not beat white-box ones"
        source = f"{CARLINI}, Sec. 4.5; {ATHALYE}, Sec. 3.1"
        if "transfer" not in self.runs.results:
            why = ("no surrogate model was given (pass surrogate=, e.g. the undefended model or the defense with "
                   "its randomness fixed)" if self.surrogate is None else "the transfer check was switched off")
            return Check("white-box-beats-transfer", title, "n/a", why, {}, source)
        acc_white, acc_both, limit, only, _ = self.gain("transfer")
        gain = acc_white - acc_both
        flag = gain > limit
        numbers = {"transfer": _acc(self.runs.results["transfer"]), "white_box_worst": acc_white,
                   "with_transfer": acc_both, "gain": gain, "images_only_transfer_broke": only, "threshold": limit}
        if flag:
            text = (f"examples crafted on the surrogate lower the white-box worst case from {pct(acc_white)} to "
                    f"{pct(acc_both)} ({pts(gain)} > {pts(limit)}; {only} images only transfer broke): the "
                    "model's own gradients are worse guides than another model's")
        else:
            text = (f"the transfer attack leaves {pct(_acc(self.runs.results['transfer']))} robust and lowers the "
                    f"white-box worst case {pct(acc_white)} by {pts(gain)} (threshold {pts(limit)})")
        return Check("white-box-beats-transfer", title, "flag" if flag else "pass", text, numbers, source)

    def check_disagreement(self) -> Check:
        title = "draws of a randomized model agree, or the evaluation takes their expectation"
        source = f"{GAO}; {CARLINI}, Sec. 4.6"
        if not self.randomized:
            return Check("draw-disagreement", title, "n/a", "the model is deterministic: every draw agrees", {},
                         source)
        draws = self.s.disagreement_draws
        self._seed_layers("disagreement-clean")
        clean = disagreement(self.model, self.x, draws)
        points = self.recorder.points if self.recorder is not None else []
        attacked = torch.cat(points) if points else self.x[:0]
        self._seed_layers("disagreement-points")
        at_points = disagreement(self.model, attacked, draws) if attacked.shape[0] else torch.zeros(0)
        numbers: dict[str, Any] = {"draws": draws, "clean": float(clean.mean()),
                                   "attack_points": float(at_points.mean()) if at_points.numel() else None,
                                   "attacked_images": int(attacked.shape[0])}
        measured = (f"two of {draws} draws disagree on {pct(float(clean.mean()))} of (image, pair) at the clean "
                    "images" + (f" and on {pct(float(at_points.mean()))} at {self.cheap.upper()}'s points "
                                f"({attacked.shape[0]} images)" if at_points.numel() else ""))
        under = self.battery_result
        if under is None:
            return Check("draw-disagreement", title, "pass",
                         measured + "; no evaluation under audit was given to check for an expectation",
                         numbers, source)
        missing = any(w.code == "randomized-without-eot" for w in under.warnings)
        numbers["evaluation_takes_expectation"] = not missing
        if missing:
            return Check("draw-disagreement", title, "flag",
                         measured + f"; yet the evaluation under audit ({under.battery or 'battery'}) takes no "
                         "expectation over the draws, so its attacks follow single random draws", numbers, source)
        return Check("draw-disagreement", title, "pass",
                     measured + f"; the evaluation under audit ({under.battery or 'battery'}) takes the "
                     "expectation over draws", numbers, source)

    def check_warnings(self) -> list[Check]:
        seen: dict[str, tuple[list[str], list[EvalWarning]]] = {}
        sources: list[tuple[str, EvalResult]] = list(self.runs.results.items())
        if self.battery_result is not None:
            sources.insert(0, ("evaluation under audit", self.battery_result))
        for label, result in sources:
            skip = self.runs.diagnostic.get(label, set())
            for w in result.warnings:
                if w.code in skip:
                    continue
                labels, found = seen.setdefault(w.code, ([], []))
                if label not in labels:
                    labels.append(label)
                if all(f.message != w.message for f in found):
                    found.append(w)
        out = []
        for code, (labels, found) in seen.items():
            more = f" (and {len(found) - 1} similar)" if len(found) > 1 else ""
            out.append(Check(f"warning:{code}", f"no '{code}' sanity warning", "flag",
                             f"{found[0].message}{more}; seen on {len(labels)} evaluation(s): {', '.join(labels)}",
                             {"evaluations": labels, "messages": [w.message for w in found]},
                             "robustlab.attacks.checks (AutoAttack's checks, Croce & Hein 2020)"))
        return out

    def _seed_layers(self, what: str) -> None:
        if stochastic_layers(self.model) and not is_frozen(self.model):
            seed_stochastic(self.model, derive_seed(self.seed, "audit-checks", what, bits=40))


def run_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: ThreatModel,
    settings: CheckSettings | None = None,
    battery_result: EvalResult | None = None,
    surrogate: nn.Module | None = None,
    seed: int = 0,
    draws: int = VERDICT_DRAWS,
    bpda: BPDAMode | None = None,
    progress: Callable[[str], None] | None = None,
    batch_size: int = 256,
) -> Checklist:
    """Run the passive checklist (see the module docstring) on the images ``x``, ``y``.

    Args:
        model: the classifier, in eval mode.
        x: images, NCHW floats in [0, 1].
        y: labels.
        threat: the threat model of the evaluation under audit.
        settings: :class:`CheckSettings` (default the full profile).
        battery_result: the evaluation under audit, run on these images: its sanity warnings
            become checklist items, and check 9 flags when it took no expectation over a
            randomized model's draws.
        surrogate: a model to craft transfer attacks on (check 8): the undefended twin, or the
            defense with its randomness fixed; ``None``: check 8 is n/a.
        seed: the root of every generator (each evaluation's seed is derived from it and its label).
        draws: the verdict's fresh draws per estimate on a randomized model.
        bpda: the gradient the evaluation under audit uses on BPDA layers (``None``: plain
            gradients); every gradient attack of the checklist uses it, and check 6 compares it
            with the other kind.
        progress: called with one line before each evaluation.
        batch_size: images per batch of every evaluation.

    Returns:
        The :class:`Checklist`.

    Raises:
        InputError: for images outside [0, 1], labels that do not match, a non-module model or
            surrogate, a model in training mode, an unknown BPDA mode, or a ``battery_result`` on
            another number of images.
    """
    settings = CheckSettings() if settings is None else settings
    if not isinstance(settings, CheckSettings):
        raise InputError(f"settings must be a CheckSettings, got {type(settings).__name__}; "
                         "use CheckSettings() or CheckSettings.quick()")
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(threat, ThreatModel):
        raise InputError(f"threat must be a core.ThreatModel, got {type(threat).__name__}; "
                         "e.g. ThreatModel('linf', 8/255)")
    if model.training:
        raise InputError("run_checks got a model in training mode (batch-norm statistics would change, dropout "
                         "would be active); call model.eval() first")
    check_images(x, "x")
    check_labels(y, x.shape[0])
    if x.shape[0] == 0:
        raise InputError("run_checks needs at least one image")
    check_int(seed, "seed", 0)
    check_int(draws, "draws", 1)
    check_int(batch_size, "batch_size", 1)
    if bpda is not None and bpda not in BPDA_MODES:
        raise InputError(f"unknown BPDA mode {bpda!r}; use 'identity', 'smooth', 'bypass' or None")
    if surrogate is not None and not isinstance(surrogate, nn.Module):
        raise InputError(f"surrogate must be a torch.nn.Module or None, got {type(surrogate).__name__}")
    if battery_result is not None and battery_result.n != x.shape[0]:
        raise InputError(f"battery_result covers {battery_result.n} images but {x.shape[0]} were given; pass "
                         "the result of the evaluation under audit on these very images")
    say = progress or (lambda _: None)
    start = time.perf_counter()
    checker = _Checker(model, x, y, threat, settings, battery_result, surrogate, seed, draws, bpda,
                       batch_size, say)
    checker.evaluate()
    with torch.no_grad():
        classes = int(logits_of(model(x[:1])).shape[1])
    checks = [
        checker.check_single_step(),
        checker.check_black_box(),
        checker.check_eps(1.0 / classes),
        checker.check_budget(),
        checker.check_eot(),
        checker.check_bpda(),
        checker.check_gradients(),
        checker.check_transfer(),
        checker.check_disagreement(),
        *checker.check_warnings(),
    ]
    for c in checks:
        if c.status == "flag":
            logger.info("checklist flag %s: %s", c.code, c.evidence)
    return Checklist(checks=checks, results=dict(checker.runs.results), curves=dict(checker.curves),
                     randomized=checker.randomized, seconds=time.perf_counter() - start,
                     settings={f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)})
