"""The arena: every defense of the five papers side by side, under one adaptive battery.

``robustlab run arena --profile quick|cpu|l2|full``: each defense trained with its paper's recipe
(the studies' own recipe functions, scaled as their studies scale them) at one matched training
budget in forward-backward passes per training image (:mod:`.arena`), beside the baselines the
papers compare with (standard, PGD-AT, TRADES, fast-AT); then one battery for every row at one
eps: clean; AutoAttack ``standard`` on a deterministic model and ``rand`` (EOT, with BPDA where the
model declares surrogates) on a randomized one (``version="auto"``); Square on the expected margin;
transfer from the model's deterministic twin (SD, AddNoise) and from the PGD-AT model; each paper's
own protocol, reported beside the rest and counted in the worst case (it can only lower it); the
audit of the AutoAttack column. The report opens with the answer (one row per defense), then the
table with seeds, the claims (each paper's headline against PGD-AT), the cost and the figures.

The ``quick`` profile is the demo's: its rows load the studies' quick models (``reuse``, which the
demo fills in) instead of training new ones, so its budgets are the studies', not matched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from . import dcs_study, gradnorm_study, sparse_study, strides_study
from .arena import answer_table, epochs_for, passes_per_epoch, plots
from .audits import audit_columns, split_audits
from .claims import WORST, Claim, Side
from .columns import Column, pgd_settings
from .prose import images_text, threat_text, train_images
from .report import Cell, Table, cells
from .study import DemoPart, Plan, Profile, Study, TrainingStudyConfig, register_study
from .variants import Convert, Load, Train, TrainSpec, Variant

__all__ = ["ArenaConfig", "PROFILES", "ROWS", "plan"]

STANDARD, PGD_AT, TRADES, FAST_AT = "Standard", "PGD-AT", "TRADES", "fast-AT"
SD, ADDNOISE = "SD", "AddNoise (std=0.75)"
SPARSE, SPARSE_ENS = "Sparse encoder", "Sparse encoder, ensemble"
STRIDES = "Shrunk strides + TRADES"
GRADNORM, EDGE = "GradNorm GELU", "EdgeAlign GELU"
DCS, DCS_ENS = "DCS + GSAT", "DCS + GSAT, ensemble"
ROWS = (STANDARD, PGD_AT, TRADES, FAST_AT, SD, ADDNOISE, SPARSE, SPARSE_ENS, STRIDES, GRADNORM, EDGE, DCS, DCS_ENS)
BASELINES = (STANDARD, PGD_AT, TRADES, FAST_AT)
PAPER = {SD: "paper-pgd", ADDNOISE: "paper-pgd", SPARSE: "paper-sparse", SPARSE_ENS: "paper-sparse",
         STRIDES: "aa", GRADNORM: "aa", EDGE: "aa", DCS: "paper-dcs", DCS_ENS: "paper-dcs"}
"""Each defense's own protocol: SD's PGD without EOT, the sparse encoder's W-NFGA (smooth BPDA,
EOT), DCS's fixed-path PGD (Algorithm 2); the strides and gradient-norm papers report AutoAttack
standard, which is the battery's own column on their deterministic models."""
TWINS = (SD, ADDNOISE)  # the rows with a deterministic twin (the same weights without the randomness)
AUDITED = "audit-aa"


@dataclass(frozen=True)
class ArenaConfig(TrainingStudyConfig):
    """The arena's settings; :data:`PROFILES` holds the named ones.

    Attributes:
        rows: the defenses and baselines in the arena (:data:`ROWS`).
        budget: forward-backward passes per training image every trained row gets (its epochs:
            :func:`~.arena.epochs_for`); SD and AddNoise finetune the standard row's model for
            ``finetune_epochs`` on ``finetune_limit`` images on top of it (the paper's recipe).
        at_steps: PGD steps inside PGD-AT, TRADES, GSAT and the shrunk-strides TRADES.
        train_eps: the training threat's L-inf eps (``None``: the evaluation's ``eps``), so the
            ``l2`` profile attacks the L-inf models at the dataset's L2 radius.
        aa_eot, square_queries, square_eot, paper_steps, paper_eot, ensemble_draws: the battery.
        reuse: ``(row, checkpoint)`` pairs loaded instead of trained (the demo's quick models).
    """

    rows: tuple[str, ...] = ROWS
    budget: float = 12.0
    at_steps: int = 3
    train_eps: float | None = None
    train_limit: int | None = 5000
    finetune_epochs: int = 5
    finetune_limit: int | None = 2000
    aa_eot: int = 20
    square_queries: int = 1000
    square_eot: int = 10
    paper_steps: int = 20
    paper_eot: int = 10
    ensemble_draws: int = 10
    dict_images: int = 2000
    reuse: tuple[tuple[str, str], ...] = ()


QUICK_ROWS = (STANDARD, PGD_AT, SD, ADDNOISE, SPARSE, STRIDES, GRADNORM, EDGE, DCS)
PROFILES: dict[str, Profile] = {
    "quick": Profile(ArenaConfig(
        profile="quick", audit="demo", rows=QUICK_ROWS, eval_n=32, clean_n=1000, budget=9, train_limit=3000, finetune_limit=1500,
        aa_eot=2, square_queries=100, square_eot=2, paper_steps=10, paper_eot=2, ensemble_draws=4, dict_images=400),
        "about 4 min on 2 CPU cores in the demo, which hands it the studies' quick models (223 s on 2026-12-07, audits included)",
        "nine rows (no TRADES, fast-AT or ensembles), 32 images, one seed, AA rand with 2 EOT draws, Square 100"),
    "cpu": Profile(ArenaConfig(
        profile="cpu", audit="quick", seeds=(0, 1, 2), eval_n=200, clean_n=2000, aa_eot=4, square_queries=300,
        square_eot=4, paper_eot=4, ensemble_draws=4),
        "hours on 2 CPU cores", "every row, three seeds, 200 images, 12 passes per training image on 5000 images"),
    "l2": Profile(ArenaConfig(
        profile="l2", audit="quick", norm="l2", eps=1.5, train_eps=0.1, seeds=(0, 1, 2), eval_n=200, clean_n=2000,
        aa_eot=4, square_queries=300, square_eot=4, paper_eot=4, ensemble_draws=4),
        "hours on 2 CPU cores", "the cpu profile's models (trained at L-inf 0.1) attacked at the dataset's L2 radius"),
    "full": Profile(ArenaConfig(
        profile="full", audit="full", seeds=(0, 1, 2), eval_n=1000, clean_n=None, budget=60, train_limit=None,
        finetune_limit=None, eval_batch_size=500, dict_images=10_000),
        "hours on one GPU (not measured: no GPU lent yet)", "every row on the whole data, 1000 images, reference settings"),
}


def _train_eps(cfg: ArenaConfig) -> float:
    return cfg.eps if cfg.train_eps is None else cfg.train_eps


def _spec(cfg: ArenaConfig, objective: str, options: tuple[tuple[str, Any], ...], lr: float | None = None,
          schedule: str = "onecycle") -> TrainSpec:
    epochs = epochs_for(cfg.budget, objective, dict(options))
    return TrainSpec(epochs, cfg.lr if lr is None else lr, schedule, objective, options, cfg.batch_size, cfg.train_limit)


def _at(cfg: ArenaConfig, objective: str) -> tuple[tuple[str, Any], ...]:
    return (("eps", _train_eps(cfg)),) + ((("steps", cfg.at_steps),) if objective != "fast-at" else ())


def makers(cfg: ArenaConfig) -> dict[str, Any]:
    """Every row's maker, each defense by its own study's recipe function at the arena's budget."""
    eps = _train_eps(cfg)
    sd_ft = TrainSpec(cfg.finetune_epochs, 0.01, "cosine", batch_size=cfg.batch_size, limit=cfg.finetune_limit)
    sparse = sparse_study.SparseStudyConfig(dataset=cfg.dataset, model=cfg.model, eps=eps, dict_images=cfg.dict_images)
    strides = strides_study.StridesStudyConfig(dataset=cfg.dataset, model=cfg.model, eps=eps, train_steps=cfg.at_steps,
                                               train_limit=cfg.train_limit, batch_size=cfg.batch_size)
    strides = replace(strides, epochs=epochs_for(cfg.budget, "trades", {"steps": cfg.at_steps}))
    gn = gradnorm_study.GradNormStudyConfig(dataset=cfg.dataset, model=cfg.model, eps=eps, activations=("gelu",),
                                            train_limit=cfg.train_limit, batch_size=cfg.batch_size)
    dcs = dcs_study.DcsStudyConfig(dataset=cfg.dataset, model=cfg.model, eps=eps, at_steps=cfg.at_steps,
                                   train_limit=cfg.train_limit, batch_size=cfg.batch_size,
                                   epochs=epochs_for(cfg.budget, "gsat", {"steps": cfg.at_steps}))
    gn_rows = gradnorm_study.variants(replace(gn, epochs=epochs_for(cfg.budget, "gradnorm", {})))
    edge_rows = gradnorm_study.variants(replace(gn, epochs=epochs_for(cfg.budget, "edge-align", {})))
    return {
        STANDARD: Train(cfg.model, _spec(cfg, "standard", ())),
        PGD_AT: Train(cfg.model, _spec(cfg, "pgd-at", _at(cfg, "pgd-at"))),
        TRADES: Train(cfg.model, _spec(cfg, "trades", _at(cfg, "trades"))),
        FAST_AT: Train(cfg.model, _spec(cfg, "fast-at", _at(cfg, "fast-at"))),
        SD: Convert(STANDARD, "downsampling", (("method", "sd"),), sd_ft),
        ADDNOISE: Convert(STANDARD, "downsampling", (("method", "addnoise"), ("std", 0.75)), sd_ft),
        SPARSE: Train(cfg.model, _spec(cfg, "standard", (), sparse.lr, "cyclic"), (sparse_study.front_end(sparse),)),
        SPARSE_ENS: Convert(SPARSE, "ensemble", (("draws", cfg.ensemble_draws),)),
        STRIDES: strides_study.variant(strides, "TRADES", strides.shrunk).make,
        GRADNORM: next(v.make for v in gn_rows if v.label == gradnorm_study.label(gradnorm_study.GRADNORM, "gelu")),
        EDGE: next(v.make for v in edge_rows if v.label == gradnorm_study.label(gradnorm_study.EDGE, "gelu")),
        DCS: Train(cfg.model, dcs_study.training(dcs, "gsat"), (dcs_study.dcs(dcs),)),
        DCS_ENS: Convert(DCS, "ensemble", (("draws", cfg.ensemble_draws),)),
    }


def passes(cfg: ArenaConfig, made: Mapping[str, Any], reused: Mapping[str, str]) -> dict[str, float]:
    """Per row trained here, forward-backward passes per training image over its whole training."""
    out: dict[str, float] = {}
    for row in [STANDARD, *cfg.rows]:
        if row in reused:
            continue
        m = made[row]
        if isinstance(m, Train):
            out[row] = m.train.epochs * passes_per_epoch(m.train.objective, dict(m.train.objective_options))
        elif isinstance(m, Convert) and m.source in out:
            ft = m.finetune
            extra = 0.0 if ft is None else ft.epochs * passes_per_epoch(ft.objective, dict(ft.objective_options)) * (
                (ft.limit or 1) / (cfg.train_limit or 1) if ft.limit and cfg.train_limit else 1.0)
            out[row] = round(out[m.source] + extra, 1)
    return out


def columns(cfg: ArenaConfig) -> tuple[Column, ...]:
    """The battery: every column at ``cfg.eps``, and with ``cfg.audit`` the audit of AutoAttack."""
    step = cfg.eps / 4
    full = pgd_settings(cfg.paper_steps, step, early_stop=False)  # a transfer maximizes the loss for its whole budget
    aa = Column("aa", "autoattack", f"AutoAttack (standard; rand, EOT-{cfg.aa_eot}, on randomized)",
                {"version": "auto", "eot": cfg.aa_eot, "bpda": "smooth"})
    return (Column("clean", "clean", "Clean"), aa,
            Column("square", "square", f"Square {cfg.square_queries} (expected margin)",
                   {"queries": cfg.square_queries, "p_init": 0.8, "eot": cfg.square_eot}, "skip"),
            Column("transfer-twin", "transfer", "Transfer from its twin", {"source": "twin", "attack": "pgd-full"}, "skip"),
            Column("transfer-at", "transfer", "Transfer from PGD-AT", {"source": PGD_AT, "attack": "pgd-full"}),
            Column("paper-pgd", "pgd", f"PGD-{cfg.paper_steps}, no EOT", pgd_settings(cfg.paper_steps, step)),
            Column("paper-sparse", "pgd", f"W-NFGA smooth (EOT-{cfg.paper_eot})", pgd_settings(
                cfg.paper_steps, cfg.eps / 8, random_start=False, early_stop=False, eot=cfg.paper_eot, bpda="smooth")),
            Column("paper-dcs", "battery", f"Fixed-path PGD-{cfg.paper_steps}",
                   {"battery": "dcs-paper", "options": {"steps": cfg.paper_steps, "step_size": step}}),
            Column("pgd-full", "pgd", f"PGD-{cfg.paper_steps} (full budget)", full),
            *audit_columns(cfg, {"adaptive": aa}))


def plan(cfg: ArenaConfig, baseline: str | None = None) -> Plan:
    """The variants, jobs, table and claims of ``cfg`` (``baseline``: the PGD-AT checkpoint)."""
    unknown = [r for r in cfg.rows if r not in ROWS]
    if unknown or PGD_AT not in cfg.rows:
        raise InputError(f"arena rows must include {PGD_AT} (every transfer's source and the claims' reference) and be "
                         f"among {', '.join(ROWS)}; got unknown {', '.join(unknown) or 'none'}")
    made, reuse = makers(cfg), dict(cfg.reuse) | ({PGD_AT: baseline} if baseline else {})
    needed = list(cfg.rows)
    for row in cfg.rows:  # a finetuned row needs its source, even one the table leaves out
        source = getattr(made[row], "source", None)
        if source and source not in needed and row not in reuse:
            needed.insert(0, source)
    variants = tuple(Variant(r, Load(reuse[r]), per_seed=False) if r in reuse else Variant(r, made[r]) for r in needed)
    cols = columns(cfg)
    every, audits = split_audits(cols)
    shared = ("clean", "aa", "square")

    def job(row: str) -> tuple[str, ...]:
        own = [PAPER[row]] if row in PAPER and PAPER[row] != "aa" else []
        return (*shared, *(["transfer-twin"] if row in TWINS else []), *(["transfer-at"] if row != PGD_AT else []),
                *own, *audits)

    jobs = tuple((row, job(row)) for row in cfg.rows)
    paper = Cell("paper", "Paper's protocol", per_row=tuple((r, PAPER.get(r, "")) for r in cfg.rows))
    table = Table("arena", "Every defense under one battery",
                  "Mean ± std over seeds. `Paper's protocol`: each defense's own evaluation (SD: PGD without EOT; the "
                  "sparse encoder: W-NFGA; DCS: fixed-path PGD; strides and gradient norm: AutoAttack standard); the "
                  "AutoAttack column runs `standard` on deterministic models (Square at 5000 queries included, hence "
                  "no Square column there) and `rand` with EOT (and BPDA through a declared surrogate) on randomized "
                  "ones, with Square on the expected margin beside it; transfers carry PGD run for its whole budget. The worst "
                  "case is per image over every attack the row met.",
                  tuple(cfg.rows), (*cells(cols, ("clean",)), paper, *cells(cols, ("aa", "square")),
                                    _only(cols, "transfer-twin", [r for r in cfg.rows if r in TWINS], cfg.rows),
                                    _only(cols, "transfer-at", [r for r in cfg.rows if r != PGD_AT], cfg.rows)), worst=True)
    present = set(cfg.rows)
    return Plan(tuple(variants), cols, jobs, (table,), tuple(c for c in claims() if {c.a.variant, c.b.variant} <= present),
                cost=True, passes=passes(cfg, made, reuse), paper="each paper's own setting (CIFAR-10, ImageNet-100)",
                verdict_note="Each claim sets a defense's per-sample worst case against PGD-AT's at the same training "
                             "budget (or, for SD, against the undefended model it is finetuned from).",
                resources={"dictionary": lambda out: sparse_study.make_dictionary(
                    sparse_study.SparseStudyConfig(dataset=cfg.dataset, eps=_train_eps(cfg), dict_images=cfg.dict_images),
                    out)},
                answer=lambda fc: answer_table(fc, cfg.rows, paper, PGD_AT, AUDITED),
                figures=lambda fc: plots(fc, cfg.rows, PGD_AT, AUDITED, f"{cfg.norm} eps {cfg.eps:g}"))


def _only(cols: tuple[Column, ...], name: str, rows: list[str], every: tuple[str, ...]) -> Cell:
    """Column ``name``'s cell, ``n/a`` on the rows outside ``rows`` (no twin; PGD-AT from itself)."""
    return Cell(name, cells(cols, (name,))[0].header, per_row=tuple((r, "") for r in every if r not in rows))


def claims() -> tuple[Claim, ...]:
    """Each paper's headline claim against PGD-AT (SD's: against the undefended model)."""
    w = lambda row: Side(row, WORST)  # noqa: E731
    return (
        Claim("SD is robust without adversarial training", "0.51 -> 40.81 under PGD, Table 1 (ImageNet-100)",
              w(SD), w(STANDARD), threshold=0.05, source="the arena's 5-point yardstick; the paper's gain is 40"),
        Claim("SD against adversarial training", "not in the paper", w(SD), w(PGD_AT), "describe"),
        Claim("The sparse encoder is comparable to PGD-AT (within 5 points)", "39.53 vs 43.x, Table 3 (CIFAR-10)",
              w(SPARSE), w(PGD_AT), "no-worse-than", 0.05, "the paper's own gap to its benchmarks"),
        Claim("Shrunk strides with TRADES beat TRADES", "AutoAttack up with 1-1-2-2, Table V (CIFAR-10)",
              w(STRIDES), w(TRADES)),
        Claim("Shrunk strides with TRADES against PGD-AT", "not in the paper", w(STRIDES), w(PGD_AT), "describe"),
        Claim("GradNorm with GELU reaches PGD-AT (within 5 points)", "30.00 vs 32.64 (AA), Table 4.4 (ResNet-50)",
              w(GRADNORM), w(PGD_AT), "no-worse-than", 0.05, "the thesis' own ratio, 92%"),
        Claim("DCS + GSAT beats PGD-AT", "73.41 vs 47.34 (AA), Table 1 (CIFAR-10)", w(DCS), w(PGD_AT)),
        *[Claim(f"{row}: the paper's protocol against the worst case", "the paper reports its protocol only",
                Side(row, PAPER[row], name=f"{row} (paper's protocol)"), w(row), "describe")
          for row in (SD, SPARSE, DCS)],
    )


def intro(cfg: ArenaConfig, facts: Mapping[str, Any]) -> str:
    """The report's opening paragraph."""
    trained = ("Rows load the demo's study models (the studies' quick profiles), so their training budgets are the "
               "studies', not matched; see the cost table. " if cfg.reuse else
               f"Every trained row gets {cfg.budget:g} forward-backward passes per training image on "
               f"{train_images(facts, cfg.train_limit)} images (SD and AddNoise finetune the standard row's model "
               f"{cfg.finetune_epochs} epochs on top, as their paper does). ")
    return (f"The arena: {len(cfg.rows)} models of {cfg.model} on {cfg.dataset}, {threat_text(cfg)}. " + trained
            + f"One battery for all: AutoAttack (EOT-{cfg.aa_eot} `rand` on randomized models), Square "
            f"{cfg.square_queries} on the expected margin, transfers, each paper's protocol. " + images_text(facts))


def demo_models(out: Path) -> dict[str, str]:
    """The demo's models for the quick rows: its standard and PGD-AT models and the studies' quick models."""
    from .records import slugify

    found = {STANDARD: out / "standard" / "model.safetensors", PGD_AT: out / "pgd-at" / "model.safetensors"}
    for row, study, label in ((SD, "sd-study", "SD"), (ADDNOISE, "sd-study", ADDNOISE), (SPARSE, "sparse-study", sparse_study.OURS),
                              (STRIDES, "strides-study", strides_study.label("TRADES", strides_study.StridesStudyConfig().shrunk)),
                              (GRADNORM, "gradnorm-study", GRADNORM), (EDGE, "gradnorm-study", EDGE), (DCS, "dcs-study", DCS)):
        found[row] = next(iter(sorted((out / study / "models" / slugify(label)).glob("*/model.safetensors"))), Path())
    return {row: str(path) for row, path in found.items() if path.is_file()}


def demo_about(cfg: ArenaConfig) -> str:
    """The demo report's sentence on the arena."""
    return ("Every defense the studies below trained, side by side under one adaptive battery "
            f"({threat_text(cfg)}, {cfg.eval_n} images): the answer first, the details after.")


register_study(Study("arena", "The arena", "all five papers", PROFILES, plan, intro,
                     DemoPart(6, demo_about, heading="The arena", reuse=demo_models, audits=True)))
