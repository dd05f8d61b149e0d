"""The dataset registry and the two entry points, :func:`load_dataset` and :func:`get_info`.

One registry per kind of component (STYLE.md "Habits"): a builder registers under a unique name
in :data:`DATASETS`; an unknown name raises ``UnknownNameError`` listing the known ones.
Splitting (the ``"val"`` hold-out) and subsetting (``limit``) live here, once, for every dataset.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from robustlab.core import InputError, Registry, check_int, is_number

from .base import SPLITS, DatasetInfo, ImageDataset
from .splits import seeded_generator, stratified_select

__all__ = ["DATASETS", "DatasetBuilder", "get_info", "load_dataset", "register_dataset", "select_subset"]

logger = logging.getLogger(__name__)

_VAL_STREAM = 1
_LIMIT_STREAM = 2
_RESERVED = ("split", "root", "download")


@dataclass(frozen=True)
class DatasetBuilder:
    """How to describe and load one dataset; what :data:`DATASETS` holds.

    Attributes:
        info: ``info(root=None, **options) -> DatasetInfo``, without loading images where
            possible.
        load: ``load(split, root=None, download=False, **options) -> ImageDataset`` for the full
            ``"train"`` or ``"test"`` split; :func:`load_dataset` derives ``"val"`` and ``limit``.
        description: one line for listings.
    """

    info: Callable[..., DatasetInfo]
    load: Callable[..., ImageDataset]
    description: str = ""

    def options(self) -> tuple[str, ...] | None:
        """Names of the dataset-specific keyword options, or ``None`` if it takes any."""
        params = inspect.signature(self.load).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return tuple(
            p.name
            for p in params
            if p.name not in _RESERVED
            and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )


DATASETS: Registry[DatasetBuilder] = Registry("dataset")
"""Registry of dataset builders: fashion-mnist, cifar10, cifar100, imagefolder, digits, synthetic."""


def register_dataset(
    name: str, info: Callable[..., DatasetInfo], load: Callable[..., ImageDataset], description: str
) -> None:
    """Register a dataset in :data:`DATASETS` (see :class:`DatasetBuilder` for ``info`` and ``load``)."""
    DATASETS.register(name, DatasetBuilder(info=info, load=load, description=description))


def _builder(name: str, options: dict[str, Any]) -> DatasetBuilder:
    builder = DATASETS.get(name)
    known = builder.options()
    if known is not None:
        unknown = sorted(set(options) - set(known))
        if unknown:
            takes = f"it takes: {', '.join(known)}" if known else "it takes no extra options"
            raise InputError(
                f"dataset {name!r} got unknown option(s) {', '.join(unknown)}; {takes}"
            )
    return builder


def _val_count(val_size: int | float, n: int) -> int:
    if not is_number(val_size):
        raise InputError(f"val_size must be an int count or a float fraction, got {val_size!r}")
    if isinstance(val_size, float):
        if not 0 < val_size < 1:
            raise InputError(f"a fractional val_size must lie in (0, 1), got {val_size}")
        count = round(val_size * n)
        if not 0 < count < n:
            raise InputError(f"val_size={val_size} of {n} training items gives {count} items")
        return count
    if not 0 < val_size < n:
        raise InputError(
            f"val_size must lie in [1, {n - 1}] for a training split of {n} items, got {val_size}"
        )
    return val_size


def select_subset(targets: Tensor, n: int, seed: int = 0) -> Tensor:
    """The positions of the ``n`` items ``limit=n`` keeps: the one rule for "``n`` samples".

    A deterministic subset balanced over classes as far as class sizes allow (each class's items
    drawn from a generator seeded by ``seed``), returned sorted, so the original order is kept.
    :func:`load_dataset` applies it for ``limit`` and :func:`robustlab.evaluate.run_battery`
    for ``n``, so ``run_battery(model, load_dataset(name, "test"), battery, n=100, seed=s)``
    attacks exactly the images of ``load_dataset(name, "test", limit=100, seed=s)``. Unlike the
    first ``n`` items, it does not depend on how the files happen to be ordered (an image folder
    lists its items class by class).

    Args:
        targets: 1-D integer labels of the items to choose from.
        n: how many to keep; ``n >= len(targets)`` keeps every position.
        seed: an int >= 0.
    """
    total = int(targets.numel())
    check_int(n, "n", 1)
    if n >= total:
        seeded_generator(seed)  # validates the seed
        return torch.arange(total)
    return stratified_select(targets, n, seeded_generator(seed, _LIMIT_STREAM), balanced=True)


def _load_options(root: str | os.PathLike[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready load options of a split (the resolved root and the dataset's options)."""
    resolved = str(Path(root).expanduser().resolve()) if root is not None else None
    options: dict[str, Any] = json.loads(json.dumps(kwargs, sort_keys=True, default=repr))
    return {"root": resolved, **options}


def get_info(name: str, **kwargs: Any) -> DatasetInfo:
    """Describe dataset ``name`` (classes, channels, size, mean/std, threat model).

    Loads no images where the dataset allows it (``imagefolder`` lists its folders).

    Args:
        name: a name in :data:`DATASETS`.
        **kwargs: ``root`` and the dataset's own options (as for :func:`load_dataset`).

    Raises:
        UnknownNameError: for an unknown dataset, listing the known ones.
        InputError: for an option the dataset does not take.
    """
    root = kwargs.pop("root", None)
    kwargs.pop("download", None)
    builder = _builder(name, kwargs)
    return builder.info(root=root, **kwargs)


def load_dataset(
    name: str,
    split: str = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    val_size: int | float = 0,
    seed: int = 0,
    download: bool = False,
    **kwargs: Any,
) -> ImageDataset:
    """Load one split of a registered dataset.

    Args:
        name: a name in :data:`DATASETS`.
        split: ``"train"``, ``"val"`` or ``"test"``. ``"val"`` is a deterministic stratified
            hold-out of the training split (class proportions kept) of ``val_size`` items; with
            ``val_size > 0``, ``"train"`` excludes those items. ``"test"`` ignores ``val_size``,
            so one config can pass the same arguments for every split.
        root: folder holding the dataset files; each dataset documents where it looks without it.
        limit: keep at most this many items, a deterministic subset balanced over classes as far
            as class sizes allow, in the original order; applied after the split.
        val_size: size of the validation hold-out, an int count or a float fraction in (0, 1).
        seed: picks the hold-out and the ``limit`` subset (same seed, same items).
        download: allow a network download where the dataset supports one (CIFAR).
        **kwargs: the dataset's own options (``image_size`` for imagefolder, the generator
            settings of synthetic, ...).

    Returns:
        An :class:`ImageDataset` whose ``indices`` point into the full underlying split.

    Raises:
        UnknownNameError: unknown dataset name (the message lists the known ones).
        InputError: bad split, ``val_size``, ``limit``, ``seed`` or option.
        DataNotFoundError: the files are missing; the message says how to get them.
        DataFormatError: the files are corrupt or unsafe.

    The returned dataset's ``options`` record ``root`` (resolved; ``None`` for the dataset's
    default) and the dataset's own options, for the training fingerprint.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not is_number(val_size, 0):
        raise InputError(f"val_size must be an int >= 0 or a float in (0, 1), got {val_size!r}")
    if isinstance(val_size, float) and val_size >= 1:
        raise InputError(f"a fractional val_size must lie in (0, 1), got {val_size}")
    if split == "val" and val_size == 0:
        raise InputError(
            "split='val' needs val_size > 0 (an int count or a float fraction of the training "
            "split to hold out); for imagefolder, the root/val folder is split='test'"
        )
    if limit is not None:
        check_int(limit, "limit", 1)
    seeded_generator(seed)  # validates seed before any file is read
    builder = _builder(name, kwargs)

    full = builder.load(
        "test" if split == "test" else "train", root=root, download=download, **kwargs
    )
    positions = torch.arange(len(full))
    if split != "test" and val_size:
        count = _val_count(val_size, len(full))
        val_pos = stratified_select(
            full.targets, count, seeded_generator(seed, _VAL_STREAM), balanced=False
        )
        if split == "val":
            positions = val_pos
        else:
            keep = torch.ones(len(full), dtype=torch.bool)
            keep[val_pos] = False
            positions = keep.nonzero().squeeze(1)
    if limit is not None and limit < positions.numel():
        positions = positions[select_subset(full.targets[positions], limit, seed)]
    full.options = _load_options(root, kwargs)
    ds = full if positions.numel() == len(full) else full.subset(positions, split=split)
    logger.debug("loaded %s split=%s: %d items", ds.info.name, split, len(ds))
    return ds
