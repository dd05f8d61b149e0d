"""Defenses: one module per technique, each a layer plus the ``convert_*`` surgery that installs it.

Every conversion registers in ``CONVERSIONS`` so a checkpoint's recipe (its ordered list of
conversions) can be replayed by :func:`robustlab.load`: ``downsampling``
(:mod:`~robustlab.defenses.downsampling`), and ``strides``, ``upsample-input`` and
``global-pooling`` (:mod:`~robustlab.defenses.strides`, the feature-map-strides paper), and
``dcs`` (:mod:`~robustlab.defenses.dcs`, deformable convolution with stochasticity).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..core import CheckpointError, Registry

CONVERSIONS: Registry[Callable[..., nn.Module]] = Registry("conversion")


def apply_conversion(model: nn.Module, conversion: dict[str, Any]) -> nn.Module:
    """Replay one recorded conversion ``{"name": ..., "options": {...}}`` on ``model``."""
    name = conversion.get("name") if isinstance(conversion, dict) else None
    if not isinstance(name, str):
        raise CheckpointError(f"malformed conversion entry in recipe: {conversion!r}")
    if name not in CONVERSIONS:
        raise CheckpointError(
            f"checkpoint needs conversion {name!r}, which this robustlab does not provide "
            f"(known: {', '.join(CONVERSIONS.names()) or 'none'}); upgrade robustlab"
        )
    return CONVERSIONS.get(name)(model, **conversion.get("options", {}))


def record_conversion(model: nn.Module, name: str, options: Mapping[str, Any]) -> nn.Module:
    """Append ``{"name": name, "options": options}`` to ``model``'s recipe (a new list, so a
    model the recipe dict was copied from is not changed) and return ``model``; a model
    without a recipe is returned as it is."""
    recipe = getattr(model, "robustlab_recipe", None)
    if isinstance(recipe, dict):
        recipe = copy.deepcopy(recipe)
        entry = {"name": name, "options": copy.deepcopy(dict(options))}
        recipe["conversions"] = [*recipe.get("conversions", []), entry]
        setattr(model, "robustlab_recipe", recipe)  # noqa: B010  (plain attribute, not a submodule)
    return model


from .activations import KINDS as ACTIVATION_KINDS  # noqa: E402  (registers activations)
from .activations import Activation, swap_activations  # noqa: E402
from .dcs import (  # noqa: E402  (registers the "dcs" conversion)
    RandomKernelConv2d,
    convert_dcs,
    dcs_layers,
    excluding_paths,
)
from .dictionary import (  # noqa: E402
    CIFAR10_DICTIONARY,
    DICTIONARY_PRESETS,
    FASHION_MNIST_DICTIONARY,
    IMAGENETTE_DICTIONARY,
    DictionarySettings,
    extract_patches,
    learn_dictionary,
    load_dictionary,
    save_dictionary,
)
from .downsampling import (  # noqa: E402  (registers into CONVERSIONS defined above)
    DOWNSAMPLERS,
    METHODS,
    AddNoise,
    BlurPool,
    Downsampled,
    FLCPool,
    convert_downsampling,
    deterministic_twin,
)
from .sparse_encoder import SparseEncoder, TernaryQuantizer  # noqa: E402
from .sparse_model import (  # noqa: E402
    Ensemble,
    SparseAutoencoder,
    SparseDecoder,
    SparseFrontEnd,
    convert_ensemble,
    convert_sparse_front_end,
)
from .stochastic_downsampling import SharedJitter, StochasticDownsample  # noqa: E402
from .strides import (  # noqa: E402  (registers strides, upsample-input, global-pooling)
    Upsampled,
    UpsampleInput,
    parse_strides,
    shrink_strides,
    stage_strides,
    swap_pooling,
    upsample_input,
)

__all__ = [
    "ACTIVATION_KINDS",
    "Activation",
    "swap_activations",
    "CIFAR10_DICTIONARY",
    "CONVERSIONS",
    "DICTIONARY_PRESETS",
    "FASHION_MNIST_DICTIONARY",
    "IMAGENETTE_DICTIONARY",
    "DictionarySettings",
    "Ensemble",
    "RandomKernelConv2d",
    "convert_dcs",
    "dcs_layers",
    "excluding_paths",
    "SparseDecoder",
    "SparseAutoencoder",
    "SparseFrontEnd",
    "convert_ensemble",
    "convert_sparse_front_end",
    "SparseEncoder",
    "TernaryQuantizer",
    "extract_patches",
    "learn_dictionary",
    "load_dictionary",
    "save_dictionary",
    "DOWNSAMPLERS",
    "METHODS",
    "AddNoise",
    "BlurPool",
    "Downsampled",
    "FLCPool",
    "SharedJitter",
    "StochasticDownsample",
    "UpsampleInput",
    "Upsampled",
    "apply_conversion",
    "convert_downsampling",
    "deterministic_twin",
    "parse_strides",
    "record_conversion",
    "shrink_strides",
    "stage_strides",
    "swap_pooling",
    "upsample_input",
]
