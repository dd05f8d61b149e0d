"""Variants: how each model of a study is made, cached per (variant, seed) in the run folder.

A variant is a label and a maker: :class:`Train` (an architecture trained from scratch with a
recipe), :class:`Convert` (another variant's model converted by a registered conversion and
finetuned) or :class:`Load` (a checkpoint). :class:`Workshop` makes them on demand and keeps
each under ``models/<variant>/seed<k>/`` (``shared/`` for a variant made once for every seed)
beside ``variant.json``, the recipe it was made with: a rerun reuses a finished model, resumes an
interrupted training (the :class:`~robustlab.train.Trainer` checkpoints every epoch), and refuses
a folder whose recipe differs instead of mixing two studies' models. Beside each model it
writes ``cost.json``: FLOPs, activation bytes and parameters of one forward on one image
(:func:`robustlab.analysis.cost`), which reports read with the training's seconds per epoch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis import cost
from ..checkpoints import load
from ..core.checkpoint import write_text_atomic
from ..core.errors import InputError
from ..core.randomness import seed_stochastic
from ..data import get_info, load_dataset
from ..data.base import ImageDataset
from ..defenses import CONVERSIONS
from ..models import create_model
from ..train import Callback, TrainConfig, Trainer, create_objective
from .records import slugify

__all__ = ["Convert", "Load", "Ref", "Train", "TrainSpec", "Variant", "Workshop"]


@dataclass(frozen=True)
class Ref:
    """A conversion option filled in by the study: the value of its resource ``name`` (see
    :attr:`~robustlab.experiments.Plan.resources`), made once per run folder, e.g. a dictionary
    learned from the training data. ``variant.json`` records the reference, not the value."""

    ref: str


@dataclass(frozen=True)
class TrainSpec:
    """A training run: objective, epochs, schedule and the size of the training subset.

    Attributes:
        limit: a stratified subset of the training split of this size (``None``: all of it).
        seed_offset: added to the variant's seed for the training's own randomness.
    """

    epochs: int
    lr: float
    schedule: str = "onecycle"
    objective: str = "standard"
    objective_options: tuple[tuple[str, Any], ...] = ()
    batch_size: int = 128
    limit: int | None = None
    seed_offset: int = 0
    train_options: tuple[tuple[str, Any], ...] = ()
    """Further :class:`~robustlab.train.TrainConfig` fields (``optimizer``, ``weight_decay``,
    ``schedule_options``, ``bn_eval``, ...); recorded only when set, so recipes written before
    the field existed still match."""


@dataclass(frozen=True)
class Train:
    """Train ``model`` (an architecture name) from scratch with ``train``, after applying
    ``conversions`` (``(name, options)`` pairs of :data:`robustlab.defenses.CONVERSIONS`, in
    order) to the freshly built network, e.g. stride shrinking before adversarial training."""

    model: str
    train: TrainSpec
    conversions: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()


@dataclass(frozen=True)
class Convert:
    """Convert the model of variant ``source`` with ``conversion`` (a name in
    :data:`robustlab.defenses.CONVERSIONS`; ``None``: a copy, e.g. to train it further with
    another objective) and its ``options``, then finetune it (when ``finetune`` is given).
    Random layers of the converted model are seeded with ``noise_seed_offset + seed`` before
    finetuning."""

    source: str
    conversion: str | None
    options: tuple[tuple[str, Any], ...] = ()
    finetune: TrainSpec | None = None
    noise_seed_offset: int = 10_000


@dataclass(frozen=True)
class Load:
    """A trained checkpoint (``robustlab.load``), the same for every seed."""

    path: str


Maker = Train | Convert | Load


@dataclass(frozen=True)
class Variant:
    """One model of a study.

    Attributes:
        label: its row label in every table (the paper's naming).
        make: how it is made.
        per_seed: one model per seed; ``False`` makes one (seed 0) that every seed shares, like
            a baseline every finetuned variant starts from.
    """

    label: str
    make: Maker
    per_seed: bool = True

    @property
    def slug(self) -> str:
        """Its folder name."""
        return slugify(self.label)

    def recipe(self) -> dict[str, Any]:
        """JSON-ready form of how it is made (saved as ``variant.json``)."""
        made = asdict(self.make)
        for key in ("train", "finetune"):
            if isinstance(made.get(key), dict) and not made[key].get("train_options"):
                made[key].pop("train_options", None)
        return {"label": self.label, "maker": type(self.make).__name__.lower(), **made, "per_seed": self.per_seed}


def _convert(model: nn.Module, name: str | None, options: dict[str, Any]) -> nn.Module:
    """A new model: ``model`` converted by the public surgery of conversion ``name`` (which adds
    itself to the model's recipe, so ``robustlab.load`` rebuilds it); a copy when ``None``."""
    if name is None:
        import copy

        copied: nn.Module = copy.deepcopy(model)
        return copied
    convert = CONVERSIONS.meta(name)["convert"]
    out: nn.Module = convert(model, **options)
    return out


class Workshop:
    """Makes and caches the models of one run folder.

    Args:
        out: the run folder.
        variants: every variant of the study (a :class:`Convert` names its source among them).
        dataset: the training data's name.
        device: where models train and run.
        callbacks: training callbacks (progress bars).
        log: called with one line per model made.
        resources: name -> maker of a value that :class:`Ref` options stand for (made once,
            on first use).
    """

    def __init__(self, out: Path, variants: Sequence[Variant], dataset: str, device: torch.device,
                 callbacks: Sequence[Callback] = (), log: Callable[[str], None] = lambda s: None,
                 resources: Mapping[str, Callable[[], Any]] | None = None) -> None:
        self.out = out
        self.resources = dict(resources or {})
        self._resolved: dict[str, Any] = {}
        self.variants = {v.label: v for v in variants}
        self.dataset = dataset
        self.device = device
        self.callbacks = list(callbacks)
        self.log = log
        self.seconds: dict[str, float] = {}
        self._models: dict[tuple[str, int], nn.Module] = {}
        self._train_sets: dict[int | None, ImageDataset] = {}

    def options(self, options: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
        """Conversion options with every :class:`Ref` replaced by its resource's value."""
        out = {}
        for key, value in options:
            if isinstance(value, Ref):
                if value.ref not in self.resources:
                    raise InputError(f"option {key!r} refers to resource {value.ref!r}, which this study does not "
                                     f"make (it makes: {', '.join(self.resources) or 'none'})")
                if value.ref not in self._resolved:
                    self._resolved[value.ref] = self.resources[value.ref]()
                value = self._resolved[value.ref]
            out[key] = value
        return out

    def variant(self, label: str) -> Variant:
        """The variant called ``label``."""
        if label not in self.variants:
            raise InputError(f"unknown variant {label!r}; known variants: {', '.join(self.variants)}")
        return self.variants[label]

    def folder(self, variant: Variant, seed: int) -> Path:
        """Where (variant, seed) is cached."""
        return self.out / "models" / variant.slug / (f"seed{seed}" if variant.per_seed else "shared")

    def model(self, label: str, seed: int) -> nn.Module:
        """The model of ``label`` for ``seed`` in eval mode, made (or resumed) when not cached."""
        v = self.variant(label)
        key = (label, seed if v.per_seed else 0)
        if key not in self._models:
            model = self._make(v, key[1]).to(self.device).eval()
            folder = self.folder(v, key[1])
            if not (folder / "cost.json").exists():  # a loaded checkpoint's too, in this run's folder
                folder.mkdir(parents=True, exist_ok=True)
                info = get_info(self.dataset)
                measured = cost(model, (1, info.in_channels, *info.image_size))
                write_text_atomic(folder / "cost.json", json.dumps(measured.to_dict()))
            self._models[key] = model
        return self._models[key]

    def forget(self) -> None:
        """Drop the models held in memory (they stay on disk): a worker process of a parallel
        executor runs many tasks, each of which loads the models it needs."""
        self._models.clear()

    def _make(self, v: Variant, seed: int) -> nn.Module:
        if isinstance(v.make, Load):
            return load(v.make.path, device=self.device)
        folder = self.folder(v, seed)
        recipe = {**v.recipe(), "dataset": self.dataset, "seed": seed}
        saved = folder / "variant.json"
        if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(recipe)):
            raise InputError(f"{folder} holds a model made with another recipe; pass a new --out or delete "
                             "the folder to start over")
        if (folder / "model.safetensors").exists():
            return load(folder / "model.safetensors", device=self.device)
        folder.mkdir(parents=True, exist_ok=True)
        if not saved.exists():  # a conversion without finetuning is remade by every process that uses it
            write_text_atomic(saved, json.dumps(recipe, indent=1))
        t0 = time.perf_counter()
        if isinstance(v.make, Train):
            info = get_info(self.dataset)
            net: nn.Module = create_model(v.make.model, num_classes=info.num_classes, in_channels=info.in_channels,
                                          mean=info.mean, std=info.std, seed=seed)
            for name, options in v.make.conversions:
                net = _convert(net, name, self.options(options))
            spec = v.make.train
            self.log(f"{v.label}: training {v.make.model} for {spec.epochs} epochs (seed {seed})")
        else:
            net = _convert(self.model(v.make.source, seed), v.make.conversion, self.options(v.make.options))
            seed_stochastic(net, v.make.noise_seed_offset + seed)
            if v.make.finetune is None:
                return net
            spec = v.make.finetune
            self.log(f"{v.label}: finetuning (seed {seed}) for {spec.epochs} epochs")
        extra: dict[str, Any] = {k: dict(v) if k == "schedule_options" else v for k, v in spec.train_options}
        tcfg = TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, schedule=spec.schedule,
                           seed=seed + spec.seed_offset, **extra)
        objective = create_objective(spec.objective, **dict(spec.objective_options))
        model = Trainer(net, objective, tcfg, out_dir=folder, device=self.device, dataset_name=self.dataset,
                        callbacks=self.callbacks).fit(self.train_set(spec.limit), resume=True).model
        self.seconds[v.label] = self.seconds.get(v.label, 0.0) + time.perf_counter() - t0
        return model

    def train_set(self, limit: int | None) -> ImageDataset:
        """The training split (a stratified subset of ``limit`` images), loaded once."""
        if limit not in self._train_sets:
            self._train_sets[limit] = load_dataset(self.dataset, "train", limit=limit, seed=0)
        return self._train_sets[limit]
