"""Batch iterators: ``make_loader`` yields ``(x, y)`` with x float32 NCHW in [0, 1], y int64;
``as_tensors`` gives a whole dataset (or its first ``n`` items) as one such pair.

In-memory datasets (those with an ``images`` tensor) are batched by indexing that tensor, with no
per-item Python; lazily loaded datasets go through a ``torch.utils.data.DataLoader``. Shuffling
(``torch.randperm``) and augmentation draw from the one ``generator`` passed in, so the same
generator state repeats an epoch bit for bit (what the trainer needs for bit-identical resume;
house plan, "Conventions": randomness is explicit).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from robustlab.core import InputError, check_int

from .augment import Augmentation, get_augmentation

__all__ = ["DatasetLoader", "TensorLoader", "as_tensors", "make_loader"]

logger = logging.getLogger(__name__)


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


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
    ) -> None:
        self.images = images
        self.targets = targets.to(torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.generator = generator
        self.drop_last = drop_last

    def __len__(self) -> int:
        return _num_batches(int(self.images.shape[0]), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = int(self.images.shape[0])
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for b in range(len(self)):
            start, stop = b * self.batch_size, min(n, (b + 1) * self.batch_size)
            idx = order[start:stop] if order is not None else torch.arange(start, stop)
            x = self.images.index_select(0, idx)
            x = x.float().div_(255) if x.dtype == torch.uint8 else x.to(torch.float32)
            if self.augment is not None:
                x = self.augment(x, self.generator)
            yield x, self.targets.index_select(0, idx)


class DatasetLoader:
    """Wraps a ``torch.utils.data.DataLoader`` over a lazily loaded dataset.

    Shuffling uses ``generator`` through the DataLoader's sampler; augmentation runs on whole
    batches in the main process, drawing from the same generator.
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
    ) -> None:
        self.dataset = dataset
        self.augment = augment
        self.generator = generator
        self.loader: DataLoader[Any] = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            num_workers=num_workers,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.loader:
            x = x.to(torch.float32)
            if self.augment is not None:
                x = self.augment(x, self.generator)
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

    Returns:
        An iterable with ``len()`` (number of batches); iterate it once per epoch.

    Raises:
        InputError: bad ``batch_size`` or ``num_workers``; ``augment=True`` for a dataset
            without ``info``.
        UnknownNameError: unknown augmentation name (the message lists the known ones).
    """
    check_int(batch_size, "batch_size", 1)
    check_int(num_workers, "num_workers", 0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator, got {type(generator).__name__}")
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
        )
    return DatasetLoader(
        dataset,
        batch_size,
        shuffle=shuffle,
        augment=aug,
        generator=generator,
        drop_last=drop_last,
        num_workers=num_workers,
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
