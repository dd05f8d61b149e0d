"""StochasticDownsample against a hand-written Eq. 3 and its protocol guarantees."""

import math

import pytest
import torch
import torch.nn.functional as F

from robustlab.core import InputError
from robustlab.core.randomness import frozen, is_stochastic, resample
from robustlab.defenses.stochastic_downsampling import StochasticDownsample


def bilinear(fm: torch.Tensor, px: float, py: float) -> torch.Tensor:
    """F(px, py) of Eq. 3 written out: pixel k covers [k, k+1), border clamping. fm is (C, H, W)."""
    _, h, w = fm.shape
    tx = min(max(px - 0.5, 0.0), w - 1.0)
    ty = min(max(py - 0.5, 0.0), h - 1.0)
    x0, y0 = math.floor(tx), math.floor(ty)
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    ax, ay = tx - x0, ty - y0
    return ((1 - ax) * (1 - ay) * fm[:, y0, x0] + ax * (1 - ay) * fm[:, y0, x1]
            + (1 - ax) * ay * fm[:, y1, x0] + ax * ay * fm[:, y1, x1])


def eq3(x: torch.Tensor, jitter: torch.Tensor, oh: int, ow: int) -> torch.Tensor:
    """Eq. 3 with the given jitter (spp, oh, ow, 2) shared by the batch: a mean of bilinear samples."""
    n, c, h, w = x.shape
    ay, ax = h / oh, w / ow
    out = torch.zeros(n, c, oh, ow, dtype=x.dtype)
    for b in range(n):
        for u in range(oh):
            for v in range(ow):
                acc = torch.zeros(c, dtype=x.dtype)
                for i in range(jitter.shape[0]):
                    jx, jy = float(jitter[i, u, v, 0]), float(jitter[i, u, v, 1])
                    acc += bilinear(x[b], ax * (v + jx), ay * (u + jy))
                out[b, :, u, v] = acc / jitter.shape[0]
    return out


@pytest.mark.parametrize("shape,factor", [((2, 3, 8, 8), 2), ((1, 2, 7, 9), 2), ((2, 1, 12, 8), (3, 2))])
def test_fixed_jitter_equals_a_direct_evaluation_of_eq3(shape, factor):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    layer = StochasticDownsample(factor, spp=3)
    oh, ow = layer.output_size(shape[2], shape[3])
    jitter = torch.rand(3, oh, ow, 2, dtype=torch.float64)
    got = layer(x, jitter=jitter)
    torch.testing.assert_close(got, eq3(x, jitter, oh, ow), atol=1e-6, rtol=0)


def test_zero_jitter_and_one_sample_is_bilinear_sampling_at_the_grid_points():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    layer = StochasticDownsample(2, spp=1)
    got = layer(x, jitter=torch.zeros(1, 5, 5, 2, dtype=torch.float64))
    want = torch.stack([torch.stack([torch.stack([bilinear(x[b], 2.0 * v, 2.0 * u) for v in range(5)], -1)
                                     for u in range(5)], -2) for b in range(2)])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_deterministic_samples_centres_which_is_the_2x2_box_average():
    x = torch.randn(2, 4, 16, 12, dtype=torch.float64)
    layer = StochasticDownsample(2, spp=16, deterministic=True)
    assert not is_stochastic(layer)
    a, b = layer(x), layer(x)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, F.avg_pool2d(x, 2), atol=1e-12, rtol=0)
    x32 = x.float()
    torch.testing.assert_close(layer(x32), F.avg_pool2d(x32, 2), atol=1e-5, rtol=0)


def test_fresh_draw_every_forward_shared_by_batch_and_channels():
    layer = StochasticDownsample(2, spp=2)
    layer.seed(0)
    assert is_stochastic(layer)
    x = torch.randn(1, 1, 8, 8).expand(3, 5, 8, 8).contiguous()
    y1, y2 = layer(x), layer(x)
    assert not torch.equal(y1, y2)
    assert torch.equal(y1[0], y1[2])  # the same jitter for every sample of the batch
    per = StochasticDownsample(2, spp=2, per_sample=True)
    per.seed(0)
    z = per(x)
    assert not torch.equal(z[0], z[1])


def test_frozen_reuses_the_draw_and_resample_redraws():
    layer = StochasticDownsample(2, spp=2, jitter="normal", normal_std=0.3)
    x = torch.randn(2, 3, 8, 8)
    with frozen(layer):
        a, b = layer(x), layer(x)
        assert torch.equal(a, b)
        resample(layer)
        assert not torch.equal(layer(x), a)


def test_seeded_layers_repeat():
    a, b = StochasticDownsample(2), StochasticDownsample(2)
    a.seed(7)
    b.seed(7)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("reduction,op", [("sum", torch.sum), ("min", torch.amin), ("max", torch.amax)])
def test_reductions(reduction, op):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    jitter = torch.rand(4, 4, 4, 2, dtype=torch.float64)
    layer = StochasticDownsample(2, spp=4, reduction=reduction)
    singles = torch.stack([StochasticDownsample(2, spp=1)(x, jitter=jitter[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(layer(x, jitter=jitter), op(singles, dim=0))


def test_output_size_matches_a_strided_convolution_for_every_size():
    for size in range(1, 41):
        for k, s, p in ((3, 2, 1), (1, 2, 0), (2, 2, 0), (4, 4, 0), (7, 2, 3)):
            if size + 2 * p < k:
                continue
            x = torch.randn(1, 2, size, size + 1)
            strided = F.conv2d(x, torch.ones(2, 2, k, k), stride=s, padding=p)
            full = F.conv2d(x, torch.ones(2, 2, k, k), stride=1, padding=p)
            assert StochasticDownsample(s)(full).shape == strided.shape, (size, k, s, p)
    assert StochasticDownsample(size=(3, 5))(torch.randn(1, 1, 9, 9)).shape == (1, 1, 3, 5)


@pytest.mark.parametrize("memory_efficient", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradcheck(memory_efficient, reduction):
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    jitter = torch.rand(2, 3, 3, 2, dtype=torch.float64)
    layer = StochasticDownsample(2, spp=2, reduction=reduction, memory_efficient=memory_efficient)
    assert torch.autograd.gradcheck(lambda t: layer(t, jitter=jitter), (x,))


@pytest.mark.parametrize("per_sample", [False, True])
def test_in_place_backward_equals_the_autograd_loop(per_sample):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 9, 7, requires_grad=True)
    jitter = torch.rand(3, 8, 5, 4, 2) if per_sample else torch.rand(8, 5, 4, 2)
    w = torch.randn(3, 4, 5, 4)
    grads, outs = [], []
    for eff in (True, False):
        out = StochasticDownsample(2, spp=8, memory_efficient=eff)(x, jitter=jitter)
        (gx,) = torch.autograd.grad((out * w).sum(), x)
        grads.append(gx)
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-6)


def test_double_backward_needs_the_plain_loop():
    x = torch.randn(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    jitter = torch.rand(2, 3, 3, 2, dtype=torch.float64)
    plain = StochasticDownsample(2, spp=2, memory_efficient=False)
    assert torch.autograd.gradgradcheck(lambda t: plain(t, jitter=jitter) ** 2, (x,))
    (g,) = torch.autograd.grad((StochasticDownsample(2, spp=2)(x, jitter=jitter) ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice"):
        g.sum().backward()


def test_bad_arguments_are_clear_errors():
    with pytest.raises(InputError, match="not both"):
        StochasticDownsample(2, size=(3, 3))
    with pytest.raises(InputError, match="spp"):
        StochasticDownsample(2, spp=0)
    with pytest.raises(InputError, match="unknown jitter 'gauss'"):
        StochasticDownsample(2, jitter="gauss")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown reduction"):
        StochasticDownsample(2, reduction="median")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        StochasticDownsample(2)(torch.randn(3, 8, 8))
    with pytest.raises(InputError, match="jitter must have shape"):
        StochasticDownsample(2)(torch.randn(1, 1, 8, 8), jitter=torch.rand(2, 3, 3, 2))


def test_linked_layers_share_one_draw_per_forward_in_either_order():
    import copy

    from robustlab.defenses.stochastic_downsampling import SharedJitter

    # a ramp (value = column index) read by bilinear sampling returns the sample's x position,
    # so a layer's output on it shows its jitter: 2 (v + j) - 0.5 for output column v
    ramp = torch.arange(8, dtype=torch.float32).expand(1, 1, 8, 8).contiguous()
    main, shortcut = StochasticDownsample(2, spp=1), StochasticDownsample(2, spp=1)
    main.seed(1)
    shortcut.seed(2)
    a, b = main(ramp), shortcut(ramp)
    assert not torch.equal(a, b)  # unlinked: independent draws
    link = SharedJitter()
    main.jitter_link = shortcut.jitter_link = link
    a, b = main(ramp), shortcut(ramp)
    assert torch.equal(a, b)
    b2, a2 = shortcut(ramp), main(ramp)  # the other order: the shortcut draws, the main path takes
    assert torch.equal(a2, b2) and not torch.equal(a2, a)
    first, second = main(ramp), main(ramp)  # a layer never takes its own pending draw
    assert not torch.equal(first, second)
    assert torch.equal(shortcut(ramp), second)  # the partner takes the newest pending draw
    pair = torch.nn.ModuleList([main, shortcut])
    with frozen(pair):
        p, q = main(ramp), shortcut(ramp)
        assert torch.equal(p, q) and torch.equal(main(ramp), p) and torch.equal(shortcut(ramp), q)
        resample(pair)
        r, s = shortcut(ramp), main(ramp)
        assert torch.equal(r, s) and not torch.equal(r, p)
    twin = copy.deepcopy(pair)  # a copy links its own pair, not the original's
    assert twin[0].jitter_link is twin[1].jitter_link and twin[0].jitter_link is not link
    main(ramp)  # leaves a draw pending on the original link only
    assert torch.equal(twin[0](ramp), twin[1](ramp))
    assert "shared_jitter=True" in repr(main)
