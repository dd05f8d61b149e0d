"""Small inputs: every registered model runs on 28x28 Fashion-MNIST batches or refuses an input
with an error naming the smallest size it takes (issue 15, item 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.models import MODELS, create_model
from robustlab.models.layers import InputSizeError, StagePool

# narrow stand-ins for the big nets; the pooling and stride logic is the same
CHEAP = {"wrn-34-10": {"depth": 10, "widen_factor": 1}, "resnet18": {"widths": (8, 16, 32, 64)},
         "preact-resnet18": {"widths": (8, 16, 32, 64)}}


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_takes_28x28(name: str) -> None:
    model = create_model(name, num_classes=10, in_channels=1, seed=0, **CHEAP.get(name, {})).eval()
    x = torch.rand(2, 1, 28, 28)
    try:
        with torch.no_grad():
            out = model(x)
    except InputSizeError as e:  # allowed only with the smallest size named, and above 28
        smallest = int(str(e).split("at least ")[1].split("x")[0])
        assert smallest > 28, str(e)
        return
    assert out.shape == (2, 10) and torch.isfinite(out).all()


# VGG16 at 2-2-2-2-2, ceil pooling (n -> ceil(n / 2) at each of 5 pools, a 2x2 window needs n >= 2):
#   28: 14, 7, 4, 2, 1 (floor pooling gave 14, 7, 3, 1 and crashed at the fifth pool)
#   17: 9, 5, 3, 2, 1 is the smallest: 16: 8, 4, 2, 1, and the fifth pool gets a 1x1 map
# AlexNet at 2-2-2-2: conv1 5x5/2 (pad 2) gives ceil(n / 2), then three pools:
#   9: 5, 3, 2, 1 is the smallest; 8: 4, 2, 1, and the last pool gets a 1x1 map
# VGG16 at 1-1-2-2-2: only the last three pools shrink: 5: 5, 5, 3, 2, 1; 4: 4, 4, 2, 1, fails
@pytest.mark.parametrize(("name", "strides", "smallest"), [
    ("vgg16", (2, 2, 2, 2, 2), 17), ("alexnet", (2, 2, 2, 2), 9), ("vgg16", (1, 1, 2, 2, 2), 5),
])
def test_smallest_input_is_named_and_is_the_boundary(name: str, strides, smallest: int) -> None:
    model = create_model(name, in_channels=1, strides=strides).eval()
    assert model.model.min_input_size() == smallest
    with torch.no_grad():
        assert model(torch.rand(1, 1, smallest, smallest)).shape == (1, 10)
        config = "-".join(map(str, strides))
        below = smallest - 1
        with pytest.raises(InputSizeError, match=rf"^{name} with strides {config} needs inputs of at least "
                                                 rf"{smallest}x{smallest}, got {below}x{below} "):
            model(torch.rand(1, 1, below, below))
        with pytest.raises(InputSizeError, match=f"got {smallest}x{below} "):  # either side counts
            model(torch.rand(1, 1, smallest, below))


def test_input_size_error_is_also_the_runtime_error_torch_raised() -> None:
    # callers that caught torch's "Output size is too small" RuntimeError keep catching it
    model = create_model("vgg16", in_channels=1).eval()
    with pytest.raises(RuntimeError, match="needs inputs of at least 17x17"), torch.no_grad():
        model(torch.rand(1, 1, 8, 8))


def test_vgg16_28x28_feature_map_sizes() -> None:
    net = create_model("vgg16", in_channels=1).model.eval()
    sizes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.shape[-1]))
             for m in net.features if isinstance(m, StagePool)]
    with torch.no_grad():
        net(torch.rand(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert sizes == [14, 7, 4, 2, 1]


@pytest.mark.parametrize("size", [32, 16, 8, 2])
def test_strided_pool_on_even_maps_is_the_released_floor_pooling(size: int) -> None:
    # the paper's 32x32 CIFAR maps are all even: ceil mode changes nothing there
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(StagePool(2)(x), nn.MaxPool2d(2, 2)(x))


def test_strided_pool_on_odd_maps_keeps_the_last_row() -> None:
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    # windows {0,1,3,4} {2,5} {6,7} {8}: maxima 4, 5, 7, 8
    assert StagePool(2)(x).flatten().tolist() == [4.0, 5.0, 7.0, 8.0]
    assert StagePool(2).output_size(3) == 2 and StagePool(2).output_size(1) is None
    assert StagePool(1, "valid").output_size(3) == 2 and StagePool(1, "same").output_size(1) == 1
