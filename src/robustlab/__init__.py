"""robustlab: adversarial robustness research in PyTorch.

Five defenses from recent papers, installable on any CNN, and an evaluation suite (attacks with
EOT and BPDA for every gradient attack, worst-case batteries, a results ledger) that stays
honest against randomized and non-differentiable models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .checkpoints import load, save
    from .models import create_model

__all__ = ["__version__", "create_model", "load", "save"]


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import robustlab` light and free of import-time side effects.
    if name in ("load", "save"):
        from . import checkpoints

        return getattr(checkpoints, name)
    if name == "create_model":
        from .models import create_model

        return create_model
    raise AttributeError(f"module 'robustlab' has no attribute {name!r}")
