"""The randomness protocol: fresh draws, frozen(), resample(), is_stochastic(), seeding."""

from __future__ import annotations

import torch
from torch import nn
from toys import NoiseInjection

from robustlab.core.randomness import (
    frozen,
    is_frozen,
    is_stochastic,
    resample,
    seed_stochastic,
    seeded,
    stochastic_layers,
)


def _model(std: float = 0.5) -> nn.Module:
    return nn.Sequential(NoiseInjection(std), nn.Linear(4, 3), NoiseInjection(std))


def test_fresh_draw_every_forward() -> None:
    layer = NoiseInjection(1.0)
    x = torch.zeros(2, 4)
    assert not torch.equal(layer(x), layer(x))


def test_frozen_reuses_one_draw_and_forgets_it_on_exit() -> None:
    model = _model()
    x = torch.randn(5, 4)
    with frozen(model):
        a, b = model(x), model(x)
        assert torch.equal(a, b)
        assert is_frozen(model)
    assert not is_frozen(model)
    assert not torch.equal(model(x), a)
    with frozen(model):
        assert not torch.equal(model(x), a)  # a new context draws a new path


def test_nested_frozen_shares_the_outer_draw() -> None:
    model = _model()
    x = torch.randn(3, 4)
    with frozen(model):
        a = model(x)
        with frozen(model):
            assert torch.equal(model(x), a)
        assert torch.equal(model(x), a)  # leaving the inner context keeps the outer draw


def test_resample_forces_a_new_draw_inside_frozen() -> None:
    model = _model()
    x = torch.randn(3, 4)
    with frozen(model):
        a = model(x)
        resample(model)
        b = model(x)
        assert not torch.equal(a, b)
        assert torch.equal(model(x), b)


def test_batch_size_change_inside_frozen_gets_its_own_fixed_draw() -> None:
    model = _model()
    x = torch.randn(6, 4)
    with frozen(model):
        full = model(x)
        half = model(x[:3])
        assert torch.equal(model(x[:3]), half)  # the smaller batch is fixed too
        assert torch.equal(model(x), full)  # and the full batch keeps its draw


def test_is_stochastic() -> None:
    assert is_stochastic(_model(0.5))
    assert not is_stochastic(_model(0.0))  # inactive layers do not count
    assert not is_stochastic(nn.Linear(2, 2))
    model = _model(0.5)
    with frozen(model):
        assert not is_stochastic(model)  # a frozen model is one deterministic function
    assert is_stochastic(model)
    assert len(stochastic_layers(model)) == 2


def test_seed_makes_draws_repeat() -> None:
    a, b = NoiseInjection(1.0), NoiseInjection(1.0)
    a.seed(3)
    b.seed(3)
    x = torch.zeros(2, 4)
    assert torch.equal(a(x), b(x))
    assert torch.equal(a(x), b(x))
    m1, m2 = _model(), _model()
    m2.load_state_dict(m1.state_dict())
    seed_stochastic(m1, 7)
    seed_stochastic(m2, 7)
    x = torch.randn(2, 4)
    assert torch.equal(m1(x), m2(x))
    first, second = stochastic_layers(m1)
    assert first._rl_seed != second._rl_seed  # layers get distinct streams


def test_unseeded_generators_fork_from_the_global_rng() -> None:
    x = torch.zeros(2, 4)
    with seeded(0):
        a = _model()
        out_a = a(x)
    with seeded(0):
        b = _model()
        out_b = b(x)
    assert torch.equal(out_a, out_b)
    layers = stochastic_layers(a)
    assert not torch.equal(layers[0](x), layers[1](x))  # different streams per layer


def test_seeded_restores_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with seeded(5):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    with seeded(5):
        assert torch.equal(torch.rand(3), inside)


def test_generator_lives_on_the_input_device() -> None:
    layer = NoiseInjection(1.0)
    layer(torch.zeros(1, 4))
    g = layer.generator("cpu")
    assert g.device.type == "cpu"
    assert layer.generator(torch.device("cpu")) is g
