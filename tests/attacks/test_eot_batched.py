"""Batched EOT: several draws of a step in one forward where every random layer draws per row.

The toy is a linear score behind input noise, ``z = <w, x + sigma * e> + b`` with
``e ~ N(0, I)`` (``AddNoise`` then ``Linear2``), whose draws and gradients are known in closed
form: ``z ~ N(mu, s^2)`` with ``mu = <w, x> + b`` and ``s = sigma * ||w||``; for the objective
``z^2 / 2`` one draw's input gradient is ``z * w``, so ``E[grad] = mu * w``; normalized, it is
``sign(z) * w / ||w||``, so ``E = (2 Phi(mu / s) - 1) * w / ||w||``. Tolerances are 5 standard
errors of the mean over the draws.
"""

from __future__ import annotations

import math

import pytest
import torch
from attack_toys import CountCalls
from torch import nn
from toys import Linear2

from robustlab.attacks import EOT, PGD
from robustlab.attacks.estimators import rowwise_draws
from robustlab.attacks.model import ModelFn
from robustlab.core.randomness import (
    Stochastic,
    frozen,
    rows_differ,
    rowwise_random,
    seed_stochastic,
)
from robustlab.core.types import ThreatModel
from robustlab.defenses.dcs import RandomKernelConv2d
from robustlab.defenses.downsampling import AddNoise
from robustlab.defenses.sparse_encoder import SparseEncoder
from robustlab.defenses.stochastic_downsampling import StochasticDownsample

SIGMA = 0.5
SHAPE = (1, 2, 3)
DIM = 6
W = torch.linspace(-1.0, 1.5, DIM)


class SharedShift(Stochastic):
    """Adds one Gaussian value per forward, shared by every row of the batch: not row-wise."""

    def __init__(self, std: float, claim_rowwise: bool = False) -> None:
        super().__init__()
        self.std = std
        self.claim_rowwise = claim_rowwise

    @property
    def rowwise(self) -> bool:
        return self.claim_rowwise  # a false claim when True: for the test that the check catches it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = self.draw(lambda g: torch.randn((), generator=g, device=x.device), key=tuple(x.shape), device=x.device)
        return x + self.std * shift



def _toy(noise: nn.Module | None = None, seed: int = 0) -> tuple[CountCalls, torch.Tensor]:
    model = CountCalls(nn.Sequential(AddNoise(SIGMA) if noise is None else noise, Linear2(W.view(SHAPE), b=0.2)))
    seed_stochastic(model.eval(), seed)
    return model, W


def _shared_shift(claim_rowwise: bool = False) -> SharedShift:
    """A shared shift of every input entry whose score has the same spread as AddNoise's,
    ``s = sigma * ||w||`` (the shift moves the score by ``shift * sum(w)``)."""
    return SharedShift(SIGMA * float(W.norm() / W.sum()), claim_rowwise)


def _inputs(n: int) -> torch.Tensor:
    """Images in [0, 1] whose scores ``mu`` spread over about [-1.5 s, 1.5 s] (s = sigma * ||w||)."""
    t = torch.linspace(-1.0, 1.0, n).unsqueeze(1)
    return (0.5 + t * W / 3.5).view(n, *SHAPE)


def _mu(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.flatten(1) @ w + 0.2


def _square(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * z[:, 1] ** 2


def _draw_statistics(samples: torch.Tensor, mu: torch.Tensor, s: float) -> dict[str, float]:
    """Each statistic of the per-draw scores ``(D, N)`` in standard errors of its value under
    independent draws ``N(mu, s^2)`` (so each is below 5 for such draws), plus ``within``:
    the variance between the draws of a row over ``s^2`` (1 for independent draws, 0 for draws
    that share one value)."""
    d, n = samples.shape
    resid = samples - mu
    pairs = resid.sum(dim=0).pow(2) - resid.pow(2).sum(dim=0)  # sum over j != k of r_j r_k, per row
    within = float(samples.var(dim=0).mean() / s**2)
    return {
        "mean": float((resid.mean(dim=0).abs() / (s / math.sqrt(d))).max()),  # each row's own mean
        "variance": abs(float(resid.pow(2).mean() / s**2) - 1) / math.sqrt(2 / (d * n)),
        "within": abs(within - 1) / math.sqrt(2 / ((d - 1) * n)),
        "covariance": abs(float(pairs.mean() / (d * (d - 1)) / s**2)) / math.sqrt(2 / (d * (d - 1) * n)),
        "within_ratio": within,
    }


def _independent(samples: torch.Tensor, mu: torch.Tensor, s: float) -> bool:
    """Whether the draws look like independent ``N(mu, s^2)`` draws: every statistic of
    :func:`_draw_statistics` within 5 standard errors."""
    stats = _draw_statistics(samples, mu, s)
    return all(stats[k] < 5 for k in ("mean", "variance", "within", "covariance"))


# --- the declarations ---------------------------------------------------------------------------
def test_layers_declare_rowwise_from_their_options() -> None:
    assert AddNoise(0.1).rowwise
    assert SparseEncoder(torch.randn(8, 1, 3, 3), 1, 4, 0.5, 0.1, 3.0).rowwise
    assert not StochasticDownsample(2).rowwise  # one jitter grid shared by the batch
    assert StochasticDownsample(2, per_sample=True).rowwise
    assert not StochasticDownsample(2, per_sample=True, deterministic=True).rowwise
    assert not RandomKernelConv2d(2, 2, 3, 2).rowwise  # one kernel mask shared by the batch
    dcs = RandomKernelConv2d(2, 2, 3, 2, per_sample=True)
    assert dcs.rowwise
    assert not RandomKernelConv2d(2, 2, 3, 2, per_sample=True, redraw="batch").rowwise
    with dcs.use_positions(torch.tensor([0, 4])):
        assert not dcs.rowwise
    with dcs.excluding(torch.tensor([[0], [1], [2]])):  # one set per sample: tied to N = 3
        assert not dcs.rowwise
    with dcs.excluding(torch.tensor([0])):
        assert dcs.rowwise


@pytest.mark.parametrize(
    ("layer", "rows"),
    [
        (AddNoise(0.3), (1, 6, 6)),
        (SparseEncoder(torch.randn(8, 1, 3, 3), 1, 4, 0.5, 0.0, 3.0), (1, 6, 6)),
        (StochasticDownsample(2, per_sample=True), (2, 6, 6)),
        (StochasticDownsample(2), (2, 6, 6)),
        (RandomKernelConv2d(2, 3, 5, 2, per_sample=True), (2, 6, 6)),
        (RandomKernelConv2d(2, 3, 5, 2), (2, 6, 6)),
    ],
    ids=["addnoise", "sparse", "sd-per-sample", "sd-shared", "dcs-per-sample", "dcs-shared"],
)
def test_declarations_match_what_the_layers_draw(layer: Stochastic, rows: tuple[int, ...]) -> None:
    """A batch of identical rows: a row-wise layer gives the rows different outputs, a layer
    that shares its draw gives them the same output."""
    torch.manual_seed(0)
    layer.seed(3)
    x = torch.rand(rows).expand(8, *rows).contiguous()
    with torch.no_grad():
        out = layer(x)
    differ = rows_differ(out[1:], out[:1].expand_as(out[1:]))
    assert bool(differ.all()) if layer.rowwise else not bool(differ.any())


def test_rowwise_random_needs_every_active_layer_rowwise_and_unfrozen() -> None:
    assert rowwise_random(nn.Sequential(AddNoise(0.1), nn.Identity()))
    assert not rowwise_random(nn.Sequential(AddNoise(0.1), SharedShift(0.1)))
    assert rowwise_random(nn.Sequential(AddNoise(0.1), StochasticDownsample(2, deterministic=True)))
    assert not rowwise_random(nn.Sequential(AddNoise(0.0)))  # no active random layer
    assert not rowwise_random(nn.Linear(2, 2))
    model = nn.Sequential(AddNoise(0.1))
    with frozen(model):
        assert not rowwise_random(model)


def test_only_protocol_rowwise_models_in_eval_mode_are_batched() -> None:
    model, _ = _toy()
    assert rowwise_draws(ModelFn(model))
    assert not rowwise_draws(ModelFn(model, "detected"))  # randomness only detected: not trusted
    assert not rowwise_draws(ModelFn(lambda x: model(x), "detected"))  # a plain callable
    assert not rowwise_draws(ModelFn(model.train()))  # batch norm in train mode couples rows
    model.eval()
    with frozen(model):
        assert not rowwise_draws(ModelFn(model))


# --- the draws of one batched call ----------------------------------------------------------------
def test_batched_draws_are_independent_per_row_and_copy() -> None:
    model, w = _toy()
    x = _inputs(16)
    draws = 300
    fm = ModelFn(model)
    est = EOT(draws, max_rows=draws * 16)
    assert est.draws_per_pass(fm, 16) == draws
    out = est(fm, x, _square)
    assert model.calls == 1  # all draws in one forward
    z = out.samples[..., 1]
    assert z.shape == (draws, 16)
    assert bool(rows_differ(out.samples[1:].flatten(1), out.samples[:1].flatten(1).expand(draws - 1, -1)).all())
    s = SIGMA * float(w.norm())
    # each row's copies centre on that row's own score (no row mixing), with variance
    # sigma^2 ||w||^2, and distinct copies are uncorrelated
    assert _independent(z, _mu(x, w), s), _draw_statistics(z, _mu(x, w), s)
    # the 16 rows of one draw are independent too: their residuals are uncorrelated
    resid = (z - _mu(x, w)) / s
    row_pairs = (resid.sum(dim=1).pow(2) - resid.pow(2).sum(dim=1)).mean() / (16 * 15)
    assert abs(float(row_pairs)) < 5 * math.sqrt(2 / (16 * 15 * draws))


def test_the_independence_check_catches_shared_draws() -> None:
    """The check of the test above on a layer that falsely claims row-wise draws (one value
    per forward): the copies of a batched call share that value, and the check sees it."""
    model, w = _toy(_shared_shift(claim_rowwise=True))
    x = _inputs(16)
    fm = ModelFn(model)
    out = EOT(300, max_rows=300 * 16)(fm, x, _square)
    assert model.calls == 1
    z, s = out.samples[..., 1], SIGMA * float(w.norm())
    assert not _independent(z, _mu(x, w), s)
    assert _draw_statistics(z, _mu(x, w), s)["within_ratio"] < 1e-6  # the copies are one draw


def test_a_layer_drawing_once_per_forward_is_never_batched() -> None:
    model, w = _toy(_shared_shift())
    x = _inputs(16)
    fm = ModelFn(model)
    est = EOT(200, batched=True, max_rows=10**6)
    assert est.draws_per_pass(fm, 16) == 1
    out = est(fm, x, _square)
    assert model.calls == 200  # the loop: one forward per draw
    # separate forwards: independent draws (the rows of one forward share its shift, so only
    # 200 independent values: the check's standard errors are those of 200, not 200 * 16)
    stats = _draw_statistics(out.samples[..., 1], _mu(x, w), SIGMA * float(w.norm()))
    assert stats["mean"] < 5 and stats["variance"] / 4 < 5 and stats["covariance"] / 4 < 5


# --- the estimate -------------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "looped"])
def test_mean_gradient_matches_the_closed_form(batched: bool) -> None:
    model, w = _toy(seed=1)
    x = _inputs(8)
    draws = 400
    fm = ModelFn(model)
    est = EOT(draws, batched=batched, max_rows=64)
    out = est(fm, x, _square)
    assert model.calls == (50 if batched else draws)  # 8 draws of 8 rows per forward
    s = SIGMA * float(w.norm())
    mu = _mu(x, w)
    expected = mu.unsqueeze(1) * w  # E[z w]
    tol = 5 * s / math.sqrt(draws) * w.abs()  # the mean of z is off by at most 5 standard errors
    assert bool(((out.grad.flatten(1) - expected).abs() <= tol + 1e-6).all())
    torch.testing.assert_close(out.loss, out.samples[..., 1].pow(2).mean(dim=0) / 2)
    # E[z^2 / 2] = (mu^2 + s^2) / 2, within 5 standard errors of the mean of z^2 / 2
    sd = torch.sqrt((4 * mu**2 * s**2 + 2 * s**4) / 4 / draws)
    assert bool(((out.loss - (mu**2 + s**2) / 2).abs() <= 5 * sd).all())


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "looped"])
def test_normalized_gradient_matches_the_closed_form(batched: bool) -> None:
    model, w = _toy(seed=2)
    x = _inputs(8)
    draws = 400
    fm = ModelFn(model)
    out = EOT(draws, normalize=True, batched=batched, max_rows=64)(fm, x, _square)
    assert model.calls == (50 if batched else draws)
    s = SIGMA * float(w.norm())
    mu = _mu(x, w)
    phi = 0.5 * (1 + torch.erf(mu / (s * math.sqrt(2))))
    expected = (2 * phi - 1).unsqueeze(1) * w / w.norm()
    # each draw is +-w/||w||: the coefficient's variance is at most 1 / draws
    tol = 5 / math.sqrt(draws) * w.abs() / w.norm()
    assert bool(((out.grad.flatten(1) - expected).abs() <= tol + 1e-6).all())
    raw = EOT(draws, batched=batched, max_rows=64)(ModelFn(model), x, _square).grad
    assert not torch.allclose(out.grad, raw, atol=0.05)  # normalizing changed the estimate


def test_pass_counts_and_shapes_equal_the_loop() -> None:
    model, _ = _toy(seed=3)
    x = _inputs(4)
    y = torch.tensor([0, 1, 0, 1])

    def ce(z: torch.Tensor) -> torch.Tensor:  # a per-sample objective holding the batch's labels
        return nn.functional.cross_entropy(z, y, reduction="none")

    results = {}
    for batched in (True, False):
        model.calls = 0
        fm = ModelFn(model)
        est = EOT(7, batched=batched, max_rows=12)  # 3 draws per forward: 3 + 3 + 1
        out = est(fm, x, ce)
        pred = est.predict(fm, x)
        results[batched] = (fm.forward_passes, fm.backward_passes, fm.grad_evaluations, model.calls)
        assert out.samples.shape == (7, 4, 2) and pred.samples.shape == (7, 4, 2)
        assert out.grad.shape == x.shape and out.loss.shape == (4,)
        assert out.logits.shape == out.probs.shape == (4, 2)
        torch.testing.assert_close(out.logits, out.samples.mean(dim=0))
        torch.testing.assert_close(out.probs, out.samples.softmax(dim=-1).mean(dim=0))
        torch.testing.assert_close(out.loss, torch.stack([ce(s) for s in out.samples]).mean(dim=0))
    assert results[True][:3] == results[False][:3] == (2 * 7 * 4, 7 * 4, 7 * 4)  # n per image, twice
    assert results[True][3] == 2 * 3 and results[False][3] == 2 * 7


def test_batched_predict_draws_independently() -> None:
    model, w = _toy(seed=4)
    x = _inputs(16)
    fm = ModelFn(model)
    pred = EOT(200, max_rows=200 * 16).predict(fm, x)
    assert model.calls == 1 and fm.forward_passes == 200 * 16
    assert _independent(pred.samples[..., 1], _mu(x, w), SIGMA * float(w.norm()))


def test_an_attack_with_batched_eot_counts_the_same_passes() -> None:
    model, _ = _toy(seed=5)
    x = _inputs(6)
    y = torch.zeros(6, dtype=torch.long)
    threat = ThreatModel("linf", 0.05)
    runs = {}
    for batched in (True, False):
        model.calls = 0
        result = PGD(threat, steps=3, grad=EOT(5, batched=batched)).run(model, x, y, generator=torch.Generator().manual_seed(0))
        runs[batched] = (result, model.calls)
    batched_run, looped_run = runs[True][0], runs[False][0]
    assert batched_run.forward_passes == looped_run.forward_passes
    assert batched_run.backward_passes == looped_run.backward_passes
    assert runs[True][1] < runs[False][1]
