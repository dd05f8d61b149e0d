"""The study statistics (:mod:`robustlab.experiments.stats`) against values worked out by hand.

Every expected number below is derived in the comment beside it, never read back from the code.
"""

import pytest

from robustlab.core import InputError
from robustlab.experiments.stats import (
    Z95,
    Paired,
    bonferroni_z,
    multiple_claims_note,
    paired,
    seed_average,
    unpaired,
    worst_case,
)

# ---------------------------------------------------------------------------------------------
# paired()


def test_paired_hundred_images():
    # a = [1,1,1,0]*25 (mean 0.75), b = [1,0,1,0]*25 (mean 0.5): d = [0,1,0,0]*25, i.e. 25 ones
    # and 75 zeros: mean 0.25. Squared deviations: 25 * 0.75^2 + 75 * 0.25^2 = 14.0625 + 4.6875
    # = 18.75; sample variance 18.75 / 99 = 0.25 * 0.75 * 100 / 99; s.e. = sqrt(that / 100)
    # = sqrt(0.1875 / 99) = sqrt(0.00189394) = 0.0435194.
    # Interval: 0.25 -+ 1.959964 * 0.0435194 = 0.25 -+ 0.0852966 -> [0.164703, 0.335297]: above 0.
    p = paired([1, 1, 1, 0] * 25, [1, 0, 1, 0] * 25)
    assert p.n == 100
    assert p.a == pytest.approx(0.75)
    assert p.b == pytest.approx(0.5)
    assert p.diff == pytest.approx(0.25)
    assert p.se == pytest.approx(0.0435194, abs=1e-7)
    assert p.low == pytest.approx(0.164703, abs=1e-6)
    assert p.high == pytest.approx(0.335297, abs=1e-6)
    assert p.outcome == "higher"


def test_paired_reversed_is_lower():
    # The same images with the sides swapped: d = [0,-1,0,0]*25, mean -0.25, the same s.e.;
    # interval [-0.335297, -0.164703], below 0.
    p = paired([1, 0, 1, 0] * 25, [1, 1, 1, 0] * 25)
    assert p.diff == pytest.approx(-0.25)
    assert p.se == pytest.approx(0.0435194, abs=1e-7)
    assert p.high == pytest.approx(-0.164703, abs=1e-6)
    assert p.outcome == "lower"


def test_paired_four_images_not_significant():
    # a = [1, 1, 0, 0.5], b = [0, 1, 0, 0]: d = [1, 0, 0, 0.5], mean 1.5 / 4 = 0.375.
    # Deviations 0.625, -0.375, -0.375, 0.125; squares 0.390625 + 0.140625 + 0.140625 + 0.015625
    # = 0.6875; sample variance 0.6875 / 3 = 0.2291667; s.e. = sqrt(0.2291667 / 4)
    # = sqrt(0.0572917) = 0.239357. Half-width 1.959964 * 0.239357 = 0.469131:
    # [0.375 - 0.469131, 0.375 + 0.469131] = [-0.094131, 0.844131] holds 0.
    p = paired([1, 1, 0, 0.5], [0, 1, 0, 0])
    assert p.a == pytest.approx(0.625)  # 2.5 / 4
    assert p.b == pytest.approx(0.25)  # 1 / 4
    assert p.diff == pytest.approx(0.375)
    assert p.se == pytest.approx(0.239357, abs=1e-6)
    assert p.low == pytest.approx(-0.094131, abs=1e-6)
    assert p.high == pytest.approx(0.844131, abs=1e-6)
    assert p.outcome == "no significant difference"


def test_paired_uses_1_96_not_2():
    # 10 images, d = 1 on 3 of them and 0 on 7: mean 0.3. Squared deviations 3 * 0.49 + 7 * 0.09
    # = 1.47 + 0.63 = 2.1; sample variance 2.1 / 9 = 0.233333; s.e. = sqrt(0.0233333) = 0.152753.
    # diff / se = 0.3 / 0.152753 = 1.96396, between 1.96 and 2: at z = 1.959964 the lower end
    # is 0.3 - 0.299390 = +0.000610 > 0 (higher); at z = 2 it would be 0.3 - 0.305505 = -0.005505.
    a = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    b = [0] * 10
    p = paired(a, b)
    assert p.diff == pytest.approx(0.3)
    assert p.se == pytest.approx(0.152753, abs=1e-6)
    assert 1.96 < p.diff / p.se < 2.0
    assert p.z == pytest.approx(1.959964, abs=1e-6)
    assert p.low == pytest.approx(0.000610, abs=1e-6)
    assert p.outcome == "higher"
    # the same data swapped: the upper end is -0.000610 < 0
    assert paired(b, a).outcome == "lower"
    # with z = 2 the interval [-0.005505, 0.605505] holds 0
    assert paired(a, b, z=2.0).low == pytest.approx(-0.005505, abs=1e-6)
    assert paired(a, b, z=2.0).outcome == "no significant difference"


def test_paired_equal_lists_zero_se():
    # every per-image difference is 0: mean 0, variance 0, s.e. 0; interval [0, 0] is not
    # strictly above or below 0
    p = paired([1, 0, 1, 0.5], [1, 0, 1, 0.5])
    assert p.diff == 0.0
    assert p.se == 0.0
    assert p.outcome == "no significant difference"


@pytest.mark.parametrize("a, b", [([1, 0], [1]), ([], []), ([1], [])],
                         ids=["unequal", "empty", "one-empty"])
def test_paired_rejects_unequal_or_empty(a, b):
    with pytest.raises(InputError, match="two equal, non-empty lists"):
        paired(a, b)


# ---------------------------------------------------------------------------------------------
# Paired.text()


def test_text_hand_example():
    # The four-image example above, in percentage points: diff 37.50, s.e. 23.9357 -> 23.94,
    # interval [-9.4131, +84.4131] -> [-9.41, +84.41].
    p = paired([1, 1, 0, 0.5], [0, 1, 0, 0])
    assert p.text() == "+37.50 pp, s.e. 23.94, 95% CI [-9.41, +84.41]"


def test_text_hundred_images():
    # 25.00 pp, s.e. 4.35194 -> 4.35, interval [16.4703, 33.5297] -> [+16.47, +33.53]
    p = paired([1, 1, 1, 0] * 25, [1, 0, 1, 0] * 25)
    assert p.text() == "+25.00 pp, s.e. 4.35, 95% CI [+16.47, +33.53]"


def test_text_sign_minus_one_negates_and_swaps():
    # sign = -1 states the difference of errors: -37.50 pp; the s.e. keeps its sign; the
    # interval's ends negate (+9.41, -84.41) and swap so that the lower comes first.
    p = paired([1, 1, 0, 0.5], [0, 1, 0, 0])
    assert p.text(sign=-1.0) == "-37.50 pp, s.e. 23.94, 95% CI [-84.41, +9.41]"


def test_text_scale():
    # scale 1 writes fractions: 0.375 is exact in binary and a tie at 2 decimals, which Python
    # rounds to the even digit: +0.38; s.e. 0.239357 -> 0.24;
    # [-0.094131, 0.844131] -> [-0.09, +0.84]
    p = paired([1, 1, 0, 0.5], [0, 1, 0, 0])
    assert p.text(scale=1.0) == "+0.38 pp, s.e. 0.24, 95% CI [-0.09, +0.84]"


# ---------------------------------------------------------------------------------------------
# seed_average() and worst_case()


def test_seed_average_three_seeds():
    # image 0: (1 + 1 + 1) / 3 = 1; image 1: (0 + 1 + 0) / 3 = 1/3; image 2: (1 + 0 + 0) / 3
    # = 1/3; image 3: (0 + 0 + 0) / 3 = 0; image 4: (0.5 + 1 + 0) / 3 = 0.5
    out = seed_average([[1, 0, 1, 0, 0.5], [1, 1, 0, 0, 1], [1, 0, 0, 0, 0]])
    assert out == pytest.approx([1.0, 1 / 3, 1 / 3, 0.0, 0.5])


def test_seed_average_one_seed_is_itself():
    assert seed_average([[1, 0, 0.25]]) == pytest.approx([1.0, 0.0, 0.25])


@pytest.mark.parametrize("per_seed", [[[1, 0, 1], [1, 0]], []], ids=["unequal", "none"])
def test_seed_average_rejects(per_seed):
    with pytest.raises(InputError):
        seed_average(per_seed)


def test_worst_case_three_attacks_five_images():
    # robust under every attack: image 0 (1,1,1) yes; image 1 (1,0,1) no; image 2 (1,1,0) no;
    # image 3 (0,0,0) no; image 4 (1,1,1) yes
    masks = [[1, 1, 1, 0, 1],
             [1, 0, 1, 0, 1],
             [1, 1, 0, 0, 1]]
    assert worst_case(masks) == [1.0, 0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("masks", [[[1, 1, 0], [1, 1]], []], ids=["unequal", "none"])
def test_worst_case_rejects(masks):
    with pytest.raises(InputError):
        worst_case(masks)


# ---------------------------------------------------------------------------------------------
# bonferroni_z()


def test_bonferroni_one_test_is_z95():
    # one test: the two-sided 95% quantile, Phi^-1(0.975) = 1.959964
    assert bonferroni_z(1) == pytest.approx(1.959964, abs=1e-6)
    assert bonferroni_z(1) == Z95
    assert pytest.approx(1.959964, abs=1e-6) == Z95


def test_bonferroni_ten_tests():
    # 10 tests: alpha 0.05 / 10 = 0.005 two-sided, i.e. the 1 - 0.0025 = 0.9975 normal quantile,
    # 2.8070 (standard normal tables: Phi(2.81) = 0.99752, Phi(2.80) = 0.99744)
    assert bonferroni_z(10) == pytest.approx(2.807, abs=5e-4)


def test_bonferroni_three_tests():
    # 3 tests: the 1 - 0.05 / 6 = 0.991667 quantile, 2.394
    # (tables: Phi(2.39) = 0.99158, Phi(2.40) = 0.99180)
    assert bonferroni_z(3) == pytest.approx(2.394, abs=5e-4)


def test_bonferroni_monotone():
    zs = [bonferroni_z(k) for k in range(1, 21)]
    assert all(x < y for x, y in zip(zs[:-1], zs[1:], strict=True))


# ---------------------------------------------------------------------------------------------
# multiple_claims_note()


def _p(diff: float, se: float) -> Paired:
    """A comparison with the given difference and s.e. (the means do not enter the note)."""
    return Paired(0.5 + diff, 0.5, diff, se, 100)


def test_note_empty_below_two():
    assert multiple_claims_note([]) == ""
    assert multiple_claims_note([("A", _p(0.3, 0.1))]) == ""


def test_note_three_claims_one_survives():
    # A: diff / se = 2.5 (significant at 1.96 and still at bonferroni_z(3) = 2.394);
    # B: 2.2 (significant at 1.96, not at 2.394); C: 1.0 (not significant at all).
    # Chance count 0.05 * 3 = 0.15, which is 0.15000000000000002 in binary floating point, so
    # .1f writes 0.2. Bonferroni interval width 2.394 -> "2.39".
    note = multiple_claims_note([("A", _p(0.25, 0.1)), ("B", _p(0.22, 0.1)), ("C", _p(0.10, 0.1))])
    assert note == (
        "3 comparisons were tested at 95% each: with no true difference anywhere, about 0.2 of "
        "them would show one by chance. With a Bonferroni correction (interval of ±2.39 s.e., "
        "95% over the 3 together), 1 of the 2 significant differences survive: A (higher). Not significant after it: B (higher).")


def test_note_negative_difference_counts_by_size():
    # four comparisons: bonferroni_z(4) = Phi^-1(1 - 0.05 / 8) = Phi^-1(0.99375) = 2.498 (tables:
    # Phi(2.49) = 0.99361, Phi(2.50) = 0.99379) -> "2.50"; chance count 0.05 * 4 = 0.2.
    # A: diff/se = -3.0 (lower, survives by its size); B: -2.1 (lower, not after correction);
    # C: 2.6 (survives 2.498); D: 0.5 (not significant).
    note = multiple_claims_note([("A", _p(-0.3, 0.1)), ("B", _p(-0.21, 0.1)), ("C", _p(0.26, 0.1)),
                                 ("D", _p(0.05, 0.1))])
    assert "about 0.2 of them would show one by chance" in note
    assert "interval of ±2.50 s.e., 95% over the 4 together" in note
    assert note.endswith("2 of the 3 significant differences survive: A (lower); C (higher). Not significant after it: B (lower).")


def test_note_all_survive():
    # two comparisons: bonferroni_z(2) = Phi^-1(1 - 0.05 / 4) = Phi^-1(0.9875) = 2.2414;
    # diff/se 3 and 4 both survive;
    # chance count 0.05 * 2 = 0.1
    note = multiple_claims_note([("A", _p(0.3, 0.1)), ("B", _p(0.4, 0.1))])
    assert "about 0.1 of them" in note
    assert note.endswith("every significant difference still is.")


def test_note_none_survives():
    # two comparisons at diff/se 2.0 and -2.1: both significant at 1.96, neither at 2.2414
    note = multiple_claims_note([("A", _p(0.2, 0.1)), ("B", _p(-0.21, 0.1))])
    assert note.endswith("0 of the 2 significant differences survive. Not significant after it: A (higher); B (lower).")


def test_note_none_significant():
    # diff/se 1.0 and 0.0: neither significant at 1.96
    note = multiple_claims_note([("A", _p(0.1, 0.1)), ("B", _p(0.0, 0.1))])
    assert note.endswith("the question does not arise: none was significant.")


# ---------------------------------------------------------------------------------------------
# unpaired()


def test_unpaired_from_two_spreads():
    # a: mean 0.5, std 0.3; b: mean 0.2, std 0.4; 25 images: s.e. sqrt((0.09 + 0.16) / 25) = 0.1;
    # difference 0.3, interval 0.3 -+ 1.959964 * 0.1 = [0.104004, 0.495996]: above 0
    p = unpaired(0.5, 0.3, 0.2, 0.4, 25)
    assert (p.a, p.b, p.n) == (0.5, 0.2, 25)
    assert p.diff == pytest.approx(0.3) and p.se == pytest.approx(0.1)
    assert p.low == pytest.approx(0.104004, abs=1e-6) and p.outcome == "higher"
    # the same means over 4 images: s.e. sqrt(0.25 / 4) = 0.25, interval 0.3 -+ 0.49: holds 0
    assert unpaired(0.5, 0.3, 0.2, 0.4, 4).outcome == "no significant difference"
    # the one quantile: a corrected z widens the interval (2.5 * 0.1 = 0.25 -> [0.05, 0.55])
    assert unpaired(0.5, 0.3, 0.2, 0.4, 25, z=2.5).low == pytest.approx(0.05)


def test_unpaired_needs_an_image():
    with pytest.raises(InputError, match="at least one image"):
        unpaired(0.5, 0.1, 0.2, 0.1, 0)
