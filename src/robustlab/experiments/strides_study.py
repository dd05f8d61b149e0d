"""The feature-map-strides study (``feature-map-strides.txt``) on Fashion-MNIST.

``robustlab run strides-study --profile quick|cpu|full``. A recipe on :mod:`.study`: every
variant is trained from scratch with a robust objective (TRADES unless the table varies the
objective) after its surgery (:func:`robustlab.defenses.shrink_strides`,
:func:`~robustlab.defenses.upsample_input`, :func:`~robustlab.defenses.swap_pooling`), then

- Table II analogue: the anti-perturbation ratio (predictions PGD leaves unchanged, right or
  wrong) over an eps grid, for stride patterns and input upsampling;
- Table III analogue: average vs max final pooling under the original and the shrunk pattern;
- Table V analogue: every objective x {original, shrunk} pattern with clean, FGSM, PGD-20,
  PGD-50, DeepFool and AutoAttack (Table I's settings: PGD relative step 0.25 and 1/30,
  DeepFool 50 steps, overshoot 0.02), and the per-sample worst case;
- the cost of each configuration (seconds per training epoch, FLOPs, activation memory).

``resnet-mini`` has three stages (strides ``1-2-2``, a 7x7 map before pooling on 28x28 images),
so the paper's ResNet-18 patterns map one to one onto it: ``1-2-2-2`` -> ``1-2-2``, the shrunk
``1-1-2-2`` -> ``1-1-2`` (map x2), ``1-1-1-2`` -> ``1-1-1`` (x4), ``2-2-2-2`` -> ``2-2-2`` (/2);
``--model resnet18`` takes the paper's four-stage patterns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.errors import InputError
from ..data import get_info
from ..defenses import parse_strides, stage_strides
from ..models import create_model
from .audits import audit_columns
from .claims import WORST, Claim, Side
from .columns import Column
from .prose import images_text, threat_text, train_images
from .report import Table, cells
from .study import DemoPart, Plan, Profile, Study, TrainingStudyConfig, register_study
from .variants import Train, TrainSpec, Variant

__all__ = ["PROFILES", "StridesStudyConfig", "plan"]

# Table V's rows: objective name and options beyond the threat model (each objective's own
# defaults are its paper's, see robustlab.train.robust)
OBJECTIVES: dict[str, tuple[str, tuple[tuple[str, Any], ...]]] = {
    "AT": ("pgd-at", ()), "ALP": ("alp", ()), "TRADES": ("trades", ()), "MART": ("mart", ()), "FAT": ("fat", ()),
    "AT-AWP": ("awp", (("base", "pgd-at"),)), "TRADES-AWP": ("awp", (("base", "trades"),)),
    "fast-AT": ("fast-at", ())}


@dataclass(frozen=True)
class StridesStudyConfig(TrainingStudyConfig):
    """The study's settings; :data:`PROFILES` holds the named ones.

    Attributes:
        base: the architecture's own stride pattern (the paper's ``1-2-2-2``).
        shrunk: the shrunk pattern (the paper's ``1-1-2-2``).
        patterns: Table II's stride patterns (besides ``base`` and ``shrunk``).
        upsample: Table II's input upsampling, ``(scale, mode)`` pairs, on the base pattern.
        pooling: run Table III (max pooling under ``base`` and ``shrunk``).
        architectures: Table IV's other networks as ``(model, original, shrunk)`` patterns.
        objectives: Table V's rows (keys of :data:`OBJECTIVES`).
        ratio_eps: Table II's eps grid (the paper's 2/255 .. 10/255 around its budget of 8/255,
            scaled to this eps as 1/4 .. 5/4 of it).
        train_steps: PGD steps of the attack inside training (the paper's PGD-10).
    """

    base: str = "1-2-2"
    shrunk: str = "1-1-2"
    patterns: tuple[str, ...] = ("2-2-2", "1-1-1")
    upsample: tuple[tuple[int, str], ...] = ((2, "nearest"), (3, "nearest"), (2, "bilinear"), (3, "bilinear"))
    pooling: bool = True
    architectures: tuple[tuple[str, str, str], ...] = ()
    objectives: tuple[str, ...] = ("AT", "ALP", "TRADES", "MART", "FAT", "AT-AWP", "TRADES-AWP")
    ratio_eps: tuple[float, ...] = (0.025, 0.05, 0.075, 0.1, 0.125)
    schedule: str = "onecycle"
    train_steps: int = 10
    pgd_relative_step: float = 0.25
    pgd50_relative_step: float = 1 / 30
    deepfool_steps: int = 50
    deepfool_overshoot: float = 0.02
    autoattack: bool = True


# Table IV: AlexNet and VGG16 as in Appendix B, PreActResNet18 as ResNet18
TABLE4 = (("alexnet", "2-2-2-2", "1-1-2-2"), ("vgg16", "2-2-2-2-2", "1-1-2-2-2"),
          ("preact-resnet18", "1-2-2-2", "1-1-2-2"))
PROFILES: dict[str, Profile] = {
    "quick": Profile(StridesStudyConfig(
        profile="quick", eval_n=32, clean_n=1000, patterns=(), upsample=(), pooling=False, objectives=("TRADES",),
        ratio_eps=(0.05, 0.1), epochs=3, train_limit=2000, train_steps=3, autoattack=False),
        "about 1 min on 2 CPU cores (60 s in the demo on 2026-12-07)", "TRADES with the original and the shrunk strides: clean, FGSM, PGD-20/50, DeepFool, "
        "anti-perturbation ratio; no AutoAttack, so no conclusion on it"),
    "cpu": Profile(StridesStudyConfig(profile="cpu", audit="full", seeds=(0, 1), eval_n=100, epochs=5, train_limit=5000),
                   "about 8 h on 2 CPU cores (estimated from epoch times)",
                   "every table and objective, two seeds, AutoAttack standard"),
    "full": Profile(StridesStudyConfig(profile="full", audit="full", model="resnet18", base="1-2-2-2", shrunk="1-1-2-2",
                                       patterns=("2-2-2-2", "1-1-1-2"), seeds=(0, 1, 2), eval_n=1000, clean_n=None,
                                       epochs=30, train_limit=None, eval_batch_size=500, architectures=TABLE4), "hours on one GPU (not measured: no GPU lent yet)",
                    "every table on the whole data, three seeds"),
}


def label(objective: str, pattern: str, extra: str = "") -> str:
    """A row label: objective, stride pattern and any other surgery."""
    return f"{objective} {pattern}" + (f" {extra}" if extra else "")


def columns(cfg: StridesStudyConfig) -> tuple[Column, ...]:
    """Every column, Table I's settings spelled out; with ``cfg.audit``, the audit of AutoAttack (of
    PGD-20 when the profile runs no AutoAttack)."""
    def pgd(steps: int, rel: float) -> dict[str, Any]:
        return {"steps": steps, "step_size": rel * cfg.eps, "random_start": True, "restarts": 1,
                "early_stop": True, "eot": 0}
    cols = (
        Column("clean", "clean", "Natural"),
        Column("fgsm", "fgsm", "FGSM"),
        Column("pgd20", "pgd", "PGD-20", pgd(20, cfg.pgd_relative_step)),
        Column("pgd50", "pgd", "PGD-50", pgd(50, cfg.pgd50_relative_step)),
        Column("deepfool", "deepfool", "DeepFool", {"steps": cfg.deepfool_steps, "overshoot": cfg.deepfool_overshoot,
                                                     "candidates": 10}),
        Column("aa", "autoattack", "AutoAttack", {"version": "standard", "eot": 1}),
        *[Column(f"unchanged-{e:g}", "unchanged", f"eps {e:g}", {"eps": e, **pgd(20, cfg.pgd_relative_step)})
          for e in cfg.ratio_eps],
    )
    return (*cols, *audit_columns(cfg, {"adaptive": next(c for c in cols if c.name == ("aa" if cfg.autoattack else "pgd20"))}))


def variant(cfg: StridesStudyConfig, objective: str, pattern: str, upsample: tuple[int, str] | None = None,
            pooling: str = "avg", arch: tuple[str, str] | None = None) -> Variant:
    """A model trained from scratch with ``objective`` after its surgery; ``arch`` is another
    architecture and its own stride pattern (Table IV), default the study's model."""
    model, base = arch or (cfg.model, cfg.base)
    surgery: list[tuple[str, tuple[tuple[str, Any], ...]]] = []
    if pattern != base:
        surgery.append(("strides", (("strides", pattern),)))
    if upsample is not None:
        surgery.append(("upsample-input", (("scale", upsample[0]), ("mode", upsample[1]))))
    if pooling != "avg":
        surgery.append(("global-pooling", (("kind", pooling),)))
    extra = " ".join([*([f"{upsample[1]} x{upsample[0]}"] if upsample else []), *(["max-pool"] if pooling != "avg" else [])])
    name, own = OBJECTIVES[objective]
    steps = () if name == "fast-at" else (("steps", cfg.train_steps),)  # fast-AT is one FGSM step
    # FAT's tau steps (epochs 50 and 90 of 120) and TRADES-AWP's warmup (10 of 120) at the same
    # fractions of this run's epochs, so a short run still reaches them
    if name == "fat":
        own = (*own, ("tau_milestones", (round(cfg.epochs * 50 / 120), round(cfg.epochs * 90 / 120))))
    if name == "awp" and ("base", "trades") in own:
        own = (*own, ("warmup", round(cfg.epochs * 10 / 120)))
    spec = TrainSpec(cfg.epochs, cfg.lr, cfg.schedule, name, (("eps", cfg.eps), *steps, *own), cfg.batch_size,
                     cfg.train_limit)
    name_of = label(objective, pattern, extra) if arch is None else f"{model} {pattern}"
    return Variant(name_of, Train(model, spec, tuple(surgery)))


def plan(cfg: StridesStudyConfig, baseline: str | None = None) -> Plan:
    """The variants, jobs, tables and claims of ``cfg``."""
    unknown = [o for o in cfg.objectives if o not in OBJECTIVES]
    if unknown:
        raise InputError(f"unknown strides-study objective {unknown[0]!r}; known: {', '.join(OBJECTIVES)}")
    stages = len(stage_strides(create_model(cfg.model, in_channels=get_info(cfg.dataset).in_channels)))
    if any(len(parse_strides(p)) != stages for p in (cfg.base, cfg.shrunk, *cfg.patterns)):
        raise InputError(f"strides-study: {cfg.model} has {stages} stages but the profile's stride patterns "
                         f"({cfg.base}, {cfg.shrunk}) have {len(parse_strides(cfg.base))}; use the full profile for "
                         "resnet18 (1-2-2-2 vs 1-1-2-2) or a model with as many stages")
    cols = columns(cfg)
    ratio = tuple(f"unchanged-{e:g}" for e in cfg.ratio_eps)
    attacks = ("clean", "fgsm", "pgd20", "pgd50", "deepfool", *(["aa"] if cfg.autoattack else []))
    t5 = [variant(cfg, o, p) for o in cfg.objectives for p in (cfg.base, cfg.shrunk)]
    t2 = [variant(cfg, "TRADES", p) for p in (*cfg.patterns, cfg.base, cfg.shrunk)]
    t2 += [variant(cfg, "TRADES", cfg.base, up) for up in cfg.upsample]
    t3 = [variant(cfg, "TRADES", p, pooling=k) for p in (cfg.base, cfg.shrunk) for k in ("avg", "max")] if cfg.pooling else []
    t4 = [variant(cfg, "TRADES", p, arch=(model, base)) for model, base, shrunk in cfg.architectures
          for p in (base, shrunk)]
    variants = list({v.label: v for v in [*t5, *t2, *t3, *t4]}.values())
    jobs: dict[str, tuple[str, ...]] = {}  # per variant, every column any table asks of it
    for v, cols_of in [*[(v, attacks + ratio) for v in t5], *[(v, ("clean", "pgd20", *ratio)) for v in [*t2, *t3, *t4]]]:
        jobs[v.label] = tuple(dict.fromkeys([*jobs.get(v.label, ()), *cols_of]))
    shrunk = variant(cfg, cfg.objectives[0], cfg.shrunk).label  # the audit: the first objective with shrunk strides
    jobs[shrunk] = (*jobs.get(shrunk, ()), *[c.name for c in cols if c.kind == "audit"])
    tables = [Table("table5", "Table V analogue: objectives with the original and the shrunk strides",
                    f"Every objective trained from scratch ({cfg.epochs} epochs) with the original ({cfg.base}) and the "
                    f"shrunk ({cfg.shrunk}) strides; the per-sample worst case over every attack.",
                    tuple(v.label for v in t5), cells(cols, attacks), worst=True),
              Table("table2", "Table II analogue: predictions left unchanged by PGD-20 (anti-perturbation ratio)",
                    "Right or wrong, the share of predictions an attack at each eps does not move.",
                    tuple(dict.fromkeys(v.label for v in t2)), cells(cols, ratio))]
    if t4:
        tables.append(Table("table4", "Table IV analogue: other architectures, original vs shrunk strides",
                            "Each architecture with its own strides and the paper's shrunk ones (Appendix B), TRADES.",
                            tuple(v.label for v in t4), cells(cols, ("clean", "pgd20"))))
    if t3:
        tables.append(Table("table3", "Table III analogue: average vs max pooling", "",
                            tuple(v.label for v in t3), cells(cols, ("clean", "pgd20"))))
    return Plan(tuple(variants), cols, tuple(jobs.items()), tuple(tables), claims(cfg), cost=True,
                paper="CIFAR-10 with ResNet-18 (its Tables II, III and V)")


def claims(cfg: StridesStudyConfig) -> tuple[Claim, ...]:
    """The paper's claims about shrinking strides, one row per objective and measure."""
    table5 = {"AT": ("84.15 -> 86.17", "52.80 -> 53.24", "48.72 -> 49.83"),
              "ALP": ("86.53 -> 88.11", "50.88 -> 51.36", "47.38 -> 49.00"),
              "TRADES": ("82.56 -> 84.13", "53.50 -> 55.37", "49.71 -> 51.24"),
              "MART": ("82.77 -> 84.67", "52.44 -> 53.00", "47.29 -> 47.97"),
              "FAT": ("87.34 -> 88.31", "43.90 -> 42.55 (a drop)", "41.56 -> 40.93 (a drop)"),
              "AT-AWP": ("82.32 -> 84.05", "54.47 -> 54.75", "49.52 -> 50.23"),
              "TRADES-AWP": ("82.69 -> 84.36", "55.90 -> 57.14", "51.84 -> 53.51")}
    rows = []
    for o in cfg.objectives:
        nat, pgd, aa = table5.get(o, ("—", "—", "—"))
        a, b = label(o, cfg.shrunk), label(o, cfg.base)
        rows += [Claim(f"{o}: shrunk strides raise natural accuracy", f"{nat}, Table V (CIFAR-10)",
                       Side(a, "clean"), Side(b, "clean")),
                 Claim(f"{o}: shrunk strides raise PGD-20 accuracy", f"{pgd}, Table V", Side(a, "pgd20"), Side(b, "pgd20")),
                 Claim(f"{o}: shrunk strides raise AutoAttack accuracy", f"{aa}, Table V", Side(a, "aa"), Side(b, "aa")),
                 Claim(f"{o}: shrunk strides raise the worst case over every attack", "not in the paper",
                       Side(a, WORST), Side(b, WORST), "describe")]
    hi = f"unchanged-{max(cfg.ratio_eps):g}"
    rows += [Claim("Shrunk strides leave more predictions unchanged", "45.91 -> 47.44 at 10/255, Table II",
                   Side(label("TRADES", cfg.shrunk), hi), Side(label("TRADES", cfg.base), hi))]
    paper4 = {"alexnet": "70.56 -> 76.29 natural, 36.57 -> 39.50 PGD-20", "vgg16": "79.61 -> 84.47, 43.28 -> 48.61",
              "preact-resnet18": "82.58 -> 83.92, 53.05 -> 54.64"}
    for model, base, shrunk in cfg.architectures:
        for col, what in (("clean", "natural"), ("pgd20", "PGD-20")):
            rows.append(Claim(f"{model}: shrunk strides raise {what} accuracy", f"{paper4.get(model, '—')}, Table IV",
                              Side(f"{model} {shrunk}", col), Side(f"{model} {base}", col)))
    if cfg.pooling:
        rows += [Claim("With shrunk strides, average pooling beats max pooling", "84.13 vs 81.12 natural, Table III",
                       Side(label("TRADES", cfg.shrunk), "clean"), Side(label("TRADES", cfg.shrunk, "max-pool"), "clean")),
                 Claim("... and under PGD-20", "55.37 vs 52.87, Table III", Side(label("TRADES", cfg.shrunk), "pgd20"),
                       Side(label("TRADES", cfg.shrunk, "max-pool"), "pgd20"))]
    if (3, "nearest") in cfg.upsample:
        rows += [Claim("Shrinking strides resists perturbation better than upsampling x3", "47.44 vs 46.82, Table II",
                       Side(label("TRADES", cfg.shrunk), hi), Side(label("TRADES", cfg.base, "nearest x3"), hi),
                       "describe")]
    return tuple(rows)


def intro(cfg: StridesStudyConfig, facts: Mapping[str, Any]) -> str:
    """The report's opening paragraph."""
    return (
        f"{cfg.model} on {cfg.dataset}: every model trained from scratch for {cfg.epochs} epochs ({cfg.schedule}, lr "
        f"{cfg.lr:g}, batch {cfg.batch_size}) on {train_images(facts, cfg.train_limit)} training images with "
        f"PGD-{cfg.train_steps} inside its objective, {threat_text(cfg)}. {images_text(facts)}")


def demo_about(cfg: StridesStudyConfig) -> str:
    """The demo report's sentence on the study."""
    scale = math.prod(parse_strides(cfg.base)) / math.prod(parse_strides(cfg.shrunk))
    larger = "twice" if scale == 2 else f"{scale:g} times"
    return (f"{' / '.join(cfg.objectives)}-trained models with the original strides and the shrunk ones (feature maps "
            f"{larger} as large before the average pooling), {threat_text(cfg)}.")


register_study(Study("strides-study", "Feature-map strides study", "feature-map-strides.txt", PROFILES, plan, intro,
                     DemoPart(2, demo_about, inherits=("dataset",))))
