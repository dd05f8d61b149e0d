"""The oriented-energy teacher (gradient-norm thesis, Sec. 5, Eq. 5.1)."""

from __future__ import annotations

import math

import pytest
import torch

from robustlab.core import InputError
from robustlab.core.filters import gaussian_derivative_kernels, oriented_energy


@pytest.mark.parametrize("value", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("channels", [1, 3])
def test_constant_image_has_zero_energy(value: float, channels: int) -> None:
    x = torch.full((2, channels, 9, 11), value, dtype=torch.float64)
    energy = oriented_energy(x)
    assert energy.shape == x.shape
    assert energy.abs().max() < 1e-20


def test_edge_has_more_energy_than_a_flat_region() -> None:
    x = torch.zeros(1, 1, 16, 16)
    x[..., 8:] = 1.0  # a vertical step edge between columns 7 and 8
    energy = oriented_energy(x)[0, 0]
    at_edge = energy[:, 7:9].min()
    flat = energy[:, :2].max()  # columns 0-1 are 6+ pixels (> 3 sigma) from the edge
    assert at_edge > 0.05
    assert flat < 1e-6
    assert at_edge > 1e4 * flat


def test_ramp_has_energy_slope_squared() -> None:
    # a linear ramp of slope a along the width: d/du = a, d/dv = 0, so the energy is a^2 (away
    # from the borders, where replicate padding flattens the ramp)
    slope = 0.3
    cols = torch.arange(20, dtype=torch.float64) * slope
    x = cols.view(1, 1, 1, 20).expand(1, 1, 20, 20).contiguous()
    energy = oriented_energy(x, sigma=1.0)[0, 0]
    assert torch.allclose(
        energy[4:-4, 4:-4], torch.full((12, 12), slope**2, dtype=torch.float64), atol=1e-12
    )
    # the same ramp along the height: the vertical filter answers
    assert torch.allclose(
        oriented_energy(x.transpose(2, 3))[0, 0][4:-4, 4:-4], energy[4:-4, 4:-4].t(), atol=1e-12
    )


def test_kernels_are_sampled_gaussian_derivatives() -> None:
    sigma = 1.5
    g_u, g_v = gaussian_derivative_kernels(sigma, dtype=torch.float64)
    radius = math.ceil(3 * sigma)
    assert g_u.shape == (2 * radius + 1, 2 * radius + 1)
    gauss = [math.exp(-(t * t) / (2 * sigma**2)) for t in range(-radius, radius + 1)]
    total = sum(gauss)
    second = sum(t * t * g for t, g in zip(range(-radius, radius + 1), gauss, strict=True))
    for i, t_row in enumerate(range(-radius, radius + 1)):
        for j, t_col in enumerate(range(-radius, radius + 1)):
            expected = (gauss[i] / total) * (-t_col * gauss[j] / second)
            assert g_u[i, j].item() == pytest.approx(expected, abs=1e-15)
            assert g_v[j, i].item() == pytest.approx(expected, abs=1e-15)
        assert t_row == range(-radius, radius + 1)[i]


def test_gradcheck() -> None:
    x = torch.rand(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: oriented_energy(z, 0.8), (x,))


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match=r"NCHW batches, got shape \(3, 4\)"):
        oriented_energy(torch.zeros(3, 4))
    with pytest.raises(InputError, match="float images"):
        oriented_energy(torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(InputError, match="sigma must be a finite number > 0, got 0"):
        oriented_energy(torch.zeros(1, 1, 4, 4), sigma=0)
