"""Registry-wide contract: every registered attack, every norm it supports."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from robustlab.attacks import ATTACKS, create_attack, lp_norm
from robustlab.core import ThreatModel


def _toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    ).eval()


SURROGATE = _toy()

# Small budgets so the whole registry runs in seconds; attacks not listed run with defaults.
FAST: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 5},
    "mifgsm": {"steps": 5},
    "apgd-ce": {"steps": 5},
    "apgd-dlr": {"steps": 5},
    "apgd-t": {"steps": 5, "n_target_classes": 2},
    "fab-t": {"steps": 5, "n_target_classes": 2},
    "square": {"n_queries": 30},
    "autoattack": {"steps": 5, "n_target_classes": 2, "n_queries": 30},
    "autoattack-rand": {"steps": 3, "eot": 2},
    "deepfool": {"steps": 5, "candidates": 4},
    "cw-l2": {"steps": 5, "search_steps": 2},
    "transfer": {"surrogate": SURROGATE, "steps": 3},
}
EPS = {"linf": 0.05, "l2": 0.5}


def _cases() -> list[tuple[str, str]]:
    return [(name, norm) for name in ATTACKS.names() for norm in ATTACKS.meta(name)["norms"]]


@pytest.fixture(scope="module")
def batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = _toy()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 8, 8, generator=g)
    x[:2] = x[:2].round()  # pixels at the box faces
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 10  # one clean-misclassified sample
    return model, x, y


def test_every_attack_is_covered() -> None:
    for name in ATTACKS.names():
        meta = ATTACKS.meta(name)
        assert meta["norms"] and set(meta["norms"]) <= {"linf", "l2"}
        assert meta["paper"] and meta["kind"] in {"gradient", "score", "ensemble", "transfer"}
    for name, norm in _cases():  # the declared norms build; the others are refused
        create_attack(name, ThreatModel(norm, EPS[norm]), **FAST.get(name, {}))
    expected = {"fgsm", "pgd", "mifgsm", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack"}
    assert expected | {"deepfool", "cw-l2", "transfer", "autoattack-rand"} <= set(ATTACKS.names())


@pytest.mark.parametrize(("name", "norm"), _cases())
def test_result_is_in_the_box_and_in_the_ball(name: str, norm: str, batch: Any) -> None:
    model, x, y = batch
    threat = ThreatModel(norm, EPS[norm])
    attack = create_attack(name, threat, **FAST.get(name, {}))
    res = attack.run(model, x, y, generator=torch.Generator().manual_seed(0))
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert bool((lp_norm(res.x_adv - x, norm) <= threat.eps).all())  # no rounding slack
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred != y)
    assert bool(res.success[0])  # the misclassified sample counts as broken
    # the verdict re-runs the model on every returned point, apart from the search's passes
    assert res.verdict_passes >= x.shape[0] and res.backward_passes >= 0


@pytest.mark.parametrize(("name", "norm"), _cases())
def test_eps_zero_gives_clean_accuracy(name: str, norm: str, batch: Any) -> None:
    model, x, y = batch
    attack = create_attack(name, ThreatModel(norm, 0.0), **FAST.get(name, {}))
    res = attack.run(model, x, y)
    assert torch.equal(res.x_adv, x)
    with torch.no_grad():
        assert torch.equal(res.success, model(x).argmax(1) != y)
