"""``Normalized``: normalization inside the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.core import InputError
from robustlab.models import Normalized


def _net(c: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.Flatten(), nn.LazyLinear(5))


def test_equals_manual_normalization() -> None:
    torch.manual_seed(0)
    inner = nn.Conv2d(3, 2, 3)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    model = Normalized(inner, mean, std)
    x = torch.rand(2, 3, 8, 8)
    manual = inner((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(model(x), manual)
    assert model.model is inner
    assert model.mean.shape == model.std.shape == (1, 3, 1, 1)
    assert model.in_channels == 3


def test_identity_normalization_is_the_inner_model() -> None:
    inner = nn.Conv2d(1, 1, 1)
    x = torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(Normalized(inner, [0.0], [1.0])(x), inner(x))


def test_state_dict_round_trip() -> None:
    a = Normalized(nn.Conv2d(3, 2, 1), [0.1, 0.2, 0.3], [0.5, 0.6, 0.7])
    state = a.state_dict()
    assert {"mean", "std", "model.weight", "model.bias"} == set(state)
    b = Normalized(nn.Conv2d(3, 2, 1), [0.5] * 3, [0.5] * 3)
    b.load_state_dict(state)
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(b(x), a(x))
    torch.testing.assert_close(b.std, a.std)


def test_buffers_follow_dtype() -> None:
    model = Normalized(nn.Conv2d(1, 1, 1), [0.5], [0.25]).double()
    assert model.mean.dtype == torch.float64
    assert model(torch.rand(1, 1, 2, 2, dtype=torch.float64)).dtype == torch.float64


def test_gradcheck_float64() -> None:
    torch.manual_seed(0)
    model = Normalized(nn.Conv2d(2, 3, 3, padding=1), [0.3, 0.6], [0.2, 0.4]).double()
    x = torch.rand(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-5)


def test_no_range_check_by_default() -> None:
    model = Normalized(nn.Identity(), [0.5], [0.5])
    torch.testing.assert_close(model(torch.full((1, 1, 1, 1), 3.0)), torch.full((1, 1, 1, 1), 5.0))


def test_check_inputs_rejects_bad_batches() -> None:
    model = Normalized(nn.Identity(), [0.5], [0.5], check_inputs=True)
    model(torch.rand(1, 1, 2, 2))
    with pytest.raises(InputError, match=r"images must lie in \[0, 1\], got values in \[0, 3\]"):
        model(torch.tensor([[[[0.0, 3.0]]]]))
    with pytest.raises(InputError, match="images must have 1 channel"):
        model(torch.rand(1, 3, 2, 2))


def test_bad_mean_std() -> None:
    with pytest.raises(
        InputError,
        match=r"mean and std need one value per channel each, got 3 mean value\(s\) and 1 std",
    ):
        Normalized(nn.Identity(), [0.5, 0.5, 0.5], [0.5])
    with pytest.raises(InputError, match=r"std must be positive, got \[0.5, 0.0\]"):
        Normalized(nn.Identity(), [0.5, 0.5], [0.5, 0.0])
