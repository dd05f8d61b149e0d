"""Build torchvision and timm classifiers as bare robustlab networks (random init only).

``create_model("torchvision:resnet50")`` and ``create_model("timm:convnext_tiny")`` resolve
here. Nothing is downloaded: torchvision models are built with ``weights=None`` and timm models
with ``pretrained=False``; pretrained weights come in as local safetensors files through
``create_model(..., weights=path)``.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from ..core import InputError, RobustlabError, UnknownNameError

TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"
_DOWNLOAD_KWARGS = ("weights", "pretrained", "weights_backbone", "pretrained_cfg_overlay")


def _refuse_download_kwargs(kind: str, kwargs: dict[str, Any]) -> None:
    bad = [k for k in _DOWNLOAD_KWARGS if k in kwargs]
    if bad:
        raise InputError(
            f"{kind} models are always built with random weights here (got {', '.join(bad)}); "
            "robustlab never downloads weights. Load a local safetensors file with "
            "create_model(..., weights='path/to/weights.safetensors')"
        )


def _close_matches(name: str, candidates: list[str], n: int = 5, cutoff: float = 0.5) -> list[str]:
    return difflib.get_close_matches(name, candidates, n=n, cutoff=cutoff)


def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first ``nn.Conv2d`` of ``model`` (in module order) by one taking
    ``in_channels`` inputs, keeping every other hyperparameter; a no-op when it already does.

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
            )
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, new)
            return model
    raise RobustlabError(
        f"{type(model).__name__} has no Conv2d whose input channels could be set to {in_channels}"
    )


def build_torchvision(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """A randomly initialized torchvision classifier with ``num_classes`` outputs and its first
    convolution adapted to ``in_channels``.

    Raises:
        UnknownNameError: for a name that is not a torchvision classification model, with the
            closest names.
    """
    import torchvision

    _refuse_download_kwargs("torchvision", kwargs)
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        hint = _close_matches(name, known)
        raise UnknownNameError(
            f"unknown torchvision classification model {name!r}"
            + (f"; did you mean: {', '.join(hint)}" if hint else "")
            + "; see torchvision.models.list_models(module=torchvision.models)"
        )
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    return replace_first_conv(model, in_channels)


def build_timm(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """A randomly initialized timm model (``timm.create_model(name, pretrained=False, ...)``).

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
    _refuse_download_kwargs("timm", kwargs)
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
