"""The sd-study recipe.

Its tables and verdict are checked on synthetic per-seed records (the dicts ``_Study.evaluate``
writes to ``evals/<slug>-seed<k>.json``) whose right answer is worked out by hand in each test;
one slow test runs the recipe on tiny data, kills it, resumes it and compares it with an
uninterrupted run.
"""

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from robustlab.checkpoints import load
from robustlab.core import InputError
from robustlab.core.metrics import predict
from robustlab.data import load_dataset
from robustlab.evaluate import Ledger
from robustlab.experiments.sd_study import (
    ADDNOISE,
    BASELINE,
    PROFILES,
    SD,
    SDStudyConfig,
    _cols_table1,
    _complete,
    _table,
    _verdict,
    _worst_mask,
    _worst_value,
    paired,
    run_sd_study,
    study_config,
)

# ---------------------------------------------------------------------------------------------
# synthetic records

N = 100  # attacked images
N_CLEAN = 200  # clean images
N_CORRUPTED = 50  # images behind the mCE
CPU = PROFILES["cpu"]  # every column: AutoAttack standard and rand, EOT-20 and EOT-64, spp 1..16
QUICK = PROFILES["quick"]  # the demo's: no AutoAttack, EOT-20 only

HELD, NOT_SHOWN, FAILED = "**held**", "**not shown** at this sample size", "**did not hold**"

# Robust counts (of N) for the first and the second model, the paired difference and its s.e.
# worked by hand, the outcome and the verdict of a "first is higher" claim. Nested masks: the
# difference is 1 on |k1 - k2| images and 0 elsewhere, so with p = |k1 - k2| / N,
# s.e. = sqrt(p (1 - p) N / (N - 1) / N): 40 of 100 -> sqrt(0.24 / 99) = 4.92 pp; 1 of 100 ->
# sqrt(0.0099 / 99) = 1.00 pp, which is within twice the s.e.
DIRECTIONS = [
    pytest.param(60, 20, "+40.00 pp, s.e. 4.92", "higher", HELD, id="higher"),
    pytest.param(21, 20, "+1.00 pp, s.e. 1.00", "no significant difference", NOT_SHOWN, id="within-noise"),
    pytest.param(20, 60, "-40.00 pp, s.e. 4.92", "lower", FAILED, id="lower"),
]


def bits(k: int, n: int = N) -> str:
    """A per-image 0/1 mask: the first ``k`` images robust (or correct), the rest not."""
    return "1" * k + "0" * (n - k)


def attacked(robust: str, clean: str | None = None) -> dict[str, Any]:
    """A battery's entry, as ``_Study._battery`` writes it."""
    clean = clean or "1" * len(robust)
    return {"acc": robust.count("1") / len(robust), "clean_acc": clean.count("1") / len(clean),
            "robust": robust, "per_attack": {}, "seconds": 0.0, "wall": 0.0}


def record(cfg: SDStudyConfig, robust: int = 50, *, correct: int = 180, right: float = 0.8,
           stochastic: bool = True, **columns: int) -> dict[str, Any]:
    """One seed's evals of one model with every Table 1 column of ``cfg``: ``correct`` of N_CLEAN
    images right, each corrupted image right with fraction ``right``, every attack leaving the first
    ``robust`` images robust except the ``columns`` given (``pgd_eot20=10``: 10 robust under
    EOT-20). A deterministic model gets what ``_Study.evaluate`` writes for one: EOT columns copy
    PGD, AutoAttack rand and the twin transfer are not run."""
    e: dict[str, Any] = {
        "stochastic": stochastic,
        "clean": {"acc": correct / N_CLEAN, "correct": bits(correct, N_CLEAN), "wall": 0.0},
        "mce": {"acc": 1 - right, "per_image": [right] * N_CORRUPTED, "accuracy": {}, "wall": 0.0},
    }
    for col in _cols_table1(cfg):
        if col not in e:
            e[col] = attacked(bits(robust))
    for name, k in columns.items():
        e[name.replace("_", "-")] = attacked(bits(k))
    if not stochastic:
        for col in e:
            if col.startswith("pgd-eot"):
                e[col] = {**e["pgd"], "same_as": "pgd"}
            elif col in ("aa-rand", "twin"):
                e[col] = {"acc": None, "note": "deterministic model"}
    return e


def baseline(cfg: SDStudyConfig, robust: int = 20, **kw: Any) -> dict[str, Any]:
    return record(cfg, robust, stochastic=False, **kw)


def verdict(cfg: SDStudyConfig, table1: dict[str, Any], table4: dict[str, Any] | None = None,
            table5: dict[str, Any] | None = None) -> str:
    """``_verdict`` on tables whose rows are one record (one seed) or a list of them."""
    def rows(t: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
        return {k: v if isinstance(v, list) else [v] for k, v in (t or {}).items()}

    r = {"tables": {"table1": rows(table1), "table4": rows(table4), "table5": rows(table5)},
         "eval_images": N, "clean_images": N_CLEAN}
    return _verdict(r, cfg)


def claim(text: str, start: str) -> str:
    """The verdict's one line that starts with ``start``."""
    found = [line for line in text.splitlines() if line.startswith(f"- {start}")]
    assert len(found) == 1, text
    return found[0]


# ---------------------------------------------------------------------------------------------
# the paired comparison, the worst case and the tables


def test_paired_comparison_counts_each_image_once():
    a = [1.0, 1.0, 1.0, 0.0] * 25
    b = [1.0, 0.0, 1.0, 0.0] * 25
    p = paired(a, b)
    assert p.n == 100 and p.a == 0.75 and p.b == 0.5 and p.diff == pytest.approx(0.25)
    # d is 0.25 on average with sample variance 0.25 * 0.75 * 100 / 99
    assert p.se == pytest.approx((0.25 * 0.75 * 100 / 99 / 100) ** 0.5)
    assert p.outcome == "higher" and paired(b, a).outcome == "lower"
    assert paired(a, a).outcome == "no significant difference" and paired(a, a).se == 0.0
    # a 3-image difference among 100 is within noise
    c = [1.0] * 3 + [0.0] * 97
    assert paired(c, [0.0] * 100).outcome == "no significant difference"
    with pytest.raises(InputError, match="two equal, non-empty lists"):
        paired(a, b[:10])


def test_paired_comparison_of_seed_averaged_outcomes():
    # d = [1, 0, 0, 0.5]: mean 0.375; deviations 0.625, -0.375, -0.375, 0.125 square to 0.6875,
    # sample variance 0.6875 / 3, s.e. sqrt(0.6875 / 3 / 4) = 0.23936
    p = paired([1.0, 1.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.0])
    assert (p.a, p.b, p.n) == (0.625, 0.25, 4)
    assert p.diff == pytest.approx(0.375) and p.se == pytest.approx(0.239357, abs=1e-6)
    assert p.outcome == "no significant difference"  # 0.375 < 2 x 0.239
    assert p.text() == "+37.50 pp, s.e. 23.94"


def test_verdict_averages_seeds_per_image_before_comparing():
    # SD robust on the first 60 images with seed 0 and the first 40 with seed 1, the baseline on
    # the first 20 with both: per image SD - baseline is 0 (images 0-19), 1 (20-39), 0.5
    # (40-59), 0 (60-99); mean 0.3, squared deviations 20 x 0.49 + 20 x 0.04 + 60 x 0.09 = 16,
    # s.e. sqrt(16 / 99 / 100) = 4.02 pp (pooling 200 image-seeds would give 3.9 pp)
    sd = [record(CPU, 60), record(CPU, 40)]
    line = claim(verdict(CPU, {"Baseline": [baseline(CPU)] * 2, "SD": sd}), "Robustness to PGD")
    assert "SD 50.00% vs baseline 20.00% (+30.00 pp, s.e. 4.02; SD higher) -> **held**." in line


def test_worst_case_is_per_sample_across_every_column():
    # each attack alone leaves 3 of 4 robust, but no sample survives all but two of them
    e = {"clean": {"acc": 1.0, "correct": "1111"}, "mce": {"acc": 0.0, "per_image": [1.0] * 4},
         "pgd": attacked("1111"), "square": attacked("1110"), "tb-pgd": attacked("1011"),
         "aa-rand": {"acc": None, "note": "deterministic model"}}
    assert _worst_mask(e) == [1.0, 0.0, 1.0, 0.0] and _worst_value(e) == 0.5
    # every column but one robust still counts as broken
    assert _worst_value({"pgd": attacked("1111"), "square": attacked("1111"), "aa": attacked("1110")}) == 0.75
    assert _worst_mask({"clean": {"acc": 1.0, "correct": "1111"}}) is None  # no attack, no worst case
    table = _table({"m": [e]}, ["clean", "pgd", "square"], worst=True)
    assert table.splitlines()[-1] == "| m | 100.00 | 100.00 | 75.00 | 50.00 |"


def test_worst_case_counts_only_seeds_with_every_column_of_the_table():
    cols = ["clean", "pgd", "square"]
    whole = {"clean": {"acc": 1.0, "correct": "1111"}, "pgd": attacked("1100"), "square": attacked("1110")}
    lacks_square = {"clean": {"acc": 1.0, "correct": "1111"}, "pgd": attacked("1111")}
    assert _complete([whole, lacks_square], cols) == [whole, {}]
    row = _table({"m": [whole, lacks_square]}, cols, worst=True).splitlines()[-1]
    # PGD averages both seeds (50 and 100); the worst case only seed 0, and says so
    assert row == "| m | 100.00 ± 0.00 | 75.00 ± 35.36 | 75.00 (1 of 2 seeds) | 50.00 (1 of 2 seeds) |"


def test_worst_case_waits_for_the_tables_own_columns():
    transfer_only = {"tb-pgd": {"acc": 0.75, "robust": "1110"}}
    done = {"clean": {"acc": 1.0, "correct": "1111"}, "pgd": {"acc": 0.5, "robust": "1100"}, **transfer_only}
    table = _table({"partial": [transfer_only], "done": [done]}, ["clean", "pgd"], worst=True)
    partial_row = next(line for line in table.splitlines() if line.startswith("| partial"))
    done_row = next(line for line in table.splitlines() if line.startswith("| done"))
    assert partial_row.rstrip().endswith("| — |")  # one transfer attack is no worst case
    assert done_row.rstrip().endswith("| 50.00 |")  # per sample over pgd and tb-pgd: 1100 & 1110


def test_verdict_worst_case_skips_a_seed_missing_a_column():
    # seed 1 of SD has only PGD (killed before its other columns): its 90 robust images must not
    # enter the worst case, which is then seed 0 alone, 60 vs 20
    partial = {"clean": record(CPU)["clean"], "pgd": attacked(bits(90))}
    text = verdict(CPU, {"Baseline": [baseline(CPU)] * 2, "SD": [record(CPU, 60), partial]})
    line = claim(text, '"Does not provide a false sense of security"')
    assert "SD 60.00% vs baseline 20.00% (+40.00 pp, s.e. 4.92; SD higher" in line


# ---------------------------------------------------------------------------------------------
# every claim of the verdict, in every direction


@pytest.mark.parametrize(("sd_correct", "expected"), [
    # of 200 clean images: a drop of 2 pp (s.e. sqrt(0.02 x 0.98 x 200 / 199 / 200)), exactly the
    # 2.5 pp bound, SD better than the baseline, and 5 pp (s.e. 1.54)
    (176, "SD 88.00% vs baseline 90.00% (-2.00 pp, s.e. 0.99) -> **held**."),
    (175, "SD 87.50% vs baseline 90.00% (-2.50 pp, s.e. 1.11) -> **held**."),
    (190, "SD 95.00% vs baseline 90.00% (+5.00 pp, s.e. 1.54) -> **held**."),
    (170, "SD 85.00% vs baseline 90.00% (-5.00 pp, s.e. 1.54) -> **did not hold**."),
])
def test_claim_marginal_clean_drop(sd_correct, expected):
    text = verdict(CPU, {"Baseline": baseline(CPU, correct=180), "SD": record(CPU, correct=sd_correct)})
    assert claim(text, '"Marginal drop in i.i.d. accuracy"').endswith(expected)


@pytest.mark.parametrize(("sd_right", "expected"), [
    (0.77, "SD mCE 23.00% vs baseline 20.00% (+3.00 pp, s.e. 0.00) -> **held**."),
    (0.85, "SD mCE 15.00% vs baseline 20.00% (-5.00 pp, s.e. 0.00) -> **held**."),
    (0.75, "SD mCE 25.00% vs baseline 20.00% (+5.00 pp, s.e. 0.00) -> **did not hold**."),
])
def test_claim_insignificant_mce_rise(sd_right, expected):
    text = verdict(CPU, {"Baseline": baseline(CPU, right=0.8), "SD": record(CPU, right=sd_right)})
    assert claim(text, '"Insignificant drop in generalization"').endswith(expected)


@pytest.mark.parametrize(("col", "start"), [
    ("pgd", "Robustness to PGD, the paper's protocol"),
    ("aa", "Robustness to AutoAttack standard"),
    ("square", "Robustness to the black-box Square attack (1000 queries)"),
])
@pytest.mark.parametrize(("sd_k", "base_k", "diff", "outcome", "word"), DIRECTIONS)
def test_claim_robustness_gain_over_the_baseline(col, start, sd_k, base_k, diff, outcome, word):
    text = verdict(CPU, {"Baseline": baseline(CPU, 40, **{col: base_k}), "SD": record(CPU, 40, **{col: sd_k})})
    assert claim(text, start).endswith(f": SD {sd_k:.2f}% vs baseline {base_k:.2f}% ({diff}; SD {outcome}) -> {word}.")


def test_no_autoattack_claims_without_autoattack():
    text = verdict(QUICK, {"Baseline": baseline(QUICK), "SD": record(QUICK)})
    assert not [line for line in text.splitlines() if line.startswith(("- Robustness to AutoAttack", "- AutoAttack"))]
    assert "Robustness to PGD" in text and "(200 queries)" in text


@pytest.mark.parametrize(("square", "expected"), [
    (87, "SD 87.00% under Square vs 90.00% clean on the same images -> **held**."),  # 3 pp below clean
    (80, "SD 80.00% under Square vs 90.00% clean on the same images -> **did not hold**."),  # 10 pp
])
def test_claim_almost_unaffected_under_square(square, expected):
    sd = record(CPU)
    sd["square"] = attacked(bits(square), clean=bits(90))
    text = verdict(CPU, {"Baseline": baseline(CPU), "SD": sd})
    assert claim(text, '"Almost unaffected under Square"').endswith(expected)


def test_claim_almost_unaffected_under_square_averages_seeds():
    # 88 of 90 on seed 0 would hold alone; with 78 of 90 on seed 1 the mean drop is 7 pp
    seeds = [record(CPU), record(CPU)]
    seeds[0]["square"] = attacked(bits(88), clean=bits(90))
    seeds[1]["square"] = attacked(bits(78), clean=bits(90))
    text = verdict(CPU, {"Baseline": [baseline(CPU)] * 2, "SD": seeds})
    assert claim(text, '"Almost unaffected under Square"').endswith(
        "SD 83.00% under Square vs 90.00% clean on the same images -> **did not hold**.")


@pytest.mark.parametrize(("sd_correct", "an_correct", "expected"), [
    # of 200: 30 images apart, s.e. sqrt(0.15 x 0.85 x 200 / 199 / 200) = 2.53 pp; 1 apart, 0.50
    (180, 150, "SD 90.00% vs AddNoise 75.00% (+15.00 pp, s.e. 2.53; SD higher) -> **held**."),
    (181, 180, "SD 90.50% vs AddNoise 90.00% (+0.50 pp, s.e. 0.50; SD no significant difference) -> "
               "**not shown** at this sample size."),
    (150, 180, "SD 75.00% vs AddNoise 90.00% (-15.00 pp, s.e. 2.53; SD lower) -> **did not hold**."),
])
def test_claim_sd_cleaner_than_addnoise(sd_correct, an_correct, expected):
    t1 = {"Baseline": baseline(CPU), "SD": record(CPU, correct=sd_correct),
          ADDNOISE.label: record(CPU, correct=an_correct)}
    assert claim(verdict(CPU, t1), "Better i.i.d. accuracy than AddNoise").endswith(expected)


@pytest.mark.parametrize(("sd_right", "an_right", "expected"), [
    (0.8, 0.6, "SD 20.00% vs AddNoise 40.00% -> **held**."),
    (0.8, 0.8, "SD 20.00% vs AddNoise 20.00% -> **not shown** at this sample size."),
    (0.6, 0.8, "SD 40.00% vs AddNoise 20.00% -> **did not hold**."),
])
def test_claim_sd_lower_mce_than_addnoise(sd_right, an_right, expected):
    t1 = {"Baseline": baseline(CPU), "SD": record(CPU, right=sd_right), ADDNOISE.label: record(CPU, right=an_right)}
    assert claim(verdict(CPU, t1), "Lower mCE than AddNoise").endswith(expected)


def test_no_addnoise_claims_without_addnoise():
    text = verdict(CPU, {"Baseline": baseline(CPU), "SD": record(CPU)})
    assert "AddNoise" not in text
    claim(text, "Robustness to PGD")  # a verdict with its other claims, not an empty one


@pytest.mark.parametrize(("sd_k", "an_k", "diff", "outcome", "word"), DIRECTIONS)
def test_claim_transfer_from_the_baseline_hurts_sd_less(sd_k, an_k, diff, outcome, word):
    t1 = {"Baseline": baseline(CPU), "SD": record(CPU)}
    t4 = {"Baseline": baseline(CPU), "SD": record(CPU, tb_pgd=sd_k), ADDNOISE.label: record(CPU, tb_pgd=an_k)}
    line = claim(verdict(CPU, t1, table4=t4), "Transfer from the baseline hurts SD less")
    assert line.endswith(f": SD {sd_k:.2f}% vs AddNoise {an_k:.2f}% ({diff}; SD {outcome}) -> {word}.")


@pytest.mark.parametrize(("lo_k", "hi_k", "diff", "outcome", "word"), DIRECTIONS)
def test_claim_pgd_robustness_falls_with_spp(lo_k, hi_k, diff, outcome, word):
    t1 = {"Baseline": baseline(CPU), "SD": record(CPU)}
    t5 = {"SD (spp=1)": record(CPU, lo_k), "SD": record(CPU, 30), "SD (spp=16)": record(CPU, hi_k)}
    line = claim(verdict(CPU, t1, table5=t5), "PGD robustness falls as spp grows")
    assert line.endswith(f"spp=1 vs spp=16: spp=1 {lo_k:.2f}% vs spp=16 {hi_k:.2f}% ({diff}; spp=1 {outcome}) "
                         f"-> {word}.")


def test_no_spp_claim_without_both_ends_of_the_sweep():
    t1 = {"Baseline": baseline(CPU), "SD": record(CPU)}
    text = verdict(CPU, t1, table5={"SD (spp=1)": record(CPU, 60), "SD": record(CPU, 20)})
    assert "spp grows" not in text
    claim(text, "Robustness to PGD")  # a verdict with its other claims, not an empty one


# the adaptive columns of SD against the column they refine: (robust count in the adaptive
# column with SD robust on 60 in the reference and 30 in every other column, the rendered
# difference and outcome)
ADAPTIVE_DIRECTIONS = [
    pytest.param(20, "-40.00 pp, s.e. 4.92", "significantly lower", id="lower"),
    pytest.param(60, "+0.00 pp, s.e. 0.00", "no significant difference", id="same"),
    pytest.param(100, "+40.00 pp, s.e. 4.92", "significantly higher", id="higher"),
]


@pytest.mark.parametrize("draws", [20, 64])
@pytest.mark.parametrize(("k", "diff", "outcome"), ADAPTIVE_DIRECTIONS)
def test_eot_lines_compare_with_plain_pgd(draws, k, diff, outcome):
    sd = record(CPU, 30, pgd=60, **{f"pgd_eot{draws}": k})
    line = claim(verdict(CPU, {"Baseline": baseline(CPU), "SD": sd}), f"PGD with EOT-{draws} against SD")
    got = outcome if outcome.startswith("no ") else f"{outcome} than plain PGD"
    assert line == f"- PGD with EOT-{draws} against SD: {k:.2f}% ({diff} against plain PGD; {got})."


@pytest.mark.parametrize(("k", "diff", "outcome"), ADAPTIVE_DIRECTIONS)
def test_aa_rand_line_compares_with_aa_standard(k, diff, outcome):
    sd = record(CPU, 30, aa=60, aa_rand=k)
    line = claim(verdict(CPU, {"Baseline": baseline(CPU), "SD": sd}), "AutoAttack rand")
    assert line == (f"- AutoAttack rand (APGD-CE and APGD-DLR with EOT-20) against SD: {k:.2f}% "
                    f"vs AutoAttack standard 60.00% ({diff}; {outcome}).")


@pytest.mark.parametrize(("k", "diff", "outcome"), ADAPTIVE_DIRECTIONS)
def test_twin_line_compares_with_plain_pgd(k, diff, outcome):
    sd = record(CPU, 30, pgd=60, twin=k)
    line = claim(verdict(CPU, {"Baseline": baseline(CPU), "SD": sd}), "PGD crafted on SD's deterministic twin")
    assert line == (f"- PGD crafted on SD's deterministic twin and transferred: {k:.2f}% vs plain PGD 60.00% "
                    f"({diff}; {outcome}).")


# SD's worst case against the baseline's (20 robust everywhere): SD robust on 60 under every
# attack but one, which leaves ``k``; SD's PGD gain is 40 pp
WORST_CASES = [
    pytest.param("pgd_eot64", 60, "+40.00 pp, s.e. 4.92; SD higher; 100% of SD's PGD gain remains",
                 "**a robustness gain survives adaptive attacks**", id="gain"),
    # 2 of 100 apart: s.e. sqrt(0.02 x 0.98 / 99) = 1.41 pp, within twice the s.e.; 2 / 40 = 5%
    pytest.param("aa_rand", 22, "+2.00 pp, s.e. 1.41; SD no significant difference; 5% of SD's PGD gain remains",
                 "**no robustness gain is shown once adaptive attacks are used** (at this sample size)",
                 id="no-gain"),
    pytest.param("twin", 10, "-10.00 pp, s.e. 3.02; SD lower; 0% of SD's PGD gain remains",
                 "**SD is less robust than the baseline under adaptive attacks**", id="loss"),
]


@pytest.mark.parametrize(("col", "k", "numbers", "conclusion"), WORST_CASES)
def test_final_conclusion_with_autoattack_rand(col, k, numbers, conclusion):
    sd = record(CPU, 60, **{col: k})
    line = claim(verdict(CPU, {"Baseline": baseline(CPU), "SD": sd}), '"Does not provide a false sense of security"')
    assert line.endswith(f": SD {k:.2f}% vs baseline 20.00% ({numbers}) -> {conclusion}.")
    assert "AutoAttack rand, PGD transferred from the deterministic twin" in line


NOT_CONCLUSIVE = ("**not conclusive about adaptive robustness**: the {profile} profile's battery lacks {lacks}; "
                  "see the cpu profile's numbers (`robustlab run sd-study --profile cpu`, report at "
                  "`runs/sd-study-cpu/report.md`).")


@pytest.mark.parametrize(("cfg", "lacks"), [
    pytest.param(QUICK, "AutoAttack standard and AutoAttack rand (APGD-CE and APGD-DLR with EOT)", id="quick"),
    pytest.param(replace(CPU, aa_rand=False), "AutoAttack rand (APGD-CE and APGD-DLR with EOT)", id="no-aa-rand"),
    pytest.param(replace(CPU, autoattack=False), "AutoAttack standard", id="no-aa"),
])
@pytest.mark.parametrize(("col", "k", "numbers"), [
    pytest.param("pgd_eot20", 60, "+40.00 pp, s.e. 4.92; SD higher", id="gain"),
    pytest.param("twin", 22, "+2.00 pp, s.e. 1.41; SD no significant difference", id="no-gain"),
    pytest.param("twin", 10, "-10.00 pp, s.e. 3.02; SD lower", id="loss"),
])
def test_final_conclusion_is_not_conclusive_without_autoattack_rand(cfg, lacks, col, k, numbers):
    sd = record(cfg, 60, **{col: k})
    text = verdict(cfg, {"Baseline": baseline(cfg), "SD": sd})
    line = claim(text, '"Does not provide a false sense of security"')
    assert f": SD {k:.2f}% vs baseline 20.00% ({numbers}" in line
    assert line.endswith(" -> " + NOT_CONCLUSIVE.format(profile=cfg.profile, lacks=lacks))
    assert "survives" not in text and "less robust than the baseline" not in text


def test_verdict_needs_the_baseline_and_sd():
    assert verdict(CPU, {"Baseline": baseline(CPU)}).startswith("Not enough results for a verdict")
    empty = verdict(CPU, {"Baseline": [{}], "SD": [{}]})
    assert empty.count("\n- ") == 0  # nothing finished, no claim
    assert "What the paper reports" in empty  # the verdict's frame is still written


# ---------------------------------------------------------------------------------------------
# the report path, from files


def test_report_from_the_run_folder(tmp_path):
    # three seeds of the baseline; SD finished seeds 0 and 1 (robust on 60 and 40 images under
    # every attack), seed 2 only its clean and PGD columns, seed 0 alone its Table 4 transfer
    cfg = study_config("quick", dataset="digits", eval_n=N, clean_n=N_CLEAN, seeds=(0, 1, 2),
                       table1=(BASELINE, SD), transfer_from_baseline=(BASELINE, SD), spp_sweep=(1, 2))
    evals = tmp_path / "evals"
    evals.mkdir()

    def write(slug: str, seed: int, e: dict[str, Any]) -> None:
        (evals / f"{slug}-seed{seed}.json").write_text(json.dumps(e))

    for s in range(3):
        write("baseline", s, baseline(cfg, correct=180, square=30, tb_pgd=20))
    write("sd", 0, record(cfg, 60, correct=176, tb_pgd=60))
    write("sd", 1, record(cfg, 40, correct=176))
    write("sd", 2, {"stochastic": True, "clean": record(cfg, correct=176)["clean"], "pgd": attacked(bits(50))})

    r = run_sd_study(tmp_path, cfg, report_only=True)
    assert r["partial"] is True and not (tmp_path / "models").exists()
    report = (tmp_path / "report.md").read_text()
    assert "Partial report" in report
    # i.i.d., PGD, Square, mCE, EOT-20, twin, worst case: a deterministic baseline has no twin
    # transfer; SD's columns past PGD and its worst case count only seeds 0 and 1
    assert "| Baseline | 90.00 ± 0.00 | 20.00 ± 0.00 | 30.00 ± 0.00 | 20.00 ± 0.00 | 20.00 ± 0.00 | — | 20.00 ± 0.00 |" in report
    two = "50.00 ± 14.14 (2 of 3 seeds)"
    assert f"| SD | 88.00 ± 0.00 | 50.00 ± 10.00 | {two} | 20.00 ± 0.00 (2 of 3 seeds) | {two} | {two} | {two} |" in report
    assert "| SD | 60.00 (1 of 3 seeds) |" in report  # Table 4
    assert "| SD (spp=1) | — | — | — |" in report  # Table 5
    verdict_text = report.split("## Verdict")[1]
    assert 'SD 88.00% vs baseline 90.00% (-2.00 pp, s.e. 0.99) -> **held**.' in verdict_text
    # PGD over three seeds: SD's per-image mean is 1 (images 0-39), 2/3 (40-49), 1/3 (50-59), the
    # baseline's 1 (0-19); the difference has mean 0.3 and squared deviations 20 x 0.09 + 20 x 0.49
    # + 10 x (11/30)^2 + 10 x (1/30)^2 + 40 x 0.09 = 16.556, s.e. sqrt(16.556 / 99 / 100) = 4.09 pp
    assert "SD 50.00% vs baseline 20.00% (+30.00 pp, s.e. 4.09; SD higher) -> **held**." in verdict_text
    # the worst case over seeds 0 and 1 only (see test_verdict_averages_seeds_per_image_before_comparing)
    worst = claim(verdict_text, '"Does not provide a false sense of security"')
    assert ": SD 50.00% vs baseline 20.00% (+30.00 pp, s.e. 4.02; SD higher" in worst
    assert worst.endswith(NOT_CONCLUSIVE.format(profile="quick", lacks="AutoAttack standard and AutoAttack "
                                                "rand (APGD-CE and APGD-DLR with EOT)"))


def test_report_only_on_an_empty_folder_trains_nothing(tmp_path):
    r = run_sd_study(tmp_path, TINY, report_only=True)
    assert r["tables"]["table1"]["SD"] == [{}, {}]
    assert not (tmp_path / "models").exists() and not (tmp_path / "baseline").exists()
    report = (tmp_path / "report.md").read_text()
    assert "| SD | — | — |" in report and "Partial report" in report


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(InputError, match="quick, cpu, full"):
        study_config("fast")
    with pytest.raises(InputError, match="quick, cpu, full"):
        run_sd_study("/nonexistent-never-created", "fast")


def test_quick_profile_runs_no_autoattack():
    # the demo's 15-minute budget: the quick profile's verdict must say it is not conclusive
    assert not QUICK.autoattack and not QUICK.aa_rand and CPU.autoattack and CPU.aa_rand


# ---------------------------------------------------------------------------------------------
# end to end on tiny data

TINY = study_config(
    "quick", dataset="digits", baseline_epochs=2, baseline_limit=600, finetune_limit=200, finetune_epochs=1,
    batch_size=64, eval_n=24, clean_n=120, eval_batch_size=24, pgd_steps=3, square_queries=10,
    eot_draws=(2,), corruption_n=16, table1=(BASELINE, SD), noise_sweep=(), spp_sweep=(1, 2),
    transfer_from_baseline=(BASELINE, SD), seeds=(0, 1), eps=0.05,
)


class _Killed(Exception):
    pass


def _die_at_seed_1(line: str) -> None:
    if "(seed 1)" in line:
        raise _Killed(line)


def _numbers(tables: dict[str, Any]) -> dict[str, Any]:
    """The tables without wall-clock times."""
    if isinstance(tables, dict):
        return {k: _numbers(v) for k, v in tables.items() if k not in ("wall", "seconds")}
    if isinstance(tables, list):
        return [_numbers(v) for v in tables]
    return tables


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_work_and_matches_an_uninterrupted_run(tmp_path):
    whole = run_sd_study(tmp_path / "whole", TINY)

    run = tmp_path / "killed"
    with pytest.raises(_Killed):  # when seed 1 starts, after every table of seed 0
        run_sd_study(run, TINY, log=_die_at_seed_1)
    assert sorted(p.name for p in (run / "evals").glob("*.json")) == ["baseline-seed0.json", "sd-seed0.json",
                                                                      "sd-spp-1-seed0.json"]
    assert sorted(p.parent.name for p in (run / "models").glob("*/seed*/model.safetensors")) == ["seed0", "seed0"]
    done = [run / "baseline" / "model.safetensors", *(run / "models").glob("*/seed0/model.safetensors"),
            *(run / "evals").glob("*.json")]
    stamps = {p: _stamp(p) for p in done}

    resumed = run_sd_study(run, TINY)
    assert {p: _stamp(p) for p in done} == stamps  # nothing of seed 0 retrained or re-evaluated
    assert _numbers(resumed["tables"]) == _numbers(whole["tables"])

    # the recorded clean outcomes are the baseline checkpoint's own predictions
    model = load(run / "baseline" / "model.safetensors").eval()
    test = load_dataset("digits", "test", limit=120, seed=0)
    images = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        ok = (predict(model, images) == test.targets).tolist()
    assert resumed["tables"]["table1"]["Baseline"][0]["clean"]["correct"] == "".join("1" if b else "0" for b in ok)

    base, sd = resumed["tables"]["table1"]["Baseline"][0], resumed["tables"]["table1"]["SD"][0]
    assert base["stochastic"] is False and sd["stochastic"] is True
    assert base["pgd-eot2"]["same_as"] == "pgd" and base["twin"]["acc"] is None
    assert "same_as" not in sd["pgd-eot2"] and sd["twin"]["acc"] is not None
    assert len(sd["clean"]["correct"]) == 120 and len(sd["mce"]["per_image"]) == 16
    rows = Ledger(run / "ledger.sqlite").rows()
    assert rows and all(row.n == 24 and row.dataset == "digits" for row in rows)

    with pytest.raises(InputError, match="another configuration"):
        run_sd_study(run, study_config("quick"))
