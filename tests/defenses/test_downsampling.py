"""convert_downsampling: shapes, equivalences, checkpoints, errors; the baseline downsamplers."""

import pytest
import torch
from torch import nn

import robustlab
from robustlab.core import InputError, UnknownNameError
from robustlab.core.randomness import is_stochastic, seed_stochastic
from robustlab.defenses import (
    METHODS,
    AddNoise,
    BlurPool,
    Downsampled,
    FLCPool,
    convert_downsampling,
)


def _shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, m in model.named_modules():
        def hook(_m, _i, out, name=name):  # type: ignore[no-untyped-def]
            if isinstance(out, torch.Tensor):
                shapes[name] = tuple(out.shape)
        hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return shapes


MODELS = [
    ("resnet-mini", 1, 28, {}),
    ("resnet18", 3, 32, {"widths": (8, 16, 16, 32)}),
    ("torchvision:resnet18", 3, 40, {}),
    ("torchvision:convnext_tiny", 3, 32, {}),
    ("timm:convnext_atto", 3, 32, {}),
]


@pytest.mark.parametrize("arch,cin,size,kw", MODELS, ids=[m[0] for m in MODELS])
def test_every_method_preserves_every_intermediate_shape(arch, cin, size, kw):
    torch.manual_seed(0)
    model = robustlab.create_model(arch, num_classes=10, in_channels=cin, **kw).eval()
    x = torch.rand(2, cin, size, size)
    before = _shapes(model, x)
    for method in METHODS:
        conv = convert_downsampling(model, method, include_pooling=arch.startswith("torchvision:resnet")).eval()
        n = sum(isinstance(m, Downsampled) for m in conv.modules())
        assert n > 0, method
        after = _shapes(conv, x)
        assert set(before) <= set(after)  # every original module name still answers
        for name in before:
            assert after[name] == before[name], (method, name)


def test_flc_and_asap_take_the_official_placement_before_the_conv(tmp_path):
    torch.manual_seed(0)
    model = robustlab.create_model("resnet-mini", num_classes=10, in_channels=1).eval()
    x = torch.rand(2, 1, 28, 28)
    before_shapes = _shapes(model, x)
    for method in ("flc", "asap"):
        after = convert_downsampling(model, method).eval()
        first = convert_downsampling(model, method, placement="before").eval()
        assert all(m.before for m in first.modules() if isinstance(m, Downsampled))
        assert not any(m.before for m in after.modules() if isinstance(m, Downsampled))
        shapes = _shapes(first, x)
        assert all(shapes[k] == v for k, v in before_shapes.items())
        with torch.no_grad():
            assert not torch.allclose(first(x), after(x))  # the order matters
        robustlab.save(first, tmp_path / f"{method}.safetensors")
        with torch.no_grad():
            assert torch.equal(robustlab.load(tmp_path / f"{method}.safetensors")(x), first(x))
    convnext = robustlab.create_model("torchvision:convnext_tiny", num_classes=10, in_channels=3)
    with pytest.raises(InputError, match="placement='before' needs convolutions whose stride-1 form keeps"):
        convert_downsampling(convnext, "flc", placement="before")  # 4x4 stride-4 stem, no padding
    with pytest.raises(InputError, match="placement must be 'after'"):
        convert_downsampling(model, "asap", placement="middle")
    with pytest.raises(InputError, match="bad option for downsampling method 'sd'"):
        convert_downsampling(model, "sd", placement="before")


def test_convnext_stem_and_downsample_layers_are_converted():
    model = robustlab.create_model("torchvision:convnext_tiny", num_classes=10, in_channels=3)
    conv = convert_downsampling(model, "sd")
    strides = sorted({m.stride for m in conv.modules() if isinstance(m, Downsampled)})
    assert strides == [(2, 2), (4, 4)]
    assert not any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in conv.modules())


def test_deterministic_sd_equals_the_avgpool_conversion():
    torch.manual_seed(0)
    model = robustlab.create_model("resnet-mini", num_classes=10, in_channels=1).eval()
    x = torch.rand(4, 1, 28, 28)
    sd = convert_downsampling(model, "sd", spp=8, deterministic=True).eval()
    avg = convert_downsampling(model, "avgpool").eval()
    assert not is_stochastic(sd)
    with torch.no_grad():
        torch.testing.assert_close(sd(x), avg(x), atol=1e-5, rtol=1e-5)


def test_conversion_keeps_weights_stage_strides_and_the_original(tmp_path):
    torch.manual_seed(0)
    model = robustlab.create_model("resnet-mini", num_classes=10, in_channels=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    conv = convert_downsampling(model, "sd")
    assert model.model.stage_strides == conv.model.stage_strides == (1, 2, 2)
    assert not any(isinstance(m, Downsampled) for m in model.modules())  # inplace=False
    weights = dict(conv.state_dict())
    for k, v in before.items():
        assert any(torch.equal(v, w) for w in weights.values()), k
    assert conv.robustlab_recipe["conversions"] == [
        {"name": "downsampling", "options": {"method": "sd", "include_pooling": False}}
    ]
    assert model.robustlab_recipe["conversions"] == []


def test_reload_rebuilds_the_conversion_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = robustlab.create_model("resnet-mini", num_classes=10, in_channels=1).eval()
    conv = convert_downsampling(model, "sd+addnoise", spp=4, std=0.1).eval()
    path = tmp_path / "sd.safetensors"
    robustlab.save(conv, path, dataset="fashion-mnist")
    again = robustlab.load(path)
    assert again.robustlab_recipe == conv.robustlab_recipe
    x = torch.rand(3, 1, 28, 28)
    seed_stochastic(conv, 5)
    seed_stochastic(again, 5)
    with torch.no_grad():
        a, b = conv(x), again(x)
        assert torch.equal(a, b)
        assert not torch.equal(conv(x), a)  # and it is random


def test_bad_requests_are_clear_errors():
    model = robustlab.create_model("resnet-mini", num_classes=10, in_channels=1)
    with pytest.raises(UnknownNameError, match="avgpool"):
        convert_downsampling(model, "maxblur")
    with pytest.raises(InputError, match="bad option for downsampling method 'sd'"):
        convert_downsampling(model, "sd", sigma=2)
    with pytest.raises(InputError, match="addnoise takes"):
        convert_downsampling(model, "addnoise", spp=2)
    with pytest.raises(InputError, match="no strided convolution"):
        convert_downsampling(nn.Sequential(nn.Conv2d(1, 2, 3)), "sd")


def test_downsamplers_keep_constants_and_noise_is_random():
    x = torch.full((2, 3, 8, 8), 0.7)
    torch.testing.assert_close(BlurPool(2)(x), torch.full((2, 3, 4, 4), 0.7))
    torch.testing.assert_close(FLCPool(2)(x), torch.full((2, 3, 4, 4), 0.7), atol=1e-6, rtol=0)
    assert FLCPool(2, window=True)(torch.rand(1, 1, 7, 9)).shape == (1, 1, 4, 5)
    noise = AddNoise(0.5, "uniform")
    a, b = noise(x), noise(x)
    assert not torch.equal(a, b) and (a - x).abs().max() <= 0.5
    assert not is_stochastic(AddNoise(0.0))
    with pytest.raises(InputError, match="unknown noise distribution"):
        AddNoise(0.1, "laplace")


def test_flc_keeps_the_low_frequencies_exactly():
    # a signal made of frequencies below the new Nyquist limit is subsampled without aliasing
    h = torch.arange(16, dtype=torch.float64)
    row = torch.cos(2 * torch.pi * 2 * h / 16)
    x = (row[None, :] * torch.ones(16, 1, dtype=torch.float64))[None, None]
    got = FLCPool(2)(x)
    torch.testing.assert_close(got, x[..., ::2, ::2], atol=1e-9, rtol=0)


def test_deterministic_twin_switches_randomness_off_and_leaves_the_original():
    from robustlab.defenses import deterministic_twin

    torch.manual_seed(0)
    model = robustlab.create_model("resnet-mini", num_classes=10, in_channels=1).eval()
    x = torch.rand(3, 1, 28, 28)
    avg = convert_downsampling(model, "avgpool").eval()
    for method in ("sd", "sd+addnoise"):
        conv = convert_downsampling(model, method).eval()
        twin = deterministic_twin(conv)
        assert is_stochastic(conv) and not is_stochastic(twin), method
        with torch.no_grad():
            a, b = twin(x), twin(x)
            assert torch.equal(a, b)
            # centre sampling at factor 2 is the 2x2 box average; the noise is off
            assert torch.allclose(a, avg(x), atol=1e-5), method
            assert not torch.equal(conv(x), conv(x))  # the original is still random
