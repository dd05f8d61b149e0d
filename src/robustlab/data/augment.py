"""Batched training augmentations that draw all their randomness from a passed generator.

Each augmentation is a function over an NCHW float batch plus a small callable class (kornia's
habit). Every random choice is drawn per sample, vectorized over the batch, from ``generator``
(or the global RNG when it is ``None``), so a loader that passes one generator repeats an epoch
bit for bit from the same generator state. Outputs stay in [0, 1] (padding fills with 0; crops
interpolate between pixels).

Named recipes, in :data:`AUGMENTATIONS` (``make_loader(augment="...")``):

- ``"none"``: identity.
- ``"flip"``: horizontal flip with probability 1/2.
- ``"pad-crop"``: zero-pad by ``max(1, round(min(H, W) / 8))`` pixels (4 for 32x32, 1 for
  8x8) and crop back to the original size at a random offset.
- ``"pad-crop-flip"``: ``"pad-crop"`` then ``"flip"``.
- ``"cifar"``: pad 4 + random 32x32 crop + flip, the standard CIFAR recipe used by the papers'
  adversarial training (DCS Sec. 4; feature-map-strides Sec. V).
- ``"imagenet"`` (alias ``"rrc-flip"``): a random resized crop (area fraction in [0.25, 1],
  aspect ratio in [3/4, 4/3], resampled bilinearly to the input size) then ``"flip"``. A
  batched, fixed-output-size variant of the usual ImageNet crop, applied after the dataset's
  resize and center crop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustlab.core import InputError, Registry, check_int, check_probability

from .base import DatasetInfo

__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "Compose",
    "Identity",
    "PadCrop",
    "RandomFlip",
    "RandomResizedCrop",
    "get_augmentation",
    "pad_crop",
    "random_flip",
    "random_resized_crop",
]


def _check_batch(x: Tensor, name: str = "augmentation input") -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{name} must be a float NCHW batch, got {desc}")


def _draw_device(x: Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else x.device


def random_flip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Flip each image of ``x`` left-right with probability ``p``; returns a new tensor."""
    _check_batch(x)
    check_probability(p, "flip probability")
    n = x.shape[0]
    flip = torch.rand(n, generator=generator, device=_draw_device(x, generator)) < p
    flip = flip.to(x.device).view(n, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def pad_crop(
    x: Tensor, padding: int, generator: torch.Generator | None = None, fill: float = 0.0
) -> Tensor:
    """Pad each image of ``x`` by ``padding`` pixels of ``fill`` and crop back at a random offset.

    The offsets (uniform over the ``(2 * padding + 1) ** 2`` positions, one per image) select
    the crop with two ``gather`` calls, so the whole batch is cropped at once.
    """
    _check_batch(x)
    check_int(padding, "padding", 0)
    if padding == 0:
        return x.clone()
    n, c, h, w = x.shape
    dev = _draw_device(x, generator)
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    xp = F.pad(x, (padding, padding, padding, padding), value=fill)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # n, h
    cols = ox[:, None] + torch.arange(w, device=x.device)  # n, w
    xp = xp.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    return xp.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def random_resized_crop(
    x: Tensor,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Crop a random box from each image and resample it bilinearly to the input size.

    Per image: the box covers an area fraction drawn uniformly from ``scale`` with an aspect
    ratio drawn log-uniformly from ``ratio`` (each side capped at the full image), at a uniform
    random position inside the image.
    """
    _check_batch(x)
    if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
        raise InputError(
            f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}"
        )
    n = x.shape[0]
    dev = _draw_device(x, generator)
    u = torch.rand((n, 4), generator=generator, device=dev, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    bw = torch.sqrt(area * torch.exp(logr)).clamp(max=1.0)
    bh = torch.sqrt(area / torch.exp(logr)).clamp(max=1.0)
    cx = (1 - bw) * (2 * u[:, 2] - 1)
    cy = (1 - bh) * (2 * u[:, 3] - 1)
    theta = torch.zeros((n, 2, 3), dtype=torch.float64, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = bw, cx
    theta[:, 1, 1], theta[:, 1, 2] = bh, cy
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.clamp_(0, 1)


class Augmentation:
    """Base class: a batched augmentation called as ``aug(x, generator=None)``."""

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment the float NCHW batch ``x``, drawing every random choice from ``generator``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Identity(Augmentation):
    """No augmentation (returns ``x`` unchanged, draws nothing)."""

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``x`` (see the class docstring)."""
        return x


class RandomFlip(Augmentation):
    """Class form of :func:`random_flip`."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``x`` (see the class docstring)."""
        return random_flip(x, self.p, generator)


class PadCrop(Augmentation):
    """Class form of :func:`pad_crop`.

    Args:
        padding: pixels of padding per side; ``None`` scales it with the image,
            ``max(1, round(min(H, W) / 8))`` (4 for 32x32, 28 for 224x224).
        fill: padding value.
    """

    def __init__(self, padding: int | None = 4, fill: float = 0.0) -> None:
        self.padding = padding
        self.fill = fill

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``x`` (see the class docstring)."""
        _check_batch(x)
        padding = self.padding if self.padding is not None else max(1, round(min(x.shape[-2:]) / 8))
        return pad_crop(x, padding, generator, self.fill)


class RandomResizedCrop(Augmentation):
    """Class form of :func:`random_resized_crop`."""

    def __init__(
        self, scale: tuple[float, float] = (0.25, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
    ) -> None:
        self.scale = scale
        self.ratio = ratio

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``x`` (see the class docstring)."""
        return random_resized_crop(x, self.scale, self.ratio, generator)


class Compose(Augmentation):
    """Apply augmentations in order, all drawing from the same generator."""

    def __init__(self, *augmentations: Augmentation) -> None:
        self.augmentations = tuple(augmentations)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``x`` (see the class docstring)."""
        for aug in self.augmentations:
            x = aug(x, generator)
        return x


AugmentationFactory = Callable[[], Augmentation]

AUGMENTATIONS: Registry[AugmentationFactory] = Registry("augmentation")
"""Registry of augmentation recipes: each entry is a zero-argument factory of an augmentation."""

AUGMENTATIONS.register("none", Identity, description="no augmentation")
AUGMENTATIONS.register("flip", RandomFlip, description="horizontal flip, p=1/2")
AUGMENTATIONS.register("pad-crop", lambda: PadCrop(None), description="zero-pad H/8, random crop")
AUGMENTATIONS.register(
    "pad-crop-flip",
    lambda: Compose(PadCrop(None), RandomFlip()),
    description="zero-pad H/8, random crop, horizontal flip",
)
AUGMENTATIONS.register(
    "cifar", lambda: Compose(PadCrop(4), RandomFlip()), description="pad 4, random crop, flip"
)
for _name in ("imagenet", "rrc-flip"):
    AUGMENTATIONS.register(
        _name,
        lambda: Compose(RandomResizedCrop(), RandomFlip()),
        description="random resized crop (area 0.25-1), horizontal flip",
    )


def get_augmentation(
    spec: bool | str | Augmentation | None, info: DatasetInfo | None = None
) -> Augmentation | None:
    """Resolve a ``make_loader(augment=...)`` value to an augmentation, or ``None`` for none.

    Args:
        spec: ``False``/``None`` (none), ``True`` (the dataset's default ``info.augment``), a name
            in :data:`AUGMENTATIONS`, or an :class:`Augmentation` (returned as is).
        info: the dataset's description; needed for ``True``.

    Raises:
        UnknownNameError: an unknown recipe name (the message lists the known ones).
        InputError: ``True`` without ``info``.
    """
    if spec is None or spec is False:
        return None
    if isinstance(spec, Augmentation):
        return spec
    if spec is True:
        if info is None:
            raise InputError("augment=True needs a dataset with .info (its default augmentation)")
        spec = info.augment
    if not isinstance(spec, str):
        raise InputError(f"augment must be a bool, a recipe name or an Augmentation, got {spec!r}")
    aug = AUGMENTATIONS.get(spec)()
    return None if isinstance(aug, Identity) else aug
