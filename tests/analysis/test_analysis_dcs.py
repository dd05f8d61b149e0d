"""DCS analyses: path gradient similarity (Eq. 6, Fig. 4b), the X^s/X^g/X^u partition and the
bounds on n (Eq. 8, 11, 12) against hand-worked values."""

import math

import pytest
import torch
from torch import nn

from robustlab.analysis import (
    gradient_cosine,
    lemma1_upper_bound,
    lemma1_upper_bound_tight,
    lemma2_lower_bound,
    n_bounds,
    position_classes,
    split_gradient_similarity,
)
from robustlab.core import InputError
from robustlab.defenses import RandomKernelConv2d


# ------------------------------------------------------------------------------------- bounds
def test_lemma1_eq8_by_hand():
    assert lemma1_upper_bound(2, 0.5) == 2.0  # S^2 eps_c = 4 * 0.5
    assert lemma1_upper_bound(1, 0.3) == pytest.approx(0.3)
    assert lemma1_upper_bound(3, 0.25) == pytest.approx(2.25)


def test_lemma1_before_loosening_eq19_and_eq20_by_hand():
    # k = 5, S = 2: floor(k/S)^2 = 4. Eq. 19 with C^g = 1: (25 * 0.5 + (4 * 4 - 25)) / (1 + 3) = 3.5 / 4
    assert lemma1_upper_bound_tight(5, 2, 0.5) == pytest.approx(0.875)
    # Eq. 20 form of the same: k^2 (eps_c - 1) / floor(k/S)^2 + S^2 = 25 * (-0.5) / 4 + 4
    assert lemma1_upper_bound_tight(5, 2, 0.5, c_g=1.0) == pytest.approx(25 * -0.5 / 4 + 4)
    # C^g = 0: C_i = n / k^2 (Eq. 15), so n <= k^2 eps_c = 12.5
    assert lemma1_upper_bound_tight(5, 2, 0.5, c_g=0.0) == pytest.approx(12.5)
    # k = 6, S = 2, C^g = 0.5: floor(3)^2 = 9; (36 * 0.2 + (4 * 9 - 36) * 0.5) / (1 + 8 * 0.5) = 7.2 / 5
    assert lemma1_upper_bound_tight(6, 2, 0.2, c_g=0.5) == pytest.approx(1.44)


def test_lemma2_eq11_by_hand():
    # k = 5, S = 2, eps_l S^2 / N = 1: (4 - 20 + 25 + 0) / 40
    assert lemma2_lower_bound(5, 2, 1.0, 4) == pytest.approx(9 / 40)
    # k = 3, S = 1, eps_l = 0.5, N = 1: (1 - 6 + 9 + 81 * 0.5) / 12 = 44.5 / 12
    assert lemma2_lower_bound(3, 1, 0.5, 1) == pytest.approx(44.5 / 12)
    # k = 5, S = 1, eps_l = 10, N = 100: (1 - 10 + 25 + 625 * 0.9) / 20 = 578.5 / 20
    assert lemma2_lower_bound(5, 1, 10.0, 100) == pytest.approx(28.925)


def test_eq12_range_and_its_integers():
    bounds = n_bounds(5, 2, eps_c=0.5, eps_l=1.0, size=4)
    assert bounds.lower == pytest.approx(0.225) and bounds.upper == pytest.approx(2.0)
    assert bounds.feasible == (1, 2)
    empty = n_bounds(3, 1, eps_c=0.5, eps_l=0.5, size=1)  # lower 3.7 > upper 0.5
    assert empty.feasible == ()
    with pytest.raises(InputError, match="size N must be a finite number > 0"):
        lemma2_lower_bound(5, 2, 1.0, 0)
    with pytest.raises(InputError, match="stride must be a finite number >= 1"):
        lemma1_upper_bound(0, 0.5)
    assert math.isfinite(n_bounds(5, 2, 0.5, 0.1, 1024).lower)


# --------------------------------------------------------------------------- position classes
def test_position_classes_by_hand():
    s, g, u = 0, 1, 2
    # k = 5, S = 2, X^s = {(0, 0)}: the kernel shifted by 2 reaches the even-even positions
    want = torch.tensor(
        [
            [s, u, g, u, g],
            [u, u, u, u, u],
            [g, u, g, u, g],
            [u, u, u, u, u],
            [g, u, g, u, g],
        ]
    )
    assert torch.equal(position_classes([0], 5, 2), want)
    # stride 1: every other position is reached by a neighbour's kernel, X^u is empty
    assert torch.equal(
        position_classes([7, 12], 5, 1),
        torch.where(torch.isin(torch.arange(25), torch.tensor([7, 12])), s, g).view(5, 5),
    )
    # k = 3, S = 2, X^s = {centre}: shifts of 2 leave the window, so everything else is X^u
    centre = position_classes([4], 3, 2)
    assert (
        int((centre == s).sum()) == 1
        and int((centre == g).sum()) == 0
        and int((centre == u).sum()) == 8
    )
    with pytest.raises(InputError, match=r"flat indices in \[0, 9\)"):
        position_classes([9], 3, 1)


# ------------------------------------------------------------------------------- similarities
class OneLayer(nn.Module):
    """A DCS layer with positive weights, summed into the logit of class 1: the loss gradient on
    the layer's input is nonzero exactly on the pixels the kernel's positions reach."""

    def __init__(self, k: int, n: int, stride: int) -> None:
        super().__init__()
        self.dcs = RandomKernelConv2d(1, 1, k, n, stride=stride, padding=0, bias=False)
        with torch.no_grad():
            self.dcs.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.dcs(x).flatten(1).sum(dim=1)
        return torch.stack([torch.zeros_like(z), z], dim=1)


def test_gradient_cosine_between_paths_is_one_or_zero_on_disjoint_strided_taps():
    # k = 2, S = 2, n = 1: each path touches one pixel per 2x2 block; the same position gives the
    # same gradient (cos 1), a different one touches disjoint pixels (cos 0)
    torch.manual_seed(0)
    model = OneLayer(2, 1, 2).eval()
    x = torch.rand(3, 1, 8, 8)
    y = torch.zeros(3, dtype=torch.long)
    seen = set()
    for _ in range(20):
        cos = gradient_cosine(model, x, y, layer=model.dcs)
        values = {round(float(c), 6) for c in cos}
        # shared positions: one value for the whole batch
        assert values <= {0.0, 1.0} and len(values) == 1
        seen |= values
    assert seen == {0.0, 1.0}
    # every position kept: a deterministic layer, cos 1 on the image too
    full = OneLayer(2, 4, 2).eval()
    torch.testing.assert_close(gradient_cosine(full, x, y), torch.ones(3))


def test_split_similarity_fig4b_known_cases():
    torch.manual_seed(1)
    model = OneLayer(5, 2, 2).eval()
    x = torch.rand(4, 1, 13, 13)
    y = torch.zeros(4, dtype=torch.long)
    first = torch.tensor([0, 12])  # (0, 0) and (2, 2): X^g is the rest of the even-even grid
    split = split_gradient_similarity(
        model, x, y, model.dcs, first, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(split["s"], torch.ones(4))  # the same kernel: cos 1
    # other residues mod S: disjoint pixels, cos 0
    torch.testing.assert_close(split["u"], torch.zeros(4))
    assert bool(((split["g"] > 0) & (split["g"] < 1)).all())  # shared pixels, other weights
    stride_one = OneLayer(3, 2, 1).eval()
    split1 = split_gradient_similarity(stride_one, x, y, stride_one.dcs, torch.tensor([0, 4]))
    assert bool(torch.isnan(split1["u"]).all())  # X^u is empty at stride 1
    with pytest.raises(InputError, match="pass the model's random-kernel"):
        split_gradient_similarity(model, x, y, nn.Conv2d(1, 1, 3))


def test_cli_dcs_bounds_prints_the_hand_worked_bounds():
    from typer.testing import CliRunner

    from robustlab.cli import app

    # k=5, S=2: Eq. 8 gives 4 * 0.75 = 3; Eq. 11 gives (4 - 20 + 25 + 625 (1 - 0.9 * 4 / 20)) / 40
    # = (9 + 512.5) / 40 = 13.0375: no n satisfies both
    r = CliRunner().invoke(app, ["analyze", "dcs-bounds", "--k", "5", "--stride", "2", "--eps-c", "0.75",
                                 "--eps-l", "0.9", "--size", "20"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "13.04" in r.output and "│ 3 " in r.output and "none" in r.output
    # S=2, eps_c=1: upper 4; eps_l=0.9, N=4: lower (9 + 625 * 0.1) / 40 = 1.7875 -> n in 2..4
    r = CliRunner().invoke(app, ["analyze", "dcs-bounds", "--stride", "2", "--eps-c", "1", "--eps-l", "0.9",
                                 "--size", "4"], terminal_width=200)
    assert r.exit_code == 0 and "1.787" in r.output and "2, 3, 4" in r.output, r.output
