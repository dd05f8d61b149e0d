"""Sparse-encoder analyses (sparse-randomized-encoder paper: Fig. 2, Fig. 4, Fig. 9; App. 8.1,
8.5, 8.8) against hand-built cases and brute-force loops."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.analysis.sparse import (
    PatchCorrelations,
    atom_filter_correlations,
    autoencoder_grid,
    corrupted_patch_fraction,
    plot_correlation_histogram,
    plot_corrupted_fraction_histogram,
)
from robustlab.core import InputError
from robustlab.defenses.sparse_encoder import SparseEncoder
from robustlab.defenses.sparse_model import SparseDecoder, SparseFrontEnd


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unit_atoms(atoms: int, channels: int = 1, n: int = 4, seed: int = 0) -> torch.Tensor:
    d = torch.randn(atoms, channels * n * n, generator=_gen(seed), dtype=torch.float64)
    return (d / d.norm(dim=1, keepdim=True)).reshape(atoms, channels, n, n).float()


def _row(result: PatchCorrelations, image: int, r: int, c: int) -> int:
    hits = (result.positions == torch.tensor([image, r, c])).all(dim=1).nonzero()
    assert hits.numel() == 1
    return int(hits[0, 0])


# --- Fig. 2: atom correlations vs filter activations -----------------------------------------


def test_correlations_hand_built_patch() -> None:
    """An atom equal to a (unit-norm) patch gives rho = 1, an orthogonal one 0 (Eq. 6-7)."""
    x = torch.zeros(1, 1, 8, 8)
    patch = torch.zeros(4, 4)
    patch[[0, 1, 2, 3], [0, 1, 2, 3]] = 0.5  # ||patch|| = 1
    x[0, 0, 2:6, 3:7] = patch
    ortho = torch.zeros(4, 4)
    ortho[[0, 1, 2, 3], [3, 2, 1, 0]] = 0.5  # disjoint support: orthogonal, unit norm
    atoms = torch.stack([patch, ortho, 2 * patch, -patch]).unsqueeze(1)
    filters = torch.stack([patch, 3 * patch, ortho]).unsqueeze(1)
    result = atom_filter_correlations(atoms, filters, x)
    assert result.atom_correlations.shape == (25, 4) and result.filter_activations.shape == (25, 3)
    i = _row(result, 0, 2, 3)
    # rho = <x, d> / ||d||^2: 1, 0, <x, 2x>/4 = 1/2, -1; gamma: 1, <x, 3x>/9 = 1/3, 0
    torch.testing.assert_close(result.atom_correlations[i], torch.tensor([1.0, 0.0, 0.5, -1.0]))
    torch.testing.assert_close(result.filter_activations[i], torch.tensor([1.0, 1 / 3, 0.0]))
    assert result.rho.shape == (100,) and result.gamma.shape == (75,)
    assert float(result.atom_peak[i]) == pytest.approx(1.0)
    assert float(result.filter_peak[i]) == pytest.approx(1.0)
    # the window one pixel up-left overlaps three of the four diagonal pixels: 3 * 0.5 * 0.5
    assert float(result.atom_correlations[_row(result, 0, 1, 2), 0]) == pytest.approx(0.75)


@pytest.mark.parametrize(("atom_n", "filter_k"), [(4, 3), (2, 4), (3, 3)])
def test_correlations_size_mismatch_matches_conv_reference(atom_n: int, filter_k: int) -> None:
    """Each kernel sees a patch of its own size, centred (floor) in the larger window."""
    x = torch.rand(2, 3, 9, 10, generator=_gen(0))
    atoms = torch.randn(5, 3, atom_n, atom_n, generator=_gen(1))
    filters = torch.randn(7, 3, filter_k, filter_k, generator=_gen(2))
    result = atom_filter_correlations(atoms, filters, x, stride=2)
    win = max(atom_n, filter_k)
    oa, of = (win - atom_n) // 2, (win - filter_k) // 2
    ref_a = F.conv2d(x.double(), atoms.double()) / atoms.double().flatten(1).pow(2).sum(1).view(
        1, -1, 1, 1
    )
    ref_f = F.conv2d(x.double(), filters.double()) / filters.double().flatten(1).pow(2).sum(1).view(
        1, -1, 1, 1
    )
    rows = list(range(0, 9 - win + 1, 2))
    cols = list(range(0, 10 - win + 1, 2))
    assert result.positions.shape[0] == 2 * len(rows) * len(cols)
    for b in range(2):
        for r in rows:
            for c in cols:
                i = _row(result, b, r, c)
                torch.testing.assert_close(
                    result.atom_correlations[i].double(),
                    ref_a[b, :, r + oa, c + oa],
                    atol=1e-5,
                    rtol=1e-5,
                )
                torch.testing.assert_close(
                    result.filter_activations[i].double(),
                    ref_f[b, :, r + of, c + of],
                    atol=1e-5,
                    rtol=1e-5,
                )


def test_correlations_max_patches_is_a_seeded_subset() -> None:
    x = torch.rand(2, 1, 8, 8, generator=_gen(3))
    atoms, filters = unit_atoms(6), torch.randn(4, 1, 3, 3, generator=_gen(4))
    full = atom_filter_correlations(atoms, filters, x)
    sub = atom_filter_correlations(atoms, filters, x, max_patches=7, generator=_gen(5))
    again = atom_filter_correlations(atoms, filters, x, max_patches=7, generator=_gen(5))
    assert sub.positions.shape == (7, 3)
    assert torch.equal(sub.positions, again.positions)
    assert len({tuple(p) for p in sub.positions.tolist()}) == 7  # without replacement
    for k, (b, r, c) in enumerate(sub.positions.tolist()):
        i = _row(full, b, r, c)
        torch.testing.assert_close(sub.atom_correlations[k], full.atom_correlations[i])
        torch.testing.assert_close(sub.filter_activations[k], full.filter_activations[i])
    bigger = atom_filter_correlations(atoms, filters, x, max_patches=10_000)
    assert bigger.positions.shape[0] == full.positions.shape[0] == 2 * 5 * 5


def test_summary_against_hand_values() -> None:
    result = PatchCorrelations(
        atom_correlations=torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -2.0, 0.0]]),
        filter_activations=torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]),
        positions=torch.zeros(2, 3, dtype=torch.long),
    )
    s = result.summary()
    v = np.array([1.0, 0.0, 0.0, 0.0])
    c = v - v.mean()
    kurt = (c**4).mean() / (c**2).mean() ** 2 - 3  # same for the second (scaled, sign-flipped) row
    assert s["patches"] == 2
    assert s["atom_kurtosis"] == pytest.approx(kurt)
    assert s["atom_large_fraction"] == pytest.approx(0.25)
    assert s["atom_peak_to_rms"] == pytest.approx(2.0)  # max 1 / rms 0.5
    assert s["atom_mean_abs"] == pytest.approx(3 / 8)
    assert math.isnan(s["filter_kurtosis"])  # both rows constant
    assert s["filter_large_fraction"] == pytest.approx(0.5)  # 1 for the ones, 0 for the zero patch
    assert s["filter_peak_to_rms"] == pytest.approx(0.5)
    with pytest.raises(InputError, match="large must be"):
        result.summary(large=0.0)


def test_correlations_bad_inputs() -> None:
    x = torch.rand(1, 1, 8, 8)
    atoms, filters = unit_atoms(4), torch.randn(3, 1, 3, 3)
    with pytest.raises(
        InputError, match=r"atoms must be a float \(L, C, n_h, n_w\) tensor, got \(4, 16\)"
    ):
        atom_filter_correlations(atoms.flatten(1), filters, x)
    with pytest.raises(InputError, match=r"first_layer_weight must be a float \(F, C, k_h, k_w\)"):
        atom_filter_correlations(atoms, filters[0], x)
    with pytest.raises(InputError, match="first_layer_weight have 3 input channel"):
        atom_filter_correlations(atoms, torch.randn(3, 3, 3, 3), x)
    with pytest.raises(InputError, match="zero or non-finite kernel at index 1"):
        atom_filter_correlations(atoms, torch.cat([filters[:1], torch.zeros(1, 1, 3, 3)]), x)
    with pytest.raises(InputError, match="smaller than the 4x4 patch window"):
        atom_filter_correlations(atoms, filters, torch.rand(1, 1, 3, 8))
    with pytest.raises(InputError, match="4-D NCHW"):
        atom_filter_correlations(atoms, filters, x[0])
    with pytest.raises(InputError, match="stride must be a positive int"):
        atom_filter_correlations(atoms, filters, x, stride=0)


def test_plot_correlation_histogram_writes_png_of_expected_size(tmp_path: Path) -> None:
    result = atom_filter_correlations(
        unit_atoms(8), torch.randn(4, 1, 3, 3), torch.rand(1, 1, 8, 8)
    )
    out = plot_correlation_histogram(
        result.rho, result.gamma, tmp_path / "fig2.png", figsize=(6.0, 2.5), dpi=80
    )
    assert out == tmp_path / "fig2.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out)
    assert img.shape[:2] == (200, 480)
    assert float(img[..., :3].min()) < 0.5  # something was drawn on the white canvas
    with pytest.raises(InputError, match="b must be a non-empty 1-D tensor"):
        plot_correlation_histogram(result.rho, result.filter_activations, tmp_path / "x.png")
    with pytest.raises(InputError, match="figsize"):
        plot_correlation_histogram(result.rho, result.gamma, tmp_path / "x.png", figsize=(0.0, 1.0))


# --- Fig. 4: expected fraction of corrupted patches ------------------------------------------


def pixel_encoder(top_t: int, dropout_p: float, seed: int = 0) -> SparseEncoder:
    """2x2 patches, stride 2, four atoms: one per pixel of the patch (a, b / c, d)."""
    atoms = torch.eye(4).reshape(4, 1, 2, 2)
    return SparseEncoder(
        atoms, stride=2, top_t=top_t, dropout_p=dropout_p, eps=0.01, beta=3.0, generator=_gen(seed)
    )


def _patches(a: float, b: float, c: float, d: float) -> torch.Tensor:
    return torch.tensor([[a, b], [c, d]])


def test_zero_when_adversarial_equals_clean() -> None:
    enc = SparseEncoder(
        unit_atoms(12, n=3), stride=2, top_t=4, dropout_p=0.5, eps=0.01, beta=3.0, generator=_gen(0)
    )
    x = torch.rand(3, 1, 9, 9, generator=_gen(1))
    assert torch.equal(corrupted_patch_fraction(enc, x, x), torch.zeros(3))
    assert torch.equal(corrupted_patch_fraction(enc, x, x, draws=5), torch.zeros(3))
    # the code criterion is 0 only because clean and adversarial share each dropout draw
    assert torch.equal(
        corrupted_patch_fraction(enc, x, x, draws=5, criterion="code"), torch.zeros(3)
    )


@pytest.mark.parametrize("p", [0.0, 0.5, 0.8])
def test_every_patch_toppled_hand_built(p: float) -> None:
    """Clean top-2 = {a, b}, adversarial top-2 = {c, d} in every patch: j = 2, z = 1 - p^2."""
    clean = _patches(1.0, 0.9, 0.0, 0.0).repeat(3, 3)[None, None]  # 6x6 image, 9 patches
    adv = _patches(0.0, 0.0, 1.0, 0.9).repeat(3, 3)[None, None]
    enc = pixel_encoder(top_t=2, dropout_p=p)
    z = corrupted_patch_fraction(enc, clean, adv)
    torch.testing.assert_close(z, torch.tensor([1 - p**2]))
    if p == 0.0:  # no dropout: every draw corrupts every patch, under both criteria
        assert torch.equal(corrupted_patch_fraction(enc, clean, adv, draws=3), torch.ones(1))
        assert torch.equal(
            corrupted_patch_fraction(enc, clean, adv, draws=3, criterion="code"), torch.ones(1)
        )


def test_half_the_patches_toppled_per_image() -> None:
    """Two images of two patches: one patch toppled by j = 1 resp. j = 2, the other untouched."""
    p = 0.3
    untouched = _patches(1.0, 0.9, 0.0, 0.0)
    clean = torch.stack([torch.cat([untouched, untouched], dim=1)] * 2)[:, None]  # (2, 1, 2, 4)
    adv = clean.clone()
    adv[0, 0, :, 2:] = _patches(1.0, 0.0, 0.9, 0.0)  # b replaced by c: j = 1
    adv[1, 0, :, :2] = _patches(0.0, 0.0, 1.0, 0.9)  # j = 2
    z = corrupted_patch_fraction(pixel_encoder(top_t=2, dropout_p=p), clean, adv)
    torch.testing.assert_close(z, torch.tensor([(1 - p) / 2, (1 - p**2) / 2]))


def _brute_force(
    atoms: torch.Tensor, x: torch.Tensor, x_adv: torch.Tensor, top_t: int, stride: int, p: float
) -> list[float]:
    n = atoms.shape[-1]
    flat = atoms.double().flatten(1)
    out = []
    for b in range(x.shape[0]):
        powers = []
        for i in range(0, x.shape[2] - n + 1, stride):
            for j in range(0, x.shape[3] - n + 1, stride):
                tops = []
                for img in (x, x_adv):
                    coeffs = (flat @ img[b, :, i : i + n, j : j + n].double().reshape(-1)).tolist()
                    tops.append(
                        set(sorted(range(len(coeffs)), key=lambda k: -abs(coeffs[k]))[:top_t])
                    )
                toppled = len(tops[1] - tops[0])
                powers.append(p**toppled)
        out.append(1 - sum(powers) / len(powers))
    return out


def _random_case() -> tuple[SparseEncoder, torch.Tensor, torch.Tensor, torch.Tensor]:
    atoms = unit_atoms(6, channels=2, n=3, seed=7)
    enc = SparseEncoder(
        atoms, stride=2, top_t=2, dropout_p=0.4, eps=0.01, beta=3.0, generator=_gen(11)
    )
    x = torch.rand(3, 2, 7, 7, generator=_gen(8))
    mix = torch.tensor([0.2, 0.5, 1.0]).view(3, 1, 1, 1)
    x_adv = (1 - mix) * x + mix * (1 - x)  # a growing push towards the negative image
    return enc, atoms, x, x_adv


def test_closed_form_matches_brute_force_loop() -> None:
    enc, atoms, x, x_adv = _random_case()
    z = corrupted_patch_fraction(enc, x, x_adv)
    expected = _brute_force(atoms, x, x_adv, top_t=2, stride=2, p=0.4)
    assert z.shape == (3,)
    torch.testing.assert_close(
        z.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0
    )
    assert 0 < min(expected) < max(expected) < 1 and len(set(expected)) == 3  # non-trivial


def test_monte_carlo_converges_to_closed_form() -> None:
    enc, _, x, x_adv = _random_case()
    exact = corrupted_patch_fraction(enc, x, x_adv)
    estimate = corrupted_patch_fraction(enc, x, x_adv, draws=1500)
    # per draw a fraction has variance <= 1/4: 1500 draws give a standard error <= 0.013
    torch.testing.assert_close(estimate, exact, atol=0.04, rtol=0)
    code = corrupted_patch_fraction(enc, x, x_adv, draws=200, criterion="code")
    assert code.shape == (3,) and bool(((code >= 0) & (code <= 1)).all())


def test_corrupted_fraction_bad_inputs() -> None:
    enc, _, x, x_adv = _random_case()
    with pytest.raises(InputError, match=r"same shape, got \(3, 2, 7, 7\) and \(2, 2, 7, 7\)"):
        corrupted_patch_fraction(enc, x, x_adv[:2])
    with pytest.raises(InputError, match="x_adv must have 2 channel"):
        corrupted_patch_fraction(enc, x, x_adv[:, :1])
    with pytest.raises(InputError, match="criterion='code' has no closed form"):
        corrupted_patch_fraction(enc, x, x_adv, criterion="code")
    with pytest.raises(InputError, match="unknown criterion"):
        corrupted_patch_fraction(enc, x, x_adv, criterion="flipped")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="draws must be a positive int"):
        corrupted_patch_fraction(enc, x, x_adv, draws=0)
    with pytest.raises(InputError, match="lacks"):
        corrupted_patch_fraction(nn.Conv2d(2, 4, 3), x, x_adv)


def test_plot_corrupted_fraction_histogram(tmp_path: Path) -> None:
    series = {"W-NFGA": torch.tensor([0.1, 0.2, 0.25]), "PW-T": torch.tensor([0.4, 0.5, 0.9])}
    out = plot_corrupted_fraction_histogram(
        series, tmp_path / "fig4.png", figsize=(4.0, 3.0), dpi=50
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mpimg.imread(out).shape[:2] == (150, 200)
    with pytest.raises(InputError, match="non-empty mapping"):
        plot_corrupted_fraction_histogram({}, tmp_path / "x.png")
    with pytest.raises(InputError, match=r"series\['PW-T'\] must hold fractions in \[0, 1\]"):
        plot_corrupted_fraction_histogram({"PW-T": torch.tensor([1.5])}, tmp_path / "x.png")


# --- Fig. 9: images before and after the autoencoder ------------------------------------------


def small_front_end(dropout_p: float) -> SparseFrontEnd:
    torch.manual_seed(0)  # decoder/classifier weights (test-only global seeding)
    enc = SparseEncoder(
        unit_atoms(16),
        stride=2,
        top_t=4,
        dropout_p=dropout_p,
        eps=0.01,
        beta=3.0,
        generator=_gen(0),
    )
    dec = SparseDecoder(16, 1, 12, hidden=(4, 4))  # 12x12 images -> 5x5 code -> 12x12
    return SparseFrontEnd(enc, dec, nn.Sequential(nn.Flatten(), nn.Linear(144, 10)))


class _Invert(nn.Module):
    def autoencode(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 - x


def test_grid_gray_layout_and_content(tmp_path: Path) -> None:
    fe = small_front_end(dropout_p=0.0)  # deterministic: the reference below is the same function
    x = torch.rand(3, 1, 12, 12, generator=_gen(1))
    adv = (x + 0.1).clamp(0, 1)
    out = autoencoder_grid(fe, x, tmp_path / "fig9.png", adversarial=adv, pad=2, scale=2)
    img = mpimg.imread(out)
    assert img.shape == (4 * (24 + 2) + 2, 3 * (24 + 2) + 2, 4)  # 4 rows, 3 columns
    with torch.no_grad():
        rows = [x, fe.autoencode(x), adv, fe.autoencode(adv)]
    for r, batch in enumerate(rows):
        for i in range(3):
            top, left = 2 + r * 26, 2 + i * 26
            cell = torch.from_numpy(img[top : top + 24, left : left + 24, :3].copy())
            expected = batch[i, 0].repeat_interleave(2, 0).repeat_interleave(2, 1)
            for ch in range(3):  # gray: equal RGB channels
                torch.testing.assert_close(cell[..., ch], expected, atol=1 / 255 + 1e-6, rtol=0)
    assert np.allclose(img[:2, :, :3], 1.0) and np.allclose(img[:, :2, :3], 1.0)  # white padding


def test_grid_rgb_without_adversarial(tmp_path: Path) -> None:
    x = torch.rand(2, 3, 5, 6, generator=_gen(2))
    out = autoencoder_grid(_Invert(), x, tmp_path / "rgb.png", pad=1)
    img = mpimg.imread(out)
    assert img.shape == (2 * 6 + 1, 2 * 7 + 1, 4)
    for i in range(2):
        left = 1 + i * 7
        torch.testing.assert_close(
            torch.from_numpy(img[1:6, left : left + 6, :3].copy()),
            x[i].permute(1, 2, 0),
            atol=1 / 255 + 1e-6,
            rtol=0,
        )
        torch.testing.assert_close(
            torch.from_numpy(img[7:12, left : left + 6, :3].copy()),
            1 - x[i].permute(1, 2, 0),
            atol=1 / 255 + 1e-6,
            rtol=0,
        )


def test_grid_shares_one_draw_between_clean_and_adversarial(tmp_path: Path) -> None:
    fe = small_front_end(dropout_p=0.7)
    x = torch.rand(2, 1, 12, 12, generator=_gen(3))
    img = mpimg.imread(autoencoder_grid(fe, x, tmp_path / "same.png", adversarial=x.clone(), pad=0))
    assert np.array_equal(img[12:24], img[36:48])  # same input, same draw: same reconstruction
    with torch.no_grad():
        assert not torch.equal(fe.autoencode(x), fe.autoencode(x))  # the front end is random


def test_grid_bad_inputs(tmp_path: Path) -> None:
    x = torch.rand(2, 1, 12, 12)
    with pytest.raises(
        InputError, match=r"\(N, 1 or 3, H, W\) batch to be drawn, got \(2, 2, 12, 12\)"
    ):
        autoencoder_grid(_Invert(), torch.rand(2, 2, 12, 12), tmp_path / "x.png")
    with pytest.raises(InputError, match="adversarial must have the images' shape"):
        autoencoder_grid(_Invert(), x, tmp_path / "x.png", adversarial=x[:1])
    with pytest.raises(InputError, match="with autoencode"):
        autoencoder_grid(nn.Identity(), x, tmp_path / "x.png")

    class _Crop(nn.Module):
        def autoencode(self, z: torch.Tensor) -> torch.Tensor:
            return z[..., :10, :10]

    with pytest.raises(InputError, match="input's shape"):
        autoencoder_grid(_Crop(), x, tmp_path / "x.png")
    with pytest.raises(InputError, match="lie in"):
        autoencoder_grid(_Invert(), x + 2, tmp_path / "x.png")
    with pytest.raises(InputError, match="scale must be a positive int"):
        autoencoder_grid(_Invert(), x, tmp_path / "x.png", scale=0)
