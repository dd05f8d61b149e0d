"""CIFAR-10/100 on small files written in torchvision's exact on-disk format, and a hostile pickle."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from robustlab.core import DataNotFoundError, InputError
from robustlab.data import DataFormatError, get_info, load_dataset, make_loader
from robustlab.data._safe_pickle import load_restricted
from robustlab.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES

N = 20  # images per batch file


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 ``str`` opcodes and numpy as ``numpy.core``, like the official
    CIFAR files (pickled by Python 2)."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = bytes([n]) if n < 256 else struct.pack("<i", n)
        self.write((pickle.SHORT_BINSTRING if n < 256 else pickle.BINSTRING) + head + obj)
        self.memoize(obj)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[type] = save_global


def _dump(path: Path, obj: object, protocol: int | str) -> None:
    with open(path, "wb") as f:
        if protocol == "py2":
            _Py2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=int(protocol))


def _batch(rng: np.random.Generator, label_key: bytes, num_classes: int, name: str) -> dict:
    return {
        b"batch_label": name.encode(),
        label_key: rng.integers(0, num_classes, N).tolist(),
        b"data": rng.integers(0, 256, (N, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(N)],
    }


def write_cifar10(root: Path, protocol: int | str = "py2") -> dict[str, dict]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = _batch(rng, b"labels", 10, name)
        _dump(folder / name, batches[name], protocol)
    meta = {
        b"num_cases_per_batch": N,
        b"label_names": [c.encode() for c in CIFAR10_CLASSES],
        b"num_vis": 3072,
    }
    _dump(folder / "batches.meta", meta, protocol)
    return batches


def write_cifar100(root: Path, protocol: int | str = "py2") -> dict[str, dict]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in ("train", "test"):
        b = _batch(rng, b"fine_labels", 100, name)
        b[b"coarse_labels"] = rng.integers(0, 20, N).tolist()
        batches[name] = b
        _dump(folder / name, b, protocol)
    meta = {
        b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
        b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
    }
    _dump(folder / "meta", meta, protocol)
    return batches


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROBUSTLAB_DATA", raising=False)


@pytest.mark.parametrize("protocol", ["py2", 2, 5])
def test_cifar10_pixels_round_trip(tmp_path: Path, protocol: int | str) -> None:
    batches = write_cifar10(tmp_path, protocol)
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert len(train) == 5 * N and len(test) == N
    assert train.images.shape == (5 * N, 3, 32, 32) and train.images.dtype == torch.uint8
    data = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert torch.equal(train.targets, torch.tensor(labels))
    # CHW order: 1024 red values, then green, then blue, each 32x32 row-major
    assert torch.equal(train.images, torch.from_numpy(data).reshape(-1, 3, 32, 32))
    i, c, r, col = 37, 2, 5, 30
    x, y = train[i]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == labels[i]
    assert x[c, r, col] == float(data[i, c * 1024 + r * 32 + col]) / 255
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(
        test.images, torch.from_numpy(batches["test_batch"][b"data"]).reshape(-1, 3, 32, 32)
    )
    info = train.info
    assert info == get_info("cifar10")
    assert info.classes == CIFAR10_CLASSES and info.num_classes == 10
    assert info.in_channels == 3 and info.image_size == (32, 32)
    assert info.threat.eps == pytest.approx(8 / 255) and info.augment == "cifar"


def test_cifar10_root_may_be_the_batch_folder_and_env_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar10(tmp_path)
    assert len(load_dataset("cifar10", "test", root=tmp_path / "cifar-10-batches-py")) == N
    monkeypatch.setenv("ROBUSTLAB_DATA", str(tmp_path))
    assert len(load_dataset("cifar10", "test")) == N


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    batches = write_cifar100(tmp_path)
    train = load_dataset("cifar100", "train", root=tmp_path)
    assert len(train) == N and train.info.num_classes == 100
    assert train.info.classes[1] == "aquarium_fish"
    assert torch.equal(train.targets, torch.tensor(batches["train"][b"fine_labels"]))
    assert torch.equal(
        train.images, torch.from_numpy(batches["train"][b"data"]).reshape(-1, 3, 32, 32)
    )
    assert get_info("cifar100").threat.eps == pytest.approx(8 / 255)


def test_cifar_split_limit_and_augmented_loader(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    val = load_dataset("cifar10", "val", root=tmp_path, val_size=10)
    train = load_dataset("cifar10", "train", root=tmp_path, val_size=10)
    assert len(val) == 10 and len(train) == 5 * N - 10
    assert not set(val.indices.tolist()) & set(train.indices.tolist())
    g = torch.Generator().manual_seed(0)
    batches = list(make_loader(train, 32, shuffle=True, augment=True, generator=g))
    assert [x.shape for x, _ in batches] == [(32, 3, 32, 32)] * 2 + [(26, 3, 32, 32)]
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_missing_cifar_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", "train", root=tmp_path)
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "download=True" in msg and "root=" in msg
    with pytest.raises(DataNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", "test")


class _Evil:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((N, 3072), np.uint8), b"labels": [0] * N, b"x": _Evil(marker)}
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", evil, 2)
    with pytest.raises(
        DataFormatError, match=r"refused to load global (posix|os|nt)\.system"
    ) as err:
        load_dataset("cifar10", "test", root=tmp_path)
    assert "arbitrary code" in str(err.value)
    assert isinstance(err.value, InputError)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(V1+1\ntR.",  # builtins.eval via GLOBAL
        b"c_codecs\nencode\n(Vx\nVrot13\ntR.",  # allowed global, forbidden codec
        b"cnumpy.testing\nassert_equal\n(I1\nI1\ntR.",  # a numpy global outside the list
    ],
    ids=["eval", "codec", "numpy-other"],
)
def test_restricted_unpickler_allows_only_array_globals(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "p"
    path.write_bytes(payload)
    with pytest.raises(DataFormatError, match="refused"):
        load_restricted(path)


def test_corrupt_cifar_files(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "test_batch").write_bytes(b"\x80\x02}q\x00(X")  # truncated pickle
    with pytest.raises(DataFormatError, match="corrupt or truncated"):
        load_dataset("cifar10", "test", root=tmp_path)
    _dump(folder / "test_batch", {b"data": np.zeros((N, 100), np.uint8), b"labels": [0] * N}, 2)
    with pytest.raises(DataFormatError, match="N x 3072"):
        load_dataset("cifar10", "test", root=tmp_path)
    _dump(folder / "test_batch", [1, 2, 3], 2)
    with pytest.raises(DataFormatError, match="expected a CIFAR dict"):
        load_dataset("cifar10", "test", root=tmp_path)
    bad = {b"data": np.zeros((N, 3072), np.uint8), b"labels": [10] * N}
    _dump(folder / "test_batch", bad, 2)
    with pytest.raises(DataFormatError, match="labels span"):
        load_dataset("cifar10", "test", root=tmp_path)
