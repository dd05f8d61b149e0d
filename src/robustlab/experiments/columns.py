"""Columns: a registry from a column's kind to the evaluator that writes its :class:`Record`.

A study names its columns (``Column("pgd-eot20", "pgd", "PGD + EOT-20", settings=...)``) with
every setting spelled out; the evaluator is found by the column's ``kind`` in :data:`COLUMN_KINDS`
(never by reading the name). Kinds registered here:

- ``clean``: accuracy on the clean test images (for a randomized model, per image the
  probability that a draw is right, on the verdict's fresh draws);
- ``corruptions``: the mean corruption error (:func:`robustlab.evaluate.evaluate_corruptions`);
- ``unchanged``: the fraction of predictions PGD at a given eps leaves unchanged, right or wrong
  (the anti-perturbation ratio of feature-map-strides Table II);
- ``fgsm``, ``pgd``, ``deepfool`` (judged inside the threat model), ``square``, ``autoattack``, ``battery`` (a registered battery by name, e.g. ``full``):
  the attacks run by :func:`robustlab.evaluate.run_battery` (so one verdict rule, fresh draws for
  randomized models, resumable state, a ledger row);
- ``transfer``: another column's attack crafted on a surrogate (a named variant of the study, or
  ``"twin"``: the model's deterministic twin) and judged on the model;
- ``audit`` (registered by :mod:`.audits`): the audit of another column's evaluation.

A column that makes no sense on a deterministic model (EOT, a twin) says so with
``deterministic``: the name of the column it repeats there, or ``"skip"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import (
    EOT,
    FGSM,
    PGD,
    Attack,
    AutoAttack,
    DeepFool,
    Square,
    Transfer,
    Verdict,
    model_fn,
)
from ..core import Registry
from ..core.bpda import bpda_layers
from ..core.errors import InputError
from ..core.metrics import predict
from ..core.randomness import is_stochastic, seed_stochastic
from ..core.types import ThreatModel
from ..data import as_tensors, load_dataset, make_loader, select_subset
from ..data.base import ImageDataset
from ..defenses import deterministic_twin
from ..evaluate import Battery, Ledger, create_battery, evaluate_corruptions, run_battery
from .records import Record

__all__ = ["COLUMN_KINDS", "Column", "ColumnKind", "EvalContext", "autoattack_version", "battery_of", "evaluate_column", "pgd_settings"]


@dataclass(frozen=True)
class Column:
    """One column of a study.

    Attributes:
        name: its key in the records (unique in the study).
        kind: a name in :data:`COLUMN_KINDS`.
        header: its table header.
        settings: every setting of its evaluator, explicit (no library default by accident).
        deterministic: on a deterministic model, the column this one repeats, or ``"skip"``.
    """

    name: str
    kind: str
    header: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    deterministic: str | None = None

    @property
    def attack(self) -> bool:
        """Whether the column attacks the model (its record counts toward the worst case)."""
        return COLUMN_KINDS.get(self.kind).record_kind == "attack"


def pgd_settings(steps: int, step_size: float, *, random_start: bool = True, early_stop: bool = True, eot: int = 0,
                 **extra: Any) -> dict[str, Any]:
    """A ``pgd`` column's settings, each spelled out (one restart; ``extra``: ``eot_normalize``,
    ``bpda``)."""
    return {"steps": steps, "step_size": step_size, "random_start": random_start, "restarts": 1,
            "early_stop": early_stop, "eot": eot, **extra}


@dataclass
class EvalContext:
    """What an evaluator needs beyond the model: the study's data, threat model and neighbours.

    Attributes:
        model_of: ``(variant label, seed) -> model``, for transfer sources.
        columns: every column of the study by name (a transfer names the attack it carries).
    """

    dataset: str
    threat: ThreatModel
    eval_n: int
    clean_n: int | None
    eval_batch_size: int
    device: torch.device
    out: Path
    columns: Mapping[str, Column]
    model_of: Callable[[str, int], nn.Module]
    ledger_extra: Mapping[str, Any] = field(default_factory=dict)
    state_dir: Path | None = None
    """Where evaluations keep their resumable state (default ``<run folder>/eval-state``). The
    state is keyed by content (weights, images, battery, seed), so runs that share a folder (the
    demo's studies) read an identical evaluation back instead of repeating it."""

    def states(self, column: Column) -> Path:
        """Where ``column``'s evaluation keeps its state: the shared folder for a registered
        battery (its name is the registry's, its slot is keyed by content), the run's own folder
        for a single attack (named after the column: two studies' ``pgd`` columns with other
        settings would otherwise take turns over one slot)."""
        own = self.out / "eval-state"
        return self.state_dir if self.state_dir is not None and column.kind in ("autoattack", "battery") else own

    @cached_property
    def clean_set(self) -> ImageDataset:
        """The clean test images (the first ``clean_n`` of a stratified draw, all when ``None``)."""
        return load_dataset(self.dataset, "test", limit=self.clean_n, seed=0)

    @cached_property
    def eval_set(self) -> ImageDataset:
        """The attacked test images."""
        return load_dataset(self.dataset, "test", limit=self.eval_n, seed=0)


Evaluator = Callable[[EvalContext, nn.Module, Column, str, int], Record]


@dataclass(frozen=True)
class ColumnKind:
    """A registered evaluator and the kind of record it writes (``clean``, ``attack``, ``corruption``)."""

    evaluate: Evaluator
    record_kind: str


COLUMN_KINDS: Registry[ColumnKind] = Registry("column kind")


CLEAN_DRAWS = 4
"""Draws per image of a ``clean`` column on a randomized model: each image's estimate is
unbiased, and over the column's thousands of images the mean's error from the draws is far
below the images' own spread (at most 0.56 points at 2000 images; 8 draws cost the demo's
three randomized studies 61 s, against 3 s for one draw before the verdict rule)."""


def _clean(ctx: EvalContext, model: nn.Module, column: Column, variant: str, seed: int) -> Record:
    """Per image, the probability that a draw classifies it correctly, on :data:`CLEAN_DRAWS`
    fresh draws for a randomized model (one forward on a deterministic one)."""
    seed_stochastic(model, seed)
    verdict, outcomes = Verdict(draws=CLEAN_DRAWS), []
    for x, y in make_loader(ctx.clean_set, 500):
        x, y = x.to(ctx.device), y.to(ctx.device)
        p_correct, _ = verdict.judge(model_fn(model, x), x, y)
        outcomes.append(p_correct.cpu())
    return Record.of_outcomes(variant, seed, column.name, "clean", torch.cat(outcomes).tolist())


def _corruptions(ctx: EvalContext, model: nn.Module, column: Column, variant: str, seed: int) -> Record:
    n = min(int(column.settings["n"]), len(ctx.clean_set))
    # the same images for every seed (the seed draws the corruptions' noise and the model's own
    # randomness), so a seed average per image averages one image
    images = ctx.clean_set.subset(select_subset(ctx.clean_set.targets, n, seed=0))
    res = evaluate_corruptions(model, images, batch_size=500, seed=seed, device=ctx.device)
    rec = Record.of_outcomes(variant, seed, column.name, "corruption", res.per_image)
    # the mean corruption error over corruptions and severities (each cell on the same n images)
    return replace(rec, error=res.mce, settings={"n": n, "per_corruption_accuracy": res.accuracy})


def make_attack(ctx: EvalContext, column: Column) -> Attack:
    """The single attack of an attack column (what a transfer column carries to its surrogate)."""
    s = column.settings
    if column.kind == "pgd":
        # optional settings (absent in older recipes): BPDA mode, the paper-variant EOT that
        # averages per-sample L2-normalized gradients
        grad = EOT(int(s["eot"]), normalize=bool(s.get("eot_normalize", False))) if s["eot"] else None
        return PGD(ctx.threat, steps=int(s["steps"]), step_size=float(s["step_size"]),
                   random_start=bool(s["random_start"]), restarts=int(s["restarts"]),
                   early_stop=bool(s["early_stop"]), grad=grad, bpda=s.get("bpda"))
    if column.kind == "fgsm":
        return FGSM(ctx.threat)
    if column.kind == "deepfool":
        return DeepFool(ctx.threat, int(s["steps"]), overshoot=float(s["overshoot"]), candidates=int(s["candidates"]))
    if column.kind == "square":
        return Square(ctx.threat, int(s["queries"]), p_init=float(s["p_init"]), eot=int(s.get("eot", 1)))
    if column.kind == "autoattack":
        if s["version"] == "auto":
            raise InputError(f"column {column.name!r}: AutoAttack version 'auto' picks its version per model, so it "
                             "cannot be carried to a surrogate; carry a PGD column or name the version")
        return AutoAttack(ctx.threat, s["version"], eot=int(s["eot"]), bpda=s.get("bpda"))
    raise ValueError(f"column {column.name!r} ({column.kind}) is not a single attack")


def autoattack_version(model: nn.Module, settings: Mapping[str, Any]) -> tuple[str, str | None]:
    """The AutoAttack version and BPDA mode an ``autoattack`` column runs on ``model``: its
    ``version`` and ``bpda`` as given, or with ``version="auto"`` the one that fits the model:
    ``rand`` (EOT over ``eot`` draws) on a randomized model, ``standard`` on a deterministic one,
    and ``bpda`` only where the model declares BPDA layers (its surrogates)."""
    if settings["version"] != "auto":
        return str(settings["version"]), settings.get("bpda")
    randomized = is_stochastic(model)
    return ("rand" if randomized else "standard"), (settings.get("bpda") if randomized and bpda_layers(model) else None)


def battery_of(ctx: EvalContext, model: nn.Module, column: Column) -> Battery:
    """The battery an attack column runs on ``model`` (what an ``audit`` column audits)."""
    s = column.settings
    if column.kind == "autoattack":  # the registered battery keeps AutoAttack's per-attack columns
        version, bpda = autoattack_version(model, s)
        options: dict[str, Any] = {"eot": int(s["eot"])} if version == "rand" else {}
        if bpda is not None:
            options["bpda"] = bpda
        return create_battery(version, ctx.threat, **options)
    if column.kind == "battery":  # a registered battery by name, with its options
        return create_battery(s["battery"], ctx.threat, **dict(s.get("options", {})))
    if column.kind == "transfer":
        # ``attack``: one carried column, or several (the per-sample worst case of them all)
        carried = [s["attack"]] if isinstance(s["attack"], str) else list(s["attack"])
        surrogate = deterministic_twin(model) if s["source"] == "twin" else ctx.model_of(s["source"], s["seed"])
        return Battery([Transfer(surrogate, make_attack(ctx, ctx.columns[c])) for c in carried], column.name,
                       labels=None if len(carried) == 1 else [f"transfer {c}" for c in carried])
    return Battery([make_attack(ctx, column)], column.name)


def _attack(ctx: EvalContext, model: nn.Module, column: Column, variant: str, seed: int) -> Record:
    if column.kind == "transfer" and column.settings["source"] != "twin":
        column = Column(column.name, column.kind, column.header, {**column.settings, "seed": seed})
    name = f"{variant} s{seed} {column.name}"
    battery = battery_of(ctx, model, column)
    res = run_battery(model, ctx.eval_set, battery, threat=ctx.threat, n=len(ctx.eval_set),
                      batch_size=ctx.eval_batch_size, seed=seed, device=ctx.device,
                      state_dir=ctx.states(column), name=name)
    Ledger(ctx.out / "ledger.sqlite").add(res, extra={**ctx.ledger_extra, "run": name, "column": column.name})
    probs = res.probabilities()
    select = tuple(probs["select"][0].tolist()) if res.config.get("stochastic") else ()
    rec = Record.of_outcomes(
        variant, seed, column.name, "attack", probs["robust"][0].tolist(),
        clean_per_image=tuple(probs["clean"][0].tolist()), per_image_select=select,
        per_attack={k: a.robust_acc for k, a in res.per_attack.items()}, indices_sha256=res.indices_sha256,
        randomness=res.randomness, warnings=tuple(w.to_dict() for w in res.warnings))
    # the battery that ran (an ``auto`` AutoAttack column names its version only here)
    return replace(rec, settings={"battery": battery.name}) if column.settings.get("version") == "auto" else rec


def _unchanged(ctx: EvalContext, model: nn.Module, column: Column, variant: str, seed: int) -> Record:
    """The anti-perturbation ratio (feature-map-strides Table II): PGD at ``eps`` tries to move
    each attacked image's prediction away from the model's own clean prediction (right or wrong);
    an image counts when the verdict still gives that prediction."""
    s = column.settings
    seed_stochastic(model, seed)
    x = as_tensors(ctx.eval_set)[0]
    with torch.no_grad():
        own = torch.cat([predict(model, b.to(ctx.device)).cpu() for b in x.split(ctx.eval_batch_size)])
    threat = ThreatModel(ctx.threat.norm, float(s["eps"]))
    if threat.eps == 0:  # nothing can move: every prediction stays
        return Record.of_outcomes(variant, seed, column.name, "agreement", [1.0] * len(own))
    attack = PGD(threat, steps=int(s["steps"]), step_size=float(s["step_size"]), random_start=True,
                 early_stop=True)
    res = run_battery(model, (x, own), Battery([attack], column.name), threat=threat, n=len(own),
                      batch_size=ctx.eval_batch_size, seed=seed, device=ctx.device)
    return Record.of_outcomes(variant, seed, column.name, "agreement", res.probabilities()["robust"][0].tolist(),
                              randomness=res.randomness, warnings=tuple(w.to_dict() for w in res.warnings))


COLUMN_KINDS.register("clean", ColumnKind(_clean, "clean"), about="accuracy on clean test images")
COLUMN_KINDS.register("unchanged", ColumnKind(_unchanged, "agreement"),
                      about="fraction of predictions an attack leaves unchanged (anti-perturbation ratio)")
COLUMN_KINDS.register("corruptions", ColumnKind(_corruptions, "corruption"), about="mean corruption error")
for _kind in ("fgsm", "pgd", "deepfool", "square", "autoattack", "battery", "transfer"):
    COLUMN_KINDS.register(_kind, ColumnKind(_attack, "attack"), about=f"robust accuracy under {_kind}")


def evaluate_column(ctx: EvalContext, model: nn.Module, column: Column, variant: str, seed: int,
                    stochastic: bool, done: Callable[[str], Record | None]) -> Record:
    """Evaluate ``column`` on (variant, seed), or, on a deterministic model, repeat the column it
    stands for (``done`` gives a finished record by column name) or mark it not applicable."""
    t0 = time.perf_counter()
    if not stochastic and column.deterministic == "skip":
        return Record(variant, seed, column.name, COLUMN_KINDS.get(column.kind).record_kind,  # type: ignore[arg-type]
                      not_applicable="deterministic model", settings=dict(column.settings))
    if not stochastic and column.deterministic is not None:
        same = done(column.deterministic)
        if same is not None:
            return replace(same, column=column.name, same_as=same.column)
    rec = COLUMN_KINDS.get(column.kind).evaluate(ctx, model, column, variant, seed)
    settings = {**dict(column.settings), **dict(rec.settings)}
    return replace(rec, settings=settings, seconds=round(time.perf_counter() - t0, 2), stochastic=stochastic)
