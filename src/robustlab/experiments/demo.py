"""The main job behind ``make demo``: a standard and a PGD-AT ``resnet-mini`` on Fashion-MNIST.

1. Train ``resnet-mini`` with cross-entropy on a stratified 20,000-image third of the training
   set (the whole 60,000 cost 50 s more of the 15-minute budget for two points than 30,000:
   91.34% vs 89.35% clean on the 10,000 test images, measured; 20,000 leave room for the
   audits); clean accuracy on the full 10,000-image test set.
2. Train ``resnet-mini`` with PGD adversarial training (Madry et al., 2018; L-inf eps 0.1, the
   dataset's default threat) on a stratified training subset, sized to fit the CPU budget.
3. A first look at both: the ``quick`` battery (PGD-20) on ``eval_n`` test images, each a row of
   the ledger ``runs/demo/ledger.sqlite`` (``robustlab leaderboard --ledger runs/demo/ledger.sqlite``);
   the arena (step 4, last) runs AutoAttack on them beside every defense.
4. Every registered study whose recipe declares a demo part (:class:`~.study.DemoPart`), in the
   order the parts give (:func:`demo_studies`): its demo profile (``quick``) on this dataset (and
   model, where the recipe takes it), with the standard model of step 1 or the PGD-AT model of
   step 2 as its baseline where the recipe asks for one. Each study's full report is
   ``runs/demo/<study>/report.md``; the demo's repeats its first table and its verdict, after the
   recipe's sentence on it. The arena (:mod:`.arena_study`) runs last on the models the
   demo and the studies made, audits every row (the other studies run without their audits, so
   each model is audited once) and opens the report with its answer.

Everything resumes: training from its last epoch, the battery from its last finished batch, the
study from its last finished model and evaluation. Subset sizes are printed in the reports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.markdown import format_pct, markdown_table
from ..core.metrics import accuracy
from ..data import get_info, load_dataset, make_loader
from ..data.base import ImageDataset
from ..models import create_model
from ..train import Callback, TrainConfig, Trainer
from ..train.objectives import create_objective
from .audits import AUDIT_INTRO, audit_rows
from .html import write_html
from .records import RecordStore
from .study import STUDIES, Study, StudyConfig, run_study, study_config

__all__ = ["DemoConfig", "demo_studies", "run_demo", "study_key"]


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo; the defaults are what ``make demo`` runs."""

    dataset: str = "fashion-mnist"
    model: str = "resnet-mini"
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1
    train_limit: int | None = 20_000
    test_limit: int | None = None
    seed: int = 0
    at_epochs: int = 3
    at_train_limit: int | None = 6_000
    at_steps: int = 5
    at_lr: float = 0.1
    eval_n: int = 48
    battery: str = "quick"
    """The first look at the two models (PGD-20); the arena runs AutoAttack on them."""
    eval_batch_size: int = 100
    audit: str | None = "demo"
    """The audit profile of the studies that audit in the demo (the arena: every row's adaptive
    evaluation, :data:`robustlab.audit.AUDIT_PROFILES`); ``None``: no audit table."""
    studies: Mapping[str, str | StudyConfig | None] = field(default_factory=dict)
    """Per study name (``sd-study``): a profile name (run on this dataset, and model where the
    recipe takes it), a full config, or ``None`` to skip the study; a study not named runs its
    recipe's demo profile."""


def demo_studies() -> list[Study]:
    """Every registered study with a demo part, in the order the demo runs them (its part's
    ``order``; ties by name)."""
    parts = [(study.demo.order, study) for study in map(STUDIES.get, STUDIES.names()) if study.demo is not None]
    return [study for _, study in sorted(parts, key=lambda p: p[0])]


def study_key(name: str) -> str:
    """A study's key in the demo's results (``sd-study`` -> ``sd_study``); its folder is its name."""
    return name.replace("-", "_")


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
    # by registered name (``sd_study`` reads as ``sd-study``); an unknown study fails before any training
    given = {STUDIES.get(name).name: chosen for name, chosen in cfg.studies.items()}
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
    # channels-last: 0.83x (cross-entropy) and 0.78x (PGD-AT) the time of a contiguous epoch here
    # (benchmarks/train_layout.py); the weights come back in the usual layout
    std_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, schedule="onecycle", seed=cfg.seed,
                          channels_last=True)
    model, hist = _train("standard", "standard", std_cfg, train, out, cfg, device, callbacks, resume)
    models["standard"] = {"model": model, "history": hist, "train_images": len(train),
                          "train_seconds": time.perf_counter() - t0, "objective": "cross-entropy"}

    t0 = time.perf_counter()
    at_obj = create_objective("pgd-at", eps=threat.eps, norm=threat.norm, steps=cfg.at_steps)
    at_cfg = TrainConfig(epochs=cfg.at_epochs, batch_size=cfg.batch_size, lr=cfg.at_lr, schedule="onecycle", seed=cfg.seed,
                         channels_last=True)
    model, hist = _train("pgd-at", at_obj, at_cfg, at_train, out, cfg, device, callbacks, resume)
    models["pgd-at"] = {"model": model, "history": hist, "train_images": len(at_train),
                        "train_seconds": time.perf_counter() - t0,
                        "objective": f"PGD-AT ({threat.norm} eps {threat.eps:g}, {cfg.at_steps} steps of 2.5 eps / {cfg.at_steps})"}

    eval_n = min(cfg.eval_n, len(test))
    ledger = Ledger(out / "ledger.sqlite")
    rows: list[dict[str, Any]] = []
    audits: list[dict[str, str]] = []
    for name, m in models.items():
        model = m["model"]
        m["clean_accuracy"] = accuracy(model, make_loader(test, 1000), device)
        t0 = time.perf_counter()
        result = run_battery(
            model, test, cfg.battery, threat=threat, n=eval_n, batch_size=cfg.eval_batch_size,
            seed=cfg.seed, device=device, state_dir=out / "eval-state", progress=progress, name=name,
        )
        m["battery"] = result
        ledger.add(result, extra={"checkpoint": str(out / name / "model.safetensors")})
        m["eval_seconds"] = time.perf_counter() - t0
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
    # the papers' studies, each with the settings and baseline its recipe's demo part asks for
    baselines = {name: out / name / "model.safetensors" for name in ("standard", "pgd-at")}
    study_results: dict[str, dict[str, Any] | None] = {}
    chosen_of: dict[str, str | StudyConfig | None] = {}
    sections: dict[str, tuple[str, str, str]] = {}  # per results key: heading, sentence, folder
    for study in demo_studies():
        part, key = study.demo, study_key(study.name)
        assert part is not None
        study_results[key] = None
        chosen = chosen_of[key] = given.get(study.name, part.profile)
        if chosen is None:
            continue
        t0 = time.perf_counter()
        scfg = (study_config(study, chosen, **{k: getattr(cfg, k) for k in part.inherits}) if isinstance(chosen, str)
                else chosen)
        # the demo audits each model once, in the study whose part asks (the arena)
        scfg = dataclasses.replace(scfg, audit=cfg.audit if part.audits and scfg.audit is not None else None)
        if part.reuse is not None and not getattr(scfg, "reuse", ()):  # the models the demo already made, loaded
            scfg = _reusing(scfg, part.reuse(out))
        # one evaluation state for the whole demo: an evaluation two studies share (the arena's
        # AutoAttack rand on the sparse encoder is the sparse study's) runs once
        sres = run_study(study, out / study.name, scfg, device=device, log=log, callbacks=callbacks,
                         state_dir=out / "eval-state",
                         baseline=None if part.baseline is None else baselines[part.baseline])
        study_results[key] = {"profile": scfg.profile, "seconds": round(time.perf_counter() - t0, 1),
                              "eps": scfg.eps, "summary_markdown": sres.summary, "answer_markdown": sres.answer}
        sections[key] = (part.heading or study.title, part.about(scfg), study.name)
        audits += audit_rows(list(RecordStore(out / study.name / "records")), f"{study.name}/")
    elapsed = time.perf_counter() - t_start
    cfg_dict: dict[str, Any] = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "studies"}
    cfg_dict.update({key: c.to_dict() if isinstance(c, StudyConfig) else c for key, c in chosen_of.items()})
    results = {
        "config": cfg_dict,
        **study_results,
        "train_images": len(train),
        "test_images": len(test),
        "eval_n": eval_n,
        "threat": {"norm": threat.norm, "eps": threat.eps},
        "clean_accuracy": models["standard"]["clean_accuracy"],
        "models": rows,
        "audits": audits,
        "total_seconds": round(elapsed, 1),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _write_report(out, results, sections)
    return results


def _reusing(scfg: StudyConfig, reuse: Mapping[str, str]) -> StudyConfig:
    """``scfg`` loading the models ``reuse`` names; a study with ``rows`` keeps only those rows."""
    known = {f.name for f in fields(scfg)}
    changes: dict[str, Any] = {"reuse": tuple(sorted(reuse.items()))} if "reuse" in known else {}
    if "rows" in known:
        changes["rows"] = tuple(row for row in getattr(scfg, "rows") if row in reuse)  # noqa: B009
    return dataclasses.replace(scfg, **changes)


def _write_report(out: Path, r: dict[str, Any], sections: Mapping[str, tuple[str, str, str]]) -> None:
    """The demo's report from its results; ``sections``: per study run (results key), its
    heading, the sentence on it and its folder."""
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
    for key, (_, _, name) in sections.items():  # a study's training and evaluation together
        timing.append({"step": f"{name} ({r[key]['profile']}), training and evaluation", "training (s)": "-",
                       "evaluation (s)": r[key]["seconds"]})
    parts = [
        "# robustlab demo report\n\n",
        f"Dataset: **{cfg['dataset']}** ({r['train_images']} training images for the standard model, "
        f"{r['test_images']} test images). Threat model: {th['norm']} eps = {th['eps']:g} in [0, 1] pixels. "
        f"Battery: `{cfg['battery']}` on {r['eval_n']} test images (the library's stratified, seeded "
        f"subset, as `robustlab evaluate --n {r['eval_n']}` picks), per-sample worst case "
        "(a sample counts as robust only if every attack fails on it). "
        f"Device: {r['device']} ({r['threads']} threads), torch {r['torch']}, Python {r['python']}.\n\n",
    ]
    for key, (heading, about, name) in sections.items():  # the answer first: a study's one-table answer
        if r[key].get("answer_markdown"):
            parts += [f"## {heading}: the answer ({r[key]['profile']} profile)\n\n", about,
                      f" Every table, setting and figure: [{name}/report.md]({name}/report.md).\n\n",
                      r[key]["answer_markdown"], "\n"]
    parts += [
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
    for key, (heading, about, name) in sections.items():
        done = r[key]
        parts += [f"## {heading} ({done['profile']} profile)\n\n", about,
                  f" Every table, setting and figure: [{name}/report.md]({name}/report.md).\n\n",
                  done["summary_markdown"], "\n"]
    if r.get("audits"):
        parts += ["## Audits\n\n", AUDIT_INTRO, "\n\n", markdown_table(r["audits"]), "\n"]
    parts += ["## Time\n\n", markdown_table(timing), f"\nThe whole demo took {r['total_seconds']} s "
              "(resumed steps count only the time spent in this run).\n"]
    report = "".join(parts)
    (out / "report.md").write_text(report)
    write_html(out / "report.html", report, title="robustlab demo report")
