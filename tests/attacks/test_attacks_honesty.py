"""Evaluation that cannot overstate robustness: each defect of issue 12 on a toy whose true
robustness is computed independently (closed forms of linear models, the probabilities of a
coin-flip classifier), not from the implementation's own output.

The toys: a binary linear model ``z = w . x + b`` whose worst case over the L-inf ball is known
in closed form (every pixel moves against the class as far as ball and box allow), optionally
behind Gaussian input noise, where the probability that one fresh draw classifies a point
correctly is ``Phi(margin / (sigma ||w||_2))``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from attack_toys import NoiseInjection, Quantize
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[1] / "evaluate"))
from evaluate_toys import BinaryLinear, CoinFlip, worst_case_margin  # noqa: E402

from robustlab.attacks import APGD, EOT, PGD, AutoAttack, Square, Transfer, square_p_schedule  # noqa: E402
from robustlab.core import InputError, ThreatModel  # noqa: E402
from robustlab.core.randomness import seeded  # noqa: E402
from robustlab.evaluate import Battery, run_battery  # noqa: E402


def _phi(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(v / math.sqrt(2)))


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


def _corner(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The point of the L-inf ball (within [0, 1]) that minimizes the binary margin of ``w``."""
    flat = x.flatten(1).double()
    direction = -(2 * y.double() - 1).unsqueeze(1) * torch.sign(w.double())
    step = torch.where(direction > 0, (1 - flat).clamp(max=eps), flat.clamp(max=eps))
    return (flat + direction * step).float().view_as(x)


def _tolerance(p: float, n: int) -> float:
    return 4 * math.sqrt(p * (1 - p) / n) + 1e-3


# --- 1. transfer attacks maximize the loss for their whole budget -------------------------------
@pytest.mark.parametrize("inner", ["pgd", "apgd"])
def test_transfer_carries_the_surrogates_worst_case_not_its_first_crossing(inner: str) -> None:
    surrogate = BinaryLinear(seed=0)
    target = BinaryLinear(seed=0)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():  # a correlated target: the surrogate's weights plus noise
        target.w.copy_(surrogate.w + 0.6 * torch.randn(16, generator=g))
        target.b.copy_(-0.5 * target.w.sum())
    x = _images(3000, 0)
    with torch.no_grad():
        y = (target(x) > 0).long()
        agree = (surrogate(x) > 0).long() == y
    x, y = x[agree], y[agree]  # clean points both models classify alike
    eps = 0.1
    threat = ThreatModel("linf", eps)
    # The non-early-stopped transfer, independently: the surrogate's worst-case corner, judged
    # by the target.
    with torch.no_grad():
        exact = (target(_corner(surrogate.w, x, y, eps)) > 0).long() != y
    attack = PGD(threat, steps=20) if inner == "pgd" else APGD(threat, steps=20)
    res = Transfer(surrogate, attack).run(target, x, y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(res.success, exact)
    if inner == "pgd":  # what a transfer that stops at the surrogate's boundary gives (measured
        # 0.68 robust vs 0.46): far fewer breaks (APGD's first step of 2 eps lands near the corner)
        first_crossing = attack.run(surrogate, x, y, generator=torch.Generator().manual_seed(1)).x_adv
        with torch.no_grad():
            early = ((target(first_crossing) > 0).long() != y).float().mean().item()
        assert exact.float().mean().item() > early + 0.15


# --- 2. a single lucky draw does not end the attack ----------------------------------------------
def _noisy_linear(sigma: float = 0.5) -> tuple[nn.Module, BinaryLinear]:
    net = BinaryLinear(seed=2)
    return nn.Sequential(NoiseInjection(sigma), net).eval(), net


@pytest.mark.parametrize(
    "make",
    [lambda t: PGD(t, steps=20), lambda t: PGD(t, steps=10, grad=EOT(8)), lambda t: APGD(t, steps=20)],
    ids=["pgd", "pgd-eot", "apgd-ce"],
)
def test_attacks_on_a_noisy_model_reach_its_expected_worst_case(make) -> None:  # type: ignore[no-untyped-def]
    sigma, eps = 0.5, 0.05
    model, net = _noisy_linear(sigma)
    x = _images(2000, 2)
    with torch.no_grad():
        y = (net(x) > 0).long()
    scale = sigma * net.w.double().norm()
    # the best any attack can do: the corner, where one fresh draw is right with Phi(m / scale)
    optimum = _phi(worst_case_margin(net.w, float(net.b), x, y, eps) / scale).mean().item()
    clean = _phi(worst_case_margin(net.w, float(net.b), x, y, 0.0) / scale).mean().item()
    assert clean - optimum > 0.1  # the attack has room to work
    with seeded(0):
        res = make(ThreatModel("linf", eps)).run(model, x, y, generator=torch.Generator().manual_seed(3))
    # the verdict is one fresh draw per sample: a Bernoulli mean around the optimum
    assert abs(res.robust_accuracy - optimum) < _tolerance(optimum, x.shape[0])


def test_square_on_a_randomized_model_spends_its_budget_on_every_sample() -> None:
    model = CoinFlip(p=0.5).eval()  # every single draw is a coin flip: lucky draws are common
    x = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = (x.flatten(1)[:, 0] * 3).long().clamp(0, 2)
    x[:, 0, 0, 0] = (y + 0.5) / 3
    res = Square(ThreatModel("linf", 0.05), n_queries=200).run(
        model, x, y, generator=torch.Generator().manual_seed(0))
    assert res.queries is not None
    # proposals that do not move the point are skipped, so about half the iterations query
    assert int(res.queries.min()) > 50


# --- 3. one verdict, AutoAttack and battery alike -------------------------------------------------
def test_autoattack_and_the_battery_report_the_probability_a_draw_is_right() -> None:
    # A coin-flip classifier is right with probability p on every draw, whatever the input: the
    # truth is p for every point of the ball. One fresh draw judging the clean input and each of
    # the two attacks of the rand version, ANDed (the rule before issue #26), gave p ** 3 = 0.512.
    p, n = 0.8, 3000
    model = CoinFlip(p=p).eval()
    x = torch.rand(n, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = (x.flatten(1)[:, 0] * 3).long().clamp(0, 2)
    x[:, 0, 0, 0] = (y + 0.5) / 3  # the class pixel in the middle of its interval: no input
    threat = ThreatModel("linf", 0.05)  # within eps can change the coin-flip model's class
    aa = AutoAttack(threat, "rand", steps=3, eot=2).run(model, x, y, generator=torch.Generator().manual_seed(0))
    battery = run_battery(model, (x, y), "rand", threat=threat, battery_options={"eot": 2}, batch_size=1000)
    expected = p
    assert abs(aa.robust_accuracy - expected) < _tolerance(expected, n)
    assert abs(battery.robust_acc - expected) < _tolerance(expected, n)
    assert abs(battery.clean_acc - expected) < _tolerance(expected, n)


# --- 4. randomness the library is not told about --------------------------------------------------
def test_randomness_outside_the_protocol_is_detected_and_gets_full_eot() -> None:
    sigma, eps = 0.5, 0.05
    net = BinaryLinear(seed=2, noise=sigma)  # torch.randn in the forward, no Stochastic layer
    x = _images(1500, 5)
    with torch.no_grad():
        y = (BinaryLinear(seed=2)(x) > 0).long()
    threat = ThreatModel("linf", eps)
    with seeded(1):
        res = PGD(threat, steps=5, grad=EOT(20)).run(net, x, y, generator=torch.Generator().manual_seed(0))
    assert res.randomness == "detected"
    assert res.backward_passes == 5 * 20 * x.shape[0]  # 20 draws at every step, no early stop
    assert "detected-randomness" in {w.code for w in res.warnings}
    scale = sigma * net.w.double().norm()
    optimum = _phi(worst_case_margin(net.w, float(net.b), x, y, eps) / scale).mean().item()
    assert abs(res.robust_accuracy - optimum) < _tolerance(optimum, x.shape[0])
    with seeded(2):
        battery = run_battery(net, (x, y), Battery([PGD(threat, steps=5, grad=EOT(4))]), batch_size=500)
    assert battery.config["randomness"] == "detected" and battery.config["stochastic"]
    assert "detected-randomness" in {w.code for w in battery.warnings}


def test_a_model_in_training_mode_is_refused_by_the_battery_and_warned_by_attacks() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    x = _images(20, 0)
    y = torch.zeros(20, dtype=torch.long)
    with pytest.raises(InputError, match="training mode"):
        run_battery(model, (x, y), "quick", threat=ThreatModel("linf", 0.05))
    with pytest.warns(UserWarning, match="training mode"):
        res = PGD(ThreatModel("linf", 0.05), steps=2).run(model, x, y)
    assert res.randomness == "detected"  # active dropout is randomness
    assert {"train-mode", "detected-randomness"} <= {w.code for w in res.warnings}


# --- 5. AutoAttack's Square follows the reference schedule ---------------------------------------
def test_square_schedule_without_rescaling_is_the_reference_one() -> None:
    # the paper's schedule (Andriushchenko et al., 2020, App.), 0-based iterations, p_init 0.8
    expected = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 200: 0.2, 201: 0.1, 500: 0.1,
                501: 0.05, 1000: 0.05, 1001: 0.025, 2000: 0.025, 2001: 0.0125, 4000: 0.0125,
                4001: 0.00625, 4999: 0.00625}
    for it, p in expected.items():
        assert square_p_schedule(it, 5000, 0.8, rescale=False) == pytest.approx(p), it
    # rescaled to 5,000 queries the squares shrink twice as fast: iteration 2001 maps to 4002
    assert square_p_schedule(2001, 5000, 0.8) == pytest.approx(0.8 / 128)
    square = AutoAttack(ThreatModel("linf", 0.1), "standard").attacks[3]
    assert isinstance(square, Square)
    assert (square.n_queries, square.p_init, square.rescale_schedule) == (5000, 0.8, False)


def test_square_schedule_agrees_with_torchattacks() -> None:
    torchattacks = pytest.importorskip("torchattacks")
    for rescale in (False, True):
        peer = torchattacks.Square(nn.Identity(), eps=0.1, n_queries=5000, p_init=0.8,
                                   resc_schedule=rescale)
        for it in range(0, 5000, 7):
            assert square_p_schedule(it, 5000, 0.8, rescale) == pytest.approx(peer.p_selection(it)), it


_PROPOSALS: list[int] = []


class _CountingSquare(Square):
    def _propose(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        _PROPOSALS.append(1)
        return super()._propose(*args, **kwargs)


def test_square_runs_n_queries_iterations_after_its_initial_point() -> None:
    # a model never fooled: the reference's loop runs range(n_queries) proposals after the init
    def model(v: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[100.0, 0.0]]).expand(v.shape[0], 2)

    x = torch.full((3, 1, 4, 4), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    _PROPOSALS.clear()
    _CountingSquare(ThreatModel("linf", 0.1), n_queries=30, rescale_schedule=False).run(model, x, y)
    assert len(_PROPOSALS) == 30


# --- sanity checks as structured warnings ----------------------------------------------------------
def _plain() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    torch.nn.init.normal_(model[1].weight, generator=torch.Generator().manual_seed(0))
    torch.nn.init.uniform_(model[1].bias, -0.25, 0.25, generator=torch.Generator().manual_seed(1))  # not the global RNG: test order must not matter
    x = _images(64, 7)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_a_plain_model_triggers_no_warning() -> None:
    model, x, y = _plain()
    threat = ThreatModel("linf", 0.05)
    assert PGD(threat, steps=5).run(model, x, y).warnings == ()
    battery = Battery([PGD(threat, steps=50), Square(threat, 50)])
    assert run_battery(model, (x, y), battery).warnings == ()


def test_shattered_gradients_and_square_beating_white_box_are_reported() -> None:
    model, x, y = _plain()
    quantized = nn.Sequential(Quantize(4.0), model).eval()  # zero gradients almost everywhere
    threat = ThreatModel("linf", 0.1)
    res = PGD(threat, steps=5).run(quantized, x, y)
    assert "zero-gradients" in {w.code for w in res.warnings}
    r = run_battery(quantized, (x, y), Battery([PGD(threat, steps=5), Square(threat, 300)]))
    codes = {w.code for w in r.warnings}
    assert {"zero-gradients", "black-box-beats-white-box"} <= codes
    assert r.per_attack["square"].broken > 0


def test_nonfinite_gradients_and_probability_outputs_are_reported() -> None:
    model, x, y = _plain()

    class NaNGrad(nn.Module):
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return model(v) + torch.sqrt(v.flatten(1)[:, :1] * 0)  # sqrt'(0) = inf, times 0

    threat = ThreatModel("linf", 0.05)
    assert "nonfinite-gradients" in {w.code for w in PGD(threat, steps=2).run(NaNGrad().eval(), x, y).warnings}
    softmax = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    r = run_battery(softmax, (x, y), Battery([PGD(threat, steps=2)]))
    assert "probability-outputs" in {w.code for w in r.warnings}


def test_a_randomized_model_under_the_standard_battery_is_told_to_use_rand() -> None:
    model, x, y = _plain()
    noisy = nn.Sequential(NoiseInjection(0.1), model).eval()
    r = run_battery(noisy, (x[:8], y[:8]), Battery([PGD(ThreatModel("linf", 0.05), steps=2)], "standard"))
    (w,) = [w for w in r.warnings if w.code == "randomized-without-eot"]
    assert "'rand' battery" in w.message
    rand = run_battery(noisy, (x[:8], y[:8]), Battery([PGD(ThreatModel("linf", 0.05), steps=2, grad=EOT(2))]))
    assert "randomized-without-eot" not in {w.code for w in rand.warnings}


# --- BPDA through the battery ---------------------------------------------------------------------
def test_battery_bpda_attacks_through_a_quantizer_to_the_closed_form() -> None:
    net = BinaryLinear(seed=6)
    quantized = nn.Sequential(Quantize(64.0), net).eval()
    x = _images(400, 6)
    with torch.no_grad():
        y = (quantized(x) > 0).long()
    eps = 0.05
    battery = Battery([PGD(ThreatModel("linf", eps), steps=20)])
    without = run_battery(quantized, (x, y), battery)
    through = run_battery(quantized, (x, y), battery, bpda="identity")
    # with the identity backward the gradient sign is the linear model's: PGD reaches the corner
    with torch.no_grad():
        exact = (quantized(_corner(net.w, x, y, eps)) > 0).long() == y
    assert torch.equal(through.robust[0], exact)
    assert without.robust_acc > through.robust_acc + 0.2
    assert through.config["bpda"] == "identity"


# --- the verdict re-runs the model on the returned points ---------------------------------------------
def test_the_verdict_is_a_fresh_forward_on_the_returned_points() -> None:
    model, x, y = _plain()
    seen: list[torch.Tensor] = []

    def recording(v: torch.Tensor) -> torch.Tensor:
        seen.append(v.detach().clone())
        return model(v)

    res = PGD(ThreatModel("linf", 0.05), steps=3).run(recording, x, y)
    assert torch.equal(seen[-1], res.x_adv)  # the last forward: the verdict on what is returned
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
