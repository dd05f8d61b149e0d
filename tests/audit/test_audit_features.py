"""The classifier head, its input features and the binarized copy (robustlab.audit.features).

Every expected value is computed here by hand from the model's own layers (never by reading the
code under test back)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from toys import NoiseInjection

import robustlab
from robustlab import defenses
from robustlab.audit.features import Readout, binarized, features, find_head
from robustlab.core import InputError
from robustlab.core.randomness import is_stochastic, seed_stochastic


def _hand_built(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 7), nn.ReLU(), nn.Linear(7, 3)).eval()


def _images(n: int, side: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def _mini() -> nn.Module:
    return robustlab.create_model("resnet-mini", num_classes=10, in_channels=1, seed=0).eval()


def test_hand_built_model_features_are_the_relu_output() -> None:
    model = _hand_built()
    x = _images(5)
    assert find_head(model, x) == "3"
    first = model[1]
    expected = (x.flatten(1) @ first.weight.T + first.bias).clamp_min(0)
    assert torch.allclose(features(model, x), expected, atol=1e-6)


@pytest.mark.parametrize("wrapped", [True, False])
def test_resnet_mini_features_are_the_pooled_feature_map(wrapped: bool) -> None:
    normalized = _mini()
    net = normalized.model
    model = normalized if wrapped else net
    x = _images(4)
    assert find_head(model, x) == ("model.linear" if wrapped else "linear")
    inputs = normalized.normalize(x) if wrapped else x
    with torch.no_grad():
        expected = torch.flatten(net.global_pool(net.forward_features(inputs)), 1)
    got = features(model, x)
    assert got.shape == (4, net.linear.in_features)
    assert torch.allclose(got, expected, atol=1e-5)
    # the head maps exactly these features to the model's logits
    with torch.no_grad():
        assert torch.allclose(net.linear(got), model(x), atol=1e-4)


def _torchvision() -> nn.Module:
    return robustlab.create_model("torchvision:resnet18", num_classes=10, in_channels=1, seed=0).eval()


def _timm() -> nn.Module:
    pytest.importorskip("timm")
    return robustlab.create_model("timm:resnet18", num_classes=10, in_channels=1, seed=0).eval()


def _sparse() -> nn.Module:
    atoms = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    return defenses.convert_sparse_front_end(_mini(), atoms, eps=0.1, image_size=28, top_t=4).eval()


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (_torchvision, "model.fc"),
        (_timm, "model.fc"),
        (lambda: defenses.convert_downsampling(_mini(), "sd").eval(), "model.linear"),
        (lambda: defenses.convert_dcs(_mini()).eval(), "model.linear"),
        (_sparse, "classifier.model.linear"),
        (lambda: defenses.convert_ensemble(defenses.convert_downsampling(_mini(), "sd").eval(), 3).eval(),
         "model.model.linear"),
    ],
    ids=["torchvision-resnet18", "timm-resnet18", "sd", "dcs", "sparse-front-end", "ensemble"],
)
def test_find_head_through_adapters_and_conversions(build, expected: str) -> None:  # type: ignore[no-untyped-def]
    model = build()
    x = _images(2)
    assert find_head(model, x) == expected
    head = model.get_submodule(expected)
    assert isinstance(head, nn.Linear) and head.out_features == 10
    assert features(model, x).shape == (2, head.in_features)


def _noisy_net(std: float = 0.5) -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(NoiseInjection(std), nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3)).eval()


def _hidden(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The penultimate features of one forward of ``_noisy_net``, layer by layer."""
    with torch.no_grad():
        return net[3](net[2](net[1](net[0](x))))


def test_ensemble_features_are_the_mean_over_its_calls() -> None:
    net = _noisy_net()
    ensemble = defenses.Ensemble(net, 3).eval()
    x = _images(6, side=4)
    seed_stochastic(ensemble, 7)
    got = features(ensemble, x, head="model.4")
    seed_stochastic(net, 7)  # the same layer, the same stream: three draws one after another
    expected = torch.stack([_hidden(net, x) for _ in range(3)]).mean(dim=0)
    assert torch.allclose(got, expected, atol=1e-6)
    assert find_head(ensemble, x) == "model.4"
    # not one call's features: the draws differ
    seed_stochastic(net, 7)
    assert not torch.allclose(got, _hidden(net, x), atol=1e-3)


def test_features_average_over_draws_of_a_randomized_model() -> None:
    net = _noisy_net()
    x = _images(4, side=4)
    seed_stochastic(net, 3)
    got = features(net, x, head="4", draws=4)
    seed_stochastic(net, 3)
    expected = torch.stack([_hidden(net, x) for _ in range(4)]).mean(dim=0)
    assert torch.allclose(got, expected, atol=1e-6)


def test_binarized_output_is_the_readout_of_the_features() -> None:
    model = _mini()
    x = _images(5)
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        logits_before = model(x)
    feats = features(model, x)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(2, feats.shape[1], generator=g)
    bias = torch.randn(2, generator=g)
    twin = binarized(model, weight, bias, head="model.linear")
    with torch.no_grad():
        out = twin(x)
    # independent truth: the head's input computed through the architecture, then the readout
    net = model.model
    with torch.no_grad():
        pooled = torch.flatten(net.global_pool(net.forward_features(model.normalize(x))), 1)
    assert torch.allclose(out, pooled @ weight.T + bias, atol=1e-4)
    assert isinstance(twin.get_submodule("model.linear"), Readout)
    assert not twin.training
    # the caller's model is untouched
    assert isinstance(model.model.linear, nn.Linear) and model.model.linear.out_features == 10
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), logits_before)


def test_binarized_keeps_the_defense_randomness() -> None:
    sd = defenses.convert_downsampling(_mini(), "sd").eval()
    x = _images(2)
    feats = features(sd, x)
    twin = binarized(sd, torch.randn(2, feats.shape[1]), torch.zeros(2), head=find_head(sd, x))
    assert is_stochastic(sd) and is_stochastic(twin)
    with torch.no_grad():
        assert not torch.equal(twin(x), twin(x))  # fresh draws, as the defense


def test_conv_only_model_gives_the_clear_error() -> None:
    model = nn.Sequential(nn.Conv2d(1, 10, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(InputError, match=r"no penultimate layer found.*pass head='<module name>'"):
        find_head(model, _images(2))
    with pytest.raises(InputError, match="no penultimate layer found"):
        features(model, _images(2))


def test_unknown_head_lists_how_to_find_names() -> None:
    with pytest.raises(InputError, match=r"unknown head 'model\.linr'.*named_modules\(\).*model\.linear"):
        features(_mini(), _images(2), head="model.linr")
    with pytest.raises(InputError, match=r"unknown head 'nope'.*named_modules"):
        binarized(_hand_built(), torch.zeros(2, 7), torch.zeros(2), head="nope")


def test_a_head_that_is_not_the_output_layer_is_refused() -> None:
    with pytest.raises(InputError, match=r"does not produce the model's output"):
        features(_hand_built(), _images(2), head="1")


def test_bad_readout_shapes_are_refused() -> None:
    model = _hand_built()
    with pytest.raises(InputError, match=r"two classes"):
        binarized(model, torch.zeros(3, 7), torch.zeros(3), head="3")
    with pytest.raises(InputError, match=r"weight must be a float tensor of shape \(2, F\)"):
        binarized(model, torch.zeros(7), torch.zeros(2), head="3")
    with pytest.raises(InputError, match=r"finite"):
        binarized(model, torch.full((2, 7), float("nan")), torch.zeros(2), head="3")
    with pytest.raises(InputError, match=r"draws must be an int >= 1"):
        features(model, _images(2), draws=0)
