"""Building blocks shared by the architectures in :mod:`robustlab.models`.

Every block that opens a stage exposes a settable integer ``stride`` property. That is the hook
the stride-shrinking defense (feature-map-strides paper, Sec. IV-B "shrinking sliding strides",
Fig. 4) uses: "we only need to modify the stride of the first convolutional layer at each stage".
Setting ``block.stride`` rewrites every strided operation of the block (main path and shortcut)
in place and keeps the weights, so an already trained network can be converted and finetuned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core import InputError, is_int

PoolMode = Literal["same", "valid"]


ACTIVATION_KINDS = ("gelu", "silu", "relu")
"""The activations :func:`~robustlab.defenses.swap_activations` installs."""


class Activation(nn.Module):
    """An elementwise activation chosen by name: ``"relu"``, ``"gelu"`` (exact, erf form, as
    ``nn.GELU()``), ``"silu"`` (``x sigmoid(x)``), or ``"leaky_relu"`` (slope 0.1, Madry's
    ResNet-32). Never in place, so double backpropagation through it is safe.

    Our blocks and networks call their activation through such a module (``self.act``, no
    parameters, so it is absent from the state dict): that is the hook of the smooth-activation
    surgery (gradient-norm thesis, Sec. 4.3), which replaces the module and keeps the forward.
    """

    def __init__(self, kind: str = "relu") -> None:
        super().__init__()
        if kind not in (*ACTIVATION_KINDS, "leaky_relu"):
            raise InputError(f"unknown activation {kind!r}; use one of {', '.join(ACTIVATION_KINDS)}")
        self.kind = kind

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gelu":
            return F.gelu(x)
        if self.kind == "silu":
            return F.silu(x)
        if self.kind == "leaky_relu":
            return F.leaky_relu(x, 0.1)
        return F.relu(x)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 3x3 convolution with padding 1 (output size ``ceil(size / stride)``)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 1x1 convolution, used by projection shortcuts."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def check_strides(strides: Sequence[int], n_stages: int, arch: str) -> tuple[int, ...]:
    """Validate a stage-stride configuration and return it as a tuple of ints.

    Raises:
        InputError: when the number of stages or a value is wrong.
    """
    if isinstance(strides, (str, bytes)) or not isinstance(strides, Sequence):
        raise InputError(
            f"{arch} strides must be a sequence of {n_stages} positive ints, got {strides!r}"
        )
    out = tuple(strides)
    if len(out) != n_stages or not all(is_int(s, 1) for s in out):
        raise InputError(
            f"{arch} has {n_stages} stages, so strides must be {n_stages} positive ints, "
            f"got {list(out)}"
        )
    return out


def check_positive_ints(values: Sequence[int], n: int, what: str, arch: str) -> tuple[int, ...]:
    """Validate ``n`` positive ints (stage widths, blocks per stage)."""
    out = tuple(values)
    if len(out) != n or not all(is_int(v, 1) for v in out):
        raise InputError(f"{arch} {what} must be {n} positive ints, got {list(out)}")
    return out


def _set_conv_stride(conv: nn.Conv2d, stride: int) -> None:
    conv.stride = (stride, stride)


class _StridedBlock(nn.Module):
    """A residual block whose stride sits on ``conv1`` and on its projection ``shortcut``
    (none when the block keeps width and size)."""

    conv1: nn.Conv2d
    shortcut: nn.Sequential | None

    @property
    def stride(self) -> int:
        """The block's downsampling factor; settable in place (stride-shrinking defense)."""
        return int(self.conv1.stride[0])

    @stride.setter
    def stride(self, value: int) -> None:
        if self.shortcut is None and value != 1:
            raise InputError(
                f"cannot set stride {value} in place on a block without a projection shortcut "
                "(its identity shortcut cannot downsample); rebuild the network with "
                "create_model(..., strides=...) instead"
            )
        _set_conv_stride(self.conv1, value)
        if self.shortcut is not None:
            _set_conv_stride(self.shortcut[0], value)  # type: ignore[arg-type]


class BasicBlock(_StridedBlock):
    """The two-conv residual block of He et al. (2016) in its CIFAR form (post-activation).

    A 1x1 projection shortcut (conv + BN) is used when the width or the stride changes.

    Args:
        in_channels: input width.
        out_channels: output width.
        stride: stride of the first convolution (the stage's downsampling).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = Activation("relu")
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual forward pass."""
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.act(out + identity)  # type: ignore[no-any-return]


class PreActBlock(_StridedBlock):
    """The pre-activation residual block of He et al. (2016, "Identity mappings").

    BN-ReLU precedes each convolution. When the block has a 1x1 projection shortcut, the
    shortcut takes the pre-activated input (as in the reference PreActResNet and in the
    Wide-ResNet of Zagoruyko & Komodakis used by TRADES). With ``dropout > 0`` this is the
    Wide-ResNet block: dropout sits between the two convolutions.

    Args:
        in_channels: input width.
        out_channels: output width.
        stride: stride of the first convolution.
        dropout: dropout probability between the convolutions (Wide-ResNet).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.dropout = float(dropout)
        self.act = Activation("relu")
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(conv1x1(in_channels, out_channels, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual forward pass."""
        out = self.act(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.act(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + identity


class MadryUnit(nn.Module):
    """A residual unit of the CIFAR-10 ResNet of Madry et al. (2018, cifar10_challenge).

    Pre-activation with leaky ReLU (slope 0.1) and a parameter-free shortcut: average pooling
    by the stride and zero-padding of the new channels ("option A"). In the first stage the
    activation is applied before the split (``activate_before_residual``), as in the original.
    BatchNorm uses the TensorFlow defaults of that code (eps 1e-3, decay 0.9 = momentum 0.1).

    Args:
        in_channels: input width.
        out_channels: output width.
        stride: stride of the first convolution and of the shortcut's average pooling.
        activate_before_residual: apply BN + leaky ReLU before the shortcut split.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        activate_before_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activate_before_residual = activate_before_residual
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-3, momentum=0.1)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.1)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.act = Activation("leaky_relu")

    @property
    def stride(self) -> int:
        """The unit's downsampling factor; settable in place (the shortcut has no weights)."""
        return int(self.conv1.stride[0])

    @stride.setter
    def stride(self, value: int) -> None:
        _set_conv_stride(self.conv1, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual forward pass."""
        if self.activate_before_residual:
            x = self.act(self.bn1(x))
            out = x
        else:
            out = self.act(self.bn1(x))
        identity = x
        out = self.conv1(out)
        out = self.conv2(self.act(self.bn2(out)))
        s = self.stride
        if s != 1:
            # ceil_mode matches the size ceil(n / s) of the padded strided convolution.
            identity = F.avg_pool2d(identity, s, s, ceil_mode=True)
        if self.out_channels != self.in_channels:
            extra = self.out_channels - self.in_channels
            identity = F.pad(identity, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return out + identity


class InputSizeError(InputError, RuntimeError):
    """An input too small for a network's downsampling; the message names the smallest size.

    Also a ``RuntimeError``, the type torch raises for its own "Output size is too small", so
    code that caught that error (the CLI's one-batch check before training) keeps catching it.
    """


class StagePool(nn.Module):
    """The max-pooling that ends a stage of VGG16 / AlexNet, with a settable stride.

    With stride ``s >= 2`` this is ``MaxPool2d(kernel_size=max(2, s), stride=s, ceil_mode=True)``:
    an ``n``-pixel side becomes ``ceil(n / s)``, like the padded strided convolutions of the
    ResNets. On the even sizes of 32x32 CIFAR (the paper's setting) that is exactly the floor
    pooling of the released code; on 28x28 Fashion-MNIST it keeps VGG16's fifth pool from
    receiving a 1x1 map (28-14-7-4-2-1 instead of 28-14-7-3-1-0, which crashes). A map smaller
    than the window is refused by the network (:class:`InputSizeError`), see
    :meth:`output_size`. With stride 1
    (the stride-shrinking defense's 1-1-2-2(-2) configurations, feature-map-strides paper,
    Table IV and Appendix B) there are two readings:

    * ``mode="same"`` (default): 2x2 max over each pixel and its right/bottom neighbours, with
      the last row/column replicated, so the feature map keeps its size and a stride-1 stage
      enlarges every later map by exactly the factor the stride shrank.
    * ``mode="valid"``: ``MaxPool2d(kernel_size=2, stride=1)`` without padding, which loses one
      pixel per side length (what the authors' released code does).

    Args:
        stride: downsampling factor of this stage.
        mode: how a stride-1 pool treats the border.
    """

    def __init__(self, stride: int = 2, mode: PoolMode = "same") -> None:
        super().__init__()
        if mode not in ("same", "valid"):
            raise InputError(f"pool mode must be 'same' or 'valid', got {mode!r}")
        self.stride = int(stride)
        self.mode: PoolMode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Max-pool by the stage stride."""
        s = self.stride
        if s == 1:
            if self.mode == "same":
                x = F.pad(x, (0, 1, 0, 1), mode="replicate")
            return F.max_pool2d(x, kernel_size=2, stride=1)
        return F.max_pool2d(x, kernel_size=max(2, s), stride=s, ceil_mode=True)

    def output_size(self, size: int) -> int | None:
        """The side length this pool makes of a ``size``-pixel side, or None when the pooling
        window does not fit in the map (a 2x2 max over a 1x1 map pools nothing)."""
        s = self.stride
        if s == 1:
            return size if self.mode == "same" else (size - 1 if size >= 2 else None)
        return -(-size // s) if size >= s else None

    def extra_repr(self) -> str:
        return f"stride={self.stride}, mode={self.mode!r}"
