"""Fashion-MNIST: the real files (skipped when absent), tiny IDX files, and every failure mode."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import robustlab.data.fashion_mnist as fm
from robustlab.core import DataNotFoundError, InputError
from robustlab.data import DataFormatError, get_info, load_dataset, make_loader, read_idx


def _available() -> bool:
    try:
        fm.load_fashion_mnist("test")
    except DataNotFoundError:
        return False
    return True


needs_files = pytest.mark.skipif(
    not _available(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)


def _write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _write_tiny(root: Path, n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        out[prefix] = images
        out[prefix + "_labels"] = labels
    return out


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder, with $ROBUSTLAB_DATA and the system path pointing at nothing."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("ROBUSTLAB_DATA", str(empty))
    monkeypatch.setattr(fm, "SYSTEM_DIRS", (str(tmp_path / "no-system-dir"),))
    return empty


@needs_files
def test_full_splits_shapes_ranges_and_info() -> None:
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    assert float(train.images.min()) == 0 and float(train.images.max()) == 255
    assert torch.equal(train.targets.bincount(), torch.full((10,), 6000))
    assert torch.equal(test.targets.bincount(), torch.full((10,), 1000))
    assert torch.equal(train.indices, torch.arange(60000))
    assert train.split == "train" and test.split == "test"
    info = train.info
    assert info == get_info("fashion-mnist")
    assert info.num_classes == 10 and info.classes[0] == "T-shirt/top"
    assert info.classes[9] == "Ankle boot"
    assert info.in_channels == 1 and info.image_size == (28, 28)
    assert info.threat.norm == "linf" and info.threat.eps == pytest.approx(0.1)
    assert info.augment == "none"
    hist = torch.bincount(train.images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (hist * values).sum() / hist.sum()
    std = ((hist * (values - mean) ** 2).sum() / hist.sum()).sqrt()
    assert info.mean[0] == pytest.approx(mean.item(), abs=1e-6)
    assert info.std[0] == pytest.approx(std.item(), abs=1e-6)


@needs_files
def test_limit_is_stratified_deterministic_and_seeded() -> None:
    full = load_dataset("fashion-mnist", "train")
    a = load_dataset("fashion-mnist", "train", limit=1000)
    b = load_dataset("fashion-mnist", "train", limit=1000)
    c = load_dataset("fashion-mnist", "train", limit=1000, seed=1)
    assert len(a) == 1000
    assert torch.equal(a.targets.bincount(), torch.full((10,), 100))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)
    assert not torch.equal(a.indices, c.indices)
    assert torch.all(a.indices[1:] > a.indices[:-1])  # original order kept
    assert torch.equal(a.targets, full.targets[a.indices])
    assert torch.equal(a.images, full.images[a.indices])
    odd = load_dataset("fashion-mnist", "test", limit=15)
    assert sorted(odd.targets.bincount(minlength=10).tolist()) == [1] * 5 + [2] * 5


@needs_files
def test_val_split_is_disjoint_stratified_and_traceable() -> None:
    val = load_dataset("fashion-mnist", "val", val_size=6000)
    train = load_dataset("fashion-mnist", "train", val_size=6000)
    assert len(val) == 6000 and len(train) == 54000 and val.split == "val"
    assert torch.equal(val.targets.bincount(), torch.full((10,), 600))
    both = torch.cat([val.indices, train.indices])
    assert torch.equal(both.sort().values, torch.arange(60000))
    full = load_dataset("fashion-mnist", "train")
    assert torch.equal(val.targets, full.targets[val.indices])
    frac = load_dataset("fashion-mnist", "val", val_size=0.1)
    assert torch.equal(frac.indices, val.indices)
    small = load_dataset("fashion-mnist", "train", val_size=6000, limit=500)
    assert not set(small.indices.tolist()) & set(val.indices.tolist())
    assert torch.equal(small.targets.bincount(), torch.full((10,), 50))


@needs_files
def test_loader_batches_and_bit_identical_epochs() -> None:
    ds = load_dataset("fashion-mnist", "train", limit=1000)
    loader = make_loader(ds, 256)
    assert len(loader) == 4
    batches = list(loader)
    assert [x.shape[0] for x, _ in batches] == [256, 256, 256, 232]
    x, y = batches[0]
    assert x.shape == (256, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, ds.images[:256].float() / 255) and torch.equal(y, ds.targets[:256])
    assert len(make_loader(ds, 256, drop_last=True)) == 3

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        return list(make_loader(ds, 256, shuffle=True, augment="pad-crop-flip", generator=g))

    first, again, other = epoch(0), epoch(0), epoch(1)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(first, again, strict=True)
    )
    assert not torch.equal(first[0][1], other[0][1])
    for xb, _ in first:
        assert float(xb.min()) >= 0 and float(xb.max()) <= 1


def test_tiny_idx_files_round_trip(tmp_path: Path, nowhere: Path) -> None:
    arrays = _write_tiny(tmp_path)
    ds = load_dataset("fashion-mnist", "train", root=tmp_path)
    assert len(ds) == 30
    assert torch.equal(ds.images[:, 0], torch.from_numpy(arrays["train"]))
    assert torch.equal(ds.targets, torch.from_numpy(arrays["train_labels"]).long())
    x, _ = ds[3]
    assert torch.equal(x[0], torch.from_numpy(arrays["train"][3]).float() / 255)
    test = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert len(test) == 10


def test_env_var_and_subfolder_are_searched(
    tmp_path: Path, nowhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "data" / "fashion-mnist"
    sub.mkdir(parents=True)
    _write_tiny(sub)
    monkeypatch.setenv("ROBUSTLAB_DATA", str(tmp_path / "data"))
    assert len(load_dataset("fashion-mnist", "test")) == 10


def test_uncompressed_idx_is_accepted(tmp_path: Path) -> None:
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    _write_idx(tmp_path / "x-idx3-ubyte", arr, gz=False)
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte"), arr)


def test_missing_files_say_how_to_fix(tmp_path: Path, nowhere: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion-mnist", "train", root=nowhere)
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert str(nowhere) in msg and "ROBUSTLAB_DATA" in msg
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist") as err2:
        load_dataset("fashion-mnist", "test")  # no root: env and system path are empty
    assert "no-system-dir" in str(err2.value)


def test_explicit_root_does_not_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "good"
    good.mkdir()
    _write_tiny(good)
    monkeypatch.setenv("ROBUSTLAB_DATA", str(good))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError):
        load_dataset("fashion-mnist", "test", root=empty)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"this is not gzip at all", "not a readable gzip IDX"),
        (gzip.compress(b"\x00\x00\x09\x03" + b"\x00" * 12), "magic number"),
        (
            gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">3I", 5, 28, 28) + b"\x00" * 100),
            "truncated",
        ),
        (gzip.compress(b"\x00\x00\x08"), "magic number"),
    ],
    ids=["not-gzip", "bad-magic", "truncated-data", "truncated-header"],
)
def test_corrupt_idx_is_a_clear_error(
    tmp_path: Path, nowhere: Path, content: bytes, match: str
) -> None:
    _write_tiny(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(content)
    with pytest.raises(DataFormatError, match=match) as err:
        load_dataset("fashion-mnist", "train", root=tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(err.value)
    assert isinstance(err.value, InputError)


def test_mismatched_label_file(tmp_path: Path, nowhere: Path) -> None:
    _write_tiny(tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    with pytest.raises(DataFormatError, match="do not belong together"):
        load_dataset("fashion-mnist", "test", root=tmp_path)
