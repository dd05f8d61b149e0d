"""Resumable per-sample evaluation state, saved after every batch and inside a long batch.

Following AutoAttack's resumable state (``autoattack/state.py``): an evaluation that dies halfway
picks up where it stopped, down to the last attack finished on the batch in progress. The
state is one safetensors file per process (tensors: the per-sample masks and the per-batch
counters) whose JSON header holds the run's key and configuration. It is written atomically
(temporary file, then rename) by :func:`robustlab.core.checkpoint.write_checkpoint` and checked
against its content hash on every read. Nothing is pickled.

A sharded run (``torchrun``, :mod:`robustlab.core.distributed`) saves one file per rank
(:func:`state_filename`), and every batch's numbers sit in their own rows (the masks of its
samples, its own counters), so finished batches can be taken from any file of the same key
(:meth:`EvalState.adopt`): a run resumed on another number of ranks reuses them, because a
batch's numbers depend on the seed, its index and the batch size, never on which rank ran it.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from ..core.checkpoint import read_checkpoint, write_checkpoint
from ..core.errors import CheckpointError
from .fingerprint import key_mismatch

__all__ = ["EvalState", "Pending", "StateFile", "state_filename"]

logger = logging.getLogger(__name__)

KIND = "eval-state"
FILENAME = "state.safetensors"
"""The file of a one-process run; rank ``r`` of ``w`` writes ``state.rank<r>-of-<w>.safetensors``."""

SAMPLE_FIELDS = ("clean", "robust", "p_clean", "p_robust", "p_select", "p_after", "success", "seen")
"""Tensors ``(R, ..., N)`` with one entry per sample (last axis)."""
BATCH_FIELDS = ("done", "attacks_done", "forward", "backward", "attack_seconds", "gradients",
                "probability_rows", "batch_seconds")
"""Tensors ``(R, B, ...)`` with one row per batch (second axis)."""
_PENDING = re.compile(r"pending\.(\d+)\.(\d+)\.(x|wrong|margin)")


def state_filename(rank: int = 0, world: int = 1) -> str:
    """The state file of rank ``rank`` of ``world`` processes (``state.safetensors`` for one)."""
    return FILENAME if world == 1 else f"state.rank{rank}-of-{world}.safetensors"


@dataclass
class Pending:
    """The incumbents of a batch saved between two attacks: what a resumed batch continues from."""

    x: torch.Tensor
    wrong: torch.Tensor
    margin: torch.Tensor


@dataclass
class EvalState:
    """Per-sample masks and per-batch counters of a battery run, for ``R`` repeats, ``A``
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
            resumed run continues with the next attack from its :attr:`pending` incumbents.
        forward: ``(R, B, A)`` image forward passes per batch and attack.
        backward: ``(R, B, A)`` image backward passes per batch and attack.
        attack_seconds: ``(R, B, A)`` wall time per batch and attack.
        gradients: ``(R, B, A, 3)`` per-sample gradients each attack evaluated on the batch, and
            how many were all zero / non-finite (the sanity checks).
        probability_rows: ``(R, B, 2)`` clean output rows that looked like probabilities, and
            rows checked.
        batch_seconds: ``(R, B)`` wall time spent on each batch, over every session.
        pending: ``(repeat, batch) -> Pending`` for the batches saved mid-way (one per process
            that was stopped inside a batch).
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
    batch_seconds: torch.Tensor
    pending: dict[tuple[int, int], Pending] = field(default_factory=dict)

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
            forward=torch.zeros(repeats, batches, attacks, dtype=torch.int64),
            backward=torch.zeros(repeats, batches, attacks, dtype=torch.int64),
            attack_seconds=torch.zeros(repeats, batches, attacks, dtype=torch.float64),
            gradients=torch.zeros(repeats, batches, attacks, 3, dtype=torch.int64),
            probability_rows=torch.zeros(repeats, batches, 2, dtype=torch.int64),
            batch_seconds=torch.zeros(repeats, batches, dtype=torch.float64),
        )

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in SAMPLE_FIELDS + BATCH_FIELDS}

    @property
    def complete(self) -> bool:
        """Whether every batch of every repeat is done."""
        return bool(self.done.all())

    @property
    def seconds(self) -> float:
        """Wall time spent on the batches, over every session and every rank."""
        return float(self.batch_seconds.sum())

    # -------------------------------------------------------------------- batches and shards
    def adopt(self, other: EvalState, repeat: int, batch: int, lo: int, hi: int) -> None:
        """Take batch ``batch`` of repeat ``repeat`` (samples ``[lo, hi)``) from ``other``: its
        masks, its counters and its pending incumbents (a state of the same key and shapes)."""
        for name in SAMPLE_FIELDS:
            getattr(self, name)[repeat, ..., lo:hi] = getattr(other, name)[repeat, ..., lo:hi]
        for name in BATCH_FIELDS:
            getattr(self, name)[repeat, batch] = getattr(other, name)[repeat, batch]
        self.pending.pop((repeat, batch), None)
        if (repeat, batch) in other.pending:
            self.pending[(repeat, batch)] = other.pending[(repeat, batch)]

    def shard_bytes(self, batches: tuple[int, int], samples: tuple[int, int]) -> bytes:
        """Batches ``[b0, b1)`` of every repeat and their samples ``[s0, s1)`` as safetensors bytes
        (what a rank sends to the others; plain bytes, never pickled tensors)."""
        (b0, b1), (s0, s1) = batches, samples
        tensors = {name: getattr(self, name)[..., s0:s1].contiguous() for name in SAMPLE_FIELDS}
        tensors.update({name: getattr(self, name)[:, b0:b1].contiguous() for name in BATCH_FIELDS})
        return save_bytes(tensors)

    def put_shard(self, blob: bytes, batches: tuple[int, int], samples: tuple[int, int]) -> None:
        """Write a shard made by :meth:`shard_bytes` into this state."""
        (b0, b1), (s0, s1) = batches, samples
        tensors = load_bytes(blob)
        for name in SAMPLE_FIELDS:
            getattr(self, name)[..., s0:s1] = tensors[name]
        for name in BATCH_FIELDS:
            getattr(self, name)[:, b0:b1] = tensors[name]
        for r in range(self.done.shape[0]):
            for b in range(b0, b1):
                self.pending.pop((r, b), None)

    # -------------------------------------------------------------------------------- files
    def save(self, folder: str | os.PathLike[str], filename: str = FILENAME,
             shard: Mapping[str, Any] | None = None) -> Path:
        """Write the state atomically to ``folder/filename``; ``shard`` (rank, world size,
        batch range) goes into the header for people reading the folder."""
        header: dict[str, Any] = {"kind": KIND, "key": self.key, "config": self.config, "seconds": self.seconds}
        if shard is not None:
            header["shard"] = dict(shard)
        tensors = self._tensors()
        for (r, b), p in sorted(self.pending.items()):
            tensors.update({f"pending.{r}.{b}.x": p.x, f"pending.{r}.{b}.wrong": p.wrong,
                            f"pending.{r}.{b}.margin": p.margin})
        return write_checkpoint(Path(folder) / filename, tensors, header)

    @classmethod
    def load(cls, folder: str | os.PathLike[str], like: EvalState, warn: bool = True) -> EvalState | None:
        """Read ``folder/state.safetensors`` if it exists and matches ``like`` (same key and
        shapes); see :meth:`load_all` for the files of every rank."""
        found = cls.read(Path(folder) / FILENAME, like, warn)
        return found.state if found is not None else None

    @classmethod
    def load_all(cls, folder: str | os.PathLike[str], like: EvalState, warn: bool = True) -> list[StateFile]:
        """Every state file in ``folder`` (one per rank of every earlier run), read and checked
        against ``like``; a file that is damaged or belongs to another key comes back with
        ``state=None`` (and a warning when ``warn``), so the caller can remove it."""
        folder = Path(folder)
        if not folder.is_dir():
            return []
        return [f for path in sorted(folder.glob("state*.safetensors"))
                if (f := cls.read(path, like, warn)) is not None]

    @classmethod
    def read(cls, path: Path, like: EvalState, warn: bool = True) -> StateFile | None:
        """One state file: ``None`` when missing; ``StateFile(path, None)`` (with a warning) when
        damaged or of another model, battery or shape (the run starts over without it)."""
        if not path.exists():
            return None

        def refuse(message: str) -> StateFile:
            if warn:
                warnings.warn(message, stacklevel=4)
            return StateFile(path, None)

        try:
            tensors, header = read_checkpoint(path)
        except CheckpointError as e:
            return refuse(f"ignoring unreadable evaluation state {path}: {e}")
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
            return refuse(f"starting over: the evaluation state {path} belongs to another model or battery"
                          + (f" ({'; '.join(reasons)})" if reasons else ""))
        pending: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        for name, t in tensors.items():
            m = _PENDING.fullmatch(name)
            if m:
                pending.setdefault((int(m[1]), int(m[2])), {})[m[3]] = t
        ok = set(tensors) - {n for n in tensors if _PENDING.fullmatch(n)} == set(expected) and all(
            tensors[k].shape == v.shape and tensors[k].dtype == v.dtype for k, v in expected.items()
        )
        if ok:
            done, attacks_done = tensors["done"], tensors["attacks_done"]
            ok = all(len(p) == 3 and r < done.shape[0] and b < done.shape[1] and not bool(done[r, b])
                     and int(attacks_done[r, b]) > 0 for (r, b), p in pending.items())
        if not ok:
            return refuse(f"starting over: the evaluation state {path} does not fit this run's shapes")
        logger.debug("read evaluation state %s (%d batches done, %d in progress)", path,
                     int(tensors["done"].sum()), len(pending))
        kept = {k: saved[k] for k in ("randomness", "late_randomness") if isinstance(saved, dict) and k in saved}
        state = cls(
            key=like.key,
            config={**like.config, **kept},
            pending={rb: Pending(p["x"], p["wrong"], p["margin"]) for rb, p in pending.items()},
            **{k: tensors[k] for k in expected},
        )
        return StateFile(path, state)


@dataclass
class StateFile:
    """A state file found in a state folder: its state, or ``None`` when it cannot be used."""

    path: Path
    state: EvalState | None
