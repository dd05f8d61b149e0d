"""The sparse randomized encoder study (``sparse-randomized-encoder.txt``).

``robustlab run sparse-study --profile quick|cpu|full``: a patch dictionary learnt once per run
folder (Sec. 2.1); the defense (:func:`~robustlab.defenses.convert_sparse_front_end`) trained in
the nominal mode (decoder and classifier together, Sec. 5.1's cyclic learning rate) and in the
unsupervised mode (decoder by regression, then the classifier: the twin PW-T attacks from); every
model under the paper's attack modes (Sec. 4) and the library's strongest (:func:`columns`), the
worst case; Tables 1, 2, 3 and 5, Figs. 2, 4 and 9 (:func:`figures`) and the claims.

On Fashion-MNIST (not in the paper) the house eps 0.1, about 3x CIFAR's 8/255 in pixel units, is
the budget the quantizer's dead zone is designed for (Eq. 3: the encoder's ``eps`` is the
attack's); the attacks scale with it (20 steps of eps/8, the paper's 1/255 at 8/255). ``L = 160``
atoms (CIFAR's 500 scaled by the ambient dimension) with ``T = 16, p = 0.85`` keep the paper's
expected ``T (1 - p)`` ~ 2.5 surviving coefficients per patch (Table 5: what matters).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..analysis import sparse as analysis
from ..attacks import Transfer
from ..core.errors import InputError
from ..core.randomness import seed_stochastic
from ..data import as_tensors, get_info, load_dataset
from ..defenses import dictionary
from ..train.sparse import find_front_end
from .audits import audit_columns, split_audits
from .claims import WORST, Claim, Side
from .columns import Column, make_attack, pgd_settings
from .figures import FigureContext, first_conv_weight
from .prose import images_text, threat_text, train_images
from .report import Table, cells
from .study import DemoPart, Plan, Profile, Study, TrainingStudyConfig, register_study
from .variants import Convert, Load, Ref, Train, TrainSpec, Variant

__all__ = ["PROFILES", "SparseStudyConfig", "plan"]

@dataclass(frozen=True)
class SparseStudyConfig(TrainingStudyConfig):
    """The study's settings; :data:`PROFILES` holds the named ones.

    Attributes:
        patch_size, patch_stride, atoms, lam: the dictionary (Sec. 2.1), learnt on
            ``dict_patches`` patches of ``dict_images`` training images in ``dict_iter`` passes.
        top_t, dropout_p, beta, sigma: the encoder (Sec. 2.2, App. 8.3).
        epochs, lr: the nominal training (cyclic, peak ``lr``); the twin's decoder takes
            ``decoder_epochs``; ``ablation``: Table 2; ``tp_variants``: Table 5's (T, p).
        baselines: Table 3's adversarially trained models (``pgd-at`` always; ``fast-at``,
            ``trades``), ``at_epochs`` each, PGD-``at_steps`` inside.
        attack_steps, attack_step_fraction, eot: the paper's PGD (20 steps of eps/8, N_E = 40).
        twin_attacks, figure_n: attack the twin itself too (else it is only PW-T's source);
            attacked images Fig. 4 uses (0: no figures).
    """

    patch_size: int = 4
    patch_stride: int = 2
    atoms: int = 160
    lam: float = 0.5
    dict_images: int = 2000
    dict_patches: int = 20_000
    dict_iter: int = 100
    top_t: int = 16
    dropout_p: float = 0.85
    beta: float = 3.0
    sigma: float = 0.25
    hidden: tuple[int, int] = (64, 32)
    decoder_epochs: int = 10
    lr: float = 0.05
    ablation: bool = True
    tp_variants: tuple[tuple[int, float], ...] = ((1, 0.0), (5, 0.5), (10, 0.75))
    baselines: tuple[str, ...] = ("pgd-at", "fast-at", "trades")
    at_epochs: int = 10
    at_steps: int = 10
    at_lr: float = 0.1
    attack_steps: int = 20
    attack_step_fraction: float = 0.125
    eot: int = 40
    aa_eot: int = 20
    square_queries: int = 1000
    square_eot: int = 10
    twin_attacks: bool = True
    figure_n: int = 32


PROFILES: dict[str, Profile] = {
    "quick": Profile(SparseStudyConfig(
        profile="quick", audit="demo", audited=("adaptive",), eval_n=32, clean_n=500, dict_images=400, dict_patches=5000, dict_iter=30, epochs=3,
        decoder_epochs=2, train_limit=3000, ablation=False, tp_variants=(), baselines=("pgd-at",), at_epochs=3,
        at_steps=5, eot=4, aa_eot=2, square_queries=100, square_eot=2, twin_attacks=False),
        "about 3 min on 2 CPU cores with the demo's PGD-AT model (158 s in the demo on 2026-12-07, which runs it without its audit)", "the nominal defense under every attack mode (32 images, 4 EOT draws), its "
        "unsupervised twin as PW-T's source, against the shared PGD-AT baseline; no ablation"),
    "cpu": Profile(SparseStudyConfig(profile="cpu", audit="full", eval_n=200, epochs=10, decoder_epochs=10, train_limit=10_000),
                   "more than seven hours on 2 CPU cores (2026-12-07: W-NFGA, EOT-40, 200 images: 1,948 s on 1 thread)", "every table, one seed, N_E = 40"),
    "full": Profile(SparseStudyConfig(profile="full", audit="full", seeds=(0, 1, 2), eval_n=1000, clean_n=None, epochs=30,
                                      decoder_epochs=50, train_limit=None, at_epochs=30, eval_batch_size=500,
                                      dict_images=10_000, dict_patches=100_000, dict_iter=1000),
                    "hours on one GPU (not measured: no GPU lent yet)", "every table on the whole data, three seeds"),
}

OURS = "Ours"
TWIN = "Ours, unsupervised decoder"
DECODER = "unsupervised decoder (regression)"
AT_LABELS = {"pgd-at": "PGD-AT", "fast-at": "fast-AT", "trades": "TRADES"}


def make_dictionary(cfg: SparseStudyConfig, out: Path) -> torch.Tensor:
    """The run's dictionary (of the dataset's channels): read from ``out/dictionary.safetensors``
    when it was learnt with these settings, else learnt from ``dict_images`` training images and
    saved there."""
    settings = dictionary.DictionarySettings(cfg.patch_size, cfg.patch_stride, cfg.atoms, cfg.lam,
                                             get_info(cfg.dataset).in_channels, max_iter=cfg.dict_iter,
                                             max_patches=cfg.dict_patches)
    path = out / "dictionary.safetensors"
    if path.exists():
        atoms, saved = dictionary.load_dictionary(path)
        if saved != settings:
            raise InputError(f"{path} was learnt with other settings ({saved}); pass a new --out or delete it")
        return atoms
    atoms = dictionary.learn_dictionary(as_tensors(load_dataset(cfg.dataset, "train", limit=cfg.dict_images, seed=0))[0],
                                        settings)
    dictionary.save_dictionary(path, atoms, settings)
    return atoms


def front_end(cfg: SparseStudyConfig, *, top_t: int | None = None, dropout_p: float | None = None,
              quantize: bool = True, mode: str = "nominal") -> tuple[str, tuple[tuple[str, Any], ...]]:
    """The ``sparse-front-end`` conversion with the study's settings (the dictionary by reference)."""
    info = get_info(cfg.dataset)
    return ("sparse-front-end", (
        ("dictionary", Ref("dictionary")), ("eps", cfg.eps), ("image_size", info.image_size[0]),
        ("stride", cfg.patch_stride), ("top_t", cfg.top_t if top_t is None else top_t),
        ("dropout_p", cfg.dropout_p if dropout_p is None else dropout_p), ("beta", cfg.beta), ("sigma", cfg.sigma),
        ("quantize", quantize), ("mode", mode), ("hidden", cfg.hidden)))


def columns(cfg: SparseStudyConfig) -> tuple[Column, ...]:
    """Every column, the paper's attack settings spelled out (Sec. 5, "Default attack parameters"), and
    with ``cfg.audit`` the audits of W-NFGA smooth (the paper's) and AA rand + BPDA on the defense."""
    def paper(bpda: str | None, normalize: bool = False, eot: int | None = None) -> dict[str, Any]:
        return pgd_settings(cfg.attack_steps, cfg.attack_step_fraction * cfg.eps, random_start=False, early_stop=False,
                            eot=cfg.eot if eot is None else eot, eot_normalize=normalize, bpda=bpda)
    cols = (Column("clean", "clean", "Clean"),
        Column("pgd", "pgd", f"PGD-{cfg.attack_steps}", paper(None, eot=0)),
        Column("w-nfga-id", "pgd", "W-NFGA identity", paper("identity"), deterministic="pgd"),
        Column("w-nfga-smooth", "pgd", "W-NFGA smooth", paper("smooth"), deterministic="pgd"),
        Column("w-aiga", "pgd", "W-AIGA", paper("bypass"), deterministic="pgd"),
        Column("eot-norm", "pgd", "EOT (normalized)", paper("smooth", normalize=True), deterministic="pgd"),
        Column("pw-t", "transfer", "PW-T", {"source": TWIN, "attack": ["w-aiga", "w-nfga-smooth"]}),
        Column("b-t", "transfer", "B-T", {"source": "PGD-AT", "attack": "pgd"}),
        Column("aa-rand", "autoattack", "AA rand + BPDA", {"version": "rand", "eot": cfg.aa_eot, "bpda": "smooth"}),
        Column("square-eot", "square", "Square (expected margin)",
               {"queries": cfg.square_queries, "p_init": 0.8, "eot": cfg.square_eot}))
    return (*cols, *audit_columns(cfg, {"paper": cols[3], "adaptive": cols[8]}))  # W-NFGA smooth, AA rand


def plan(cfg: SparseStudyConfig, baseline: str | None = None) -> Plan:
    """The variants, jobs, tables and claims of ``cfg``."""
    if "pgd-at" not in cfg.baselines or any(b not in AT_LABELS for b in cfg.baselines):
        raise InputError(f"sparse-study baselines must include pgd-at and be among {', '.join(AT_LABELS)}; "
                         f"got {', '.join(cfg.baselines)}")
    train = TrainSpec(cfg.epochs, cfg.lr, "cyclic", "standard", (), cfg.batch_size, cfg.train_limit)
    regression = replace(train, epochs=cfg.decoder_epochs, objective="decoder-regression")
    on_decoder = replace(train, objective="frozen-decoder")
    ours = Variant(OURS, Train(cfg.model, train, (front_end(cfg),)))
    decoder = Variant(DECODER, Train(cfg.model, regression, (front_end(cfg, mode="unsupervised"),)))
    twin = Variant(TWIN, Convert(DECODER, None, finetune=on_decoder))

    def at(name: str) -> Train:
        opts: tuple[tuple[str, Any], ...] = (("eps", cfg.eps),) + ((("steps", cfg.at_steps),) if name != "fast-at" else ())
        return Train(cfg.model, TrainSpec(cfg.at_epochs, cfg.at_lr, "onecycle", name, opts, cfg.batch_size, cfg.train_limit))
    baselines = [Variant("PGD-AT", Load(baseline), per_seed=False) if b == "pgd-at" and baseline is not None
                 else Variant(AT_LABELS[b], at(b)) for b in cfg.baselines]
    ablations = [Variant(f"{OURS} without A&Q", Train(cfg.model, train, (front_end(cfg, quantize=False),))),
                 Variant(f"{OURS} without dropout", Train(cfg.model, train, (front_end(cfg, dropout_p=0.0),))),
                 Variant(f"{OURS} without top-T", Train(cfg.model, train, (front_end(cfg, top_t=cfg.atoms),)))
                 ] if cfg.ablation else []
    tp = [Variant(f"{OURS} T={t} p={p:g}", Train(cfg.model, train, (front_end(cfg, top_t=t, dropout_p=p),)))
          for t, p in cfg.tp_variants]
    cols = columns(cfg)
    every, audits = split_audits([c for c in cols if c.name != "pgd"])
    jobs = [(TWIN, every if cfg.twin_attacks else ("clean",)), (OURS, every + audits), *[(v.label, every) for v in [*ablations, *tp]],
            *[(v.label, ("clean", "pgd", "aa-rand", "square-eot")) for v in baselines]]
    tables = [Table("table1", "Table 1 analogue: the defense under every attack mode",
                    "The nominal defense (and its unsupervised twin, when attacked); the per-sample worst case over "
                    "every attack.", (OURS, TWIN) if cfg.twin_attacks else (OURS,), cells(cols, every), worst=True),
              Table("table3", "Table 3 analogue: against adversarial training",
                    "Each model's clean accuracy and its per-sample worst case over every attack it met.",
                    (OURS, *[v.label for v in baselines]), cells(cols, ("clean",)), worst=True)]
    if ablations:
        tables.append(Table("table2", "Table 2 analogue: ablation (each component removed, retrained)", "",
                            (OURS, *[v.label for v in ablations]),
                            cells(cols, ("clean", "w-nfga-smooth", "pw-t", "w-aiga")), worst=True))
    if tp:
        tables.append(Table("table5", "Table 5 analogue: (T, p) with a similar expected T(1 - p)", "",
                            (OURS, *[v.label for v in tp]), cells(cols, ("clean", "w-nfga-smooth", "pw-t")), worst=True))
    variants = (ours, decoder, twin, *baselines, *ablations, *tp)
    return Plan(variants, cols, tuple(jobs), tuple(tables), claims(cfg, ablations, tp), cost=True,
                paper="CIFAR-10 at L-inf eps 8/255", verdict_note="A randomized model is attacked with EOT and judged on a fresh draw.",
                resources={"dictionary": lambda out: make_dictionary(cfg, out)},
                figures=(lambda fc: figures(cfg, fc)) if cfg.figure_n else None)


def figures(cfg: SparseStudyConfig, fc: FigureContext) -> str:
    """The paper's analyses on this run's models (seed 0), numbers cached in ``figures/sparse.json``:
    Fig. 2, patch correlations with the atoms (Eq. 6) vs the first-layer filters of a CNN (Eq. 7;
    here the PGD-AT baseline's, the paper's is naturally trained); Fig. 4, per attacked image the
    expected fraction of patches whose code W-NFGA (smooth) and PW-T corrupt (App. 8.5); Fig. 9,
    images and PW-T adversarial images before and after the unsupervised twin's autoencoder."""
    def compute(folder: Path) -> dict[str, Any]:
        ours, twin, at = fc.model_of(OURS, 0), fc.model_of(TWIN, 0), fc.model_of("PGD-AT", 0)
        x, y = fc.images(cfg.figure_n)
        for model in (ours, twin):
            seed_stochastic(model, 0)
        nfga = make_attack(fc.ctx, fc.ctx.columns["w-nfga-smooth"]).run(ours, x, y, full_budget=True).x_adv
        pwt = Transfer(twin, make_attack(fc.ctx, fc.ctx.columns["w-aiga"])).run(ours, x, y).x_adv
        encoder = find_front_end(ours).encoder
        z = {"W-NFGA (smooth)": analysis.corrupted_patch_fraction(encoder, x, nfga),
             "PW-T (W-AIGA on the twin)": analysis.corrupted_patch_fraction(encoder, x, pwt)}
        analysis.plot_corrupted_fraction_histogram({k: v.cpu() for k, v in z.items()}, folder / "corrupted-patches.png")
        k = min(8, len(x))
        analysis.autoencoder_grid(twin, x[:k], folder / "autoencoder.png", adversarial=pwt[:k], scale=2)
        corr = analysis.atom_filter_correlations(encoder.atoms.cpu(), first_conv_weight(at), x[:k].cpu(), stride=2,
                                                 max_patches=2000, generator=torch.Generator().manual_seed(0))
        analysis.plot_correlation_histogram(corr.rho, corr.gamma, folder / "correlations.png")
        return {"images": len(x), "corrupted": {k2: float(v.mean()) for k2, v in z.items()}, "correlations": corr.summary()}

    numbers = fc.cached("sparse.json", compute)
    c = numbers["correlations"]
    rows = "".join(f"| {name} | {value * 100:.1f} |\n" for name, value in numbers["corrupted"].items())
    return (
        "## Analyses (seed 0)\n\n"
        f"**Fig. 2 analogue.** Over {c['patches']:.0f} patches of {min(8, numbers['images'])} test images, per patch: the excess kurtosis "
        f"of the {cfg.atoms} atom correlations is {c['atom_kurtosis']:.2f}, of the PGD-AT model's first-layer "
        f"filter activations {c['filter_kurtosis']:.2f} (the paper's claim, in numbers: a few atoms stand out from "
        "the rest — heavy tails, high kurtosis — while a CNN's filters respond without a few standing out). "
        f"Uncentred, {c['atom_large_fraction'] * 100:.1f}% of the atom correlations are at least half the "
        f"largest (peak/RMS {c['atom_peak_to_rms']:.2f}) against {c['filter_large_fraction'] * 100:.1f}% of the "
        f"filter activations (peak/RMS {c['filter_peak_to_rms']:.2f}): the raw [0, 1] patches (Eq. 6-7 remove "
        "no mean) share a common offset that these two numbers do not separate from the tails.\n\n"
        "![atom correlations vs filter activations](figures/correlations.png)\n\n"
        f"**Fig. 4 analogue.** Mean over {numbers['images']} attacked images of the expected fraction of patches "
        "with a corrupted code (App. 8.5; the paper finds PW-T corrupts more than W-NFGA):\n\n"
        f"| attack | corrupted patches (%) |\n|---|---|\n{rows}\n"
        "![expected fraction of corrupted patches](figures/corrupted-patches.png)\n\n"
        "**Fig. 9 analogue.** Rows: test images, after the unsupervised twin's autoencoder, their PW-T adversarial "
        "versions, and those after the autoencoder.\n\n![autoencoder](figures/autoencoder.png)\n\n")


def claims(cfg: SparseStudyConfig, ablations: list[Variant], tp: list[Variant]) -> tuple[Claim, ...]:
    """The paper's claims (CIFAR-10 figures) as rows."""
    rows = [
        Claim("The defense's worst case over every attack is comparable to PGD-AT's (within 5 points)",
              "39.53 vs 42-46 (PGD-AT 43.x), Table 3 (CIFAR-10)", Side(OURS, WORST), Side("PGD-AT", WORST),
              "no-worse-than", 0.05, "the paper's own gap to its benchmarks, 2.5-6.5 points"),
        Claim("Under white-box PGD + EOT the defense beats PGD-AT under PGD", "60.28 vs 43.x, Sec. 5 (Table 1, 3)",
              Side(OURS, "w-nfga-smooth"), Side("PGD-AT", "pgd")),
        Claim("PW-T is stronger than the white-box W-NFGA", "39.53 vs 60.28, Table 1",
              Side(OURS, "w-nfga-smooth"), Side(OURS, "pw-t")),
        Claim("W-AIGA is weak against the nominal (supervised) decoder", "Sec. 4: works only when the autoencoder "
              "is close to identity, Table 2", Side(OURS, "w-aiga"), Side(OURS, "w-nfga-smooth"), "describe"),
        Claim("Normalized EOT is no stronger than plain EOT", "Table 6: more budget does not lower accuracy",
              Side(OURS, "eot-norm"), Side(OURS, "w-nfga-smooth"), "describe"),
        Claim("The library's AA rand + BPDA vs the paper's strongest (PW-T)", "not in the paper",
              Side(OURS, "aa-rand"), Side(OURS, "pw-t"), "describe"),
        Claim("The clean accuracy cost of the defense against PGD-AT", "80.06 vs 87.x (PGD-AT), Table 3",
              Side(OURS, "clean"), Side("PGD-AT", "clean"), "describe")]
    rows += [Claim(f"Each component raises robustness: full defense vs {v.label[len(OURS) + 1:]}",
                   "Table 2: every ablation loses worst-case accuracy", Side(OURS, WORST), Side(v.label, WORST))
             for v in ablations]
    return (*rows, *[Claim(f"Similar T(1-p) gives similar robustness: {v.label}", "Table 5: within a few points",
                           Side(v.label, WORST), Side(OURS, WORST), "describe") for v in tp])


def intro(cfg: SparseStudyConfig, facts: Mapping[str, Any]) -> str:
    """The report's opening paragraph."""
    return (
        f"Sparse randomized encoder (dictionary {cfg.atoms} atoms of {cfg.patch_size}x{cfg.patch_size} patches, "
        f"stride {cfg.patch_stride}, lambda {cfg.lam:g}; T = {cfg.top_t}, p = {cfg.dropout_p:g}, beta = {cfg.beta:g}) "
        f"in front of {cfg.model} on {cfg.dataset}, trained {cfg.epochs} epochs (cyclic lr peaking at {cfg.lr:g}) on "
        f"{train_images(facts, cfg.train_limit)} training images; {threat_text(cfg)}. Attacks: {cfg.attack_steps} "
        f"steps of eps/{1 / cfg.attack_step_fraction:g} from the clean image, N_E = {cfg.eot} EOT draws. "
        + images_text(facts))


def demo_about(cfg: SparseStudyConfig) -> str:
    """The demo report's sentence on the study."""
    return ("The sparse randomized encoder (dictionary learnt on training patches, top-T, test-time dropout, ternary "
            "quantization) with a decoder in front of the classifier, under the paper's attack modes (W-NFGA, W-AIGA, "
            "PW-T, B-T) and the library's own (AA rand with BPDA, Square on the expected margin), "
            f"{threat_text(cfg)}; the PGD-AT model above is its adversarial-training baseline.")


register_study(Study("sparse-study", "Sparse randomized encoder study", "sparse-randomized-encoder.txt", PROFILES,
                     plan, intro, DemoPart(3, demo_about, baseline="pgd-at")))
