"""``python -m robustlab`` runs the CLI."""

from .cli import main

main()
