"""Input checks with errors that print what was expected and what arrived (kornia's habit)."""

from __future__ import annotations

import math
from typing import TypeGuard

import torch

from .errors import InputError

_RANGE_TOL = 1e-6


def check_images(x: torch.Tensor, name: str = "images", channels: int | None = None) -> None:
    """Check that ``x`` is a float NCHW batch of images in [0, 1].

    Raises:
        InputError: naming the problem (type, shape, dtype, range, channel count) and the fix.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(
            f"{name} must be a 4-D NCHW batch, got shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0) for a single image"
        )
    if not x.is_floating_point():
        raise InputError(
            f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}; "
            "convert uint8 images with x.float() / 255"
        )
    if channels is not None and x.shape[1] != channels:
        raise InputError(
            f"{name} must have {channels} channel(s), got shape {tuple(x.shape)} "
            f"with {x.shape[1]}; images are NCHW"
        )
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL or lo != lo or hi != hi:
            raise InputError(
                f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; robustlab "
                "models take raw [0, 1] pixels and normalize inside the model "
                "(models.Normalized): remove any Normalize transform from your data pipeline"
            )


def check_labels(y: torch.Tensor, n: int, num_classes: int | None = None) -> None:
    """Check that ``y`` is a 1-D integer label vector matching a batch of ``n`` images."""
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype not in (
        torch.int64,
        torch.int32,
        torch.int16,
        torch.uint8,
    ):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise InputError(f"labels must be a 1-D integer tensor, got {shape}")
    if y.shape[0] != n:
        raise InputError(f"got {y.shape[0]} labels for {n} images")
    if num_classes is not None and y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(f"labels must lie in [0, {num_classes - 1}], got [{int(y.min())}, {int(y.max())}]")


# ------------------------------------------------------------------ numbers and counts
# One home for argument checks, so every public function refuses the same things with the same
# words: a bool is never an int or a number here (``True`` is an ``int`` to Python, which let
# ``steps=True`` through as one step), and a number must be finite.


def is_int(value: object, low: int | None = None, high: int | None = None) -> TypeGuard[int]:
    """True for an int (never a bool) within ``[low, high]`` (a missing bound is open)."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (low is None or value >= low)
        and (high is None or value <= high)
    )


def is_number(
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> TypeGuard[float]:
    """True for a finite int or float (never a bool) within the bounds; ``low_open`` /
    ``high_open`` exclude the bound itself."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


def _bounds(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def check_int(value: object, name: str, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) within ``[low, high]``.

    Raises:
        InputError: ``"{name} must be an int >= {low}, got {value!r}"`` (or ``in [low, high]``).
    """
    if not is_int(value, low, high):
        raise InputError(f"{name} must be an int{_bounds(low, high)}, got {value!r}")
    return value


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 1 (not a bool).

    Raises:
        InputError: ``"{name} must be a positive int, got {value!r}"``.
    """
    if not is_int(value, 1):
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value


def check_number(
    value: object,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite int or float (not a bool) within the bounds.

    Raises:
        InputError: ``"{name} must be a finite number >= {low}, got {value!r}"`` (or ``> low``,
            ``in [low, high)``, ...).
    """
    if not is_number(value, low, high, low_open=low_open, high_open=high_open):
        bounds = _bounds(low, high, low_open, high_open)
        raise InputError(f"{name} must be a finite number{bounds}, got {value!r}")
    return float(value)


def check_probability(value: object, name: str, *, high_open: bool = False) -> float:
    """Return ``value`` as a float if it is a number in ``[0, 1]`` (``[0, 1)`` with
    ``high_open``, e.g. a dropout rate), not a bool.

    Raises:
        InputError: ``"{name} must be a probability in [0, 1], got {value!r}"``.
    """
    if not is_number(value, 0, 1, high_open=high_open):
        raise InputError(f"{name} must be a probability{_bounds(0, 1, False, high_open)}, got {value!r}")
    return float(value)
