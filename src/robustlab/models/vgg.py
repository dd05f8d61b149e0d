"""CIFAR VGG16 (with BatchNorm) and AlexNet with configurable downsampling strides.

Both follow Appendix B of the feature-map-strides paper ("Modified architectures of AlexNet
and VGG16", Fig. 9): "the adaptive average pooling is performed after the convolutional
part", so the classifier sees a fixed-size vector whatever the stride configuration, and
Table IV changes VGG16 from 2-2-2-2-2 to 1-1-2-2-2 and AlexNet from 2-2-2-2 to 1-1-2-2.

Fig. 9 itself is not in the text we work from, so the details are our reading, checked
against the authors' released AlexNet:

* The adaptive average pool outputs 1x1, so the head takes ``channels`` features.
* The head is ``Dropout, Linear(c, 512), ReLU, Dropout, Linear(512, 512), ReLU,
  Linear(512, num_classes)`` for both networks (the released AlexNet's head; we use the same
  for VGG16).
* AlexNet: conv 5x5 (64, stride ``s1``) - ReLU - maxpool ``s2`` - conv 5x5 (192) - ReLU -
  maxpool ``s3`` - conv 3x3 (384) - ReLU - conv 3x3 (256) - ReLU - conv 3x3 (256) - ReLU -
  maxpool ``s4``; no BatchNorm, as in the release.
* VGG16: the 13 3x3 convolutions of configuration D (64, 64 | 128, 128 | 256 x3 | 512 x3 |
  512 x3), each followed by BN and ReLU; block ``i`` ends in a max-pool of stride ``s_i``.
* A stride-1 max-pool keeps the map size by default (``stride1_pool="same"``, see
  :class:`~robustlab.models.layers.StagePool`); ``"valid"`` reproduces the release's 2x2
  stride-1 pool without padding, which trims one pixel.

Small inputs. A strided max-pool rounds up (``ceil_mode``): an ``n``-pixel side becomes
``ceil(n / s)``, as after the ResNets' padded strided convolutions. On 32x32 CIFAR every map
has an even side, so this is the released code's floor pooling exactly; on 28x28
Fashion-MNIST VGG16 runs 28-14-7-4-2-1 where floor pooling reached a 1x1 map at the fifth
pool and crashed inside ``max_pool2d``. An input so small that some pool's window no longer
fits in its map is refused on the first forward with
:class:`~robustlab.models.layers.InputSizeError`, naming the smallest size the configuration
takes (:meth:`VGG.min_input_size`): 17x17 for VGG16 at 2-2-2-2-2, 9x9 for AlexNet at 2-2-2-2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core import check_probability
from ._registry import register_model
from .base import StagedNetwork, init_weights
from .layers import InputSizeError, PoolMode, StagePool, check_strides

MAX_CHECKED_SIZE = 4096
"""Largest side :func:`min_input_size` tries before it gives up."""

VGG16_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)


def _head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    check_probability(dropout, "dropout", high_open=True)
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(in_features, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, num_classes),
    )


def _side(features: nn.Sequential, size: int) -> int | None:
    """The side length of the feature map ``features`` make of a ``size``-pixel input side, or
    None when some layer cannot take the map it receives."""
    for m in features:
        if isinstance(m, StagePool):
            out = m.output_size(size)
        elif isinstance(m, nn.Conv2d) and not isinstance(m.padding, str):
            span = size + 2 * m.padding[0] - m.dilation[0] * (m.kernel_size[0] - 1)
            out = (span - 1) // m.stride[0] + 1 if span >= 1 else None
        elif hasattr(m, "stride"):  # another strided op (a converted downsampling layer)
            stride = m.stride if isinstance(m.stride, int) else m.stride[0]  # type: ignore[index]
            out = -(-size // int(stride))
        else:
            continue
        if out is None or out < 1:
            return None
        size = out
    return size


def min_input_size(net: PooledConvNet) -> int | None:
    """The smallest square input side ``net`` (its current strides) takes, or None above
    :data:`MAX_CHECKED_SIZE`."""
    return next((n for n in range(1, MAX_CHECKED_SIZE + 1) if _side(net.features, n) is not None), None)


def _check_input_size(net: PooledConvNet, x: torch.Tensor) -> None:
    """Refuse an input some pooling window no longer fits in, naming the smallest size."""
    h, w = x.shape[-2:]
    if not (isinstance(h, int) and isinstance(w, int)):  # symbolic shapes (fx tracing)
        return
    key = (h, w, tuple(net.stage_strides), getattr(net, "stride1_pool", None))
    fits: dict[tuple[object, ...], bool] = net.__dict__.setdefault("_input_fits", {})  # a plain cache, no state
    if key not in fits:  # the walk over the layers once per input size and configuration, not per forward
        fits[key] = _side(net.features, h) is not None and _side(net.features, w) is not None
    if fits[key]:
        return
    smallest = min_input_size(net)
    config = "-".join(map(str, net.stage_strides))
    raise InputSizeError(
        f"{net.arch} with strides {config} needs inputs of at least {smallest}x{smallest}, got "
        f"{h}x{w} (a max-pool window would not fit in its feature map); resize the images or "
        "use smaller strides"
    )


class PooledConvNet(StagedNetwork):
    """A convolutional part ``features`` whose stages end in strided poolings (or convolutions),
    then adaptive average pooling to 1x1 and a fully connected head (feature-map-strides paper,
    Appendix B). Subclasses build ``features`` and end their constructor with :meth:`_add_head`.
    """

    features: nn.Sequential

    def _add_head(self, width: int, num_classes: int, dropout: float) -> None:
        """Add the pooling and the head on ``width`` features; initialize every weight."""
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = width
        self.classifier = _head(width, num_classes, dropout)
        init_weights(self)

    def min_input_size(self) -> int | None:
        """The smallest square input side the network takes at its current strides."""
        return min_input_size(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The convolutional part: the feature map before adaptive average pooling.

        Raises:
            InputSizeError: for an input smaller than :meth:`min_input_size`.
        """
        _check_input_size(self, x)
        return self.features(x)  # type: ignore[no-any-return]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Adaptive average pooling to 1x1 and the fully connected head."""
        return self.classifier(torch.flatten(self.avgpool(features), 1))  # type: ignore[no-any-return]


class VGG(PooledConvNet):
    """VGG with BatchNorm for small images; block ``i`` ends in a max-pool of stride ``s_i``.

    Args:
        blocks: output width of each convolution, grouped by block.
        strides: stride of the max-pool ending each block.
        num_classes: number of logits.
        in_channels: input channels.
        dropout: dropout probability in the fully connected head.
        stride1_pool: how a stride-1 max-pool treats the border ("same" or "valid").
        arch: name used in error messages.
    """

    def __init__(
        self,
        blocks: Sequence[Sequence[int]] = VGG16_BLOCKS,
        strides: Sequence[int] = (2, 2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.5,
        stride1_pool: PoolMode = "same",
        arch: str = "vgg16",
    ) -> None:
        super().__init__()
        self.arch = arch
        strides = check_strides(strides, len(blocks), arch)
        layers: list[nn.Module] = []
        c = in_channels
        for widths, s in zip(blocks, strides, strict=True):
            for w in widths:
                layers += [
                    nn.Conv2d(c, w, 3, padding=1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                ]
                c = w
            layers.append(StagePool(s, stride1_pool))
        self.features = nn.Sequential(*layers)
        self._add_head(c, num_classes, dropout)

    def stage_sites(self) -> list[nn.Module]:
        """The max-pool ending each block."""
        return [m for m in self.features if isinstance(m, StagePool)]


class AlexNet(PooledConvNet):
    """A CIFAR AlexNet with four downsampling points (conv1 stride and three max-pools).

    See the module docstring for the layer list (feature-map-strides paper, Appendix B).

    Args:
        strides: stride of conv1 and of the three max-pools.
        num_classes: number of logits.
        in_channels: input channels.
        dropout: dropout probability in the fully connected head.
        stride1_pool: how a stride-1 max-pool treats the border ("same" or "valid").
    """

    arch = "alexnet"

    def __init__(
        self,
        strides: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.5,
        stride1_pool: PoolMode = "same",
    ) -> None:
        super().__init__()
        s1, s2, s3, s4 = check_strides(strides, 4, self.arch)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 5, stride=s1, padding=2),
            nn.ReLU(inplace=True),
            StagePool(s2, stride1_pool),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(inplace=True),
            StagePool(s3, stride1_pool),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            StagePool(s4, stride1_pool),
        )
        self._add_head(256, num_classes, dropout)

    def stage_sites(self) -> list[nn.Module]:
        """conv1, then the three max-pools."""
        return [self.features[0]] + [m for m in self.features if isinstance(m, StagePool)]


@register_model(
    "vgg16", description="CIFAR VGG16 with BatchNorm, adaptive average pooling, FC head",
    paper="feature-map-strides, Appendix B, Table IV",
)
def vgg16(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    strides: Sequence[int] = (2, 2, 2, 2, 2),
    dropout: float = 0.5,
    stride1_pool: PoolMode = "same",
) -> VGG:
    """CIFAR VGG16 with BatchNorm (feature-map-strides paper, Appendix B and Table IV).

    Args:
        num_classes: number of logits.
        in_channels: input channels.
        strides: stride of the max-pool ending each of the 5 blocks (Table IV: 1-1-2-2-2).
        dropout: dropout in the fully connected head.
        stride1_pool: "same" keeps the map size at a stride-1 pool; "valid" trims a pixel.
    """
    return VGG(VGG16_BLOCKS, strides, num_classes, in_channels, dropout, stride1_pool)


@register_model(
    "alexnet", description="CIFAR AlexNet, adaptive average pooling, FC head",
    paper="feature-map-strides, Appendix B, Table IV",
)
def alexnet(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    strides: Sequence[int] = (2, 2, 2, 2),
    dropout: float = 0.5,
    stride1_pool: PoolMode = "same",
) -> AlexNet:
    """CIFAR AlexNet (feature-map-strides paper, Appendix B and Table IV).

    Args:
        num_classes: number of logits.
        in_channels: input channels.
        strides: stride of conv1 and the three max-pools (Table IV: 1-1-2-2).
        dropout: dropout in the fully connected head.
        stride1_pool: "same" keeps the map size at a stride-1 pool; "valid" trims a pixel.
    """
    return AlexNet(strides, num_classes, in_channels, dropout, stride1_pool)

