"""Registry-wide contract: every registered model builds, runs and back-propagates to its input."""

from __future__ import annotations

import json

import pytest
import torch

from robustlab.models import MODELS, Normalized, StagedNetwork, create_model, list_models

# Small stand-ins keep the contract cheap for the big nets; their default configurations are
# still run once below (WRN-34-10 at batch 1).
CHEAP = {"wrn-34-10": {"depth": 10, "widen_factor": 1}}


def _input(name: str, n: int) -> torch.Tensor:
    c, h, w = MODELS.meta(name)["input_size"]
    return torch.rand(n, c, h, w, requires_grad=True)


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name: str) -> None:
    c = MODELS.meta(name)["input_size"][0]
    model = create_model(name, num_classes=7, in_channels=c, seed=0, **CHEAP.get(name, {}))
    assert isinstance(model, Normalized)
    x = _input(name, 2)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    json.dumps(model.robustlab_recipe)  # the recipe is JSON-ready


@pytest.mark.parametrize("name", list_models())
def test_every_model_reports_stage_strides(name: str) -> None:
    model = create_model(
        name, in_channels=MODELS.meta(name)["input_size"][0], **CHEAP.get(name, {})
    )
    net = model.model
    assert isinstance(net, StagedNetwork)
    assert net.stage_strides == tuple(model.robustlab_recipe["kwargs"]["strides"])
    assert all(isinstance(s, int) for s in net.stage_strides)


def test_wrn_34_10_default_config_forward() -> None:
    # the registry-wide test runs a narrow WRN-10-1 with backward; this is the real one
    model = create_model("wrn-34-10", num_classes=10, seed=0).eval()
    assert model.model.stage_strides == (1, 2, 2)
    assert model.model.num_features == 640
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_list_models_names_and_pattern() -> None:
    assert list_models() == [
        "alexnet",
        "preact-resnet18",
        "resnet-mini",
        "resnet18",
        "resnet32",
        "vgg16",
        "wrn-34-10",
    ]
    assert list_models("resnet*") == ["resnet-mini", "resnet18", "resnet32"]


def test_names_are_case_and_underscore_insensitive() -> None:
    model = create_model("ResNet_Mini", in_channels=1)
    assert model.robustlab_recipe["arch"] == "resnet-mini"


@pytest.mark.parametrize("name", list_models())
def test_every_model_is_features_then_head(name: str) -> None:
    net = create_model(name, in_channels=MODELS.meta(name)["input_size"][0], seed=0, **CHEAP.get(name, {})).model
    net.eval()
    x = _input(name, 2).detach()
    torch.testing.assert_close(net(x), net.forward_head(net.forward_features(x)), rtol=0, atol=0)


def test_forward_features_has_one_home_per_network_form() -> None:
    from robustlab.models.base import PreActStages
    from robustlab.models.resnet import MadryResNet, PreActResNet
    from robustlab.models.vgg import VGG, AlexNet, PooledConvNet
    from robustlab.models.wrn import WideResNet

    for cls in (PreActResNet, MadryResNet, WideResNet):
        assert cls.forward_features is PreActStages.forward_features
    for cls in (VGG, AlexNet):
        assert cls.forward_features is PooledConvNet.forward_features


def test_registered_metadata() -> None:
    assert MODELS.meta("resnet-mini") == {
        "description": "small CIFAR-style ResNet for 28x28 (Fashion-MNIST) on a CPU", "input_size": (1, 28, 28)
    }
    assert MODELS.meta("wrn-34-10") == {
        "description": "Wide-ResNet-34-10 (TRADES/AWP CIFAR form)",
        "paper": "deformable-conv-stochasticity, Sec. 5",
        "input_size": (3, 32, 32),
    }
