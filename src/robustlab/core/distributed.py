"""One process or several: the world a training or an evaluation runs in.

robustlab runs in one process by default. Under ``torchrun`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) the same commands join a
``torch.distributed`` process group: NCCL when every rank has a CUDA device, gloo otherwise (the
CPU path, and the one the tests run). Every collective has a timeout (:data:`DEFAULT_TIMEOUT`,
or ``ROBUSTLAB_DIST_TIMEOUT`` seconds), so a rank that dies makes the others fail with a
:class:`~robustlab.core.errors.RobustlabError` naming the collective instead of hanging; torchrun
then stops the job.

:class:`World` is what the library passes around: ``World()`` is the single process (rank 0 of
1, nothing to gather); :func:`current_world` reads the running process group, or joins the one
torchrun's environment describes.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import InputError, RobustlabError

__all__ = [
    "DEFAULT_TIMEOUT",
    "World",
    "current_world",
    "launched_by_torchrun",
    "shard_range",
]

DEFAULT_TIMEOUT = 600.0
"""Seconds a collective waits for the other ranks before the job fails (env ``ROBUSTLAB_DIST_TIMEOUT``)."""

T = TypeVar("T")


def _timeout() -> datetime.timedelta:
    raw = os.environ.get("ROBUSTLAB_DIST_TIMEOUT")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise InputError(f"ROBUSTLAB_DIST_TIMEOUT={raw!r} is not a number of seconds") from None
    if seconds <= 0:
        raise InputError(f"ROBUSTLAB_DIST_TIMEOUT={raw!r} must be positive")
    return datetime.timedelta(seconds=seconds)


def shard_range(n: int, rank: int, size: int) -> tuple[int, int]:
    """The contiguous ``[lo, hi)`` of ``n`` items that ``rank`` of ``size`` takes: the first
    ``n % size`` ranks take one more, so shards differ by at most one and cover ``range(n)``."""
    if size < 1 or not 0 <= rank < size:
        raise InputError(f"rank {rank} is not in a world of size {size}")
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class World:
    """The processes a job runs on: ``rank`` of ``size`` (``World()`` is one process).

    With ``size > 1`` a ``torch.distributed`` process group must be running
    (:func:`current_world` starts it under torchrun).
    """

    rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise InputError(f"rank {self.rank} is not in a world of size {self.size}")
        if self.size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise InputError(
                f"a world of size {self.size} needs a torch.distributed process group; launch with "
                "torchrun (robustlab joins its group) or call torch.distributed.init_process_group first"
            )

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the rank that writes files."""
        return self.rank == 0

    @property
    def backend(self) -> str | None:
        return str(dist.get_backend()) if self.distributed else None

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous ``[lo, hi)`` of ``n`` items (:func:`shard_range`)."""
        return shard_range(n, self.rank, self.size)

    def collective(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, a collective named ``what``; a failure (a timeout, a dead or stuck peer)
        becomes a :class:`RobustlabError` that names it."""
        try:
            return fn()
        except RuntimeError as e:  # gloo/NCCL timeouts and closed connections
            raise RobustlabError(
                f"rank {self.rank} of {self.size}: {what} failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                "another rank probably died or is stuck: see its output above"
            ) from e

    def barrier(self) -> None:
        if self.distributed:
            self.collective("barrier", dist.barrier)

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank (plain Python data only)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        self.collective("all_gather_object", lambda: dist.all_gather_object(out, obj))
        return out

    def broadcast(self, obj: T, src: int = 0) -> T:
        """``obj`` of rank ``src`` on every rank (plain Python data only)."""
        if not self.distributed:
            return obj
        box: list[Any] = [obj]
        self.collective("broadcast_object_list", lambda: dist.broadcast_object_list(box, src=src))
        return box[0]

    def all_reduce_(self, tensor: torch.Tensor, average: bool = False) -> torch.Tensor:
        """Sum (or average) ``tensor`` over the ranks, in place."""
        if self.distributed:
            self.collective("all_reduce", lambda: dist.all_reduce(tensor))
            if average:
                tensor.div_(self.size)
        return tensor


def launched_by_torchrun() -> bool:
    """Whether torchrun's environment (``WORLD_SIZE`` and ``RANK``) describes this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def current_world(backend: str | None = None) -> World:
    """The world this process is in: the running process group's, or (under torchrun) the group
    its environment describes, joined here with a timeout on every collective; else ``World()``.

    ``backend`` defaults to NCCL when CUDA is available to every rank, gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    if not launched_by_torchrun():
        return World()
    size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if size == 1:
        return World()
    if not dist.is_available():
        raise RobustlabError("this torch build has no torch.distributed; run in one process")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend=backend, timeout=_timeout())
    except (RuntimeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RobustlabError(f"rank {rank} of {size}: joining the process group failed ({first}); another rank "
                             "probably died or never started: see its output above") from e
    return World(rank, size)
