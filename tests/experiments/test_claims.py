"""Claims as data (:mod:`robustlab.experiments.claims`), checked on hand-built records.

Records are built directly with :meth:`Record.of_outcomes`, nested 0/1 masks (the first ``k``
images robust or correct) so that every paired difference is worked out by hand: with ``k1``
and ``k2`` of ``n``, the per-image difference is 1 (or -1) on ``|k1 - k2|`` images and 0
elsewhere, so with ``p = |k1 - k2| / n`` the s.e. is ``sqrt(p (1 - p) / (n - 1))``.
"""

from collections.abc import Callable

import pytest

from robustlab.experiments.claims import (
    WORST,
    Claim,
    ClaimResult,
    Side,
    check_claims,
    render_verdict,
)
from robustlab.experiments.records import Record
from robustlab.experiments.sd_study import CONCLUSIVE, PROFILES, claims
from robustlab.experiments.stats import worst_case

Key = tuple[str, int, str]
Recs = dict[Key, Record]


def bits(k: int, n: int = 100) -> list[float]:
    """A nested 0/1 mask: the first ``k`` of ``n`` images robust (or correct), the rest not."""
    return [1.0] * k + [0.0] * (n - k)


def put(recs: Recs, variant: str, seed: int, column: str, kind: str, per_image: list[float],
        **kw) -> None:
    recs[(variant, seed, column)] = Record.of_outcomes(variant, seed, column, kind, per_image, **kw)


def check(claim_rows, recs: Recs, seeds=(0,), planned: Callable[[str], bool] = lambda name: True,
          ) -> list[ClaimResult]:
    """check_claims on ``recs``: the worst case of a (variant, seed) is the AND over its attack
    records (``None`` when it has none)."""
    def worst_of(variant: str, seed: int) -> list[float] | None:
        masks = [list(r.per_image) for (v, s, _), r in recs.items()
                 if v == variant and s == seed and r.kind == "attack"]
        return worst_case(masks) if masks else None

    def get(variant: str, seed: int, column: str) -> Record | None:
        return recs.get((variant, seed, column))

    return check_claims(list(claim_rows), list(seeds), get, worst_of, planned)


def one(claim: Claim, recs: Recs, **kw) -> ClaimResult:
    (result,) = check([claim], recs, **kw)
    return result


HIGHER = Claim("A beats B under PGD", "paper: 40 vs 1", Side("A", "pgd"), Side("B", "pgd"))


# ---------------------------------------------------------------------------------------------
# rule "higher"


@pytest.mark.parametrize("ka, kb, diff, se, verdict", [
    # 60 vs 20 of 100: diff 0.40; p = 0.4, s.e. sqrt(0.4 * 0.6 / 99) = sqrt(0.0024242) = 0.049237;
    # interval 0.40 -+ 0.0965 = [0.3035, 0.4965], above 0
    (60, 20, 0.40, 0.049237, "held"),
    # 21 vs 20: diff 0.01; p = 0.01, s.e. sqrt(0.01 * 0.99 / 99) = sqrt(0.0001) = 0.01;
    # interval 0.01 -+ 0.0196 = [-0.0096, 0.0296] holds 0
    (21, 20, 0.01, 0.01, "not shown at this sample size"),
    # 20 vs 60: diff -0.40, same s.e., interval [-0.4965, -0.3035], below 0
    (20, 60, -0.40, 0.049237, "did not hold"),
], ids=["held", "not-shown", "did-not-hold"])
def test_higher(ka, kb, diff, se, verdict):
    recs: Recs = {}
    put(recs, "A", 0, "pgd", "attack", bits(ka))
    put(recs, "B", 0, "pgd", "attack", bits(kb))
    r = one(HIGHER, recs)
    assert r.verdict == verdict
    assert r.comparison is not None
    assert r.comparison.diff == pytest.approx(diff)
    assert r.comparison.se == pytest.approx(se, abs=1e-6)
    assert r.seeds == 1
    assert r.tested is True
    assert r.error_scale is False


@pytest.mark.parametrize("ka, kb, n, verdict", [
    # 20 vs 0 of 1000: diff 0.02; p = 0.02, s.e. sqrt(0.02 * 0.98 / 999) = 0.0044294; interval
    # 0.02 -+ 0.00868 = [0.0113, 0.0287]: significant, yet wholly below the 0.05 threshold, so
    # the negligible gain is not the claim (SD in the arena: +0.18 pp against a paper's 40)
    (20, 0, 1000, "did not hold"),
    # 60 vs 20 of 100: interval [0.3035, 0.4965] (as above), above 0.05
    (60, 20, 100, "held"),
    # 27 vs 20 of 100: diff 0.07; p = 0.07, s.e. sqrt(0.07 * 0.93 / 99) = 0.025644; interval
    # 0.07 -+ 0.050262 = [0.0197, 0.1203] holds 0.05 (though it excludes 0)
    (27, 20, 100, "not shown at this sample size"),
], ids=["negligible", "material", "unclear"])
def test_higher_by_a_threshold_needs_a_material_gain(ka, kb, n, verdict):
    claim = Claim("A is robust", "paper: 40 vs 1", Side("A", "pgd"), Side("B", "pgd"), threshold=0.05, source="yardstick")
    recs: Recs = {}
    put(recs, "A", 0, "pgd", "attack", bits(ka, n))
    put(recs, "B", 0, "pgd", "attack", bits(kb, n))
    r = one(claim, recs)
    assert r.verdict == verdict
    assert r.comparison is not None and r.comparison.low > 0  # each "held" without the threshold
    assert "higher by more than 5.0 pp, 95% CI beyond it (yardstick)" in render_verdict([r])


def test_custom_words():
    # the verdict's words are the claim's own
    claim = Claim("c", "p", Side("A", "pgd"), Side("B", "pgd"), words=("yes", "maybe", "no"))
    recs: Recs = {}
    put(recs, "A", 0, "pgd", "attack", bits(20))
    put(recs, "B", 0, "pgd", "attack", bits(60))
    assert one(claim, recs).verdict == "no"


# ---------------------------------------------------------------------------------------------
# rule "no-worse-than"

CLEAN_DROP = Claim("Marginal drop", "89.05 -> 86.83", Side("A", "clean"),
                   Side("B", "clean", name="base"),
                   "no-worse-than", 0.025, "the paper's own")


@pytest.mark.parametrize("ka, verdict", [
    (181, "held"),  # 181 vs 185 of 200: drop 4 / 200 = 2.0 pp <= 2.5 pp
    (180, "held"),  # drop 5 / 200 = 2.5 pp: exactly the threshold, "at most" includes it
    (179, "did not hold"),  # drop 6 / 200 = 3.0 pp > 2.5 pp
])
def test_no_worse_than_clean(ka, verdict):
    recs: Recs = {}
    put(recs, "A", 0, "clean", "clean", bits(ka, 200))
    put(recs, "B", 0, "clean", "clean", bits(185, 200))
    r = one(CLEAN_DROP, recs)
    assert r.verdict == verdict
    assert r.comparison is not None
    assert r.comparison.diff == pytest.approx((ka - 185) / 200)
    # judged on the point estimate: no-worse-than rows are not in the multiple-claims family
    assert r.tested is False


def test_no_worse_than_ignores_significance():
    # 181 vs 185 of 200: d = -1 on 4 images; p = 0.02, s.e. sqrt(0.02 * 0.98 / 199) = 0.009924;
    # the interval [-0.0395, -0.0005] is below 0 (significantly lower), still held: the rule is
    # the point estimate against the threshold
    recs: Recs = {}
    put(recs, "A", 0, "clean", "clean", bits(181, 200))
    put(recs, "B", 0, "clean", "clean", bits(185, 200))
    r = one(CLEAN_DROP, recs)
    assert r.comparison is not None
    assert r.comparison.se == pytest.approx(0.009924, abs=1e-6)
    assert r.comparison.outcome == "lower"
    assert r.verdict == "held"


MCE = Claim("Insignificant mCE rise", "34.94 -> 38.34", Side("A", "mce"),
            Side("B", "mce", name="base"),
            "no-worse-than", 0.035, "the paper's own")


@pytest.mark.parametrize("low, verdict", [
    # A right on 0.8 and `low` of the corrupted versions alternately: 0.8 and 0.74 -> mean 0.77,
    # error 23% vs the baseline's 20%: the error rises 3.0 pp <= 3.5 pp
    (0.74, "held"),
    # 0.8 and 0.70 -> mean 0.75, error 25%: a 5.0 pp rise > 3.5 pp
    (0.70, "did not hold"),
])
def test_no_worse_than_corruption_bounds_error_rise(low, verdict):
    recs: Recs = {}
    put(recs, "A", 0, "mce", "corruption", [0.8, low] * 25)
    put(recs, "B", 0, "mce", "corruption", [0.8] * 50)
    r = one(MCE, recs)
    assert r.error_scale is True
    assert r.verdict == verdict


def test_corruption_measured_shows_errors():
    # A per image alternately 0.8 and 0.74 of 50 images right (error 1 - 0.77 = 23.00%), the
    # baseline 0.8 (error 20.00%). Per-image d = A - B = 0 and -0.06 alternately: mean -0.03, the
    # population std 0.03, sample std 0.03 sqrt(50/49),
    # s.e. = 0.03 sqrt(50/49) / sqrt(50) = 0.03 / 7
    # = 0.0042857 -> 0.43 pp. Half-width 1.959964 * 0.0042857 = 0.0084 -> the interval of the
    # accuracy difference [-0.0384, -0.0216]; stated as errors (sign -1): +3.00 pp,
    # [+2.16, +3.84].
    recs: Recs = {}
    put(recs, "A", 0, "mce", "corruption", [0.8, 0.74] * 25)
    put(recs, "B", 0, "mce", "corruption", [0.8] * 50)
    r = one(MCE, recs)
    assert r.comparison is not None
    assert r.comparison.se == pytest.approx(0.03 / 7, abs=1e-9)
    out = render_verdict([r])
    assert ("A 23.00% vs base 20.00% error (+3.00 pp, s.e. 0.43, 95% CI [+2.16, +3.84]; "
            "1 seed, 50 images)") in out
    assert "error rise at most 3.5 pp (the paper's own)" in out
    assert "**held**" in out


def test_clean_measured_shows_accuracies():
    # 181 vs 185 of 200: 90.50% vs 92.50%, -2.00 pp; s.e. 0.009924 -> 0.99; half-width
    # 1.959964 * 0.009924 = 0.019451 -> [-3.95, -0.05]
    recs: Recs = {}
    put(recs, "A", 0, "clean", "clean", bits(181, 200))
    put(recs, "B", 0, "clean", "clean", bits(185, 200))
    out = render_verdict([one(CLEAN_DROP, recs)])
    assert ("A 90.50% vs base 92.50% (-2.00 pp, s.e. 0.99, 95% CI [-3.95, -0.05]; "
            "1 seed, 200 images)") in out
    assert "drop at most 2.5 pp (the paper's own)" in out


def test_error_scale_does_not_depend_on_first_seed():
    # only seed 1 has records: the comparison uses seed 1; it is still a corruption column
    recs: Recs = {}
    put(recs, "A", 1, "mce", "corruption", [0.77] * 10)
    put(recs, "B", 1, "mce", "corruption", [0.8] * 10)
    r = one(MCE, recs, seeds=(0, 1))
    assert r.seeds == 1
    assert r.error_scale is True


# ---------------------------------------------------------------------------------------------
# Side outcome "clean"

SQUARE = Claim("Almost unaffected under Square", "86.83 -> 83.08", Side("A", "square"),
               Side("A", "square", "clean", "A clean"), "no-worse-than", 0.04, "the paper's own")


@pytest.mark.parametrize("robust, verdict", [
    (84, "held"),  # 84 robust vs 87 clean-right of the same 100 attacked images: drop 3 pp <= 4
    (82, "did not hold"),  # 82 vs 87: drop 5 pp > 4
])
def test_side_clean_reads_clean_per_image(robust, verdict):
    recs: Recs = {}
    put(recs, "A", 0, "square", "attack", bits(robust), clean_per_image=tuple(bits(87)))
    r = one(SQUARE, recs)
    assert r.comparison is not None
    assert r.comparison.a == pytest.approx(robust / 100)
    assert r.comparison.b == pytest.approx(0.87)  # the clean outcome, not the robust one
    assert r.verdict == verdict


def test_side_clean_rendered():
    recs: Recs = {}
    put(recs, "A", 0, "square", "attack", bits(84), clean_per_image=tuple(bits(87)))
    out = render_verdict([one(SQUARE, recs)])
    assert "A `square` vs A clean `square` (clean, same images)" in out
    assert "A 84.00% vs A clean 87.00%" in out


# ---------------------------------------------------------------------------------------------
# seeds


def test_seeds_both_sides_have():
    # A has seeds 0, 1, 2; B only 0 and 2: seed 1 is skipped. A over seeds 0 and 2 (60 and 40 of
    # 100, nested): images 0-39 -> 1, 40-59 -> 0.5, 60-99 -> 0, mean (40 + 10) / 100 = 0.5 (with
    # seed 1's 0 of 100 it would be (60 + 0 + 40) / 300 = 0.333). B: 20 of 100 on both, mean 0.2.
    # d per image: 0-19 -> 0, 20-39 -> 1, 40-59 -> 0.5, 60-99 -> 0: mean (20 + 10) / 100 = 0.3.
    # Squared deviations: 60 * 0.3^2 + 20 * 0.7^2 + 20 * 0.2^2 = 5.4 + 9.8 + 0.8 = 16.0;
    # s.e. = sqrt(16 / 99 / 100) = 0.040202 (the 100 images counted once, not once per seed).
    recs: Recs = {}
    for seed, k in ((0, 60), (1, 0), (2, 40)):
        put(recs, "A", seed, "pgd", "attack", bits(k))
    for seed in (0, 2):
        put(recs, "B", seed, "pgd", "attack", bits(20))
    r = one(HIGHER, recs, seeds=(0, 1, 2))
    assert r.seeds == 2
    assert r.comparison is not None
    assert r.comparison.n == 100
    assert r.comparison.a == pytest.approx(0.5)
    assert r.comparison.b == pytest.approx(0.2)
    assert r.comparison.diff == pytest.approx(0.3)
    assert r.comparison.se == pytest.approx(0.040202, abs=1e-6)
    assert r.verdict == "held"
    assert "2 seeds, 100 images" in render_verdict([r])


def test_seed_outside_the_list_is_ignored():
    # records of seed 5 exist but the study's seeds are (0,): nothing to compare
    recs: Recs = {}
    put(recs, "A", 5, "pgd", "attack", bits(60))
    put(recs, "B", 5, "pgd", "attack", bits(20))
    r = one(HIGHER, recs, seeds=(0,))
    assert r.seeds == 0
    assert r.verdict == "no records yet"


def test_not_applicable_record_is_skipped():
    # a record marked not applicable carries no outcomes and does not count
    recs: Recs = {}
    put(recs, "A", 0, "pgd", "attack", bits(60))
    put(recs, "B", 0, "pgd", "attack", bits(20))
    recs[("A", 1, "pgd")] = Record("A", 1, "pgd", "attack", not_applicable="deterministic model")
    put(recs, "B", 1, "pgd", "attack", bits(20))
    r = one(HIGHER, recs, seeds=(0, 1))
    assert r.seeds == 1
    assert r.comparison is not None
    assert r.comparison.diff == pytest.approx(0.40)


# ---------------------------------------------------------------------------------------------
# needs


NEEDY = Claim("Gain survives AutoAttack", "Sec. 5", Side("A", "pgd"), Side("B", "pgd"),
              needs=("aa", "aa-rand"),
              inconclusive="cannot say without AutoAttack")


def test_needs_unplanned_is_inconclusive_even_when_it_would_hold():
    recs: Recs = {}
    put(recs, "A", 0, "pgd", "attack", bits(60))
    put(recs, "B", 0, "pgd", "attack", bits(20))
    assert one(NEEDY, recs, planned=lambda name: True).verdict == "held"  # 60 vs 20: held
    r = one(NEEDY, recs, planned=lambda name: False)
    assert r.verdict == "cannot say without AutoAttack; this profile runs no aa or aa-rand"
    assert r.comparison is not None and r.comparison.diff == pytest.approx(0.40)
    # only the missing columns are named
    r = one(NEEDY, recs, planned=lambda name: name == "aa")
    assert r.verdict == "cannot say without AutoAttack; this profile runs no aa-rand"
    # an inconclusive row is not one of the comparisons the multiple-claims note counts
    assert r.tested is False and one(NEEDY, recs).tested is True


def test_higher_on_a_corruption_column_is_stated_as_lower_error():
    # SD right on 70% of each image's corrupted versions, the rival on 55%: errors 30% vs 45%
    recs: Recs = {}
    put(recs, "SD", 0, "mce", "corruption", [0.7] * 10)
    put(recs, "AN", 0, "mce", "corruption", [0.55] * 10)
    text = render_verdict([one(Claim("Lower mCE", "38 vs 43", Side("SD", "mce"), Side("AN", "mce")), recs)])
    assert "| lower error, 95% CI below 0 |" in text and "SD 30.00% vs AN 45.00% error (-15.00 pp" in text
    assert text.rstrip().endswith("| **held** |")


# ---------------------------------------------------------------------------------------------
# describe

DESCRIBE = Claim("EOT against plain PGD", "no claim", Side("A", "pgd-eot20", name="A EOT-20"),
                 Side("A", "pgd", name="A plain"), "describe")


@pytest.mark.parametrize("k_eot, verdict", [
    (20, "significantly lower"),  # 20 vs 60 of 100: interval [-0.4965, -0.3035], below 0
    (21, "no significant difference"),  # 21 vs 20: interval [-0.0096, 0.0296] holds 0
    (60, "significantly higher"),  # 60 vs 20
])
def test_describe(k_eot, verdict):
    recs: Recs = {}
    put(recs, "A", 0, "pgd-eot20", "attack", bits(k_eot))
    put(recs, "A", 0, "pgd", "attack", bits(60 if k_eot == 20 else 20))
    r = one(DESCRIBE, recs)
    assert r.verdict == verdict
    assert r.tested is True


def test_describe_ignores_needs_and_is_not_bold():
    claim = Claim("d", "p", Side("A", "pgd-eot20"), Side("A", "pgd"), "describe", needs=("aa",),
                  inconclusive="nope")
    recs: Recs = {}
    put(recs, "A", 0, "pgd-eot20", "attack", bits(20))
    put(recs, "A", 0, "pgd", "attack", bits(60))
    r = one(claim, recs, planned=lambda name: False)
    assert r.verdict == "significantly lower"
    out = render_verdict([r])
    assert "| significantly lower |" in out
    assert "**significantly lower**" not in out
    assert "reported, no claim" in out


# ---------------------------------------------------------------------------------------------
# no records


def test_no_records_yet():
    r = one(HIGHER, {}, seeds=(0, 1, 2))
    assert r.verdict == "no records yet"
    assert r.comparison is None
    assert r.seeds == 0
    assert r.tested is False
    out = render_verdict([r])
    assert "| — |" in out  # nothing measured
    assert "**no records yet**" in out


def test_no_seeds_at_all():
    r = one(HIGHER, {}, seeds=())
    assert r.verdict == "no records yet"
    assert r.comparison is None


def test_one_side_missing_is_no_records():
    recs: Recs = {}
    put(recs, "A", 0, "pgd", "attack", bits(60))
    assert one(HIGHER, recs).verdict == "no records yet"


# ---------------------------------------------------------------------------------------------
# render_verdict


def _table_rows(text: str) -> int:
    """Markdown table lines: those starting with '| ', less the header (the separator starts
    with '|-')."""
    return sum(1 for line in text.splitlines() if line.startswith("| ")) - 1


def test_render_one_row_per_claim_and_note():
    # three rows: two 'higher' claims with records (tested), one no-worse-than (not tested).
    # The note counts 2 comparisons: 0.05 * 2 = 0.1 by chance.
    other = Claim("B beats A under Square", "p", Side("B", "square"), Side("A", "square"))
    recs: Recs = {}
    put(recs, "A", 0, "pgd", "attack", bits(60))
    put(recs, "B", 0, "pgd", "attack", bits(20))
    put(recs, "A", 0, "square", "attack", bits(20))
    put(recs, "B", 0, "square", "attack", bits(21))
    put(recs, "A", 0, "clean", "clean", bits(181, 200))
    put(recs, "B", 0, "clean", "clean", bits(185, 200))
    results = check([HIGHER, other, CLEAN_DROP], recs)
    out = render_verdict(results)
    assert _table_rows(out) == 3
    assert out.splitlines()[0] == "| claim | paper | comparison | rule | measured here | verdict |"
    assert "**held**" in out
    assert "**not shown at this sample size**" in out
    assert "2 comparisons were tested at 95% each" in out
    assert "about 0.1 of them would show one by chance" in out
    # A's +40 pp (s.e. 4.92 pp, z = 8.1) survives bonferroni_z(2) = 2.24; B's +1 pp was not
    # significant: every significant difference still is
    assert "every significant difference still is." in out


def test_render_no_note_for_one_tested():
    recs: Recs = {}
    put(recs, "A", 0, "pgd", "attack", bits(60))
    put(recs, "B", 0, "pgd", "attack", bits(20))
    put(recs, "A", 0, "clean", "clean", bits(181, 200))
    put(recs, "B", 0, "clean", "clean", bits(185, 200))
    out = render_verdict(check([HIGHER, CLEAN_DROP, MCE], recs))
    assert _table_rows(out) == 3  # MCE has no records: its row still appears
    assert "comparisons were tested" not in out
    assert out.endswith("|\n")


def test_render_no_claims():
    assert render_verdict([]) == "No claims to check.\n"


def test_render_worst_side_text():
    claim = Claim("w", "p", Side("A", WORST), Side("B", WORST, name="base"))
    out = render_verdict(check([claim], {}))
    assert "A `per-sample worst case` vs base `per-sample worst case`" in out


# ---------------------------------------------------------------------------------------------
# the stochastic-downsampling recipe's claims

CPU = PROFILES["cpu"].config  # seeds (0, 1, 2), AutoAttack standard and rand planned
QUICK = PROFILES["quick"].config  # seed (0,), no AutoAttack
FALSE_SENSE = "Does not provide a false sense of security"
MARGINAL = "Marginal drop in i.i.d. accuracy"


def by_claim(results: list[ClaimResult]) -> dict[str, ClaimResult]:
    return {r.claim.claim: r for r in results}


@pytest.mark.parametrize("sd_correct, verdict", [
    (181, "held"),  # 181 vs 185 of 200: a 2.0 pp drop, within the paper's 2.5 pp
    (179, "did not hold"),  # 179 vs 185: a 3.0 pp drop, beyond it
])
def test_sd_marginal_drop(sd_correct, verdict):
    # the same outcomes on every seed: the per-image average over the 3 seeds is the outcome itself
    recs: Recs = {}
    for seed in CPU.seeds:
        put(recs, "SD", seed, "clean", "clean", bits(sd_correct, 200))
        put(recs, "Baseline", seed, "clean", "clean", bits(185, 200))
    results = by_claim(check(claims(CPU), recs, seeds=CPU.seeds))
    r = results[MARGINAL]
    assert r.verdict == verdict
    assert r.seeds == 3
    assert r.comparison is not None
    assert r.comparison.diff == pytest.approx((sd_correct - 185) / 200)
    # every other claim lacks records (SD's clean column is also a side of the comparison with
    # AddNoise, whose records are absent; no attack records, so no worst case)
    assert all(x.verdict == "no records yet" for name, x in results.items() if name != MARGINAL)


def _sd_attacks(recs: Recs, seeds, sd_worst: int, base_worst: int) -> None:
    """SD: PGD leaves 90 robust, AutoAttack and AA rand ``sd_worst`` (nested, so the worst case
    is ``sd_worst``); the baseline: PGD and AutoAttack both ``base_worst``."""
    for seed in seeds:
        put(recs, "SD", seed, "pgd", "attack", bits(90))
        put(recs, "SD", seed, "aa", "attack", bits(sd_worst))
        put(recs, "SD", seed, "aa-rand", "attack", bits(sd_worst))
        put(recs, "Baseline", seed, "pgd", "attack", bits(base_worst))
        put(recs, "Baseline", seed, "aa", "attack", bits(base_worst))


def test_sd_false_sense_quick_profile_inconclusive():
    # the quick profile runs no AutoAttack: the row cannot conclude, even with a 60-vs-20 gain
    recs: Recs = {}
    _sd_attacks(recs, QUICK.seeds, 60, 20)
    results = by_claim(check(claims(QUICK), recs, seeds=QUICK.seeds,
                             planned=lambda c: c not in ("aa", "aa-rand")))
    r = results[FALSE_SENSE]
    assert r.verdict.startswith("not conclusive about adaptive robustness")
    assert r.verdict == CONCLUSIVE + "; this profile runs no aa or aa-rand"
    assert r.comparison is not None and r.comparison.diff == pytest.approx(0.40)


@pytest.mark.parametrize("sd_worst, verdict", [
    # worst case 60 vs 20 of 100: +40 pp, interval [0.3035, 0.4965]
    (60, "a robustness gain survives adaptive attacks"),
    # 20 vs 20: d = 0 everywhere, s.e. 0, interval [0, 0] holds 0
    (20, "no robustness gain is shown once adaptive attacks are used, at this sample size"),
    # 10 vs 20: -10 pp, s.e. sqrt(0.1 * 0.9 / 99) = 0.030151, interval [-0.159, -0.041]
    (10, "SD is less robust than the baseline under adaptive attacks"),
])
def test_sd_false_sense_cpu_profile(sd_worst, verdict):
    recs: Recs = {}
    _sd_attacks(recs, CPU.seeds, sd_worst, 20)
    results = by_claim(check(claims(CPU), recs, seeds=CPU.seeds))
    r = results[FALSE_SENSE]
    assert r.verdict == verdict
    assert r.seeds == 3
    assert r.comparison is not None
    assert r.comparison.a == pytest.approx(sd_worst / 100)
    assert r.comparison.b == pytest.approx(0.20)
    # the same records answer 'Robust to AutoAttack standard' (SD aa vs baseline aa)
    aa = results["Robust to AutoAttack standard"]
    assert aa.comparison is not None and aa.comparison.diff == pytest.approx((sd_worst - 20) / 100)
    # and the describe row 'AutoAttack rand against SD' compares equal masks
    assert results["AutoAttack rand against SD"].verdict == "no significant difference"


def test_sd_verdict_table_rows():
    # one table row per claim of the cpu profile, whatever has records
    rows = claims(CPU)
    recs: Recs = {}
    _sd_attacks(recs, CPU.seeds, 60, 20)
    out = render_verdict(check(rows, recs, seeds=CPU.seeds))
    assert _table_rows(out) == len(rows)
    assert "**a robustness gain survives adaptive attacks**" in out
