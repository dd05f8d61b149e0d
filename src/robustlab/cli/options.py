"""What several commands take: the choices their help lists, shared options, and the parsers that
check a typed value before any work (an eps such as ``8/255``, a norm, a device, an output path).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
import typer

from ..core import RobustlabError, ThreatModel
from ..data import DATASETS, checkpoint_dataset, default_threat
from ..evaluate import BATTERIES
from ..models import MODELS

if TYPE_CHECKING:
    from ..data.base import DatasetInfo

# ---------------------------------------------------------------------------------------------
# choices, listed in every option's help from the registries


def names(registry: Any, *extra: str) -> str:
    """A registry's names (and ``extra`` forms), for an option's help."""
    return ", ".join([*registry.names(), *extra])


DATASET_NAMES = names(DATASETS)
MODEL_NAMES = names(MODELS, "torchvision:<name>", "timm:<name>")
BATTERY_NAMES = names(BATTERIES)
NORMS = ("linf", "l2")
DEVICE_HELP = "cpu, cuda, cuda:N or auto (a GPU when there is one)"

# ---------------------------------------------------------------------------------------------
# options several commands share, written once

Device = Annotated[str, typer.Option(help=DEVICE_HELP)]
Root = Annotated[Path | None, typer.Option(help="dataset folder (default: $ROBUSTLAB_DATA or the dataset's own)")]
Download = Annotated[bool, typer.Option(
    "--download", help="fetch the dataset if it is missing, where it can be (CIFAR); needs network")]
Checkpoint = Annotated[Path, typer.Argument(help="a model .safetensors file")]
CheckpointDataset = Annotated[str | None, typer.Option(help=f"dataset: {DATASET_NAMES} (default: the checkpoint's)")]
Norm = Annotated[str | None, typer.Option(help="threat norm: linf or l2 (default: the dataset's, linf)")]

# ---------------------------------------------------------------------------------------------
# parsers: a value as typed -> the value the library takes, or one line saying why not


def parse_eps(text: str, norm: str = "linf") -> float:
    """Parse an eps given as a number or a fraction such as ``8/255``, checked for ``norm``."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise RobustlabError(f"--eps must be a number or a fraction such as 8/255, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise RobustlabError(f"--eps must be a finite number >= 0, got {text!r}")
    if norm == "linf" and value > 1:
        guess = f"{value:g}/255"
        raise RobustlabError(f"--eps {text} is larger than the whole [0, 1] pixel range for linf; "
                             f"did you mean {guess}? (pass --eps {guess})")
    return value


def check_norm(norm: str | None) -> str | None:
    """``--norm`` as given, if it is one of :data:`NORMS` (or left out)."""
    if norm is not None and norm not in NORMS:
        raise RobustlabError(f"unknown --norm {norm!r}; use linf or l2")
    return norm


def parse_threat(info: DatasetInfo, norm: str | None, eps: str | None) -> ThreatModel:
    """``--norm``/``--eps`` over the dataset's default; ``--norm l2`` alone gets the dataset's
    L2 default (:func:`robustlab.data.default_threat`)."""
    if eps is None:
        return default_threat(info, norm)
    chosen = norm or info.threat.norm
    return ThreatModel(chosen, parse_eps(eps, chosen))  # type: ignore[arg-type]


def parse_device(name: str) -> torch.device:
    """``--device``: cpu, cuda, cuda:N, or auto (a GPU when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RobustlabError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise RobustlabError(f"unknown --device {name!r}; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RobustlabError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return dev


# ---------------------------------------------------------------------------------------------
# output paths, checked before any work


def _existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: Path, flag: str, *, folder: bool) -> None:
    """Refuse an output path that cannot be written: a file where a folder is wanted (or the
    reverse), a file on the way, or a folder without write permission."""
    if folder and path.exists() and not path.is_dir():
        raise RobustlabError(f"{flag} {path} is a file, not a folder; pass a folder (it is created if missing)")
    if not folder and path.is_dir():
        raise RobustlabError(f"{flag} {path} is a folder; pass a file path inside it")
    parent = _existing_parent(path if folder else path.parent)
    if not parent.is_dir():
        raise RobustlabError(f"{flag} {path} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise RobustlabError(f"{flag} {path} cannot be written: no write permission in "
                             f"{path if path.exists() and folder else parent}; pass a path you can write")


# ---------------------------------------------------------------------------------------------
# a checkpoint and the dataset it is used on


def check_dataset_and_threat(dataset: str | None, norm: str | None, eps: str | None) -> None:
    """The form of ``--dataset``, ``--norm`` and ``--eps``, checked before a checkpoint is loaded
    (eps's range is checked once the norm is known)."""
    check_norm(norm)
    if eps is not None:
        parse_eps(eps, norm or "l2")
    if dataset is not None:
        DATASETS.get(dataset)


def load_for_dataset(checkpoint: Path, dev: torch.device, dataset: str | None, root: Path | None,
                     force_dataset: bool, norm: str | None, eps: str | None
                     ) -> tuple[torch.nn.Module, dict[str, Any], DatasetInfo, ThreatModel]:
    """Load a checkpoint and resolve the dataset it is used on (``--dataset`` or the one its
    header names, checked to fit: :func:`robustlab.data.checkpoint_dataset`), that dataset's
    keyword arguments and the threat model (``--norm``, ``--eps``)."""
    from .. import load

    model = load(checkpoint, device=dev)
    header: dict[str, Any] = getattr(model, "robustlab_header", {})
    kw: dict[str, Any] = {"root": root} if root else {}
    info = checkpoint_dataset(header, dataset, force=force_dataset, **kw)
    return model, kw, info, parse_threat(info, norm, eps)
