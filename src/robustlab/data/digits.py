"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), for quick experiments.

No download: the data ships inside scikit-learn. Pixels (0..16) are divided by 16. The split is
fixed: a stratified 20% test set drawn with seed 0, the rest is ``"train"``.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from robustlab.core import DataNotFoundError, ThreatModel

from .api import register_dataset
from .base import DatasetInfo, TensorImageDataset
from .splits import seeded_generator, stratified_select

__all__ = ["digits_info", "load_digits"]

_TEST_FRACTION = 0.2
_SPLIT_SEED = 0

_INFO = DatasetInfo(
    name="digits",
    classes=tuple(str(i) for i in range(10)),
    in_channels=1,
    image_size=(8, 8),
    # per-channel mean and std of the 1438 training images (pixels / 16), computed once:
    # 0.30537000717, 0.37604862572
    mean=(0.3053700,),
    std=(0.3760486,),
    threat=ThreatModel("linf", 0.1),
    augment="none",
)


@functools.lru_cache(maxsize=1)
def _arrays() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DataNotFoundError(
            "dataset 'digits' ships with scikit-learn, which is not installed; "
            "fix: pip install scikit-learn"
        ) from None

    bunch = sk_load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16).unsqueeze(1)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    n_test = round(_TEST_FRACTION * len(y))
    test = stratified_select(y, n_test, seeded_generator(_SPLIT_SEED), balanced=False)
    is_test = torch.zeros(len(y), dtype=torch.bool)
    is_test[test] = True
    train = (~is_test).nonzero().squeeze(1)
    return x[train], y[train], x[test], y[test]


def digits_info(root: str | os.PathLike[str] | None = None) -> DatasetInfo:
    """Describe the digits dataset (10 classes, 1x8x8, linf 0.1); reads nothing."""
    return _INFO


def load_digits(
    split: str, root: str | os.PathLike[str] | None = None, download: bool = False
) -> TensorImageDataset:
    """Load the full ``"train"`` (1438) or ``"test"`` (359) split; ``root`` is not used."""
    xtr, ytr, xte, yte = _arrays()
    return TensorImageDataset(*((xtr, ytr) if split == "train" else (xte, yte)), _INFO, split)


register_dataset("digits", digits_info, load_digits, "scikit-learn 8x8 digits, 10 classes")
