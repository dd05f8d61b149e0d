"""``torchvision:`` and ``timm:`` adapters (random init, nothing downloaded)."""

from __future__ import annotations

import sys

import pytest
import torch

from robustlab.core import InputError, RobustlabError, UnknownNameError
from robustlab.models import Normalized, create_model, model_from_recipe


def test_torchvision_resnet50_one_channel() -> None:
    model = create_model("torchvision:resnet50", num_classes=10, in_channels=1, seed=0).eval()
    assert isinstance(model, Normalized)
    assert model.model.conv1.in_channels == 1
    assert model.model.conv1.kernel_size == (7, 7) and model.model.conv1.stride == (2, 2)
    with torch.no_grad():
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    assert model.robustlab_recipe["arch"] == "torchvision:resnet50"


def test_torchvision_recipe_rebuilds() -> None:
    model = create_model("torchvision:resnet18", num_classes=3, in_channels=2, seed=0)
    again = model_from_recipe(model.robustlab_recipe)
    assert repr(again) == repr(model)


def test_torchvision_unknown_name_has_hint() -> None:
    with pytest.raises(
        UnknownNameError,
        match=r"unknown torchvision classification model 'resnet51'; did you mean: .*resnet50",
    ):
        create_model("torchvision:resnet51")


def test_torchvision_refuses_pretrained_weights() -> None:
    with pytest.raises(InputError, match="robustlab never downloads weights"):
        create_model("torchvision:resnet18", weights_backbone="DEFAULT")


def test_timm_resnet18_one_channel() -> None:
    pytest.importorskip("timm")
    model = create_model("timm:resnet18", num_classes=10, in_channels=1, seed=0).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    assert model.robustlab_recipe["kwargs"]["in_channels"] == 1


def test_timm_seed_is_deterministic() -> None:
    pytest.importorskip("timm")
    a = create_model("timm:resnet10t", num_classes=2, seed=5)
    b = create_model("timm:resnet10t", num_classes=2, seed=5)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_timm_unknown_name_has_close_matches() -> None:
    pytest.importorskip("timm")
    with pytest.raises(
        UnknownNameError, match=r"unknown timm model 'resnet1'; close matches: resnet18, "
    ):
        create_model("timm:resnet1")


def test_timm_refuses_pretrained() -> None:
    pytest.importorskip("timm")
    with pytest.raises(InputError, match="robustlab never downloads weights"):
        create_model("timm:resnet18", pretrained=True)


def test_timm_missing_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(RobustlabError, match=r"pip install robustlab\[timm\]"):
        create_model("timm:resnet18")


def test_empty_adapter_name() -> None:
    with pytest.raises(InputError, match="names no model"):
        create_model("timm:")
