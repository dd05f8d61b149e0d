"""A dataset's default threat model for each norm.

Every :class:`~robustlab.data.DatasetInfo` carries one default threat model (L-inf for every
registered dataset; house plan: Fashion-MNIST 0.1, CIFAR 8/255, ImageNet-scale 4/255). The L2
radii are kept here, with where each comes from, so the CLI's ``--norm l2`` and a Python user's
``default_threat(info, "l2")`` get the same number.
"""

from __future__ import annotations

import math

from robustlab.core import InputError, ThreatModel

from .base import DatasetInfo

__all__ = ["L2_EPS", "default_threat", "l2_default"]

L2_EPS = {"fashion-mnist": 1.5, "cifar10": 0.5, "cifar100": 0.5, "imagefolder": 3.0}
"""L2 radii per dataset in [0, 1] pixel space.

Fashion-MNIST 1.5: the MNIST L2 radius of Schott et al. 2019 ("Towards the first adversarially
robust neural network model on MNIST", Sec. 5). CIFAR 0.5: the RobustBench L2 leaderboard (Croce
et al. 2021, Sec. 3) and AutoAttack's L2 evaluations (Croce & Hein 2020, Sec. 5). ImageNet-scale
(imagefolder) 3.0: the L2 ImageNet models of Engstrom et al.'s robustness library and Salman et
al. 2020 ("Do adversarially robust ImageNet models transfer better?").
"""

_L2_PER_PIXEL = 1.5 / 28  # Fashion-MNIST's radius over the square root of its 28 * 28 pixels


def l2_default(info: DatasetInfo) -> float:
    """The L2 radius for a dataset: :data:`L2_EPS`, or for a dataset without a published radius
    Fashion-MNIST's per-pixel size, ``1.5 / sqrt(28 * 28)``, times the square root of its pixel
    count, the same RMS change per pixel (digits, 8x8: 0.43)."""
    if info.name in L2_EPS:
        return L2_EPS[info.name]
    pixels = info.in_channels * info.image_size[0] * info.image_size[1]
    return round(_L2_PER_PIXEL * math.sqrt(pixels), 3)


def default_threat(info: DatasetInfo, norm: str | None = None) -> ThreatModel:
    """The dataset's threat model for ``norm`` (``None``: its own default, ``info.threat``).

    Raises:
        InputError: for a norm other than ``"linf"`` and ``"l2"``, or one the dataset has no
            default radius for.
    """
    chosen = norm or info.threat.norm
    if chosen == info.threat.norm:
        return info.threat
    if chosen == "l2":
        return ThreatModel("l2", l2_default(info))
    if chosen != "linf":
        raise InputError(f"unknown norm {chosen!r}; use linf or l2")
    raise InputError(f"{info.name} has no default {chosen} radius; pass eps=")
