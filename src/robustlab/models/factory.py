"""``create_model``: one factory for our architectures and torchvision / timm models.

Every model comes back wrapped in :class:`~robustlab.models.Normalized` (it takes [0, 1]
images) and carries its recipe, a JSON-ready dict from which ``model_from_recipe`` rebuilds
the same architecture (house plan, "Training": checkpoints hold weights plus the recipe, so
``robustlab.load`` rebuilds a model without unpickling anything).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import inspect
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..core import CheckpointError, InputError, RobustlabError, UnknownNameError
from ..core.checkpoint import load_weights
from ..core.checks import check_int, check_positive_int, is_int, is_number
from ._registry import MODELS, ModelBuilder
from .adapters import (
    ADAPTER_NAME,
    TIMM_HEADER_OPTIONS,
    TIMM_PREFIX,
    TORCHVISION_HEADER_OPTIONS,
    TORCHVISION_PREFIX,
    HeaderOption,
    build_timm,
    build_torchvision,
)
from .normalized import Normalized


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` filters with shell wildcards (``"resnet*"``).

    torchvision and timm models are not listed; reach them as ``"torchvision:<name>"`` and
    ``"timm:<name>"``.
    """
    names = MODELS.names()
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (shared parameters counted once).

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed the CPU generator inside ``fork_rng`` so the caller's RNG state survives."""
    if seed is None:
        yield
        return
    check_int(seed, "seed")
    with torch.random.fork_rng(devices=[]):
        # Only the CPU generator: the networks are built on the CPU, and torch.manual_seed
        # would also reseed (and so change) every CUDA generator of the caller.
        torch.default_generator.manual_seed(seed)
        yield


def _jsonable(value: Any, where: str) -> Any:
    """Tuples become lists; anything JSON cannot hold raises."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise InputError(f"{where} must have string keys to go into a recipe, got {value!r}")
        return {k: _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise InputError(
        f"{where}={value!r} ({type(value).__name__}) cannot go into the model's JSON recipe; "
        "pass plain numbers, strings, lists or dicts"
    )


def _resolve(name: str) -> tuple[str, ModelBuilder | None]:
    """Return the canonical name and the registered builder (None for adapter names)."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"model name must be a non-empty string, got {name!r}")
    name = name.strip()
    lower = name.lower()
    for prefix in (TORCHVISION_PREFIX, TIMM_PREFIX):
        if lower.startswith(prefix):
            inner = name[len(prefix) :].strip()
            if not inner:
                raise InputError(f"{name!r} names no model; write e.g. '{prefix}resnet50'")
            return prefix + inner, None
    try:
        builder = MODELS.get(name)
    except UnknownNameError as e:
        raise UnknownNameError(
            f"{e}; torchvision and timm models are reached as 'torchvision:<name>' "
            "(e.g. 'torchvision:resnet50') and 'timm:<name>' (e.g. 'timm:convnext_tiny')"
        ) from None
    return name.lower().replace("_", "-"), builder


def _builder_kwargs(arch: str, builder: ModelBuilder, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Check ``kwargs`` against the builder and return every keyword option with defaults
    filled in, so the recipe does not depend on this version's defaults."""
    params = inspect.signature(builder).parameters
    options = {
        k: p
        for k, p in params.items()
        if k not in ("num_classes", "in_channels")
        and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(kwargs) - set(options))
    if unknown and not takes_any:
        raise InputError(
            f"model {arch!r} does not take {', '.join(unknown)}; its options are: "
            f"{', '.join(options) or '(none)'}"
        )
    resolved = {k: p.default for k, p in options.items() if p.default is not p.empty}
    resolved.update(kwargs)
    return resolved


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    weights: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> Normalized:
    """Build a model by name and wrap it in :class:`Normalized`.

    ``name`` is a registered architecture (:func:`list_models`), ``"torchvision:<name>"``
    (random init via ``torchvision.models.get_model``, first convolution adapted to
    ``in_channels``) or ``"timm:<name>"`` (``timm.create_model(..., pretrained=False)``; needs
    ``pip install robustlab[timm]``). Nothing is ever downloaded.

    The result carries ``robustlab_recipe = {"arch", "kwargs", "conversions"}``, a JSON-ready
    dict; ``create_model(recipe["arch"], **recipe["kwargs"])`` rebuilds the architecture.
    For registered architectures ``kwargs`` holds every option with its default filled in.

    Args:
        name: architecture name or ``torchvision:`` / ``timm:`` name.
        num_classes: number of logits.
        in_channels: input channels.
        mean: per-channel mean (default 0.5 per channel); pass the dataset's.
        std: per-channel std (default 0.5 per channel); pass the dataset's.
        weights: a local ``.safetensors`` file with the inner network's ``state_dict``.
            Pickle files (``.pt``, ``.pth``, ...) are refused.
        seed: build the initial weights deterministically. The network is built on the CPU
            inside ``torch.random.fork_rng(devices=[])`` with only the CPU generator seeded,
            so the caller's global RNG state (CPU and CUDA) is the same after the call as
            before it. Without a seed, initialization draws from the global RNG as usual in
            PyTorch.
        **kwargs: architecture options (e.g. ``strides=(1, 1, 2, 2)`` for ``resnet18``); for
            adapters, passed to torchvision / timm.

    Raises:
        UnknownNameError: for an unknown name; the message lists the registered names and the
            ``torchvision:`` / ``timm:`` prefixes.
        InputError: for bad sizes, options, mean or std.
        CheckpointError: for pickle or mismatching weight files.
        RobustlabError: for a ``timm:`` name when timm is not installed.
    """
    arch, builder = _resolve(name)
    check_positive_int(num_classes, "num_classes")
    check_positive_int(in_channels, "in_channels")
    mean_l = [0.5] * in_channels if mean is None else [float(v) for v in mean]
    std_l = [0.5] * in_channels if std is None else [float(v) for v in std]
    for what, values in (("mean", mean_l), ("std", std_l)):
        if len(values) != in_channels:
            raise InputError(
                f"{what} needs one value per input channel ({in_channels}), got {values}"
            )
    options = dict(kwargs) if builder is None else _builder_kwargs(arch, builder, kwargs)
    options = _jsonable(options, "model option")

    with _seeded(seed):
        if builder is not None:
            net = builder(num_classes, in_channels, **kwargs)
        elif arch.startswith(TORCHVISION_PREFIX):
            net = build_torchvision(
                arch[len(TORCHVISION_PREFIX) :], num_classes, in_channels, **kwargs
            )
        else:
            net = build_timm(arch[len(TIMM_PREFIX) :], num_classes, in_channels, **kwargs)
    if weights is not None:
        load_weights(net, weights)

    model = Normalized(net, mean_l, std_l)
    model.robustlab_recipe = {
        "arch": arch,
        "kwargs": {
            "num_classes": num_classes,
            "in_channels": in_channels,
            "mean": mean_l,
            "std": std_l,
            **options,
        },
        "conversions": [],
    }
    return model


def _is_count(value: Any) -> bool:
    return is_int(value, 1)


def _is_number_list(value: Any) -> bool:
    return isinstance(value, list) and all(is_number(v) for v in value)


_COMMON_HEADER_OPTIONS: dict[str, HeaderOption] = {
    "num_classes": HeaderOption("a positive int", _is_count),
    "in_channels": HeaderOption("a positive int", _is_count),
    "mean": HeaderOption("a list of finite numbers", _is_number_list),
    "std": HeaderOption("a list of finite numbers", _is_number_list),
}
_ANY_JSON = HeaderOption("checked by the architecture's constructor", lambda value: True)


def header_options(arch: str) -> dict[str, HeaderOption]:
    """The options a checkpoint header may set for ``arch``: ``num_classes``, ``in_channels``,
    ``mean`` and ``std``, plus the keyword options of a registered architecture's own builder,
    or the reviewed lists of :mod:`robustlab.models.adapters` for ``torchvision:`` / ``timm:``.

    ``create_model``'s ``weights`` and ``seed`` are never among them: a header must not name a
    file to read.

    Raises:
        UnknownNameError: for an unknown architecture.
    """
    name, builder = _resolve(arch)
    allowed = dict(_COMMON_HEADER_OPTIONS)
    if builder is None:
        reviewed = TORCHVISION_HEADER_OPTIONS if name.startswith(TORCHVISION_PREFIX) else TIMM_HEADER_OPTIONS
        allowed.update(reviewed)
        return allowed
    for key, param in inspect.signature(builder).parameters.items():
        if key not in allowed and param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
            allowed[key] = _ANY_JSON
    return allowed


def check_header_recipe(recipe: Any) -> None:
    """Refuse a recipe (read from an untrusted checkpoint header) that sets anything beyond
    what :func:`header_options` allows, so that loading never hands a header value to a
    function that reads files (timm's ``checkpoint_path``, ``create_model``'s ``weights``, ...).

    Raises:
        CheckpointError: naming the offending key (or name) and what is allowed.
    """
    if not isinstance(recipe, Mapping) or not isinstance(recipe.get("arch"), str):
        raise CheckpointError(f"checkpoint recipe must be a dict with an 'arch' name, got {recipe!r}")
    arch = recipe["arch"]
    unknown_fields = sorted(set(recipe) - {"arch", "kwargs", "conversions"})
    if unknown_fields:
        raise CheckpointError(
            f"checkpoint recipe has unexpected field(s) {', '.join(map(repr, unknown_fields))}; "
            "a recipe holds only 'arch', 'kwargs' and 'conversions'"
        )
    lower = arch.strip().lower()
    for prefix in (TORCHVISION_PREFIX, TIMM_PREFIX):
        if lower.startswith(prefix) and not ADAPTER_NAME.fullmatch(arch.strip()[len(prefix) :]):
            raise CheckpointError(
                f"checkpoint recipe names the model {arch!r}; after {prefix!r} a checkpoint may "
                "name only a plain model name (letters, digits, '_', '-', '.'), never a path or "
                "a source such as 'hf-hub:' or 'local-dir:'"
            )
    try:
        allowed = header_options(arch)
    except RobustlabError as e:
        raise CheckpointError(f"checkpoint recipe names an unknown architecture: {e}") from None
    kwargs = recipe.get("kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(f"checkpoint recipe 'kwargs' must be a dict, got {kwargs!r}")
    for key, value in kwargs.items():
        option = allowed.get(key)
        if option is None:
            raise CheckpointError(
                f"checkpoint recipe for {arch!r} sets {key!r}, which robustlab does not accept "
                f"from a checkpoint header (a header is untrusted input and must not make the "
                f"loader read files or take options nobody reviewed); allowed: "
                f"{', '.join(allowed)}"
            )
        if not option.accepts(value):
            raise CheckpointError(
                f"checkpoint recipe for {arch!r} sets {key}={value!r}; it must be {option.what}"
            )
    conversions = recipe.get("conversions", [])
    if not isinstance(conversions, list) or not all(
        isinstance(c, Mapping) and isinstance(c.get("name"), str) and isinstance(c.get("options", {}), Mapping)
        for c in conversions
    ):
        raise CheckpointError(
            "checkpoint recipe 'conversions' must be a list of {'name': ..., 'options': {...}}, "
            f"got {conversions!r}"
        )


def model_from_recipe(recipe: Mapping[str, Any]) -> Normalized:
    """Rebuild the architecture a model's ``robustlab_recipe`` describes (random weights).

    The recipe may set only what a checkpoint header may set (:func:`check_header_recipe`).

    Raises:
        RobustlabError: for a malformed recipe, or one listing conversions (defenses): those
            are applied by ``robustlab.load``, which also restores the weights.
        CheckpointError: for an option a header may not set.
    """
    if not isinstance(recipe, Mapping) or not isinstance(recipe.get("arch"), str):
        raise RobustlabError(f"a model recipe is a dict with an 'arch' name, got {recipe!r}")
    kwargs = recipe.get("kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise RobustlabError(f"recipe 'kwargs' must be a dict, got {kwargs!r}")
    conversions = recipe.get("conversions") or []
    if conversions:
        names = [c.get("name", c) if isinstance(c, Mapping) else c for c in conversions]
        raise RobustlabError(
            f"this recipe lists conversions {names}; models.model_from_recipe builds only the "
            "base architecture, and conversions are applied by robustlab.load"
        )
    check_header_recipe(recipe)
    return create_model(recipe["arch"], **copy.deepcopy(dict(kwargs)))
