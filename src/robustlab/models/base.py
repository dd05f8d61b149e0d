"""The base class of networks built from strided stages."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..core import InputError
from .layers import Activation, check_strides


def _get_stride(site: nn.Module) -> int:
    s = site.stride
    if isinstance(s, (tuple, list)):
        return int(s[0])
    return int(s)  # type: ignore[arg-type]


def _set_stride(site: nn.Module, stride: int) -> None:
    if isinstance(site, nn.Conv2d):
        site.stride = (stride, stride)
    else:
        setattr(site, "stride", stride)  # noqa: B010  (a plain int attribute or property)


class StagedNetwork(nn.Module):
    """A classifier made of stages that each downsample once, then pooling and a head.

    Subclasses list the module that carries each stage's stride in :meth:`stage_sites` and
    implement :meth:`forward_features` (input to pre-pool feature map) and :meth:`forward_head`
    (feature map to logits). ``stage_strides`` is read from the modules themselves, so it stays
    true after in-place surgery. In the feature-map-strides paper's notation (Sec. IV-B, Fig. 4)
    a ResNet-18 has ``stage_strides == (1, 2, 2, 2)`` and the defense sets ``(1, 1, 2, 2)``.
    """

    arch: str = "network"

    def stage_sites(self) -> list[nn.Module]:
        """The module whose ``stride`` sets each stage's downsampling, in stage order."""
        raise NotImplementedError

    @property
    def stage_strides(self) -> tuple[int, ...]:
        """The downsampling factor of each stage, in order."""
        return tuple(_get_stride(m) for m in self.stage_sites())

    def set_stage_strides(self, strides: Sequence[int]) -> None:
        """Rewrite the stage strides in place, keeping every weight.

        This is the surgery of the stride-shrinking defense (feature-map-strides paper,
        Sec. IV-B): only the first strided operation of each stage changes. It fails, leaving
        the network unchanged, when a stage cannot downsample in place (an identity shortcut
        that would need a projection); rebuild with ``create_model(..., strides=...)`` then.

        Raises:
            InputError: for a wrong number of strides or an impossible configuration.
        """
        sites = self.stage_sites()
        new = check_strides(strides, len(sites), self.arch)
        old = self.stage_strides
        try:
            for site, s in zip(sites, new, strict=True):
                _set_stride(site, s)
        except InputError:
            for site, s in zip(sites, old, strict=True):
                _set_stride(site, s)
            raise

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map a normalized batch to the feature map before global pooling."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Map the pre-pool feature map to logits."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalized batch."""
        return self.forward_head(self.forward_features(x))


class ResidualStages(StagedNetwork):
    """A :class:`StagedNetwork` whose stages are ``layer1``, ``layer2``, ... of residual blocks.

    The stride of a stage sits on its first block; the head is global average pooling and
    ``self.linear``. Subclasses build the stages with :meth:`_add_stages`.
    """

    num_stages: int
    linear: nn.Linear

    def __init__(self) -> None:
        super().__init__()
        # The final global pooling, a module so that hooks see its input (the feature map whose
        # size the feature-map-strides paper studies) and ``swap_pooling`` can make it a max
        # (Sec. V-C, Table III); it holds no tensors, so state dicts are unchanged.
        self.global_pool: nn.Module = nn.AdaptiveAvgPool2d(1)

    def _add_stages(
        self,
        in_width: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        strides: Sequence[int],
        block: Callable[[int, bool, int, int, int], nn.Module],
    ) -> int:
        """Add ``layer1..layerN``; ``block(stage, first, in_width, out_width, stride)`` builds a block.

        Returns the width of the last stage.
        """
        self.num_stages = len(widths)
        c = in_width
        for i, (w, n, s) in enumerate(zip(widths, blocks, strides, strict=True)):
            layers = [block(i, True, c, w, s)] + [block(i, False, w, w, 1) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            c = w
        return c

    def stages(self) -> list[nn.Sequential]:
        """The stages in order (``layer1``, ``layer2``, ...)."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def stage_sites(self) -> list[nn.Module]:
        """The first block of each stage."""
        return [stage[0] for stage in self.stages()]

    def _add_head(self, width: int, num_classes: int) -> None:
        """Add the linear classifier on ``width`` pooled features and initialize every weight
        (the last step of a constructor)."""
        self.num_features = width
        self.linear = nn.Linear(width, num_classes)
        init_weights(self)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Global pooling (average unless swapped) and the linear classifier."""
        return self.linear(torch.flatten(self.global_pool(features), 1))


class PreActStages(ResidualStages):
    """:class:`ResidualStages` in the pre-activation form: a stem convolution ``conv1``, the
    stages, and a final BatchNorm ``bn`` and activation ``act`` before global pooling (PreAct
    ResNet, Wide-ResNet and Madry's ResNet-32). Subclasses end their constructor with
    :meth:`_add_final`.
    """

    conv1: nn.Module
    bn: nn.BatchNorm2d
    act: nn.Module

    def _add_final(self, bn: nn.BatchNorm2d, activation: str, num_classes: int) -> None:
        """Add the final ``bn``, the activation and the classifier; initialize every weight."""
        self.bn = bn
        self.act = Activation(activation)
        self._add_head(bn.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages and the final BN + activation: the feature map before pooling."""
        x = self.conv1(x)
        for stage in self.stages():
            x = stage(x)
        return self.act(self.bn(x))  # type: ignore[no-any-return]


def init_weights(module: nn.Module) -> None:
    """He (fan-out) init for convolutions, unit/zero BatchNorm, zero linear biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
