"""``torchvision:`` and ``timm:`` adapters (random init, nothing downloaded)."""

from __future__ import annotations

import math
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


# ---- the adapted first convolution is initialized the way the architecture does (issue 13.9)


def _first_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize(
    ("name", "expected_std", "zero_bias"),
    [
        ("resnet18", math.sqrt(2 / (64 * 7 * 7)), False),  # Kaiming fan-out: 0.025, not 0.082
        ("convnext_tiny", 0.02, True),  # truncated normal std .02, zero bias
        ("vgg11", math.sqrt(2 / (64 * 3 * 3)), True),
        ("efficientnet_b0", math.sqrt(2 / (32 * 3 * 3)), False),
        ("regnet_x_400mf", math.sqrt(2 / (32 * 3 * 3)), False),
        ("densenet121", math.sqrt(2 / (1 * 7 * 7)), False),  # Kaiming fan-in
        ("squeezenet1_1", math.sqrt(2 / (1 * 3 * 3)), True),  # Kaiming-uniform fan-in
        ("googlenet", 0.01, False),
    ],
)
def test_torchvision_one_channel_stem_gets_the_architectures_init(
    name: str, expected_std: float, zero_bias: bool
) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet's init_weights notice
        model = create_model(f"torchvision:{name}", num_classes=10, in_channels=1, seed=0)
    conv = _first_conv(model)
    assert conv.in_channels == 1
    pytorch_default = 1 / math.sqrt(3 * conv.weight[0].numel())  # what the issue reported
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.15, (conv.weight.std(), pytorch_default)
    if zero_bias:
        assert torch.count_nonzero(conv.bias) == 0


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny"])
def test_torchvision_one_channel_stem_matches_a_fresh_three_channel_stem(name: str) -> None:
    import torchvision

    torch.manual_seed(0)
    fresh = _first_conv(torchvision.models.get_model(name, weights=None))
    adapted = _first_conv(create_model(f"torchvision:{name}", in_channels=1, seed=0))
    assert abs(adapted.weight.std().item() / fresh.weight.std().item() - 1) < 0.15
    assert (adapted.bias is None) == (fresh.bias is None)


def test_torchvision_vit_patchify_stem_init() -> None:
    import torchvision

    from robustlab.models.adapters import replace_first_conv, torchvision_first_conv_init

    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=1, hidden_dim=64, mlp_dim=8
    )
    replace_first_conv(vit, 1, torchvision_first_conv_init(vit))
    assert abs(vit.conv_proj.weight.std().item() / math.sqrt(1 / (16 * 16)) - 1) < 0.15
    assert torch.count_nonzero(vit.conv_proj.bias) == 0


def test_every_torchvision_classifier_has_a_known_stem_init() -> None:
    import warnings

    import torchvision

    from robustlab.models import build_on_meta
    from robustlab.models.adapters import torchvision_first_conv_init

    seen = set()
    for name in torchvision.models.list_models(module=torchvision.models):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = build_on_meta(lambda n=name: torchvision.models.get_model(n, weights=None))
        if type(model) in seen:
            continue
        seen.add(type(model))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an unknown architecture warns
            torchvision_first_conv_init(model)
    assert len(seen) >= 17


def test_timm_builds_its_stem_for_in_chans_with_its_own_init() -> None:
    pytest.importorskip("timm")
    convnext = _first_conv(create_model("timm:convnext_tiny", in_channels=1, seed=0))
    assert convnext.in_channels == 1
    assert abs(convnext.weight.std().item() / 0.02 - 1) < 0.15
    assert torch.count_nonzero(convnext.bias) == 0
    resnet = _first_conv(create_model("timm:resnet18", in_channels=1, seed=0))
    assert abs(resnet.weight.std().item() / math.sqrt(2 / (64 * 7 * 7)) - 1) < 0.15
