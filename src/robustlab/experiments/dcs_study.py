"""The deformable-convolution-with-stochasticity study (``deformable-conv-stochasticity.txt``) on
Fashion-MNIST.

``robustlab run dcs-study --profile quick|cpu|full``. A recipe on :mod:`.study`:

1. variants: the plain PGD-AT baseline (a given checkpoint, or trained), DCS + GSAT (the second
   convolution replaced by a DCS layer, ``k = 5``, ``n = 2``, trained with gradient-selective
   adversarial training, Algorithm 1), DCS + plain PGD-AT (the "Normal AT" ablation, Table 3),
   the ensemble of DCS + GSAT over ``ensemble_draws`` draws of its kernels, and in the ``cpu`` /
   ``full`` profiles the ablations over ``k`` (Table 4: ``n = 4``, no GSAT), ``n`` (Table 5: GSAT,
   ``k = 5``) and the layer position (App. B.4 / Table 9);
2. the two protocols side by side on the same checkpoints, each a column with its settings
   spelled out:

   - the paper's (Algorithm 2, Sec. 5.1 "Benchmarks"): the ``dcs-paper`` battery, PGD-20 with a
     random start and step ``eps / 4`` crafted on one sampled inference path, judged on a freshly
     drawn path. This column is also the fixed-path transfer: the path it is crafted on is the
     model's fixed-path twin (a deterministic copy with one kernel draw), its verdict the
     randomized model's — :func:`~robustlab.defenses.deterministic_twin` does not know DCS, so
     the study has no ``"twin"`` transfer column;
   - the honest one: PGD-20 with EOT over the kernel distribution at every step, AutoAttack
     ``rand`` (EOT), Square on the expected margin, PGD-20 transferred from the PGD-AT baseline
     (Table 6's transfer-based attack), and the per-sample worst case over all of them;

3. repeated evaluation: each seed of the config evaluates the DCS models again with fresh draws
   and fresh attack randomness (the paper: "repeated 10 times"); with ``retrain_per_seed`` each
   seed also trains its own models. Tables show mean ± std over the seeds;
4. training cost against the baseline (the paper's Table 8: 380 vs 213 min, 1.8x), the claims
   as data, and (``figure_n > 0``) Fig. 4b's gradient cosine similarity between two inference
   paths split by ``X^s`` / ``X^g`` / ``X^u`` with the Lemma 1-2 bounds on ``n``.

Fashion-MNIST is not in the paper. At eps 0.1 (the house default) its attack settings scale as
``eps`` does: PGD-20 with step ``eps / 4`` (2/255 at 8/255) and a random start; GSAT and PGD-AT
craft with PGD-7 of step ``eps / 4`` (Sec. 5.1). resnet-mini's second convolution
(``model.layer1.0.conv1``, 3x3, stride 1, on 28x28 maps) is the DCS layer, as the paper's default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..analysis.dcs import gradient_cosine, n_bounds, split_gradient_similarity
from ..core.checkpoint import write_text_atomic
from ..core.errors import InputError
from ..core.randomness import seed_stochastic
from ..defenses.dcs import dcs_layers
from .claims import WORST, Claim, Side
from .columns import Column
from .report import Cell, Table
from .study import STUDIES, FigureContext, Plan, Profile, Study, StudyConfig
from .variants import Convert, Load, Train, TrainSpec, Variant

__all__ = ["BASELINE", "DCS_AT", "ENSEMBLE", "GSAT", "PROFILES", "DcsStudyConfig", "columns", "plan"]


@dataclass(frozen=True)
class DcsStudyConfig(StudyConfig):
    """The study's settings; :data:`PROFILES` holds the named ones.

    Attributes:
        k, n, layers: the DCS layer (Sec. 5.1: ``k = 5``, ``n = 2``, the second convolution).
        epochs, lr, batch_size, train_limit: the training of every model the study trains.
        at_steps, at_step_fraction: the PGD inside GSAT and PGD-AT (Sec. 5.1: 7 steps of eps/4).
        attack_steps, attack_step_fraction: the evaluation PGD (Sec. 5.1: 20 steps of eps/4,
            random start), for both protocols.
        eot: EOT draws per PGD step (the paper's Fig. 3c goes up to 10).
        aa_eot, square_queries, square_eot: AutoAttack ``rand`` and Square settings.
        ensemble_draws: kernel draws the ensemble row averages (softmax mean).
        k_ablation: Table 4's ``k`` (``n = k_ablation_n``, plain PGD-AT, no GSAT).
        n_ablation: Table 5's ``n`` (GSAT, ``k``).
        layer_ablation: the layer positions of App. B.4 (GSAT, ``k``, ``n``).
        retrain_per_seed: every seed trains its own DCS models; otherwise (the paper) every
            seed re-evaluates the seed-0 models with fresh draws.
        dcs_at_columns: the columns the DCS + PGD-AT ablation meets (``None``: every column).
        baseline_columns: the columns the PGD-AT baseline meets (deterministic: ``paper`` and
            ``eot`` repeat ``pgd``).
        figure_n: test images Fig. 4b's analysis uses (0: no figures).
    """

    clean_n: int | None = 1000
    k: int = 5
    n: int = 2
    layers: tuple[int, ...] = (2,)
    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 128
    train_limit: int | None = 10_000
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
        profile="quick", eval_n=48, clean_n=1000, epochs=3, train_limit=8000, at_steps=3,
        attack_steps=10, eot=4, aa_eot=2, square_queries=100, square_eot=2, ensemble_draws=4, k_ablation=(),
        n_ablation=(), layer_ablation=(), dcs_at_columns=("clean", "paper", "eot"),
        baseline_columns=("clean", "paper", "pgd", "eot", "square-eot"), figure_n=32),
        "about 100 s on 2 CPU cores with a given baseline (100 s measured; part of the demo)",
        "DCS + GSAT (3 epochs on 8000 images, the demo's PGD-AT budget, with PGD-3 inside) under both protocols "
        "(48 images, PGD-10, 4 EOT draws, one seed), DCS + PGD-AT under the "
        "paper's protocol and EOT-PGD, the ensemble row, against the shared PGD-AT baseline (no AutoAttack on it: "
        "its worst case is over PGD and Square only, which favours the baseline); no k / n / layer ablation"),
    "cpu": Profile(DcsStudyConfig(
        profile="cpu", seeds=(0, 1, 2), eval_n=200, epochs=10, train_limit=10_000, k_ablation=(3, 5, 7),
        n_ablation=(1, 4), layer_ablation=(4, 7)),
        "several hours on 2 CPU cores (not run in full)",
        "every table, the ablations trimmed (k in 3/5/7, n in 1/2/4, layers 2/4/7), evaluated three times"),
    "full": Profile(DcsStudyConfig(
        profile="full", seeds=(0, 1, 2, 3, 4), eval_n=1000, clean_n=None, epochs=30, train_limit=None,
        eval_batch_size=500, retrain_per_seed=True, layer_ablation=(1, 3, 4, 5, 7, 8)),
        "hours on one GPU (not measured: no GPU lent yet)",
        "every table on the whole data, k in 3-9, n in 1-4, seven layer positions, five trained seeds"),
}

BASELINE = "PGD-AT"
GSAT = "DCS + GSAT"
DCS_AT = "DCS + PGD-AT"
ENSEMBLE = "DCS + GSAT, ensemble"

# the honest protocol's attack columns (the paper's protocol is the ``paper`` column)
HONEST = ("pgd", "eot", "aa-rand", "square-eot", "transfer-at")


def dcs(cfg: DcsStudyConfig, *, k: int | None = None, n: int | None = None,
        layers: tuple[int, ...] | None = None) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """The ``dcs`` conversion with the study's settings (or the ablated ones)."""
    return ("dcs", (("layers", cfg.layers if layers is None else layers), ("k", cfg.k if k is None else k),
                    ("n", cfg.n if n is None else n)))


def training(cfg: DcsStudyConfig, objective: str) -> TrainSpec:
    """The training of a model: ``objective`` (``gsat`` or ``pgd-at``) with the paper's PGD-7
    of step eps/4 scaled to ``cfg.eps``."""
    opts = (("eps", cfg.eps), ("steps", cfg.at_steps), ("step_size", cfg.at_step_fraction * cfg.eps))
    return TrainSpec(cfg.epochs, cfg.lr, "onecycle", objective, opts, cfg.batch_size, cfg.train_limit)


def columns(cfg: DcsStudyConfig) -> tuple[Column, ...]:
    """Every column, the paper's attack settings (Sec. 5.1) spelled out at ``cfg.eps``."""
    step = cfg.attack_step_fraction * cfg.eps

    def pgd(eot: int) -> dict[str, Any]:
        return {"steps": cfg.attack_steps, "step_size": step, "random_start": True, "restarts": 1,
                "early_stop": False, "eot": eot}
    return (
        Column("clean", "clean", "Clean"),
        Column("paper", "battery", f"Paper's protocol: fixed-path PGD-{cfg.attack_steps}",
               {"battery": "dcs-paper", "options": {"steps": cfg.attack_steps, "step_size": step}},
               deterministic="pgd"),
        Column("pgd", "pgd", f"PGD-{cfg.attack_steps} (a new path every forward)", pgd(0)),
        Column("eot", "pgd", f"EOT-PGD-{cfg.attack_steps} ({cfg.eot} draws)", pgd(cfg.eot), deterministic="pgd"),
        Column("aa-rand", "autoattack", f"AA rand (EOT {cfg.aa_eot})", {"version": "rand", "eot": cfg.aa_eot}),
        Column("square-eot", "square", f"Square {cfg.square_queries} (expected margin)",
               {"queries": cfg.square_queries, "p_init": 0.8, "eot": cfg.square_eot}),
        Column("transfer-at", "transfer", f"Transfer: PGD-{cfg.attack_steps} on PGD-AT",
               {"source": BASELINE, "attack": "pgd"}),
    )


def k_label(cfg: DcsStudyConfig, k: int) -> str:
    """Table 4's row for window size ``k`` (plain PGD-AT, ``n = k_ablation_n``)."""
    return f"DCS k={k} n={cfg.k_ablation_n} + PGD-AT"


def n_label(n: int) -> str:
    """Table 5's row for ``n`` (GSAT)."""
    return f"DCS + GSAT n={n}"


def layer_label(layer: int) -> str:
    """The position ablation's row for convolution ``layer`` (1-based)."""
    return f"DCS + GSAT at conv {layer}"


def plan(cfg: DcsStudyConfig, baseline: str | None = None) -> Plan:
    """The variants, jobs, tables and claims of ``cfg``."""
    unknown = sorted({*(cfg.dcs_at_columns or ()), *cfg.baseline_columns} - {c.name for c in columns(cfg)})
    if unknown or "transfer-at" in cfg.baseline_columns:
        raise InputError(f"dcs-study: dcs_at_columns / baseline_columns name unknown columns or transfer-at "
                         f"(the baseline is its source): {', '.join(unknown) or 'transfer-at'}")
    if cfg.n > cfg.k * cfg.k or any(cfg.k_ablation_n > k * k for k in cfg.k_ablation):
        raise InputError(f"dcs-study: n must be at most k * k (k={cfg.k}, n={cfg.n}, "
                         f"k_ablation={cfg.k_ablation} with n={cfg.k_ablation_n})")
    per_seed = cfg.retrain_per_seed
    gsat, at = training(cfg, "gsat"), training(cfg, "pgd-at")
    base = (Variant(BASELINE, Load(baseline), per_seed=False) if baseline is not None
            else Variant(BASELINE, Train(cfg.model, at), per_seed=False))
    main = [Variant(GSAT, Train(cfg.model, gsat, (dcs(cfg),)), per_seed),
            Variant(DCS_AT, Train(cfg.model, at, (dcs(cfg),)), per_seed),
            Variant(ENSEMBLE, Convert(GSAT, "ensemble", (("draws", cfg.ensemble_draws),)), per_seed)]
    k_rows = [Variant(k_label(cfg, k), Train(cfg.model, at, (dcs(cfg, k=k, n=cfg.k_ablation_n),)), per_seed)
              for k in cfg.k_ablation]
    n_rows = [Variant(n_label(n), Train(cfg.model, gsat, (dcs(cfg, n=n),)), per_seed)
              for n in cfg.n_ablation if n != cfg.n]
    layer_rows = [Variant(layer_label(layer), Train(cfg.model, gsat, (dcs(cfg, layers=(layer,)),)), per_seed)
                  for layer in cfg.layer_ablation if (layer,) != tuple(cfg.layers)]
    cols = columns(cfg)
    by_name = {c.name: c for c in cols}
    every = tuple(c.name for c in cols)
    ablation_cols = ("clean", "paper", "eot")
    jobs = [(BASELINE, cfg.baseline_columns),
            (GSAT, every), (DCS_AT, every if cfg.dcs_at_columns is None else cfg.dcs_at_columns),
            (ENSEMBLE, ablation_cols),
            *[(v.label, ablation_cols) for v in [*k_rows, *n_rows, *layer_rows]]]

    def cells(names: tuple[str, ...]) -> tuple[Cell, ...]:
        return tuple(Cell(name, by_name[name].header) for name in names)
    tables = [
        Table("table1", "Table 1 analogue: the paper's protocol and the honest one, same checkpoints",
              "`Paper's protocol`: Algorithm 2 (attack one sampled path, resample, infer), which is also the "
              "transfer from the fixed-path twin. Every other column is the honest protocol: PGD through a new "
              "kernel draw at every forward, EOT over the kernel distribution at every step, AutoAttack `rand`, "
              "Square on the expected margin, transfer from the PGD-AT baseline. The worst case is per image "
              "over every attack the row met (both protocols).",
              (BASELINE, GSAT, DCS_AT, ENSEMBLE), cells(every), worst=True),
        Table("table3", "Table 3 analogue: GSAT against plain adversarial training of the same DCS model", "",
              (GSAT, DCS_AT), cells(("clean", "paper", "eot", "aa-rand")), worst=True),
        Table("table6", "Table 6 analogue: black-box attacks",
              "Query-based (Square with the expected margin) and transfer-based (PGD crafted on PGD-AT).",
              (GSAT, DCS_AT), cells(("clean", "square-eot", "transfer-at")), worst=False),
    ]
    if k_rows:
        tables.append(Table("table4", f"Table 4 analogue: window size k (n = {cfg.k_ablation_n}, PGD-AT, no GSAT)",
                            "", tuple(v.label for v in k_rows), cells(ablation_cols), worst=True))
    if n_rows:
        tables.append(Table("table5", f"Table 5 analogue: receptive field n (GSAT, k = {cfg.k})",
                            "Only the rows that include X^u (the test that cancels X^u is not run).",
                            tuple(sorted([GSAT, *[v.label for v in n_rows]], key=_n_of(cfg))),
                            cells(ablation_cols), worst=True))
    if layer_rows:
        tables.append(Table("position", "App. B.4 / Table 9 analogue: the DCS layer's position (GSAT)",
                            f"`{GSAT}` replaces convolution {', '.join(map(str, cfg.layers))}.",
                            (GSAT, *[v.label for v in layer_rows]), cells(ablation_cols), worst=True))
    variants = (base, *main, *k_rows, *n_rows, *layer_rows)
    return Plan(variants, cols, tuple(jobs), tuple(tables), claims(cfg, k_rows, n_rows, layer_rows), None,
                VERDICT_INTRO, NOTES, cost=True, figures=(lambda fc: figures(cfg, fc)) if cfg.figure_n else None)


def _n_of(cfg: DcsStudyConfig) -> Any:
    def key(label: str) -> int:
        return cfg.n if label == GSAT else int(label.rsplit("=", 1)[1])
    return key


def claims(cfg: DcsStudyConfig, k_rows: list[Variant], n_rows: list[Variant],
           layer_rows: list[Variant]) -> tuple[Claim, ...]:
    """The paper's claims (CIFAR-10, ResNet-18 figures) as rows."""
    rows = [
        Claim("DCS + GSAT is robust under the paper's protocol: above PGD-AT under PGD",
              "72.10 ± 2.49 vs 51.16 (PGD-20), Table 1 (CIFAR-10, RN18)",
              Side(GSAT, "paper", name="DCS + GSAT (paper's protocol)"), Side(BASELINE, "pgd")),
        Claim("The paper's protocol reports higher robust accuracy than EOT-PGD on the same model",
              "not in the paper (Fig. 3c: EOT-PGD with 1-10 draws stays near 70)",
              Side(GSAT, "paper", name="paper's protocol"), Side(GSAT, "eot", name="EOT-PGD"),
              words=("held: the paper's protocol overstates robustness", "not shown at this sample size",
                     "did not hold")),
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
    five = k_label(cfg, cfg.k) if any(v.label == k_label(cfg, cfg.k) for v in k_rows) else None
    for v in k_rows:
        if five is not None and v.label != five:
            rows.append(Claim(f"Window size: {v.label} against k = {cfg.k} (worst case)",
                              "Table 4: 37.52 (k=3), 62.93 (5), 66.39 (7), 68.64 (9) under PGD-20",
                              Side(v.label, WORST), Side(five, WORST), "describe"))
    for v in n_rows:
        rows.append(Claim(f"Receptive field: {v.label} against n = {cfg.n} (worst case)",
                          "Table 5: n = 2 best, 72.10 (PGD-20) vs 61.83-70.75", Side(v.label, WORST),
                          Side(GSAT, WORST), "describe"))
    for v in layer_rows:
        rows.append(Claim(f"Position: {v.label} against conv {', '.join(map(str, cfg.layers))} (worst case)",
                          "App. B.4: near the peak in the first six layers, lower at the eighth",
                          Side(v.label, WORST), Side(GSAT, WORST), "describe"))
    return tuple(rows)


def figures(cfg: DcsStudyConfig, fc: FigureContext) -> str:
    """Fig. 4b and Lemma 1-2 on this run's DCS + GSAT model (seed 0), numbers cached in
    ``figures/dcs.json``:

    - per image, the cosine similarity of the cross-entropy's gradient w.r.t. the DCS layer's
      input between two random inference paths (Eq. 6), for DCS + GSAT and DCS + PGD-AT (Fig. 4a);
    - the same between a first path and second kernels drawn only from ``X^s``, ``X^g`` or
      ``X^u`` of the first (Fig. 4b; with stride 1, ``X^u`` is empty);
    - Eq. 12's bounds on ``n`` for the layer's ``k`` and stride on its input size.
    """
    folder = fc.out / "figures"
    cache = folder / "dcs.json"
    if cache.exists():
        numbers = json.loads(cache.read_text())
    else:
        n = min(cfg.figure_n, len(fc.ctx.eval_set))
        x = torch.stack([fc.ctx.eval_set[i][0] for i in range(n)]).to(fc.ctx.device)
        y = torch.tensor([int(fc.ctx.eval_set[i][1]) for i in range(n)], device=fc.ctx.device)
        numbers = {"images": n, "cosine": {}, "split": {}}
        for label in (GSAT, DCS_AT):
            model = fc.model_of(label, 0).eval()
            seed_stochastic(model, 0)
            layer = dcs_layers(model)[0]
            numbers["cosine"][label] = _summary(gradient_cosine(model, x, y, layer=layer))
            split = split_gradient_similarity(model, x, y, layer, generator=torch.Generator().manual_seed(0))
            numbers["split"][label] = {name: _summary(v) for name, v in split.items()}
        model = fc.model_of(GSAT, 0)
        layer = dcs_layers(model)[0]
        size = float(_input_size(model, layer, x[:1]) + 2 * layer.padding[0])  # N: with its padding (App. A.2)
        bounds = {f"eps_c={c:g}, eps_l={e:g}": _bounds(layer.kernel_size, layer.stride[0], c, e, size)
                  for c, e in ((0.1, 0.5), (0.3, 0.5), (0.3, 0.9))}
        numbers.update({"k": layer.kernel_size, "n": layer.n, "stride": layer.stride[0], "size": size,
                        "bounds": bounds})
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, json.dumps(numbers, indent=1))
    cos_rows = "".join(f"| {label} | {_fmt(v)} |\n" for label, v in numbers["cosine"].items())
    split_rows = "".join(f"| {label} | " + " | ".join(_fmt(s[c]) for c in ("s", "g", "u")) + " |\n"
                         for label, s in numbers["split"].items())
    bound_rows = "".join(f"| {name} | {b['lower']:.2f} | {b['upper']:.2f} | "
                         f"{', '.join(map(str, b['feasible'])) or 'none'} |\n" for name, b in numbers["bounds"].items())
    return (
        "## Analyses (seed 0)\n\n"
        f"**Fig. 4a analogue.** Cosine similarity (Eq. 6) of the loss gradient w.r.t. the DCS layer's input between "
        f"two random inference paths, over {numbers['images']} test images (mean ± std; the paper finds GSAT lowers "
        f"it):\n\n| model | cosine |\n|---|---|\n{cos_rows}\n"
        "**Fig. 4b analogue.** The same between a first path and second kernels drawn only from the first's "
        "X^s (its own positions), X^g (reached by it at other output locations) or X^u (neither; empty at "
        "stride 1 → nan):\n\n"
        f"| model | C_s | C_g | C_u |\n|---|---|---|---|\n{split_rows}\n"
        f"**Lemma 1-2 (Eq. 12).** Bounds on n for k = {numbers['k']}, stride {numbers['stride']}, padded input "
        f"size N = {numbers['size']:.0f} (the study uses n = {numbers['n']}); eps_c bounds the gradient "
        f"similarity, eps_l the inconsistency, both chosen here as illustrations (the paper gives no values):\n\n"
        f"| setting | lower (Lemma 2) | upper (Lemma 1) | feasible n |\n|---|---|---|---|\n{bound_rows}\n"
        + ("Lemma 1's bound is S^2 eps_c, below 1 at stride 1 for any eps_c < 1, so Eq. 12 admits no n there; the "
           "paper's own n = 2 (k = 5, stride 1) lies outside it too (Sec. 5.3.3: the upper bound \"can be loosened\").\n\n"
           if numbers["stride"] == 1 else ""))


def _input_size(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> int:
    """The width of the feature map ``layer`` receives from ``model(x)``."""
    seen: list[int] = []
    handle = layer.register_forward_pre_hook(lambda _m, inputs: seen.append(int(inputs[0].shape[-1])))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def _summary(values: torch.Tensor) -> dict[str, float]:
    v = values.detach().double().cpu()
    v = v[~torch.isnan(v)]
    if v.numel() == 0:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0}


def _fmt(s: Mapping[str, float]) -> str:
    return "nan" if s["mean"] != s["mean"] else f"{s['mean']:.3f} ± {s['std']:.3f}"


def _bounds(k: int, stride: int, eps_c: float, eps_l: float, size: float) -> dict[str, Any]:
    b = n_bounds(k, stride, eps_c, eps_l, size)
    return {"lower": b.lower, "upper": b.upper, "feasible": list(b.feasible)}


NOTES = {
    "randomized-without-eot": "Expected for `paper` (the paper's protocol follows one sampled path by design) and "
                              "`pgd` (a new path at every forward, no expectation); the honest protocol's "
                              "expectations are `eot`, `aa-rand` and `square-eot` (with one draw in a tiny config "
                              "they warn too).",
}

VERDICT_INTRO = (
    "Each claim compares two models (or two protocols on one model) on the same test images, each image's outcome "
    "averaged over the seeds; a gain counts when its 95% interval is above 0. The paper's figures are CIFAR-10 "
    "(ResNet-18); here Fashion-MNIST at eps 0.1, so the comparison is of direction and size, not of level. Under the "
    "honest protocol a randomized model is attacked with EOT and judged on a fresh draw.\n")


def intro(cfg: DcsStudyConfig, facts: Mapping[str, Any]) -> str:
    """The report's opening paragraph."""
    n = facts["train_images"].get(str(cfg.train_limit), "?")
    again = ("each seed trains its own models" if cfg.retrain_per_seed
             else "each seed re-evaluates the same checkpoints with fresh kernel draws (the paper's repetition)")
    return (
        f"Deformable convolution with stochasticity: convolution {', '.join(map(str, cfg.layers))} of {cfg.model} "
        f"replaced by a DCS layer (k = {cfg.k}, n = {cfg.n}) on {cfg.dataset}, trained {cfg.epochs} epochs on {n} "
        f"training images with GSAT or PGD-AT (PGD-{cfg.at_steps} of eps/{1 / cfg.at_step_fraction:g}); L-inf eps = "
        f"{cfg.eps:g}. Evaluation PGD: {cfg.attack_steps} steps of eps/{1 / cfg.attack_step_fraction:g} from a random "
        f"start, {cfg.eot} EOT draws for the honest protocol; {again}. The paper's Table 8 puts DCS training at 1.8x "
        f"the baseline's (380 vs 213 min); see the cost table. Clean accuracy on {facts['clean_images']} test images; "
        f"attacks on {facts['eval_images']}.")


STUDIES.register("dcs-study", Study("dcs-study", "Deformable convolution with stochasticity study",
                                    "deformable-conv-stochasticity.txt", PROFILES, plan, intro))
