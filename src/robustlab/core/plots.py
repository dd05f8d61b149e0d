"""Writing a matplotlib figure as the files a report uses: the PNG the Markdown shows and an SVG
twin beside it (same stem) that ``report.html`` inlines, both written atomically.

matplotlib is imported on first use only (the package imports without it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["svg_twin", "write_figure"]


def svg_twin(path: str | os.PathLike[str]) -> Path:
    """The SVG that goes with the figure ``path``: same folder and stem, suffix ``.svg``."""
    return Path(path).with_suffix(".svg")


def write_figure(fig: Any, path: str | os.PathLike[str], dpi: int) -> Path:
    """Save ``fig`` as the PNG ``path`` (at ``dpi``) and as its :func:`svg_twin`.

    Each file goes to a temporary name beside its target and is renamed over it, so a reader or
    a crash sees an old file or a new one whole. The SVG is written first, then the PNG; text
    stays text in the SVG (``svg.fonttype = "none"``) and it carries no date, so equal figures
    give equal files. The figure is left open: closing it is the caller's business.

    Args:
        fig: a ``matplotlib.figure.Figure``.
        path: where the PNG goes; its folder is created when missing.
        dpi: the PNG's resolution.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import matplotlib

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        _save_atomic(fig, svg_twin(out), format="svg", metadata={"Date": None})
    _save_atomic(fig, out, format="png", dpi=dpi)
    return out


def _save_atomic(fig: Any, path: Path, **kwargs: Any) -> None:
    """``fig.savefig(path, **kwargs)`` through a temporary file renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
