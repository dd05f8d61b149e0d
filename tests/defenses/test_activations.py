"""swap_activations (gradient-norm thesis, Sec. 4.3, Table 4.4) and its checkpoint replay."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustlab
from robustlab.core import InputError
from robustlab.defenses import CONVERSIONS, Activation, shrink_strides, swap_activations


def _relu_modules(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.ReLU | nn.LeakyReLU)]


def _hand_swapped(model: nn.Module, make: type[nn.Module]) -> nn.Module:
    """The model with every nn.ReLU replaced by ``make()``, by hand."""
    out = copy.deepcopy(model)
    for name in _relu_modules(out):
        parent_name, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent_name), attr, make())
    return out


@pytest.mark.parametrize("name", ["torchvision:resnet18", "timm:resnet18"])
@pytest.mark.parametrize(("kind", "make"), [("gelu", nn.GELU), ("silu", nn.SiLU)])
def test_third_party_resnet18_has_no_relu_left(name: str, kind: str, make: type[nn.Module]) -> None:
    model = robustlab.create_model(name, num_classes=5, in_channels=3, seed=0).eval()
    assert _relu_modules(model)  # torchvision's and timm's ReLUs are modules (in place)
    swapped = swap_activations(model, kind)
    assert _relu_modules(swapped) == []
    assert _relu_modules(model)  # the caller's model is untouched
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _hand_swapped(model, make)(x)
        got = swapped(x)
        original = model(x)
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, original, atol=1e-3)


def _mini_gelu_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """resnet-mini written out by hand with GELU for every ReLU."""
    net = model.model
    h = F.gelu(net.bn1(net.conv1(model.normalize(x))))
    for stage in (net.layer1, net.layer2, net.layer3):
        for block in stage:
            out = F.gelu(block.bn1(block.conv1(h)))
            out = block.bn2(block.conv2(out))
            h = F.gelu(out + (h if block.shortcut is None else block.shortcut(h)))
    return net.linear(h.mean((2, 3)))


def test_our_resnet_with_functional_relus() -> None:
    model = robustlab.create_model("resnet-mini", num_classes=10, in_channels=1, seed=0).eval()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    swapped = swap_activations(model, "gelu")
    with torch.no_grad():
        assert torch.allclose(swapped(x), _mini_gelu_forward(model, x), atol=1e-5)
    assert swapped.state_dict().keys() == model.state_dict().keys()
    assert (
        sum(isinstance(m, Activation) and m.kind == "gelu" for m in swapped.modules()) == 1 + 3
    )  # the stem, one per block
    assert swapped.robustlab_recipe["conversions"] == [
        {"name": "activations", "options": {"kind": "gelu"}}
    ]


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("resnet-mini", {}),
        ("preact-resnet18", {}),
        ("wrn-34-10", {"depth": 10, "widen_factor": 1}),
        ("vgg16", {}),
        ("alexnet", {}),
    ],
)
def test_relu_swap_keeps_a_relu_network_as_it_was(name: str, options: dict) -> None:
    model = robustlab.create_model(name, num_classes=10, in_channels=3, seed=0, **options).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    relu = swap_activations(model, "relu")
    gelu = swap_activations(model, "gelu")
    back = swap_activations(gelu, "relu")
    with torch.no_grad():
        assert torch.equal(relu(x), model(x))  # each mirrored forward is the original one
        assert torch.equal(back(x), model(x))  # swaps compose
        assert not torch.allclose(gelu(x), model(x), atol=1e-4)
    assert _relu_modules(gelu) == []


def test_madry_resnet_leaky_relu_is_swapped() -> None:
    model = robustlab.create_model("resnet32", num_classes=10, in_channels=3, seed=0).eval()
    swapped = swap_activations(model, "silu")
    assert {m.kind for m in swapped.modules() if isinstance(m, Activation)} == {"silu"}
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(swapped(x), model(x), atol=1e-4)


def test_round_trip_through_save_and_load(tmp_path) -> None:
    model = robustlab.create_model("resnet-mini", num_classes=10, in_channels=1, seed=0)
    swapped = shrink_strides(swap_activations(model, "silu"), "1-1-2")
    path = tmp_path / "silu.safetensors"
    robustlab.save(swapped, path, dataset="fashion-mnist")
    loaded = robustlab.load(path).eval()
    swapped.eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), swapped(x))
    assert {m.kind for m in loaded.modules() if isinstance(m, Activation)} == {"silu"}
    assert [c["name"] for c in loaded.robustlab_recipe["conversions"]] == ["activations", "strides"]
    assert "activations" in CONVERSIONS.names()


def test_inplace_and_bad_inputs() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True), nn.Linear(3, 2))
    same = swap_activations(model, "gelu", inplace=True)
    assert same is model and isinstance(model[1], Activation)
    with pytest.raises(
        InputError, match="unknown activation 'tanh'; swap_activations takes gelu, silu, relu"
    ):
        swap_activations(model, "tanh")
    with pytest.raises(InputError, match="Linear has no ReLU"):
        swap_activations(nn.Linear(2, 2), "gelu")
