"""The gradient-norm study (``gradient-norm-regularization.txt``) on Fashion-MNIST.

``robustlab run gradnorm-study --profile quick|cpu|full``. A recipe on :mod:`.study`:

1. Table 4.4 analogue: ``resnet-mini`` with its ReLUs swapped for each activation (the
   ``activations`` conversion, :func:`~robustlab.defenses.swap_activations`, applied to every
   variant, ReLU included, so every model goes through the same surgery) trained from scratch with
   gradient norm regularization (``gradnorm``, Eq. 4.1: ``lambda_CE = 0.8``, ``lambda_GN = 1.2``,
   ``lambda_GN`` warmed up linearly over the first tenth of the run: the thesis' 5 of 50 epochs)
   and with PGD-3 adversarial training (3 steps of ``2 eps / 3``: the thesis' 8/255/3 at eps
   4/255); clean, PGD-10 and AutoAttack accuracy;
2. EdgeAlign (``edge-align``, Sec. 5, Eq. 5.1-5.2) and a naturally trained model, both GELU, for
   Table 5.1 (the saliency-edge correlation) and as the vulnerable end of the analyses;
3. the cost table (seconds per training epoch, Table 4.3's point: GradNorm needs no inner
   maximization);
4. the analyses (:func:`figures`, seed 0): Table 4.1's gradient norm statistics, Table 5.1's
   log-saliency vs log-oriented-energy correlation per model, Fig. 1.1's grid of input gradients
   (natural / PGD-3 AT / GradNorm / EdgeAlign), Fig. 4.1's robust accuracy vs eps, and the
   numbers the claims table cannot hold (the GradNorm / AT ratio, the training-time ratio, the
   smoothness gain difference, EdgeAlign's correlation gain);
5. the claims as data.

Training follows the thesis' recipe where the library has it: AdamW (weight decay 0.05), peak
learning rate 1.25e-3 for PGD-3 AT and natural training and half of it for GradNorm (App. B.3.2),
cosine annealing to 1e-5 after a linear warm-up over the first tenth of the epochs (the thesis: 5
of 50, from 1e-6 / 1e-5; ours warms up from 0). Departures (said in every report): from scratch
with batch norm in train mode (the thesis finetunes a pretrained ResNet-50 three epochs after the
swap, batch norm in eval mode; ``bn_eval`` only makes sense from a pretrained start), no
RandAugment / mixup / EMA.
Appendix B.2.1 trains the Table 4.4 ResNets with ``ce_weight = gradnorm_weight = 0.5``; Eq. 4.1's
text (and B.3.2, the Swin recipe) gives 0.8 / 1.2, which this study uses by default
(``lambda_ce``, ``lambda_gn``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis.gradients import (
    gradient_norm_stats,
    plot_gradient_grid,
    robust_accuracy_curve,
    saliency_edge_correlation,
)
from ..core.checkpoint import write_text_atomic
from ..core.errors import InputError
from .claims import Claim, Side
from .columns import Column
from .records import RecordStore, slugify
from .report import Cell, Table
from .study import STUDIES, FigureContext, Plan, Profile, Study, StudyConfig
from .variants import Train, TrainSpec, Variant

__all__ = ["ACTIVATIONS", "PROFILES", "GradNormStudyConfig", "columns", "label", "plan"]

ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU"}
"""The ``activations`` conversion's kinds and their row names."""

GRADNORM = "GradNorm"
AT = "PGD-3 AT"
NATURAL = "Natural"
EDGE = "EdgeAlign"
SMOOTH = "gelu"
"""The activation of the natural and EdgeAlign models and of the headline comparison."""

# Table 4.4 (ResNet-50, ImageNet, L-inf eps 4/255, AutoAttack): (clean, AA) per row
TABLE44 = {(GRADNORM, "relu"): (16.94, 6.82), (GRADNORM, "gelu"): (60.34, 30.00), (GRADNORM, "silu"): (61.84, 30.58),
           (AT, "relu"): (59.46, 31.60), (AT, "gelu"): (59.34, 32.64), (AT, "silu"): (60.58, 33.40)}
FIGURES_FILE = "gradnorm.json"


@dataclass(frozen=True)
class GradNormStudyConfig(StudyConfig):
    """The study's settings; :data:`PROFILES` holds the named ones.

    Attributes:
        activations: Table 4.4's non-linearities (kinds of the ``activations`` conversion).
        natural: train a natural (cross-entropy) GELU model (the analyses' vulnerable end and
            EdgeAlign's baseline).
        edge_align: train the EdgeAlign GELU model (Sec. 5).
        epochs, batch_size, train_limit: every model's training (from scratch).
        lr, gn_lr, edge_lr: peak learning rates (AdamW) of PGD-3 AT and natural training, of
            GradNorm and of EdgeAlign (the thesis halves GradNorm's rate, App. B.3.2).
        weight_decay, warmup_fraction, min_lr: AdamW's decoupled weight decay (0.05), the
            share of epochs of the linear warm-up (5 of 50) and the cosine's floor (1e-5).
        lambda_ce, lambda_gn: Eq. 4.1's weights (the thesis: 0.8, 1.2).
        gn_warmup_fraction: the share of the epochs over which ``lambda_gn`` is warmed up
            linearly (the thesis: 5 of 50), rounded up to whole epochs.
        at_steps, at_step_fraction: the PGD of adversarial training (the thesis: PGD-3, steps of
            8/255/3 at eps 4/255, i.e. 2/3 eps).
        edge_lambda_ce, edge_lambda_edge, edge_temperature: Eq. 5.1-5.2's weights and the
            sampling temperature (0.5).
        pgd_steps: the PGD column (Fig. 4.3's PGD-10).
        aa_version: ``standard`` (Table 4.4's AutoAttack) or ``rand`` (APGD-CE + APGD-DLR only, a
            cheaper lower bound on the budget of a quick run).
        figure_n: attacked images the analyses use (0: no analyses).
        stats_steps: PGD steps of Table 4.1's split (10).
        curve_eps, curve_steps: Fig. 4.1's radii and PGD steps (the thesis: 0..16/255, PGD-100).
    """

    clean_n: int | None = 1000
    activations: tuple[str, ...] = ("relu", "gelu", "silu")
    natural: bool = True
    edge_align: bool = True
    epochs: int = 10
    batch_size: int = 128
    train_limit: int | None = 10_000
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
        epochs=3, train_limit=4000, aa_version="rand", figure_n=32, curve_eps=(0.0, 0.05, 0.1, 0.2), curve_steps=10),
        "about 2.5 min on 2 CPU cores (part of the demo)",
        "ReLU and GELU x {GradNorm, PGD-3 AT}, a natural and an EdgeAlign GELU model, 3 epochs on 4000 images, "
        "48 attacked images, APGD-CE + APGD-DLR in place of AutoAttack standard; no SiLU"),
    "cpu": Profile(GradNormStudyConfig(profile="cpu", eval_n=200, epochs=10, train_limit=10_000),
                   "several hours on 2 CPU cores (not run in full)",
                   "every table: {ReLU, GELU, SiLU} x {GradNorm, PGD-3 AT}, natural and EdgeAlign, AutoAttack "
                   "standard, one seed"),
    "full": Profile(GradNormStudyConfig(profile="full", seeds=(0, 1, 2), eval_n=1000, clean_n=None, epochs=50,
                                        train_limit=None, eval_batch_size=500, figure_n=256, curve_steps=100),
                    "hours on one GPU (not measured: no GPU lent yet)",
                    "every table on the whole data, 50 epochs (Table 4.4's length), three seeds"),
}


def label(method: str, activation: str) -> str:
    """A row label: the training method and the non-linearity (Table 4.4's rows)."""
    return f"{method} {ACTIVATIONS[activation]}"


def gn_warmup_epochs(cfg: GradNormStudyConfig) -> int:
    """Epochs of ``lambda_gn``'s linear warm-up: the thesis' 5 of 50 at this run's length."""
    return math.ceil(cfg.epochs * cfg.gn_warmup_fraction)


def columns(cfg: GradNormStudyConfig) -> tuple[Column, ...]:
    """Every column, its settings spelled out."""
    aa_header = "AutoAttack" if cfg.aa_version == "standard" else "APGD-CE + APGD-DLR"
    return (
        Column("clean", "clean", "Standard"),
        Column("pgd", "pgd", f"PGD-{cfg.pgd_steps}", {"steps": cfg.pgd_steps, "step_size": cfg.eps / 4,
                                                       "random_start": True, "restarts": 1, "early_stop": True,
                                                       "eot": 0}),
        Column("aa", "autoattack", aa_header, {"version": cfg.aa_version, "eot": 1}),
    )


def _swap(activation: str) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    return (("activations", (("kind", activation),)),)


def variants(cfg: GradNormStudyConfig) -> tuple[Variant, ...]:
    """Table 4.4's grid (GradNorm rows first), then the natural and EdgeAlign models."""
    gradnorm = ("gradnorm", (("eps", cfg.eps), ("lambda_ce", cfg.lambda_ce), ("lambda_gn", cfg.lambda_gn),
                             ("warmup_epochs", gn_warmup_epochs(cfg))))
    at = ("pgd-at", (("eps", cfg.eps), ("norm", cfg.norm), ("steps", cfg.at_steps),
                     ("step_size", cfg.at_step_fraction * cfg.eps)))
    edge = ("edge-align", (("lambda_ce", cfg.edge_lambda_ce), ("lambda_edge", cfg.edge_lambda_edge),
                           ("temperature", cfg.edge_temperature)))

    def spec(objective: tuple[str, tuple[tuple[str, Any], ...]], lr: float) -> TrainSpec:
        schedule = (("warmup_epochs", math.ceil(cfg.epochs * cfg.warmup_fraction)), ("min_factor", cfg.min_lr / lr))
        options = (("optimizer", "adamw"), ("weight_decay", cfg.weight_decay), ("schedule_options", schedule))
        return TrainSpec(cfg.epochs, lr, "cosine", objective[0], objective[1], cfg.batch_size, cfg.train_limit,
                         train_options=options)

    out = [Variant(label(GRADNORM, a), Train(cfg.model, spec(gradnorm, cfg.gn_lr), _swap(a))) for a in cfg.activations]
    out += [Variant(label(AT, a), Train(cfg.model, spec(at, cfg.lr), _swap(a))) for a in cfg.activations]
    if cfg.natural:
        out.append(Variant(label(NATURAL, SMOOTH), Train(cfg.model, spec(("standard", ()), cfg.lr), _swap(SMOOTH))))
    if cfg.edge_align:
        out.append(Variant(label(EDGE, SMOOTH), Train(cfg.model, spec(edge, cfg.edge_lr), _swap(SMOOTH))))
    return tuple(out)


def plan(cfg: GradNormStudyConfig, baseline: str | None = None) -> Plan:
    """The variants, jobs, tables and claims of ``cfg`` (``baseline`` is not used: every model
    is trained with its own activation)."""
    unknown = [a for a in cfg.activations if a not in ACTIVATIONS]
    if unknown or not cfg.activations:
        raise InputError(f"gradnorm-study activations must be among {', '.join(ACTIVATIONS)}; got "
                         f"{', '.join(cfg.activations) or 'none'}")
    if cfg.aa_version not in ("standard", "rand"):
        raise InputError(f"gradnorm-study aa_version must be standard or rand, got {cfg.aa_version!r}")
    if baseline is not None:
        raise InputError("gradnorm-study trains every model with its own activation; it takes no --baseline")
    vs = variants(cfg)
    cols = columns(cfg)
    names = tuple(c.name for c in cols)
    by_name = {c.name: c for c in cols}
    jobs = tuple((v.label, names) for v in vs)
    cells = tuple(Cell(c.name, c.header) for c in cols)
    grid = tuple(label(m, a) for m in (GRADNORM, AT) for a in cfg.activations)
    thesis = "; ".join(f"{label(m, a)} {TABLE44[(m, a)][0]:.2f} / {TABLE44[(m, a)][1]:.2f}"
                       for m in (GRADNORM, AT) for a in cfg.activations)
    tables = [Table("table44", "Table 4.4 analogue: activations x {GradNorm, PGD-3 AT}",
                    f"Every model trained from scratch for {cfg.epochs} epochs after swapping its activations; "
                    f"{by_name['aa'].header} at L-inf eps {cfg.eps:g}. The thesis (ResNet-50, ImageNet, eps 4/255; "
                    f"clean / AutoAttack): {thesis}.", grid, cells, worst=True)]
    extra = [label(NATURAL, SMOOTH)] * cfg.natural + [label(EDGE, SMOOTH)] * cfg.edge_align
    if extra:
        rows = (*extra, *[r for r in (label(GRADNORM, SMOOTH), label(AT, SMOOTH)) if r in grid])
        tables.append(Table("table51", "Tables 4.1 and 5.1 analogue: natural training, EdgeAlign and the robust "
                            "objectives (GELU)",
                            "The thesis: a natural model has 0% AutoAttack accuracy; EdgeAlign (128 epochs, Swin) "
                            "35.02%, 60% of adversarial training's. The gradient statistics and saliency-edge "
                            "correlations of these models are in the analyses below.", rows, cells, worst=True))
    return Plan(vs, cols, jobs, tuple(tables), claims(cfg), None, VERDICT_INTRO, NOTES, cost=True,
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
            "5 points at Fashion-MNIST's AT level of about 60-70%"))
        rows.append(Claim("With GELU, GradNorm's clean accuracy matches PGD-3 AT's", "60.34 vs 59.34, Table 4.4",
                          Side(gn, "clean"), Side(at, "clean"), "describe"))
        for other in [a for a in acts if a != "relu"]:
            if "relu" not in acts:
                break
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
        for a in [a for a in acts if a != "relu"]:
            rows.append(Claim(f"GradNorm ({ACTIVATIONS[a]}) is robust where natural training is not",
                              "AutoAttack 0.00 (natural) vs 51.58 (GradNorm), Tables 4.1-4.2",
                              Side(label(GRADNORM, a), "aa"), Side(nat, "aa")))
        if cfg.edge_align:
            rows.append(Claim("EdgeAlign alone yields robustness over natural training",
                              "35.02% AutoAttack vs 0%, Table 5.1 row 4 (Swin, 128 epochs)",
                              Side(label(EDGE, SMOOTH), "aa"), Side(nat, "aa")))
    return tuple(rows)


VERDICT_INTRO = (
    "Each claim compares two models on the same test images; a gain counts when its 95% interval is above 0. The "
    "thesis' figures are ImageNet (ResNet-50, Swin) at eps 4/255 after 50-128 epochs; here Fashion-MNIST from scratch "
    "at eps 0.1, so the comparison is of direction and size, not of level. 'Smooth activations help GradNorm more "
    "than AT' is two rows (the gain under each objective) and their difference in the analyses; the training-time "
    "and saliency-edge claims are there too (the records hold accuracies only).\n")

NOTES: Mapping[str, str] = {}


def _read_seconds(out: Path, slug: str) -> float | None:
    """Mean seconds per training epoch of a variant (every seed's ``metrics.jsonl``)."""
    epochs = [json.loads(line).get("seconds", 0.0) for p in sorted((out / "models" / slug).glob("*/metrics.jsonl"))
              for line in p.read_text().splitlines() if line.strip()]
    return sum(epochs) / len(epochs) if epochs else None


def _accuracy(store: RecordStore, variant: str, seed: int, column: str) -> float | None:
    rec = store.get(variant, seed, column)
    return None if rec is None or not rec.applies else rec.accuracy


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _num(value: Any, fmt: str = ".3f") -> str:
    return "—" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def _curve_plot(curves: Mapping[str, list[dict[str, float]]], path: Path, norm: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        ax.plot([p["eps"] for p in curve], [100 * p["accuracy"] for p in curve], marker="o", label=name)
    ax.set_xlabel(f"{norm} eps")
    ax.set_ylabel("PGD robust accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _compute(cfg: GradNormStudyConfig, fc: FigureContext, labels: list[str]) -> dict[str, Any]:
    folder = fc.out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    n = min(cfg.figure_n, len(fc.ctx.eval_set))
    device = fc.ctx.device
    x = torch.stack([fc.ctx.eval_set[i][0] for i in range(n)]).to(device)
    y = torch.tensor([int(fc.ctx.eval_set[i][1]) for i in range(n)], device=device)
    models: dict[str, nn.Module] = {name: fc.model_of(name, cfg.seeds[0]) for name in labels}
    stats, edges, curves = {}, {}, {}
    for name, model in models.items():
        stats[name] = gradient_norm_stats(model, x, y, fc.ctx.threat, steps=cfg.stats_steps,
                                          generator=torch.Generator(device=device).manual_seed(0)).summary()
        edges[name] = saliency_edge_correlation(model, x, y).summary()
        curves[name] = robust_accuracy_curve(model, x, y, cfg.curve_eps, norm=cfg.norm, steps=cfg.curve_steps,
                                             generator=torch.Generator(device=device).manual_seed(0))
    grid = [label(m, SMOOTH) for m in (NATURAL, AT, GRADNORM, EDGE) if label(m, SMOOTH) in models]
    if not grid:
        grid = labels[:4]
    k = min(6, n)
    plot_gradient_grid({name: models[name] for name in grid}, x[:k], y[:k], folder / "gradients.png")
    _curve_plot(curves, folder / "robust-accuracy.png", cfg.norm)
    return {"seed": cfg.seeds[0], "images": n, "stats": stats, "edges": edges, "curves": curves, "grid": grid}


def figures(cfg: GradNormStudyConfig, fc: FigureContext) -> str:
    """The thesis' analyses on this run's models of its first seed, as PNGs beside the report and their
    numbers (``figures/gradnorm.json``, computed once), then the claims the records cannot hold:

    - Table 4.1: clean and PGD-``stats_steps`` accuracy, ``E[L1]`` of ``grad_x CE`` overall and
      where the attack fails / succeeds;
    - Table 5.1: the Pearson correlation of log saliency (and of log ``|grad_x CE|``) with log
      oriented energy, mean and std over images, and EdgeAlign's gain over the natural model;
    - Fig. 1.1: input gradients of the natural, PGD-3 AT, GradNorm and EdgeAlign models (GELU);
    - Fig. 4.1: PGD robust accuracy vs eps;
    - the GradNorm / AT ratio of AutoAttack accuracy, the smoothness gains' difference and the
      training-time ratio (seconds per epoch, Table 4.3).
    """
    labels = [v.label for v in variants(cfg)]
    cache = fc.out / "figures" / FIGURES_FILE
    if cache.exists():
        numbers = json.loads(cache.read_text())
    else:
        numbers = _compute(cfg, fc, labels)
        write_text_atomic(cache, json.dumps(numbers, indent=1, default=lambda v: None))
    store = RecordStore(fc.out / "records")
    aa_header = columns(cfg)[2].header
    stats_rows = "".join(
        f"| {name} | {_pct(s['clean_accuracy'])} | {_pct(s['pgd_accuracy'])} | {_num(s['mean_l1'])} | "
        f"{_num(s['mean_l1_attack_fails'])} | {_num(s['mean_l1_attack_succeeds'])} |\n"
        for name, s in numbers["stats"].items())
    edge_rows = "".join(
        f"| {name} | {_num(e['saliency_mean'], '+.3f')} ± {_num(e['saliency_std'], '.3f')} | "
        f"{_num(e['loss_gradient_mean'], '+.3f')} ± {_num(e['loss_gradient_std'], '.3f')} |\n"
        for name, e in numbers["edges"].items())
    findings = []
    gn, at = label(GRADNORM, SMOOTH), label(AT, SMOOTH)
    a_gn, a_at = _accuracy(store, gn, cfg.seeds[0], "aa"), _accuracy(store, at, cfg.seeds[0], "aa")
    if a_gn is not None and a_at is not None:
        ratio = "—" if a_at == 0 else f"{100 * a_gn / a_at:.1f}%"
        findings.append(f"- **GradNorm reaches X% of PGD-3 AT's AutoAttack accuracy with GELU**: here X = {ratio} "
                        f"({aa_header}: {_pct(a_gn)} vs {_pct(a_at)}; the thesis: 91.9%, Table 4.4; tested as the "
                        "verdict's 'within 5 points' row).")
    for other in [a for a in cfg.activations if a != "relu" and "relu" in cfg.activations]:
        gn_s, gn_r, at_s, at_r = (_accuracy(store, label(m, a), cfg.seeds[0], "aa") for m in (GRADNORM, AT) for a in (other, "relu"))
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
    times, faster = [], []
    for a in cfg.activations:
        s_gn, s_at = (_read_seconds(fc.out, slugify(label(m, a))) for m in (GRADNORM, AT))
        if s_gn is not None and s_at is not None and s_at > 0:
            times.append(f"{ACTIVATIONS[a]} {s_gn:.1f} vs {s_at:.1f} s ({100 * s_gn / s_at:.0f}%)")
            faster.append(s_gn < s_at)
    if times:
        word = "yes" if all(faster) else "no" if not any(faster) else "for some activations"
        findings.append(f"- **GradNorm trains faster than PGD-3 AT**: {word} here (seconds per epoch, GradNorm vs AT, "
                        f"from the cost table; noisy on a shared machine): {'; '.join(times)}. The thesis: GradNorm takes 60% of PGD-3 AT's training "
                        "time (abstract, Table 4.3).")
    edge, nat = label(EDGE, SMOOTH), label(NATURAL, SMOOTH)
    if edge in numbers["edges"] and nat in numbers["edges"]:
        e, b = numbers["edges"][edge]["saliency_mean"], numbers["edges"][nat]["saliency_mean"]
        if e is not None and b is not None:
            # unpaired standard error of the gain from the two per-image spreads (conservative: the
            # images are the same, which a paired interval would use)
            sds = [numbers["edges"][m].get("saliency_std") for m in (edge, nat)]
            n = max(1, int(numbers["images"]))
            se = None if None in sds else (sum(float(sd) ** 2 for sd in sds) / n) ** 0.5
            word = ("not judged (no per-image spread recorded)" if se is None
                    else "yes" if e - b > 1.96 * se else "no, it lowered it" if e - b < -1.96 * se
                    else "not distinguishable from no change")
            findings.append(f"- **EdgeAlign raises the saliency-edge correlation**: {word} here, "
                            f"{e:+.3f} vs {b:+.3f} for the natural model, a gain of {e - b:+.3f}"
                            + ("" if se is None else f" (±{1.96 * se:.3f} at 95%, unpaired, over {n} images)")
                            + " (the thesis: -0.45 natural, +0.56 robust, Table 5.1).")
    curve_eps = [p["eps"] for p in next(iter(numbers["curves"].values()))] if numbers["curves"] else []
    curve_rows = "".join(f"| {name} | " + " | ".join(_pct(p["accuracy"]) for p in curve) + " |\n"
                         for name, curve in numbers["curves"].items())
    return (
        f"\n## Analyses (seed {cfg.seeds[0]}, {numbers['images']} attacked images)\n\n"
        f"**Table 4.1 analogue.** Clean and PGD-{cfg.stats_steps} accuracy and the L1 norm of the loss input gradient "
        "(in [0, 1] pixels): overall and where the attack fails / succeeds (the thesis: far smaller for robust "
        "models, and smaller where the attack fails).\n\n"
        f"| model | clean (%) | PGD-{cfg.stats_steps} (%) | E[L1] | E[L1, attack fails] | E[L1, attack succeeds] |\n"
        f"|---|---|---|---|---|---|\n{stats_rows}\n"
        "**Table 5.1 analogue.** Pearson correlation, per image, of log saliency (max over channels of the label "
        "logit's input gradient) and of log |loss gradient| with log oriented energy (clamped at 1e-3); mean ± std "
        "over images (the thesis: -0.45 vulnerable, +0.56 robust).\n\n"
        f"| model | log saliency vs log energy | log loss gradient vs log energy |\n|---|---|---|\n{edge_rows}\n"
        f"**Fig. 1.1 analogue.** Loss input gradients of {', '.join(numbers['grid'])} (robust models' gradients look "
        "like the image, vulnerable models' like noise).\n\n![input gradients](figures/gradients.png)\n\n"
        f"**Fig. 4.1 analogue.** PGD-{cfg.curve_steps} robust accuracy (%) vs {cfg.norm} eps.\n\n"
        f"| model | " + " | ".join(f"eps {e:g}" for e in curve_eps) + " |\n|---|" + "---|" * len(curve_eps) + "\n"
        f"{curve_rows}\n![robust accuracy vs eps](figures/robust-accuracy.png)\n\n"
        + ("**From the analyses and the cost table** (claims the records cannot test):\n\n" + "\n".join(findings)
           + "\n\n" if findings else ""))


def intro(cfg: GradNormStudyConfig, facts: Mapping[str, Any]) -> str:
    """The report's opening paragraph."""
    n = facts["train_images"].get(str(cfg.train_limit), "?")
    acts = ", ".join(ACTIVATIONS[a] for a in cfg.activations)
    return (
        f"{cfg.model} on {cfg.dataset} with its activations swapped for {acts}, each trained from scratch for "
        f"{cfg.epochs} epochs (AdamW, weight decay {cfg.weight_decay:g}, cosine after a warm-up, batch {cfg.batch_size}) on {n} training images with GradNorm (Eq. 4.1, "
        f"lambda_CE {cfg.lambda_ce:g}, lambda_GN {cfg.lambda_gn:g} warmed up over {gn_warmup_epochs(cfg)} epoch(s), "
        f"peak lr {cfg.gn_lr:g}) and with PGD-{cfg.at_steps} adversarial training (steps of "
        f"{cfg.at_step_fraction:.3g} eps, peak lr {cfg.lr:g}); L-inf eps = {cfg.eps:g}. Unlike the thesis: from "
        "scratch, batch norm in train mode, no pretrained start, no RandAugment / mixup / EMA. "
        f"Clean accuracy on {facts['clean_images']} test images; attacks on "
        f"{facts['eval_images']}.")


STUDIES.register("gradnorm-study", Study("gradnorm-study", "Gradient norm regularization study",
                                         "gradient-norm-regularization.txt", PROFILES, plan, intro))
