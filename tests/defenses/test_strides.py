"""shrink_strides, upsample_input and swap_pooling (feature-map-strides paper, Sec. IV and V-C).

Expected feature-map sizes are worked out by hand in the comments, from the layer formulas:
a 3x3 conv with padding 1 and stride s makes an n-pixel side ceil(n / s); a strided max-pool of
VGG16 / AlexNet makes ceil(n / s) (ceil mode) and a stride-1 one ("same") keeps n; torchvision's
7x7/2 stem conv (padding 3) and 3x3/2 max-pool (padding 1) each make floor((n - 1) / 2) + 1.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustlab
from robustlab.core import InputError
from robustlab.defenses import (
    CONVERSIONS,
    Upsampled,
    UpsampleInput,
    apply_conversion,
    convert_downsampling,
    shrink_strides,
    stage_strides,
    swap_pooling,
    upsample_input,
)
from robustlab.models import Normalized

NARROW = {
    "resnet18": {"widths": (8, 16, 32, 64)},
    "preact-resnet18": {"widths": (8, 16, 32, 64)},
    "resnet-mini": {"widths": (8, 8, 16)},
    "resnet32": {"blocks": (1, 1, 1)},
    "wrn-34-10": {"depth": 10, "widen_factor": 1},
}


def _model(arch: str, cin: int = 3, **kw) -> nn.Module:  # type: ignore[no-untyped-def]
    return robustlab.create_model(arch, in_channels=cin, seed=0, **{**NARROW.get(arch, {}), **kw}).eval()


def _final_pool(model: nn.Module) -> nn.Module:
    """The network's final pooling module, found by name (not by the code under test)."""
    net = model.model
    while isinstance(net, Upsampled):
        net = net.net
    for name in ("global_pool", "avgpool"):
        if hasattr(net, name):
            return getattr(net, name)
    raise AssertionError(f"no final pooling in {type(net).__name__}")


def _pre_pool(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The feature map entering the final pooling, by a forward pre-hook."""
    seen: list[torch.Tensor] = []
    handle = _final_pool(model).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


# --- the paper's feature-map sizes ------------------------------------------------------------

# CIFAR ResNet-18 / PreAct-18 (stride-1 stem, each stage ceil(n / s)):
#   32x32: 1-2-2-2: 32 -> 32, 16, 8, 4 = 4;   1-1-2-2: 32, 32, 16, 8 = 8;
#          1-1-1-2: 32, 32, 32, 16 = 16;      2-2-2-2: 16, 8, 4, 2 = 2
#   28x28: 1-2-2-2: 28, 14, 7, 4 = 4;         1-1-2-2: 28, 28, 14, 7 = 7;
#          1-1-1-2: 28, 28, 28, 14 = 14;      2-2-2-2: 14, 7, 4, 2 = 2
FOUR_STAGES = [
    ("1-2-2-2", 32, 4), ("1-1-2-2", 32, 8), ("1-1-1-2", 32, 16), ("2-2-2-2", 32, 2),
    ("1-2-2-2", 28, 4), ("1-1-2-2", 28, 7), ("1-1-1-2", 28, 14), ("2-2-2-2", 28, 2),
]
# Three-stage nets (resnet-mini, resnet32, WRN): 32x32: 1-2-2: 32, 16, 8 = 8; 1-1-2: 16;
# 1-1-1: 32; 2-2-2: 16, 8, 4 = 4.  28x28: 1-2-2: 28, 14, 7 = 7; 1-1-2: 14; 1-1-1: 28; 2-2-2: 14, 7, 4 = 4
THREE_STAGES = [
    ("1-2-2", 32, 8), ("1-1-2", 32, 16), ("1-1-1", 32, 32), ("2-2-2", 32, 4),
    ("1-2-2", 28, 7), ("1-1-2", 28, 14), ("1-1-1", 28, 28), ("2-2-2", 28, 4),
]


@pytest.mark.parametrize("arch", ["resnet18", "preact-resnet18"])
@pytest.mark.parametrize(("pattern", "size", "expected"), FOUR_STAGES)
def test_resnet18_pre_pool_sizes(arch: str, pattern: str, size: int, expected: int) -> None:
    model = shrink_strides(_model(arch), pattern)
    assert _pre_pool(model, torch.rand(1, 3, size, size)).shape[-2:] == (expected, expected)


@pytest.mark.parametrize("arch", ["resnet-mini", "resnet32", "wrn-34-10"])
@pytest.mark.parametrize(("pattern", "size", "expected"), THREE_STAGES)
def test_three_stage_pre_pool_sizes(arch: str, pattern: str, size: int, expected: int) -> None:
    model = shrink_strides(_model(arch, cin=1), pattern)
    assert _pre_pool(model, torch.rand(1, 1, size, size)).shape[-2:] == (expected, expected)


# torchvision ResNet-18: stem 32 -> 16 -> 8 (28 -> 14 -> 7), then the four stages:
#   32x32: 1-2-2-2: 8, 4, 2, 1 = 1;  1-1-2-2: 8, 8, 4, 2 = 2;  1-1-1-2: 8, 8, 8, 4 = 4;
#          2-2-2-2: 4, 2, 1, 1 = 1
#   28x28: 1-2-2-2: 7, 4, 2, 1 = 1;  1-1-2-2: 7, 7, 4, 2 = 2;  1-1-1-2: 7, 7, 7, 4 = 4;
#          2-2-2-2: 4, 2, 1, 1 = 1
TORCHVISION = [
    ("1-2-2-2", 32, 1), ("1-1-2-2", 32, 2), ("1-1-1-2", 32, 4), ("2-2-2-2", 32, 1),
    ("1-2-2-2", 28, 1), ("1-1-2-2", 28, 2), ("1-1-1-2", 28, 4), ("2-2-2-2", 28, 1),
]


@pytest.fixture(scope="module")
def tv_resnet18() -> nn.Module:
    return robustlab.create_model("torchvision:resnet18", seed=0).eval()


@pytest.mark.parametrize(("pattern", "size", "expected"), TORCHVISION)
def test_torchvision_resnet18_pre_pool_sizes(tv_resnet18, pattern: str, size: int, expected: int) -> None:
    model = shrink_strides(tv_resnet18, pattern)
    assert _pre_pool(model, torch.rand(1, 3, size, size)).shape[-2:] == (expected, expected)


def test_torchvision_strides_sit_on_the_first_conv_and_the_downsample(tv_resnet18) -> None:
    assert stage_strides(tv_resnet18) == (1, 2, 2, 2)
    model = shrink_strides(tv_resnet18, "2-1-2-2")
    net = model.model
    assert stage_strides(model) == (2, 1, 2, 2)
    assert net.layer1[0].conv1.stride == (2, 2) and net.layer1[0].stride == 2
    assert net.layer2[0].conv1.stride == (1, 1) and net.layer2[0].downsample[0].stride == (1, 1)
    # layer1 had an identity shortcut: it gets torchvision's own 1x1 conv + BN projection
    down = net.layer1[0].downsample
    assert isinstance(down[0], nn.Conv2d) and down[0].kernel_size == (1, 1) and down[0].stride == (2, 2)
    assert isinstance(down[1], nn.BatchNorm2d) and down[1].num_features == 64
    assert net.conv1.stride == (2, 2) and net.maxpool.stride == 2  # the stem stays


def test_torchvision_bottleneck_stride_on_conv2() -> None:
    model = robustlab.create_model("torchvision:resnet50", seed=0).eval()
    shrunk = shrink_strides(model, "1-1-2-2")
    block = shrunk.model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (1, 1) and block.downsample[0].stride == (1, 1)
    assert shrink_strides(model, "2-2-2-2").model.layer1[0].conv2.stride == (2, 2)
    # 32 -> stem 8 -> 8, 8, 4, 2 (the v1.5 bottleneck's 3x3 conv2 carries the stride)
    assert _pre_pool(shrunk, torch.rand(1, 3, 32, 32)).shape[-3:] == (2048, 2, 2)


# VGG16 (Appendix B), five pools: 32x32: 2-2-2-2-2: 16, 8, 4, 2, 1 = 1; 1-1-2-2-2: 32, 32, 16, 8, 4 = 4;
#   28x28: 2-2-2-2-2: 14, 7, 4, 2, 1 = 1; 1-1-2-2-2: 28, 28, 14, 7, 4 = 4.
# AlexNet: conv1 5x5/s (pad 2) gives floor((n - 1) / s) + 1, then three pools:
#   32x32: 2-2-2-2: 16, 8, 4, 2 = 2; 1-1-2-2: 32, 32, 16, 8 = 8;
#   28x28: 2-2-2-2: 14, 7, 4, 2 = 2; 1-1-2-2: 28, 28, 14, 7 = 7.
APPENDIX_B = [
    ("vgg16", "2-2-2-2-2", 32, 1), ("vgg16", "1-1-2-2-2", 32, 4),
    ("vgg16", "2-2-2-2-2", 28, 1), ("vgg16", "1-1-2-2-2", 28, 4),
    ("alexnet", "2-2-2-2", 32, 2), ("alexnet", "1-1-2-2", 32, 8),
    ("alexnet", "2-2-2-2", 28, 2), ("alexnet", "1-1-2-2", 28, 7),
]


@pytest.mark.parametrize(("arch", "pattern", "size", "expected"), APPENDIX_B)
def test_vgg16_and_alexnet_pre_pool_sizes(arch: str, pattern: str, size: int, expected: int) -> None:
    model = shrink_strides(_model(arch), pattern)
    assert _pre_pool(model, torch.rand(1, 3, size, size)).shape[-2:] == (expected, expected)


def test_appendix_b_mapping() -> None:
    vgg = shrink_strides(_model("vgg16"), "1-1-2-2-2").model
    pools = [m for m in vgg.features if not isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.ReLU)]
    assert [p.stride for p in pools] == [1, 1, 2, 2, 2]
    # each pool closes a block of 2, 2, 3, 3, 3 convolutions
    convs_before = [sum(isinstance(m, nn.Conv2d) for m in vgg.features[: list(vgg.features).index(p)]) for p in pools]
    assert convs_before == [2, 4, 7, 10, 13]
    alex = shrink_strides(_model("alexnet"), "1-1-2-2").model
    assert alex.features[0].stride == (1, 1)  # s1: conv1
    assert [p.stride for p in alex.features if type(p).__name__ == "StagePool"] == [1, 2, 2]


def test_shrunk_equals_a_network_built_with_those_strides() -> None:
    model = _model("resnet18")
    for pattern, strides in (("1-1-2-2", (1, 1, 2, 2)), ("2-2-2-2", (2, 2, 2, 2))):
        shrunk = shrink_strides(model, pattern)
        rebuilt = robustlab.create_model("resnet18", strides=strides, **NARROW["resnet18"]).eval()
        assert set(shrunk.state_dict()) == set(rebuilt.state_dict())  # 2-2-2-2: a new projection
        rebuilt.load_state_dict(shrunk.state_dict())
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(shrunk(x), rebuilt(x))


def test_added_projection_is_drawn_from_the_generator() -> None:
    model = _model("resnet18")
    a, b, c = (shrink_strides(model, "2-2-2-2", generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    wa, wb, wc = (m.model.layer1[0].shortcut[0].weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


# --- errors and the caller's model ------------------------------------------------------------


def test_wrong_pattern_length_names_the_stage_count() -> None:
    with pytest.raises(InputError, match=r"^resnet18 has 4 stages \(strides now 1-2-2-2\), so the stride "
                                         r"pattern needs 4 values, got '1-1-2' \(3\)$"):
        shrink_strides(_model("resnet18"), "1-1-2")
    with pytest.raises(InputError, match=r"^vgg16 has 5 stages"):
        shrink_strides(_model("vgg16"), "1-1-2-2")
    with pytest.raises(InputError, match=r"^torchvision:resnet18 has 4 stages"):
        shrink_strides(robustlab.create_model("torchvision:resnet18"), (1, 1, 2, 2, 2))


@pytest.mark.parametrize("bad", ["1-x-2-2", "", (1, 0, 2, 2), (1, 1, 2, 9), (1, 1, 2, True), 12])
def test_bad_patterns(bad) -> None:
    with pytest.raises(InputError, match="stride"):
        shrink_strides(_model("resnet18"), bad)


def test_models_without_stages_are_refused() -> None:
    with pytest.raises(InputError, match="shrink_strides needs one network with strided stages"):
        shrink_strides(nn.Sequential(nn.Conv2d(3, 4, 3)), "1-1")


def test_after_convert_downsampling_is_refused() -> None:
    converted = convert_downsampling(_model("alexnet"), "avgpool")
    with pytest.raises(InputError, match="apply shrink_strides first"):
        shrink_strides(converted, "1-1-2-2")


def test_callers_model_is_untouched_unless_inplace() -> None:
    model = _model("resnet18")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    shrunk = shrink_strides(model, "2-2-2-2")
    assert shrunk is not model
    assert stage_strides(model) == (1, 2, 2, 2)
    assert model.model.layer1[0].shortcut is None
    assert model.robustlab_recipe["conversions"] == []
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), before)
    again = shrink_strides(model, "1-1-2-2", inplace=True)
    assert again is model and stage_strides(model) == (1, 1, 2, 2)
    assert model.robustlab_recipe["conversions"] == [{"name": "strides", "options": {"strides": "1-1-2-2"}}]


# --- recipe and checkpoints -------------------------------------------------------------------


def test_conversions_are_registered_with_their_public_surgery() -> None:
    assert CONVERSIONS.meta("strides")["convert"] is shrink_strides
    assert CONVERSIONS.meta("upsample-input")["convert"] is upsample_input
    assert CONVERSIONS.meta("global-pooling")["convert"] is swap_pooling


def test_replay_takes_only_the_recorded_options() -> None:
    with pytest.raises(TypeError):
        apply_conversion(_model("resnet18"), {"name": "strides", "options": {"strides": "1-1-2-2", "inplace": False}})


@pytest.mark.parametrize(("arch", "cin", "size"), [("resnet-mini", 1, 28), ("alexnet", 3, 32),
                                                   ("torchvision:resnet18", 3, 32)])
def test_save_load_round_trip(tmp_path, arch: str, cin: int, size: int) -> None:
    model = _model(arch, cin=cin)
    n = len(stage_strides(model))
    model = shrink_strides(model, "-".join(["2"] * n), generator=torch.Generator().manual_seed(0))
    model = upsample_input(model, 2, "bilinear")
    model = swap_pooling(model, "max").eval()
    path = tmp_path / "m.safetensors"
    robustlab.save(model, path)
    loaded = robustlab.load(path)
    assert [c["name"] for c in loaded.robustlab_recipe["conversions"]] == ["strides", "upsample-input", "global-pooling"]
    assert stage_strides(loaded) == (2,) * n
    x = torch.rand(3, cin, size, size)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_save_load_round_trip_outside_placement(tmp_path) -> None:
    model = upsample_input(shrink_strides(_model("resnet-mini", cin=1), "1-1-2"), 3, "nearest", placement="outside")
    assert isinstance(model, Upsampled) and isinstance(model.net, Normalized)
    robustlab.save(model.eval(), tmp_path / "m.safetensors")
    loaded = robustlab.load(tmp_path / "m.safetensors")
    assert isinstance(loaded, Upsampled)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# --- UpsampleInput ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3])
def test_upsample_nearest_repeats_pixels(scale: int) -> None:
    x = torch.rand(2, 3, 5, 7)
    out = UpsampleInput(scale, "nearest")(x)
    assert out.shape == (2, 3, 5 * scale, 7 * scale)
    assert torch.equal(out, x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1))
    assert torch.equal(out, F.interpolate(x, scale_factor=scale, mode="nearest"))


@pytest.mark.parametrize("scale", [2, 3])
def test_upsample_bilinear_matches_interpolate(scale: int) -> None:
    x = torch.rand(2, 3, 5, 7)
    out = UpsampleInput(scale, "bilinear")(x)
    assert out.shape == (2, 3, 5 * scale, 7 * scale)
    torch.testing.assert_close(out, F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False))


def test_upsample_bilinear_by_hand() -> None:
    # half-pixel centres: output i samples (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped)
    # so a row [a, b] becomes [a, 0.75a + 0.25b, 0.25a + 0.75b, b]; a constant column stays constant
    a, b = 1.0, 5.0
    x = torch.tensor([[a, b], [a, b]]).reshape(1, 1, 2, 2)
    row = torch.tensor([a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b])
    torch.testing.assert_close(UpsampleInput(2, "bilinear")(x), row.expand(4, 4).reshape(1, 1, 4, 4))


def test_upsample_gradcheck() -> None:
    x = torch.rand(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    for mode in ("nearest", "bilinear"):
        assert torch.autograd.gradcheck(UpsampleInput(2, mode), (x,))


@pytest.mark.parametrize(("args", "message"), [((0, "nearest"), "scale must be an int in"),
                                               ((2.5, "nearest"), "scale must be an int in"),
                                               ((2, "bicubic"), "mode must be 'nearest' or 'bilinear'")])
def test_upsample_bad_options(args, message: str) -> None:
    with pytest.raises(InputError, match=message):
        UpsampleInput(*args)
    with pytest.raises(InputError, match="placement must be 'inside'"):
        upsample_input(_model("resnet-mini", cin=1), placement="before")


def test_upsample_input_enlarges_the_pre_pool_map_and_placements_agree() -> None:
    model = _model("resnet-mini", cin=1)
    x = torch.rand(2, 1, 28, 28)
    # 28 at 1-2-2: 7x7; upsampled x2: 56 -> 56, 28, 14
    assert _pre_pool(model, x).shape[-1] == 7
    inside = upsample_input(model, 2, "bilinear")
    assert isinstance(inside, Normalized) and isinstance(inside.model, Upsampled)
    assert _pre_pool(inside, x).shape[-1] == 14
    outside = upsample_input(model, 2, "bilinear", placement="outside")
    with torch.no_grad():
        torch.testing.assert_close(inside(x), outside(x))  # normalization commutes with interpolation
    assert model.model.__class__.__name__ == "ResNet"  # the caller's model is untouched


# --- swap_pooling -----------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "cin", "size"), [("resnet18", 3, 32), ("preact-resnet18", 3, 32),
                                                   ("vgg16", 1, 28), ("torchvision:resnet18", 3, 32)])
def test_swap_pooling_head_sees_the_max_or_the_mean(arch: str, cin: int, size: int) -> None:
    model = shrink_strides(_model(arch, cin=cin), "1-1-2-2" + ("-2" if arch == "vgg16" else ""))
    x = torch.rand(2, cin, size, size)
    for kind, pool in (("max", lambda f: f.amax(dim=(-2, -1))), ("avg", lambda f: f.mean(dim=(-2, -1)))):
        swapped = swap_pooling(model, kind)
        features = _pre_pool(swapped, x)
        assert features.shape[-1] > 1  # a real pooling, not of a 1x1 map
        net = swapped.model
        head = net.fc if hasattr(net, "fc") else (net.classifier if hasattr(net, "classifier") else net.linear)
        with torch.no_grad():
            torch.testing.assert_close(swapped(x), head(pool(features)))
    assert swap_pooling(model, "max").robustlab_recipe["conversions"][-1] == {
        "name": "global-pooling", "options": {"kind": "max"}}
    assert isinstance(_final_pool(model), nn.AdaptiveAvgPool2d)  # the caller's model is untouched


def test_swap_pooling_errors() -> None:
    with pytest.raises(InputError, match="pooling kind must be 'avg' or 'max'"):
        swap_pooling(_model("resnet18"), "median")
    with pytest.raises(InputError, match="has no global pooling layer"):
        swap_pooling(nn.Sequential(nn.Conv2d(1, 1, 3)), "max")
