"""The BPDA protocol: exact forward, identity or smooth backward inside bpda()."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.core.bpda import BPDABlock, BPDALayer, bpda, bpda_layers, straight_through
from robustlab.core.errors import InputError


class Quantize(BPDALayer):
    """Toy hard quantizer round(k x) / k; ``enabled=False`` makes it the identity."""

    def __init__(self, k: float = 4.0, enabled: bool = True) -> None:
        super().__init__()
        self.k = k
        self.enabled = enabled

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.k) / self.k if self.enabled else x

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        return x - torch.sin(2 * torch.pi * self.k * x) / (2 * torch.pi * self.k)


class NoSurrogate(BPDALayer):
    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0.5).to(x.dtype)


def _grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).pow(2).sum(), x)
    return g


def _net(enabled: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 6), Quantize(4.0, enabled), nn.Tanh(), nn.Linear(6, 2)
    ).double()


def test_plain_gradient_of_a_quantizer_is_zero() -> None:
    q = Quantize(4.0)
    x = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(q(x).sum(), x)
    assert torch.equal(g, torch.zeros_like(g))


def test_identity_mode_is_straight_through() -> None:
    q = Quantize(4.0)
    x = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    with bpda(q, "identity"):
        y = q(x)
        (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(y, q.forward_exact(x))  # exact forward, bit for bit
    assert torch.equal(g, torch.ones_like(g))
    assert q.bpda_mode is None  # restored on exit


def test_smooth_mode_backpropagates_the_surrogate() -> None:
    q = Quantize(4.0)
    x = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 5, dtype=torch.float64)
    with bpda(q, "smooth"):
        y = q(x)
        (g,) = torch.autograd.grad((y * weights).sum(), x)
    (g_ref,) = torch.autograd.grad((q.surrogate(x) * weights).sum(), x)
    assert torch.equal(y, q.forward_exact(x))
    torch.testing.assert_close(g, g_ref)


def test_identity_bpda_on_an_identity_quantizer_equals_the_plain_gradient() -> None:
    model = _net(enabled=False)
    x = torch.rand(4, 6, dtype=torch.float64)
    plain = _grad(model, x)
    with bpda(model, "identity"):
        through = _grad(model, x)
    torch.testing.assert_close(through, plain, rtol=0, atol=1e-15)


def test_bpda_gives_a_useful_gradient_through_a_real_quantizer() -> None:
    model = _net(enabled=True)
    x = torch.rand(4, 6, dtype=torch.float64)
    assert torch.count_nonzero(_grad(model, x)) == 0
    with bpda(model, "identity"):
        assert torch.count_nonzero(_grad(model, x)) > 0


def test_nested_contexts_restore_the_outer_mode() -> None:
    model = _net()
    (layer,) = bpda_layers(model)
    with bpda(model, "identity"):
        with bpda(model, "smooth"):
            assert layer.bpda_mode == "smooth"
        assert layer.bpda_mode == "identity"
    assert layer.bpda_mode is None


def test_no_grad_forward_inside_bpda_is_exact() -> None:
    q = Quantize(4.0)
    x = torch.rand(2, 3)
    with bpda(q, "smooth"), torch.no_grad():
        assert torch.equal(q(x), q.forward_exact(x))


def test_bad_mode_and_missing_surrogate_raise() -> None:
    model = _net()
    with pytest.raises(InputError, match="unknown BPDA mode 'exact'"), bpda(model, "exact"):  # type: ignore[arg-type]
        pass
    layer = NoSurrogate()
    x = torch.rand(2, 3, requires_grad=True)
    with bpda(layer, "smooth"), pytest.raises(NotImplementedError, match="no smooth surrogate"):
        layer(x)
    with bpda(layer, "identity"):
        assert torch.equal(layer(x), layer.forward_exact(x))


def test_straight_through_needs_matching_shapes() -> None:
    with pytest.raises(InputError, match=r"one shape, got \(2, 3\) and \(3,\)"):
        straight_through(torch.zeros(2, 3), torch.zeros(3))


# --- scopes: "bypass" reaches blocks only, "identity"/"smooth" layers only --------------------


class Purifier(BPDABlock):
    """A block that is far from the identity in its forward: x -> Quantize(0.5 * x + 0.25)."""

    def __init__(self) -> None:
        super().__init__(nn.Sequential(nn.Identity()))
        self.q = Quantize(4.0)

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(0.5 * x + 0.25)


def test_bypass_treats_a_block_as_the_identity_and_leaves_layers_exact() -> None:
    torch.manual_seed(0)
    head = nn.Linear(6, 1).double()
    model = nn.Sequential(Purifier(), head).double()
    x = torch.rand(3, 6, dtype=torch.float64)
    with bpda(model, "bypass"):
        assert model[0].bpda_mode == "bypass" and model[0].q.bpda_mode is None
        g = _grad(model, x)
    # d/dx (w . p + b)^2 with dp/dx := I, p the exact purified input
    with torch.no_grad():
        out = head(torch.round((0.5 * x + 0.25) * 4) / 4)
    expected = 2 * out * head.weight
    assert torch.allclose(g, expected.expand_as(g))
    # "identity" differentiates the block (chain rule through 0.5 x) and straight-throughs the
    # quantizer inside: half the bypass gradient
    with bpda(model, "identity"):
        assert model[0].bpda_mode is None and model[0].q.bpda_mode == "identity"
        g_id = _grad(model, x)
    assert torch.allclose(g_id, 0.5 * expected.expand_as(g))


def test_bypass_forward_is_exact() -> None:
    model = nn.Sequential(Purifier()).double()
    x = torch.rand(4, 6, dtype=torch.float64)
    with bpda(model, "bypass"):
        assert torch.equal(model(x), torch.round((0.5 * x + 0.25) * 4) / 4)


def test_block_without_inner_must_define_forward_exact() -> None:
    with pytest.raises(NotImplementedError):
        BPDABlock()(torch.zeros(1))
