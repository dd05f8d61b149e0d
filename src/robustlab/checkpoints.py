"""Save and load whole models: weights plus the recipe that rebuilds them, never a pickle.

A model made by :func:`robustlab.models.create_model` carries ``robustlab_recipe`` (architecture
name, its arguments, and the ordered list of conversions applied by ``robustlab.defenses``).
:func:`save` writes the weights and that recipe; :func:`load` rebuilds the same architecture,
re-applies the conversions in order and loads the weights.

A checkpoint's header is untrusted input (house plan, "Training"): :func:`load` accepts only the
options each architecture allows from a header, builds the network on the ``meta`` device and
compares it with the stored tensors before allocating anything, and never hands a header value
to a function that reads files.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .core import CheckpointError, RobustlabError
from .core.checkpoint import (
    CheckpointFile,
    dtype_name,
    load_weights,
    open_checkpoint,
    read_header,
    write_checkpoint,
)

_EXTRA_BUFFER_BYTES = 64 * 1024 * 1024
"""Memory a rebuilt model may hold beyond its stored tensors (buffers kept out of the state
dict, e.g. blur kernels), on top of the stored tensors' own size."""

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
    """Write ``model`` to ``path`` (``.safetensors``) with its recipe and run metadata, atomically.

    With ``ROBUSTLAB_CHECKPOINT_KEY`` set, the file also carries an HMAC-SHA256 tag under that key
    (see :func:`load`).

    Raises:
        CheckpointError: when the recipe sets an option :func:`load` would refuse from a header
            (so a model that cannot be loaded back is never saved).
    """
    from .models import check_header_recipe

    recipe = get_recipe(model)
    try:
        check_header_recipe(recipe)
    except CheckpointError as e:
        raise CheckpointError(f"this model could not be loaded back, so it is not saved: {e}") from None
    header: dict[str, Any] = {
        "kind": "model",
        "recipe": recipe,
        "dataset": dataset,
        "train_config": train_config or {},
        "metrics": metrics or {},
    }
    if extra:
        header["extra"] = extra
    return write_checkpoint(path, dict(model.state_dict()), header)


def _build(recipe: dict[str, Any]) -> nn.Module:
    """Rebuild an untrained model from a recipe already checked by
    :func:`robustlab.models.check_header_recipe`, conversions included."""
    from .defenses import apply_conversion
    from .models import create_model

    model: nn.Module = create_model(recipe["arch"], **copy.deepcopy(recipe.get("kwargs", {})))
    for conversion in recipe.get("conversions", []):
        model = apply_conversion(model, conversion)
    setattr(model, "robustlab_recipe", copy.deepcopy(recipe))  # noqa: B010
    return model


def _size(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def _check_recipe_against_file(checkpoint: CheckpointFile, recipe: dict[str, Any]) -> None:
    """Build ``recipe`` on the meta device and compare it with the tensors the file stores
    (names, shapes, dtypes) before anything real is allocated.

    Raises:
        CheckpointError: when the recipe cannot be built, builds far more tensors than the file
            holds, or does not match the stored tensors; the message gives both sizes.
    """
    from .models import build_on_meta

    path, specs, stored_bytes = checkpoint.path, checkpoint.specs, checkpoint.size
    arch = recipe.get("arch")
    try:
        skeleton = build_on_meta(lambda: _build(recipe), max_tensors=4 * len(specs) + 256)
    except CheckpointError as e:
        raise CheckpointError(
            f"{path}: refused, its recipe ({arch!r}) does not fit the file: {e}, while the "
            f"file stores {len(specs)} tensors ({_size(stored_bytes)})"
        ) from None
    except Exception as e:  # any failure to build an untrusted recipe is the file's fault
        raise CheckpointError(
            f"{path}: its recipe ({arch!r}) cannot be built: {type(e).__name__}: {e}"
        ) from e
    expected = skeleton.state_dict()
    missing = sorted(set(expected) - set(specs))
    unexpected = sorted(set(specs) - set(expected))
    wrong = [
        f"{k}: file {specs[k].dtype} {list(specs[k].shape)}, recipe {dtype_name(t.dtype)} {list(t.shape)}"
        for k, t in expected.items()
        if k in specs and specs[k] != (dtype_name(t.dtype), tuple(t.shape))
    ]
    if missing or unexpected or wrong:
        details = [
            f"{what} {names[:3]}{' ...' if len(names) > 3 else ''}"
            for what, names in (("missing tensors", missing), ("unexpected tensors", unexpected))
            if names
        ]
        if wrong:
            details.append(f"wrong shape or dtype: {'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
        wanted_values = sum(t.numel() for t in expected.values())
        wanted_bytes = sum(t.numel() * t.element_size() for t in expected.values())
        raise CheckpointError(
            f"{path}: refused, its recipe ({arch!r}, options {recipe.get('kwargs')}) describes "
            f"{wanted_values:,} values ({_size(wanted_bytes)}) but the file stores "
            f"{checkpoint.stored_values():,} ({_size(stored_bytes)}): {', '.join(details)}. The "
            "header was edited or damaged, or the file was written by an incompatible robustlab"
        )
    in_state = set(expected)
    extra = sum(b.numel() * b.element_size() for k, b in skeleton.named_buffers() if k not in in_state)
    if extra > _EXTRA_BUFFER_BYTES + stored_bytes:
        raise CheckpointError(
            f"{path}: refused, its recipe ({arch!r}) would allocate {_size(extra)} of buffers "
            f"beyond the {_size(stored_bytes)} the file stores"
        )


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the exact model stored at ``path`` and load its weights (eval mode).

    The header is available afterwards as ``model.robustlab_header``.

    The file is treated as untrusted input: the header's recipe may set only the options its
    architecture allows from a header (:func:`robustlab.models.header_options`), the network is
    first built on the ``meta`` device and compared with the stored tensors' names, shapes and
    dtypes, and only then are the tensors read and the real network allocated. No header value
    is ever passed to a function that reads files, and nothing is unpickled.

    What the checks guarantee: the SHA-256 content hash over the tensors and the header detects
    accidental corruption (a truncated copy, a flipped bit, an edit by a tool unaware of the
    hash); it does not detect tampering, because anyone who can edit the file can recompute
    it. Authenticity needs a secret: when the environment variable ``ROBUSTLAB_CHECKPOINT_KEY``
    is set, :func:`save` stores an HMAC-SHA256 tag of the same content under that key, and
    ``load`` refuses a file whose tag is missing or does not match. Without the key, a file
    edited and re-hashed by someone else loads.

    Raises:
        CheckpointError: for pickles, corrupted or truncated files, a recipe option a header
            may not set, a recipe that does not match the stored tensors, and (with the key
            set) a missing or wrong HMAC tag.
    """
    checkpoint = open_checkpoint(path)
    header = checkpoint.require_header()
    if header.get("kind") != "model":
        raise CheckpointError(
            f"{checkpoint.path} holds a {header.get('kind')!r} state, not a model; training-state "
            "files are read by Trainer.fit(resume=True)"
        )
    recipe = header.get("recipe")
    if not isinstance(recipe, dict):
        raise CheckpointError(f"{checkpoint.path} holds no model recipe in its header")
    from .models import check_header_recipe

    check_header_recipe(recipe)
    _check_recipe_against_file(checkpoint, recipe)
    tensors = checkpoint.read_tensors()
    model = _build(recipe)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{checkpoint.path}: weights do not match the recipe's architecture ({e})") from None
    model.robustlab_header = header  # type: ignore[assignment]
    return model.to(device).eval()
