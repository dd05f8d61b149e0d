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
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .core import CheckpointError, RobustlabError
from .core.checkpoint import (
    checkpoint_key,
    dtype_name,
    read_checkpoint,
    read_header,
    read_tensor_specs,
    require_hmac_tag,
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


def build_from_recipe(recipe: dict[str, Any]) -> nn.Module:
    """Rebuild an untrained model from its recipe, conversions included.

    The recipe may set only what :func:`robustlab.models.check_header_recipe` allows.

    Raises:
        CheckpointError: for a malformed recipe or an option a header may not set.
    """
    from .defenses import apply_conversion
    from .models import check_header_recipe, model_from_recipe

    if not isinstance(recipe, dict) or "arch" not in recipe:
        raise CheckpointError("checkpoint recipe is missing the architecture name")
    check_header_recipe(recipe)
    base = dict(recipe)
    conversions = list(base.get("conversions", []))
    base["conversions"] = []
    model: nn.Module = model_from_recipe(base)
    for conv in conversions:
        model = apply_conversion(model, conv)
    setattr(model, "robustlab_recipe", copy.deepcopy(recipe))  # noqa: B010
    return model


def _size(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def _check_recipe_against_file(path: Path, recipe: dict[str, Any]) -> None:
    """Build ``recipe`` on the meta device and compare it with the tensors stored in ``path``
    (names, shapes, dtypes) before anything real is allocated.

    Raises:
        CheckpointError: when the recipe cannot be built, builds far more tensors than the file
            holds, or does not match the stored tensors; the message gives both sizes.
    """
    from .models import build_on_meta

    specs = read_tensor_specs(path)
    stored_values = sum(math.prod(shape) for _, shape in specs.values())
    stored_bytes = path.stat().st_size
    arch = recipe.get("arch")
    try:
        skeleton = build_on_meta(lambda: build_from_recipe(recipe), max_tensors=4 * len(specs) + 256)
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
    wanted_values = sum(t.numel() for t in expected.values())
    wanted_bytes = sum(t.numel() * t.element_size() for t in expected.values())
    missing = sorted(set(expected) - set(specs))
    unexpected = sorted(set(specs) - set(expected))
    wrong = [
        f"{k}: file {specs[k][0]} {list(specs[k][1])}, recipe {dtype_name(t.dtype)} {list(t.shape)}"
        for k, t in expected.items()
        if k in specs and specs[k] != (dtype_name(t.dtype), tuple(t.shape))
    ]
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing tensors {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            details.append(f"unexpected tensors {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        if wrong:
            details.append(f"wrong shape or dtype: {'; '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}")
        raise CheckpointError(
            f"{path}: refused, its recipe ({arch!r}, options {recipe.get('kwargs')}) describes "
            f"{wanted_values:,} values ({_size(wanted_bytes)}) but the file stores "
            f"{stored_values:,} ({_size(stored_bytes)}): {', '.join(details)}. The header was "
            "edited or damaged, or the file was written by an incompatible robustlab"
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
    path = Path(path)
    header = read_header(path)
    if header.get("kind") != "model":
        raise CheckpointError(
            f"{path} holds a {header.get('kind')!r} state, not a model; training-state files "
            "are read by Trainer.fit(resume=True)"
        )
    if checkpoint_key() is not None:
        require_hmac_tag(path, header)  # before any work on an unauthenticated file
    recipe = header.get("recipe")
    if not isinstance(recipe, dict):
        raise CheckpointError(f"{path} holds no model recipe in its header")
    from .models import check_header_recipe

    check_header_recipe(recipe)
    _check_recipe_against_file(path, recipe)
    tensors, verified = read_checkpoint(path)
    if verified != header:
        raise CheckpointError(f"{path} changed while it was being read; load it again")
    model = build_from_recipe(recipe)
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
