"""``create_model``: recipes, seeds, weights files and error messages."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from robustlab.core import CheckpointError, InputError, RobustlabError, UnknownNameError
from robustlab.models import count_parameters, create_model, list_models, model_from_recipe

MINI = {"num_classes": 4, "in_channels": 1, "widths": (4, 8, 8)}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_default_mean_std_and_recipe() -> None:
    model = create_model("resnet-mini", **MINI)
    assert model.mean.flatten().tolist() == [0.5] and model.std.flatten().tolist() == [0.5]
    assert model.robustlab_recipe == {
        "arch": "resnet-mini",
        "kwargs": {
            "num_classes": 4,
            "in_channels": 1,
            "mean": [0.5],
            "std": [0.5],
            "widths": [4, 8, 8],
            "blocks": [1, 1, 1],
            "strides": [1, 2, 2],
        },
        "conversions": [],
    }


def test_recipe_rebuilds_identical_architecture() -> None:
    model = create_model(
        "resnet18",
        num_classes=3,
        mean=[0.1, 0.2, 0.3],
        std=[0.3, 0.2, 0.1],
        strides=(1, 1, 2, 2),
        widths=(8, 8, 16, 16),
    )
    recipe = json.loads(json.dumps(model.robustlab_recipe))  # survives JSON
    again = model_from_recipe(recipe)
    assert repr(again) == repr(model)
    assert again.robustlab_recipe == model.robustlab_recipe
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in again.state_dict().items()} == shapes
    torch.testing.assert_close(again.mean, model.mean)
    again.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(again.eval()(x), model.eval()(x))


def test_recipe_with_conversions_is_for_robustlab_load() -> None:
    recipe = create_model("resnet-mini", **MINI).robustlab_recipe
    recipe["conversions"] = [{"name": "shrink-strides", "kwargs": {}}]
    with pytest.raises(RobustlabError, match="conversions are applied by robustlab.load"):
        model_from_recipe(recipe)


def test_seed_gives_identical_weights_and_keeps_global_rng() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = create_model("resnet-mini", seed=7, **MINI)
    assert torch.equal(torch.get_rng_state(), state), "create_model(seed=...) moved the global RNG"
    b = create_model("resnet-mini", seed=7, **MINI)
    c = create_model("resnet-mini", seed=8, **MINI)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), expected)


def test_seed_is_not_part_of_the_recipe() -> None:
    recipe = create_model("resnet-mini", seed=3, **MINI).robustlab_recipe
    assert "seed" not in recipe["kwargs"]


def test_unknown_name_lists_known_names_and_prefixes() -> None:
    expected = (
        f"unknown model 'resnet-1000'; known models: {', '.join(list_models())}; "
        "torchvision and timm models are reached as 'torchvision:<name>' "
        "(e.g. 'torchvision:resnet50') and 'timm:<name>' (e.g. 'timm:convnext_tiny')"
    )
    with pytest.raises(UnknownNameError) as info:
        create_model("resnet-1000")
    assert str(info.value) == expected
    assert isinstance(info.value, KeyError)


def test_unknown_option_lists_the_options() -> None:
    with pytest.raises(
        InputError,
        match=r"model 'resnet-mini' does not take depth; its options are: widths, blocks, strides",
    ):
        create_model("resnet-mini", depth=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, "num_classes must be a positive int, got 0"),
        (
            {"in_channels": 2, "mean": [0.5]},
            r"mean needs one value per input channel \(2\), got \[0.5\]",
        ),
        ({"in_channels": 1, "std": [0.1, 0.2]}, r"std needs one value per input channel \(1\)"),
        ({"seed": 1.5}, "seed must be an int, got 1.5"),
    ],
)
def test_bad_arguments(kwargs, message) -> None:
    with pytest.raises(InputError, match=message):
        create_model("resnet-mini", **{"in_channels": 1, **kwargs})


def test_weights_from_safetensors(tmp_path) -> None:
    src = create_model("resnet-mini", seed=1, **MINI)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    dst = create_model("resnet-mini", seed=2, weights=path, **MINI)
    assert _same_weights(src, dst)
    assert "weights" not in dst.robustlab_recipe["kwargs"]


@pytest.mark.parametrize("name", ["w.pt", "w.pth", "w.bin"])
def test_weights_refuse_pickle_suffixes(tmp_path, name) -> None:
    path = tmp_path / name
    torch.save(create_model("resnet-mini", **MINI).model.state_dict(), path)
    with pytest.raises(CheckpointError, match="robustlab never unpickles files"):
        create_model("resnet-mini", weights=path, **MINI)


def test_weights_refuse_a_pickle_in_disguise(tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="is a pickle-based torch file"):
        create_model("resnet-mini", weights=path, **MINI)


def test_weights_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("resnet-mini", weights=tmp_path / "missing.safetensors", **MINI)
    wrapped = tmp_path / "wrapped.safetensors"
    save_file(dict(create_model("resnet-mini", **MINI).state_dict()), str(wrapped))
    with pytest.raises(CheckpointError, match=r"save model.model.state_dict\(\)"):
        create_model("resnet-mini", weights=wrapped, **MINI)
    other = tmp_path / "other.safetensors"
    save_file(
        dict(
            create_model(
                "resnet-mini", num_classes=5, in_channels=1, widths=(4, 8, 8)
            ).model.state_dict()
        ),
        str(other),
    )
    with pytest.raises(CheckpointError, match=r"linear.weight: file \(5, 8\) vs network \(4, 8\)"):
        create_model("resnet-mini", weights=other, **MINI)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        create_model("resnet-mini", weights=garbage, **MINI)


def test_count_parameters() -> None:
    model = create_model("resnet18")
    assert count_parameters(model) == 11_173_962  # the standard CIFAR ResNet-18
    model.model.linear.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 11_173_962 - 5120
