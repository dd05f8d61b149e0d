"""Input checks with errors that print what was expected and what arrived (kornia's habit)."""

from __future__ import annotations

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
