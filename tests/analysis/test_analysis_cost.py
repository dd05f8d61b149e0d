"""FLOPs, activation memory and parameters (feature-map-strides paper, Sec. IV-B, Fig. 7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.analysis import Cost, cost
from robustlab.core.errors import InputError


def test_conv2d_flops_are_two_per_multiply_add() -> None:
    # Hout = Wout = (9 - 3) // 2 + 1 = 4; 2 * N * Cin * Cout * k * k * Hout * Wout
    conv = nn.Conv2d(3, 4, kernel_size=3, stride=2)
    result = cost(conv, (2, 3, 9, 9))
    assert result.flops == 2 * 2 * 3 * 4 * 3 * 3 * 4 * 4 == 6912
    assert result.activation_bytes == 2 * 4 * 4 * 4 * 4  # the output, float32
    assert result.params == 4 * 3 * 3 * 3 + 4


def test_grouped_conv_counts_in_channels_per_group() -> None:
    conv = nn.Conv2d(4, 8, kernel_size=3, padding=1, groups=2, bias=False)
    assert cost(conv, (1, 4, 5, 5)).flops == 2 * (4 // 2) * 8 * 3 * 3 * 5 * 5


def test_linear_flops_bytes_params() -> None:
    result = cost(nn.Linear(10, 6), (5, 10))
    assert result == Cost(flops=2 * 5 * 10 * 6, activation_bytes=5 * 6 * 4, params=10 * 6 + 6)


def _tiny(inplace: bool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(18, 4))


def test_tiny_sequential_by_hand() -> None:
    # conv -> (1, 2, 3, 3) = 18 floats, ReLU -> 18 new floats, Flatten -> a view (no new
    # storage), Linear -> 4 floats; FLOPs: conv 2*1*2*9*9 = 324, linear 2*18*4 = 144
    result = cost(_tiny(inplace=False), (1, 1, 5, 5))
    assert result.activation_bytes == (18 + 18 + 4) * 4 == 160
    assert result.flops == 324 + 144
    assert result.params == (2 * 9 + 2) + (18 * 4 + 4)


def test_inplace_relu_adds_no_memory() -> None:
    assert cost(_tiny(inplace=True), (1, 1, 5, 5)).activation_bytes == (18 + 4) * 4


def test_bytes_follow_the_model_dtype() -> None:
    assert cost(_tiny(inplace=False).double(), (1, 1, 5, 5)).activation_bytes == (18 + 18 + 4) * 8


def test_training_mode_and_batchnorm_statistics_are_left_alone() -> None:
    norm = nn.BatchNorm2d(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), norm, nn.Flatten(), nn.Linear(18, 2))
    model.train()
    model[3].eval()
    assert norm.running_mean is not None and norm.num_batches_tracked is not None
    mean, tracked = norm.running_mean.clone(), int(norm.num_batches_tracked)
    cost(model, (4, 1, 5, 5))
    assert torch.equal(norm.running_mean, mean) and int(norm.num_batches_tracked) == tracked
    assert [m.training for m in model] == [True, True, True, False] and model.training


def test_stride_shrinking_costs_more_than_the_baseline() -> None:
    """Fig. 7's comparison in miniature: stride 1 instead of 2 quadruples the later conv's FLOPs."""

    def net(stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=stride, padding=1), nn.Conv2d(8, 8, 3, padding=1))

    strided, shrunk = cost(net(2), (1, 3, 16, 16)), cost(net(1), (1, 3, 16, 16))
    assert shrunk.flops == 4 * strided.flops
    assert shrunk.activation_bytes == 4 * strided.activation_bytes
    assert shrunk.params == strided.params


@pytest.mark.parametrize("shape", [(), (1, 0, 4, 4), (1, -3)])
def test_bad_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError, match="input_shape must be a non-empty sequence of positive ints"):
        cost(nn.Identity(), shape)
