"""The main job behind ``make demo``: a standard and a PGD-AT ``resnet-mini`` on Fashion-MNIST.

1. Train ``resnet-mini`` with cross-entropy on the full 60,000-image training set; clean
   accuracy on the full 10,000-image test set.
2. Train ``resnet-mini`` with PGD adversarial training (Madry et al., 2018; L-inf eps 0.1, the
   dataset's default threat) on a stratified training subset, sized to fit the CPU budget.
3. Evaluate both with the ``standard`` battery (AutoAttack standard at the reference settings:
   APGD-CE, APGD-T, FAB-T at 100 iterations, Square at 5,000 queries) on the first ``eval_n``
   test images, keeping the per-sample worst case. Each evaluation is a row of the ledger
   ``runs/demo/ledger.sqlite`` (``robustlab leaderboard --ledger runs/demo/ledger.sqlite``).

Everything resumes: training from its last epoch, the battery from its last finished batch.
Subset sizes are printed in ``runs/demo/report.md``. Later issues add the defense studies.
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


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo; the defaults are what ``make demo`` runs."""

    dataset: str = "fashion-mnist"
    model: str = "resnet-mini"
    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.1
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    at_epochs: int = 4
    at_train_limit: int | None = 15_000
    at_steps: int = 5
    at_lr: float = 0.1
    eval_n: int = 500
    battery: str = "standard"
    eval_batch_size: int = 250


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
) -> dict[str, Any]:
    """Run the demo; returns the numbers written to ``report.md`` (and ``results.json``).

    ``progress`` receives the battery's :class:`~robustlab.evaluate.ProgressEvent` objects.
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
    elapsed = time.perf_counter() - t_start
    results = {
        "config": asdict(cfg),
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
            f"clean, first {r['eval_n']} (%)": format_pct(m["clean_accuracy_eval_n"]),
        }
        for a in attack_names:
            row[f"after {a} (%)"] = format_pct(m["per_attack"][a])
        row["worst case (%)"] = format_pct(m["robust_accuracy"])
        summary.append(row)
    timing = [{"model": m["name"], "training (s)": m["train_seconds"], "battery (s)": m["eval_seconds"]}
              for m in r["models"]]
    parts = [
        "# robustlab demo report\n\n",
        f"Dataset: **{cfg['dataset']}** ({r['train_images']} training images for the standard model, "
        f"{r['test_images']} test images). Threat model: {th['norm']} eps = {th['eps']:g} in [0, 1] pixels. "
        f"Battery: `{cfg['battery']}` on the first {r['eval_n']} test images, per-sample worst case "
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
    parts += ["## Time\n\n", markdown_table(timing), f"\nThe whole demo took {r['total_seconds']} s "
              "(resumed steps count only the time spent in this run).\n"]
    (out / "report.md").write_text("".join(parts))
