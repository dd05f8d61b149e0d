"""convert_downsampling: shapes, equivalences, checkpoints, errors; the baseline downsamplers."""

import math

import pytest
import torch
from defense_helpers import reload_and_compare_draws
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


def _mini() -> nn.Module:
    """A fresh (untrained, train-mode) resnet-mini for 1-channel 28x28 images."""
    return robustlab.create_model("resnet-mini", num_classes=10, in_channels=1)


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
    model = _mini().eval()
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
    model = _mini().eval()
    x = torch.rand(4, 1, 28, 28)
    sd = convert_downsampling(model, "sd", spp=8, deterministic=True).eval()
    avg = convert_downsampling(model, "avgpool").eval()
    assert not is_stochastic(sd)
    with torch.no_grad():
        torch.testing.assert_close(sd(x), avg(x), atol=1e-5, rtol=1e-5)


def _as_if_trained(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every weight and BatchNorm statistic distinct random values (an untrained net's BN
    buffers are all 0 and 1, so comparing them shows nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            values = torch.rand(t.shape, generator=g)
            t.copy_(0.5 + values if name.endswith("running_var") else 0.2 * values - 0.1 if "weight" in name
                    else values - 0.5)
    return model


def test_conversion_copies_trained_weights_and_bn_statistics_exactly():
    torch.manual_seed(0)
    model = _as_if_trained(_mini()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.allclose(before["model.bn1.running_var"], torch.ones(16))
    conv = convert_downsampling(model, "blurpool", filter_size=1).eval()
    # a stride-s conv is its stride-1 form read at every s-th pixel, and a 1-tap blur is exactly
    # that reading: the converted net must reproduce the original's outputs, which it only does
    # if every weight and BN statistic came across unchanged
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), model(x), atol=1e-5, rtol=1e-5)
    weights = conv.state_dict()
    for k, v in before.items():  # name by name: converted convs hold theirs under ".op"
        module, _, leaf = k.rpartition(".")
        assert torch.equal(weights[k if k in weights else f"{module}.op.{leaf}"], v), k
    assert model.model.stage_strides == conv.model.stage_strides == (1, 2, 2)
    assert not any(isinstance(m, Downsampled) for m in model.modules())  # inplace=False
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert conv.robustlab_recipe["conversions"] == [
        {"name": "downsampling", "options": {"method": "blurpool", "include_pooling": False, "filter_size": 1}}
    ]
    assert model.robustlab_recipe["conversions"] == []


def test_reload_rebuilds_the_conversion_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = _mini().eval()
    conv = convert_downsampling(model, "sd+addnoise", spp=4, std=0.1).eval()
    reload_and_compare_draws(conv, tmp_path / "sd.safetensors", (3, 1, 28, 28), dataset="fashion-mnist")


def test_bad_requests_are_clear_errors():
    model = _mini()
    with pytest.raises(UnknownNameError, match="avgpool"):
        convert_downsampling(model, "maxblur")
    with pytest.raises(InputError, match="bad option for downsampling method 'sd'"):
        convert_downsampling(model, "sd", sigma=2)
    with pytest.raises(InputError, match="addnoise takes"):
        convert_downsampling(model, "addnoise", spp=2)
    with pytest.raises(InputError, match="no strided convolution"):
        convert_downsampling(nn.Sequential(nn.Conv2d(1, 2, 3)), "sd")


def _hamming(n: int, k: int) -> float:
    """The symmetric Hamming window's k-th of n values (numpy.hamming, the official ASAP's)."""
    return 0.54 - 0.46 * math.cos(2 * math.pi * k / (n - 1))


def test_low_pass_downsamplers_keep_dc_and_remove_the_nyquist_checkerboard():
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    checker = ((-1.0) ** (i + j)).to(torch.float64)
    x = (0.5 + 0.25 * checker)[None, None]
    # plain subsampling aliases the checkerboard into a constant 0.75 ...
    torch.testing.assert_close(x[..., ::2, ::2], torch.full((1, 1, 4, 4), 0.75, dtype=torch.float64))
    # ... a low-pass downsampler keeps only the mean 0.5: [1, 2, 1] / 4 cancels +-1 alternation,
    # FLC's crop drops the Nyquist bin, avgpool averages two +1 and two -1
    half = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    torch.testing.assert_close(BlurPool(2)(x), half, atol=1e-12, rtol=0)
    torch.testing.assert_close(FLCPool(2)(x), half, atol=1e-6, rtol=0)
    torch.testing.assert_close(nn.AvgPool2d(2)(x), half, atol=1e-12, rtol=0)
    # ASAP also drops the Nyquist bin, and its window scales the DC term by the window's centre
    # value: 1 on odd sizes, sqrt(h(4) * h(4)) = h(4) = 0.954 on 8x8 (numpy.hamming, as the official code)
    torch.testing.assert_close(FLCPool(2, window=True)(x), half * _hamming(8, 4), atol=1e-6, rtol=0)
    odd = torch.full((1, 1, 7, 9), 0.3, dtype=torch.float64)
    torch.testing.assert_close(FLCPool(2, window=True)(odd), torch.full((1, 1, 4, 5), 0.3, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    # a frequency below the new Nyquist limit survives ASAP, scaled by the window at its bins: the
    # centred spectrum holds cos's +1 and -1 cycles at columns 5 and 3 (DC at 4), row 4; the
    # symmetric window is not centred on index 4, so they get sqrt(h4 h5) and sqrt(h4 h3), and
    # the real part of their sum is the cosine times the mean of the two
    row = torch.cos(2 * torch.pi * torch.arange(8, dtype=torch.float64) / 8)  # 1 cycle per 8 px
    wave = (row[None, :] * torch.ones(8, 1, dtype=torch.float64))[None, None]
    h3, h4, h5 = _hamming(8, 3), _hamming(8, 4), _hamming(8, 5)
    want = wave[..., ::2, ::2] * (math.sqrt(h4 * h5) + math.sqrt(h4 * h3)) / 2
    torch.testing.assert_close(FLCPool(2, window=True)(wave), want, atol=1e-6, rtol=0)


def test_downsamplers_keep_constants_and_noise_is_random():
    x = torch.full((2, 3, 8, 8), 0.7)
    torch.testing.assert_close(BlurPool(2)(x), torch.full((2, 3, 4, 4), 0.7))
    torch.testing.assert_close(FLCPool(2)(x), torch.full((2, 3, 4, 4), 0.7), atol=1e-6, rtol=0)
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
    model = _mini().eval()
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


def _conv_bn_relu() -> nn.Sequential:
    """A 1x1 stride-2 conv of weight 1, BN(y) = y - 0.5 (eval), ReLU."""
    net = nn.Sequential(nn.Conv2d(1, 1, 1, stride=2, bias=False), nn.BatchNorm2d(1, eps=0.0), nn.ReLU())
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[1].running_mean.fill_(0.5)
    return net.eval()


def test_blurpool_after_activation_is_zhangs_conv_bn_relu_blur_by_hand():
    x = torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])[None, None]
    net = _conv_bn_relu()
    # ReLU(BN(x)) = ReLU(x - 0.5) = x / 2 on this 0/1 image; the [1, 2, 1]^2 / 16 blur with
    # reflect padding (row/col -1 reads row/col 1), read at the even pixels:
    #   (0, 0): all nine taps are 1                      -> 16/16 -> 1/2 * 1     = 0.5
    #   (0, 2): taps (0,1) w2, (1,1) w1 twice            ->  4/16 -> 1/2 * 0.25  = 0.125
    #   (2, 0): the transpose                                                     = 0.125
    #   (2, 2): taps (1,1) and (3,3), w1 each            ->  2/16 -> 1/2 * 0.125 = 0.0625
    zhang = convert_downsampling(net, "blurpool", placement="after-activation").eval()
    want = torch.tensor([[0.5, 0.125], [0.125, 0.0625]])[None, None]
    with torch.no_grad():
        torch.testing.assert_close(zhang(x), want, atol=1e-7, rtol=0)
        # the default blurs before BN-ReLU: ReLU(blur(x) - 0.5) = ReLU([[1, .25], [.25, .125]] - .5)
        after = convert_downsampling(net, "blurpool").eval()
        torch.testing.assert_close(after(x), torch.tensor([[0.5, 0.0], [0.0, 0.0]])[None, None], atol=1e-7, rtol=0)
        # and the original reads x at the even pixels: ReLU([[1, 0], [0, 0]] - 0.5)
        torch.testing.assert_close(net(x), torch.tensor([[0.5, 0.0], [0.0, 0.0]])[None, None])
    assert isinstance(zhang[0], Downsampled) and isinstance(zhang[1], nn.Identity)
    assert [type(m) for m in zhang[0].op] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] and zhang[0].op[0].stride == (1, 1)
    assert isinstance(zhang[0].down, BlurPool) and zhang[0].stride == (2, 2)


def test_blurpool_after_activation_on_resnets_reloads_and_keeps_shortcuts_zhangs(tmp_path):
    torch.manual_seed(0)
    model = _as_if_trained(_mini()).eval()
    zhang = convert_downsampling(model, "blurpool", placement="after-activation").eval()
    block = zhang.model.layer2[0]
    assert isinstance(block.conv1.op, nn.Sequential) and isinstance(block.bn1, nn.Identity)
    assert block.stride == 2 and zhang.model.stage_strides == (1, 2, 2)
    # the 1x1 shortcut conv is followed by BN and the residual sum, not a ReLU: default placement
    assert isinstance(block.shortcut[0].op, nn.Conv2d) and isinstance(block.shortcut[1], nn.BatchNorm2d)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(zhang(x), convert_downsampling(model, "blurpool").eval()(x))
    path = tmp_path / "zhang.safetensors"
    robustlab.save(zhang, path)
    again = robustlab.load(path)
    assert again.robustlab_recipe["conversions"][-1]["options"]["placement"] == "after-activation"
    with torch.no_grad():
        assert torch.equal(again(x), zhang(x))

    tv = convert_downsampling(robustlab.create_model("torchvision:resnet18", num_classes=10), "blurpool",
                              placement="after-activation").eval()
    net = tv.model
    assert isinstance(net.conv1.op, nn.Sequential) and isinstance(net.bn1, nn.Identity)  # the stem too
    assert isinstance(net.layer2[0].conv1.op, nn.Sequential) and isinstance(net.layer2[0].bn1, nn.Identity)
    shortcut = net.layer2[0].downsample[0]
    assert isinstance(shortcut.op, nn.Conv2d) and shortcut.op.kernel_size == (1, 1)
    # Zhang's own shortcut blurs first, then applies the 1x1 conv: the same map (they commute)
    feats = torch.rand(2, 64, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(shortcut(feats), shortcut.op(BlurPool(2)(feats)), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert tv(torch.rand(1, 3, 40, 40)).shape == (1, 10)


def test_blurpool_placement_errors():
    model = _mini()
    with pytest.raises(InputError, match="blurpool placement must be 'after'"):
        convert_downsampling(model, "blurpool", placement="before")
    with pytest.raises(InputError, match="placement must be 'after'"):
        convert_downsampling(model, "flc", placement="after-activation")

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(self.conv(x))
            return torch.relu(y) if y.sum() > 0 else y  # data-dependent: torch.fx cannot trace it

    with pytest.raises(InputError, match="tracing the forward with torch.fx"):
        convert_downsampling(Branchy(), "blurpool", placement="after-activation")


def _jitter_readouts(model: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """Run ``model`` on ``x`` with each layer's input replaced by a horizontal ramp (value = column
    index): bilinear sampling of a ramp returns the sample's x position, so each output reads
    that layer's jitter."""
    outs: list[torch.Tensor] = []
    hooks = []
    for layer in layers:
        def ramp(_m, args):  # type: ignore[no-untyped-def]
            (inp,) = args
            return (torch.arange(inp.shape[-1], dtype=inp.dtype).expand_as(inp).contiguous(),)

        hooks.append(layer.register_forward_pre_hook(ramp))
        hooks.append(layer.register_forward_hook(lambda _m, _i, out: outs.append(out[:, 0].clone())))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outs


@pytest.mark.parametrize("arch,cin,size", [("resnet-mini", 1, 28), ("preact-resnet18", 3, 32)])
def test_shortcut_shares_the_main_paths_jitter_only_when_asked(arch, cin, size, tmp_path):
    from robustlab.core.randomness import frozen, resample
    from robustlab.defenses import StochasticDownsample

    torch.manual_seed(0)
    kw = {"widths": (8, 16, 16, 32)} if arch.startswith("preact") else {}
    model = robustlab.create_model(arch, num_classes=10, in_channels=cin, **kw).eval()
    x = torch.rand(2, cin, size, size)
    # the pre-activation block runs its shortcut before its main path: the order must not matter
    for mode in ("shared", "independent"):
        conv = convert_downsampling(model, "sd", spp=1, shortcut_jitter=mode).eval()
        seed_stochastic(conv, 3)
        block = conv.model.layer2[0]
        main, short = block.conv1.down, block.shortcut[0].down
        assert isinstance(main, StochasticDownsample) and isinstance(short, StochasticDownsample)
        for _ in range(2):  # fresh jitter each forward, shared (or not) each time
            a, b = _jitter_readouts(conv, [main, short], x)
            # ramp samples at 2 (v + j) - 0.5 for a jitter j in [0, 1): inside each pixel's footprint
            v = torch.arange(a.shape[-1], dtype=a.dtype)
            assert bool(((a >= (2 * v - 0.5).clamp(min=0)) & (a <= 2 * v + 1.5)).all())
            assert torch.equal(a, b) == (mode == "shared"), mode
        if mode == "shared":
            assert conv.robustlab_recipe["conversions"][-1]["options"]["shortcut_jitter"] == "shared"
            with frozen(conv):  # one path: the same shared draw on every forward until resample
                first = _jitter_readouts(conv, [main, short], x)
                again = _jitter_readouts(conv, [main, short], x)
                assert all(torch.equal(p, q) for p, q in zip(first, again, strict=True))
                resample(conv)
                new = _jitter_readouts(conv, [main, short], x)
                assert torch.equal(new[0], new[1]) and not torch.equal(new[0], first[0])
            path = tmp_path / f"{arch}.safetensors"
            robustlab.save(conv, path)
            loaded = robustlab.load(path)
            seed_stochastic(conv, 7)
            seed_stochastic(loaded, 7)
            with torch.no_grad():
                assert torch.equal(loaded(x), conv(x))
            lb = loaded.model.layer2[0]
            assert lb.conv1.down.jitter_link is lb.shortcut[0].down.jitter_link is not None
        else:
            assert "shortcut_jitter" not in conv.robustlab_recipe["conversions"][-1]["options"]
            assert main.jitter_link is None and short.jitter_link is None


def test_shortcut_jitter_errors_and_warning():
    model = _mini()
    with pytest.raises(InputError, match="shortcut_jitter must be 'independent'"):
        convert_downsampling(model, "sd", shortcut_jitter="same")
    with pytest.raises(InputError, match="applies to sd and sd\\+addnoise, not 'blurpool'"):
        convert_downsampling(model, "blurpool", shortcut_jitter="shared")
    with pytest.warns(UserWarning, match="no strided 1x1 shortcut conv"):
        convert_downsampling(robustlab.create_model("resnet32", num_classes=10), "sd", shortcut_jitter="shared")


def test_blurpool_filter_size_is_bounded() -> None:
    # a recipe (e.g. a crafted checkpoint header) could name any filter size; comb() over a
    # huge one would burn CPU before any shape check
    assert BlurPool(2, 16).filter_size == 16
    for bad in (0, 17, 10**9, 2.5, True):
        with pytest.raises(InputError, match=r"filter_size must be an int in \[1, 16\]"):
            BlurPool(2, bad)  # type: ignore[arg-type]
