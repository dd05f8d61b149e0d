"""Image-folder datasets (ImageNet-100, Imagenette and any tree in the same layout).

Layout: ``root/train/<class>/<image>`` and ``root/val/<class>/<image>`` (or ``root/test/...``).
The class list is the sorted list of folders under ``root/train``, and the same label mapping
is used for the evaluation folder. Images load lazily from disk with PIL, are converted to RGB
and brought to a fixed ``image_size`` by resizing the shorter side and center-cropping (the usual
evaluation preprocessing; random-resized-crop training augmentation runs later, batched, in
:mod:`robustlab.data.augment`).

ImageNet statistics and the linf 4/255 threat model follow the stochastic-downsampling paper,
Sec. 4 (ImageNet-100); Imagenette is the larger-image benchmark of the sparse-randomized-encoder
paper, Sec. 4.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from robustlab.core import DataNotFoundError, InputError, ThreatModel

from .api import register_dataset
from .base import DataFormatError, DatasetInfo, ImageDataset, image_size_pair

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "imagefolder_info", "load_imagefolder"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp",
)  # fmt: skip
"""File name endings (case-insensitive) read as images; other files are skipped."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LAYOUT_FIX = (
    "pass root= to a folder laid out as root/train/<class>/<image> and root/val/<class>/<image> "
    "(ImageNet-100 / Imagenette layout)"
)


def _root(root: str | os.PathLike[str] | None) -> Path:
    if root is None:
        raise DataNotFoundError(f"dataset 'imagefolder' needs a root folder: {_LAYOUT_FIX}")
    path = Path(root).expanduser()
    if not (path / "train").is_dir():
        raise DataNotFoundError(f"{path / 'train'} is not a folder; {_LAYOUT_FIX}")
    return path


def _class_names(root: Path) -> tuple[str, ...]:
    classes = tuple(
        sorted(
            e.name for e in os.scandir(root / "train") if e.is_dir() and not e.name.startswith(".")
        )
    )
    if not classes:
        raise DataNotFoundError(f"{root / 'train'} holds no class folders; {_LAYOUT_FIX}")
    return classes


def _split_folder(root: Path, split: str) -> Path:
    if split == "train":
        return root / "train"
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    raise DataNotFoundError(
        f"no evaluation folder in {root} (looked for {root / 'test'} and {root / 'val'}); "
        f"{_LAYOUT_FIX}"
    )


def _scan(folder: Path, classes: tuple[str, ...]) -> tuple[list[str], list[int]]:
    index = {c: i for i, c in enumerate(classes)}
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    extra = [c for c in found if c not in index]
    if extra:
        raise DataFormatError(
            f"{folder} has class folder(s) {extra[:5]} that are not in the training folder; "
            "the evaluation split must use the training classes"
        )
    paths: list[str] = []
    labels: list[int] = []
    for name in found:
        for dirpath, dirnames, filenames in os.walk(folder / name, followlinks=True):
            dirnames.sort()
            for f in sorted(filenames):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(index[name])
    if not paths:
        raise DataNotFoundError(
            f"{folder} holds no images (endings {', '.join(IMAGE_EXTENSIONS)}); {_LAYOUT_FIX}"
        )
    return paths, labels


def load_image(path: str | os.PathLike[str], size: tuple[int, int]) -> Tensor:
    """Read one image as a float32 3xHxW tensor in [0, 1] of exactly ``size``.

    The shorter side is resized (bilinear, antialiased by PIL) so the image covers ``size``,
    then the center is cropped.

    Raises:
        DataFormatError: the file is not a readable image.
    """
    h, w = size
    try:
        with Image.open(path) as f:
            im: Image.Image = f.convert("RGB")
        scale = max(h / im.height, w / im.width)
        rh, rw = max(h, round(im.height * scale)), max(w, round(im.width * scale))
        if (rh, rw) != (im.height, im.width):
            im = im.resize((rw, rh), Image.Resampling.BILINEAR)
        top, left = (rh - h) // 2, (rw - w) // 2
        arr = np.array(im.crop((left, top, left + w, top + h)), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataFormatError(
            f"{path} is not a readable image ({e}); remove or replace it"
        ) from None
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)


class ImageFolderDataset(ImageDataset):
    """A lazily loaded split of an image-folder dataset; ``make_loader`` uses a torch DataLoader.

    Args:
        paths: image file of each item.
        targets: label of each item.
        info: the dataset's description (its ``image_size`` is the output size).
        split: ``"train"``, ``"val"`` or ``"test"``.
        indices: position of each item in the full underlying split (default ``arange``).
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: Tensor | Sequence[int],
        info: DatasetInfo,
        split: str,
        indices: Tensor | None = None,
    ) -> None:
        self._init_common(info, torch.as_tensor(targets), split, indices)
        if len(paths) != len(self.targets):
            raise InputError(f"got {len(paths)} paths and {len(self.targets)} labels")
        self.paths: tuple[str, ...] = tuple(str(p) for p in paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return load_image(self.paths[i], self.info.image_size), int(self.targets[i])

    def _take(self, pos: Tensor, targets: Tensor, split: str, indices: Tensor) -> ImageFolderDataset:
        """The items at ``pos`` as a new lazily loaded dataset."""
        return ImageFolderDataset([self.paths[i] for i in pos.tolist()], targets, self.info, split, indices)

    def _compute_content_hash(self) -> str:
        """SHA-256 over the output size and every file's length and bytes, in item order.

        The stored content of an image folder is its encoded files: hashing their bytes reads
        every file once (no decoding), and the output size stands for the resize.
        """
        h = hashlib.sha256(f"size={tuple(self.info.image_size)}".encode())
        for path in self.paths:
            with open(path, "rb") as f:
                data = f.read()
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()


def _info(classes: tuple[str, ...], size: tuple[int, int]) -> DatasetInfo:
    return DatasetInfo(
        name="imagefolder",
        classes=classes,
        in_channels=3,
        image_size=size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        threat=ThreatModel("linf", 4 / 255),
        augment="imagenet",
    )


def imagefolder_info(
    root: str | os.PathLike[str] | None = None, image_size: int | Sequence[int] = 224
) -> DatasetInfo:
    """Describe an image-folder dataset from its folder names (no image is opened).

    Raises:
        DataNotFoundError: ``root`` missing or without ``train/<class>/`` folders.
    """
    size = image_size_pair(image_size)
    return _info(_class_names(_root(root)), size)


def load_imagefolder(
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | Sequence[int] = 224,
) -> ImageFolderDataset:
    """List the full ``"train"`` or ``"test"`` split of an image-folder dataset.

    ``"train"`` is ``root/train``; ``"test"`` is ``root/test``, else ``root/val``. Images are
    read from disk when indexed.

    Args:
        split: ``"train"`` or ``"test"``.
        root: the dataset folder.
        download: not supported (there is no canonical source); ignored with a warning.
        image_size: output size, an int or ``(height, width)``.

    Raises:
        DataNotFoundError: missing folders or no images, with the expected layout.
        DataFormatError: the evaluation folder has classes the training folder lacks.
    """
    size = image_size_pair(image_size)
    path = _root(root)
    if download:
        logger.warning("imagefolder cannot download; reading %s as it is", path)
    classes = _class_names(path)
    paths, labels = _scan(_split_folder(path, split), classes)
    return ImageFolderDataset(paths, labels, _info(classes, size), split)


register_dataset(
    "imagefolder", imagefolder_info, load_imagefolder,
    "root/train/<class>/* and root/val/<class>/* (ImageNet-100, Imagenette)",
)
