"""The deformable-convolution-with-stochasticity study (``deformable-conv-stochasticity.txt``).

``robustlab run dcs-study --profile quick|cpu|full``: the PGD-AT baseline, DCS + GSAT (Algorithm
1), DCS + plain PGD-AT (Table 3), the ensemble over kernel draws and the ``k`` / ``n`` / position
ablations (Tables 4-5, App. B.4) under both protocols (:func:`columns`) and their worst case, each
seed re-evaluating with fresh draws (the paper's repetition) or training its own; the cost (Table
8), the claims, Fig. 4 and Lemma 1-2 (:func:`figures`). On Fashion-MNIST (not in the paper) the
attacks scale with eps (Sec. 5.1: PGD-20 of step eps/4, random start; PGD-7 of eps/4 in GSAT and
PGD-AT); resnet-mini's second convolution (3x3, stride 1, 28x28 maps) is the DCS layer, as the
paper's default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..analysis.dcs import gradient_cosine, n_bounds, split_gradient_similarity
from ..core.errors import InputError
from ..core.markdown import markdown_table
from ..core.randomness import seed_stochastic
from ..defenses.dcs import dcs_layers
from .audits import audit_columns, split_audits
from .claims import WORST, Claim, Side
from .columns import Column, pgd_settings
from .figures import FigureContext, input_width, spread, spread_text
from .prose import images_text, ordinal, threat_text, train_images
from .report import Table, cells
from .study import DemoPart, Plan, Profile, Study, TrainingStudyConfig, register_study
from .variants import Convert, Load, Train, TrainSpec, Variant

__all__ = ["BASELINE", "DCS_AT", "ENSEMBLE", "GSAT", "PROFILES", "DcsStudyConfig", "columns", "plan"]


@dataclass(frozen=True)
class DcsStudyConfig(TrainingStudyConfig):
    """The study's settings; :data:`PROFILES` holds the named ones.

    Attributes:
        k, n, layers: the DCS layer (Sec. 5.1: ``k = 5``, ``n = 2``, the second convolution).
        at_steps, at_step_fraction: the PGD inside GSAT and PGD-AT (Sec. 5.1: 7 steps of eps/4).
        attack_steps, attack_step_fraction, eot: the evaluation PGD of both protocols (Sec. 5.1: 20
            steps of eps/4) and its EOT draws per step (the paper's Fig. 3c goes up to 10).
        ensemble_draws: kernel draws the ensemble row averages (softmax mean).
        k_ablation, n_ablation, layer_ablation: Table 4's ``k`` (``n = k_ablation_n``, plain
            PGD-AT), Table 5's ``n`` and App. B.4's positions (GSAT).
        retrain_per_seed: every seed trains its own DCS models, else (the paper) re-evaluates.
        dcs_at_columns, baseline_columns: the columns DCS + PGD-AT (``None``: all) and the
            baseline meet (deterministic: ``paper`` and ``eot`` repeat ``pgd``); ``figure_n``: 0
            turns Fig. 4 off.
    """

    k: int = 5
    n: int = 2
    layers: tuple[int, ...] = (2,)
    at_steps: int = 7
    at_step_fraction: float = 0.25
    attack_steps: int = 20
    attack_step_fraction: float = 0.25
    eot: int = 10
    aa_eot: int = 20
    square_queries: int = 1000
    square_eot: int = 10
    ensemble_draws: int = 10
    k_ablation: tuple[int, ...] = (3, 5, 7, 9)
    k_ablation_n: int = 4
    n_ablation: tuple[int, ...] = (1, 3, 4)
    layer_ablation: tuple[int, ...] = (1, 4, 5, 7)
    retrain_per_seed: bool = False
    dcs_at_columns: tuple[str, ...] | None = None
    baseline_columns: tuple[str, ...] = ("clean", "paper", "pgd", "eot", "aa-rand", "square-eot")
    figure_n: int = 64


PROFILES: dict[str, Profile] = {
    "quick": Profile(DcsStudyConfig(
        profile="quick", audit="demo", audited=("adaptive",), eval_n=32, clean_n=1000, epochs=3, train_limit=6000, at_steps=3, attack_steps=10, eot=4,
        aa_eot=2, square_queries=100, square_eot=2, ensemble_draws=4, k_ablation=(), n_ablation=(), layer_ablation=(),
        dcs_at_columns=("clean", "paper", "eot"), baseline_columns=("clean", "paper", "pgd", "eot", "square-eot"),
        figure_n=32), "about 2 min on 2 CPU cores with a given baseline (105 s in the demo on 2026-12-07, which runs it without its audit)",
        "DCS + GSAT (3 epochs on 6000 images, the demo's PGD-AT budget, with PGD-3 inside) under both protocols "
        "(32 images, PGD-10, 4 EOT draws, one seed), DCS + PGD-AT under the paper's protocol and EOT-PGD, the "
        "ensemble row, against the shared PGD-AT baseline (no AutoAttack on it: its worst case is over PGD and "
        "Square only, which favours the baseline); no k / n / layer ablation"),
    "cpu": Profile(DcsStudyConfig(
        profile="cpu", audit="full", seeds=(0, 1, 2), eval_n=200, epochs=10, train_limit=10_000, k_ablation=(3, 5, 7),
        n_ablation=(1, 4), layer_ablation=(4, 7)),
        "several hours on 2 CPU cores (not run in full)",
        "every table, the ablations trimmed (k in 3/5/7, n in 1/2/4, layers 2/4/7), evaluated three times"),
    "full": Profile(DcsStudyConfig(
        profile="full", audit="full", seeds=(0, 1, 2, 3, 4), eval_n=1000, clean_n=None, epochs=30, train_limit=None,
        eval_batch_size=500, retrain_per_seed=True, layer_ablation=(1, 3, 4, 5, 7, 8)),
        "hours on one GPU (not measured: no GPU lent yet)",
        "every table on the whole data, k in 3-9, n in 1-4, seven layer positions, five trained seeds"),
}

BASELINE = "PGD-AT"
GSAT = "DCS + GSAT"
DCS_AT = "DCS + PGD-AT"
ENSEMBLE = "DCS + GSAT, ensemble"
K_ROW = "DCS k={k} n={n} + PGD-AT"  # Table 4's row for window size k (plain PGD-AT, n = k_ablation_n)


def dcs(cfg: DcsStudyConfig, *, k: int | None = None, n: int | None = None,
        layers: tuple[int, ...] | None = None) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """The ``dcs`` conversion with the study's settings (or the ablated ones)."""
    return ("dcs", (("layers", cfg.layers if layers is None else layers), ("k", cfg.k if k is None else k),
                    ("n", cfg.n if n is None else n)))


def training(cfg: DcsStudyConfig, objective: str) -> TrainSpec:
    """``objective`` (``gsat`` or ``pgd-at``) with the paper's PGD-7 of step eps/4 at ``cfg.eps``."""
    opts = (("eps", cfg.eps), ("steps", cfg.at_steps), ("step_size", cfg.at_step_fraction * cfg.eps))
    return TrainSpec(cfg.epochs, cfg.lr, "onecycle", objective, opts, cfg.batch_size, cfg.train_limit)


def columns(cfg: DcsStudyConfig) -> tuple[Column, ...]:
    """Every column at ``cfg.eps`` (Sec. 5.1): the paper's protocol (Algorithm 2, ``dcs-paper``: one sampled
    path, judged on a fresh one; also the fixed-path twin's transfer, hence no ``"twin"`` column), the honest
    one (EOT, AA ``rand``, Square, transfer), and with ``cfg.audit`` the audits of both on DCS + GSAT."""
    step = cfg.attack_step_fraction * cfg.eps
    pgd = lambda eot: pgd_settings(cfg.attack_steps, step, early_stop=False, eot=eot)  # noqa: E731
    cols = (Column("clean", "clean", "Clean"),
        Column("paper", "battery", f"Paper's protocol: fixed-path PGD-{cfg.attack_steps}",
               {"battery": "dcs-paper", "options": {"steps": cfg.attack_steps, "step_size": step}}, deterministic="pgd"),
        Column("pgd", "pgd", f"PGD-{cfg.attack_steps} (a new path every forward)", pgd(0)),
        Column("eot", "pgd", f"EOT-PGD-{cfg.attack_steps} ({cfg.eot} draws)", pgd(cfg.eot), deterministic="pgd"),
        Column("aa-rand", "autoattack", f"AA rand (EOT {cfg.aa_eot})", {"version": "rand", "eot": cfg.aa_eot}),
        Column("square-eot", "square", f"Square {cfg.square_queries} (expected margin)",
               {"queries": cfg.square_queries, "p_init": 0.8, "eot": cfg.square_eot}),
        Column("transfer-at", "transfer", f"Transfer: PGD-{cfg.attack_steps} on PGD-AT",
               {"source": BASELINE, "attack": "pgd"}))
    return (*cols, *audit_columns(cfg, {"paper": cols[1], "adaptive": cols[3]}))


def plan(cfg: DcsStudyConfig, baseline: str | None = None) -> Plan:
    """The variants, jobs, tables and claims of ``cfg``."""
    if "transfer-at" in cfg.baseline_columns:  # (an unknown column in a job is refused by the machinery)
        raise InputError("dcs-study: baseline_columns cannot hold transfer-at: the baseline is its source")
    if cfg.n > cfg.k * cfg.k or any(cfg.k_ablation_n > k * k for k in cfg.k_ablation):
        raise InputError(f"dcs-study: n must be at most k * k (k={cfg.k}, n={cfg.n}, "
                         f"k_ablation={cfg.k_ablation} with n={cfg.k_ablation_n})")
    per_seed, gsat, at = cfg.retrain_per_seed, training(cfg, "gsat"), training(cfg, "pgd-at")
    base = Variant(BASELINE, Load(baseline) if baseline is not None else Train(cfg.model, at), per_seed=False)
    main = [Variant(GSAT, Train(cfg.model, gsat, (dcs(cfg),)), per_seed),
            Variant(DCS_AT, Train(cfg.model, at, (dcs(cfg),)), per_seed),
            Variant(ENSEMBLE, Convert(GSAT, "ensemble", (("draws", cfg.ensemble_draws),)), per_seed)]
    k_rows = [Variant(K_ROW.format(k=k, n=cfg.k_ablation_n), Train(cfg.model, at, (dcs(cfg, k=k, n=cfg.k_ablation_n),)), per_seed)
              for k in cfg.k_ablation]
    n_rows = [Variant(f"{GSAT} n={n}", Train(cfg.model, gsat, (dcs(cfg, n=n),)), per_seed)
              for n in cfg.n_ablation if n != cfg.n]
    layer_rows = [Variant(f"{GSAT} at conv {layer}", Train(cfg.model, gsat, (dcs(cfg, layers=(layer,)),)), per_seed)
                  for layer in cfg.layer_ablation if (layer,) != tuple(cfg.layers)]
    cols = columns(cfg)
    (every, audits), ablation_cols = split_audits(cols), ("clean", "paper", "eot")
    jobs = [(BASELINE, cfg.baseline_columns), (GSAT, every + audits), (DCS_AT, every if cfg.dcs_at_columns is None else cfg.dcs_at_columns),
            (ENSEMBLE, ablation_cols), *[(v.label, ablation_cols) for v in [*k_rows, *n_rows, *layer_rows]]]
    tables = [
        Table("table1", "Table 1 analogue: the paper's protocol and the honest one, same checkpoints",
              "`Paper's protocol`: Algorithm 2 (attack one sampled path, resample, infer), which is also the "
              "transfer from the fixed-path twin. Every other column is the honest protocol: PGD through a new "
              "kernel draw at every forward, EOT over the kernel distribution at every step, AutoAttack `rand`, "
              "Square on the expected margin, transfer from the PGD-AT baseline. The worst case is per image "
              "over every attack the row met (both protocols).",
              (BASELINE, GSAT, DCS_AT, ENSEMBLE), cells(cols, every), worst=True),
        Table("table3", "Table 3 analogue: GSAT against plain adversarial training of the same DCS model", "",
              (GSAT, DCS_AT), cells(cols, ("clean", "paper", "eot", "aa-rand")), worst=True),
        Table("table6", "Table 6 analogue: black-box attacks",
              "Query-based (Square with the expected margin) and transfer-based (PGD crafted on PGD-AT).",
              (GSAT, DCS_AT), cells(cols, ("clean", "square-eot", "transfer-at")), worst=False),
    ]
    by_n = sorted([GSAT, *[v.label for v in n_rows]], key=lambda r: cfg.n if r == GSAT else int(r.rsplit("=", 1)[1]))
    tables += [Table(key, title, text, tuple(rows), cells(cols, ablation_cols), worst=True) for key, title, text, rows in (
        ("table4", f"Table 4 analogue: window size k (n = {cfg.k_ablation_n}, PGD-AT, no GSAT)", "", [v.label for v in k_rows]),
        ("table5", f"Table 5 analogue: receptive field n (GSAT, k = {cfg.k})",
         "Only the rows that include X^u (the test that cancels X^u is not run).", by_n if n_rows else []),
        ("position", "App. B.4 / Table 9 analogue: the DCS layer's position (GSAT)",
         f"`{GSAT}` replaces convolution {', '.join(map(str, cfg.layers))}.",
         [GSAT, *[v.label for v in layer_rows]] if layer_rows else [])) if rows]
    variants = (base, *main, *k_rows, *n_rows, *layer_rows)
    return Plan(variants, cols, tuple(jobs), tuple(tables), claims(cfg, k_rows, n_rows, layer_rows), cost=True,
                paper="CIFAR-10 (ResNet-18) at L-inf eps 8/255",
                notes={"randomized-without-eot": "Expected for `paper` (the paper's protocol follows one sampled path by "
                       "design) and `pgd` (a new path at every forward, no expectation); the honest protocol's expectations "
                       "are `eot`, `aa-rand` and `square-eot` (with one draw in a tiny config they warn too)."},
                verdict_note="Under the honest protocol a randomized model is attacked with EOT and judged on a fresh "
                             "draw.", figures=(lambda fc: figures(cfg, fc)) if cfg.figure_n else None)


def claims(cfg: DcsStudyConfig, k_rows: list[Variant], n_rows: list[Variant],
           layer_rows: list[Variant]) -> tuple[Claim, ...]:
    """The paper's claims (CIFAR-10, ResNet-18 figures) as rows."""
    rows = [
        Claim("DCS + GSAT is robust under the paper's protocol: above PGD-AT under PGD", "72.10 ± 2.49 vs 51.16 "
              "(PGD-20), Table 1 (CIFAR-10, RN18)", Side(GSAT, "paper", name="DCS + GSAT (paper's protocol)"), Side(BASELINE, "pgd")),
        Claim("The paper's protocol reports higher robust accuracy than EOT-PGD on the same model",
              "not in the paper (Fig. 3c: EOT-PGD with 1-10 draws stays near 70)",
              Side(GSAT, "paper", name="paper's protocol"), Side(GSAT, "eot", name="EOT-PGD"),
              words=("held: the paper's protocol overstates robustness", "not shown at this sample size", "did not hold")),
        Claim("DCS + GSAT beats plain PGD-AT once EOT is used (worst case over every attack)",
              "73.41 vs 47.34 (AA), Table 1", Side(GSAT, WORST), Side(BASELINE, WORST)),
        Claim("GSAT beats plain PGD-AT on the same DCS model (EOT-PGD)", "73.41 vs 60.64 (AA), Table 3",
              Side(GSAT, "eot"), Side(DCS_AT, "eot")),
        Claim("DCS + GSAT raises clean accuracy over PGD-AT", "89.11 vs 81.17, Table 1",
              Side(GSAT, "clean"), Side(BASELINE, "clean")),
        Claim("AutoAttack rand against the paper's protocol", "73.41 (AA) vs 72.10 (PGD-20), Table 1",
              Side(GSAT, "aa-rand"), Side(GSAT, "paper"), "describe"),
        Claim("Square with expected margin against EOT-PGD", "80.53 (Square), Table 6",
              Side(GSAT, "square-eot"), Side(GSAT, "eot"), "describe"),
        Claim("Transfer from PGD-AT against EOT-PGD", "65.71 (FGSM-based transfer), Table 6",
              Side(GSAT, "transfer-at"), Side(GSAT, "eot"), "describe"),
        Claim("The ensemble over kernel draws against a single draw (EOT-PGD)", "not in the paper",
              Side(ENSEMBLE, "eot"), Side(GSAT, "eot"), "describe"),
    ]
    five = K_ROW.format(k=cfg.k, n=cfg.k_ablation_n)
    rows += [Claim(f"Window size: {v.label} against k = {cfg.k} (worst case)",
                   "Table 4: 37.52 (k=3), 62.93 (5), 66.39 (7), 68.64 (9) under PGD-20", Side(v.label, WORST),
                   Side(five, WORST), "describe") for v in k_rows if v.label != five and five in {r.label for r in k_rows}]
    rows += [Claim(f"Receptive field: {v.label} against n = {cfg.n} (worst case)",
                   "Table 5: n = 2 best, 72.10 (PGD-20) vs 61.83-70.75", Side(v.label, WORST), Side(GSAT, WORST),
                   "describe") for v in n_rows]
    return (*rows, *[Claim(f"Position: {v.label} against conv {', '.join(map(str, cfg.layers))} (worst case)",
                           "App. B.4: near the peak in the first six layers, lower at the eighth", Side(v.label, WORST),
                           Side(GSAT, WORST), "describe") for v in layer_rows])


def figures(cfg: DcsStudyConfig, fc: FigureContext) -> str:
    """Fig. 4a-b (Eq. 6: the loss gradient's cosine similarity at the DCS layer's input between two
    paths, and between a path and kernels drawn from its X^s, X^g or X^u) for DCS + GSAT and DCS +
    PGD-AT, and Eq. 12's bounds on n, on this run's seed-0 models; cached in ``figures/dcs.json``."""
    numbers = fc.cached("dcs.json", lambda _folder: _analyses(fc, *fc.images(cfg.figure_n)))
    cosine = markdown_table([{"model": label, "cosine": spread_text(v)} for label, v in numbers["cosine"].items()])
    split = markdown_table([{"model": label, **{f"C_{c}": spread_text(s[c]) for c in ("s", "g", "u")}}
                            for label, s in numbers["split"].items()])
    bounds = markdown_table([{"setting": name, "lower (Lemma 2)": f"{b['lower']:.2f}", "upper (Lemma 1)": f"{b['upper']:.2f}",
                              "feasible n": ", ".join(map(str, b["feasible"])) or "none"} for name, b in numbers["bounds"].items()])
    return (
        "## Analyses (seed 0)\n\n"
        f"**Fig. 4a analogue.** Cosine similarity (Eq. 6) of the loss gradient w.r.t. the DCS layer's input between "
        f"two random inference paths, over {numbers['images']} test images (mean ± std; the paper finds GSAT lowers "
        f"it):\n\n{cosine}\n"
        "**Fig. 4b analogue.** The same between a first path and second kernels drawn only from the first's "
        "X^s (its own positions), X^g (reached by it at other output locations) or X^u (neither; empty at "
        f"stride 1 → nan):\n\n{split}\n"
        f"**Lemma 1-2 (Eq. 12).** Bounds on n for k = {numbers['k']}, stride {numbers['stride']}, padded input "
        f"size N = {numbers['size']:.0f} (the study uses n = {numbers['n']}); eps_c bounds the gradient "
        f"similarity, eps_l the inconsistency, both chosen here as illustrations (the paper gives no values):\n\n"
        f"{bounds}\n"
        + ("Lemma 1's bound is S^2 eps_c, below 1 at stride 1 for any eps_c < 1, so Eq. 12 admits no n there; the "
           "paper's own n = 2 (k = 5, stride 1) lies outside it too (Sec. 5.3.3: the upper bound \"can be loosened\").\n\n"
           if numbers["stride"] == 1 else ""))


def _analyses(fc: FigureContext, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Fig. 4a-b's similarities per model and Eq. 12's bounds, on the images ``x``."""
    numbers: dict[str, Any] = {"images": len(x), "cosine": {}, "split": {}}
    for label in (GSAT, DCS_AT):
        model = fc.model_of(label, 0).eval()
        seed_stochastic(model, 0)
        layer = dcs_layers(model)[0]
        numbers["cosine"][label] = spread(gradient_cosine(model, x, y, layer=layer))
        split = split_gradient_similarity(model, x, y, layer, generator=torch.Generator().manual_seed(0))
        numbers["split"][label] = {name: spread(v) for name, v in split.items()}
    model = fc.model_of(GSAT, 0)
    layer = dcs_layers(model)[0]
    size = float(input_width(model, layer, x[:1]) + 2 * layer.padding[0])  # N: with its padding (App. A.2)
    bounds = {f"eps_c={c:g}, eps_l={e:g}": n_bounds(layer.kernel_size, layer.stride[0], c, e, size)
              for c, e in ((0.1, 0.5), (0.3, 0.5), (0.3, 0.9))}
    return {**numbers, "k": layer.kernel_size, "n": layer.n, "stride": layer.stride[0], "size": size,
            "bounds": {name: {"lower": b.lower, "upper": b.upper, "feasible": list(b.feasible)} for name, b in bounds.items()}}


def intro(cfg: DcsStudyConfig, facts: Mapping[str, Any]) -> str:
    """The report's opening paragraph."""
    again = ("each seed trains its own models" if cfg.retrain_per_seed else
             "each seed re-evaluates the same checkpoints with fresh kernel draws (the paper's repetition)")
    return (
        f"Deformable convolution with stochasticity: convolution {', '.join(map(str, cfg.layers))} of {cfg.model} "
        f"replaced by a DCS layer (k = {cfg.k}, n = {cfg.n}) on {cfg.dataset}, trained {cfg.epochs} epochs on "
        f"{train_images(facts, cfg.train_limit)} training images with GSAT or PGD-AT (PGD-{cfg.at_steps} of "
        f"eps/{1 / cfg.at_step_fraction:g}); {threat_text(cfg)}. Evaluation PGD: {cfg.attack_steps} steps of "
        f"eps/{1 / cfg.attack_step_fraction:g} from a random start, {cfg.eot} EOT draws for the honest protocol; "
        f"{again}. The paper's Table 8 puts DCS training at 1.8x the baseline's (380 vs 213 min); see the cost table. "
        + images_text(facts))


def demo_about(cfg: DcsStudyConfig) -> str:
    """The demo report's sentence on the study."""
    return (f"{cfg.model}'s {' and '.join(map(ordinal, cfg.layers))} convolution{'s' if len(cfg.layers) > 1 else ''} "
            f"becomes a DCS layer (k = {cfg.k}, n = {cfg.n} positions per forward), trained with GSAT and with plain "
            "PGD-AT; the same checkpoints under the paper's protocol (attack one sampled path, resample, infer) and under "
            "the honest one (EOT over the kernel distribution, AutoAttack `rand`, Square on the expected margin, "
            f"transfer from the PGD-AT model above, its baseline), {threat_text(cfg)}.")


register_study(Study("dcs-study", "Deformable convolution with stochasticity study", "deformable-conv-stochasticity.txt",
                     PROFILES, plan, intro, DemoPart(4, demo_about, baseline="pgd-at")))
