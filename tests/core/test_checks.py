import pytest
import torch

from robustlab.core import (
    InputError,
    ThreatModel,
    check_images,
    check_int,
    check_labels,
    check_number,
    check_positive_int,
    check_probability,
    is_int,
    is_number,
)


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


# ------------------------------------------------------------ numbers and counts (issue 27)


@pytest.mark.parametrize(
    ("value", "low", "high", "expected"),
    [(3, None, None, True), (True, None, None, False), (False, 0, None, False), (3.0, None, None, False),
     ("3", None, None, False), (0, 1, None, False), (16, 1, 16, True), (17, 1, 16, False)],
)
def test_is_int_never_takes_a_bool(value, low, high, expected):
    assert is_int(value, low, high) is expected


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [(0.5, {}, True), (2, {}, True), (True, {}, False), (float("nan"), {}, False), (float("inf"), {}, False),
     (0.0, {"low": 0.0}, True), (0.0, {"low": 0.0, "low_open": True}, False),
     (1.0, {"low": 0.0, "high": 1.0, "high_open": True}, False), (1.0, {"low": 0.0, "high": 1.0}, True)],
)
def test_is_number(value, kwargs, expected):
    assert is_number(value, **kwargs) is expected


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (lambda: check_int(True, "steps", 1), "steps must be an int >= 1, got True"),
        (lambda: check_int(2.0, "steps", 1), "steps must be an int >= 1, got 2.0"),
        (lambda: check_int(20, "kernel_size", 1, 15), "kernel_size must be an int in [1, 15], got 20"),
        (lambda: check_int(-1, "seed", 0), "seed must be an int >= 0, got -1"),
        (lambda: check_int("3", "seed"), "seed must be an int, got '3'"),
        (lambda: check_positive_int(False, "atoms"), "atoms must be a positive int, got False"),
        (lambda: check_number(float("nan"), "eps", 0), "eps must be a finite number >= 0, got nan"),
        (lambda: check_number(True, "lr", 0, low_open=True), "lr must be a finite number > 0, got True"),
        (lambda: check_number(0.5, "p", 0, 0.5, low_open=True, high_open=True), "p must be a finite number in (0, 0.5), got 0.5"),
        (lambda: check_probability(1.0, "dropout", high_open=True), "dropout must be a probability in [0, 1), got 1.0"),
        (lambda: check_probability(-0.1, "flip probability"), "flip probability must be a probability in [0, 1], got -0.1"),
    ],
)
def test_checks_name_the_argument_the_rule_and_the_value(check, message):
    with pytest.raises(InputError) as e:
        check()
    assert str(e.value) == message


def test_checks_return_the_value():
    assert check_int(3, "n", 1) == 3 and check_positive_int(7, "n") == 7
    assert check_number(2, "x", 0) == 2.0 and isinstance(check_number(2, "x"), float)
    assert check_probability(0, "p") == 0.0


def _bool_where_an_int_is_meant():
    from robustlab.attacks import EOT
    from robustlab.data import load_dataset, make_loader
    from robustlab.defenses import StochasticDownsample
    from robustlab.models import create_model
    from robustlab.train import PGDAT, TrainConfig

    return [
        # train/robust.py took steps=True as one step (isinstance(True, int) is True)
        (lambda: PGDAT(steps=True), "pgd-at steps must be an int >= 1, got True"),
        (lambda: TrainConfig(epochs=True), "epochs must be an int >= 1, got True"),
        (lambda: TrainConfig(lr=True), "lr must be a finite number > 0, got True"),
        (lambda: EOT(n=True), "EOT n (draws) must be an int >= 1, got True"),
        (lambda: StochasticDownsample(spp=True), "spp must be a positive int, got True"),
        (lambda: create_model("wrn-34-10", depth=10, widen_factor=True), "widen_factor must be a positive int, got True"),
        (lambda: create_model("resnet-mini", in_channels=True), "in_channels must be a positive int, got True"),
        (lambda: make_loader(load_dataset("synthetic", "test", limit=8), True), "batch_size must be an int >= 1, got True"),
        (lambda: ThreatModel("linf", True), "eps must be a finite number >= 0, got True"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_a_bool_is_refused_where_an_int_is_meant(case):
    build, message = _bool_where_an_int_is_meant()[case]
    with pytest.raises(InputError) as e:
        build()
    assert str(e.value) == message
