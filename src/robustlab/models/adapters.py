"""Build torchvision and timm classifiers as bare robustlab networks (random init only).

``create_model("torchvision:resnet50")`` and ``create_model("timm:convnext_tiny")`` resolve
here. Nothing is downloaded or read: torchvision models are built with ``weights=None`` and timm
models with ``pretrained=False``; pretrained weights come in as local safetensors files through
``create_model(..., weights=path)``.

A checkpoint header is untrusted input, so a recipe read from one may set only
``num_classes``, ``in_channels`` and the short reviewed lists :data:`TORCHVISION_HEADER_OPTIONS`
and :data:`TIMM_HEADER_OPTIONS`: plain numbers and flags that shape the network (the result is
checked against the stored tensors) and never name a file or a download.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..core import InputError, RobustlabError, UnknownNameError, is_number

TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"
_FILE_KWARGS = (
    "weights",
    "pretrained",
    "weights_backbone",
    "pretrained_cfg",
    "pretrained_cfg_overlay",
    "checkpoint_path",
    "cache_dir",
)
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
"""What an adapter model name may look like in a checkpoint header: no ``:`` or ``/``, so never
timm's ``hf-hub:`` / ``local-dir:`` sources or a path."""


@dataclass(frozen=True)
class HeaderOption:
    """An option a checkpoint header may set: what it is, and the test its value must pass."""

    what: str
    accepts: Callable[[Any], bool]


def _is_probability(value: Any) -> bool:
    return is_number(value, 0.0, 1.0, high_open=True)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_pool_name(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[a-z]{0,16}", value) is not None


_PROBABILITY = HeaderOption("a probability in [0, 1)", _is_probability)
_FLAG = HeaderOption("true or false", _is_bool)

TORCHVISION_HEADER_OPTIONS: Mapping[str, HeaderOption] = {
    # classifier dropout (AlexNet, VGG, SqueezeNet, EfficientNet, MobileNet, MNASNet, GoogLeNet,
    # Inception v3, ViT): a probability
    "dropout": _PROBABILITY,
    # stochastic depth (ConvNeXt, EfficientNet, Swin): a probability
    "stochastic_depth_prob": _PROBABILITY,
    # auxiliary heads of GoogLeNet / Inception v3: extra layers, checked against the file
    "aux_logits": _FLAG,
    # GoogLeNet / Inception v3 random-init scheme: overwritten by the stored weights
    "init_weights": _FLAG,
}
"""Options besides ``num_classes`` / ``in_channels`` that a header may set for ``torchvision:``."""

TIMM_HEADER_OPTIONS: Mapping[str, HeaderOption] = {
    "drop_rate": _PROBABILITY,  # classifier dropout
    "drop_path_rate": _PROBABILITY,  # stochastic depth
    # pooling type ("avg", "max", "avgmax", "catavgmax", "token", ""): a short lowercase word
    "global_pool": HeaderOption("a pooling name of lowercase letters", _is_pool_name),
}
"""Options besides ``num_classes`` / ``in_channels`` that a header may set for ``timm:``."""


def _refuse_file_kwargs(kind: str, kwargs: dict[str, Any]) -> None:
    bad = [k for k in _FILE_KWARGS if k in kwargs]
    if bad:
        raise InputError(
            f"{kind} models are always built with random weights here (got {', '.join(bad)}); "
            "robustlab never downloads weights nor reads pickled checkpoints. Load a local "
            "safetensors file with create_model(..., weights='path/to/weights.safetensors')"
        )


def _close_matches(name: str, candidates: list[str], n: int = 5, cutoff: float = 0.5) -> list[str]:
    return difflib.get_close_matches(name, candidates, n=n, cutoff=cutoff)


ConvInit = Callable[[nn.Conv2d], None]
"""Initializes a freshly made convolution in place."""


def replace_first_conv(
    model: nn.Module, in_channels: int, init: ConvInit | None = None
) -> nn.Module:
    """Replace the first ``nn.Conv2d`` of ``model`` (in module order) by one taking
    ``in_channels`` inputs, keeping every other hyperparameter; a no-op when it already does.

    Args:
        model: the network, changed in place.
        in_channels: input channels of the new convolution.
        init: initializes the new convolution the way the architecture initializes its own
            (see :func:`torchvision_first_conv_init`); None keeps PyTorch's default.

    Raises:
        RobustlabError: when the model has no ``Conv2d`` to adapt.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return model
            if module.groups != 1:
                raise RobustlabError(
                    f"cannot adapt the grouped first convolution {name!r} to {in_channels} "
                    "input channel(s)"
                )
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                kernel_size=module.kernel_size,  # type: ignore[arg-type]
                stride=module.stride,  # type: ignore[arg-type]
                padding=module.padding,  # type: ignore[arg-type]
                dilation=module.dilation,  # type: ignore[arg-type]
                groups=1,
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
                device=module.weight.device,
                dtype=module.weight.dtype,
            )
            if init is not None:
                init(new)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, new)
            return model
    raise RobustlabError(
        f"{type(model).__name__} has no Conv2d whose input channels could be set to {in_channels}"
    )


def _zero_bias(conv: nn.Conv2d) -> None:
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _kaiming_fan_out_relu(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    _zero_bias(conv)


def _kaiming_fan_out(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    _zero_bias(conv)


def _regnet(conv: nn.Conv2d) -> None:
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))


def _convnext(conv: nn.Conv2d) -> None:
    nn.init.trunc_normal_(conv.weight, std=0.02)
    _zero_bias(conv)


def _maxvit(conv: nn.Conv2d) -> None:
    nn.init.normal_(conv.weight, std=0.02)
    _zero_bias(conv)


def _densenet(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight)


def _squeezenet(conv: nn.Conv2d) -> None:
    nn.init.kaiming_uniform_(conv.weight)
    _zero_bias(conv)


def _googlenet(conv: nn.Conv2d) -> None:
    nn.init.trunc_normal_(conv.weight, mean=0.0, std=0.01, a=-2, b=2)


def _inception(conv: nn.Conv2d) -> None:
    nn.init.trunc_normal_(conv.weight, mean=0.0, std=0.1, a=-2, b=2)


def _vit_patchify(conv: nn.Conv2d) -> None:
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / fan_in))
    _zero_bias(conv)


def torchvision_first_conv_init(model: nn.Module, init_weights: bool | None = None) -> ConvInit | None:
    """How torchvision's constructor of ``model`` initializes its first convolution.

    Read from the constructors of torchvision 0.29 (each ``__init__``'s init loop): ResNet, VGG
    and MNASNet use Kaiming-normal fan-out (ReLU) with zero bias; EfficientNet and MobileNet
    v2 / v3 Kaiming-normal fan-out; RegNet a normal of std sqrt(2 / fan_out); ConvNeXt a
    truncated normal of std 0.02 and zero bias; MaxViT a normal of std 0.02; DenseNet
    Kaiming-normal fan-in; SqueezeNet Kaiming-uniform fan-in and zero bias; GoogLeNet and
    Inception v3 truncated normals of std 0.01 and 0.1 (unless ``init_weights=False``); ViT's
    patchify convolution a truncated normal of std sqrt(1 / fan_in) and zero bias. AlexNet,
    ShuffleNet v2 and Swin keep PyTorch's default, and so does the new convolution (None).

    Without this, an adapted stem keeps PyTorch's default init (Kaiming-uniform with a = sqrt(5),
    std 1 / sqrt(3 fan_in)): 0.082 instead of 0.025 for a one-channel ResNet-18 stem.

    Returns:
        the initializer, or None to keep PyTorch's default. An architecture this function does
        not know also gets None, with a warning.
    """
    import torchvision.models as tvm

    table: list[tuple[tuple[type[nn.Module], ...], ConvInit | None]] = [
        ((tvm.ResNet, tvm.VGG, tvm.MNASNet), _kaiming_fan_out_relu),
        ((tvm.EfficientNet, tvm.MobileNetV2, tvm.MobileNetV3), _kaiming_fan_out),
        ((tvm.RegNet,), _regnet),
        ((tvm.ConvNeXt,), _convnext),
        ((tvm.MaxVit,), _maxvit),
        ((tvm.DenseNet,), _densenet),
        ((tvm.SqueezeNet,), _squeezenet),
        ((tvm.GoogLeNet,), None if init_weights is False else _googlenet),
        ((tvm.Inception3,), None if init_weights is False else _inception),
        ((tvm.AlexNet, tvm.ShuffleNetV2, tvm.SwinTransformer), None),
    ]
    if isinstance(model, tvm.VisionTransformer):
        # the patchify stem is initialized; a convolutional stem (conv_stem_configs) keeps
        # PyTorch's default except its last 1x1 convolution, which is not the first one
        return _vit_patchify if isinstance(model.conv_proj, nn.Conv2d) else None
    for classes, init in table:
        if isinstance(model, classes):
            return init
    warnings.warn(
        f"robustlab does not know how torchvision initializes the first convolution of "
        f"{type(model).__name__}; the adapted one keeps PyTorch's default init",
        stacklevel=3,
    )
    return None


def build_torchvision(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """A randomly initialized torchvision classifier with ``num_classes`` outputs and its first
    convolution adapted to ``in_channels``, initialized as the architecture initializes it
    (:func:`torchvision_first_conv_init`).

    Raises:
        UnknownNameError: for a name that is not a torchvision classification model, with the
            closest names.
    """
    import torchvision

    _refuse_file_kwargs("torchvision", kwargs)
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        hint = _close_matches(name, known)
        raise UnknownNameError(
            f"unknown torchvision classification model {name!r}"
            + (f"; did you mean: {', '.join(hint)}" if hint else "")
            + "; see torchvision.models.list_models(module=torchvision.models)"
        )
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    init = torchvision_first_conv_init(model, kwargs.get("init_weights"))
    return replace_first_conv(model, in_channels, init)


def build_timm(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """A randomly initialized timm model (``timm.create_model(name, pretrained=False, ...)``).

    timm builds the stem for ``in_chans`` itself, so its own init applies to it.

    Raises:
        RobustlabError: when timm is not installed (``pip install robustlab[timm]``).
        UnknownNameError: for an unknown timm name, with a few close matches.
    """
    try:
        import timm
    except ImportError:
        raise RobustlabError(
            f"'timm:{name}' needs the optional dependency timm: pip install robustlab[timm]"
        ) from None
    _refuse_file_kwargs("timm", kwargs)
    if not timm.is_model(name):
        base = name.split(".")[0]
        candidates = timm.list_models(f"*{base}*") or timm.list_models()
        prefixed = sorted((c for c in candidates if c.startswith(base)), key=lambda c: (len(c), c))
        hint = (prefixed + [c for c in _close_matches(base, candidates) if c not in prefixed])[:5]
        raise UnknownNameError(
            f"unknown timm model {name!r}"
            + (f"; close matches: {', '.join(hint)}" if hint else "")
            + "; see timm.list_models('*pattern*')"
        )
    model: nn.Module = timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
    )
    return model
