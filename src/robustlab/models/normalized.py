"""``Normalized``: the wrapper that puts input normalization inside the model.

House rule (ARCHITECTURE.md, "Conventions"): images are [0, 1] pixels everywhere and threat
models are stated in pixel space, so the per-channel standardization belongs to the model, not
to the data pipeline. An attack then perturbs and clips raw pixels, and its gradient flows
through the normalization.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core import InputError, check_images


def _as_channel_tensor(values: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).detach().clone()
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1 or t.numel() == 0:
        raise InputError(
            f"{name} must be a flat sequence with one value per channel, got {values!r}"
        )
    if not torch.isfinite(t).all():
        raise InputError(f"{name} must be finite, got {t.tolist()}")
    return t.reshape(1, -1, 1, 1)


class Normalized(nn.Module):
    """``model((x - mean) / std)`` for [0, 1] images ``x``: normalization inside the model.

    ``mean`` and ``std`` are (persistent) buffers of shape ``(1, C, 1, 1)``, so they move with
    ``.to()`` and are saved in and restored from the ``state_dict``. The forward pass does not
    check the input range, which would cost a device sync per call inside attack loops; set
    ``check_inputs=True`` (e.g. at an API edge) to validate every batch with
    :func:`robustlab.core.check_images`.

    Args:
        model: the bare network that takes normalized input; kept as ``.model``.
        mean: per-channel mean subtracted from the input.
        std: per-channel standard deviation dividing the input (all > 0).
        check_inputs: check on every forward that inputs are NCHW float images in [0, 1]
            with ``C`` channels.

    Raises:
        InputError: when ``mean`` and ``std`` differ in length or ``std`` is not positive.
    """

    mean: torch.Tensor
    std: torch.Tensor
    robustlab_recipe: dict[str, Any]

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
        check_inputs: bool = False,
    ) -> None:
        super().__init__()
        mean_t = _as_channel_tensor(mean, "mean")
        std_t = _as_channel_tensor(std, "std")
        if mean_t.numel() != std_t.numel():
            raise InputError(
                f"mean and std need one value per channel each, got {mean_t.numel()} mean "
                f"value(s) and {std_t.numel()} std value(s)"
            )
        if not (std_t > 0).all():
            raise InputError(f"std must be positive, got {std_t.flatten().tolist()}")
        self.model = model
        self.check_inputs = bool(check_inputs)
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    @property
    def in_channels(self) -> int:
        """Number of input channels (the length of ``mean``)."""
        return int(self.mean.shape[1])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std``, the input the inner model sees."""
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of [0, 1] images.

        Raises:
            InputError: only with ``check_inputs=True``, for a batch that is not NCHW float
                images in [0, 1] with the right channel count.
        """
        if self.check_inputs:
            check_images(x, channels=self.in_channels)
        return self.model(self.normalize(x))

    def extra_repr(self) -> str:
        mean = [round(v, 4) for v in self.mean.flatten().tolist()]
        std = [round(v, 4) for v in self.std.flatten().tolist()]
        return f"mean={mean}, std={std}, check_inputs={self.check_inputs}"
