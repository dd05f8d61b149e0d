"""RandomKernelConv2d and convert_dcs against hand-computed kernels, F.conv2d and the paper's rules."""

import pytest
import torch
import torch.nn.functional as F
from defense_helpers import reload_and_compare_draws
from torch import nn

import robustlab
from robustlab.core import InputError
from robustlab.core.randomness import frozen, is_stochastic, resample, seed_stochastic
from robustlab.defenses import CONVERSIONS, RandomKernelConv2d, convert_dcs, dcs_layers
from robustlab.defenses.dcs import gather_conv, masked_dense_conv


def effective_kernel(layer: RandomKernelConv2d) -> torch.Tensor:
    """The kernel the layer applied, read off its response to unit impulses (no bias, stride 1,
    one impulse per input channel): ``y[co, q + p - r, q + p - c] = K_eff[co, ci, r, c]``."""
    k, p = layer.kernel_size, layer.padding[0]
    size = 2 * k + 1
    q = size // 2
    x = torch.zeros(layer.in_channels, layer.in_channels, size, size, dtype=layer.weight.dtype)
    for ci in range(layer.in_channels):
        x[ci, ci, q, q] = 1.0
    with torch.no_grad():
        y = layer(x)  # (C_in impulses, C_out, H, W)
    kernel = torch.zeros(layer.out_channels, layer.in_channels, k, k, dtype=x.dtype)
    for r in range(k):
        for c in range(k):
            kernel[:, :, r, c] = y[:, :, q + p - r, q + p - c].T
    return kernel


def naive_dcs(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    positions: list[int],
    stride: int,
    padding: int,
) -> torch.Tensor:
    """Eq. 5 written out as loops: y_l = sum over the kept positions i of w(K_i) X_{i + l}."""
    n, c_in, h, w = x.shape
    k = weight.shape[-1]
    xp = F.pad(x, (padding,) * 4)
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    out = torch.zeros(n, weight.shape[0], ho, wo, dtype=x.dtype)
    for u in range(ho):
        for v in range(wo):
            for pos in positions:
                r, c = divmod(pos, k)
                patch = xp[:, :, u * stride + r, v * stride + c]  # (n, c_in)
                out[:, :, u, v] += patch @ weight[:, :, r, c].T
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


def test_a_sampled_kernel_keeps_exactly_n_positions_shared_across_channels():
    torch.manual_seed(0)
    for k, n in [(5, 2), (3, 4), (5, 7)]:
        layer = RandomKernelConv2d(3, 4, k, n, bias=False).double()
        patterns = set()
        for _ in range(6):
            with frozen(layer):
                kernel = effective_kernel(layer)
            nonzero = kernel != 0
            pattern = nonzero[0, 0]
            assert int(pattern.sum()) == n
            assert bool((nonzero == pattern).all())  # the same positions for every channel pair
            # the kept taps keep their weights
            torch.testing.assert_close(kernel, layer.weight.detach() * pattern)
            patterns.add(tuple(pattern.flatten().tolist()))
        assert len(patterns) > 1  # drawn afresh


def test_per_sample_draws_a_different_set_per_sample():
    torch.manual_seed(1)
    layer = RandomKernelConv2d(2, 2, 5, 2, bias=False, per_sample=True).double()
    x = torch.zeros(16, 2, 11, 11, dtype=torch.float64)
    x[:, :, 5, 5] = 1.0
    with torch.no_grad():
        y = layer(x)
    supports = [(y[b].abs().sum(0) != 0) for b in range(16)]
    assert all(int(s.sum()) == 2 for s in supports)
    assert len({tuple(s.flatten().tolist()) for s in supports}) > 1


def test_frozen_gives_identical_outputs_and_resample_a_new_path():
    torch.manual_seed(2)
    layer = RandomKernelConv2d(3, 5, 5, 2)
    x = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        assert not torch.equal(layer(x), layer(x))  # a new draw every forward by default
        with frozen(layer):
            first = layer(x)
            assert torch.equal(layer(x), first)
            # shared positions: one path for any batch size
            assert torch.equal(layer(x[:2]), first[:2])
            resample(layer)
            assert not torch.equal(layer(x), first)
    assert is_stochastic(layer)


def test_redraw_batch_holds_one_draw_until_resample():
    torch.manual_seed(3)
    layer = RandomKernelConv2d(3, 5, 5, 2, redraw="batch")
    x = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x), first)
        resample(layer)
        assert not torch.equal(layer(x), first)


@pytest.mark.parametrize("implementation", ["gather", "dense", "auto"])
@pytest.mark.parametrize(
    ("k", "stride", "padding", "dilation", "groups"),
    [(3, 1, 1, 1, 1), (3, 2, 0, 1, 2), (5, 2, 2, 1, 1), (3, 1, 2, 2, 3)],
)
def test_keeping_every_position_is_the_dense_conv(
    implementation, k, stride, padding, dilation, groups
):
    torch.manual_seed(4)
    layer = RandomKernelConv2d(
        6,
        12,
        k,
        k * k,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        implementation=implementation,
    ).double()
    x = torch.randn(2, 6, 10, 11, dtype=torch.float64)
    want = F.conv2d(x, layer.weight, layer.bias, stride, padding, dilation, groups)
    torch.testing.assert_close(layer(x), want, atol=1e-12, rtol=0)
    assert not is_stochastic(layer)


def test_gather_equals_the_masked_dense_conv_and_eq5_written_out():
    gen = torch.Generator().manual_seed(5)
    cases = [
        ((3, 8, 12, 12), 8, 5, 2, 1, 2),
        ((2, 4, 9, 7), 6, 5, 3, 2, 2),
        ((4, 6, 8, 8), 6, 3, 4, 1, 1),
    ]
    for shape, c_out, k, n, stride, padding in cases:
        x = torch.randn(*shape, generator=gen)
        weight = torch.randn(c_out, shape[1], k, k, generator=gen)
        bias = torch.randn(c_out, generator=gen)
        for rows in (1, shape[0]):  # shared and per-sample positions
            positions = torch.stack([torch.randperm(k * k, generator=gen)[:n] for _ in range(rows)])
            got = gather_conv(x, weight, bias, positions, (stride, stride), (padding, padding))
            dense = masked_dense_conv(
                x, weight, bias, positions, (stride, stride), (padding, padding)
            )
            torch.testing.assert_close(got, dense, atol=1e-5, rtol=0)
            for b in range(shape[0]):
                pos = positions[b if rows > 1 else 0].tolist()
                want = naive_dcs(
                    x[b : b + 1].double(), weight.double(), bias.double(), pos, stride, padding
                )
                torch.testing.assert_close(got[b : b + 1].double(), want, atol=1e-4, rtol=1e-5)


def test_gather_and_dense_have_the_same_gradients():
    torch.manual_seed(6)
    for per_sample in (False, True):
        gather = RandomKernelConv2d(
            4, 5, 5, 2, stride=2, per_sample=per_sample, implementation="gather"
        ).double()
        dense = RandomKernelConv2d(
            4, 5, 5, 2, stride=2, per_sample=per_sample, implementation="dense"
        ).double()
        dense.load_state_dict(gather.state_dict())
        seed_stochastic(gather, 11)
        seed_stochastic(dense, 11)
        x = torch.randn(3, 4, 9, 9, dtype=torch.float64, requires_grad=True)
        outs = [m(x) for m in (gather, dense)]
        assert torch.equal(gather.last_positions, dense.last_positions)
        grads = [
            torch.autograd.grad(o.square().sum(), [x, m.weight])
            for o, m in zip(outs, (gather, dense), strict=True)
        ]
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_gradcheck_and_gradgradcheck_float64_on_one_path():
    torch.manual_seed(7)
    for per_sample in (False, True):
        layer = RandomKernelConv2d(2, 3, 3, 2, stride=2, per_sample=per_sample).double()
        x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
        with frozen(layer):
            assert torch.autograd.gradcheck(lambda t, m=layer: m(t), (x,))
            assert torch.autograd.gradgradcheck(lambda t, m=layer: m(t), (x,))


def test_seeded_layers_repeat_bit_for_bit():
    layer = RandomKernelConv2d(3, 4, 5, 2)
    x = torch.randn(2, 3, 8, 8)
    layer.seed(42)
    first = [layer(x) for _ in range(3)]
    layer.seed(42)
    again = [layer(x) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_excluding_draws_only_from_the_complement():
    torch.manual_seed(8)
    layer = RandomKernelConv2d(2, 2, 3, 2, bias=False).double()
    banned = torch.tensor([0, 1, 2, 4, 6])
    for _ in range(30):
        with layer.excluding(banned):
            kernel = effective_kernel(layer)
        used = (kernel[0, 0] != 0).flatten().nonzero().flatten().tolist()
        assert len(used) == 2 and not set(used) & set(banned.tolist())
    with (
        pytest.raises(InputError, match="leaves 1 of the 9 window positions, fewer than n = 2"),
        layer.excluding(torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])),
    ):
        pass


def test_bad_inputs_are_clear_errors():
    with pytest.raises(InputError, match=r"n must be an int in \[1, k \* k = 25\], got 26"):
        RandomKernelConv2d(3, 3, 5, 26)
    with pytest.raises(InputError, match="unknown redraw 'epoch'; use one of forward, batch"):
        RandomKernelConv2d(3, 3, 5, 2, redraw="epoch")  # type: ignore[arg-type]
    layer = RandomKernelConv2d(3, 3, 5, 2)
    with pytest.raises(
        InputError, match=r"expects an \(N, 3, H, W\) tensor, got shape \(2, 4, 8, 8\)"
    ):
        layer(torch.randn(2, 4, 8, 8))
    model = robustlab.create_model("resnet-mini", num_classes=10, in_channels=1)
    with pytest.raises(InputError, match="layer index 99 is out of range"):
        convert_dcs(model, layers=[99])
    with pytest.raises(InputError, match="cannot centre a 3x3 kernel in a 4x4 DCS window"):
        convert_dcs(model, k=4)
    with pytest.raises(InputError, match="is not an nn.Conv2d"):
        convert_dcs(model, layers=["model.bn1"])


def _conv_named(model: nn.Module, name: str) -> nn.Conv2d:
    module = model.get_submodule(name)
    assert isinstance(module, nn.Conv2d)
    return module


@pytest.mark.parametrize(
    ("arch", "kwargs", "size"),
    [
        ("resnet18", {"widths": (8, 16, 16, 32)}, 16),
        ("wrn-34-10", {"depth": 10, "widen_factor": 1}, 16),
        ("torchvision:resnet18", {}, 32),
    ],
)
def test_convert_dcs_initializes_with_the_centre_padded_conv(arch, kwargs, size):
    torch.manual_seed(9)
    model = robustlab.create_model(arch, num_classes=10, in_channels=3, **kwargs).eval()
    second = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)][1]
    original = _conv_named(model, second)
    converted = convert_dcs(model).eval()
    layer = converted.get_submodule(second)
    assert isinstance(layer, RandomKernelConv2d) and layer.kernel_size == 5 and layer.n == 2
    assert dcs_layers(converted) == [layer]
    weight = layer.weight.detach()
    want = torch.zeros_like(weight)
    # a 3x3 kernel in the centre of the 5x5 window, zeros around
    want[:, :, 1:4, 1:4] = original.weight.detach()
    assert torch.equal(weight, want)
    assert layer.padding == (original.padding[0] + 1, original.padding[1] + 1)
    assert isinstance(_conv_named(model, second), nn.Conv2d)  # the original is untouched
    full = convert_dcs(model, k=5, n=25).eval()  # every position: the original network
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(full(x), model(x), atol=1e-5, rtol=1e-5)
        assert converted(x).shape == model(x).shape


def test_layers_by_index_and_name_and_a_strided_conv():
    model = robustlab.create_model(
        "resnet18", num_classes=10, in_channels=3, widths=(8, 16, 16, 32)
    )
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    strided = next(
        n
        for n in names
        if _conv_named(model, n).stride == (2, 2) and _conv_named(model, n).kernel_size == (3, 3)
    )
    converted = convert_dcs(model, layers=[3, strided], k=3, n=4)
    got = [name for name, m in converted.named_modules() if isinstance(m, RandomKernelConv2d)]
    assert got == sorted([names[2], strided], key=names.index)
    assert converted.get_submodule(strided).stride == (2, 2)
    assert converted.robustlab_recipe["conversions"][-1] == {
        "name": "dcs",
        "options": {"layers": [names[2], strided], "k": 3, "n": 4},
    }
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert converted.eval()(x).shape == (2, 10)


def test_save_load_rebuilds_dcs(tmp_path):
    torch.manual_seed(10)
    model = robustlab.create_model(
        "resnet18", num_classes=10, in_channels=3, widths=(8, 16, 16, 32)
    )
    converted = convert_dcs(model, k=5, n=3, per_sample=True).eval()
    assert "dcs" in CONVERSIONS
    again = reload_and_compare_draws(converted, tmp_path / "dcs.safetensors", (3, 3, 16, 16))
    layers = dcs_layers(again)
    assert len(layers) == 1 and layers[0].n == 3 and layers[0].per_sample
