"""The stochastic-downsampling study (``stochastic-downsampling.txt``), run honestly.

``robustlab run sd-study --profile quick|cpu|full``. A recipe on :mod:`.study`:

1. **Baseline**: the architecture trained with cross-entropy until the training loss settles
   (App. A.3), or a checkpoint given as ``baseline``; made once and shared by every seed.
2. **Finetuning** (Sec. 3, App. A.3): every method converts the baseline's strided convolutions
   (:func:`robustlab.defenses.convert_downsampling`) and is finetuned 5 epochs with SGD and cosine
   annealing, per seed. Scaled to Fashion-MNIST: the paper finetunes pretrained ConvNeXts at 5e-5
   to 4e-4; a ``resnet-mini`` trained from scratch on 28x28 images needs 1e-2 for the new
   downsamplers to be absorbed in 5 epochs (its base rate is 0.1).
3. **Columns** (Sec. 4.1: L-inf, eps = 4/255, alpha = 0.01): Table 1's i.i.d. accuracy, PGD,
   AutoAttack standard, Square and mCE on a Fashion-MNIST-C made here; the honest columns the paper
   lacks: PGD with EOT, AutoAttack ``rand`` (APGD-CE and APGD-DLR with EOT), PGD transferred from
   the model's deterministic twin, and the per-sample worst case; Table 3 (AddNoise sweep with and
   without SD), Table 4 (attacks transferred from the baseline), Table 5 (samples per pixel).
4. **Claims**: the paper's claims about SD as rows (:data:`claims`), checked from the records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.errors import InputError
from ..data.corruptions import NAMES, SEVERITIES
from .audits import audit_columns
from .claims import WORST, Claim, Side
from .columns import Column
from .prose import dataset_name, norm_text
from .report import Cell, Plot, Table, cells
from .study import DemoPart, Plan, Profile, Study, StudyConfig, register_study
from .variants import Convert, Load, Train, TrainSpec, Variant

__all__ = ["PROFILES", "SDStudyConfig", "claims", "plan"]


@dataclass(frozen=True)
class SDStudyConfig(StudyConfig):
    """The study's settings; :data:`PROFILES` holds the named ones. Variant fields hold row labels
    (:func:`catalog`); ``noise_sweep`` and ``spp_sweep`` are Table 3's standard deviations and Table
    5's samples per pixel."""

    eps: float = 4 / 255
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_n: int = 200
    baseline_epochs: int = 4
    baseline_lr: float = 0.1
    baseline_limit: int | None = None
    finetune_epochs: int = 5
    finetune_lr: float = 0.01
    finetune_limit: int | None = 5000
    batch_size: int = 128
    pgd_steps: int = 20
    pgd_alpha: float = 0.01
    square_queries: int = 5000
    autoattack: bool = True
    eot_draws: tuple[int, ...] = (20, 64)
    aa_rand: bool = True
    aa_rand_eot: int = 20
    twin_transfer: bool = True
    corruption_n: int = 500
    table1: tuple[str, ...] = ("Baseline", "ASAP", "FLC", "AvgPool", "DropOut + AvgPool", "BlurPool",
                               "AddNoise (uniform)", "AddNoise (std=0.75)", "SD", "SD + AddNoise (std=0.15)")
    noise_sweep: tuple[float, ...] = (0.05, 0.15, 0.5, 1.0)
    spp_sweep: tuple[int, ...] = (1, 2, 4, 8, 16)
    transfer_from_baseline: tuple[str, ...] = ("Baseline", "AddNoise (std=0.75)", "SD", "SD + AddNoise (std=0.15)")


QUICK_TABLE1 = ("Baseline", "AvgPool", "AddNoise (std=0.75)", "SD", "SD + AddNoise (std=0.15)")
PROFILES: dict[str, Profile] = {
    "quick": Profile(SDStudyConfig(
        profile="quick", audit="demo", audited=("adaptive",), seeds=(0,), finetune_limit=1500, eval_n=32, clean_n=1000, pgd_steps=10, square_queries=200,
        autoattack=False, eot_draws=(20,), aa_rand=False, corruption_n=100, table1=QUICK_TABLE1, noise_sweep=(),
        spp_sweep=(1, 2)), "about 2.5 min on 2 CPU cores on the demo's baseline (114 s in the demo on 2026-12-07, which runs it without its audit)",
        "the demo's slice: one seed, five methods, cheap attacks; no AutoAttack, so no conclusion on adaptive attacks"),
    "cpu": Profile(SDStudyConfig(
        profile="cpu", audit="full", baseline_epochs=6, finetune_limit=2000, eval_n=100, clean_n=2000, pgd_steps=10,
        square_queries=1000, corruption_n=200, noise_sweep=(0.5,)), "a few hours on 2 CPU cores",
        "every table and column: three seeds, AutoAttack standard and rand at the reference settings, EOT-20 and 64"),
    "full": Profile(SDStudyConfig(
        profile="full", audit="full", baseline_epochs=15, finetune_limit=None, eval_n=1000, eval_batch_size=500, corruption_n=10000,
        noise_sweep=(0.05, 0.1, 0.15, 0.3, 0.5, 0.75, 0.9, 1.0)), "hours on one GPU",
        "the paper's scale: the full finetuning set, 1000 attacked images, Square at 5000 queries"),
}


def catalog(cfg: SDStudyConfig) -> dict[str, tuple[str, tuple[tuple[str, Any], ...]]]:
    """Every row label of ``cfg`` -> its downsampling method and options (the paper's naming)."""
    rows: dict[str, tuple[str, tuple[tuple[str, Any], ...]]] = {
        "ASAP": ("asap", ()), "FLC": ("flc", ()), "AvgPool": ("avgpool", ()), "DropOut + AvgPool": ("dropout-avgpool", ()),
        "BlurPool": ("blurpool", ()),
        # the paper gives no range; U[-0.5, 0.5] has the width of torch.rand
        "AddNoise (uniform)": ("addnoise", (("distribution", "uniform"), ("std", 0.5)))}
    for std in (0.75, *cfg.noise_sweep):
        rows[f"AddNoise (std={std:g})"] = ("addnoise", (("std", std),))
    for std in (0.15, *cfg.noise_sweep):
        rows[f"SD + AddNoise (std={std:g})"] = ("sd+addnoise", (("std", std),))
    for spp in (2, *cfg.spp_sweep):
        rows[spp_label(spp)] = ("sd", () if spp == 2 else (("spp", spp),))
    return rows


def spp_label(spp: int) -> str:
    """Table 5's row for ``spp`` samples per pixel (the default 2 is plain SD)."""
    return "SD" if spp == 2 else f"SD (spp={spp})"


def columns(cfg: SDStudyConfig) -> tuple[Column, ...]:
    """Every column, with its settings spelled out; with ``cfg.audit``, the audits of SD's PGD (the
    paper's protocol) and of its first EOT column."""
    pgd = {"steps": cfg.pgd_steps, "step_size": cfg.pgd_alpha, "random_start": True, "restarts": 1, "early_stop": True}
    cols = (
        Column("clean", "clean", "i.i.d. acc"),
        Column("pgd", "pgd", "PGD", {**pgd, "eot": 0}),
        Column("aa", "autoattack", "AutoAttack", {"version": "standard", "eot": 1}),
        Column("square", "square", "Square", {"queries": cfg.square_queries, "p_init": 0.8}),
        Column("mce", "corruptions", "mCE", {"n": cfg.corruption_n}),
        *[Column(f"pgd-eot{k}", "pgd", f"PGD + EOT-{k}", {**pgd, "eot": k}, deterministic="pgd") for k in cfg.eot_draws],
        Column("aa-rand", "autoattack", "AA rand (EOT)", {"version": "rand", "eot": cfg.aa_rand_eot}, "skip"),
        Column("twin", "transfer", "transfer from twin", {"source": "twin", "attack": "pgd"}, "skip"),
        Column("tb-pgd", "transfer", "PGD (transfer)", {"source": "Baseline", "attack": "pgd"}),
        Column("tb-aa", "transfer", "AutoAttack (transfer)", {"source": "Baseline", "attack": "aa"}),
    )
    offered = {"paper": cols[1], **({"adaptive": cols[5]} if cfg.eot_draws else {})}  # PGD; the first EOT column
    return (*cols, *audit_columns(cfg, offered))


CONCLUSIVE = ("not conclusive about adaptive robustness: see the cpu profile (`robustlab run sd-study --profile cpu`, "
              "report at `runs/sd-study-cpu/report.md`)")
RANDOMIZED_NOTE = ("The paper's protocol columns (PGD, AutoAttack standard, Square) attack randomized models without "
                   "EOT by design; the EOT, AutoAttack rand and transfer columns are the adaptive ones.")


def claims(cfg: SDStudyConfig) -> tuple[Claim, ...]:
    """The paper's claims about SD. Where the paper calls a loss "marginal" or a model "almost
    unaffected", the threshold is the paper's own loss (ImageNet-100, Table 1), rounded up."""
    sd, base, an = Side("SD", "clean"), Side("Baseline", "clean", name="baseline"), Side("AddNoise (std=0.75)", "clean")
    own = "the paper's own, rounded up"
    rows = [
        Claim("Marginal drop in i.i.d. accuracy", "89.05 -> 86.83 (-2.22 pp), Table 1", sd, base, "no-worse-than", 0.025, own),
        Claim("Insignificant drop in generalization (mCE)", "mCE 34.94 -> 38.34 (+3.40 pp), Table 1",
              Side("SD", "mce"), Side("Baseline", "mce", name="baseline"), "no-worse-than", 0.035, own),
        Claim("Robust to PGD (the paper's protocol, no EOT)", "0.51 -> 40.81, Table 1", Side("SD", "pgd"),
              Side("Baseline", "pgd", name="baseline")),
        Claim("Robust to AutoAttack standard", "0 -> 2.5, Table 1", Side("SD", "aa"), Side("Baseline", "aa", name="baseline")),
        Claim(f"Robust to black-box Square ({cfg.square_queries} queries)", "36.26 -> 83.08, Table 1",
              Side("SD", "square"), Side("Baseline", "square", name="baseline")),
        Claim("Almost unaffected under Square", "86.83 clean -> 83.08 (-3.75 pp), Table 1", Side("SD", "square"),
              Side("SD", "square", "clean", "SD clean"), "no-worse-than", 0.04, own),
        Claim("Better i.i.d. accuracy than AddNoise (std=0.75)", "86.83 vs 83.53, Table 1", sd, an),
        Claim("Lower mCE than AddNoise (std=0.75)", "38.34 vs 42.96, Table 1", Side("SD", "mce"),
              Side("AddNoise (std=0.75)", "mce")),
        Claim("Transfer from the baseline hurts SD less than AddNoise (std=0.75)", "75.06 vs 45.24, Table 4",
              Side("SD", "tb-pgd"), Side("AddNoise (std=0.75)", "tb-pgd")),
    ]
    if len(cfg.spp_sweep) >= 2:
        lo, hi = min(cfg.spp_sweep), max(cfg.spp_sweep)
        rows.append(Claim("PGD robustness falls as samples per pixel grow", "50.22 at spp=1, 9.06 at spp=16, Table 5",
                          Side(spp_label(lo), "pgd", name=f"spp={lo}"), Side(spp_label(hi), "pgd", name=f"spp={hi}")))
    adaptive = "no claim in the paper (it runs no adaptive attack)"
    rows += [Claim(f"PGD with EOT-{k} against SD", adaptive, Side("SD", f"pgd-eot{k}", name=f"SD EOT-{k}"),
                   Side("SD", "pgd", name="SD plain PGD"), "describe") for k in cfg.eot_draws]
    rows += [
        Claim("AutoAttack rand against SD", adaptive, Side("SD", "aa-rand", name="SD AA rand"),
              Side("SD", "aa", name="SD AA standard"), "describe"),
        Claim("PGD crafted on SD's deterministic twin", adaptive, Side("SD", "twin", name="SD twin transfer"),
              Side("SD", "pgd", name="SD plain PGD"), "describe"),
        Claim("Does not provide a false sense of security", "Sec. 5 (no adaptive attack run)", Side("SD", WORST),
              Side("Baseline", WORST, name="baseline"), needs=("aa", "aa-rand"),
              inconclusive=CONCLUSIVE,
              words=("a robustness gain survives adaptive attacks",
                     "no robustness gain is shown once adaptive attacks are used, at this sample size",
                     "SD is less robust than the baseline under adaptive attacks")),
    ]
    return tuple(rows)


def plan(cfg: SDStudyConfig, baseline: str | None = None) -> Plan:
    """The variants, jobs, tables and claims of ``cfg``."""
    finetune = TrainSpec(cfg.finetune_epochs, cfg.finetune_lr, "cosine", batch_size=cfg.batch_size,
                         limit=cfg.finetune_limit)
    make_base = Load(baseline) if baseline else Train(cfg.model, TrainSpec(
        cfg.baseline_epochs, cfg.baseline_lr, "onecycle", batch_size=cfg.batch_size, limit=cfg.baseline_limit))
    sweep = [*[f"AddNoise (std={s:g})" for s in cfg.noise_sweep],
             *[f"SD + AddNoise (std={s:g})" for s in cfg.noise_sweep], "SD"]
    rows3 = tuple(dict.fromkeys(["Baseline", *[r for r in cfg.table1 if "AddNoise" in r], *sweep]))
    rows5 = tuple(spp_label(p) for p in cfg.spp_sweep)
    labels = dict.fromkeys([*cfg.table1, *rows3, *cfg.transfer_from_baseline, *rows5])
    variants, known = [Variant("Baseline", make_base, per_seed=False)], catalog(cfg)
    for label in labels:
        if label != "Baseline":
            if label not in known:
                raise InputError(f"unknown sd-study row {label!r}; known rows: Baseline, {', '.join(known)}")
            name, options = known[label]
            variants.append(Variant(label, Convert("Baseline", "downsampling", (("method", name), *options), finetune)))
    cols1 = ("clean", "pgd", *(["aa"] if cfg.autoattack else []), "square", "mce",
             *[f"pgd-eot{k}" for k in cfg.eot_draws], *(["aa-rand"] if cfg.aa_rand else []),
             *(["twin"] if cfg.twin_transfer else []))
    cols3 = ("clean", "aa" if cfg.autoattack else "pgd", "mce", *(["aa-rand"] if cfg.aa_rand else []))
    cols4 = ("tb-pgd", *(["tb-aa"] if cfg.autoattack else []))
    cols5 = ("clean", "pgd", *[f"pgd-eot{k}" for k in cfg.eot_draws[:1]])
    cols = columns(cfg)
    aa_parts = tuple(Cell("aa", a, a) for a in ("apgd-ce", "apgd-t", "fab-t", "square"))
    cells3 = (Cell("clean", "i.i.d. acc"), *(aa_parts if cfg.autoattack else [Cell("pgd", "PGD")]), Cell("mce", "mCE"),
              *([Cell("aa-rand", "AA rand (EOT)")] if cfg.aa_rand else []))
    # seed-major, what the verdict needs first: Table 1's baseline, SD and AddNoise rows, Table 5,
    # the transferred PGD of Table 4, then Table 4's AutoAttack on those three rows (their worst
    # case waits for it); then Table 1's other rows; the costly extras last
    needed = ("Baseline", "SD", "AddNoise (std=0.75)")
    jobs = [*[(r, cols1) for r in cfg.table1 if r in needed], *[(r, cols5) for r in rows5],
            *[(r, ("tb-pgd",)) for r in cfg.transfer_from_baseline],
            *[(r, cols4) for r in cfg.transfer_from_baseline if r in needed], *[(r, cols1) for r in cfg.table1 if r not in needed],
            *[(r, cols4) for r in cfg.transfer_from_baseline if r not in needed], *[(r, cols3) for r in rows3]]
    jobs += [("SD", tuple(c.name for c in cols if c.kind == "audit"))] if cfg.audit and "SD" in cfg.table1 else []
    eots = ", ".join(f"EOT-{k}" for k in cfg.eot_draws)
    tables = (
        Table("table1", "Table 1 analogue, with the honest columns the paper lacks",
              f"The paper's columns (i.i.d., PGD, AutoAttack, Square, mCE) come first; then PGD with {eots} "
              f"(expectation over the model's randomness), AutoAttack `rand` (APGD-CE and APGD-DLR with "
              f"EOT-{cfg.aa_rand_eot}), PGD crafted on the deterministic twin (same weights, SD sampling pixel "
              "centres, AddNoise off) and transferred, and the per-sample worst case over every attack run on the "
              "model. On deterministic models EOT equals the plain gradient, so those cells repeat PGD; `n/a` marks "
              "a column that does not apply to a deterministic model, `—` what was not run.",
              tuple(cfg.table1), cells(cols, cols1), worst=True),
        Table("table3", "Table 3 analogue: AddNoise with and without SD",
              "AutoAttack's attacks as cumulative columns (robust accuracy once that attack and all before it have "
              "run), as the paper's Table 3." if cfg.autoattack else "This profile skips AutoAttack; PGD stands in.",
              rows3, cells3),
        Table("table4", "Table 4 analogue: attacks transferred from the baseline", "", tuple(cfg.transfer_from_baseline),
              cells(cols, cols4)),
        Table("table5", "Table 5 analogue: samples per pixel", "", rows5, cells(cols, cols5)),
    )
    return Plan(tuple(variants), cols, tuple(jobs), tables, claims(cfg),
                Plot("clean_vs_robust.png", "table1", Cell("clean", "clean (i.i.d.) accuracy"),
                     Cell("pgd", "PGD (the paper's protocol)"), f"{cfg.model} on {cfg.dataset}: clean vs robust accuracy"),
                paper="ImageNet-100 (ConvNeXt-tiny finetuned 5 epochs, L-inf eps 4/255)",
                verdict_note="Claims the paper phrases as \"marginal\" or \"almost unaffected\" are held to the paper's own "
                             "loss.", notes={"randomized-without-eot": RANDOMIZED_NOTE})


def intro(cfg: SDStudyConfig, facts: Mapping[str, Any]) -> str:
    """The report's opening paragraph: model, data, settings, device and time."""
    ft = facts["train_images"].get(str(cfg.finetune_limit), "?")
    return (
        f"{cfg.model} on {cfg.dataset}. Baseline trained with cross-entropy ({cfg.baseline_epochs} epochs, or the "
        f"checkpoint given); every method converts its strided convolutions and is finetuned {cfg.finetune_epochs} "
        f"epochs (SGD, cosine, lr {cfg.finetune_lr:g}) on {ft} training images, per seed. Clean accuracy on "
        f"{facts['clean_images']} test images; attacks on the first {facts['eval_images']} test images, {_eps(cfg)}, "
        f"PGD {cfg.pgd_steps} steps of {cfg.pgd_alpha:g} with a random start; Square {cfg.square_queries} queries; "
        f"mCE = mean error over {len(NAMES)} corruptions x {len(SEVERITIES)} severities of "
        f"{min(cfg.corruption_n, facts['clean_images'])} generated {dataset_name(cfg.dataset)}-C images. Randomized "
        "models are judged by a fresh prediction on every adversarial example.")


def _eps(cfg: SDStudyConfig) -> str:
    return f"{norm_text(cfg.norm)} eps = {cfg.eps:.4g} ({cfg.eps * 255:.3g}/255)"


def demo_about(cfg: SDStudyConfig) -> str:
    """The demo report's sentence on the study."""
    return (f"The standard model above is the baseline; every method replaces its strided convolutions and is "
            f"finetuned {cfg.finetune_epochs} epochs. The paper's protocol: {_eps(cfg)}, PGD as in its Sec. 4.1, plus "
            "the adaptive attacks it lacks (EOT, transfer from the deterministic twin).")


register_study(Study("sd-study", "Stochastic Downsampling study", "stochastic-downsampling.txt", PROFILES, plan,
                     intro, DemoPart(1, demo_about, baseline="standard")))
