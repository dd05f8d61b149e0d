"""make_loader: batch counts, dtypes, coverage, and bit-identical epochs from a generator state;
as_tensors: a dataset as one (images, labels) pair, bit for bit what stacking its items gives."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from robustlab.core import InputError, UnknownNameError
from robustlab.data import (
    DatasetLoader,
    PadCrop,
    TensorImageDataset,
    TensorLoader,
    as_tensors,
    load_dataset,
    make_loader,
)


@pytest.fixture(scope="module")
def ds() -> TensorImageDataset:
    ds = load_dataset("synthetic", "train", train_size=100, test_size=10)
    assert isinstance(ds, TensorImageDataset)
    return ds


def test_batches_in_order_without_shuffle(ds: TensorImageDataset) -> None:
    loader = make_loader(ds, 32)
    assert isinstance(loader, TensorLoader) and len(loader) == 4
    xs, ys = zip(*loader, strict=True)
    assert [len(y) for y in ys] == [32, 32, 32, 4]
    assert all(
        x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in zip(xs, ys, strict=True)
    )
    assert torch.equal(torch.cat(xs), ds.images) and torch.equal(torch.cat(ys), ds.targets)
    assert len(make_loader(ds, 32, drop_last=True)) == 3
    assert [len(y) for _, y in make_loader(ds, 32, drop_last=True)] == [32, 32, 32]
    assert len(make_loader(ds, 100)) == 1 and len(make_loader(ds, 1000)) == 1


def test_uint8_images_are_scaled() -> None:
    fake = load_dataset("synthetic", "test", train_size=10, test_size=10)
    fake.images = (fake.images * 255).round().to(torch.uint8)
    x, _ = next(iter(make_loader(fake, 10)))
    assert torch.equal(x, fake.images.float() / 255)


def test_shuffle_covers_every_item_once(ds: TensorImageDataset) -> None:
    g = torch.Generator().manual_seed(0)
    xs, ys = zip(*make_loader(ds, 32, shuffle=True, generator=g), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    assert not torch.equal(y, ds.targets)
    order = torch.cdist(x.flatten(1), ds.images.flatten(1)).argmin(1)
    assert torch.equal(x, ds.images[order])
    assert sorted(order.tolist()) == list(range(100))
    assert torch.equal(y, ds.targets[order])


def test_same_generator_state_repeats_the_epoch_bit_for_bit(ds: TensorImageDataset) -> None:
    g = torch.Generator().manual_seed(7)
    loader = make_loader(ds, 16, shuffle=True, augment="pad-crop-flip", generator=g)
    state = g.get_state()
    first = list(loader)
    second = list(loader)  # the generator moved on: a new epoch differs
    g.set_state(state)  # what a resumed trainer does
    replay = list(loader)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(first, replay, strict=True)
    )
    assert not torch.equal(first[0][1], second[0][1])
    other = list(make_loader(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(8)))
    assert not torch.equal(first[0][1], other[0][1])


def test_augment_options(ds: TensorImageDataset) -> None:
    plain = next(iter(make_loader(ds, 50)))[0]
    assert torch.equal(next(iter(make_loader(ds, 50, augment=True)))[0], plain)  # default "none"
    g = torch.Generator().manual_seed(0)
    shifted = next(iter(make_loader(ds, 50, augment=PadCrop(2), generator=g)))[0]
    assert shifted.shape == plain.shape and not torch.equal(shifted, plain)
    with pytest.raises(UnknownNameError, match="cifar"):
        make_loader(ds, 10, augment="autoaugment")


class _Pairs(Dataset):
    """A plain map-style dataset without .info or .images."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((1, 4, 4), i / 10), i % 3


def test_generic_dataset_goes_through_dataloader() -> None:
    loader = make_loader(_Pairs(), 4, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert isinstance(loader, DatasetLoader) and len(loader) == 3
    ys = torch.cat([y for _, y in loader])
    assert ys.dtype == torch.int64 and sorted(ys.tolist()) == sorted(i % 3 for i in range(10))
    again = torch.cat(
        [
            y
            for _, y in make_loader(
                _Pairs(), 4, shuffle=True, generator=torch.Generator().manual_seed(0)
            )
        ]
    )
    assert torch.equal(ys, again)
    with pytest.raises(InputError, match="augment=True"):
        make_loader(_Pairs(), 4, augment=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.0), "batch_size"),
        (dict(batch_size=4, num_workers=-1), "num_workers"),
        (dict(batch_size=4, generator=0), "generator"),
    ],
)
def test_bad_loader_arguments(ds: TensorImageDataset, kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        make_loader(ds, **kwargs)


def _stacked(data: Dataset, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What every call site wrote out by hand before ``as_tensors``."""
    x = torch.stack([data[i][0] for i in range(start, stop)])
    return x, torch.tensor([int(data[i][1]) for i in range(start, stop)])


@pytest.mark.parametrize("kind", ["float", "uint8", "generic"])
def test_as_tensors_equals_stacking_the_items_bit_for_bit(ds: TensorImageDataset, kind: str) -> None:
    data: Dataset = ds
    if kind == "uint8":
        data = ds.subset(range(len(ds)))
        data.images = (data.images * 255).round().to(torch.uint8)
    elif kind == "generic":
        data = torch.utils.data.Subset(ds, list(range(len(ds))))
    for n, start, stop in ((None, 0, 100), (7, 0, 7), (7, 90, 97), (50, 90, 100)):
        x, y = as_tensors(data, n, start=start)
        ex, ey = _stacked(data, start, stop)
        assert x.dtype == ex.dtype == torch.float32 and y.dtype == ey.dtype == torch.int64
        assert torch.equal(x.view(torch.int32), ex.view(torch.int32)) and torch.equal(y, ey)


def test_as_tensors_never_shares_memory_with_the_dataset(ds: TensorImageDataset) -> None:
    x, y = as_tensors(ds, 4)
    x.zero_()
    y.fill_(7)
    assert ds.images[:4].abs().sum() > 0 and (ds.targets[:4] != 7).any()


@pytest.mark.parametrize(("kwargs", "match"), [({"n": -1}, "n must be an int >= 0"),
                                                ({"n": True}, "n must be an int >= 0"),
                                                ({"start": -2}, "start must be an int >= 0")])
def test_as_tensors_bad_arguments(ds: TensorImageDataset, kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        as_tensors(ds, **kwargs)


@pytest.mark.parametrize(("size", "expected"), [(8, (8, 8)), ((6, 4), (6, 4)), ([6, 4], (6, 4))])
def test_image_size_pair(size: object, expected: tuple[int, int]) -> None:
    from robustlab.data.base import image_size_pair

    assert image_size_pair(size) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, True, (4,), (4, 0), (4.0, 4), "44"])
def test_image_size_pair_refuses(size: object) -> None:
    from robustlab.data.base import image_size_pair

    with pytest.raises(InputError, match=r"synthetic: image_size must be a positive int or \(height, width\), got"):
        image_size_pair(size, "synthetic: image_size")  # type: ignore[arg-type]
