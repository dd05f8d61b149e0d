"""Fashion-MNIST-C style corruptions: shapes, ranges, determinism, severity, bad input."""

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
    assert len(NAMES) == 15 and len(set(NAMES)) == 15
    assert set(NAMES) == set(CORRUPTIONS.names())
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


@pytest.mark.parametrize("name", NAMES)
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
