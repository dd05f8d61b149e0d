import pytest
import torch

from robustlab.core import InputError, ThreatModel, check_images, check_labels


def test_valid_images_pass():
    check_images(torch.rand(2, 3, 4, 4), channels=3)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.rand(3, 4, 4), "must be a 4-D NCHW batch, got shape (3, 4, 4)"),
        (torch.zeros(1, 1, 2, 2, dtype=torch.uint8), "must be a float tensor in [0, 1], got dtype torch.uint8"),
        (torch.full((1, 1, 2, 2), 255.0), "must lie in [0, 1], got values in [255, 255]"),
        (torch.full((1, 1, 2, 2), -0.5), "remove any Normalize transform"),
    ],
)
def test_bad_images_name_the_problem(x, message):
    with pytest.raises(InputError) as e:
        check_images(x)
    assert message in str(e.value)


def test_channel_count_checked():
    with pytest.raises(InputError, match="must have 1 channel"):
        check_images(torch.rand(1, 3, 2, 2), channels=1)


def test_labels_checked():
    check_labels(torch.tensor([0, 1]), 2, num_classes=2)
    with pytest.raises(InputError, match="got 3 labels for 2 images"):
        check_labels(torch.tensor([0, 1, 1]), 2)
    with pytest.raises(InputError, match=r"labels must lie in \[0, 1\], got \[0, 5\]"):
        check_labels(torch.tensor([0, 5]), 2, num_classes=2)


def test_threat_model_validates():
    assert ThreatModel("l2", 0.5).to_dict() == {"norm": "l2", "eps": 0.5}
    with pytest.raises(InputError, match="unknown norm 'l1'"):
        ThreatModel("l1", 0.1)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="eps must be a finite number >= 0"):
        ThreatModel("linf", -1.0)
