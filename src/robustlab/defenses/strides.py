"""Larger feature maps before the final pooling: the feature-map-strides paper's three knobs.

Xu & Yang, "Understanding Adversarial Robustness from Feature Maps of Convolutional Layers":
Proposition 1 (Sec. III-B) bounds the disturbance of the pooled feature by ``exp(-2HW...)`` for
average pooling (a larger ``H x W`` map before pooling resists perturbations better) and by a
term growing with ``HW`` for max pooling. Sec. IV gives two ways to enlarge the map, and Sec. V-C
swaps the pooling:

- :func:`shrink_strides` (Sec. IV-B, Fig. 4, Tables II-V): rewrite the stride of each stage's
  first strided operation, e.g. ResNet-18's ``"1-2-2-2"`` to ``"1-1-2-2"``;
- :func:`upsample_input` with :class:`UpsampleInput` (Sec. IV-A, Fig. 3a, Table II): upsample
  the input by 2 or 3 with nearest or bilinear interpolation;
- :func:`swap_pooling` (Sec. V-C, Table III): the final global pooling as an average or a max.

Each is a surgery in timm's manner: it returns the new root, leaves the caller's model alone
unless ``inplace=True``, keeps every weight, and appends itself to the model's recipe, so
``robustlab.save`` / ``robustlab.load`` rebuild the converted model. They register in
:data:`~robustlab.defenses.CONVERSIONS` as ``"strides"`` (option ``strides``, a pattern such as
``"1-1-2-2"``), ``"upsample-input"`` (``scale``, ``mode``, ``placement``) and ``"global-pooling"``
(``kind``).

Stage strides, per architecture (the paper's ``s1-s2-...``; stage 1's stride is the stride
between the stem and the first stage, 1 in the CIFAR ResNets):

- our ResNets (``resnet-mini``, ``resnet18``, ``preact-resnet18``, ``resnet32``, ``wrn-34-10``):
  the first block of each stage (``layer1[0]``, ...): its first 3x3 conv and its 1x1 projection
  shortcut (Madry's parameter-free shortcut follows the stride by itself);
- torchvision ResNets: the first block of ``layer1`` ... ``layer4`` (the 7x7/2 stem and its
  max-pool stay): ``conv1`` of a ``BasicBlock``; for a ``Bottleneck`` the strided one of
  ``conv1``/``conv2`` (torchvision's v1.5 strides ``conv2``, the original v1 ``conv1``; a stage
  that starts to downsample uses ``conv2``), and the 1x1 conv of ``downsample``;
- VGG16 (Appendix B, ``"1-1-2-2-2"``): ``s_i`` is the stride of the max-pool that closes conv
  block ``i`` (64x2 | 128x2 | 256x3 | 512x3 | 512x3); 2-2-2-2-2 is the original;
- AlexNet (Appendix B, ``"1-1-2-2"``): ``s1`` is the stride of conv1 (5x5), ``s2``-``s4`` those
  of the three max-pools (after conv1, conv2 and conv5); 2-2-2-2 is the original.

Appendix B's Fig. 9 (red marks on the layers to change) is not in the text we have; the VGG and
AlexNet readings are those of :mod:`robustlab.models.vgg` (checked against the authors' released
AlexNet). There a stride-1 max-pool is a 2x2 max at stride 1 that keeps the map size by default
(the model's ``stride1_pool="same"``; ``"valid"`` trims a pixel like the release). On 32x32
inputs the map before the final pooling is then: ResNet-18 1-2-2-2: 4x4, 1-1-2-2: 8x8, 1-1-1-2:
16x16, 2-2-2-2: 2x2; VGG16 2-2-2-2-2: 1x1, 1-1-2-2-2: 4x4; AlexNet 2-2-2-2: 2x2, 1-1-2-2: 8x8.

A stage that starts to downsample in a block with an identity shortcut (ResNet-18's first
stage under 2-2-2-2) gets a projection shortcut, as ``create_model(..., strides=...)`` would
build it (1x1 conv + BN; a bare 1x1 conv in the pre-activation blocks), freshly initialized
(He fan-out, from ``generator`` when given): that block then needs training. A projection
shortcut whose stride becomes 1 stays (with its weights), though a network built at that stride
would have an identity shortcut there when the widths match.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import InputError, is_int
from ..models import Normalized
from ..models.base import StagedNetwork
from ..models.layers import BasicBlock, PreActBlock, conv1x1
from . import CONVERSIONS, record_conversion
from .downsampling import Downsampled

MAX_STRIDE = 8
"""Largest stride a pattern may set (a checkpoint's recipe is untrusted input)."""

MAX_SCALE = 8
"""Largest upsampling factor (the paper uses 2 and 3)."""

UPSAMPLE_MODES = ("nearest", "bilinear")
UPSAMPLE_PLACEMENTS = ("inside", "outside")
POOL_KINDS = ("avg", "max")


def parse_strides(strides: str | Sequence[int]) -> tuple[int, ...]:
    """A stride pattern (``"1-1-2-2"`` or ``(1, 1, 2, 2)``) as a tuple of ints.

    Raises:
        InputError: for anything but a non-empty list of ints in ``[1, MAX_STRIDE]``.
    """
    values: list[Any]
    if isinstance(strides, str):
        parts = strides.strip().split("-")
        if not all(p.strip().isdigit() for p in parts):
            raise InputError(f"a stride pattern is ints joined by '-', e.g. '1-1-2-2', got {strides!r}")
        values = [int(p) for p in parts]
    elif isinstance(strides, Sequence) and not isinstance(strides, bytes):
        values = list(strides)
    else:
        raise InputError(f"strides must be a pattern such as '1-1-2-2' or a list of ints, got {strides!r}")
    if not values or not all(is_int(v, 1, MAX_STRIDE) for v in values):
        raise InputError(f"every stride must be an int in [1, {MAX_STRIDE}], got {strides!r}")
    return tuple(values)


def _pattern(strides: Sequence[int]) -> str:
    return "-".join(map(str, strides))


# --- where each architecture keeps its stage strides -----------------------------------------


def _torchvision_resnet_class() -> type | None:
    """torchvision's ResNet class if torchvision's resnet module is loaded (a model of that
    class cannot exist otherwise), so this module never imports torchvision itself."""
    module = sys.modules.get("torchvision.models.resnet")
    return getattr(module, "ResNet", None) if module is not None else None


def _staged_network(model: nn.Module) -> nn.Module:
    """The one staged network inside ``model``: a robustlab :class:`StagedNetwork` or a
    torchvision ResNet."""
    tv_resnet = _torchvision_resnet_class()
    kinds: tuple[type, ...] = (StagedNetwork,) if tv_resnet is None else (StagedNetwork, tv_resnet)
    found = [m for m in model.modules() if isinstance(m, kinds)]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise InputError(
            f"shrink_strides needs one network with strided stages (a robustlab model such as "
            f"resnet18, vgg16 or alexnet, or a torchvision ResNet); {type(model).__name__} holds {what}"
        )
    return found[0]


def _arch(model: nn.Module, net: nn.Module) -> str:
    recipe = getattr(model, "robustlab_recipe", None)
    if isinstance(recipe, dict) and isinstance(recipe.get("arch"), str):
        return str(recipe["arch"])
    return str(getattr(net, "arch", type(net).__name__))


def _tv_first_blocks(net: nn.Module) -> list[nn.Module]:
    return [getattr(net, f"layer{i}")[0] for i in range(1, 5)]


def _tv_conv(block: nn.Module, name: str) -> nn.Conv2d:
    conv = block.get_submodule(name)
    if not isinstance(conv, nn.Conv2d):
        raise InputError(f"{type(block).__name__}.{name} is a {type(conv).__name__}, not the torchvision "
                         "ResNet block's Conv2d (was the model converted already?)")
    return conv


def _tv_strided_conv(block: nn.Module) -> nn.Conv2d:
    """The conv carrying a torchvision block's stride: ``conv1`` of a BasicBlock; ``conv1`` or
    ``conv2`` of a Bottleneck (v1 or v1.5), ``conv2`` when neither is strided yet."""
    conv1 = _tv_conv(block, "conv1")
    if not hasattr(block, "conv3"):
        return conv1
    return conv1 if max(conv1.stride) > 1 else _tv_conv(block, "conv2")


def stage_strides(model: nn.Module) -> tuple[int, ...]:
    """The stride of each stage of the staged network inside ``model`` (``(1, 2, 2, 2)`` for
    ResNet-18), in the paper's ``s1-s2-...`` order (Sec. IV-B, Fig. 4).

    Raises:
        InputError: when ``model`` holds no (or several) staged networks.
    """
    net = _staged_network(model)
    if isinstance(net, StagedNetwork):
        return net.stage_strides
    return tuple(int(_tv_strided_conv(b).stride[0]) for b in _tv_first_blocks(net))


def _init_projection(shortcut: nn.Sequential, generator: torch.Generator | None) -> None:
    """He fan-out init for the conv, unit / zero for the BN (the architectures' own init)."""
    with torch.no_grad():
        for m in shortcut.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _projection(block: nn.Module, in_channels: int, out_channels: int, stride: int, with_bn: bool,
                like: torch.Tensor, generator: torch.Generator | None) -> nn.Sequential:
    """A new 1x1 projection shortcut for ``block``, on ``like``'s device and dtype and in the
    block's train / eval mode."""
    layers: list[nn.Module] = [conv1x1(in_channels, out_channels, stride)]
    if with_bn:
        layers.append(nn.BatchNorm2d(out_channels))
    shortcut = nn.Sequential(*layers)
    _init_projection(shortcut, generator)
    return shortcut.to(device=like.device, dtype=like.dtype).train(block.training)


def _refuse_converted(sites: list[nn.Module], arch: str) -> None:
    if any(isinstance(m, Downsampled) for site in sites for m in site.modules()):
        raise InputError(
            f"{arch}: a stage's strided layer was already replaced by convert_downsampling; apply "
            "shrink_strides first, then convert_downsampling"
        )


def _set_staged(net: StagedNetwork, strides: tuple[int, ...], generator: torch.Generator | None) -> None:
    sites = net.stage_sites()
    for block, s in zip(sites, strides, strict=True):
        if isinstance(block, BasicBlock | PreActBlock) and block.shortcut is None and s != 1:
            conv = block.conv1
            block.shortcut = _projection(block, conv.in_channels, conv.out_channels, s,
                                         isinstance(block, BasicBlock), conv.weight, generator)
    net.set_stage_strides(strides)


def _set_torchvision(net: nn.Module, strides: tuple[int, ...], generator: torch.Generator | None) -> None:
    blocks = _tv_first_blocks(net)
    for block in blocks:  # check everything before changing anything
        if max(_tv_strided_conv(block).dilation) > 1:
            raise InputError("this torchvision ResNet replaces strides with dilation "
                             "(replace_stride_with_dilation); shrink_strides does not rewrite dilated stages")
        downsample = getattr(block, "downsample", None)
        if downsample is not None and not (isinstance(downsample, nn.Sequential)
                                           and isinstance(downsample[0], nn.Conv2d)):
            raise InputError(f"{type(block).__name__}.downsample is not torchvision's (1x1 conv, norm); "
                             "shrink_strides cannot set its stride")
    for block, s in zip(blocks, strides, strict=True):
        conv = _tv_strided_conv(block)
        conv.stride = (s, s)
        downsample = getattr(block, "downsample", None)
        if downsample is not None:
            downsample[0].stride = (s, s)
        elif s != 1:
            out_norm = block.get_submodule("bn3" if hasattr(block, "conv3") else "bn2")
            width = int(out_norm.num_features)  # type: ignore[arg-type]
            block.downsample = _projection(block, _tv_conv(block, "conv1").in_channels, width, s, True,
                                           conv.weight, generator)
        setattr(block, "stride", s)  # noqa: B010  (torchvision keeps the stride as a plain int too)


def shrink_strides(
    model: nn.Module,
    strides: str | Sequence[int],
    *,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Set the stride of each stage of ``model``: ``shrink_strides(resnet18, "1-1-2-2")``.

    Feature-map-strides paper, Sec. IV-B ("we only need to modify the stride of the first
    convolutional layer at each stage"): shrinking ``s2`` from 2 to 1 doubles the side of every
    later feature map, and so of the map before average pooling. Any pattern of the right
    length is taken (``"2-2-2-2"`` enlarges strides too). See the module docstring for where each
    architecture keeps its strides (VGG16 and AlexNet as in Appendix B).

    Args:
        model: a robustlab staged model (``create_model`` names other than ``torchvision:`` /
            ``timm:``), possibly wrapped (``Normalized``, :class:`Upsampled`), or a torchvision
            ResNet.
        strides: one stride per stage, as ``"1-1-2-2"`` or a list of ints.
        inplace: rewrite ``model`` itself; by default a converted deep copy is returned.
        generator: draws the weights of a projection shortcut the surgery has to add (a stage
            that starts to downsample in a block with an identity shortcut); without it they
            come from the global generator, as at model construction.

    Returns:
        The model with the new strides and the same weights; a robustlab model records
        ``{"name": "strides", "options": {"strides": "1-1-2-2"}}`` in its recipe.

    Raises:
        InputError: when the pattern's length is not the model's number of stages (the message
            names it), for a bad pattern, a model without staged network, or a stage already
            converted by ``convert_downsampling``.
    """
    pattern = parse_strides(strides)
    out = model if inplace else copy.deepcopy(model)
    net = _staged_network(out)
    arch = _arch(out, net)
    current = stage_strides(net)
    if len(pattern) != len(current):
        raise InputError(
            f"{arch} has {len(current)} stages (strides now {_pattern(current)}), so the stride "
            f"pattern needs {len(current)} values, got {_pattern(pattern)!r} ({len(pattern)})"
        )
    if isinstance(net, StagedNetwork):
        _refuse_converted(net.stage_sites(), arch)
        _set_staged(net, pattern, generator)
    else:
        _refuse_converted(_tv_first_blocks(net), arch)
        _set_torchvision(net, pattern, generator)
    return record_conversion(out, "strides", {"strides": _pattern(pattern)})


# --- input upsampling ---------------------------------------------------------------------------


class UpsampleInput(nn.Module):
    """Upsample a batch by an integer factor: ``F.interpolate(x, scale_factor=scale, mode=mode)``.

    Feature-map-strides paper, Sec. IV-A and Fig. 3a: enlarging the input enlarges every feature
    map, and so the map before average pooling, by the same factor; Table II compares nearest
    and bilinear at 2x and 3x. Bilinear uses ``align_corners=False`` (PyTorch's default, the
    half-pixel convention) and no antialiasing (it only enlarges).

    Args:
        scale: the factor, an int in ``[1, MAX_SCALE]``.
        mode: ``"nearest"`` or ``"bilinear"``.
    """

    def __init__(self, scale: int = 2, mode: str = "nearest") -> None:
        super().__init__()
        if not is_int(scale, 1, MAX_SCALE):
            raise InputError(f"upsampling scale must be an int in [1, {MAX_SCALE}] (the paper uses 2 and 3), "
                             f"got {scale!r}")
        if mode not in UPSAMPLE_MODES:
            raise InputError(f"upsampling mode must be 'nearest' or 'bilinear', got {mode!r}")
        self.scale = scale
        self.mode = mode

    def extra_repr(self) -> str:
        return f"scale={self.scale}, mode={self.mode!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise InputError(f"UpsampleInput takes NCHW batches, got shape {tuple(x.shape)}")
        if self.scale == 1:
            return x
        align = False if self.mode == "bilinear" else None
        return F.interpolate(x, scale_factor=self.scale, mode=self.mode, align_corners=align)


class Upsampled(nn.Module):
    """``net(upsample(x))``: a network behind an :class:`UpsampleInput` (what
    :func:`upsample_input` installs)."""

    def __init__(self, upsample: UpsampleInput, net: nn.Module) -> None:
        super().__init__()
        self.upsample = upsample
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.upsample(x))


def upsample_input(
    model: nn.Module,
    scale: int = 2,
    mode: str = "nearest",
    *,
    placement: str = "inside",
    inplace: bool = False,
) -> nn.Module:
    """Put an :class:`UpsampleInput` in front of ``model``'s network (paper Sec. IV-A).

    Placement: with ``"inside"`` (the default) the upsampling is the network's first layer,
    inside the ``Normalized`` wrapper (``model.model`` becomes ``Upsampled(upsample, net)``):
    the root stays a ``Normalized`` that takes [0, 1] images, and the upsampling belongs to the
    architecture, as in the paper, where it is a modification of the network whose cost (Fig. 7)
    is the network's. ``"outside"`` upsamples the [0, 1] pixels before normalization (the root
    becomes ``Upsampled(upsample, model)``). The two compute the same function up to float
    rounding: normalization is a per-channel affine map, and nearest and (``align_corners=False``)
    bilinear interpolation both form convex combinations of pixels, which commute with it. The
    authors' code was not available to check which they use.

    Args:
        model: any classifier on NCHW batches; a robustlab model records the conversion.
        scale: the upsampling factor (2 or 3 in the paper).
        mode: ``"nearest"`` or ``"bilinear"``.
        placement: ``"inside"`` or ``"outside"`` the ``Normalized`` wrapper (see above); a model
            that is not a ``Normalized`` gets the wrapper at its root either way.
        inplace: rewrite ``model`` itself (the root may still change; use the returned model).

    Returns:
        The upsampled model; the recipe gains ``{"name": "upsample-input", "options": {"scale",
        "mode", "placement"}}``.

    Raises:
        InputError: for a bad scale, mode or placement.
    """
    upsample = UpsampleInput(scale, mode)
    if placement not in UPSAMPLE_PLACEMENTS:
        raise InputError(f"placement must be 'inside' (after normalization, the network's first layer; the "
                         f"default) or 'outside' (on the [0, 1] pixels), got {placement!r}")
    out = model if inplace else copy.deepcopy(model)
    options = {"scale": scale, "mode": mode, "placement": placement}
    if placement == "inside" and isinstance(out, Normalized):
        out.model = Upsampled(upsample, out.model)
        return record_conversion(out, "upsample-input", options)
    recipe = getattr(out, "robustlab_recipe", None)
    root = Upsampled(upsample, out)
    if recipe is not None:
        delattr(out, "robustlab_recipe")  # the recipe describes the root, which is now the wrapper
        setattr(root, "robustlab_recipe", recipe)  # noqa: B010  (plain attribute)
    return record_conversion(root, "upsample-input", options)


# --- final pooling ----------------------------------------------------------------------------


def _is_global_pool(m: nn.Module) -> bool:
    return isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) and m.output_size in (1, (1, 1))


def swap_pooling(model: nn.Module, kind: str = "avg", *, inplace: bool = False) -> nn.Module:
    """Make the final global pooling of ``model`` an average (``"avg"``) or a max (``"max"``).

    Feature-map-strides paper, Sec. V-C and Table III: Proposition 1 predicts that a larger map
    helps before average pooling but not before max pooling; ResNet-18 at 1-1-2-2 with max
    pooling loses the gain. The final pooling is the last 1x1-output adaptive pooling layer in
    module order (``global_pool`` of our ResNets, ``avgpool`` of VGG16 / AlexNet and of
    torchvision's ResNets); earlier ones (squeeze-excitation) are left alone.

    Args:
        model: a robustlab or torchvision model with a 1x1 adaptive pooling layer.
        kind: ``"avg"`` (the architectures' default) or ``"max"``.
        inplace: rewrite ``model`` itself; by default a converted deep copy is returned.

    Returns:
        The model with the chosen pooling; the recipe gains ``{"name": "global-pooling",
        "options": {"kind": kind}}``.

    Raises:
        InputError: for an unknown kind or a model without such a pooling layer.
    """
    if kind not in POOL_KINDS:
        raise InputError(f"pooling kind must be 'avg' or 'max', got {kind!r}")
    out = model if inplace else copy.deepcopy(model)
    pools = [(name, m) for name, m in out.named_modules() if _is_global_pool(m)]
    if not pools:
        raise InputError(
            f"{type(model).__name__} has no global pooling layer (an nn.AdaptiveAvgPool2d or "
            "nn.AdaptiveMaxPool2d with output size 1) to swap"
        )
    name = pools[-1][0]
    parent_name, _, attr = name.rpartition(".")
    parent = out.get_submodule(parent_name)
    setattr(parent, attr, nn.AdaptiveAvgPool2d(1) if kind == "avg" else nn.AdaptiveMaxPool2d(1))
    return record_conversion(out, "global-pooling", {"kind": kind})


# --- checkpoint replay ------------------------------------------------------------------------
# Each replay takes exactly the options its surgery records (a checkpoint header is untrusted
# input: it may not set ``inplace`` or ``generator``), converts in place and leaves the recipe
# as the checkpoint's.


def _replay_strides(model: nn.Module, *, strides: str | Sequence[int]) -> nn.Module:
    """The checkpoint-replay form of :func:`shrink_strides`."""
    recipe = getattr(model, "robustlab_recipe", None)
    return _restore(shrink_strides(model, strides, inplace=True), recipe)


def _replay_upsample(model: nn.Module, *, scale: int, mode: str, placement: str) -> nn.Module:
    """The checkpoint-replay form of :func:`upsample_input`."""
    recipe = getattr(model, "robustlab_recipe", None)
    return _restore(upsample_input(model, scale, mode, placement=placement, inplace=True), recipe)


def _replay_pooling(model: nn.Module, *, kind: str) -> nn.Module:
    """The checkpoint-replay form of :func:`swap_pooling`."""
    recipe = getattr(model, "robustlab_recipe", None)
    return _restore(swap_pooling(model, kind, inplace=True), recipe)


def _restore(converted: nn.Module, recipe: Any) -> nn.Module:
    if recipe is not None:
        setattr(converted, "robustlab_recipe", recipe)  # noqa: B010  (plain attribute)
    return converted


# ``convert``: the public surgery (a new model, the conversion added to its recipe) that studies call
CONVERSIONS.register("strides", _replay_strides, paper="feature-map-strides, Sec. IV-B, Appendix B",
                     convert=shrink_strides)
CONVERSIONS.register("upsample-input", _replay_upsample, paper="feature-map-strides, Sec. IV-A",
                     convert=upsample_input)
CONVERSIONS.register("global-pooling", _replay_pooling, paper="feature-map-strides, Sec. V-C, Table III",
                     convert=swap_pooling)

__all__ = [
    "MAX_SCALE",
    "MAX_STRIDE",
    "POOL_KINDS",
    "UPSAMPLE_MODES",
    "UPSAMPLE_PLACEMENTS",
    "UpsampleInput",
    "Upsampled",
    "parse_strides",
    "shrink_strides",
    "stage_strides",
    "swap_pooling",
    "upsample_input",
]
