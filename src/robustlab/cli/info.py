"""``robustlab info``: versions, the device and every registry's names."""

from __future__ import annotations

import platform

import torch
from rich.table import Table

from .. import __version__
from ..attacks import ATTACKS
from ..data import DATASETS
from ..evaluate import BATTERIES
from ..train import OBJECTIVES, OPTIMIZERS, SCHEDULES
from .console import console
from .errors import boundary
from .options import MODEL_NAMES, names


@boundary()
def info() -> None:
    """Show versions, the device and every registry's names.

    Example: robustlab info
    """
    from ..defenses import CONVERSIONS

    t = Table(title=f"robustlab {__version__}", show_header=False)
    t.add_row("python", platform.python_version())
    t.add_row("torch", torch.__version__)
    t.add_row("cuda", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available")
    t.add_row("threads", str(torch.get_num_threads()))
    for registry, listed in (("datasets", names(DATASETS)), ("models", MODEL_NAMES),
                             ("objectives", names(OBJECTIVES)), ("optimizers", names(OPTIMIZERS)),
                             ("schedules", names(SCHEDULES)), ("conversions", names(CONVERSIONS)),
                             ("batteries", names(BATTERIES)), ("attacks", names(ATTACKS))):
        t.add_row(registry, listed or "-")
    console.print(t)
