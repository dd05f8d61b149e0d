"""CIFAR-10 and CIFAR-100 from the official "python version" batch files.

Layout (as torchvision downloads it): ``cifar-10-batches-py/{data_batch_1..5, test_batch,
batches.meta}`` and ``cifar-100-python/{train, test, meta}``. Each batch is a pickled dict with
``data`` (uint8, N x 3072: 1024 red, then 1024 green, then 1024 blue values, each a 32x32 image
in row-major order, so ``reshape(N, 3, 32, 32)`` gives CHW) and ``labels`` (CIFAR-10) or
``fine_labels`` (CIFAR-100).

The files are pickles, so they are read with :func:`robustlab.data._safe_pickle.load_restricted`,
which refuses every global except numpy's array constructors: a tampered file fails with
:class:`DataFormatError` and never runs code. ``download=True`` fetches and checks the official
archive with torchvision's download helper (network required); nothing else touches the network.

Threat model linf 8/255 and pad-crop-flip augmentation as in the DCS paper, Sec. 4
("Experiments on CIFAR") and the feature-map-strides paper, Sec. V.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robustlab.core import DataNotFoundError, ThreatModel

from ._files import ENV_VAR, candidate_dirs, file_key, looked_in
from ._safe_pickle import load_restricted
from .api import register_dataset
from .base import DataFormatError, DatasetInfo, TensorImageDataset

__all__ = ["CIFAR10_CLASSES", "CIFAR100_CLASSES", "load_cifar10", "load_cifar100"]

logger = logging.getLogger(__name__)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Layout:
    name: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str
    classes: tuple[str, ...]
    info: DatasetInfo
    torchvision_class: str


def _layout(
    name: str, classes: tuple[str, ...], mean: tuple[float, ...], std: tuple[float, ...], **files: Any
) -> _Layout:
    """A CIFAR layout: 3x32x32 images, linf 8/255, the "cifar" augmentation."""
    info = DatasetInfo(name, classes, 3, (32, 32), mean, std, ThreatModel("linf", 8 / 255), "cifar")
    return _Layout(name=name, classes=classes, info=info, **files)


# mean and std: per channel, (population) std, of the 50000 training images in [0, 1]
_CIFAR10 = _layout(
    "cifar10", CIFAR10_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    folder="cifar-10-batches-py", train=tuple(f"data_batch_{i}" for i in range(1, 6)), test=("test_batch",),
    meta="batches.meta", label_key="labels", names_key="label_names", torchvision_class="CIFAR10",
)
_CIFAR100 = _layout(
    "cifar100", CIFAR100_CLASSES, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    folder="cifar-100-python", train=("train",), test=("test",),
    meta="meta", label_key="fine_labels", names_key="fine_label_names", torchvision_class="CIFAR100",
)


def _str(v: Any) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else str(v)


def _as_dict(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path} holds a {type(obj).__name__}, expected a CIFAR dict")
    return {_str(k): v for k, v in obj.items()}


@functools.lru_cache(maxsize=16)
def _read_batch(key: tuple[str, int, int], label_key: str) -> tuple[Tensor, Tensor]:
    path = Path(key[0])
    batch = _as_dict(load_restricted(path), path)
    if "data" not in batch or label_key not in batch:
        raise DataFormatError(
            f"{path} has keys {sorted(batch)}, expected 'data' and {label_key!r}; is it a "
            "batch of the other CIFAR dataset?"
        )
    data = batch["data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"{path}: 'data' must be a uint8 N x 3072 array, got {desc}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataFormatError(f"{path}: {label_key!r} is not a list of ints") from None
    if labels.shape[0] != data.shape[0]:
        raise DataFormatError(f"{path} has {data.shape[0]} images but {labels.shape[0]} labels")
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels)


def _find(layout: _Layout, split: str, root: str | os.PathLike[str] | None) -> Path:
    files = layout.train if split == "train" else layout.test
    dirs = [
        d for base in candidate_dirs(root, (layout.name,)) for d in (base / layout.folder, base)
    ]
    for d in dirs:
        if all((d / f).is_file() for f in files):
            return d
    raise DataNotFoundError(
        f"{layout.name} {split} files ({', '.join(files)}) not found; looked in: "
        f"{looked_in(dirs)}. Fix: pass root= (or set {ENV_VAR}) to the folder that contains "
        f"{layout.folder}/, or pass download=True to fetch the official archive (needs network)"
    )


def _download(layout: _Layout, root: str | os.PathLike[str] | None) -> None:
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    base = root if root is not None else os.environ.get(ENV_VAR)
    if base is None:
        raise DataNotFoundError(f"download=True needs root= or ${ENV_VAR} to say where to save")
    cls = getattr(tvd, layout.torchvision_class)
    logger.info("downloading %s into %s", layout.name, base)
    # download + md5 check + tar extraction only: torchvision's own loader (plain pickle) is
    # never called
    download_and_extract_archive(cls.url, str(base), filename=cls.filename, md5=cls.tgz_md5)


def _classes(layout: _Layout, folder: Path) -> tuple[str, ...]:
    path = folder / layout.meta
    if not path.is_file():
        return layout.classes
    meta = _as_dict(load_restricted(path), path)
    names = meta.get(layout.names_key)
    if not isinstance(names, list) or len(names) != len(layout.classes):
        raise DataFormatError(
            f"{path}: {layout.names_key!r} must list {len(layout.classes)} class names"
        )
    return tuple(_str(n) for n in names)


def _load(
    layout: _Layout, split: str, root: str | os.PathLike[str] | None, download: bool
) -> TensorImageDataset:
    try:
        folder = _find(layout, split, root)
    except DataNotFoundError:
        if not download:
            raise
        _download(layout, root)
        folder = _find(layout, split, root)
    parts = [
        _read_batch(file_key(folder / f), layout.label_key)
        for f in (layout.train if split == "train" else layout.test)
    ]
    x = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
    y = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(layout.classes)):
        raise DataFormatError(
            f"{folder}: labels span [{int(y.min())}, {int(y.max())}], expected "
            f"[0, {len(layout.classes) - 1}]; is this the other CIFAR dataset?"
        )
    info = layout.info
    classes = _classes(layout, folder)
    if classes != info.classes:
        logger.warning("%s: class names in %s differ from the official ones", layout.name, folder)
        info = dataclasses.replace(info, classes=classes)
    return TensorImageDataset(x, y, info, split)


def load_cifar10(
    split: str, root: str | os.PathLike[str] | None = None, download: bool = False
) -> TensorImageDataset:
    """Load the full CIFAR-10 ``"train"`` (50000) or ``"test"`` (10000) split into memory.

    Looks for ``cifar-10-batches-py/`` in ``root`` (or ``$ROBUSTLAB_DATA`` without it), also
    accepting ``root`` itself or ``root/cifar10`` as the batch folder. Batches are cached
    in-process.

    Raises:
        DataNotFoundError: files missing and ``download`` is False; the message says the fix.
        DataFormatError: a file is corrupt or names a forbidden pickle global.
    """
    return _load(_CIFAR10, split, root, download)


def load_cifar100(
    split: str, root: str | os.PathLike[str] | None = None, download: bool = False
) -> TensorImageDataset:
    """Load the full CIFAR-100 ``"train"`` (50000) or ``"test"`` (10000) split (fine labels).

    Looks for ``cifar-100-python/`` as :func:`load_cifar10` looks for its folder.

    Raises:
        DataNotFoundError: files missing and ``download`` is False; the message says the fix.
        DataFormatError: a file is corrupt or names a forbidden pickle global.
    """
    return _load(_CIFAR100, split, root, download)


def _info10(root: str | os.PathLike[str] | None = None) -> DatasetInfo:
    return _CIFAR10.info


def _info100(root: str | os.PathLike[str] | None = None) -> DatasetInfo:
    return _CIFAR100.info


register_dataset("cifar10", _info10, load_cifar10, "CIFAR-10, 10 classes, 3x32x32")
register_dataset("cifar100", _info100, load_cifar100, "CIFAR-100 (fine labels), 100 classes, 3x32x32")
