import pytest
import torch
from evaluate_toys import CoinFlip, Spy, noisy_model, toy_data

from robustlab.attacks import EOT, PGD
from robustlab.core import ThreatModel
from robustlab.core.randomness import frozen, is_stochastic
from robustlab.evaluate import Battery, ensemble_predict, run_battery

T = ThreatModel("linf", 0.1)


def _coin_data(n: int, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 2, 2, generator=g)
    return x, (x.flatten(1)[:, 0] * k).long().clamp(0, k - 1)


def test_repeats_give_a_std_over_independent_runs():
    model = CoinFlip(p=0.5).eval()
    x, y = _coin_data(60)
    r = run_battery(model, (x, y), Battery([Spy(T, [])]), repeats=3, batch_size=25)
    assert r.repeats == 3 and r.clean_correct.shape == (3, 60) and len(r.clean_accs) == 3
    assert len(set(r.clean_accs)) > 1 and r.clean_std > 0 and r.robust_std > 0
    assert r.clean_acc == pytest.approx(sum(r.clean_accs) / 3)
    assert r.clean_std == pytest.approx(torch.tensor(r.clean_accs).std().item())


def test_ensemble_uses_e_fresh_draws_per_prediction():
    model = CoinFlip(p=0.8).eval()
    x, y = _coin_data(40)
    log: list = []
    r = run_battery(model, (x, y), Battery([Spy(T, log)]), ensemble=5, batch_size=40)
    seen = r.per_attack["spy"].seen
    # k = 16 verdict draws of 5 forwards each: the clean estimate (40 images), the spy's own
    # forward, no comparison (the spy returns the incumbents, the clean inputs, unchanged), and
    # the final estimate
    k = r.config["verdict_draws"]
    assert k == 16
    assert model.images == k * 5 * 40 + seen + k * 5 * 40
    assert r.config["prediction_draws"] == 5 and r.ensemble == 5
    # with p = 0.8 the 5-draw ensemble is right far more often than a single draw
    single = run_battery(CoinFlip(p=0.8).eval(), (x, y), Battery([Spy(T, [])]), ensemble=1)
    assert r.clean_acc > single.clean_acc and r.clean_acc > 0.85


def test_ensemble_is_not_spent_on_a_deterministic_model():
    model = CoinFlip(p=0.5).eval()
    x, y = _coin_data(10)
    with frozen(model):
        assert not is_stochastic(model)
        run_battery(model, (x, y), Battery([Spy(T, [])]), ensemble=7)
    assert model.images < 7 * 10


def test_final_prediction_uses_fresh_randomness_not_the_attacks_logits():
    model = CoinFlip(p=0.5).eval()
    x, y = _coin_data(200)
    log: list = []
    r = run_battery(model, (x, y), Battery([Spy(T, log)]), batch_size=200)
    (call,) = log
    seen = r.seen["spy"][0]
    attack_verdict = call["pred"] != call["y"]  # what the draw the attack saw says
    evaluator_verdict = r.success["spy"][0][seen]
    assert seen.sum() == attack_verdict.numel() > 50
    # a fresh, independent draw disagrees with the attack's own draw on about half the samples
    disagree = (attack_verdict != evaluator_verdict).float().mean().item()
    assert 0.25 < disagree < 0.75


def test_ensemble_predict_averages_softmax():
    model = CoinFlip(p=0.9).eval()
    x, y = _coin_data(100)
    assert (ensemble_predict(model, x, 9) == y).float().mean() > 0.97
    with pytest.raises(ValueError, match="draws must be an int >= 1"):
        ensemble_predict(model, x, 0)


def test_noisy_model_with_eot_pgd_is_repeatable():
    model = noisy_model(std=0.2)
    x, y = toy_data(model[1:], n=40)
    b = Battery([PGD(T, steps=4, grad=EOT(n=3))])
    r1 = run_battery(model, (x, y), b, repeats=2, ensemble=2, seed=5, batch_size=16)
    r2 = run_battery(model, (x, y), b, repeats=2, ensemble=2, seed=5, batch_size=16)
    assert r1.config["stochastic"] and r1.to_dict()["masks"] == r2.to_dict()["masks"]
    assert r1.robust_acc <= r1.clean_acc
