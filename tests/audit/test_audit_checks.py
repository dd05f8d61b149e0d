"""The passive checklist (robustlab.audit.checks) against toys whose truth is known in closed form.

Each defect toy (audit_toys) must be flagged, for the reason it has, on every seed; a plain
PGD-adversarially-trained CNN must raise no flag on any seed. The truths are computed from the toys'
definitions, never from the checklist's output: the exact worst case of a linear score over the
L-inf ball within [0, 1] (separable per pixel), the arcsine law of a uniformly random phase, the
normal law of Gaussian input noise, the pair-disagreement ``2 p (1 - p)`` of a two-class coin, and
the gradients of the toys written out by hand.

The per-image worst case over every evaluation the checklist ran at the audited eps
(:func:`robustlab.audit.checks.worst_of`) must end within ``WORST_TOL`` = 0.05 of the truth on a
deterministic toy (where no attack can go below it: ``worst >= truth`` exactly), and within
``RANDOM_TOL`` = 0.06 on a randomized one (each image's figure is a fresh estimate on 16 draws: at
32 images the mean's sampling error is at most 0.125 / sqrt(32) = 0.022).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from audit_toys import (
    BLOCK,
    EPS,
    DigitsCNN,
    GatedSawtooth,
    LinearScore,
    NoisyLinear,
    PhaseNoise,
    RoundedBPDA,
    RoundedInput,
    SoftmaxOutput,
    SqrtAtZero,
    StepScore,
    block_weights,
    clean_labels,
    near,
    poised,
    toy_images,
    train_pgd_at,
    truth,
)
from torch import nn

from robustlab.audit.checks import (
    CHECK_CODES,
    Check,
    Checklist,
    CheckSettings,
    disagreement,
    gradient_health,
    run_checks,
    worst_of,
)
from robustlab.core import InputError, ThreatModel
from robustlab.core.randomness import seeded
from robustlab.data import as_tensors, load_dataset
from robustlab.evaluate import EvalResult, battery_threat, run_battery

THREAT = ThreatModel("linf", EPS)
QUICK = CheckSettings.quick()
WORST_TOL = 0.05
RANDOM_TOL = 0.06
SEEDS = [0, 1, 2, 3, 4]


def at_threat(checklist: Checklist) -> list[EvalResult]:
    """The checklist's evaluations at the audited eps (not the eps curve's other radii)."""
    out = []
    for r in checklist.results.values():
        t = battery_threat(r.config)
        assert t is not None
        if abs(float(t["eps"]) - EPS) < 1e-12:
            out.append(r)
    return out


# --- the toys ---------------------------------------------------------------------------------------
@dataclass
class Case:
    """A toy on its images, the flags it must raise, and how to run the checklist on it."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    must_flag: set[str]
    only: bool = False  # the flags must be exactly these (large margins everywhere else)
    random: bool = False
    battery: str | None = None  # the evaluation under audit, run on the toy
    kwargs: dict = field(default_factory=dict)


def step_case(seed: int) -> Case:
    # one pixel decides; images put it within 0.15 of the threshold, so about 2/3 can be flipped
    model = StepScore(block_weights(1.0, (5,)), -0.5)
    x = near(toy_images(32, 100 + seed), 5, 0.5, 0.15, 200 + seed)
    return Case(model, x, clean_labels(model, x),
                {"gradient-health", "warning:zero-gradients", "white-box-beats-black-box"})


def rounded_case(seed: int) -> Case:
    model = RoundedInput(block_weights(), -1.9, levels=5)
    x = toy_images(32, 100 + seed)
    return Case(model, x, clean_labels(model, x),
                {"gradient-health", "warning:zero-gradients", "white-box-beats-black-box"})


def softmax_case(seed: int) -> Case:
    model = SoftmaxOutput(torch.randn(16, generator=torch.Generator().manual_seed(7)), 0.0)
    x = toy_images(32, 100 + seed)
    return Case(model, x, clean_labels(model, x), {"warning:probability-outputs"}, only=True)


def phase_case(seed: int) -> Case:
    # 3 in 4 images sit 0.32 from the boundary (a corner every draw gets wrong is 0.4 away), the
    # others 0.8 (safe); one draw's gradient has a random sign (amp * freq = 4)
    model = PhaseNoise(block_weights(), -2.0, amp=0.05, freq=80.0)
    x = poised(toy_images(64, 100 + seed), (0.08, 0.08, 0.08, 0.2), 0.01, 300 + seed)
    return Case(model, x, clean_labels(model, x), {"eot-converged"}, random=True)


def noise_case(seed: int) -> Case:
    # the evaluation under audit takes no expectation: AutoAttack standard on the seeded test, the
    # cheaper PGD-20 of the 'quick' battery on the seeds
    model = NoisyLinear(block_weights(), -2.0, std=0.1, classes=4)
    x = toy_images(32, 100 + seed)
    return Case(model, x, clean_labels(model, x), {"draw-disagreement", "warning:randomized-without-eot"},
                random=True, battery="quick")


TOYS: dict[str, Callable[[int], Case]] = {
    "step": step_case,
    "rounded": rounded_case,
    "softmax": softmax_case,
    "phase-noise": phase_case,
    "noise-without-eot": noise_case,
}
_RUNS: dict[tuple[str, int, str | None], tuple[Case, Checklist]] = {}


def checked(name: str, seed: int, battery: str | None = None) -> tuple[Case, Checklist]:
    """The toy ``name`` on seed ``seed`` and its (cached) quick checklist."""
    key = (name, seed, battery)
    if key not in _RUNS:
        case = TOYS[name](seed)
        case.model.eval()
        under = None
        if case.battery is not None:
            under = run_battery(case.model, (case.x, case.y), battery or case.battery, threat=THREAT, seed=seed)
        _RUNS[key] = case, run_checks(case.model, case.x, case.y, threat=THREAT, settings=QUICK, seed=seed,
                                      battery_result=under, **case.kwargs)
    return _RUNS[key]


def assert_flagged_and_worst(case: Case, checklist: Checklist) -> None:
    flags = {c.code for c in checklist.flags}
    assert case.must_flag <= flags, f"missing {case.must_flag - flags}; flagged {flags}"
    if case.only:
        assert flags == case.must_flag
    worst = float(worst_of(at_threat(checklist)).mean())
    true = float(truth(case.model, case.x, case.y).mean())
    if case.random:
        assert abs(worst - true) <= RANDOM_TOL, (worst, true)
    else:
        assert true - 1e-9 <= worst <= true + WORST_TOL, (worst, true)


@pytest.mark.parametrize("name", list(TOYS))
def test_each_toy_is_flagged_and_its_worst_case_reaches_the_truth(name: str) -> None:
    battery = "standard" if name == "noise-without-eot" else None
    case, checklist = checked(name, 0, battery)
    assert_flagged_and_worst(case, checklist)
    # every check 1-9 is reported once, in order, with a reason when it does not apply
    assert [c.code for c in checklist.checks[:9]] == list(CHECK_CODES)
    assert all(c.evidence and c.source for c in checklist.checks)
    assert checklist.randomized == case.random


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(TOYS))
def test_each_toy_is_flagged_on_every_seed(name: str, seed: int) -> None:
    case, checklist = checked(name, seed)
    assert_flagged_and_worst(case, checklist)


def test_the_standard_battery_without_eot_is_the_flagged_evaluation() -> None:
    case, checklist = checked("noise-without-eot", 0, "standard")
    item = checklist.check("warning:randomized-without-eot")
    assert "evaluation under audit" in item.numbers["evaluations"]
    # the checklist's own single-draw point of the EOT curve is a diagnostic, not the evaluation's fault
    assert all("eot-1" not in label for label in item.numbers["evaluations"])
    assert checklist.check("draw-disagreement").numbers["evaluation_takes_expectation"] is False


def test_a_randomized_model_evaluated_with_eot_raises_no_flag() -> None:
    model = NoisyLinear(block_weights(), -2.0, std=0.1, classes=4).eval()
    x = toy_images(32, 42)
    y = clean_labels(model, x)
    under = run_battery(model, (x, y), "rand", threat=THREAT, battery_options={"eot": 8}, seed=0)
    checklist = run_checks(model, x, y, threat=THREAT, settings=QUICK, seed=0, battery_result=under)
    assert checklist.flags == []
    assert checklist.check("draw-disagreement").status == "pass"
    assert abs(float(worst_of(at_threat(checklist)).mean()) - float(truth(model, x, y).mean())) <= RANDOM_TOL


def test_the_eot_curve_and_the_eps_curve_are_returned_as_data() -> None:
    case, checklist = checked("phase-noise", 0)
    assert [n for n, _ in checklist.curves["eot"]] == [float(n) for n in QUICK.eot_draws]
    eps = [e for e, _ in checklist.curves["eps"]]
    assert eps[0] == 0.0 and eps[-1] == 1.0 and eps == sorted(eps)
    assert math.isclose(checklist.curves["eps"][0][1], checklist.results["pgd-10"].clean_acc)
    # the eps curve's radii other than the audited one are kept, and say their radius
    radii = {float(battery_threat(r.config)["eps"]) for r in checklist.results.values()}
    assert radii == {e for e in eps if e > 0}


# --- BPDA and transfer ------------------------------------------------------------------------------
def test_plain_gradients_through_a_declared_bpda_layer_are_flagged() -> None:
    model = RoundedBPDA(block_weights(), -1.9).eval()
    x = toy_images(32, 11)
    y = clean_labels(model, x)
    true = float(truth(model, x, y).mean())
    plain = run_checks(model, x, y, threat=THREAT, settings=QUICK, seed=0)
    assert plain.check("bpda-vs-plain").status == "flag"
    assert plain.check("gradient-health").status == "flag"
    with_bpda = run_checks(model, x, y, threat=THREAT, settings=QUICK, seed=0, bpda="identity")
    assert with_bpda.check("bpda-vs-plain").status == "pass"
    assert with_bpda.check("gradient-health").status == "pass"
    # the plain-gradient comparison run's zero gradients are the diagnostic's, not the evaluation's
    assert "warning:zero-gradients" not in {c.code for c in with_bpda.flags}
    for checklist in (plain, with_bpda):
        assert true - 1e-9 <= float(worst_of(at_threat(checklist)).mean()) <= true + WORST_TOL


def test_transfer_from_a_differentiable_twin_beats_a_masked_model() -> None:
    case = step_case(0)
    twin = LinearScore(case.model.w, case.model.b).eval()
    checklist = run_checks(case.model.eval(), case.x, case.y, threat=THREAT, settings=QUICK, seed=0, surrogate=twin)
    check = checklist.check("white-box-beats-transfer")
    assert check.status == "flag"
    # the twin's exact worst case carries over: transfer alone reaches the truth
    assert math.isclose(checklist.results["transfer"].robust_acc, float(truth(case.model, case.x, case.y).mean()))
    off = run_checks(case.model, case.x, case.y, threat=THREAT, settings=CheckSettings.quick(transfer=False),
                     seed=0, surrogate=twin)
    assert off.check("white-box-beats-transfer").status == "n/a"


# --- the measurements -------------------------------------------------------------------------------
def test_disagreement_of_a_fair_coin_is_one_half_and_of_a_deterministic_model_zero() -> None:
    coin = PhaseNoise(block_weights(), -2.0, amp=0.05, freq=80.0)
    x = toy_images(512, 3)
    x.view(512, -1)[:, list(BLOCK)] = 0.5  # score exactly 0: each draw is class 1 with probability 1/2
    with seeded(0):
        d = disagreement(coin, x, draws=8)
    assert abs(float(d.mean()) - 0.5) < 0.03  # 2 p (1 - p); sd of the mean about 0.006
    assert float(disagreement(StepScore(block_weights(), -2.0), x, draws=4).max()) == 0.0


def test_gradient_health_counts_zero_nonfinite_and_exploding_gradients() -> None:
    x = toy_images(200, 5)
    y = torch.zeros(200, dtype=torch.long)
    w = block_weights()
    assert gradient_health(LinearScore(w, -2.0), x, y) == {
        "evaluations": 200, "zero": 0.0, "nonfinite": 0.0, "exploding": 0.0, "median": pytest.approx(2.0)}
    assert gradient_health(StepScore(w, -2.0), x, y)["zero"] == 1.0
    assert gradient_health(SqrtAtZero(w, -2.0), x, y)["nonfinite"] == 1.0
    gated = GatedSawtooth(w, -2.0).eval()
    health = gradient_health(gated, x, y)
    assert 0 < health["exploding"] == pytest.approx(float(gated.gate(x).mean()))
    checklist = run_checks(gated, x[:32], clean_labels(gated, x[:32]), threat=THREAT, settings=QUICK)
    assert checklist.check("gradient-health").status == ("flag" if gated.gate(x[:32]).any() else "pass")


# --- no false alarm on a plain PGD-AT model ---------------------------------------------------------
@pytest.fixture(scope="module")
def pgd_at() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A CNN PGD-trained at eps 0.1 on the 1438 training digits (~5 s), and 64 test digits."""
    x, y = as_tensors(load_dataset("digits", "train"), 1438)
    with seeded(0):
        model = train_pgd_at(DigitsCNN(), x, y, eps=EPS, epochs=12)
    for p in model.parameters():
        p.requires_grad_(False)
    xt, yt = as_tensors(load_dataset("digits", "test"), 64)
    return model, xt, yt


@pytest.mark.parametrize("seed", SEEDS)
def test_a_plain_pgd_at_model_raises_no_flag(pgd_at: tuple[nn.Module, torch.Tensor, torch.Tensor], seed: int) -> None:
    model, x, y = pgd_at
    checklist = run_checks(model, x, y, threat=THREAT, settings=QUICK, seed=seed)
    assert [c.evidence for c in checklist.flags] == []
    assert not checklist.randomized
    assert {c.code: c.status for c in checklist.checks}["eot-converged"] == "n/a"
    # at L-inf eps 1 any image can become an image the model gives another class: truth 0
    assert checklist.curves["eps"][-1] == (1.0, 0.0)
    # the model is robust at all (else "no flag" would say little)
    assert checklist.results["pgd-10"].robust_acc > 0.5


# --- the data types ---------------------------------------------------------------------------------
def test_checklist_round_trips_through_dicts() -> None:
    _, checklist = checked("step", 0)
    d = checklist.to_dict(results=True)
    back = Checklist.from_dict(d)
    assert [c.to_dict() for c in back.checks] == [c.to_dict() for c in checklist.checks]
    assert back.curves == checklist.curves and back.results == {}
    assert d["flags"] == [c.code for c in checklist.flags]
    assert set(d["results"]) == set(checklist.results)
    assert Check.from_dict(checklist.checks[0].to_dict()) == checklist.checks[0]


def test_settings_profiles_and_bad_input() -> None:
    assert CheckSettings().pgd_steps == (10, 100) and CheckSettings.full() == CheckSettings()
    assert QUICK.eot_draws == (1, 2, 4, 8) and QUICK.profile == "quick"
    with pytest.raises(InputError, match="tolerance must be a probability"):
        CheckSettings(tolerance=2.0)
    with pytest.raises(InputError, match="eot_draws must be strictly ascending"):
        CheckSettings(eot_draws=(4, 2))
    with pytest.raises(InputError, match="pgd_steps must be a non-empty tuple of ints"):
        CheckSettings(pgd_steps=())
    with pytest.raises(InputError, match="a check's status must be"):
        Check.from_dict({"code": "x", "title": "t", "status": "maybe", "evidence": "e"})
    case = step_case(0)
    under = run_battery(case.model.eval(), (case.x[:8], case.y[:8]), "quick", threat=THREAT)
    with pytest.raises(InputError, match="battery_result covers 8 images but 32 were given"):
        run_checks(case.model, case.x, case.y, threat=THREAT, battery_result=under)
    with pytest.raises(InputError, match="model in training mode"):
        run_checks(StepScore(block_weights(), -2.0).train(), case.x, case.y, threat=THREAT)
    with pytest.raises(InputError, match="unknown BPDA mode 'nope'"):
        run_checks(case.model, case.x, case.y, threat=THREAT, bpda="nope")  # type: ignore[arg-type]
