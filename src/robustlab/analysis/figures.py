"""Figure helpers shared by the analyses: matplotlib on the file-only Agg backend, imported on
first use (the package imports without matplotlib), and one way to write a PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.plots import write_figure

__all__ = ["plot_histogram", "plot_lines", "pyplot", "save_figure"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int) -> Path:
    """Lay ``fig`` out tightly, write it to ``path`` at ``dpi`` (and an SVG twin beside it,
    :func:`~robustlab.core.plots.write_figure`) and close it; returns the path."""
    fig.tight_layout()
    out = Path(path)
    write_figure(fig, out, dpi)
    pyplot().close(fig)
    return out


def plot_lines(
    path: Path, x_values: Sequence[float], series: Mapping[str, Sequence[float]], xlabel: str, title: str
) -> Path:
    """One panel per series of ``series`` (its name on the y axis) against ``x_values``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 2.8), squeeze=False)
    for ax, (label, values) in zip(axes[0], series.items(), strict=True):
        ax.plot(list(x_values), list(values), marker="o")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, 100)


def plot_histogram(path: Path, values: torch.Tensor, xlabel: str, title: str) -> Path:
    """A histogram of the base-10 logarithm of the finite positive ``values`` (one per image)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    finite = values.double()[torch.isfinite(values.double()) & (values.double() > 0)]
    if finite.numel():
        ax.hist(finite.log10().numpy(), bins=min(30, max(5, finite.numel() // 2)))
    ax.set_xlabel(f"log10 {xlabel}")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path, 100)
