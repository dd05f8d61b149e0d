"""core.markdown: the table and percentage formatting every report shares, against hand-written text."""

from robustlab.core.markdown import format_pct, markdown_table


def test_format_pct_by_hand() -> None:
    assert format_pct(0.5) == "50.00"
    assert format_pct(0.12345, 0.01, digits=1) == "12.3 ± 1.0"
    assert format_pct(None) == "-"


def test_markdown_table_by_hand() -> None:
    rows = [{"model": "a|b", "acc": 0.5}, {"model": "c", "acc": None}]
    assert markdown_table(rows, ["acc", "model"]) == "| acc | model |\n|---|---|\n| 0.5 | a\\|b |\n| - | c |\n"
    assert markdown_table([]) == "_(no rows)_\n"
