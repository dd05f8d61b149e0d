"""CIFAR-style residual networks: ResNet-18, PreAct ResNet-18, Madry's ResNet-32, a mini ResNet.

All use a 3x3 stride-1 stem without max-pooling (the CIFAR form) and end in global average
pooling, so they run on any input size. Parameter names follow the widely used CIFAR
implementations (``conv1``, ``bn1``, ``layer1`` ... ``linear``), so converted third-party
state dicts of ResNet-18 / PreAct ResNet-18 load without renaming.

The stage strides are a constructor argument and a settable property: the feature-map-strides
paper (Sec. IV-B, Fig. 4, Table IV) changes ResNet-18 and PreAct ResNet-18 from 1-2-2-2 to
1-1-2-2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core import InputError
from ._registry import register_model
from .base import PreActStages, ResidualStages
from .layers import (
    Activation,
    BasicBlock,
    MadryUnit,
    PreActBlock,
    check_positive_ints,
    check_strides,
    conv3x3,
)


def _check_stage_config(
    arch: str, widths: Sequence[int], blocks: Sequence[int], strides: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    n = len(tuple(widths))
    if n == 0:
        raise InputError(f"{arch} needs at least one stage, got widths={list(widths)}")
    return (
        check_positive_ints(widths, n, "widths", arch),
        check_positive_ints(blocks, n, "blocks (blocks per stage)", arch),
        check_strides(strides, n, arch),
    )


class ResNet(ResidualStages):
    """A CIFAR-style ResNet of post-activation :class:`~robustlab.models.layers.BasicBlock` s.

    Args:
        widths: output width of each stage.
        blocks: number of blocks in each stage.
        strides: stride of each stage's first block.
        num_classes: number of logits.
        in_channels: input channels.
        stem_width: width of the 3x3 stem convolution (default: the first stage width).
        arch: name used in error messages.
    """

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        strides: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        stem_width: int | None = None,
        arch: str = "resnet",
    ) -> None:
        super().__init__()
        self.arch = arch
        widths, blocks, strides = _check_stage_config(arch, widths, blocks, strides)
        stem = widths[0] if stem_width is None else int(stem_width)
        self.conv1 = conv3x3(in_channels, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        self.act = Activation("relu")
        c = self._add_stages(stem, widths, blocks, strides, lambda i, first, cin, w, s: BasicBlock(cin, w, s))
        self._add_head(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and stages: the feature map before global average pooling."""
        x = self.act(self.bn1(self.conv1(x)))
        for stage in self.stages():
            x = stage(x)
        return x


class PreActResNet(PreActStages):
    """A CIFAR-style pre-activation ResNet (He et al., 2016, "Identity mappings").

    As in the adversarial-training reference code (Rice et al., 2020), a final BN-ReLU precedes
    global average pooling; the stem is a single 3x3 convolution.

    Args:
        widths: output width of each stage.
        blocks: number of blocks in each stage.
        strides: stride of each stage's first block.
        num_classes: number of logits.
        in_channels: input channels.
        arch: name used in error messages.
    """

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        strides: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        arch: str = "preact-resnet",
    ) -> None:
        super().__init__()
        self.arch = arch
        widths, blocks, strides = _check_stage_config(arch, widths, blocks, strides)
        self.conv1 = conv3x3(in_channels, widths[0])
        c = self._add_stages(widths[0], widths, blocks, strides, lambda i, first, cin, w, s: PreActBlock(cin, w, s))
        self._add_final(nn.BatchNorm2d(c), "relu", num_classes)


class MadryResNet(PreActStages):
    """The CIFAR-10 ResNet of Madry et al. (2018), ``cifar10_challenge/model.py``.

    A 3x3 stem of 16 channels, three stages of :class:`~robustlab.models.layers.MadryUnit`
    (pre-activation, leaky ReLU 0.1, parameter-free shortcuts), a final BN + leaky ReLU,
    global average pooling and a linear layer. With 5 units per stage and widths 16-32-64 it is
    the "simple" ResNet-32 the sparse-randomized-encoder paper (Sec. 5, "Setup") uses as its
    classifier; widths 160-320-640 give the "wide" variant. The original standardizes each
    image inside the network; here normalization is the job of :class:`Normalized`.

    Args:
        widths: output width of each stage.
        blocks: residual units per stage.
        strides: stride of each stage's first unit.
        num_classes: number of logits.
        in_channels: input channels.
        stem_width: width of the stem convolution.
    """

    arch = "resnet32"

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64),
        blocks: Sequence[int] = (5, 5, 5),
        strides: Sequence[int] = (1, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        stem_width: int = 16,
    ) -> None:
        super().__init__()
        widths, blocks, strides = _check_stage_config(self.arch, widths, blocks, strides)
        self.conv1 = conv3x3(in_channels, stem_width)
        c = self._add_stages(
            stem_width, widths, blocks, strides,
            lambda i, first, cin, w, s: MadryUnit(cin, w, s, activate_before_residual=(i == 0 and first)),
        )
        self._add_final(nn.BatchNorm2d(c, eps=1e-3, momentum=0.1), "leaky_relu", num_classes)


@register_model(
    "resnet-mini", description="small CIFAR-style ResNet for 28x28 (Fashion-MNIST) on a CPU", input_size=(1, 28, 28)
)
def resnet_mini(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    widths: Sequence[int] = (16, 32, 64),
    blocks: Sequence[int] = (1, 1, 1),
    strides: Sequence[int] = (1, 2, 2),
) -> ResNet:
    """A small CIFAR-style ResNet sized for 28x28 Fashion-MNIST on a CPU.

    Stem conv3x3 + BN + ReLU, three stages of one BasicBlock each, global average pooling and a
    linear layer (about 78k parameters). The default widths are chosen for a two-core CPU: a
    training step on a batch of 128 1x28x28 images takes about 90 ms (about 75 ms with
    ``channels_last``), so an epoch of Fashion-MNIST (469 batches) takes 35-45 s, and three to
    four epochs of SGD with a one-cycle schedule reach 90-91% clean test accuracy. Wider
    stages, e.g. ``widths=(24, 48, 96)``, roughly double the cost. Any input size works.

    Args:
        num_classes: number of logits.
        in_channels: input channels.
        widths: width of each stage.
        blocks: BasicBlocks per stage.
        strides: stride of each stage (stride-shrinking defense, feature-map-strides Sec. IV-B).
    """
    return ResNet(widths, blocks, strides, num_classes, in_channels, arch="resnet-mini")


@register_model(
    "resnet18", description="CIFAR ResNet-18 (stride-1 stem, no max-pool)",
    paper="feature-map-strides, Sec. IV-B, Table IV",
)
def resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    strides: Sequence[int] = (1, 2, 2, 2),
    widths: Sequence[int] = (64, 128, 256, 512),
    blocks: Sequence[int] = (2, 2, 2, 2),
) -> ResNet:
    """CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, stages 64-128-256-512 of 2 blocks.

    The feature-map-strides paper (Sec. IV-B, Table IV) improves robustness by changing the
    stage strides from 1-2-2-2 to 1-1-2-2 (an 8x8 instead of a 4x4 map before average pooling
    on 32x32 inputs).

    Args:
        num_classes: number of logits.
        in_channels: input channels.
        strides: stride of each of the 4 stages.
        widths: width of each stage.
        blocks: BasicBlocks per stage.
    """
    return ResNet(widths, blocks, strides, num_classes, in_channels, arch="resnet18")


@register_model("preact-resnet18", description="CIFAR PreAct ResNet-18", paper="feature-map-strides, Table IV")
def preact_resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    strides: Sequence[int] = (1, 2, 2, 2),
    widths: Sequence[int] = (64, 128, 256, 512),
    blocks: Sequence[int] = (2, 2, 2, 2),
) -> PreActResNet:
    """CIFAR PreAct ResNet-18 (feature-map-strides paper, Table IV: 1-2-2-2 vs 1-1-2-2).

    Args:
        num_classes: number of logits.
        in_channels: input channels.
        strides: stride of each of the 4 stages.
        widths: width of each stage.
        blocks: PreAct blocks per stage.
    """
    return PreActResNet(widths, blocks, strides, num_classes, in_channels, arch="preact-resnet18")


@register_model(
    "resnet32", description="Madry et al. (2018) CIFAR ResNet-32", paper="sparse-randomized-encoder, Sec. 5"
)
def resnet32(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    strides: Sequence[int] = (1, 2, 2),
    widths: Sequence[int] = (16, 32, 64),
    blocks: Sequence[int] = (5, 5, 5),
) -> MadryResNet:
    """The "simple" ResNet-32 of Madry et al. (2018), the classifier of the sparse-randomized-
    encoder paper (Sec. 5, "Setup"). ``widths=(160, 320, 640)`` gives Madry's wide variant.

    Args:
        num_classes: number of logits.
        in_channels: input channels.
        strides: stride of each of the 3 stages.
        widths: width of each stage.
        blocks: residual units per stage (depth = 6 * units + 2).
    """
    return MadryResNet(widths, blocks, strides, num_classes, in_channels)

