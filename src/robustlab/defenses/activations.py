"""Swap a network's ReLUs for smooth activations (gradient-norm thesis, Sec. 4.3, Table 4.4).

The thesis replaces every ReLU of a pretrained ResNet-50 with GELU or SiLU before gradient norm
regularization: the penalty differentiates the input gradient with respect to the weights, and a
ReLU network's input gradient is piecewise constant in the input (its second derivative is zero
almost everywhere), so the double-backprop signal is poor; with smooth activations the same
objective gains about 23 points of AutoAttack accuracy (Table 4.4).

:func:`swap_activations` rewrites, in timm's manner (a new root unless ``inplace=True``, every
weight kept, the conversion appended to the recipe so :func:`robustlab.load` replays it):

- every ``nn.ReLU`` (``inplace`` or not) and ``nn.LeakyReLU`` module, as in torchvision's and
  timm's models and our VGG16 / AlexNet;
- every :class:`~robustlab.models.layers.Activation`: our own blocks and networks (the CIFAR
  ResNets, PreAct-ResNet, WRN, and Madry's ResNet-32 with its leaky ReLU) call their activation
  through such a module, ``self.act``, so the swap replaces a module and never rewrites a
  forward; a previous swap installs them too, so swaps compose and ``"relu"`` undoes one.

Registered in :data:`~robustlab.defenses.CONVERSIONS` as ``"activations"`` (option ``kind``).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..core import InputError
from ..models.layers import ACTIVATION_KINDS, Activation
from . import CONVERSIONS, record_conversion

KINDS = ACTIVATION_KINDS
"""The activations :func:`swap_activations` installs."""


def _is_swappable(module: nn.Module) -> bool:
    return isinstance(module, nn.ReLU | nn.LeakyReLU | Activation)


def swap_activations(model: nn.Module, kind: str = "gelu", *, inplace: bool = False) -> nn.Module:
    """Replace every ReLU of ``model`` with ``kind`` (gradient-norm thesis, Sec. 4.3, Table 4.4).

    See the module docstring for what is replaced. Leaky ReLUs count as ReLUs (Madry's ResNet-32
    and third-party ``nn.LeakyReLU``); other activations (GELU / SiLU modules of a transformer,
    sigmoid, ...) are left alone. The new activations are :class:`Activation` modules on no
    device (they hold nothing) and never in place.

    Args:
        model: any network; a robustlab model records the conversion in its recipe.
        kind: ``"gelu"``, ``"silu"`` or ``"relu"``.
        inplace: rewrite ``model`` itself; by default a converted deep copy is returned.

    Returns:
        The converted model (the same function for ``"relu"`` on a ReLU network); the recipe
        gains ``{"name": "activations", "options": {"kind": kind}}``.

    Raises:
        InputError: for an unknown kind, or a model with no activation to swap.
    """
    if kind not in KINDS:
        raise InputError(f"unknown activation {kind!r}; swap_activations takes {', '.join(KINDS)}")
    out = model if inplace else copy.deepcopy(model)
    sites = [name for name, m in out.named_modules() if name and _is_swappable(m)]
    if not sites:
        raise InputError(
            f"{type(model).__name__} has no ReLU (nn.ReLU, nn.LeakyReLU or a robustlab "
            "block's functional ReLU) to swap"
        )
    for name in sites:
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name)
        setattr(parent, attr, Activation(kind))
    return record_conversion(out, "activations", {"kind": kind})


def _replay_activations(model: nn.Module, *, kind: str) -> nn.Module:
    """The checkpoint-replay form of :func:`swap_activations` (in place; the recipe is kept as
    the checkpoint's; only ``kind`` may come from the untrusted header)."""
    recipe = getattr(model, "robustlab_recipe", None)
    converted = swap_activations(model, kind, inplace=True)
    if recipe is not None:
        setattr(converted, "robustlab_recipe", recipe)  # noqa: B010  (plain attribute)
    return converted


CONVERSIONS.register(
    "activations",
    _replay_activations,
    paper="gradient-norm thesis, Sec. 4.3, Table 4.4",
    convert=swap_activations,
)


def activation_counts(model: nn.Module) -> dict[str, Any]:
    """How many activations of each kind ``model`` holds as modules (``nn.ReLU``, ``Activation``
    by kind, ...): a check after a swap."""
    counts: dict[str, int] = {}
    for m in model.modules():
        key = f"activation:{m.kind}" if isinstance(m, Activation) else type(m).__name__
        if isinstance(m, nn.ReLU | nn.LeakyReLU | nn.GELU | nn.SiLU | Activation):
            counts[key] = counts.get(key, 0) + 1
    return dict(counts)


__all__ = ["KINDS", "Activation", "activation_counts", "swap_activations"]
