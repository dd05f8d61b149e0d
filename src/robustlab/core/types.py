"""Small configuration types shared by every package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .checks import check_number
from .errors import InputError

Norm = Literal["linf", "l2"]


@dataclass(frozen=True)
class ThreatModel:
    """An Lp ball of radius ``eps`` around an input in pixel space ([0, 1] images).

    Defaults per dataset (house plan): Fashion-MNIST 0.1, CIFAR 8/255, ImageNet 4/255.
    """

    norm: Norm = "linf"
    eps: float = 8 / 255

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise InputError(f"unknown norm {self.norm!r}; use 'linf' or 'l2'")
        check_number(self.eps, "eps", 0)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description."""
        return {"norm": self.norm, "eps": float(self.eps)}
