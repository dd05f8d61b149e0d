"""Agreement with torchattacks (test-only dependency) on the same model, samples and settings.

The model is the session's adversarially trained CNN (robust accuracy around 50% at eps 0.1, so
both broken and robust samples are plentiful); 500 Fashion-MNIST test images, so 1 pp is 5
samples. torchattacks builds APGD/FAB with 10 iterations by default: every setting is passed
explicitly on both sides. The AutoAttack comparison runs the standard ensemble at reduced,
matched budgets to fit the test time; the reference budgets are in
``benchmarks/attacks_vs_torchattacks.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks import APGD, PGD, AutoAttack, Square
from robustlab.core import ThreatModel
from robustlab.core.randomness import seeded

torchattacks = pytest.importorskip("torchattacks")

pytestmark = pytest.mark.slow

EPS = 0.1
N = 500
THREAT = ThreatModel("linf", EPS)
TOLERANCE = 0.01  # 1 percentage point


def _theirs(model: nn.Module, attack, x: torch.Tensor, y: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    with seeded(0):
        x_adv = attack(x, y)
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def _ours(model: nn.Module, attack, x: torch.Tensor, y: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    res = attack.run(model, x, y, generator=torch.Generator().manual_seed(0))
    return res.robust_accuracy


@pytest.fixture(scope="module")
def data(fmnist_test):  # type: ignore[no-untyped-def]
    return fmnist_test[0][:N], fmnist_test[1][:N]


def test_pgd_agrees(robust_cnn: nn.Module, data) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    alpha = 2.5 * EPS / 20
    ours = _ours(robust_cnn, PGD(THREAT, steps=20, step_size=alpha), x, y)
    theirs = _theirs(robust_cnn, torchattacks.PGD(robust_cnn, eps=EPS, alpha=alpha, steps=20), x, y)
    assert 0.2 < theirs < 0.8  # a meaningful comparison: neither trivial nor saturated
    assert abs(ours - theirs) <= TOLERANCE, (ours, theirs)


def test_apgd_ce_agrees(robust_cnn: nn.Module, data) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    ours = _ours(robust_cnn, APGD(THREAT, steps=100, loss="ce"), x, y)
    ta = torchattacks.APGD(
        robust_cnn, norm="Linf", eps=EPS, steps=100, n_restarts=1, loss="ce", seed=0
    )
    theirs = _theirs(robust_cnn, ta, x, y)
    assert abs(ours - theirs) <= TOLERANCE, (ours, theirs)


def test_square_agrees(robust_cnn: nn.Module, data) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    ours = _ours(robust_cnn, Square(THREAT, n_queries=1000, p_init=0.8), x, y)
    ta = torchattacks.Square(robust_cnn, norm="Linf", eps=EPS, n_queries=1000, p_init=0.8, seed=0)
    theirs = _theirs(robust_cnn, ta, x, y)
    assert abs(ours - theirs) <= TOLERANCE, (ours, theirs)


def test_autoattack_standard_agrees(robust_cnn: nn.Module, data) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    steps, queries = 25, 500
    ours = _ours(robust_cnn, AutoAttack(THREAT, "standard", steps=steps, n_queries=queries), x, y)
    ta = torchattacks.MultiAttack(
        [
            torchattacks.APGD(robust_cnn, eps=EPS, steps=steps, n_restarts=1, loss="ce", seed=0),
            torchattacks.APGDT(
                robust_cnn, eps=EPS, steps=steps, n_restarts=1, n_classes=10, seed=0
            ),
            torchattacks.FAB(
                robust_cnn,
                eps=EPS,
                steps=steps,
                n_restarts=1,
                multi_targeted=True,
                n_classes=10,
                seed=0,
            ),
            torchattacks.Square(robust_cnn, eps=EPS, n_queries=queries, n_restarts=1, seed=0),
        ]
    )
    theirs = _theirs(robust_cnn, ta, x, y)
    assert abs(ours - theirs) <= TOLERANCE, (ours, theirs)
