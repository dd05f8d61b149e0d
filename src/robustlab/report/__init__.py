"""Tables and plots from results, for ``report.md`` files a person can read."""

from .tables import format_pct, markdown_table

__all__ = ["format_pct", "markdown_table"]
