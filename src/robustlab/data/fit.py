"""Which dataset a checkpoint is used on, and whether its network can take that dataset.

A checkpoint's header (``model.robustlab_header`` after :func:`robustlab.load`) names the dataset
it was trained on and the recipe its network was built from. Evaluating it on another dataset is
usually a mistake (its classes mean other things), and on images with other channels or a network
with another number of classes it cannot even run: :func:`checkpoint_dataset` refuses both, before
any image is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robustlab.core import InputError

from .api import get_info
from .base import DatasetInfo

__all__ = ["checkpoint_dataset"]


def checkpoint_dataset(header: Mapping[str, Any], dataset: str | None = None, *, force: bool = False,
                       **options: Any) -> DatasetInfo:
    """The dataset to use a checkpoint on: ``dataset``, or the one its header names.

    Args:
        header: the checkpoint's header, ``model.robustlab_header``.
        dataset: a name in :data:`~robustlab.data.DATASETS`; ``None`` takes the header's.
        force: use ``dataset`` even if the checkpoint was trained on another.
        **options: ``root`` and the dataset's own options (as for :func:`~robustlab.data.get_info`).

    Raises:
        InputError: the header names no dataset and none is given; the checkpoint was trained on
            another dataset (unless ``force``); or, forced or not, the network takes images with
            another number of channels or predicts another number of classes than the dataset has.
        UnknownNameError: for an unknown dataset, listing the known ones.
    """
    trained_on = header.get("dataset")
    name = dataset or trained_on
    if not isinstance(name, str) or not name:
        raise InputError("the checkpoint names no dataset; pass dataset=")
    info = get_info(name, **options)
    name = info.name
    if trained_on and trained_on != name and not force:
        raise InputError(f"the checkpoint was trained on {trained_on}, not {name}; pass force=True "
                         f"to evaluate it on {name} anyway (or drop dataset=)")
    recipe = header.get("recipe")
    kwargs = recipe.get("kwargs", {}) if isinstance(recipe, dict) else {}
    channels = kwargs.get("in_channels", kwargs.get("in_chans"))
    if isinstance(channels, int) and channels != info.in_channels:
        raise InputError(f"the model takes {channels}-channel images but {name} has {info.in_channels}; "
                         "it cannot be evaluated there")
    classes = kwargs.get("num_classes")
    if isinstance(classes, int) and classes != info.num_classes:
        raise InputError(f"the model predicts {classes} classes but {name} has {info.num_classes}; "
                         "it cannot be evaluated there")
    return info
