"""The decision-boundary binarization test (robustlab.audit.binarization; Zimmermann et al., 2022).

Truths come from outside the code under test: closed-form worst cases of linear models over the
L-inf ball, textbook Wilson intervals, distances measured on the points, forwards of the models."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toys import NoiseInjection

from robustlab.attacks import EOT, PGD, create_attack
from robustlab.audit.binarization import (
    BinarizationResult,
    BinarizationSettings,
    PaddedLogits,
    binarization_test,
    binarization_verdict,
    binarize_sample,
    wilson_interval,
)
from robustlab.core import InputError, ThreatModel
from robustlab.data import as_tensors, load_dataset
from robustlab.evaluate import Battery, run_battery

EPS = 0.1
LINF = ThreatModel("linf", EPS)
QUICK = BinarizationSettings(inner=49, random_points=20)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """8x8 images with some pixels at 0 and 1, so clipping to [0, 1] matters."""
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    x[:, :, 0, :3] = 0.0
    x[:, :, 7, :3] = 1.0
    return x


def _linear(seed: int = 0, classes: int = 10) -> nn.Sequential:
    """Its head is its only layer, so the features are the pixels and every binarized model is
    linear in the image: the worst case over the ball is known in closed form."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, classes)).eval()


def _weak(threat: ThreatModel = LINF) -> PGD:
    """One PGD step of eps/100 from the clean point: an attack that cannot work."""
    return PGD(threat, 1, step_size=threat.eps / 100, random_start=False)


def _score(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """logit 1 - logit 0 of a readout on flattened pixels, in float64."""
    v = (weight[1] - weight[0]).double()
    return x.flatten(1).double() @ v + float(bias[1] - bias[0])


def _box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(1).double()
    return (flat - eps).clamp(0, 1), (flat + eps).clamp(0, 1)


# ------------------------------------------------------------------ statistics and verdict


def test_wilson_interval_matches_textbook_values() -> None:
    z2 = 1.959963984540054**2
    lo, hi = wilson_interval(8, 16, 0.95)
    assert (round(lo, 3), round(hi, 3)) == (0.280, 0.720)
    assert wilson_interval(16, 16)[0] == pytest.approx(16 / (16 + z2))  # all successes: n / (n + z^2)
    assert wilson_interval(16, 16)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 16)[1] == pytest.approx(z2 / (16 + z2))
    lo, hi = wilson_interval(7.5, 10, 0.9)  # fractional successes (randomized models)
    assert lo < 0.75 < hi


def test_verdict_rule() -> None:
    assert binarization_verdict((0.5, 0.94), 0.95) == "fail"
    assert binarization_verdict((0.5, 0.95), 0.95) == "pass"
    assert binarization_verdict((0.9, 1.0), 0.95) == "pass"
    assert binarization_verdict(None, 0.95) == "inconclusive"


# ------------------------------------------------------------------ the points


def test_points_lie_where_the_construction_says_linf() -> None:
    x = _images(1)
    settings = BinarizationSettings(inner=49, boundary=5, far_off=3, random_points=0)
    p = binarize_sample(_linear(), x, threat=LINF, settings=settings, seed=0)
    assert torch.equal(p.inner[0], x[0])
    for pts in (p.inner, p.boundary, p.far_off):
        assert float(pts.min()) >= 0.0 and float(pts.max()) <= 1.0
    inner = (p.inner - x).flatten(1).abs().amax(dim=1)
    assert len(p.inner) == 50 and float(inner.max()) <= 0.95 * EPS + 1e-7
    boundary = (p.boundary - x).flatten(1).abs().amax(dim=1)
    assert len(p.boundary) == 5
    assert bool((boundary <= EPS).all()) and bool((boundary >= EPS * (1 - 1e-5)).all())
    far = (p.far_off - x).flatten(1).abs().amax(dim=1)
    assert torch.allclose(far, torch.full_like(far, 1.5 * EPS), rtol=1e-5)


def test_corners_are_corners_of_the_clipped_box() -> None:
    x = _images(1)
    settings = BinarizationSettings(inner=9, boundary=4, corners=True, random_points=0)
    p = binarize_sample(_linear(), x, threat=LINF, settings=settings, seed=0)
    lo, hi = _box(x, EPS)
    pts = p.boundary.flatten(1).double()
    at_end = ((pts - lo).abs() < 1e-6) | ((pts - hi).abs() < 1e-6)
    assert bool(at_end.all())
    assert bool(((p.boundary - x).flatten(1).abs().amax(dim=1) <= EPS).all())


def test_points_lie_where_the_construction_says_l2() -> None:
    x = _images(1)
    eps = 0.5
    settings = BinarizationSettings(inner=49, boundary=5, random_points=0)
    p = binarize_sample(_linear(), x, threat=ThreatModel("l2", eps), settings=settings, seed=0)
    inner = (p.inner - x).flatten(1).norm(dim=1)
    assert float(inner.max()) <= 0.95 * eps + 1e-6
    boundary = (p.boundary - x).flatten(1).norm(dim=1)
    assert bool((boundary <= eps).all()) and bool((boundary >= eps * (1 - 1e-5)).all())
    assert float(p.boundary.min()) >= 0.0 and float(p.boundary.max()) <= 1.0


# ------------------------------------------------------------------ a linear model: known truth


def test_linear_model_has_an_adversarial_example_in_closed_form() -> None:
    model = _linear()
    x = _images(6)
    for i in range(len(x)):
        p = binarize_sample(model, x[i : i + 1], threat=LINF, settings=QUICK, seed=0, index=i)
        assert p.testable and p.reason == "" and p.train_accuracy == 1.0 and p.boundary_asr == 1.0
        assert p.weight is not None and p.bias is not None and p.model is not None
        # the binarized model is the readout applied to the pixels (its features)
        with torch.no_grad():
            out = p.model(p.boundary)
        assert torch.allclose(out, p.boundary.flatten(1) @ p.weight.T + p.bias, atol=1e-5)
        # clean point class 0, boundary point class 1, and the exact worst case over the ball
        # (each pixel at its own end of the clipped box) is class 1
        lo, hi = _box(x[i : i + 1], EPS)
        v = (p.weight[1] - p.weight[0]).double()
        worst = torch.where(v > 0, hi, lo)
        assert float(_score(x[i : i + 1], p.weight, p.bias)) < 0
        assert bool((_score(p.boundary, p.weight, p.bias) > 0).all())
        assert float(_score(worst, p.weight, p.bias)) > 0


def test_a_working_attack_passes_on_the_linear_model() -> None:
    x = _images(8)
    for attack in (PGD(LINF, 10), "apgd-ce"):
        r = binarization_test(_linear(), x, None, attack, threat=LINF, settings=QUICK)
        assert r.testable == 8 and r.not_testable == 0
        assert r.test_asr == 1.0 and [s.asr for s in r.samples] == [1.0] * 8
        assert r.verdict == "pass" and r.interval is not None and r.interval[1] == pytest.approx(1.0)
        assert r.boundary_asr == 1.0 and r.required_asr == pytest.approx(0.95)


def test_a_crippled_attack_fails_on_the_linear_model() -> None:
    model = _linear()
    x = _images(8)
    r = binarization_test(model, x, None, _weak(), threat=LINF, settings=QUICK)
    assert r.verdict == "fail" and r.test_asr == 0.0 and r.testable == 8
    assert r.interval is not None and r.interval[1] < 0.95
    # the truth: no step of eps/100 from the clean point reaches class 1, even the best one
    for i in range(len(x)):
        p = binarize_sample(model, x[i : i + 1], threat=LINF, settings=QUICK, seed=0, index=i)
        assert p.weight is not None and p.bias is not None
        lo, hi = _box(x[i : i + 1], EPS / 100)
        v = (p.weight[1] - p.weight[0]).double()
        assert float(_score(torch.where(v > 0, hi, lo), p.weight, p.bias)) < 0


def test_svm_readout_and_l2_threat() -> None:
    x = _images(4)
    settings = BinarizationSettings(inner=49, random_points=20, readout="svm")
    assert binarization_test(_linear(), x, None, PGD(LINF, 10), threat=LINF, settings=settings).verdict == "pass"
    l2 = ThreatModel("l2", 0.5)
    r = binarization_test(_linear(), x, None, PGD(l2, 10), threat=l2, settings=QUICK)
    assert r.testable == 4 and r.test_asr == 1.0 and r.verdict == "pass"


def _span_of(model: nn.Module, points: torch.Tensor) -> float:
    with torch.no_grad():
        out = model(points)
    return float(out.max() - out.min())


def _boundary_margin(p) -> float:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        out = p.model(p.boundary)
    return float((out[:, 1] - out[:, 0]).min())


def test_logit_rescaling_and_closeness() -> None:
    model = _linear()
    x = _images(1)

    def problem(**kw):  # type: ignore[no-untyped-def]
        settings = BinarizationSettings(inner=49, random_points=0, **kw)
        p = binarize_sample(model, x, threat=LINF, settings=settings, seed=0)
        assert p.testable
        return p

    fixed = problem(rescale="fixed", closeness=None)
    points = torch.cat([fixed.inner, fixed.boundary])
    assert _span_of(fixed.model, points) == pytest.approx(1.0, abs=1e-4)
    adaptive = problem(rescale="adaptive", closeness=None)
    assert _span_of(adaptive.model, points) == pytest.approx(_span_of(model, points), rel=1e-4)
    plain = problem(rescale=None, closeness=None)
    close = problem(rescale=None, closeness=0.999)
    # the nearest boundary point keeps 0.1% of its margin, still class 1
    assert _boundary_margin(close) == pytest.approx(0.001 * _boundary_margin(plain), rel=1e-2)
    assert _boundary_margin(close) > 0
    tight = problem(rescale="tight", closeness=None)
    assert _boundary_margin(tight) == pytest.approx(0.001 * _boundary_margin(plain), rel=1e-2)


# ------------------------------------------------------------------ saturated outputs


class Saturated(nn.Module):
    """Returns softmax(1000 * logits): probabilities saturated to exactly 0 and 1 in float32, so
    every input gradient through them vanishes (gradient masking by saturation)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(1000 * self.net(x), dim=1)


def test_gradient_attacks_fail_on_saturated_probabilities() -> None:
    model = Saturated(_linear()).eval()
    x = _images(8)
    r = binarization_test(model, x, None, PGD(LINF, 10), threat=LINF, settings=QUICK)
    assert r.testable == 8
    assert r.verdict == "fail" and r.test_asr == 0.0
    # why: the gradients are exactly zero (the library's own check says so), not a bug of the test
    assert any(w.startswith("[zero-gradients]") for w in r.warnings)
    # and the same attack passes on the unsaturated model
    assert binarization_test(_linear(), x, None, PGD(LINF, 10), threat=LINF, settings=QUICK).verdict == "pass"
    # AutoAttack rand runs APGD-DLR once APGD-CE failed: on the two-class problem too, and fails
    rand = binarization_test(model, x[:2], None, "rand", threat=LINF, settings=QUICK)
    assert rand.verdict == "fail" and rand.config["attacked_classes"] == 3
    assert any(w.startswith("[zero-gradients] apgd-dlr-eot") for w in rand.warnings)


def test_dlr_attacks_run_on_the_two_class_problem() -> None:
    x = _images(4)
    for name, classes in (("apgd-dlr", 3), ("apgd-t", 4)):
        r = binarization_test(_linear(), x, None, name, threat=LINF, settings=QUICK)
        assert r.config["attacked_classes"] == classes
        assert r.verdict == "pass" and r.test_asr == 1.0


def test_padded_logits_keep_softmax_and_make_dlr_a_scaled_margin() -> None:
    net = _linear(classes=2)
    padded = PaddedLogits(net, 2).eval()
    x = _images(5)
    with torch.no_grad():
        z, out = net(x), padded(x)
    assert out.shape == (5, 4) and torch.equal(out[:, :2], z)
    assert torch.allclose(torch.softmax(out, dim=1)[:, :2], torch.softmax(z, dim=1), atol=1e-7)
    c = 100 * (1 + z.abs().amax(dim=1))
    assert torch.allclose(out[:, 2], z.amax(dim=1) - c) and torch.equal(out[:, 2], out[:, 3])
    # DLR's normalizer z_pi1 - z_pi3 is the constant c: the loss is the logit difference over c
    top = out.sort(dim=1, descending=True).values
    assert torch.allclose(top[:, 0] - top[:, 2], c)


# ------------------------------------------------------------------ an adversarially trained CNN


@pytest.fixture(scope="module")
def robust_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN adversarially trained (PGD-3, eps 0.1) on the bundled 8x8 digits: ~3 s."""
    x, y = as_tensors(load_dataset("digits", "train"), 1438)
    xt, yt = as_tensors(load_dataset("digits", "test"), 359)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(3):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            xb, yb = x[perm[i : i + 64]], y[perm[i : i + 64]]
            delta = (torch.rand(xb.shape, generator=g) * 2 - 1) * EPS
            for _ in range(3):
                delta.requires_grad_(True)
                grad, = torch.autograd.grad(F.cross_entropy(net((xb + delta).clamp(0, 1)), yb), delta)
                delta = (delta.detach() + 0.05 * grad.sign()).clamp(-EPS, EPS)
            opt.zero_grad()
            F.cross_entropy(net((xb + delta).clamp(0, 1)), yb).backward()
            opt.step()
    return net.eval(), xt[:8], yt[:8]


def test_adversarially_trained_cnn_both_directions(robust_cnn) -> None:  # type: ignore[no-untyped-def]
    model, x, y = robust_cnn
    # it is a robust model: PGD does not break most of it
    assert run_battery(model, (x, y), Battery([PGD(LINF, 20)])).robust_acc >= 0.5
    good = binarization_test(model, x, y, "apgd-ce", threat=LINF, settings=QUICK)
    assert good.testable == 8
    assert good.verdict == "pass" and good.test_asr is not None and good.test_asr >= 7 / 8
    bad = binarization_test(model, x, y, _weak(), threat=LINF, settings=QUICK)
    assert bad.testable == 8
    assert bad.verdict == "fail" and bad.test_asr is not None and bad.test_asr <= 1 / 8
    assert good.random_asr is not None and 0.0 <= good.random_asr <= 1.0


# ------------------------------------------------------------------ not testable, determinism


def test_not_testable_is_reported_not_dropped() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[1].weight.zero_()  # the features are relu(bias): the same for every image
    x = _images(3)
    r = binarization_test(model, x, torch.tensor([0, 1, 2]), PGD(LINF, 5), threat=LINF, settings=QUICK)
    assert [s.index for s in r.samples] == [0, 1, 2]
    assert r.testable == 0 and r.not_testable == 3
    assert all(not s.testable and s.asr is None and "no linear readout separates" in s.reason for s in r.samples)
    assert all(s.train_accuracy is not None and s.train_accuracy < 1.0 for s in r.samples)
    assert r.verdict == "inconclusive" and r.test_asr is None and r.interval is None


def test_same_seed_same_result_and_roundtrip() -> None:
    x = _images(4)

    def run(seed: int) -> BinarizationResult:
        return binarization_test(_linear(), x, None, PGD(LINF, 3), threat=LINF, settings=QUICK, seed=seed)

    first, second = run(3), run(3)
    a, b = first.to_dict(), second.to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    again = BinarizationResult.from_dict(json.loads(json.dumps(first.to_dict())))
    assert again.to_dict() == first.to_dict()
    p0 = binarize_sample(_linear(), x[:1], threat=LINF, settings=QUICK, seed=0)
    p1 = binarize_sample(_linear(), x[:1], threat=LINF, settings=QUICK, seed=1)
    assert not torch.equal(p0.inner, p1.inner)


def test_randomized_model_reports_probabilities_and_repeats() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(NoiseInjection(0.1), nn.Flatten(), nn.Linear(64, 10)).eval()
    x = _images(8)
    settings = BinarizationSettings(inner=49, random_points=20, feature_draws=32)
    eot = PGD(LINF, 10, grad=EOT(4))
    rng = torch.random.get_rng_state()
    r = binarization_test(model, x, None, eot, threat=LINF, settings=settings, draws=16)
    assert torch.equal(torch.random.get_rng_state(), rng)  # every draw from derived generators
    assert r.randomness == "protocol"
    tested = [s for s in r.samples if s.testable]
    assert tested
    for s in tested:
        assert s.asr is not None and 0.0 <= s.asr <= 1.0 and math.isclose(s.asr * 16, round(s.asr * 16))
        assert s.boundary_asr is not None and 0.0 < s.boundary_asr <= 1.0
        assert math.isclose(s.boundary_asr * 16, round(s.boundary_asr * 16))  # on the verdict's 16 draws
    # a draw is random: the construction's own boundary point is class 1 only on some draws
    assert any(s.boundary_asr is not None and s.boundary_asr < 1.0 for s in tested)
    assert r.required_asr == pytest.approx(0.95 * (r.boundary_asr or 0.0))
    assert r.verdict == "pass"
    repeat = binarization_test(model, x, None, eot, threat=LINF, settings=settings, draws=16)
    a, b = r.to_dict(), repeat.to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    # the caller's random layer was never seeded (the test works on a copy)
    assert model[0]._rl_seed is None
    weak = binarization_test(model, x, None, _weak(), threat=LINF, settings=settings, draws=16)
    assert weak.verdict == "fail" and weak.test_asr == 0.0


# ------------------------------------------------------------------ inputs


def test_progress_and_attack_names() -> None:
    calls: list[tuple[int, int]] = []
    x = _images(3)
    r = binarization_test(_linear(), x, None, "quick", threat=LINF, settings=QUICK,
                          progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert r.attack == "quick" and r.verdict == "pass"
    battery = Battery([PGD(LINF, 5)], name="mine")
    assert binarization_test(_linear(), x[:1], None, battery, threat=LINF, settings=QUICK).attack == "mine"
    assert binarization_test(_linear(), x[:1], None, create_attack("pgd", LINF), threat=LINF,
                             settings=QUICK).attack == "pgd"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": torch.rand(1, 8, 8)}, r"x must be a 4-D NCHW batch"),
        ({"x": torch.rand(2, 1, 8, 8) * 2}, r"x must lie in \[0, 1\]"),
        ({"y": torch.tensor([0])}, r"got 1 labels for 2 images"),
        ({"threat": ThreatModel("linf", 0.0)}, r"eps must be > 0 for the binarization test"),
        ({"threat": ThreatModel("linf", 0.6)}, r"too large for the binarization test.*smaller eps"),
        ({"attack": "nope"}, r"unknown attack 'nope'.*quick.*apgd-ce"),
        ({"attack": PGD(ThreatModel("linf", 0.2), 5)}, r"built for linf eps 0.2 but the test's threat is linf eps 0.1"),
        ({"threat": ThreatModel("l2", 0.5), "attack": PGD(ThreatModel("l2", 0.5), 5),
          "settings": BinarizationSettings(corners=True)}, r"corners=True needs the linf threat model"),
        ({"bpda": "nope"}, r"unknown BPDA mode 'nope'"),
        ({"seed": -1}, r"seed must be an int >= 0"),
        ({"model": _linear().train()}, r"training mode.*model\.eval\(\)"),
    ],
)
def test_bad_inputs_are_refused_with_the_fix(kwargs: dict, message: str) -> None:
    args = {"model": _linear(), "x": _images(2), "y": None, "attack": PGD(LINF, 5), "threat": LINF,
            "settings": QUICK, **kwargs}
    with pytest.raises(InputError, match=message):
        binarization_test(args.pop("model"), args.pop("x"), args.pop("y"), args.pop("attack"), **args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inner": 0}, r"inner must be an int >= 1"),
        ({"boundary": 0}, r"boundary must be an int >= 1"),
        ({"eta": 1.0}, r"eta must be a finite number in \(0, 1\)"),
        ({"xi": 1.0}, r"xi must be a finite number > 1"),
        ({"readout": "tree"}, r"unknown readout 'tree'"),
        ({"rescale": "huge"}, r"unknown rescale 'huge'"),
        ({"closeness": 1.0}, r"closeness must be a probability in \[0, 1\)"),
        ({"feature_draws": 0}, r"feature_draws must be an int >= 1"),
        ({"threshold": 0}, r"threshold must be a finite number in \(0, 1\]"),
        ({"level": 1.0}, r"level must be a finite number in \(0, 1\)"),
        ({"corners": 1}, r"corners must be True or False"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        BinarizationSettings(**kwargs)
