"""The ``robustlab`` command line. It owns the console: rich tables and progress bars.

Everything a user types is checked before any work, and every refusal is one line that names the
flag and the fix (``error: ...``), made in one place, :mod:`.errors`. The rooms:

- :mod:`.errors`: the error boundary (click's usage errors, the library's errors in flags, Ctrl-C);
- :mod:`.options`: choices, shared options and the parsers of typed values (eps, norm, device, paths);
- :mod:`.progress`: progress bars on a terminal, ETA lines otherwise;
- one module per command group: :mod:`.info`, :mod:`.train`, :mod:`.evaluate` (evaluate and
  leaderboard), :mod:`.audit`, :mod:`.convert`, :mod:`.run` (run and demo), :mod:`.analyze`.
"""

from __future__ import annotations

import typer

from . import analyze, audit, convert, evaluate, info, run, train
from .errors import Commands

app = typer.Typer(
    cls=Commands,
    help="robustlab: adversarial robustness research in PyTorch.\n\n"
         "Example: robustlab train --dataset digits --epochs 2 --out runs/digits && "
         "robustlab evaluate runs/digits/model.safetensors --n 100",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(info.info)
app.command()(train.train)
app.command()(evaluate.evaluate)
app.command()(evaluate.leaderboard)
app.command()(audit.audit)
app.command()(convert.convert)
app.command()(run.run)
app.command()(run.demo)
app.add_typer(analyze.analyze_app, name="analyze")


def main() -> None:
    """Entry point for ``python -m robustlab``."""
    app()


__all__ = ["app", "main"]
