"""Markdown tables and percentages: the formatting every floor's reports share (the reports themselves are
:mod:`robustlab.experiments.report` and the `to_markdown` methods of results and ledgers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def format_pct(value: float | None, std: float | None = None, digits: int = 2) -> str:
    """Format a fraction in [0, 1] as a percentage, with ``± std`` when given."""
    if value is None:
        return "-"
    s = f"{100 * value:.{digits}f}"
    if std is not None:
        s += f" ± {100 * std:.{digits}f}"
    return s


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (dicts), columns in the given order."""
    if not rows:
        return "_(no rows)_\n"
    cols = list(columns) if columns is not None else list(rows[0].keys())
    def cell(v: Any) -> str:
        return "-" if v is None else str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
