"""imagefolder on a tiny tree of PNGs written by the test: 3 classes x 4 train images, 2 val."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustlab.core import DataNotFoundError, InputError
from robustlab.data import (
    DataFormatError,
    ImageFolderDataset,
    get_info,
    load_dataset,
    make_loader,
)

CLASSES = ("cat", "dog", "fish")
COLORS = {"cat": (255, 0, 128), "dog": (0, 255, 0), "fish": (10, 20, 30)}


def _tree(root: Path, val_folder: str = "val") -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), (val_folder, 2)):
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                if i == 0:  # solid color, any size: survives resize + crop exactly
                    Image.new("RGB", (23, 17), COLORS[c]).save(d / f"img{i}.png")
                elif i == 1:  # grayscale input becomes 3 channels
                    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").save(
                        d / f"img{i}.PNG"
                    )
                else:
                    arr = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
                    Image.fromarray(arr).save(d / f"img{i}.png")
            (d / "notes.txt").write_text("not an image")
    return root


def test_train_and_val_splits(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    train = load_dataset("imagefolder", "train", root=root, image_size=16)
    test = load_dataset("imagefolder", "test", root=root, image_size=16)
    assert isinstance(train, ImageFolderDataset)
    assert len(train) == 12 and len(test) == 6
    assert train.info.classes == CLASSES and test.info.classes == CLASSES
    assert torch.equal(train.targets, torch.tensor([0] * 4 + [1] * 4 + [2] * 4))
    assert torch.equal(test.targets, torch.tensor([0, 0, 1, 1, 2, 2]))
    for ds in (train, test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 16, 16) and x.dtype == torch.float32
            assert float(x.min()) >= 0 and float(x.max()) <= 1
            assert y == int(ds.targets[i])
    x, _ = train[0]  # solid cat color
    expected = torch.tensor(COLORS["cat"], dtype=torch.float32) / 255
    assert torch.equal(x, expected.view(3, 1, 1).expand(3, 16, 16))
    gray, _ = train[1]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    info = train.info
    assert info == get_info("imagefolder", root=root, image_size=16)
    assert info.image_size == (16, 16) and info.in_channels == 3
    assert info.threat.eps == pytest.approx(4 / 255) and info.augment == "imagenet"
    assert info.mean == (0.485, 0.456, 0.406)
    rect = load_dataset("imagefolder", "test", root=root, image_size=(8, 12))
    assert rect[3][0].shape == (3, 8, 12)


def test_test_folder_preferred_and_val_holdout(tmp_path: Path) -> None:
    root = _tree(tmp_path, val_folder="test")
    assert len(load_dataset("imagefolder", "test", root=root, image_size=8)) == 6
    val = load_dataset("imagefolder", "val", root=root, image_size=8, val_size=3)
    train = load_dataset("imagefolder", "train", root=root, image_size=8, val_size=3)
    assert torch.equal(val.targets, torch.tensor([0, 1, 2]))
    assert len(train) == 9 and not set(val.indices.tolist()) & set(train.indices.tolist())
    assert all(p in load_dataset("imagefolder", root=root).paths for p in val.paths)


def test_lazy_loader_is_deterministic(tmp_path: Path) -> None:
    ds = load_dataset("imagefolder", "train", root=_tree(tmp_path), image_size=16)

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        return list(make_loader(ds, 5, shuffle=True, augment=True, generator=g))

    a, b = epoch(0), epoch(0)
    assert len(make_loader(ds, 5)) == 3 and len(make_loader(ds, 5, drop_last=True)) == 2
    assert [x.shape for x, _ in a] == [(5, 3, 16, 16), (5, 3, 16, 16), (2, 3, 16, 16)]
    assert all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True)
    )
    assert all(y.dtype == torch.int64 and 0 <= float(x.min()) <= float(x.max()) <= 1 for x, y in a)
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(ds.targets.tolist())
    plain = list(make_loader(ds, 12))
    assert torch.equal(plain[0][0][0], ds[0][0])


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="needs a root"):
        load_dataset("imagefolder", "train")
    with pytest.raises(DataNotFoundError, match="train/<class>"):
        load_dataset("imagefolder", "train", root=tmp_path / "nope")
    root = _tree(tmp_path / "a")
    (root / "val" / "zebra").mkdir()
    with pytest.raises(DataFormatError, match="zebra"):
        load_dataset("imagefolder", "test", root=root)
    root = _tree(tmp_path / "b")
    (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    ds = load_dataset("imagefolder", "train", root=root, image_size=8)
    with pytest.raises(DataFormatError, match="broken.png"):
        ds[int(next(i for i, p in enumerate(ds.paths) if p.endswith("broken.png")))]
    with pytest.raises(InputError, match="image_size"):
        load_dataset("imagefolder", "train", root=root, image_size=0)


def test_content_hash_covers_the_files_bytes_and_the_output_size(tmp_path: Path) -> None:
    import hashlib
    import shutil

    root = _tree(tmp_path / "a")
    a = load_dataset("imagefolder", "train", root=root, image_size=16)
    expected = hashlib.sha256(b"size=(16, 16)")
    for p in a.paths:
        data = Path(p).read_bytes()
        expected.update(len(data).to_bytes(8, "little") + data)
    assert a.content_hash() == expected.hexdigest()
    assert load_dataset("imagefolder", "train", root=root, image_size=12).content_hash() != a.content_hash()
    shutil.copytree(root, tmp_path / "b")
    b = load_dataset("imagefolder", "train", root=tmp_path / "b", image_size=16)
    assert b.content_hash() == a.content_hash() and b.options["root"] != a.options["root"]
    Image.new("RGB", (23, 17), (1, 2, 3)).save(tmp_path / "b" / "train" / "cat" / "img0.png")
    changed = load_dataset("imagefolder", "train", root=tmp_path / "b", image_size=16)
    assert changed.content_hash() != a.content_hash()
    assert a.subset([0, 5]).options == a.options == {"root": str(root.resolve()), "image_size": 16}
