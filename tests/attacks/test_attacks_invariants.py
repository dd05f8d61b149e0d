"""Invariants with known answers, on a small adversarially trained CNN (Fashion-MNIST)."""

from __future__ import annotations

import torch
from attack_toys import NoiseInjection
from torch import nn

from robustlab.attacks import EOT, PGD
from robustlab.core import ThreatModel
from robustlab.core.randomness import seed_stochastic

EPS = 0.1


def _clean_acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_eps_zero_gives_clean_accuracy(robust_cnn: nn.Module, fmnist_test) -> None:  # type: ignore[no-untyped-def]
    x, y = fmnist_test[0][:200], fmnist_test[1][:200]
    res = PGD(ThreatModel("linf", 0.0), steps=5).run(robust_cnn, x, y)
    assert res.robust_accuracy == _clean_acc(robust_cnn, x, y)
    assert torch.equal(res.x_adv, x)


def test_eps_one_drives_pgd_accuracy_to_zero(robust_cnn: nn.Module, fmnist_test) -> None:  # type: ignore[no-untyped-def]
    x, y = fmnist_test[0][:200], fmnist_test[1][:200]
    torch.manual_seed(3)
    untrained = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    for model in (robust_cnn, untrained):
        assert PGD(ThreatModel("linf", 1.0), steps=20).run(model, x, y).robust_accuracy == 0.0
        assert PGD(ThreatModel("l2", 28.0), steps=20).run(model, x, y).robust_accuracy == 0.0


def test_more_pgd_steps_never_raise_worst_case_accuracy(robust_cnn: nn.Module, fmnist_test) -> None:  # type: ignore[no-untyped-def]
    x, y = fmnist_test[0][:300], fmnist_test[1][:300]
    threat = ThreatModel("linf", EPS)
    robust = []
    for steps in (5, 10, 20):
        attack = PGD(threat, steps=steps, step_size=0.25 * EPS)
        res = attack.run(robust_cnn, x, y, generator=torch.Generator().manual_seed(0))
        robust.append(res.robust)
    for fewer, more in zip(robust, robust[1:], strict=False):
        assert not bool((more & ~fewer).any())  # per sample: robust after more steps => before
    assert robust[-1].sum() <= robust[0].sum()
    # the same holds with early stopping off (the best iterate is still kept)
    a = PGD(threat, steps=5, step_size=0.25 * EPS, early_stop=False)
    b = PGD(threat, steps=15, step_size=0.25 * EPS, early_stop=False)
    ra = a.run(robust_cnn, x, y, generator=torch.Generator().manual_seed(0)).robust
    rb = b.run(robust_cnn, x, y, generator=torch.Generator().manual_seed(0)).robust
    assert not bool((rb & ~ra).any())


def test_eot_breaks_a_noise_injection_defense_at_least_as_often(
    robust_cnn: nn.Module, fmnist_test
) -> None:  # type: ignore[no-untyped-def]
    x, y = fmnist_test[0][:150], fmnist_test[1][:150]
    defended = nn.Sequential(NoiseInjection(0.2), robust_cnn).eval()
    seed_stochastic(defended, 0)  # the noise stream no longer depends on the global RNG
    threat = ThreatModel("linf", EPS)

    def expected_accuracy(x_adv: torch.Tensor) -> float:  # mean over 20 draws of the defense
        with torch.no_grad():
            return sum(_clean_acc(defended, x_adv, y) for _ in range(20)) / 20

    gen = torch.Generator().manual_seed(0)
    plain = PGD(threat, steps=10).run(defended, x, y, generator=gen)
    gen = torch.Generator().manual_seed(0)
    eot = PGD(threat, steps=10, grad=EOT(20)).run(defended, x, y, generator=gen)
    assert eot.backward_passes > 10 * plain.backward_passes  # 20 draws per step
    acc_plain, acc_eot = expected_accuracy(plain.x_adv), expected_accuracy(eot.x_adv)
    assert acc_eot <= acc_plain
    assert expected_accuracy(x) > acc_plain  # and both attacks do something
