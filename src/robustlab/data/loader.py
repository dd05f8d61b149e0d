"""Batch iterators: ``make_loader`` yields ``(x, y)`` with x float32 NCHW in [0, 1], y int64;
``as_tensors`` gives a whole dataset (or its first ``n`` items) as one such pair.

In-memory datasets (those with an ``images`` tensor) are batched by indexing that tensor, with no
per-item Python; lazily loaded datasets go through a ``torch.utils.data.DataLoader``. Shuffling
(``torch.randperm``) and augmentation draw from the one ``generator`` passed in, so the same
generator state repeats an epoch bit for bit (what the trainer needs for bit-identical resume;
house plan, "Conventions": randomness is explicit).

Data-parallel training (``shard=(rank, size)``): every rank draws the same order from the same
generator, so the batches are those of one process, and each rank loads only its contiguous share
of each batch (:func:`~robustlab.core.distributed.shard_range`); its augmentation may draw from a
generator of its own (``augment_generator``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
)

from robustlab.core import InputError, check_int
from robustlab.core.distributed import shard_range

from .augment import Augmentation, get_augmentation

__all__ = ["DatasetLoader", "TensorLoader", "as_tensors", "make_loader"]

logger = logging.getLogger(__name__)


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def _check_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    rank, size = shard
    shard_range(0, rank, size)  # refuses a rank outside the world
    return (int(rank), int(size))


class TensorLoader:
    """Batches an in-memory dataset by indexing its ``images`` and ``targets`` tensors.

    Args:
        images: NCHW uint8 (divided by 255) or float ([0, 1]) tensor.
        targets: labels, one per image.
        batch_size: items per batch.
        shuffle: a fresh ``torch.randperm(n, generator=generator)`` order every epoch.
        augment: applied to each float batch with ``generator``.
        generator: source of all randomness (the global RNG when ``None``).
        drop_last: drop the last incomplete batch.
        shard: ``(rank, size)``: yield only rank's contiguous share of each batch.
        augment_generator: what augmentation draws from instead of ``generator``.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: Augmentation | None = None,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        shard: tuple[int, int] | None = None,
        augment_generator: torch.Generator | None = None,
    ) -> None:
        self.images = images
        self.targets = targets.to(torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.generator = generator
        self.drop_last = drop_last
        self.shard = _check_shard(shard)
        self.augment_generator = augment_generator if augment_generator is not None else generator

    def __len__(self) -> int:
        return _num_batches(int(self.images.shape[0]), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = int(self.images.shape[0])
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for b in range(len(self)):
            start, stop = b * self.batch_size, min(n, (b + 1) * self.batch_size)
            idx = order[start:stop] if order is not None else torch.arange(start, stop)
            if self.shard is not None:
                lo, hi = shard_range(int(idx.numel()), *self.shard)
                idx = idx[lo:hi]
            x = self.images.index_select(0, idx)
            x = x.float().div_(255) if x.dtype == torch.uint8 else x.to(torch.float32)
            if self.augment is not None:
                x = self.augment(x, self.augment_generator)
            yield x, self.targets.index_select(0, idx)


class _ShardedBatches:
    """A batch sampler that yields rank's contiguous share of each batch of ``batches``."""

    def __init__(self, batches: BatchSampler, shard: tuple[int, int]) -> None:
        self.batches = batches
        self.shard = shard

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            lo, hi = shard_range(len(batch), *self.shard)
            yield batch[lo:hi]


def _collate_shard(batch: list[Any]) -> Any:
    """DataLoader's default collation, and ``None`` for an empty share (which it cannot stack)."""
    return default_collate(batch) if batch else None


class DatasetLoader:
    """Wraps a ``torch.utils.data.DataLoader`` over a lazily loaded dataset.

    Shuffling uses ``generator`` through the DataLoader's sampler; augmentation runs on whole
    batches in the main process, drawing from the same generator (or ``augment_generator``).
    With ``shard=(rank, size)`` the batches of indices are drawn as without it, and only rank's
    contiguous share of each is loaded.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: Augmentation | None = None,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        num_workers: int = 0,
        shard: tuple[int, int] | None = None,
        augment_generator: torch.Generator | None = None,
    ) -> None:
        self.dataset = dataset
        self.augment = augment
        self.generator = generator
        self.augment_generator = augment_generator if augment_generator is not None else generator
        shard = _check_shard(shard)
        if shard is None:
            self.loader: DataLoader[Any] = DataLoader(
                dataset,
                batch_size=batch_size,
                shuffle=shuffle,
                generator=generator,
                drop_last=drop_last,
                num_workers=num_workers,
            )
            return
        # the sampler and batch sampler DataLoader(shuffle=..., batch_size=...) builds, drawing
        # from the same generator in the same order, so the shards split the unsharded batches
        sampler: Sampler[int] = (RandomSampler(dataset, generator=generator) if shuffle  # type: ignore[arg-type]
                                 else SequentialSampler(dataset))  # type: ignore[arg-type]
        self.loader = DataLoader(
            dataset,
            batch_sampler=_ShardedBatches(BatchSampler(sampler, batch_size, drop_last), shard),
            generator=generator,
            num_workers=num_workers,
            collate_fn=_collate_shard,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for batch in self.loader:
            if batch is None:  # an empty share of a batch smaller than the world
                shape = torch.as_tensor(self.dataset[0][0]).shape
                yield torch.empty((0, *shape)), torch.empty(0, dtype=torch.int64)
                continue
            x, y = batch
            x = x.to(torch.float32)
            if self.augment is not None:
                x = self.augment(x, self.augment_generator)
            yield x, torch.as_tensor(y, dtype=torch.int64)


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool | str | Augmentation = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    shard: tuple[int, int] | None = None,
    augment_generator: torch.Generator | None = None,
) -> TensorLoader | DatasetLoader:
    """Iterate over ``dataset`` in batches ``(x float32 NCHW in [0, 1], y int64)`` on the CPU.

    Args:
        dataset: an :class:`ImageDataset` (in-memory ones, with ``.images``, are batched by
            tensor indexing) or any map-style dataset of ``(image, label)`` items.
        batch_size: items per batch.
        shuffle: new random order each epoch, drawn with ``torch.randperm(n, generator=...)``.
        augment: ``False`` (none), ``True`` (the dataset's default, ``info.augment``), a recipe
            name in :data:`robustlab.data.augment.AUGMENTATIONS` or an ``Augmentation``.
        generator: the only source of randomness for shuffling and augmentation, so the same
            generator state repeats an epoch bit for bit; ``None`` uses the global RNG.
        drop_last: drop the last incomplete batch.
        num_workers: DataLoader worker processes for lazily loaded datasets (in-memory datasets
            need none and ignore it).
        shard: ``(rank, size)`` for data-parallel training: the batches (and their order) are
            those of the unsharded loader, and only rank's contiguous share of each batch
            (:func:`~robustlab.core.distributed.shard_range`; shares differ by at most one
            item, and may be empty) is loaded and yielded.
        augment_generator: what augmentation draws from instead of ``generator`` (a rank's own
            stream, while the order comes from the generator every rank shares).

    Returns:
        An iterable with ``len()`` (number of batches); iterate it once per epoch.

    Raises:
        InputError: bad ``batch_size``, ``num_workers`` or ``shard``; ``augment=True`` for a
            dataset without ``info``.
        UnknownNameError: unknown augmentation name (the message lists the known ones).
    """
    check_int(batch_size, "batch_size", 1)
    check_int(num_workers, "num_workers", 0)
    for name, gen in (("generator", generator), ("augment_generator", augment_generator)):
        if gen is not None and not isinstance(gen, torch.Generator):
            raise InputError(f"{name} must be a torch.Generator, got {type(gen).__name__}")
    aug = get_augmentation(augment, getattr(dataset, "info", None))
    images = getattr(dataset, "images", None)
    if isinstance(images, Tensor):
        if num_workers:
            logger.debug("in-memory dataset: ignoring num_workers=%d", num_workers)
        return TensorLoader(
            images,
            dataset.targets,  # type: ignore[attr-defined]
            batch_size,
            shuffle=shuffle,
            augment=aug,
            generator=generator,
            drop_last=drop_last,
            shard=shard,
            augment_generator=augment_generator,
        )
    return DatasetLoader(
        dataset,
        batch_size,
        shuffle=shuffle,
        augment=aug,
        generator=generator,
        drop_last=drop_last,
        num_workers=num_workers,
        shard=shard,
        augment_generator=augment_generator,
    )


def as_tensors(dataset: Dataset[Any], n: int | None = None, *, start: int = 0) -> tuple[Tensor, Tensor]:
    """Items ``start, start + 1, ...`` of ``dataset``, at most ``n`` of them (all when ``None``),
    as one float32 NCHW image tensor and one int64 label tensor, in order.

    The values are those of stacking ``dataset[i]`` item by item, bit for bit; an in-memory
    dataset (``images`` and ``targets`` tensors) is sliced instead, with no per-item Python
    (uint8 images divided by 255, as its ``__getitem__`` does). The result never shares memory
    with the dataset.

    Raises:
        InputError: for a bad ``n`` or ``start``.
    """
    total = len(dataset)  # type: ignore[arg-type]
    check_int(start, "start", 0)
    stop = total if n is None else min(total, start + check_int(n, "n", 0))
    images, targets = getattr(dataset, "images", None), getattr(dataset, "targets", None)
    if isinstance(images, Tensor) and isinstance(targets, Tensor) and images.shape[0] == total == targets.shape[0]:
        x = images[start:stop]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.to(torch.float32, copy=True)
        return x, targets[start:stop].to(torch.int64, copy=True)
    items = [dataset[i] for i in range(start, stop)]
    x = torch.stack([torch.as_tensor(item[0]) for item in items]).float()
    return x, torch.as_tensor([int(item[1]) for item in items], dtype=torch.int64)
