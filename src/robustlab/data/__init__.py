"""Datasets as float [0, 1] NCHW tensors, one registry for all of them, and fast loaders.

Registered datasets (:data:`DATASETS`): ``fashion-mnist`` (IDX files), ``cifar10`` and
``cifar100`` (official batches, read with an allow-list unpickler), ``imagefolder``
(ImageNet-100 / Imagenette layout), ``digits`` (scikit-learn, bundled) and ``synthetic``
(generated, for tests). Normalization is the model's job (``models.Normalized`` takes
``DatasetInfo.mean``/``std``); threat models are stated in pixel space (house plan).

Example:
    >>> ds = load_dataset("fashion-mnist", "train", val_size=5000, limit=1000)  # doctest: +SKIP
    >>> for x, y in make_loader(ds, 128, shuffle=True, generator=g): ...  # doctest: +SKIP
"""

from . import cifar, digits, fashion_mnist, imagefolder, synthetic  # noqa: F401  (register)
from .api import DATASETS, DatasetBuilder, get_info, load_dataset, select_subset
from .augment import (
    AUGMENTATIONS,
    Augmentation,
    Compose,
    Identity,
    PadCrop,
    RandomFlip,
    RandomResizedCrop,
    get_augmentation,
    pad_crop,
    random_flip,
    random_resized_crop,
)
from .base import DataFormatError, DatasetInfo, ImageDataset, TensorImageDataset
from .fashion_mnist import read_idx
from .fit import checkpoint_dataset
from .imagefolder import ImageFolderDataset
from .loader import DatasetLoader, TensorLoader, as_tensors, make_loader
from .threats import L2_EPS, default_threat, l2_default

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "L2_EPS",
    "Augmentation",
    "Compose",
    "DataFormatError",
    "DatasetBuilder",
    "DatasetInfo",
    "DatasetLoader",
    "Identity",
    "ImageDataset",
    "ImageFolderDataset",
    "PadCrop",
    "RandomFlip",
    "RandomResizedCrop",
    "TensorImageDataset",
    "TensorLoader",
    "as_tensors",
    "checkpoint_dataset",
    "default_threat",
    "get_augmentation",
    "get_info",
    "l2_default",
    "load_dataset",
    "make_loader",
    "pad_crop",
    "random_flip",
    "random_resized_crop",
    "read_idx",
    "select_subset",
]
