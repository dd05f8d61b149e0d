"""What the CLI used to keep to itself, now the library's: a dataset's threat model per norm and the
check that a checkpoint fits the dataset it is used on."""

import pytest

from robustlab.core import InputError, ThreatModel
from robustlab.data import checkpoint_dataset, default_threat, get_info, l2_default


def test_default_threat_per_norm():
    fm = get_info("fashion-mnist")
    assert default_threat(fm) == fm.threat == default_threat(fm, "linf") == ThreatModel("linf", 0.1)
    assert default_threat(fm, "l2") == ThreatModel("l2", 1.5)
    assert default_threat(get_info("cifar10"), "l2") == ThreatModel("l2", 0.5)
    # no published radius for 8x8 digits: Fashion-MNIST's per-pixel size, 1.5 / 28 * 8
    assert l2_default(get_info("digits")) == pytest.approx(1.5 / 28 * 8, abs=1e-3)
    with pytest.raises(InputError, match="unknown norm 'l1'; use linf or l2"):
        default_threat(fm, "l1")


def _header(dataset=None, **kwargs):
    return {"dataset": dataset, "recipe": {"name": "resnet-mini", "kwargs": kwargs}}


def test_checkpoint_dataset_takes_the_headers_and_refuses_another_unless_forced():
    assert checkpoint_dataset(_header("fashion-mnist", in_channels=1, num_classes=10)).name == "fashion-mnist"
    with pytest.raises(InputError, match=r"trained on fashion-mnist, not digits; pass force=True .*drop dataset="):
        checkpoint_dataset(_header("fashion-mnist", in_channels=1, num_classes=10), "digits")
    assert checkpoint_dataset(_header("fashion-mnist", in_channels=1), "digits", force=True).name == "digits"
    with pytest.raises(InputError, match="names no dataset; pass dataset="):
        checkpoint_dataset(_header())


def test_checkpoint_dataset_refuses_a_network_that_cannot_take_the_images_even_forced():
    with pytest.raises(InputError, match="takes 1-channel images but cifar10 has 3"):
        checkpoint_dataset(_header("fashion-mnist", in_channels=1), "cifar10", force=True)
    with pytest.raises(InputError, match="predicts 100 classes but digits has 10"):
        checkpoint_dataset(_header("digits", num_classes=100))
