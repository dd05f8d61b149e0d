"""Fashion-MNIST-C style corruptions: shapes, ranges, determinism, severity, bad input, and the
reference's (CIFAR-10-C, ``make_cifar_c.py``) parameters measured on images with known answers."""

import math

import pytest
import torch

from robustlab.core import InputError, UnknownNameError
from robustlab.data.corruptions import (
    CORRUPTIONS,
    GROUPS,
    NAMES,
    SEVERITIES,
    corrupt,
    corruption_seed,
)


def _images(n: int = 8, c: int = 1, size: int = 28) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # smooth shapes plus texture, like real images (a constant image hides blurs)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    blob = (1 - (xx**2 + yy**2)).clamp(0, 1)
    x = 0.6 * blob.expand(n, c, size, size) + 0.3 * torch.rand((n, c, size, size), generator=g)
    return x.clamp(0, 1)


def test_fifteen_corruptions_in_four_groups():
    # the reference's 15, in make_cifar_c.py's order (speckle, gaussian blur, spatter, saturate are extras)
    reference = ("gaussian-noise", "shot-noise", "impulse-noise", "defocus-blur", "glass-blur", "motion-blur",
                 "zoom-blur", "snow", "frost", "fog", "brightness", "contrast", "elastic-transform", "pixelate",
                 "jpeg-compression")
    assert reference == NAMES
    assert sorted(CORRUPTIONS.names()) == sorted(reference)
    assert [len(v) for v in GROUPS.values()] == [3, 4, 4, 4]
    assert SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("name", NAMES)
def test_shape_range_quantization_and_determinism(name):
    x = _images()
    a = corrupt(x, name, 3, torch.Generator().manual_seed(5))
    b = corrupt(x, name, 3, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.allclose(a * 255, (a * 255).round(), atol=1e-4)  # 8-bit levels
    assert torch.equal(a, b)
    assert float((a - x).abs().mean()) > 0.004  # it changes the images


def _stripes(n: int = 16, size: int = 28) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    blob = (1 - (xx**2 + yy**2)).clamp(0, 1)
    stripes = ((torch.arange(size) // 4) % 2).float().view(1, size)
    return (0.5 * blob + 0.3 * stripes).expand(n, 1, size, size).clamp(0, 1).contiguous()


# CIFAR-10-C's elastic severities trade a shrinking affine warp (8% of the size at severity 1,
# 3% at 5) for a growing elastic field, so severity 1 moves pixels *more* than 5; its parameters
# are tested directly below instead
@pytest.mark.parametrize("name", [n for n in NAMES if n != "elastic-transform"])
def test_severity_five_is_stronger_than_severity_one(name):
    # structured images: on pixel noise a stronger blur can *reduce* the change (glass blur)
    x = _stripes()
    d1 = float((corrupt(x, name, 1) - x).abs().mean())
    d5 = float((corrupt(x, name, 5) - x).abs().mean())
    assert d5 > d1, (d1, d5)


@pytest.mark.parametrize("name", ["gaussian-noise", "glass-blur", "frost", "elastic-transform"])
def test_random_corruptions_depend_on_the_generator(name):
    x = _images()
    a = corrupt(x, name, 4, torch.Generator().manual_seed(1))
    b = corrupt(x, name, 4, torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_rgb_and_other_sizes(name):
    x = _images(2, c=3, size=32)
    out = corrupt(x, name, 2)
    assert out.shape == (2, 3, 32, 32)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_quantize_off_keeps_float_levels():
    x = _images()
    out = corrupt(x, "gaussian-noise", 2, quantize=False)
    assert not torch.allclose(out * 255, (out * 255).round(), atol=1e-4)


def test_bad_input_errors():
    x = _images()
    with pytest.raises(UnknownNameError, match="gaussian-noise"):
        corrupt(x, "gaussian-nois", 1)
    with pytest.raises(InputError, match="severity must be one of 1, 2, 3, 4, 5"):
        corrupt(x, "fog", 0)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        corrupt(x * 255, "fog", 1)
    with pytest.raises(InputError, match="N, C, H, W"):
        corrupt(x[0], "fog", 1)


def test_corruption_seed_is_stable_and_distinct():
    seeds = {corruption_seed(n, s, 0) for n in NAMES for s in SEVERITIES}
    assert len(seeds) == 75
    assert corruption_seed("motion_blur", 2, 3) == corruption_seed("motion-blur", 2, 3)
    assert corruption_seed("fog", 1, 0) != corruption_seed("fog", 1, 1)


# make_cifar_c.py's parameters, typed in from the reference (not read from the module)
GAUSSIAN_STD = [0.04, 0.06, 0.08, 0.09, 0.10]
SHOT_PHOTONS = [500, 250, 100, 75, 50]
IMPULSE_AMOUNT = [0.01, 0.02, 0.03, 0.05, 0.07]


def test_noise_grows_with_severity_at_the_reference_levels():
    gray = torch.full((64, 1, 32, 32), 0.5)  # mid-gray: nothing clips, every impulse changes a value
    measured = {"gaussian-noise": [], "shot-noise": [], "impulse-noise": []}
    for sev in SEVERITIES:
        for name, values in measured.items():
            out = corrupt(gray, name, sev, torch.Generator().manual_seed(sev), quantize=False)
            values.append(float((out - gray).std()) if name != "impulse-noise" else float((out != gray).float().mean()))
    for name, values in measured.items():
        assert all(a < b for a, b in zip(values, values[1:], strict=False)), (name, values)
    # Gaussian: std c; Poisson with c photons per unit: std sqrt(0.5 / c); impulse: a fraction c
    want = {"gaussian-noise": GAUSSIAN_STD, "shot-noise": [math.sqrt(0.5 / c) for c in SHOT_PHOTONS],
            "impulse-noise": IMPULSE_AMOUNT}
    for name, values in measured.items():
        for got, ref in zip(values, want[name], strict=True):
            assert got == pytest.approx(ref, rel=0.03 if name != "impulse-noise" else 0.1), (name, values)


def test_motion_blur_kernel_by_hand():
    from robustlab.data.corruptions import _motion_kernels

    # radius 6: 2 * 6 + 1 = 13 taps i = 0..12, weights exp(-i^2 / 2) / sum for sigma 1
    weights = [math.exp(-(i**2) / 2) for i in range(13)]
    weights = [w / sum(weights) for w in weights]
    k = _motion_kernels(torch.tensor([0.0, 30.0]), 6, 1.0).double()
    assert k.shape == (2, 25, 25)  # offsets up to 12 pixels either way
    want = torch.zeros(25, 25, dtype=torch.float64)
    for i, w in enumerate(weights):  # angle 0: tap i at column +i of the centre row
        want[12, 12 + i] = w
    torch.testing.assert_close(k[0], want, atol=1e-7, rtol=0)
    # angle 30: (round(i cos 30), round(i sin 30)) with ImageMagick's ceil(v - 0.5), worked out:
    # i=1 (0.87, 0.5) -> (1, 0); i=2 (1.73, 1.0) -> (2, 1); i=3 (2.60, 1.5) -> (3, 1); i=4 (3.46, 2) -> (3, 2)
    for i, (dx, dy) in enumerate([(0, 0), (1, 0), (2, 1), (3, 1), (3, 2)]):
        assert float(k[1, 12 + dy, 12 + dx]) == pytest.approx(weights[i], abs=1e-7), i


@pytest.mark.parametrize("severity,radius,sigma", [(1, 6, 1.0), (3, 6, 2.0), (5, 9, 2.5)])
def test_motion_blur_spreads_a_point_along_a_ray_of_the_reference_length(severity, radius, sigma):
    n = 32
    x = torch.zeros(n, 1, 48, 48)
    x[:, :, 24, 24] = 1.0
    out = corrupt(x, "motion-blur", severity, torch.Generator().manual_seed(0), quantize=False)[:, 0].double()
    taps = 2 * math.ceil(radius) + 1
    peak = 1 / sum(math.exp(-(i**2) / (2 * sigma**2)) for i in range(taps))  # tap 0 stays on the pixel
    rising = falling = 0
    for img in out:
        assert float(img.sum()) == pytest.approx(1.0, abs=1e-5)  # the blur moves the mass, keeps it
        assert float(img[24, 24]) == pytest.approx(peak, rel=1e-4)
        ys, xs = torch.nonzero(img > 0, as_tuple=True)
        dx, dy = xs - 24, ys - 24
        # output (y, x) averages the input at (x + i cos a, y + i sin a), |a| <= 45 degrees: a point
        # spreads leftwards along the ray, |dy| <= |dx|, as far as (taps - 1) cos a
        assert bool((dx <= 0).all() and (dy.abs() <= dx.abs()).all())
        reach = int((-dx).max())
        assert round((taps - 1) * math.cos(math.pi / 4)) <= reach <= taps - 1, reach
        rising += int((dy[dx == dx.min()] < 0).any())
        falling += int((dy[dx == dx.min()] > 0).any())
    assert rising > 0 and falling > 0  # angles on both sides of the horizontal


def _coordinate_images(n: int, size: int) -> torch.Tensor:
    """Channel 0 a horizontal, channel 1 a vertical ramp in [0.25, 0.75]: bilinear resampling of a
    linear image is exact, so the output reads back where each pixel was sampled from."""
    ramp = 0.25 + 0.5 * torch.arange(size, dtype=torch.float32) / (size - 1)
    return torch.stack((ramp.view(1, size).expand(size, size), ramp.view(size, 1).expand(size, size)))[None].repeat(
        n, 1, 1, 1)


def _sampled_from(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    size = x.shape[-1]
    return ((out.double() - 0.25) * (size - 1) / 0.5)  # (N, 2, H, W): source x, source y


def _fit_affine(src: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares affine fit of the source coordinates over pixels [lo, hi)^2: (N, 2, 3), residuals."""
    ys, xs = torch.meshgrid(torch.arange(lo, hi, dtype=torch.float64), torch.arange(lo, hi, dtype=torch.float64),
                            indexing="ij")
    design = torch.stack((xs.flatten(), ys.flatten(), torch.ones(xs.numel(), dtype=torch.float64)), 1)
    target = src[..., lo:hi, lo:hi].flatten(2).transpose(1, 2)  # (N, P, 2)
    coef = torch.linalg.lstsq(design.expand(len(src), -1, -1), target).solution  # (N, 3, 2)
    return coef.transpose(1, 2), target - design @ coef


@pytest.mark.parametrize("size", [32, 28])
def test_elastic_severity_one_is_the_reference_affine_warp(size):
    n = 96
    x = _coordinate_images(n, size)
    out = corrupt(x, "elastic-transform", 1, torch.Generator().manual_seed(0), quantize=False)
    src = _sampled_from(x, out)
    lo, hi = size * 3 // 10, size - size * 3 // 10  # the centre, where no sample leaves the image
    coef, residual = _fit_affine(src, lo, hi)
    assert float(residual.abs().max()) < 1e-3  # alpha = 0 at severity 1: nothing but the affine warp
    # the reference moves the points (c+d, c+d), (c+d, c-d), (c-d, c-d), c = size // 2, d = size // 3,
    # by U(-0.08 * size, 0.08 * size) each and warps with that map: the output at p is the input
    # at M^-1 p. Invert the fitted M^-1 and read the moves back
    inverse = torch.cat((coef, torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64).expand(n, 1, 3)), 1)
    forward = torch.linalg.inv(inverse)[:, :2]
    c, d = size // 2, size // 3
    points = torch.tensor([[c + d, c + d, 1.0], [c + d, c - d, 1.0], [c - d, c - d, 1.0]], dtype=torch.float64)
    moves = (forward @ points.T).transpose(1, 2) - points[:, :2]  # (N, 3, 2)
    bound = 0.08 * size
    assert float(moves.abs().max()) <= bound + 1e-3
    assert float(moves.abs().max()) > 0.9 * bound  # and they fill the range: U(-bound, bound)
    assert float(moves.std()) == pytest.approx(bound / math.sqrt(3), rel=0.12)


def test_elastic_severity_five_adds_the_reference_displacement_field():
    n, size = 64, 32
    x = _coordinate_images(n, size)
    out = corrupt(x, "elastic-transform", 5, torch.Generator().manual_seed(0), quantize=False)
    _, residual = _fit_affine(_sampled_from(x, out), 7, size - 7)
    # on top of an affine warp, alpha * G_sigma * U(-1, 1) per axis with alpha = 0.1 * 32 = 3.2 and
    # sigma = 0.03 * 32 = 0.96 (Gaussian truncated at 3 sigma: radius int(3 * 0.96 + 0.5) = 3). A
    # filtered white noise of std 1/sqrt(3) has std ||k||_2 / sqrt(3); for a separable 2-D kernel
    # ||k||_2 = ||k1||_2^2
    k1 = [math.exp(-0.5 * (t / 0.96) ** 2) for t in range(-3, 4)]
    norm_sq = sum(v * v for v in k1) / sum(k1) ** 2
    want = 3.2 * norm_sq / math.sqrt(3)
    assert float(residual.std()) == pytest.approx(want, rel=0.1)
