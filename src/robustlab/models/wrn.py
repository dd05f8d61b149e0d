"""Wide residual networks (Zagoruyko & Komodakis, 2016) in the CIFAR form of TRADES / AWP.

WRN-34-10 is the standard large network of the adversarial-training literature; the
deformable-conv-stochasticity paper (Sec. 5, Tables 3 and 6) uses it as its second baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..core import InputError, check_positive_int, check_probability, is_int
from ._registry import register_model
from .base import PreActStages
from .layers import PreActBlock, check_strides, conv3x3


class WideResNet(PreActStages):
    """A CIFAR Wide-ResNet: a 16-channel 3x3 stem, three stages of pre-activation blocks of
    widths ``16k, 32k, 64k`` (``k`` = ``widen_factor``), a final BN-ReLU, global average
    pooling and a linear layer. Each stage has ``(depth - 4) / 6`` blocks.

    Args:
        depth: total depth, ``6n + 4`` (34 gives 5 blocks per stage).
        widen_factor: width multiplier ``k``.
        dropout: dropout probability between the two convolutions of each block.
        strides: stride of each of the 3 stages.
        num_classes: number of logits.
        in_channels: input channels.
    """

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        dropout: float = 0.0,
        strides: Sequence[int] = (1, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.arch = f"wrn-{depth}-{widen_factor}"
        if not is_int(depth, 10) or (depth - 4) % 6:
            raise InputError(
                f"wide-resnet depth must be 6n + 4 with n >= 1 (e.g. 34), got {depth!r}"
            )
        check_positive_int(widen_factor, "widen_factor")
        check_probability(dropout, "dropout", high_open=True)
        strides = check_strides(strides, 3, self.arch)
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = conv3x3(in_channels, 16)
        c = self._add_stages(
            16, widths, (n, n, n), strides, lambda i, first, cin, w, s: PreActBlock(cin, w, s, dropout)
        )
        self._add_final(nn.BatchNorm2d(c), "relu", num_classes)


@register_model(
    "wrn-34-10", description="Wide-ResNet-34-10 (TRADES/AWP CIFAR form)", paper="deformable-conv-stochasticity, Sec. 5"
)
def wrn_34_10(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    depth: int = 34,
    widen_factor: int = 10,
    dropout: float = 0.0,
    strides: Sequence[int] = (1, 2, 2),
) -> WideResNet:
    """WRN-34-10 (about 46M parameters); ``depth`` / ``widen_factor`` give other WRNs.

    Args:
        num_classes: number of logits.
        in_channels: input channels.
        depth: total depth, ``6n + 4``.
        widen_factor: width multiplier.
        dropout: dropout between the convolutions of each block.
        strides: stride of each of the 3 stages.
    """
    return WideResNet(depth, widen_factor, dropout, strides, num_classes, in_channels)

