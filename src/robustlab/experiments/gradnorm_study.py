"""The gradient-norm study (``gradient-norm-regularization.txt``).

``robustlab run gradnorm-study --profile quick|cpu|full``: Table 4.4, ``resnet-mini`` with its
ReLUs swapped for each activation (the ``activations`` conversion on every variant, ReLU
included, so every model goes through the same surgery) trained from scratch with gradient norm
regularization (Eq. 4.1) and with PGD-3 adversarial training; a natural and an EdgeAlign (Sec. 5)
GELU model for Table 5.1 and as the vulnerable end; the cost table (Table 4.3: no inner
maximization for GradNorm), the analyses (:func:`figures`) and the claims. Training follows the
thesis (App. B; :class:`GradNormStudyConfig`): AdamW, cosine after a linear warm-up (the thesis'
from 1e-6 / 1e-5, ours from 0). Departures, said in every report: from scratch, batch norm in
train mode (the thesis finetunes a pretrained ResNet-50 after the swap, batch norm in eval mode),
no RandAugment / mixup / EMA; Eq. 4.1's 0.8 / 1.2 (App. B.2.1's ResNets use 0.5 / 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.errors import InputError
from . import figures as fig
from .audits import audit_columns, split_audits
from .claims import Claim, Side
from .columns import Column, pgd_settings
from .prose import eps_text, images_text, norm_text, threat_text, train_images
from .report import Cell, Table
from .study import DemoPart, Plan, Profile, Study, TrainingStudyConfig, register_study
from .variants import Train, TrainSpec, Variant

__all__ = ["ACTIVATIONS", "PROFILES", "GradNormStudyConfig", "columns", "label", "plan"]

ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU"}  # the conversion's kinds and their row names

GRADNORM = "GradNorm"
AT = "PGD-3 AT"
NATURAL = "Natural"
EDGE = "EdgeAlign"
SMOOTH = "gelu"  # the activation of the natural and EdgeAlign models and of the headline comparison

# Table 4.4 (ResNet-50, ImageNet, L-inf eps 4/255, AutoAttack): (clean, AA) per row
TABLE44 = {(GRADNORM, "relu"): (16.94, 6.82), (GRADNORM, "gelu"): (60.34, 30.00), (GRADNORM, "silu"): (61.84, 30.58),
           (AT, "relu"): (59.46, 31.60), (AT, "gelu"): (59.34, 32.64), (AT, "silu"): (60.58, 33.40)}
FIGURES_FILE = "gradnorm.json"


@dataclass(frozen=True)
class GradNormStudyConfig(TrainingStudyConfig):
    """The study's settings; :data:`PROFILES` holds the named ones.

    Attributes:
        activations, natural, edge_align: Table 4.4's non-linearities; train a natural and an
            EdgeAlign GELU model.
        lr, gn_lr, edge_lr: peak learning rates (AdamW) of PGD-3 AT and natural training, of
            GradNorm and of EdgeAlign (the thesis halves GradNorm's rate, App. B.3.2).
        weight_decay, warmup_fraction, min_lr: AdamW's weight decay (0.05), the share of epochs of
            the linear warm-up (the thesis: 5 of 50) and the cosine's floor (1e-5).
        lambda_ce, lambda_gn, gn_warmup_fraction: Eq. 4.1's weights (0.8, 1.2) and the share of
            epochs over which ``lambda_gn`` is warmed up (5 of 50), rounded up.
        at_steps, at_step_fraction: adversarial training's PGD (the thesis: 3 steps of 2/3 eps).
        edge_lambda_ce, edge_lambda_edge, edge_temperature: Eq. 5.1-5.2 (temperature 0.5).
        pgd_steps, aa_version: the PGD column (Fig. 4.3's PGD-10); ``standard`` (Table 4.4's
            AutoAttack) or ``rand`` (APGD-CE + APGD-DLR, a cheaper lower bound for quick runs).
        figure_n, stats_steps: attacked images the analyses use (0: none); Table 4.1's PGD steps.
        curve_eps, curve_steps: Fig. 4.1's radii and PGD steps (the thesis: 0..16/255, PGD-100).
    """

    activations: tuple[str, ...] = ("relu", "gelu", "silu")
    natural: bool = True
    edge_align: bool = True
    lr: float = 1.25e-3
    gn_lr: float = 0.625e-3
    edge_lr: float = 0.625e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    min_lr: float = 1e-5
    lambda_ce: float = 0.8
    lambda_gn: float = 1.2
    gn_warmup_fraction: float = 0.1
    at_steps: int = 3
    at_step_fraction: float = 2 / 3
    edge_lambda_ce: float = 1.0
    edge_lambda_edge: float = 1.0
    edge_temperature: float = 0.5
    pgd_steps: int = 10
    aa_version: str = "standard"
    figure_n: int = 64
    stats_steps: int = 10
    curve_eps: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2)
    curve_steps: int = 50


PROFILES: dict[str, Profile] = {
    "quick": Profile(GradNormStudyConfig(
        profile="quick", eval_n=48, clean_n=1000, activations=("relu", "gelu"), natural=True, edge_align=True,
        epochs=3, train_limit=2000, aa_version="rand", figure_n=32, curve_eps=(0.0, 0.05, 0.1, 0.2), curve_steps=10),
        "about 1.5 min on 2 CPU cores (83 s in the demo on 2026-12-07)",
        "ReLU and GELU x {GradNorm, PGD-3 AT}, a natural and an EdgeAlign GELU model, 3 epochs on 2000 images, "
        "48 attacked images, APGD-CE + APGD-DLR in place of AutoAttack standard; no SiLU"),
    "cpu": Profile(GradNormStudyConfig(profile="cpu", audit="full", eval_n=200, epochs=10, train_limit=10_000),
                   "several hours on 2 CPU cores (not run in full)", "every table: {ReLU, GELU, SiLU} x {GradNorm, "
                   "PGD-3 AT}, natural and EdgeAlign, AutoAttack standard, one seed"),
    "full": Profile(GradNormStudyConfig(profile="full", audit="full", seeds=(0, 1, 2), eval_n=1000, clean_n=None, epochs=50,
                                        train_limit=None, eval_batch_size=500, figure_n=256, curve_steps=100),
                    "hours on one GPU (not measured: no GPU lent yet)",
                    "every table on the whole data, 50 epochs (Table 4.4's length), three seeds")}


def label(method: str, activation: str) -> str:
    """A row label: the training method and the non-linearity (Table 4.4's rows)."""
    return f"{method} {ACTIVATIONS[activation]}"


def gn_warmup_epochs(cfg: GradNormStudyConfig) -> int:
    """Epochs of ``lambda_gn``'s linear warm-up: the thesis' 5 of 50 at this run's length."""
    return math.ceil(cfg.epochs * cfg.gn_warmup_fraction)


def columns(cfg: GradNormStudyConfig) -> tuple[Column, ...]:
    """Every column, its settings spelled out; with ``cfg.audit``, the audit of the AutoAttack column."""
    cols = (Column("clean", "clean", "Standard"),
            Column("pgd", "pgd", f"PGD-{cfg.pgd_steps}", pgd_settings(cfg.pgd_steps, cfg.eps / 4)),
            Column("aa", "autoattack", "AutoAttack" if cfg.aa_version == "standard" else "APGD-CE + APGD-DLR",
                   {"version": cfg.aa_version, "eot": 1}))
    return (*cols, *audit_columns(cfg, {"adaptive": cols[2]}))


def variants(cfg: GradNormStudyConfig) -> tuple[Variant, ...]:
    """Table 4.4's grid (GradNorm rows first), then the natural and EdgeAlign models."""
    gradnorm = ("gradnorm", (("eps", cfg.eps), ("lambda_ce", cfg.lambda_ce), ("lambda_gn", cfg.lambda_gn),
                             ("warmup_epochs", gn_warmup_epochs(cfg))))
    at = ("pgd-at", (("eps", cfg.eps), ("norm", cfg.norm), ("steps", cfg.at_steps),
                     ("step_size", cfg.at_step_fraction * cfg.eps)))
    edge = ("edge-align", (("lambda_ce", cfg.edge_lambda_ce), ("lambda_edge", cfg.edge_lambda_edge),
                           ("temperature", cfg.edge_temperature)))

    def swap(activation: str) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
        return (("activations", (("kind", activation),)),)

    def spec(objective: tuple[str, tuple[tuple[str, Any], ...]], lr: float) -> TrainSpec:
        schedule = (("warmup_epochs", math.ceil(cfg.epochs * cfg.warmup_fraction)), ("min_factor", cfg.min_lr / lr))
        options = (("optimizer", "adamw"), ("weight_decay", cfg.weight_decay), ("schedule_options", schedule))
        return TrainSpec(cfg.epochs, lr, "cosine", objective[0], objective[1], cfg.batch_size, cfg.train_limit,
                         train_options=options)

    out = [Variant(label(GRADNORM, a), Train(cfg.model, spec(gradnorm, cfg.gn_lr), swap(a))) for a in cfg.activations]
    out += [Variant(label(AT, a), Train(cfg.model, spec(at, cfg.lr), swap(a))) for a in cfg.activations]
    out += [Variant(label(NATURAL, SMOOTH), Train(cfg.model, spec(("standard", ()), cfg.lr), swap(SMOOTH)))] * cfg.natural
    return (*out, *[Variant(label(EDGE, SMOOTH), Train(cfg.model, spec(edge, cfg.edge_lr), swap(SMOOTH)))] * cfg.edge_align)


def plan(cfg: GradNormStudyConfig, baseline: str | None = None) -> Plan:
    """The variants, jobs, tables and claims of ``cfg`` (``baseline`` is not used: every model
    is trained with its own activation)."""
    if not cfg.activations or any(a not in ACTIVATIONS for a in cfg.activations):
        raise InputError(f"gradnorm-study activations must be among {', '.join(ACTIVATIONS)}; got {', '.join(cfg.activations) or 'none'}")
    if cfg.aa_version not in ("standard", "rand"):
        raise InputError(f"gradnorm-study aa_version must be standard or rand, got {cfg.aa_version!r}")
    if baseline is not None:
        raise InputError("gradnorm-study trains every model with its own activation; it takes no --baseline")
    vs, cols = variants(cfg), columns(cfg)
    evaluations, audits = split_audits(cols)  # the audit: the first GradNorm model's AutoAttack
    jobs = (*[(v.label, evaluations) for v in vs], *([(vs[0].label, audits)] if audits else []))
    cells = tuple(Cell(c.name, c.header) for c in cols if c.kind != "audit")
    grid = tuple(label(m, a) for m in (GRADNORM, AT) for a in cfg.activations)
    thesis = "; ".join(f"{label(m, a)} {TABLE44[(m, a)][0]:.2f} / {TABLE44[(m, a)][1]:.2f}"
                       for m in (GRADNORM, AT) for a in cfg.activations)
    tables = [Table("table44", "Table 4.4 analogue: activations x {GradNorm, PGD-3 AT}",
                    f"Every model trained from scratch for {cfg.epochs} epochs after swapping its activations; "
                    f"{cols[2].header} at {norm_text(cfg.norm)} eps {eps_text(cfg.eps)}. The thesis (ResNet-50, ImageNet, eps 4/255; "
                    f"clean / AutoAttack): {thesis}.", grid, cells, worst=True)]
    extra = [label(NATURAL, SMOOTH)] * cfg.natural + [label(EDGE, SMOOTH)] * cfg.edge_align
    if extra:
        rows = (*extra, *[r for r in (label(GRADNORM, SMOOTH), label(AT, SMOOTH)) if r in grid])
        tables.append(Table("table51", "Tables 4.1 and 5.1 analogue: natural training, EdgeAlign and the robust objectives "
                            "(GELU)", "The thesis: a natural model has 0% AutoAttack accuracy; EdgeAlign (128 epochs, "
                            "Swin) 35.02%, 60% of adversarial training's. The gradient statistics and saliency-edge "
                            "correlations of these models are in the analyses below.", rows, cells, worst=True))
    return Plan(vs, cols, jobs, tuple(tables), claims(cfg), cost=True,
                paper="ImageNet (ResNet-50, Swin) at L-inf eps 4/255 after 50-128 epochs",
                verdict_note="Every model here is trained from scratch. 'Smooth activations help GradNorm more than AT' "
                "is two rows (the gain under each objective) and their difference in the analyses; the training-time and "
                "saliency-edge claims are there too (the records hold accuracies only).",
                figures=(lambda fc: figures(cfg, fc)) if cfg.figure_n else None)


def claims(cfg: GradNormStudyConfig) -> tuple[Claim, ...]:
    """The thesis' claims that the records can test (the rest are in :func:`figures`)."""
    acts = cfg.activations
    rows: list[Claim] = []
    if SMOOTH in acts:
        gn, at = label(GRADNORM, SMOOTH), label(AT, SMOOTH)
        rows.append(Claim(
            "With GELU, GradNorm reaches about 92% of PGD-3 AT's AutoAttack accuracy (within 5 points here)",
            "30.00 vs 32.64 = 91.9%, Table 4.4 (ResNet-50); 51.58 vs 56.12 = 91.9%, Table 4.2 (Swin-B)",
            Side(gn, "aa"), Side(at, "aa"), "no-worse-than", 0.05,
            "the thesis' own gaps, 2.64 (Table 4.4) and 4.54 points (Table 4.2): about 8% of AT's accuracy, "
            "5 points at an AT accuracy of about 60-70%"))
        rows.append(Claim("With GELU, GradNorm's clean accuracy matches PGD-3 AT's", "60.34 vs 59.34, Table 4.4",
                          Side(gn, "clean"), Side(at, "clean"), "describe"))
        for other in [a for a in acts if a != "relu" and "relu" in acts]:
            name = ACTIVATIONS[other]
            rows += [
                Claim(f"A smooth activation ({name}) raises GradNorm's AutoAttack accuracy",
                      f"{TABLE44[(GRADNORM, 'relu')][1]:.2f} -> {TABLE44[(GRADNORM, other)][1]:.2f}, Table 4.4",
                      Side(label(GRADNORM, other), "aa"), Side(label(GRADNORM, "relu"), "aa"), "describe"),
                Claim(f"... far more than it raises PGD-3 AT's ({name})",
                      f"{TABLE44[(AT, 'relu')][1]:.2f} -> {TABLE44[(AT, other)][1]:.2f}, Table 4.4: 'more than 20 "
                      "times larger' for GradNorm (the difference of the two gains is in the analyses)",
                      Side(label(AT, other), "aa"), Side(label(AT, "relu"), "aa"), "describe"),
                Claim(f"GradNorm with ReLU cannot fit the objective: {name} raises its clean accuracy",
                      f"{TABLE44[(GRADNORM, 'relu')][0]:.2f} -> {TABLE44[(GRADNORM, other)][0]:.2f}, Table 4.4",
                      Side(label(GRADNORM, other), "clean"), Side(label(GRADNORM, "relu"), "clean"), "describe")]
    if cfg.natural:
        nat = label(NATURAL, SMOOTH)
        rows += [Claim(f"GradNorm ({ACTIVATIONS[a]}) is robust where natural training is not", "AutoAttack 0.00 "
                       "(natural) vs 51.58 (GradNorm), Tables 4.1-4.2", Side(label(GRADNORM, a), "aa"), Side(nat, "aa"))
                 for a in acts if a != "relu"]
        if cfg.edge_align:
            rows.append(Claim("EdgeAlign alone yields robustness over natural training",
                              "35.02% AutoAttack vs 0%, Table 5.1 row 4 (Swin, 128 epochs)",
                              Side(label(EDGE, SMOOTH), "aa"), Side(nat, "aa")))
    return tuple(rows)


def figures(cfg: GradNormStudyConfig, fc: fig.FigureContext) -> str:
    """The thesis' analyses on the first seed's models (:func:`~.figures.gradient_numbers`), then
    the claims the records cannot hold: the GradNorm / AT ratio, the smoothness gains' difference,
    the training-time ratio (Table 4.3) and EdgeAlign's saliency-edge correlation gain."""
    labels = [v.label for v in variants(cfg)]
    grid = [label(m, SMOOTH) for m in (NATURAL, AT, GRADNORM, EDGE) if label(m, SMOOTH) in labels] or labels[:4]
    numbers = fig.gradient_numbers(fc, FIGURES_FILE, labels, cfg.seeds[0], cfg.figure_n, stats_steps=cfg.stats_steps,
                                   curve_eps=cfg.curve_eps, curve_steps=cfg.curve_steps, grid=grid)
    aa_header = columns(cfg)[2].header
    findings = []

    def aa(method: str, activation: str) -> float | None:
        return fig.record_accuracy(fc.out, label(method, activation), cfg.seeds[0], "aa")
    a_gn, a_at = aa(GRADNORM, SMOOTH), aa(AT, SMOOTH)
    if a_gn is not None and a_at is not None:
        ratio = "—" if a_at == 0 else f"{100 * a_gn / a_at:.1f}%"
        findings.append(f"- **GradNorm reaches X% of PGD-3 AT's AutoAttack accuracy with GELU**: here X = {ratio} "
                        f"({aa_header}: {fig.pct(a_gn)} vs {fig.pct(a_at)}; the thesis: 91.9%, Table 4.4; tested as the "
                        "verdict's 'within 5 points' row).")
    for other in [a for a in cfg.activations if a != "relu" and "relu" in cfg.activations]:
        gn_s, gn_r, at_s, at_r = (aa(m, a) for m in (GRADNORM, AT) for a in (other, "relu"))
        if gn_s is not None and gn_r is not None and at_s is not None and at_r is not None:
            g_gn, g_at = gn_s - gn_r, at_s - at_r
            findings.append(
                f"- **Smooth activations help GradNorm more than AT**: the gain is "
                f"{'larger for GradNorm' if g_gn > g_at else 'larger for AT' if g_gn < g_at else 'the same'} here "
                f"({ACTIVATIONS[other]} vs ReLU, {aa_header}): "
                f"GradNorm {100 * g_gn:+.1f} points, PGD-3 AT {100 * g_at:+.1f}, difference {100 * (g_gn - g_at):+.1f} "
                f"points (the thesis: +{TABLE44[(GRADNORM, other)][1] - TABLE44[(GRADNORM, 'relu')][1]:.2f} vs "
                f"+{TABLE44[(AT, other)][1] - TABLE44[(AT, 'relu')][1]:.2f}). A description, not a test: the "
                "per-image difference of two paired differences has no interval here.")
    times = fig.training_time(fc.out, {ACTIVATIONS[a]: (label(GRADNORM, a), label(AT, a)) for a in cfg.activations},
                          "for some activations")
    if times:
        findings.append(f"- **GradNorm trains faster than PGD-3 AT**: {times[0]} here (seconds per epoch, GradNorm vs "
                        f"AT, from the cost table; noisy on a shared machine): {times[1]}. The thesis: GradNorm takes 60% "
                        "of PGD-3 AT's training time (abstract, Table 4.3).")
    edge, nat = (numbers["edges"].get(label(m, SMOOTH)) for m in (EDGE, NATURAL))
    if edge is not None and nat is not None and edge["saliency_mean"] is not None and nat["saliency_mean"] is not None:
        # only each model's mean and spread over the images were kept: an unpaired interval
        word, interval = fig.unpaired_gain(edge, nat, "saliency", int(numbers["images"]))
        e, b = edge["saliency_mean"], nat["saliency_mean"]
        findings.append(f"- **EdgeAlign raises the saliency-edge correlation**: {word} here, {e:+.3f} vs {b:+.3f} for "
                        f"the natural model, a gain of {e - b:+.3f}{interval} (the thesis: -0.45 natural, +0.56 robust, "
                        "Table 5.1).")
    return fig.gradient_section(numbers, cfg.stats_steps, cfg.curve_steps, cfg.norm) + (
        "**From the analyses and the cost table** (claims the records cannot test):\n\n" + "\n".join(findings)
        + "\n\n" if findings else "")


def intro(cfg: GradNormStudyConfig, facts: Mapping[str, Any]) -> str:
    """The report's opening paragraph."""
    acts = ", ".join(ACTIVATIONS[a] for a in cfg.activations)
    return (
        f"{cfg.model} on {cfg.dataset} with its activations swapped for {acts}, each trained from scratch for "
        f"{cfg.epochs} epochs (AdamW, weight decay {cfg.weight_decay:g}, cosine after a warm-up, batch "
        f"{cfg.batch_size}) on {train_images(facts, cfg.train_limit)} training images with GradNorm (Eq. 4.1, "
        f"lambda_CE {cfg.lambda_ce:g}, lambda_GN {cfg.lambda_gn:g} warmed up over {gn_warmup_epochs(cfg)} epoch(s), "
        f"peak lr {cfg.gn_lr:g}) and with PGD-{cfg.at_steps} adversarial training (steps of "
        f"{cfg.at_step_fraction:.3g} eps, peak lr {cfg.lr:g}); {threat_text(cfg)}. Unlike the thesis: from scratch, "
        f"batch norm in train mode, no pretrained start, no RandAugment / mixup / EMA. {images_text(facts)}")


def demo_about(cfg: GradNormStudyConfig) -> str:
    """The demo report's sentence on the study."""
    extra = [words for words, on in (("a natural", cfg.natural), (f"an {EDGE}", cfg.edge_align)) if on]
    return (f"{cfg.model} with its activations swapped ({', '.join(ACTIVATIONS[a] for a in cfg.activations)}), trained "
            f"from scratch with GradNorm (Eq. 4.1, double backprop) and with PGD-{cfg.at_steps} AT"
            + (f", plus {' and '.join(extra)} {ACTIVATIONS[SMOOTH]} model" if extra else "")
            + f", all with the thesis' AdamW recipe; {threat_text(cfg)}.")


register_study(Study("gradnorm-study", "Gradient norm regularization study", "gradient-norm-regularization.txt",
                     PROFILES, plan, intro, DemoPart(5, demo_about, heading="Gradient-norm regularization study")))
