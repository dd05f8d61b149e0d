"""Fashion-MNIST from its IDX files (Xiao et al., 2017): 60000 train and 10000 test 28x28 images.

The four ``*-ubyte.gz`` files are read with a small IDX parser (gzip + numpy) that checks magic
numbers and sizes; no torchvision, no pickle. Debian and Ubuntu ship the files in the package
``dataset-fashion-mnist`` (installed under ``/usr/share/datasets/fashion-mnist``).
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from robustlab.core import DataNotFoundError, ThreatModel

from ._files import ENV_VAR, candidate_dirs, file_key, looked_in
from .api import register_dataset
from .base import DataFormatError, DatasetInfo, TensorImageDataset

__all__ = [
    "FASHION_MNIST_CLASSES",
    "SYSTEM_DIRS",
    "fashion_mnist_info",
    "load_fashion_mnist",
    "read_idx",
]

logger = logging.getLogger(__name__)

SYSTEM_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)
"""System folders searched last (where Debian's ``dataset-fashion-mnist`` installs the files)."""

_SUBDIRS = ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Per-channel statistics of the 60000 training images as [0, 1] pixels, computed once from the
# official files: mean 0.28604059698879553, std 0.35302424451492237.
_MEAN = (0.2860406,)
_STD = (0.3530242,)

_INFO = DatasetInfo(
    name="fashion-mnist",
    classes=FASHION_MNIST_CLASSES,
    in_channels=1,
    image_size=(28, 28),
    mean=_MEAN,
    std=_STD,
    threat=ThreatModel("linf", 0.1),
    augment="none",
)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped when its name ends in ``.gz``).

    IDX layout: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
    one big-endian uint32 per dimension, then the data in C order.

    Returns:
        A writable uint8 array of the stored shape.

    Raises:
        DataFormatError: the file is not gzip, has a bad magic number, or its size does not match
            the dimensions in its header.
    """
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(
            f"{path} is not a readable {'gzip ' if path.name.endswith('.gz') else ''}IDX file "
            f"({e}); it is corrupt or truncated: reinstall dataset-fashion-mnist or replace it"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] == 0:
        magic = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise DataFormatError(
            f"{path} has IDX magic number 0x{magic}, expected 0x000008NN (unsigned bytes, NN "
            "dimensions); the file is corrupt or not an IDX file: replace it"
        )
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataFormatError(f"{path} is truncated inside its IDX header; replace it")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    expected = start + math.prod(dims)
    if len(raw) != expected:
        raise DataFormatError(
            f"{path} holds {len(raw) - start} data bytes, but its IDX header declares shape "
            f"{dims} ({expected - start} bytes); the file is truncated or corrupt: replace it"
        )
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=start).reshape(dims)


def _find(split: str, root: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    dirs = candidate_dirs(root, _SUBDIRS, SYSTEM_DIRS)
    for d in dirs:
        found = []
        for stem in _FILES[split]:
            path = next((d / n for n in (stem + ".gz", stem) if (d / n).is_file()), None)
            found.append(path)
        if found[0] is not None and found[1] is not None:
            return found[0], found[1]
    names = ", ".join(s + ".gz" for s in _FILES[split])
    raise DataNotFoundError(
        f"Fashion-MNIST {split} files ({names}) not found; looked in: {looked_in(dirs)}. "
        "Fix: on Debian/Ubuntu run `sudo apt-get install dataset-fashion-mnist` (installs them "
        f"in {SYSTEM_DIRS[0]}), or set {ENV_VAR} or pass root= to a folder holding the four "
        "IDX .gz files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)"
    )


@functools.lru_cache(maxsize=4)
def _decode(
    images_key: tuple[str, int, int], labels_key: tuple[str, int, int]
) -> tuple[Tensor, Tensor]:
    images_path, labels_path = Path(images_key[0]), Path(labels_key[0])
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataFormatError(
            f"{images_path} holds an array of shape {images.shape}, expected (N, 28, 28)"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataFormatError(
            f"{labels_path} holds labels of shape {labels.shape} for {images.shape[0]} images in "
            f"{images_path}; the files do not belong together"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataFormatError(f"{labels_path} holds label {int(labels.max())}, expected 0..9")
    logger.debug("decoded %s (%d images)", images_path, images.shape[0])
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def _download(root: str | os.PathLike[str] | None) -> None:
    from torchvision.datasets import FashionMNIST
    from torchvision.datasets.utils import download_url

    base = root if root is not None else os.environ.get(ENV_VAR)
    if base is None:
        raise DataNotFoundError(f"download=True needs root= or ${ENV_VAR} to say where to save")
    target = Path(base).expanduser() / "fashion-mnist"
    for filename, md5 in FashionMNIST.resources:
        if (target / filename).is_file():
            continue
        for mirror in FashionMNIST.mirrors:
            try:
                download_url(mirror + filename, str(target), filename, md5)
                break
            except OSError as e:  # try the next mirror
                logger.warning("download of %s from %s failed: %s", filename, mirror, e)


def fashion_mnist_info(root: str | os.PathLike[str] | None = None) -> DatasetInfo:
    """Describe Fashion-MNIST (10 classes, 1x28x28, linf 0.1 by house default); reads no files."""
    return _INFO


def load_fashion_mnist(
    split: str, root: str | os.PathLike[str] | None = None, download: bool = False
) -> TensorImageDataset:
    """Load the full ``"train"`` (60000) or ``"test"`` (10000) split into memory.

    Looks in ``root`` (and ``root/fashion-mnist``) when given; otherwise in ``$ROBUSTLAB_DATA``
    (and ``$ROBUSTLAB_DATA/fashion-mnist``), then ``/usr/share/datasets/fashion-mnist``. Decoded
    arrays are cached in-process, keyed by path, modification time and size.

    Raises:
        DataNotFoundError: files missing; the message lists where it looked and how to fix it.
        DataFormatError: a file is corrupt.
    """
    try:
        images_path, labels_path = _find(split, root)
    except DataNotFoundError:
        if not download:
            raise
        _download(root)
        images_path, labels_path = _find(split, root)
    x, y = _decode(file_key(images_path), file_key(labels_path))
    return TensorImageDataset(x, y, _INFO, split)


register_dataset(
    "fashion-mnist", fashion_mnist_info, load_fashion_mnist,
    "Fashion-MNIST, 10 classes of 1x28x28 clothing images, from IDX files",
)
