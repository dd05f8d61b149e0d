"""Randomized models: an attack stops spending passes on a sample once the worst-case rule has
broken it (its incumbent fools every fresh draw), and on no other sample (issue 31).

The toy is a binary linear model behind Gaussian input noise: the best point of the L-inf ball
is its corner, where one fresh draw is right with probability ``Phi(m / (sigma ||w||))``
(closed form, independent of the attacks). Samples whose corner every draw misclassifies are
broken for sure; samples whose corner most draws still classify correctly cannot be settled
(16 fresh draws all wrong has probability below 0.5 ** 16).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from attack_toys import NoiseInjection
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[1] / "evaluate"))
from evaluate_toys import BinaryLinear, worst_case_margin  # noqa: E402

from robustlab.attacks import APGD, EOT, PGD, Square  # noqa: E402
from robustlab.core import ThreatModel  # noqa: E402
from robustlab.core.randomness import seeded  # noqa: E402

STEPS, DRAWS = 20, 8


def _phi(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(v / math.sqrt(2)))


def _setup(
    n: int = 400, sigma: float = 0.05, eps: float = 0.1
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    net = BinaryLinear(seed=2)
    model = nn.Sequential(NoiseInjection(sigma), net).eval()
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = (net(x) > 0).long()
    scale = sigma * net.w.double().norm()
    p_corner = _phi(worst_case_margin(net.w, float(net.b), x, y, eps) / scale)  # per sample
    return model, x, y, p_corner, eps


@pytest.mark.parametrize(
    "make",
    [lambda t, es: APGD(t, STEPS, grad=EOT(DRAWS), early_stop=es),
     lambda t, es: PGD(t, STEPS, grad=EOT(DRAWS), early_stop=es)],
    ids=["apgd-eot", "pgd-eot"],
)
def test_broken_samples_leave_a_randomized_run_and_the_figure_stays_at_the_optimum(make) -> None:  # type: ignore[no-untyped-def]
    model, x, y, p_corner, eps = _setup()
    n = x.shape[0]
    broken = p_corner < 1e-6  # every fresh draw misclassifies the corner
    hopeless = p_corner > 0.5  # most draws classify even the corner correctly
    assert 0.2 < broken.float().mean() < 0.8 and hopeless.float().mean() > 0.15
    optimum = p_corner.mean().item()
    threat = ThreatModel("linf", eps)
    results = {}
    for early in (True, False):
        with seeded(0):
            results[early] = make(threat, early).run(model, x, y, generator=torch.Generator().manual_seed(3))
    full_budget = results[False].backward_passes
    assert full_budget >= STEPS * DRAWS * n  # without early stop every sample runs every step
    res = results[True]
    # the figure: one estimate per sample on fresh draws, a mean around the closed-form optimum,
    # as without the early stop
    tol = 4 * math.sqrt(optimum * (1 - optimum) / n) + 0.02
    assert abs(res.robust_accuracy - optimum) < tol
    assert abs(results[False].robust_accuracy - optimum) < tol
    # the broken samples leave at the first check (a quarter of the steps for PGD, APGD's first
    # checkpoint), so at least half their budget is saved; the hopeless ones spend all of it
    per_sample = STEPS * DRAWS
    assert res.backward_passes <= full_budget - 0.5 * per_sample * int(broken.sum())
    assert res.backward_passes >= per_sample * int(hopeless.sum())


def test_a_sample_the_steps_draws_call_broken_but_fresh_draws_do_not_stays_in_the_run() -> None:
    # At the corner one draw is right with probability ~0.3 for these samples: the step's 8
    # draws are often all wrong (0.7 ** 8 = 6%), 16 fresh ones rarely (0.7 ** 16 = 0.3%). They
    # must not leave the run on the step's draws.
    model, x, y, p_corner, eps = _setup(2000, sigma=0.1)
    keep = (p_corner > 0.25) & (p_corner < 0.35)
    x, y = x[keep], y[keep]
    assert x.shape[0] >= 40
    threat = ThreatModel("linf", eps)
    with seeded(0):
        res = APGD(threat, STEPS, grad=EOT(DRAWS)).run(model, x, y, generator=torch.Generator().manual_seed(3))
    # at most a few samples settle by the luck of 16 fresh draws (expected 0.3%)
    assert res.backward_passes >= 0.9 * STEPS * DRAWS * x.shape[0]


def test_square_on_a_randomized_model_stops_querying_samples_the_rule_has_broken() -> None:
    model, x, y, p_corner, eps = _setup(300)
    broken, hopeless = p_corner < 1e-6, p_corner > 0.5
    threat = ThreatModel("linf", eps)
    out = {}
    for full in (False, True):  # full_budget: no early stop of any kind (the control)
        with seeded(0):
            out[full] = Square(threat, 300, eot=4).run(model, x, y, generator=torch.Generator().manual_seed(3),
                                                     full_budget=full)
    res, control = out[False], out[True]
    assert res.queries is not None and control.queries is not None
    # the broken samples stop after a few checks (one per 30 queries); the hopeless ones query on
    assert res.queries[broken].float().mean() < 0.5 * control.queries[broken].float().mean()
    assert res.queries[hopeless].float().mean() > 0.9 * control.queries[hopeless].float().mean()
    # and the figure is the control's, within the sampling error of two estimates
    tol = 4 * math.sqrt(0.25 / x.shape[0]) + 0.02
    assert abs(res.robust_accuracy - control.robust_accuracy) < tol
    assert res.robust_accuracy >= p_corner.mean().item() - tol  # never below the optimum
