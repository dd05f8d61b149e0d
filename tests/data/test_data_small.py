"""digits (scikit-learn, bundled) and synthetic (generated): shapes, ranges, determinism."""

from __future__ import annotations

import pytest
import torch

from robustlab.core import InputError
from robustlab.data import TensorImageDataset, get_info, load_dataset


def test_digits() -> None:
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert isinstance(train, TensorImageDataset)
    assert len(train) == 1438 and len(test) == 359
    assert train.images.shape == (1438, 1, 8, 8) and train.images.dtype == torch.float32
    for ds in (train, test):
        assert float(ds.images.min()) >= 0 and float(ds.images.max()) <= 1
        assert set(ds.targets.unique().tolist()) == set(range(10))
    x, y = train[5]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= y < 10
    assert torch.equal(((x * 16).round() / 16), x)  # pixels are k/16
    # fixed, stratified split: roughly 20% of each class in test, disjoint from train
    counts = test.targets.bincount().tolist()
    assert all(34 <= c <= 38 for c in counts)
    again = load_dataset("digits", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.targets, test.targets)
    info = train.info
    assert info == get_info("digits")
    assert info.image_size == (8, 8) and info.threat.eps == pytest.approx(0.1)
    assert info.mean[0] == pytest.approx(train.images.mean().item(), abs=1e-5)
    assert info.std[0] == pytest.approx(train.images.std(unbiased=False).item(), abs=1e-5)


def test_synthetic_defaults_and_determinism() -> None:
    train = load_dataset("synthetic", "train")
    test = load_dataset("synthetic", "test")
    assert train.images.shape == (512, 1, 28, 28) and test.images.shape == (256, 1, 28, 28)
    assert train.images.dtype == torch.float32
    for ds in (train, test):
        assert float(ds.images.min()) >= 0 and float(ds.images.max()) <= 1
    assert torch.equal(train.targets.bincount(), torch.tensor([52, 52] + [51] * 8))
    assert torch.equal(load_dataset("synthetic", "train").images, train.images)
    assert not torch.equal(train.images[:256], test.images)
    info = get_info("synthetic")
    assert info == train.info and info.num_classes == 10 and info.threat.eps == pytest.approx(0.1)


def test_synthetic_options_and_learnability() -> None:
    opts = dict(num_classes=4, in_channels=3, image_size=16, train_size=200, test_size=100)
    train = load_dataset("synthetic", "train", **opts)
    test = load_dataset("synthetic", "test", **opts)
    assert train.images.shape == (200, 3, 16, 16) and test.images.shape == (100, 3, 16, 16)
    assert train.info.in_channels == 3 and len(train.info.mean) == 3
    assert train.info.classes == ("class0", "class1", "class2", "class3")
    # classes are learnable: nearest class mean of the training set classifies the test set
    means = torch.stack([train.images[train.targets == k].mean(0) for k in range(4)])
    dist = torch.cdist(test.images.flatten(1), means.flatten(1))
    assert (dist.argmin(1) == test.targets).float().mean() > 0.95
    with pytest.raises(InputError, match="num_classes"):
        load_dataset("synthetic", num_classes=1)
    with pytest.raises(InputError, match="image_size"):
        load_dataset("synthetic", image_size=(4, 4, 4))
