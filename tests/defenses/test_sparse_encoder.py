"""SparseEncoder against hand-written Eq. 2-3 / Eq. 9-10 and its protocol guarantees."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustlab.core import InputError
from robustlab.core.bpda import bpda
from robustlab.core.randomness import frozen, is_stochastic, resample
from robustlab.defenses.sparse_encoder import SparseEncoder, TernaryQuantizer


def unit_atoms(atoms: int, channels: int, n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(atoms, channels * n * n, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    return d.reshape(atoms, channels, n, n).to(dtype)


def images(n: int, channels: int = 1, size: int = 10, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def encoder(dictionary: torch.Tensor, *, seed: int | None = 0, **kw: object) -> SparseEncoder:
    opts: dict = {"stride": 2, "top_t": 5, "dropout_p": 0.5, "eps": 0.05, "beta": 3.0}
    opts.update(kw)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return SparseEncoder(dictionary, generator=gen, **opts)


def loop_projection(x: torch.Tensor, d: torch.Tensor, stride: int) -> torch.Tensor:
    """D^T x_ij written out patch by patch (Sec. 2.2)."""
    n = d.shape[-1]
    m_h = (x.shape[2] - n) // stride + 1
    m_w = (x.shape[3] - n) // stride + 1
    out = torch.zeros(x.shape[0], d.shape[0], m_h, m_w, dtype=x.dtype)
    flat = d.flatten(1).to(x.dtype)
    for b in range(x.shape[0]):
        for i in range(m_h):
            for j in range(m_w):
                patch = x[b, :, i * stride:i * stride + n, j * stride:j * stride + n].reshape(-1)
                out[b, :, i, j] = flat @ patch
    return out


def test_shape_and_projection_matches_patch_loop() -> None:
    d = unit_atoms(12, 2, 3)
    enc = encoder(d, top_t=4)
    x = images(2, channels=2, size=9, dtype=torch.float64)
    out = enc(x)
    assert out.shape == (2, 12, 4, 4)
    torch.testing.assert_close(enc.project(x), loop_projection(x, d, 2))


def test_top_t_keeps_exactly_t_per_patch_and_the_largest() -> None:
    d = unit_atoms(20, 1, 4)
    enc = encoder(d, top_t=7, dropout_p=0.0, beta=0.0)
    x = images(3, size=12, dtype=torch.float64)
    code = enc.sparse_code(x)
    assert torch.equal((code != 0).sum(dim=1), torch.full((3, 5, 5), 7))
    out = enc(x)  # beta = 0: quantization keeps every survivor
    assert torch.equal((out != 0).sum(dim=1), torch.full((3, 5, 5), 7))
    # the survivors are the 7 largest |projections| (checked from the loop projection)
    proj = loop_projection(x, d, 2)
    kth = proj.abs().sort(dim=1, descending=True).values[:, 6:7]
    assert torch.equal(code != 0, proj.abs() >= kth)


def test_quantization_matches_eq3_per_atom_l1() -> None:
    d = unit_atoms(10, 1, 3, dtype=torch.float64)
    eps, beta = 0.02, 2.0
    enc = encoder(d, top_t=10, dropout_p=0.0, eps=eps, beta=beta)
    x = images(2, size=7, dtype=torch.float64)
    proj = loop_projection(x, d, 2)
    l1 = d.flatten(1).abs().sum(dim=1).view(1, -1, 1, 1)
    expected = torch.where(proj.abs() / (eps * l1) >= beta, torch.sign(proj) * l1, torch.zeros_like(proj))
    assert (expected == 0).any() and (expected != 0).any()  # the dead zone bites in this case
    torch.testing.assert_close(enc(x), expected)


def test_dropout_rate_and_fresh_draws() -> None:
    d = unit_atoms(30, 1, 4)
    enc = encoder(d, top_t=10, dropout_p=0.75, beta=0.0)
    assert is_stochastic(enc)
    x = images(8, size=20)
    kept = (enc.sparse_code(x) != 0).float().sum(dim=1)  # of 10 per patch
    assert abs(float(kept.mean()) - 10 * 0.25) < 0.3
    assert not torch.equal(enc(x), enc(x))


def test_frozen_repeats_and_resample_changes() -> None:
    enc = encoder(unit_atoms(30, 1, 4), top_t=10, dropout_p=0.5, beta=0.0)
    x = images(4, size=12)
    with frozen(enc):
        assert not is_stochastic(enc)
        a, b = enc(x), enc(x)
        assert torch.equal(a, b)
        resample(enc)
        c = enc(x)
        assert not torch.equal(a, c)
        assert torch.equal(c, enc(x))


def test_determinism_under_seeded_generator() -> None:
    d = unit_atoms(30, 1, 4)
    x = images(4, size=12)
    a = encoder(d, seed=123, top_t=10, beta=0.0)
    b = encoder(d, seed=123, top_t=10, beta=0.0)
    c = encoder(d, seed=124, top_t=10, beta=0.0)
    first, second = [a(x), a(x)], [b(x), b(x)]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], c(x))
    a.seed(7)
    b.seed(7)
    assert torch.equal(a(x), b(x))


def test_keep_sign_false_is_abs_of_default() -> None:
    d = unit_atoms(16, 1, 4)
    x = images(3, size=12)
    signed = encoder(d, seed=5, top_t=6, eps=0.01, beta=2.0)
    unsigned = encoder(d, seed=5, top_t=6, eps=0.01, beta=2.0, keep_sign=False)
    a, b = signed(x), unsigned(x)
    assert (a < 0).any()  # the default really keeps signs
    assert torch.equal(b, a.abs())


def test_no_dropout_is_deterministic() -> None:
    enc = encoder(unit_atoms(16, 1, 4), dropout_p=0.0)
    assert not is_stochastic(enc)
    x = images(2, size=12)
    assert torch.equal(enc(x), enc(x))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    eps=st.floats(0.005, 0.1),
    beta=st.floats(1.01, 4.0),
)
def test_no_sign_flip_inside_eps_ball_when_beta_above_one(seed: int, eps: float, beta: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    d = unit_atoms(24, 1, 4, seed=seed % 97, dtype=torch.float64)
    enc = encoder(d, seed=seed, top_t=8, dropout_p=0.3, eps=eps, beta=beta)
    x = torch.rand(2, 1, 10, 10, generator=gen, dtype=torch.float64)
    # a perturbation at the corners of the eps-ball (the worst case for Hoelder), clipped to [0, 1]
    delta = eps * torch.sign(torch.rand(x.shape, generator=gen, dtype=torch.float64) - 0.5)
    x_adv = (x + delta).clamp(0, 1)
    assert float((x_adv - x).abs().max()) <= eps + 1e-12
    with frozen(enc):
        clean, adv = enc(x), enc(x_adv)
    assert not bool((clean * adv < 0).any())


def test_sign_flips_possible_when_beta_below_one() -> None:
    """The property above can fail: with a dead zone below the Hoelder bound signs do flip."""
    d = unit_atoms(24, 1, 4, dtype=torch.float64)
    eps = 0.1
    enc = encoder(d, top_t=24, dropout_p=0.0, eps=eps, beta=0.0)
    x = images(4, size=10, dtype=torch.float64)
    # push each coefficient toward the opposite sign with the worst-case l_inf step for atom 0
    atom = d[0, 0]
    proj = enc.project(x)[:, 0]
    steer = -torch.sign(proj).mean()
    x_adv = (x + eps * torch.sign(atom).repeat(3, 3)[:10, :10] * steer).clamp(0, 1)
    flips = (enc(x) * enc(x_adv) < 0).sum()
    assert int(flips) > 0


def eq9(x: torch.Tensor, l1: torch.Tensor, eps: float, beta: float, sigma: float) -> torch.Tensor:
    a = beta * eps * l1
    sech2 = lambda z: 1.0 / torch.cosh(z) ** 2  # noqa: E731
    return l1 / (2 * sigma) * (sech2((x - a) / sigma) + sech2((x + a) / sigma))


def eq10(x: torch.Tensor, l1: torch.Tensor, eps: float, beta: float, sigma: float) -> torch.Tensor:
    a = beta * eps * l1
    return l1 / 2 * (torch.tanh((x - a) / sigma) + torch.tanh((x + a) / sigma))


def test_smooth_surrogate_derivative_matches_eq9() -> None:
    eps, beta, sigma = 0.1, 3.0, 0.25
    l1 = torch.tensor([1.0, 2.5, 3.7], dtype=torch.float64)
    quant = TernaryQuantizer(l1, eps, beta, sigma=sigma)
    x = torch.linspace(-3, 3, 41, dtype=torch.float64).view(1, 1, 1, -1).repeat(1, 3, 2, 1)
    l1v = l1.view(1, -1, 1, 1)
    # the surrogate is Eq. 10
    torch.testing.assert_close(quant.surrogate(x), eq10(x, l1v, eps, beta, sigma))
    # central finite differences of the surrogate agree with Eq. 9
    h = 1e-6
    fd = (quant.surrogate(x + h) - quant.surrogate(x - h)) / (2 * h)
    torch.testing.assert_close(fd, eq9(x, l1v, eps, beta, sigma), rtol=1e-6, atol=1e-6)
    # and bpda(..., "smooth") runs the exact forward with exactly that gradient
    xr = x.clone().requires_grad_(True)
    with bpda(quant, "smooth"):
        out = quant(xr)
    torch.testing.assert_close(out, quant.forward_exact(x), rtol=0, atol=0)
    out.sum().backward()
    assert xr.grad is not None
    torch.testing.assert_close(xr.grad, eq9(x, l1v, eps, beta, sigma), rtol=1e-10, atol=1e-12)


def test_surrogate_gradcheck_float64() -> None:
    for keep_sign in (True, False):
        quant = TernaryQuantizer(torch.tensor([1.5, 2.0], dtype=torch.float64), 0.1, 3.0, keep_sign=keep_sign)
        x = torch.randn(1, 2, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        assert torch.autograd.gradcheck(quant.surrogate, (x.requires_grad_(True),))


def test_unsigned_smooth_surrogate_approximates_abs_quantizer() -> None:
    quant = TernaryQuantizer(torch.tensor([2.0], dtype=torch.float64), 0.1, 3.0, sigma=0.01, keep_sign=False)
    x = torch.tensor([-2.0, -1.0, -0.2, 0.2, 1.0, 2.0], dtype=torch.float64).view(1, 1, 1, -1)
    torch.testing.assert_close(quant.surrogate(x), quant.forward_exact(x), rtol=0, atol=1e-6)


def test_bpda_identity_gradient_flows_through_survivors_only() -> None:
    d = unit_atoms(16, 1, 4, dtype=torch.float64)
    enc = encoder(d, top_t=4, dropout_p=0.5, eps=0.05, beta=3.0)
    x = images(2, size=10, dtype=torch.float64).requires_grad_(True)
    with frozen(enc):
        survivors = (enc.sparse_code(x.detach()) != 0).to(torch.float64)
        with bpda(enc, "identity"):
            out = enc(x)
    weight = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (out * weight).sum().backward()
    # d/dx sum_{survivors} w * (D^T x_ij): each surviving (patch, atom) adds w * atom at its patch
    expected = torch.zeros_like(x)
    for b, atom, i, j in survivors.nonzero().tolist():
        expected[b, :, 2 * i:2 * i + 4, 2 * j:2 * j + 4] += weight[b, atom, i, j] * d[atom]
    assert x.grad is not None
    torch.testing.assert_close(x.grad, expected)
    assert 0 < survivors.sum() < survivors.numel()


def test_without_bpda_quantizer_blocks_gradient() -> None:
    enc = encoder(unit_atoms(16, 1, 4), beta=0.0)
    x = images(1, size=10).requires_grad_(True)
    enc(x).sum().backward()
    assert x.grad is not None and not bool(x.grad.any())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: encoder(unit_atoms(8, 1, 4), top_t=9), "top_t=9 exceeds the dictionary's L=8"),
        (lambda: encoder(unit_atoms(8, 1, 4), top_t=0), "top_t must be a positive int"),
        (lambda: encoder(unit_atoms(8, 1, 4), dropout_p=1.0), "dropout_p must be >= 0.0 and < 1.0"),
        (lambda: encoder(unit_atoms(8, 1, 4), eps=-0.1), "eps must be >= 0.0"),
        (lambda: encoder(unit_atoms(8, 1, 4), stride=0), "stride must be a positive int"),
        (lambda: encoder(torch.rand(8, 16)), "dictionary must be a float (L, C, n, n) tensor"),
        (lambda: encoder(unit_atoms(8, 1, 4), sigma=0.0), "sigma must be > 0"),
    ],
)
def test_bad_settings_raise(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=__import__("re").escape(message)):
        make()


def test_bad_inputs_raise() -> None:
    enc = encoder(unit_atoms(8, 1, 4))
    with pytest.raises(InputError, match=r"must have 1 channel\(s\), got shape \(2, 3, 10, 10\)"):
        enc(torch.rand(2, 3, 10, 10))
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        enc(torch.rand(2, 1, 10, 10) * 2)
    with pytest.raises(InputError, match="smaller than the 4x4 patches"):
        enc(torch.rand(2, 1, 3, 3))
    with pytest.raises(InputError, match="4-D NCHW"):
        enc(torch.rand(1, 10, 10))


def test_paper_sized_encoder_shape() -> None:
    """CIFAR-10 sizes of Sec. 5.1: 32x32 RGB, 4x4 patches, stride 2, L = 500 -> 15 x 15 x 500."""
    enc = encoder(unit_atoms(500, 3, 4), top_t=50, dropout_p=0.95, eps=8 / 255, beta=3.0)
    out = enc(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 500, 15, 15)
    assert int((out != 0).sum(dim=1).max()) <= 50
    assert math.isclose(enc.dropout_p, 0.95)


def test_bpda_smooth_keeps_exact_forward_and_gives_gradient() -> None:
    enc = encoder(unit_atoms(16, 1, 4, dtype=torch.float64), top_t=6, dropout_p=0.5, eps=0.01, beta=3.0)
    x = images(2, size=10, dtype=torch.float64).requires_grad_(True)
    with frozen(enc):
        exact = enc(x.detach())
        with bpda(enc, "smooth"):
            out = enc(x)
    assert torch.equal(out.detach(), exact)
    out.pow(2).sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
