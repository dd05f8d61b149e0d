"""The clean-at-chance sanity check: a model that did not learn is named in the report."""

from robustlab.experiments.records import Record
from robustlab.experiments.report import at_chance, chance_warnings, warnings_section


def clean(variant: str, right: int, n: int = 1000, seed: int = 0) -> Record:
    per_image = tuple([1.0] * right + [0.0] * (n - right))
    return Record(variant, seed, "clean", "clean", per_image, accuracy=right / n, images=n)


def test_threshold_is_chance_plus_two_standard_errors() -> None:
    # 10 classes, 1000 images: 0.1 + 2 * sqrt(0.1 * 0.9 / 1000) = 0.11897 (worked by hand)
    recs = [clean("dead", 118), clean("alive", 120), clean("perfect", 1000)]
    assert [r.variant for r in at_chance(recs, 10)] == ["dead"]
    # 2 classes, 100 images: 0.5 + 2 * 0.05 = 0.6
    assert [r.variant for r in at_chance([clean("a", 60, 100), clean("b", 61, 100)], 2)] == ["a"]


def test_attack_records_never_count() -> None:
    attacked = Record("robust-zero", 0, "pgd", "attack", (0.0,) * 100, accuracy=0.0, clean_per_image=(1.0,) * 100,
                      images=100)
    assert at_chance([attacked], 10) == []


def test_the_warning_reaches_the_sanity_section() -> None:
    found = chance_warnings([clean("Ours", 100), clean("PGD-AT", 740)], 10)
    assert list(found) == [("Ours", 0)]
    text = warnings_section([], {}, False, found)
    assert "`clean-at-chance` in Ours." in text and "10.0%" in text and "PGD-AT" not in text
