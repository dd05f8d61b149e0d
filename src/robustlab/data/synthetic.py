"""A deterministic synthetic dataset for tests and smoke runs: no files, learnable classes.

Each class has a smooth random prototype image (random low-resolution noise upsampled
bilinearly, contrast in [0.2, 0.8]); an item is its class prototype plus Gaussian pixel noise,
clamped to [0, 1]. Prototypes, train and test items come from three fixed generator seeds, so
the data is identical in every process and does not depend on the global RNG.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.core import ThreatModel, check_int

from .api import register_dataset
from .base import DatasetInfo, TensorImageDataset, image_size_pair

__all__ = ["load_synthetic", "synthetic_info"]

_PROTO_SEED, _TRAIN_SEED, _TEST_SEED = 1_000_003, 1_000_033, 1_000_037
_NOISE = 0.15


def _check(
    num_classes: int,
    in_channels: int,
    image_size: int | Sequence[int],
    train_size: int,
    test_size: int,
) -> tuple[int, int, tuple[int, int], int, int]:
    return (
        check_int(num_classes, "synthetic: num_classes", 2),
        check_int(in_channels, "synthetic: in_channels", 1),
        image_size_pair(image_size, "synthetic: image_size"),
        check_int(train_size, "synthetic: train_size", 1),
        check_int(test_size, "synthetic: test_size", 1),
    )


def _items(protos: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = protos.shape[0]
    y = (torch.arange(n) % k)[torch.randperm(n, generator=g)]
    noise = torch.randn((n, *protos.shape[1:]), generator=g)
    x = (protos[y] + _NOISE * noise).clamp_(0, 1)
    return x, y


@functools.lru_cache(maxsize=8)
def _generate(
    num_classes: int, in_channels: int, size: tuple[int, int], train_size: int, test_size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(_PROTO_SEED)
    low = (max(2, size[0] // 4), max(2, size[1] // 4))
    coarse = torch.rand((num_classes, in_channels, *low), generator=g)
    protos = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    protos = 0.2 + 0.6 * protos
    xtr, ytr = _items(protos, train_size, _TRAIN_SEED)
    xte, yte = _items(protos, test_size, _TEST_SEED)
    return xtr, ytr, xte, yte


def _info(num_classes: int, in_channels: int, size: tuple[int, int], train: Tensor) -> DatasetInfo:
    mean = train.mean(dim=(0, 2, 3)).tolist()
    std = train.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    return DatasetInfo(
        name="synthetic",
        classes=tuple(f"class{i}" for i in range(num_classes)),
        in_channels=in_channels,
        image_size=size,
        mean=tuple(mean),
        std=tuple(std),
        threat=ThreatModel("linf", 0.1),
        augment="none",
    )


def synthetic_info(
    root: str | os.PathLike[str] | None = None,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int | Sequence[int] = (28, 28),
    train_size: int = 512,
    test_size: int = 256,
) -> DatasetInfo:
    """Describe the synthetic dataset for these settings (mean/std of its training items)."""
    k, c, size, ntr, nte = _check(num_classes, in_channels, image_size, train_size, test_size)
    return _info(k, c, size, _generate(k, c, size, ntr, nte)[0])


def load_synthetic(
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int | Sequence[int] = (28, 28),
    train_size: int = 512,
    test_size: int = 256,
) -> TensorImageDataset:
    """Generate the full ``"train"`` or ``"test"`` split (balanced classes, float images).

    Args:
        split: ``"train"`` or ``"test"``.
        root: not used.
        download: not used.
        num_classes: number of classes (>= 2).
        in_channels: channels per image.
        image_size: an int or ``(height, width)``.
        train_size: items in the training split.
        test_size: items in the test split.
    """
    k, c, size, ntr, nte = _check(num_classes, in_channels, image_size, train_size, test_size)
    xtr, ytr, xte, yte = _generate(k, c, size, ntr, nte)
    return TensorImageDataset(*((xtr, ytr) if split == "train" else (xte, yte)), _info(k, c, size, xtr), split)


register_dataset("synthetic", synthetic_info, load_synthetic, "deterministic class prototypes + noise, for tests")
