"""Save and load whole models: weights plus the recipe that rebuilds them, never a pickle.

A model made by :func:`robustlab.models.create_model` carries ``robustlab_recipe`` (architecture
name, its arguments, and the ordered list of conversions applied by ``robustlab.defenses``).
:func:`save` writes the weights and that recipe; :func:`load` rebuilds the same architecture,
re-applies the conversions in order and loads the weights.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .core import CheckpointError, RobustlabError
from .core.checkpoint import read_checkpoint, read_header, write_checkpoint

__all__ = ["get_recipe", "load", "load_weights", "read_header", "save"]


def get_recipe(model: nn.Module) -> dict[str, Any]:
    """The recipe a robustlab model carries (a JSON-ready dict)."""
    recipe = getattr(model, "robustlab_recipe", None)
    if not isinstance(recipe, dict):
        raise RobustlabError(
            "this model carries no robustlab recipe, so a checkpoint could not rebuild it; "
            "build it with robustlab.create_model(...), or save bare weights with "
            "safetensors.torch.save_file(model.state_dict(), path)"
        )
    return copy.deepcopy(recipe)


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    train_config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``path`` (``.safetensors``) with its recipe and run metadata, atomically."""
    header: dict[str, Any] = {
        "kind": "model",
        "recipe": get_recipe(model),
        "dataset": dataset,
        "train_config": train_config or {},
        "metrics": metrics or {},
    }
    if extra:
        header["extra"] = extra
    return write_checkpoint(path, dict(model.state_dict()), header)


def build_from_recipe(recipe: dict[str, Any]) -> nn.Module:
    """Rebuild an untrained model from its recipe, conversions included."""
    from .defenses import apply_conversion
    from .models import model_from_recipe

    if not isinstance(recipe, dict) or "arch" not in recipe:
        raise CheckpointError("checkpoint recipe is missing the architecture name")
    base = dict(recipe)
    conversions = list(base.get("conversions", []))
    base["conversions"] = []
    model: nn.Module = model_from_recipe(base)
    for conv in conversions:
        model = apply_conversion(model, conv)
    setattr(model, "robustlab_recipe", copy.deepcopy(recipe))  # noqa: B010
    return model


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the exact model stored at ``path`` and load its weights (eval mode).

    The header is available afterwards as ``model.robustlab_header``.

    Raises:
        CheckpointError: for pickles, corrupted, truncated or tampered files, or a checkpoint
            whose recipe does not match its weights.
    """
    tensors, header = read_checkpoint(path)
    if header.get("kind") != "model":
        raise CheckpointError(
            f"{path} holds a {header.get('kind')!r} state, not a model; training-state files "
            "are read by Trainer.fit(resume=True)"
        )
    model = build_from_recipe(header["recipe"])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the recipe's architecture ({e})") from None
    model.robustlab_header = header  # type: ignore[assignment]
    return model.to(device).eval()


def load_weights(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> nn.Module:
    """Load bare safetensors weights (a plain ``state_dict`` file) into ``model``."""
    from .core.checkpoint import _check_path

    p = _check_path(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(p))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{p} is corrupted or not a safetensors file ({e})") from None
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"{p}: weights do not match the model ({e})") from None
    return model
