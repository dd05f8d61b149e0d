"""Training objectives: each computes a loss from ``(model, x, y)``.

``standard`` (cross-entropy with optional label smoothing) lives here; the robust objectives
(PGD-AT, TRADES, MART, ALP, FAT, AWP, GradNorm, EdgeAlign, GSAT, ...) register into the same
registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Registry


@dataclass
class ObjectiveOutput:
    """What an objective returns: the loss to minimize and, for the running training accuracy,
    the logits it computed: on the clean batch where it computes them (standard, TRADES, ALP,
    MART; AWP gives its base's), else on the adversarial batch it trains on (PGD-AT, FAT, fast-AT), so
    an adversarial objective's "train acc" is then its robust training accuracy; ``None`` when
    it computed none."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None


class Objective(Protocol):
    """A training loss. ``name`` and ``config()`` go into checkpoints and run configs."""

    name: str

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        """Loss on one batch; random draws (e.g. an attack's random start) use ``generator``."""
        ...

    def config(self) -> dict[str, Any]:
        """JSON-ready description (name and settings), stored in checkpoints."""
        ...


OBJECTIVES: Registry[type] = Registry("objective")


def objective_config(objective: Any) -> dict[str, Any]:
    """The ``config()`` of a dataclass objective: its ``name``, then every other constructor
    field in declaration order (tuples as lists), so ``create_objective(**config)`` rebuilds it."""
    fields = [f for f in dataclasses.fields(objective) if f.init and f.name != "name"]
    return {"name": objective.name,
            **{f.name: _jsonable(getattr(objective, f.name)) for f in fields}}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@OBJECTIVES.register("standard")
@dataclass(frozen=True)
class Standard:
    """Cross-entropy on clean inputs, with optional label smoothing (Szegedy et al. 2016)."""

    label_smoothing: float = 0.0
    name: str = "standard"

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        """Cross-entropy of ``model(x)`` against ``y``."""
        logits = model(x)
        return ObjectiveOutput(F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits)

    def config(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {"name": self.name, "label_smoothing": self.label_smoothing}


def create_objective(name: str, **kwargs: Any) -> Objective:
    """Create a registered objective by name with its keyword arguments."""
    obj: Objective = OBJECTIVES.get(name)(**kwargs)
    return obj
