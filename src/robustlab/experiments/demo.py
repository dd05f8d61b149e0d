"""The main job behind ``make demo``: a standard and a PGD-AT ``resnet-mini`` on Fashion-MNIST.

1. Train ``resnet-mini`` with cross-entropy on a stratified 30,000-image half of the training
   set (the whole 60,000 cost 50 s more of the 15-minute budget for two points: 91.34% vs 89.35%
   clean on the 10,000 test images, measured); clean
   accuracy on the full 10,000-image test set.
2. Train ``resnet-mini`` with PGD adversarial training (Madry et al., 2018; L-inf eps 0.1, the
   dataset's default threat) on a stratified training subset, sized to fit the CPU budget.
3. Evaluate both with the ``standard`` battery (AutoAttack standard at the reference settings:
   APGD-CE, APGD-T, FAB-T at 100 iterations, Square at 5,000 queries) on ``eval_n``
   test images, keeping the per-sample worst case. Each evaluation is a row of the ledger
   ``runs/demo/ledger.sqlite`` (``robustlab leaderboard --ledger runs/demo/ledger.sqlite``).

4. The stochastic-downsampling study's ``quick`` profile
   (:mod:`robustlab.experiments.sd_study`) with the standard model of step 1 as its baseline;
   its full report is ``runs/demo/sd-study/report.md`` and its Table 1 is repeated in the demo's.
5. The feature-map-strides study's ``quick`` profile (:mod:`robustlab.experiments.strides_study`):
   TRADES with the original and the shrunk strides; ``runs/demo/strides-study/report.md``.
6. The sparse randomized encoder study's ``quick`` profile
   (:mod:`robustlab.experiments.sparse_study`) with the PGD-AT model of step 2 as its
   adversarial-training baseline; ``runs/demo/sparse-study/report.md``.
7. The deformable-convolution-with-stochasticity study's ``quick`` profile
   (:mod:`robustlab.experiments.dcs_study`), the PGD-AT model of step 2 its baseline and
   transfer source; ``runs/demo/dcs-study/report.md``.
8. The gradient-norm study's ``quick`` profile (:mod:`robustlab.experiments.gradnorm_study`):
   GradNorm and PGD-3 AT with ReLU and GELU, a natural and an EdgeAlign model, each trained with
   the thesis' own recipe (it shares no baseline: its models differ by activation);
   ``runs/demo/gradnorm-study/report.md``.

Everything resumes: training from its last epoch, the battery from its last finished batch, the
study from its last finished model and evaluation. Subset sizes are printed in the reports.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.metrics import accuracy
from ..data import get_info, load_dataset, make_loader
from ..data.base import ImageDataset
from ..models import create_model
from ..report import format_pct, markdown_table
from ..train import Callback, TrainConfig, Trainer
from ..train.objectives import create_objective
from .dcs_study import DcsStudyConfig
from .gradnorm_study import GradNormStudyConfig
from .sd_study import SDStudyConfig
from .sparse_study import SparseStudyConfig
from .strides_study import StridesStudyConfig
from .study import StudyConfig, run_study, study_config


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo; the defaults are what ``make demo`` runs."""

    dataset: str = "fashion-mnist"
    model: str = "resnet-mini"
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1
    train_limit: int | None = 30_000
    test_limit: int | None = None
    seed: int = 0
    at_epochs: int = 3
    at_train_limit: int | None = 8_000
    at_steps: int = 5
    at_lr: float = 0.1
    eval_n: int = 100
    battery: str = "standard"
    eval_batch_size: int = 100
    sd_study: str | SDStudyConfig | None = "quick"
    """A :data:`~robustlab.experiments.sd_study.PROFILES` name (run on this dataset and model), a
    full config, or ``None`` to skip the study."""
    strides_study: str | StridesStudyConfig | None = "quick"
    """A :data:`~robustlab.experiments.strides_study.PROFILES` name (run on this dataset), a full
    config, or ``None`` to skip the study."""
    sparse_study: str | SparseStudyConfig | None = "quick"
    """A :data:`~robustlab.experiments.sparse_study.PROFILES` name (run on this dataset and model
    with step 2's PGD-AT model as its baseline), a full config, or ``None`` to skip the study."""
    dcs_study: str | DcsStudyConfig | None = "quick"
    """A :data:`~robustlab.experiments.dcs_study.PROFILES` name (run on this dataset and model with
    step 2's PGD-AT model as its baseline), a full config, or ``None`` to skip the study."""
    gradnorm_study: str | GradNormStudyConfig | None = "quick"
    """A :data:`~robustlab.experiments.gradnorm_study.PROFILES` name (run on this dataset and
    model), a full config, or ``None`` to skip the study."""


STUDY_KEYS = ("sd_study", "strides_study", "sparse_study", "dcs_study", "gradnorm_study")
"""The demo's study fields, in the order it runs them."""


def study_name(key: str) -> str:
    """The study a :data:`STUDY_KEYS` field runs (``sd_study`` -> ``sd-study``), also its folder."""
    return key.replace("_", "-")


# each study's report section: its title and the sentence before its link, given its eps
_SECTIONS: dict[str, tuple[str, Callable[[float], str]]] = {
    "sd_study": ("Stochastic Downsampling study", lambda eps: (
        "The standard model above is the baseline; every method replaces its strided convolutions and is "
        f"finetuned 5 epochs. The paper's protocol: L-inf eps = {eps:.4g} ({eps * 255:.3g}/255), PGD as in its "
        "Sec. 4.1, plus the adaptive attacks it lacks (EOT, transfer from the deterministic twin).")),
    "strides_study": ("Feature-map strides study", lambda eps: (
        "TRADES-trained models with the original strides and the shrunk ones (feature maps twice as large before "
        f"the average pooling), L-inf eps = {eps:g}.")),
    "sparse_study": ("Sparse randomized encoder study", lambda eps: (
        "The sparse randomized encoder (dictionary learnt on training patches, top-T, test-time dropout, ternary "
        "quantization) with a decoder in front of the classifier, under the paper's attack modes (W-NFGA, W-AIGA, "
        "PW-T, B-T) and the library's own (AA rand with BPDA, Square on the expected margin), L-inf eps = "
        f"{eps:g}; the PGD-AT model above is its adversarial-training baseline.")),
    "dcs_study": ("Deformable convolution with stochasticity study", lambda eps: (
        "resnet-mini's second convolution becomes a DCS layer (k = 5, n = 2 positions per forward), trained with "
        "GSAT and with plain PGD-AT; the same checkpoints under the paper's protocol (attack one sampled path, "
        "resample, infer) and under the honest one (EOT over the kernel distribution, AutoAttack `rand`, Square on "
        f"the expected margin, transfer from the PGD-AT model above, its baseline), L-inf eps = {eps:g}.")),
    "gradnorm_study": ("Gradient-norm regularization study", lambda eps: (
        "resnet-mini with its activations swapped (ReLU, GELU), trained from scratch with GradNorm (Eq. 4.1, "
        "double backprop) and with PGD-3 AT, plus a natural and an EdgeAlign GELU model, all with the thesis' "
        f"AdamW recipe; L-inf eps = {eps:g}.")),
}


def _train(
    name: str,
    objective: Any,
    tcfg: TrainConfig,
    train: ImageDataset,
    out: Path,
    cfg: DemoConfig,
    device: str | torch.device,
    callbacks: Sequence[Callback],
    resume: bool,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    info = get_info(cfg.dataset)
    model = create_model(
        cfg.model, num_classes=info.num_classes, in_channels=info.in_channels,
        mean=info.mean, std=info.std, seed=cfg.seed,
    )
    result = Trainer(
        model, objective, tcfg, callbacks=callbacks, out_dir=out / name, device=device,
        dataset_name=cfg.dataset,
    ).fit(train, resume=resume)
    return result.model.eval(), result.history


def run_demo(
    out_dir: str | os.PathLike[str] = "runs/demo",
    config: DemoConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    callbacks: Sequence[Callback] = (),
    progress: Callable[[Any], None] | None = None,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the numbers written to ``report.md`` (and ``results.json``).

    ``progress`` receives the battery's :class:`~robustlab.evaluate.ProgressEvent` objects;
    ``log`` the study's one-line steps.
    """
    from ..evaluate import Ledger, run_battery

    cfg = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    info = get_info(cfg.dataset)
    train = load_dataset(cfg.dataset, "train", limit=cfg.train_limit, seed=cfg.seed)
    at_limit = cfg.at_train_limit if cfg.train_limit is None else min(cfg.train_limit, cfg.at_train_limit or cfg.train_limit)
    at_train = load_dataset(cfg.dataset, "train", limit=at_limit, seed=cfg.seed)
    test = load_dataset(cfg.dataset, "test", limit=cfg.test_limit, seed=cfg.seed)
    threat = info.threat

    models: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    std_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, schedule="onecycle", seed=cfg.seed)
    model, hist = _train("standard", "standard", std_cfg, train, out, cfg, device, callbacks, resume)
    models["standard"] = {"model": model, "history": hist, "train_images": len(train),
                          "train_seconds": time.perf_counter() - t0, "objective": "cross-entropy"}

    t0 = time.perf_counter()
    at_obj = create_objective("pgd-at", eps=threat.eps, norm=threat.norm, steps=cfg.at_steps)
    at_cfg = TrainConfig(epochs=cfg.at_epochs, batch_size=cfg.batch_size, lr=cfg.at_lr, schedule="onecycle", seed=cfg.seed)
    model, hist = _train("pgd-at", at_obj, at_cfg, at_train, out, cfg, device, callbacks, resume)
    models["pgd-at"] = {"model": model, "history": hist, "train_images": len(at_train),
                        "train_seconds": time.perf_counter() - t0,
                        "objective": f"PGD-AT ({threat.norm} eps {threat.eps:g}, {cfg.at_steps} steps of 2.5 eps / {cfg.at_steps})"}

    eval_n = min(cfg.eval_n, len(test))
    ledger = Ledger(out / "ledger.sqlite")
    rows: list[dict[str, Any]] = []
    for name, m in models.items():
        model = m["model"]
        m["clean_accuracy"] = accuracy(model, make_loader(test, 1000), device)
        t0 = time.perf_counter()
        result = run_battery(
            model, test, cfg.battery, threat=threat, n=eval_n, batch_size=cfg.eval_batch_size,
            seed=cfg.seed, device=device, state_dir=out / "eval-state", progress=progress, name=name,
        )
        m["eval_seconds"] = time.perf_counter() - t0
        m["battery"] = result
        ledger.add(result, extra={"checkpoint": str(out / name / "model.safetensors")})
        rows.append({
            "name": name,
            "objective": m["objective"],
            "train_images": m["train_images"],
            "epochs": len(m["history"]),
            "train_seconds": round(m["train_seconds"], 1),
            "clean_accuracy": m["clean_accuracy"],
            "clean_accuracy_eval_n": result.clean_acc,
            "robust_accuracy": result.robust_acc,
            "per_attack": {k: s.robust_acc for k, s in result.per_attack.items()},
            "eval_seconds": round(m["eval_seconds"], 1),
            "history": m["history"],
            "battery_markdown": result.markdown(),
        })
    # the papers' studies: per demo field, its overrides and baseline (``None``: the study trains its own)
    at_model, standard_model = out / "pgd-at" / "model.safetensors", out / "standard" / "model.safetensors"
    plans: dict[str, tuple[dict[str, Any], Path | None]] = {
        "sd_study": ({"model": cfg.model}, standard_model), "strides_study": ({}, None),
        "sparse_study": ({"model": cfg.model}, at_model), "dcs_study": ({"model": cfg.model}, at_model),
        "gradnorm_study": ({"model": cfg.model}, None)}
    study_results: dict[str, dict[str, Any] | None] = {}
    for key in STUDY_KEYS:
        study_results[key] = None
        chosen: str | StudyConfig | None = getattr(cfg, key)
        if chosen is None:
            continue
        name, (overrides, baseline) = study_name(key), plans[key]
        t0 = time.perf_counter()
        scfg = study_config(name, chosen, dataset=cfg.dataset, **overrides) if isinstance(chosen, str) else chosen
        sres = run_study(name, out / name, scfg, device=device, baseline=baseline, log=log, callbacks=callbacks)
        study_results[key] = {"profile": scfg.profile, "seconds": round(time.perf_counter() - t0, 1),
                              "eps": scfg.eps, "summary_markdown": sres.summary}
    elapsed = time.perf_counter() - t_start
    cfg_dict = asdict(cfg)
    for key in STUDY_KEYS:
        if isinstance(getattr(cfg, key), StudyConfig):
            cfg_dict[key] = getattr(cfg, key).to_dict()
    results = {
        "config": cfg_dict,
        **study_results,
        "train_images": len(train),
        "test_images": len(test),
        "eval_n": eval_n,
        "threat": {"norm": threat.norm, "eps": threat.eps},
        "clean_accuracy": models["standard"]["clean_accuracy"],
        "models": rows,
        "total_seconds": round(elapsed, 1),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _write_report(out, results)
    return results


def _write_report(out: Path, r: dict[str, Any]) -> None:
    cfg = r["config"]
    th = r["threat"]
    attack_names = list(r["models"][0]["per_attack"]) if r["models"] else []
    summary = []
    for m in r["models"]:
        row = {
            "model": f"{cfg['model']} ({m['name']})",
            "training": m["objective"],
            "train images x epochs": f"{m['train_images']} x {m['epochs']}",
            f"clean, all {r['test_images']} (%)": format_pct(m["clean_accuracy"]),
            f"clean, {r['eval_n']} attacked (%)": format_pct(m["clean_accuracy_eval_n"]),
        }
        for a in attack_names:
            row[f"after {a} (%)"] = format_pct(m["per_attack"][a])
        row["worst case (%)"] = format_pct(m["robust_accuracy"])
        summary.append(row)
    timing = [{"step": m["name"], "training (s)": round(m["train_seconds"], 1), "evaluation (s)": m["eval_seconds"]}
              for m in r["models"]]
    for key in STUDY_KEYS:
        done = r.get(key)
        if done is not None:  # a study's training and evaluation together
            timing.append({"step": f"{study_name(key)} ({done['profile']}), training and evaluation", "training (s)": "-",
                           "evaluation (s)": done["seconds"]})
    parts = [
        "# robustlab demo report\n\n",
        f"Dataset: **{cfg['dataset']}** ({r['train_images']} training images for the standard model, "
        f"{r['test_images']} test images). Threat model: {th['norm']} eps = {th['eps']:g} in [0, 1] pixels. "
        f"Battery: `{cfg['battery']}` on {r['eval_n']} test images (the library's stratified, seeded "
        f"subset, as `robustlab evaluate --n {r['eval_n']}` picks), per-sample worst case "
        "(a sample counts as robust only if every attack fails on it). "
        f"Device: {r['device']} ({r['threads']} threads), torch {r['torch']}, Python {r['python']}.\n\n",
        "## Clean and robust accuracy\n\n", markdown_table(summary),
        "\nThe `after ...` columns are cumulative: robust accuracy once that attack and all before it "
        "have run.\n\n## Battery details\n\n",
    ]
    for m in r["models"]:
        parts += [m["battery_markdown"], "\n"]
    parts += ["## Training\n\n"]
    for m in r["models"]:
        hist = [{"epoch": h["epoch"], "train loss": f"{h['train_loss']:.4f}",
                 "train acc (%)": format_pct(h["train_acc"]), "seconds": h["seconds"]} for h in m["history"]]
        parts += [f"**{m['name']}** ({m['objective']})\n\n", markdown_table(hist), "\n"]
    for key in STUDY_KEYS:
        done = r.get(key)
        if done is not None:
            title, intro = _SECTIONS[key]
            name = study_name(key)
            parts += [f"## {title} ({done['profile']} profile)\n\n", intro(done["eps"]),
                      f" Every table, setting and figure: [{name}/report.md]({name}/report.md).\n\n",
                      done["summary_markdown"], "\n"]
    parts += ["## Time\n\n", markdown_table(timing), f"\nThe whole demo took {r['total_seconds']} s "
              "(resumed steps count only the time spent in this run).\n"]
    (out / "report.md").write_text("".join(parts))
