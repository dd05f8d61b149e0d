"""Resumable per-sample evaluation state, saved after every batch and inside a long batch.

Following AutoAttack's resumable state (``autoattack/state.py``): an evaluation that dies halfway
picks up where it stopped, down to the last attack finished on the batch in progress. The
state is one safetensors file (tensors: the per-sample masks and
per-attack counters) whose JSON header holds the run's key and configuration. It is written
atomically (temporary file, then rename) by :func:`robustlab.core.checkpoint.write_checkpoint`
and checked against its content hash on every read. Nothing is pickled.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.checkpoint import read_checkpoint, write_checkpoint
from ..core.errors import CheckpointError

__all__ = ["EvalState"]

logger = logging.getLogger(__name__)

KIND = "eval-state"
FILENAME = "state.safetensors"


@dataclass
class EvalState:
    """Per-sample masks and per-attack counters of a battery run, for ``R`` repeats, ``A``
    attacks, ``N`` samples and ``B`` batches.

    Attributes:
        key: hash of everything the numbers depend on (see ``run_battery``).
        config: the run's JSON-ready configuration (stored for people reading the folder).
        clean: ``(R, N)`` clean prediction correct.
        robust: ``(R, N)`` survived every attack so far.
        success: ``(R, A, N)`` attack broke the sample.
        seen: ``(R, A, N)`` attack was run on the sample.
        done: ``(R, B)`` batch finished.
        attacks_done: ``(R, B)`` attacks finished on the batch (all of them once ``done``); a
            batch with ``0 < attacks_done`` and not ``done`` was saved mid-batch: its clean
            verdict and first ``attacks_done`` attacks are in the masks and counters, and a
            resumed run continues with the next attack.
        forward: ``(R, A)`` image forward passes per attack.
        backward: ``(R, A)`` image backward passes per attack.
        attack_seconds: ``(R, A)`` wall time per attack.
        gradients: ``(R, A, 3)`` per-sample gradients each attack evaluated, and how many were
            all zero / non-finite (the sanity checks).
        probability_rows: ``(R, 2)`` clean output rows that looked like probabilities, and rows
            checked.
        seconds: total wall time so far, over every session.
    """

    key: str
    config: dict[str, Any]
    clean: torch.Tensor
    robust: torch.Tensor
    success: torch.Tensor
    seen: torch.Tensor
    done: torch.Tensor
    attacks_done: torch.Tensor
    forward: torch.Tensor
    backward: torch.Tensor
    attack_seconds: torch.Tensor
    gradients: torch.Tensor
    probability_rows: torch.Tensor
    seconds: float = 0.0

    @classmethod
    def new(
        cls, key: str, config: dict[str, Any], repeats: int, attacks: int, n: int, batches: int
    ) -> EvalState:
        """An empty state (nothing done)."""
        b = torch.bool
        return cls(
            key=key,
            config=config,
            clean=torch.zeros(repeats, n, dtype=b),
            robust=torch.zeros(repeats, n, dtype=b),
            success=torch.zeros(repeats, attacks, n, dtype=b),
            seen=torch.zeros(repeats, attacks, n, dtype=b),
            done=torch.zeros(repeats, batches, dtype=b),
            attacks_done=torch.zeros(repeats, batches, dtype=torch.int64),
            forward=torch.zeros(repeats, attacks, dtype=torch.int64),
            backward=torch.zeros(repeats, attacks, dtype=torch.int64),
            attack_seconds=torch.zeros(repeats, attacks, dtype=torch.float64),
            gradients=torch.zeros(repeats, attacks, 3, dtype=torch.int64),
            probability_rows=torch.zeros(repeats, 2, dtype=torch.int64),
        )

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {
            "clean": self.clean,
            "robust": self.robust,
            "success": self.success,
            "seen": self.seen,
            "done": self.done,
            "attacks_done": self.attacks_done,
            "forward": self.forward,
            "backward": self.backward,
            "attack_seconds": self.attack_seconds,
            "gradients": self.gradients,
            "probability_rows": self.probability_rows,
        }

    @property
    def complete(self) -> bool:
        """Whether every batch of every repeat is done."""
        return bool(self.done.all())

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the state atomically to ``folder/state.safetensors``."""
        header = {"kind": KIND, "key": self.key, "config": self.config, "seconds": self.seconds}
        return write_checkpoint(Path(folder) / FILENAME, self._tensors(), header)

    @classmethod
    def load(cls, folder: str | os.PathLike[str], like: EvalState) -> EvalState | None:
        """Read the state in ``folder`` if it exists and matches ``like`` (same key and shapes).

        A missing file gives ``None``; a damaged or mismatching one is reported with a warning
        and also gives ``None`` (the run starts over; the file is replaced at the next save).
        """
        path = Path(folder) / FILENAME
        if not path.exists():
            return None
        try:
            tensors, header = read_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"ignoring unreadable evaluation state {path}: {e}", stacklevel=3)
            return None
        expected = like._tensors()
        ok = header.get("kind") == KIND and header.get("key") == like.key
        ok = ok and set(tensors) == set(expected)
        ok = ok and all(
            tensors[k].shape == v.shape and tensors[k].dtype == v.dtype for k, v in expected.items()
        )
        if not ok:
            warnings.warn(
                f"ignoring evaluation state {path}: it belongs to another run configuration",
                stacklevel=3,
            )
            return None
        logger.debug("resuming evaluation state %s (%d batches done, %d in progress)", path,
                     int(tensors["done"].sum()),
                     int(((tensors["attacks_done"] > 0) & ~tensors["done"]).sum()))
        return cls(
            key=like.key,
            config=like.config,
            seconds=float(header.get("seconds", 0.0)),
            **{k: tensors[k] for k in expected},
        )
