"""The CLI's two consoles: results and progress on stdout, the one-line ``error:`` on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error is one line, however long


def error_line(message: str) -> None:
    """Print ``error: message`` (as text: brackets in a user's input are not rich markup)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def note(message: str) -> None:
    """A line saying what the CLI did with an input it adjusted."""
    console.print(f"[yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True)
