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
from .fingerprint import key_mismatch

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
        clean: ``(R, N)`` clean prediction correct (most draws of the clean estimate).
        robust: ``(R, N)`` the incumbent fools fewer than half the draws of its last estimate.
        p_clean: ``(R, N)`` probability that a draw classifies the clean input correctly.
        p_robust: ``(R, N)`` probability that a draw classifies the final incumbent correctly,
            estimated on fresh draws after it was chosen (the reported figure).
        p_select: ``(R, N)`` the same, as estimated by the comparison that chose it.
        p_after: ``(R, A, N)`` after each attack, the incumbent's estimated probability (the
            selection estimate, for cumulative tables).
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
        pending_x, pending_wrong, pending_margin: the incumbents of the batch saved mid-way
            (points and badness; empty when none is), what a resumed batch continues from.
        seconds: total wall time so far, over every session.
    """

    key: str
    config: dict[str, Any]
    clean: torch.Tensor
    robust: torch.Tensor
    p_clean: torch.Tensor
    p_robust: torch.Tensor
    p_select: torch.Tensor
    p_after: torch.Tensor
    success: torch.Tensor
    seen: torch.Tensor
    done: torch.Tensor
    attacks_done: torch.Tensor
    forward: torch.Tensor
    backward: torch.Tensor
    attack_seconds: torch.Tensor
    gradients: torch.Tensor
    probability_rows: torch.Tensor
    pending_x: torch.Tensor
    pending_wrong: torch.Tensor
    pending_margin: torch.Tensor
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
            p_clean=torch.zeros(repeats, n, dtype=torch.float64),
            p_robust=torch.zeros(repeats, n, dtype=torch.float64),
            p_select=torch.zeros(repeats, n, dtype=torch.float64),
            p_after=torch.zeros(repeats, attacks, n, dtype=torch.float64),
            success=torch.zeros(repeats, attacks, n, dtype=b),
            seen=torch.zeros(repeats, attacks, n, dtype=b),
            done=torch.zeros(repeats, batches, dtype=b),
            attacks_done=torch.zeros(repeats, batches, dtype=torch.int64),
            forward=torch.zeros(repeats, attacks, dtype=torch.int64),
            backward=torch.zeros(repeats, attacks, dtype=torch.int64),
            attack_seconds=torch.zeros(repeats, attacks, dtype=torch.float64),
            gradients=torch.zeros(repeats, attacks, 3, dtype=torch.int64),
            probability_rows=torch.zeros(repeats, 2, dtype=torch.int64),
            pending_x=torch.zeros(0),
            pending_wrong=torch.zeros(0),
            pending_margin=torch.zeros(0),
        )

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {
            "clean": self.clean,
            "robust": self.robust,
            "p_clean": self.p_clean,
            "p_robust": self.p_robust,
            "p_select": self.p_select,
            "p_after": self.p_after,
            "success": self.success,
            "seen": self.seen,
            "done": self.done,
            "attacks_done": self.attacks_done,
            "forward": self.forward,
            "backward": self.backward,
            "attack_seconds": self.attack_seconds,
            "gradients": self.gradients,
            "probability_rows": self.probability_rows,
            "pending_x": self.pending_x,
            "pending_wrong": self.pending_wrong,
            "pending_margin": self.pending_margin,
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
        saved = header.get("config")
        if header.get("kind") != KIND or header.get("key") != like.key:
            reasons = []
            if isinstance(saved, dict):
                reasons = key_mismatch(saved.get("behaviour") or {}, like.config.get("behaviour") or {})
                reasons += [f"{k} differs" for k in sorted(set(saved) | set(like.config))
                            if k not in ("behaviour", "randomness", "stochastic", "late_randomness",
                                         "prediction_draws", "verdict_draws", "warnings")
                            and saved.get(k) != like.config.get(k)]
            warnings.warn(
                f"starting over: the evaluation state {path} belongs to another model or battery"
                + (f" ({'; '.join(reasons)})" if reasons else ""),
                stacklevel=3,
            )
            return None
        ok = set(tensors) == set(expected) and all(
            (k.startswith("pending_") or tensors[k].shape == v.shape) and tensors[k].dtype == v.dtype
            for k, v in expected.items()
        )
        if not ok:
            warnings.warn(
                f"starting over: the evaluation state {path} does not fit this run's shapes",
                stacklevel=3,
            )
            return None
        logger.debug("resuming evaluation state %s (%d batches done, %d in progress)", path,
                     int(tensors["done"].sum()),
                     int(((tensors["attacks_done"] > 0) & ~tensors["done"]).sum()))
        kept = {k: saved[k] for k in ("randomness", "late_randomness") if isinstance(saved, dict) and k in saved}
        return cls(
            key=like.key,
            config={**like.config, **kept},
            seconds=float(header.get("seconds", 0.0)),
            **{k: tensors[k] for k in expected},
        )
