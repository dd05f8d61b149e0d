"""Which samples an evaluation runs on, and serving them by position.

``n`` samples are chosen by the one rule of the library (:func:`robustlab.data.select_subset`):
the deterministic class-balanced subset ``load_dataset(..., limit=n, seed=seed)`` keeps.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.checkpoint import content_hash
from ..core.checks import check_images, check_int, check_labels
from ..core.errors import InputError
from ..core.types import ThreatModel
from ..data import as_tensors, select_subset

__all__ = ["Samples", "select_positions"]


def select_positions(targets: torch.Tensor, n: int, seed: int | None) -> torch.Tensor:
    """The positions of the ``n`` samples: :func:`robustlab.data.select_subset` with ``seed``,
    or the first ``n`` with ``seed=None``."""
    return torch.arange(n) if seed is None else select_subset(targets, n, seed)


class Samples:
    """The ``n`` samples of a dataset or of ``(x, y)`` tensors the selection rule picks
    (:func:`robustlab.data.select_subset` with ``seed``; the first ``n`` with ``seed=None``, as
    the corruption evaluation still does), served by position."""

    def __init__(self, data: Any, n: int | None, seed: int | None) -> None:
        if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
            x, y = data
            check_images(x, "x")
            check_labels(y, x.shape[0])
            total = int(x.shape[0])
            self.name = "tensors"
            self.split: str | None = None
            self.threat: ThreatModel | None = None
            n = self._check_n(n, total)
            positions = select_positions(y, n, seed)
            if n < total:
                x, y = x[positions], y[positions]
            self._x: torch.Tensor | None = x
            self._y: torch.Tensor | None = y
            self._dataset: Any = None
            self.indices = [int(i) for i in positions.tolist()]
            self.fingerprint = content_hash({"x": x, "y": y}, {})
        elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
            self._x = self._y = None
            total = len(data)
            info = getattr(data, "info", None)
            self.name = str(getattr(info, "name", type(data).__name__))
            split = getattr(data, "split", None)
            self.split = str(split) if split is not None else None
            threat = getattr(info, "threat", None)
            self.threat = threat if isinstance(threat, ThreatModel) else None
            n = self._check_n(n, total)
            targets = getattr(data, "targets", None)
            if n < total and seed is None:
                positions = torch.arange(n)
            elif n < total:
                if not (isinstance(targets, torch.Tensor) and targets.numel() == total):
                    targets = torch.as_tensor([int(data[i][1]) for i in range(total)], dtype=torch.long)
                positions = select_positions(targets, n, seed)
            else:
                positions = torch.arange(total)
            base = getattr(data, "indices", None)
            if isinstance(base, torch.Tensor) and base.numel() == total:
                self.indices = [int(i) for i in base[positions].tolist()]
            else:
                self.indices = [int(i) for i in positions.tolist()]
            if n < total:
                subset = getattr(data, "subset", None)
                data = subset(positions) if callable(subset) else torch.utils.data.Subset(data, positions.tolist())
            self._dataset = data
            content = getattr(data, "content_hash", None)
            self.fingerprint = str(content()) if callable(content) else ""
        else:
            raise InputError(
                f"data must be a dataset (e.g. robustlab.data.load_dataset(...)) or an (x, y) "
                f"pair of tensors, got {type(data).__name__}"
            )
        self.n = n

    def _check_n(self, n: int | None, total: int) -> int:
        if n is None:
            n = total
        check_int(n, "n", 1)
        if total == 0:
            raise InputError(f"the dataset {self.name!r} is empty")
        if n > total:
            raise InputError(
                f"n={n} samples were asked for, but the {self.name!r} data holds only {total}; "
                f"pass n <= {total} (or n=None for all)"
            )
        return n

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity of the data (part of the state key and the result config)."""
        d: dict[str, Any] = {"name": self.name, "split": self.split}
        if self.fingerprint:
            d["fingerprint"] = self.fingerprint
        return d

    def batch(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of positions ``[start, stop)``."""
        if self._x is not None and self._y is not None:
            return self._x[start:stop], self._y[start:stop].long()
        return as_tensors(self._dataset, stop - start, start=start)
