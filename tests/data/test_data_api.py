"""Registry, info, argument validation and stratified selection, shared by every dataset."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from robustlab.core import DuplicateNameError, InputError, ThreatModel, UnknownNameError
from robustlab.data import DATASETS, DatasetBuilder, DatasetInfo, get_info, load_dataset
from robustlab.data.splits import (
    balanced_counts,
    proportional_counts,
    seeded_generator,
    stratified_select,
)

EXPECTED = {
    "fashion-mnist": (10, 1, (28, 28), 0.1, "none"),
    "cifar10": (10, 3, (32, 32), 8 / 255, "cifar"),
    "cifar100": (100, 3, (32, 32), 8 / 255, "cifar"),
    "digits": (10, 1, (8, 8), 0.1, "none"),
    "synthetic": (10, 1, (28, 28), 0.1, "none"),
}


def test_registry_holds_every_dataset() -> None:
    assert set(DATASETS.names()) == set(EXPECTED) | {"imagefolder"}
    assert all(isinstance(DATASETS.get(n), DatasetBuilder) for n in DATASETS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_info_without_loading(name: str) -> None:
    info = get_info(name)
    classes, channels, size, eps, augment = EXPECTED[name]
    assert info.name == name and info.num_classes == classes == len(info.classes)
    assert info.in_channels == channels and info.image_size == size
    assert len(info.mean) == len(info.std) == channels
    assert info.threat == ThreatModel("linf", eps) and info.augment == augment
    assert json.loads(json.dumps(info.to_dict()))["num_classes"] == classes


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="fashion-mnist") as err:
        load_dataset("mnist-but-wrong")
    assert "cifar10" in str(err.value)
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        get_info("nope")


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(DuplicateNameError):
        DATASETS.register("synthetic", DATASETS.get("synthetic"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(split="validation"), "unknown split"),
        (dict(split="val"), "val_size > 0"),
        (dict(limit=0), "limit"),
        (dict(limit=-3), "limit"),
        (dict(limit=True), "limit"),
        (dict(limit=2.5), "limit"),
        (dict(val_size=-1), "val_size"),
        (dict(val_size=1.5), r"\(0, 1\)"),
        (dict(val_size=512), r"\[1, 511\]"),
        (dict(val_size=0.0001), "gives 0 items"),
        (dict(val_size=True), "val_size"),
        (dict(seed=-1), "seed"),
        (dict(colour=True), "unknown option"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_dataset("synthetic", **kwargs)


def test_unknown_option_names_the_allowed_ones() -> None:
    with pytest.raises(InputError, match="takes no extra options"):
        load_dataset("digits", image_size=8)
    with pytest.raises(InputError, match="num_classes"):
        get_info("synthetic", classes=3)


def test_limit_larger_than_split_returns_everything() -> None:
    full = load_dataset("synthetic", "test")
    same = load_dataset("synthetic", "test", limit=10_000)
    assert torch.equal(same.indices, full.indices)


def test_test_split_ignores_val_size_and_val_items_are_traceable() -> None:
    full = load_dataset("synthetic", "train")
    assert len(load_dataset("synthetic", "test", val_size=100)) == 256
    val = load_dataset("synthetic", "val", val_size=100, seed=3)
    assert val.split == "val" and len(val) == 100
    assert torch.equal(val.targets, full.targets[val.indices])
    assert torch.equal(val.images, full.images[val.indices])
    limited = load_dataset("synthetic", "val", val_size=100, seed=3, limit=20)
    assert set(limited.indices.tolist()) <= set(val.indices.tolist())
    assert torch.equal(limited.targets.bincount(), torch.full((10,), 2))
    sub = val.subset([0, 2])
    assert torch.equal(sub.indices, val.indices[[0, 2]]) and sub.split == "val"


def test_dataset_info_is_frozen_and_validated() -> None:
    info = get_info("cifar10")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "x"  # type: ignore[misc]
    with pytest.raises(InputError, match="mean"):
        dataclasses.replace(info, mean=(0.5,))
    with pytest.raises(InputError, match="std"):
        dataclasses.replace(info, std=(0.1, 0.0, 0.1))
    assert isinstance(info, DatasetInfo)


def test_balanced_and_proportional_counts() -> None:
    assert balanced_counts([5, 100, 100], 60, [0, 1, 2]) == [5, 28, 27]
    assert balanced_counts([5, 100, 100], 60, [2, 1, 0]) == [5, 27, 28]
    assert balanced_counts([3, 3], 6, [0, 1]) == [3, 3]
    assert proportional_counts([10, 30, 60], 10, [0, 1, 2]) == [1, 3, 6]
    assert sum(proportional_counts([7, 13, 29], 11, [2, 0, 1])) == 11


def test_stratified_select_on_imbalanced_labels() -> None:
    targets = torch.tensor([0] * 5 + [1] * 50 + [2] * 45)
    pos = stratified_select(targets, 30, seeded_generator(0), balanced=True)
    assert torch.equal(targets[pos].bincount(), torch.tensor([5, 13, 12])) or torch.equal(
        targets[pos].bincount(), torch.tensor([5, 12, 13])
    )
    assert torch.all(pos[1:] > pos[:-1])
    again = stratified_select(targets, 30, seeded_generator(0), balanced=True)
    assert torch.equal(pos, again)
    prop = stratified_select(targets, 20, seeded_generator(0), balanced=False)
    assert torch.equal(targets[prop].bincount(), torch.tensor([1, 10, 9]))


def test_content_hash_is_cached_and_options_are_recorded() -> None:
    import hashlib

    ds = load_dataset("synthetic", "train", num_classes=3, image_size=6, train_size=30, limit=12)
    expected = hashlib.sha256(f"{ds.images.dtype}{tuple(ds.images.shape)}".encode())
    expected.update(ds.images.contiguous().numpy().tobytes())
    assert ds.content_hash() == expected.hexdigest()
    ds.images = torch.zeros_like(ds.images)  # computed once: not recomputed for this object
    assert ds.content_hash() == expected.hexdigest()
    assert ds.options == {"root": None, "image_size": 6, "num_classes": 3, "train_size": 30}
    assert ds.subset([0, 1]).options == ds.options
    other = load_dataset("synthetic", "train", num_classes=3, image_size=7, train_size=30, limit=12)
    assert torch.equal(other.targets, ds.targets) and other.content_hash() != expected.hexdigest()


def test_select_subset_is_the_limit_rule() -> None:
    from robustlab.data import select_subset

    full = load_dataset("synthetic", "test", num_classes=4, image_size=4, test_size=80)
    for n, seed in ((10, 0), (37, 3)):
        limited = load_dataset("synthetic", "test", num_classes=4, image_size=4, test_size=80, limit=n, seed=seed)
        positions = select_subset(full.targets, n, seed)
        assert positions.tolist() == limited.indices.tolist()
        counts = torch.bincount(full.targets[positions], minlength=4).tolist()
        assert max(counts) - min(counts) <= 1 and sum(counts) == n
    assert select_subset(full.targets, 500, 0).tolist() == list(range(80))
    with pytest.raises(InputError, match="n must be an int >= 1"):
        select_subset(full.targets, 0, 0)
