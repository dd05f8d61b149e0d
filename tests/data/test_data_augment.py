"""Batched augmentations: range, shape, determinism under a generator, and known answers."""

from __future__ import annotations

import pytest
import torch

from robustlab.core import InputError, UnknownNameError
from robustlab.data import (
    AUGMENTATIONS,
    Compose,
    PadCrop,
    get_augmentation,
    get_info,
    pad_crop,
    random_flip,
    random_resized_crop,
)


def _batch(n: int = 16, c: int = 3, h: int = 12, w: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_flip_known_answers() -> None:
    x = _batch()
    assert torch.equal(random_flip(x, 1.0, _gen(0)), x.flip(-1))
    assert torch.equal(random_flip(x, 0.0, _gen(0)), x)
    y = random_flip(x, 0.5, _gen(0))
    flipped = torch.tensor([torch.equal(y[i], x[i].flip(-1)) for i in range(len(x))])
    kept = torch.tensor([torch.equal(y[i], x[i]) for i in range(len(x))])
    assert bool((flipped | kept).all()) and flipped.any() and kept.any()
    assert torch.equal(y, random_flip(x, 0.5, _gen(0)))


def test_pad_crop_is_a_shifted_window_of_the_padded_image() -> None:
    x, p = _batch(), 3
    y = pad_crop(x, p, _gen(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    h, w = x.shape[-2:]
    offsets = set()
    for i in range(len(x)):
        matches = [
            (a, b)
            for a in range(2 * p + 1)
            for b in range(2 * p + 1)
            if torch.equal(y[i], padded[i, :, a : a + h, b : b + w])
        ]
        assert matches, f"sample {i} is not a crop of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 1
    assert torch.equal(y, pad_crop(x, p, _gen(0)))
    assert not torch.equal(y, pad_crop(x, p, _gen(1)))
    assert torch.equal(pad_crop(x, 0, _gen(0)), x)


def test_random_resized_crop() -> None:
    x = _batch(h=16, w=16)
    y = random_resized_crop(x, generator=_gen(0))
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(y, random_resized_crop(x, generator=_gen(0)))
    assert not torch.equal(y, random_resized_crop(x, generator=_gen(1)))
    same = random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=_gen(0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_every_recipe_keeps_range_shape_and_determinism(name: str) -> None:
    x = _batch(n=8, c=1, h=28, w=28)
    aug = get_augmentation(name)
    if aug is None:
        assert name == "none"
        return
    a, b = aug(x, _gen(5)), aug(x, _gen(5))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, x)
    assert torch.equal(x, _batch(n=8, c=1, h=28, w=28))  # input untouched


def test_get_augmentation_resolution() -> None:
    assert get_augmentation(False) is None and get_augmentation("none") is None
    cifar = get_augmentation(True, get_info("cifar10"))
    assert isinstance(cifar, Compose) and isinstance(cifar.augmentations[0], PadCrop)
    assert cifar.augmentations[0].padding == 4
    assert get_augmentation(True, get_info("fashion-mnist")) is None
    custom = PadCrop(2)
    assert get_augmentation(custom) is custom
    assert get_augmentation("Pad_Crop_Flip") is not None  # names are canonicalized
    with pytest.raises(UnknownNameError, match="pad-crop-flip"):
        get_augmentation("mixup")
    with pytest.raises(InputError, match="augment=True"):
        get_augmentation(True)


def test_auto_padding_scales_with_size() -> None:
    x = torch.zeros((2, 1, 8, 8))
    x[:, :, 3:5, 3:5] = 1  # a centered blob moves by at most 1 pixel with 8x8 auto padding
    for seed in range(5):
        y = PadCrop(None)(x, _gen(seed))
        assert float(y.sum()) == float(x.sum())


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="float NCHW"):
        pad_crop(torch.zeros((3, 8, 8)), 2)
    with pytest.raises(InputError, match="float NCHW"):
        random_flip(torch.zeros((1, 3, 8, 8), dtype=torch.uint8))
    with pytest.raises(InputError, match="padding"):
        pad_crop(_batch(), -1)
    with pytest.raises(InputError, match="probability"):
        random_flip(_batch(), 1.5)
