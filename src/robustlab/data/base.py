"""Dataset descriptions and the two dataset kinds every builder returns.

House plan (ARCHITECTURE.md, "Conventions"): images are float tensors in [0, 1], NCHW;
normalization lives in the model (``models.Normalized``), so :class:`DatasetInfo` carries the
per-channel mean and std for the model to use, never for the data pipeline.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from robustlab.core import InputError, ThreatModel, check_positive_int, is_int
from robustlab.core.checkpoint import update_tensor_hash
from robustlab.core.checks import check_images

__all__ = [
    "DataFormatError",
    "DatasetInfo",
    "ImageDataset",
    "TensorImageDataset",
]

SPLITS = ("train", "val", "test")


class DataFormatError(InputError):
    """A dataset file exists but is corrupt, truncated, of the wrong format or unsafe to read.

    Subclasses :class:`robustlab.core.InputError`, so ``except InputError`` catches it too.
    """


@dataclass(frozen=True)
class DatasetInfo:
    """What a model, an attack and a report need to know about a dataset, without its images.

    Attributes:
        name: registry name of the dataset (``"fashion-mnist"``, ``"cifar10"``, ...).
        classes: class names, indexed by label.
        in_channels: channels per image.
        image_size: ``(height, width)`` of every image.
        mean: per-channel mean of the [0, 1] training pixels, for ``models.Normalized``.
        std: per-channel standard deviation of the [0, 1] training pixels.
        threat: default threat model in pixel space (house plan: Fashion-MNIST linf 0.1,
            CIFAR linf 8/255 as in the DCS paper Sec. 4, ImageNet-scale linf 4/255 as in the
            stochastic-downsampling paper Sec. 4).
        augment: name of the default training augmentation in
            :data:`robustlab.data.augment.AUGMENTATIONS` (``make_loader(augment=True)``).
    """

    name: str
    classes: tuple[str, ...]
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    threat: ThreatModel
    augment: str = "none"

    def __post_init__(self) -> None:
        if len(self.classes) < 1:
            raise InputError(f"dataset {self.name!r} needs at least one class")
        check_positive_int(self.in_channels, "in_channels")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise InputError(f"image_size must be (height, width) >= 1, got {self.image_size}")
        for field, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.in_channels:
                raise InputError(
                    f"{field} of dataset {self.name!r} has {len(values)} entries for "
                    f"{self.in_channels} channel(s)"
                )
            if not all(math.isfinite(v) for v in values):
                raise InputError(f"{field} of dataset {self.name!r} must be finite, got {values}")
        if any(s <= 0 for s in self.std):
            raise InputError(f"std of dataset {self.name!r} must be > 0, got {self.std}")

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, for resolved run configs and ledger rows."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "threat": self.threat.to_dict(),
            "augment": self.augment,
        }


_D = TypeVar("_D", bound="ImageDataset")


def image_size_pair(image_size: int | Sequence[int], what: str = "image_size") -> tuple[int, int]:
    """``(height, width)`` from a positive int (a square) or a pair of positive ints.

    Raises:
        InputError: naming ``what`` and the value.
    """
    pair = tuple(image_size) if isinstance(image_size, Sequence) else (image_size, image_size)
    if len(pair) != 2 or not all(is_int(side, 1) for side in pair):
        raise InputError(f"{what} must be a positive int or (height, width), got {image_size!r}")
    return pair  # type: ignore[return-value]


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """A split of a labelled image dataset: items are ``(float32 CHW image in [0, 1], label)``.

    Attributes:
        info: the dataset's :class:`DatasetInfo`.
        targets: int64 labels of the items, in order.
        indices: int64 position of each item in the full underlying split (for ``"val"`` and for
            ``"train"`` with a hold-out, the full training split), so every subset is traceable.
        split: ``"train"``, ``"val"`` or ``"test"``.
        options: how the split was loaded (``root`` and the dataset's own options, as
            JSON-ready values), set by :func:`~robustlab.data.load_dataset`; ``{}`` otherwise.
            Part of the training fingerprint, so a run resumes only on the data it started on.
    """

    info: DatasetInfo
    targets: Tensor
    indices: Tensor
    split: str
    options: dict[str, Any]
    _content_hash: str | None

    def _init_common(
        self, info: DatasetInfo, targets: Tensor, split: str, indices: Tensor | None
    ) -> None:
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        targets = torch.as_tensor(targets).to(torch.int64)
        if targets.dim() != 1:
            raise InputError(f"targets must be 1-D, got shape {tuple(targets.shape)}")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= info.num_classes):
            raise InputError(
                f"labels of {info.name!r} must lie in [0, {info.num_classes - 1}], got "
                f"[{int(targets.min())}, {int(targets.max())}]"
            )
        if indices is None:
            indices = torch.arange(targets.numel(), dtype=torch.int64)
        indices = torch.as_tensor(indices).to(torch.int64)
        if indices.shape != targets.shape:
            raise InputError(
                f"indices has shape {tuple(indices.shape)}, targets {tuple(targets.shape)}"
            )
        self.info = info
        self.targets = targets
        self.indices = indices
        self.split = split
        self.options = {}
        self._content_hash = None

    def __len__(self) -> int:
        return int(self.targets.numel())

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        raise NotImplementedError

    def subset(self: _D, positions: Tensor | Sequence[int], split: str | None = None) -> _D:
        """Return the items at ``positions`` (of this dataset) as a new dataset of the same kind.

        ``indices`` of the result still point into the full underlying split; ``options`` are
        carried over.
        """
        pos = torch.as_tensor(positions, dtype=torch.int64).reshape(-1)
        n = len(self)
        if pos.numel() and (int(pos.min()) < -n or int(pos.max()) >= n):
            raise InputError(f"subset positions must lie in [0, {n - 1}]")
        pos = pos % max(n, 1)
        out = self._take(
            pos,
            self.targets.index_select(0, pos),
            split if split is not None else self.split,
            self.indices.index_select(0, pos),
        )
        out.options = dict(getattr(self, "options", {}))
        return out

    def _take(self: _D, pos: Tensor, targets: Tensor, split: str, indices: Tensor) -> _D:
        """A new dataset of this kind holding the items at positions ``pos``, with their
        ``targets`` and ``indices`` (what :meth:`subset` builds on)."""
        raise NotImplementedError

    def content_hash(self) -> str:
        """SHA-256 over the stored pixel content of every item, in order (computed once, cached).

        Labels and indices are not part of it (the training fingerprint hashes those
        separately), so two splits with the same labels but other pixels (another image size,
        another copy of the files) hash differently. Subclasses hash what they store
        (:class:`TensorImageDataset` its image tensor, ``ImageFolderDataset`` its files'
        bytes); this default hashes every item as returned by ``__getitem__``.
        """
        cached = getattr(self, "_content_hash", None)
        if cached is None:
            cached = self._compute_content_hash()
            self._content_hash = cached
        return cached

    def _compute_content_hash(self) -> str:
        h = hashlib.sha256()
        for i in range(len(self)):
            update_tensor_hash(h, torch.as_tensor(self[i][0]))
        return h.hexdigest()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.info.name!r}, split={self.split!r}, "
            f"n={len(self)}, classes={self.info.num_classes})"
        )


class TensorImageDataset(ImageDataset):
    """An in-memory split whose images are one NCHW tensor (``images``).

    ``images`` is uint8 (0..255, divided by 255 on the way out) or floating point (already in
    [0, 1]). The loader batches it by indexing, with no per-item Python. A full split may share
    its ``images`` with an in-process cache: treat it as read-only.

    Args:
        images: NCHW tensor of every item.
        targets: labels, one per image.
        info: the dataset's description; its channels and image size must match ``images``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        indices: position of each item in the full underlying split (default ``arange``).
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        info: DatasetInfo,
        split: str,
        indices: Tensor | None = None,
    ) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise InputError(f"images must be an NCHW tensor, got {shape}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise InputError(f"images must be uint8 or float, got {images.dtype}")
        expected = (info.in_channels, *info.image_size)
        if tuple(images.shape[1:]) != expected:
            raise InputError(
                f"images of {info.name!r} must have CHW shape {expected}, got "
                f"{tuple(images.shape[1:])}"
            )
        if images.is_floating_point():
            check_images(images, f"images of {info.name!r}")
        self._init_common(info, targets, split, indices)
        if images.shape[0] != self.targets.numel():
            raise InputError(f"got {images.shape[0]} images and {self.targets.numel()} labels")
        self.images = images

    def _compute_content_hash(self) -> str:
        h = hashlib.sha256()
        update_tensor_hash(h, self.images)
        return h.hexdigest()

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = self.images[i]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.to(torch.float32, copy=True)
        return x, int(self.targets[i])

    def _take(self, pos: Tensor, targets: Tensor, split: str, indices: Tensor) -> TensorImageDataset:
        """The items at ``pos`` as a new in-memory dataset (images are copied)."""
        return TensorImageDataset(self.images.index_select(0, pos), targets, self.info, split, indices)
