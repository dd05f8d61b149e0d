"""Deterministic stratified selection, for validation hold-outs and ``limit`` subsets.

Every draw comes from a ``torch.Generator`` seeded from the caller's ``seed``, so the same seed
gives the same items on every machine and every call; selected positions are returned sorted, so
the original order of the items is kept.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from robustlab.core import InputError, check_int

__all__ = ["balanced_counts", "proportional_counts", "stratified_select"]

_GOLDEN = 0x9E3779B97F4A7C15
_MASK63 = (1 << 63) - 1


def seeded_generator(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for ``seed``; different ``stream`` values give independent sequences."""
    check_int(seed, "seed", 0)
    return torch.Generator().manual_seed((seed ^ (stream * _GOLDEN)) & _MASK63)


def balanced_counts(available: list[int], total: int, order: list[int]) -> list[int]:
    """Split ``total`` over classes as evenly as their sizes allow (water-filling).

    Args:
        available: items per class.
        total: how many to pick, at most ``sum(available)``.
        order: a permutation of the classes; when ``total`` does not divide evenly, the classes
            earliest in ``order`` get the extra item.
    """
    counts = [0] * len(available)
    remaining = total
    open_ = [c for c in order if available[c] > 0]
    while remaining > 0 and open_:
        share = remaining // len(open_)
        if share == 0:
            for c in open_[:remaining]:
                counts[c] += 1
            break
        still_open = []
        for c in open_:
            take = min(share, available[c] - counts[c])
            counts[c] += take
            remaining -= take
            if counts[c] < available[c]:
                still_open.append(c)
        open_ = still_open
    return counts


def proportional_counts(available: list[int], total: int, order: list[int]) -> list[int]:
    """Split ``total`` over classes in proportion to their sizes (largest remainder).

    Ties in the remainders go to the classes earliest in ``order``.
    """
    n = sum(available)
    if n == 0:
        return [0] * len(available)
    counts = [total * a // n for a in available]
    rank = {c: i for i, c in enumerate(order)}
    leftovers = sorted(range(len(available)), key=lambda c: (-(total * available[c] % n), rank[c]))
    for c in leftovers[: total - sum(counts)]:
        counts[c] += 1
    return counts


def stratified_select(
    targets: Tensor, total: int, generator: torch.Generator, *, balanced: bool
) -> Tensor:
    """Pick ``total`` positions of ``targets``, stratified by label; return them sorted.

    Within each class the picked items are a uniformly random subset (a prefix of one random
    permutation per class, drawn whatever ``total`` is, so a smaller selection with the same seed
    is contained in a larger one, up to the classes that receive a remainder item).

    Args:
        targets: 1-D integer labels.
        total: number of items to pick, ``0 <= total <= len(targets)``.
        generator: source of all randomness.
        balanced: equal counts per class as far as sizes allow (for ``limit``); otherwise
            counts proportional to class frequency (for validation hold-outs).
    """
    n = int(targets.numel())
    if not 0 <= total <= n:
        raise InputError(f"cannot select {total} of {n} items")
    # numpy for the bookkeeping: torch's CPU sort/unique are ~100x slower on 60000 labels
    labels = targets.detach().cpu().numpy().reshape(-1)
    _, inverse = np.unique(labels, return_inverse=True)
    available = np.bincount(inverse).tolist()
    num = len(available)
    order = torch.randperm(num, generator=generator).tolist()
    counts = (balanced_counts if balanced else proportional_counts)(available, total, order)
    by_class = torch.from_numpy(np.argsort(inverse, kind="stable"))
    starts = [0]
    for a in available:
        starts.append(starts[-1] + a)
    picked = []
    for c in range(num):
        perm = torch.randperm(available[c], generator=generator)
        picked.append(by_class[starts[c] : starts[c + 1]][perm[: counts[c]]])
    if not picked:
        return torch.empty(0, dtype=torch.int64)
    return torch.from_numpy(np.sort(torch.cat(picked).numpy()))
