"""The main job behind ``make demo``: train ``resnet-mini`` on Fashion-MNIST and report.

It trains on the full 60,000-image training set and measures clean accuracy on the full
10,000-image test set, writing ``runs/demo/report.md``. Later issues grow it into the full
defense study (attacks, defenses, robust training).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.metrics import accuracy
from ..data import get_info, load_dataset, make_loader
from ..models import create_model
from ..report import format_pct, markdown_table
from ..train import Callback, TrainConfig, Trainer


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


def run_demo(
    out_dir: str | os.PathLike[str] = "runs/demo",
    config: DemoConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    callbacks: Sequence[Callback] = (),
    resume: bool = True,
) -> dict[str, Any]:
    """Run the demo; returns the numbers written to ``report.md`` (and ``results.json``)."""
    cfg = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    info = get_info(cfg.dataset)
    train = load_dataset(cfg.dataset, "train", limit=cfg.train_limit, seed=cfg.seed)
    test = load_dataset(cfg.dataset, "test", limit=cfg.test_limit, seed=cfg.seed)
    model = create_model(
        cfg.model, num_classes=info.num_classes, in_channels=info.in_channels,
        mean=info.mean, std=info.std, seed=cfg.seed,
    )
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, schedule="onecycle", seed=cfg.seed)
    result = Trainer(
        model, "standard", tcfg, callbacks=callbacks, out_dir=out / "standard", device=device,
        dataset_name=cfg.dataset,
    ).fit(train, resume=resume)
    t_train = time.perf_counter() - t_start
    acc = accuracy(result.model.eval(), make_loader(test, 1000), device)
    elapsed = time.perf_counter() - t_start
    results = {
        "config": asdict(cfg),
        "train_images": len(train),
        "test_images": len(test),
        "clean_accuracy": acc,
        "train_seconds": round(t_train, 1),
        "total_seconds": round(elapsed, 1),
        "history": result.history,
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
    rows = [{
        "model": cfg["model"], "objective": "standard", "epochs": cfg["epochs"],
        "train images": r["train_images"], "test images": r["test_images"],
        "clean accuracy (%)": format_pct(r["clean_accuracy"]),
    }]
    hist = [{"epoch": h["epoch"], "train loss": f"{h['train_loss']:.4f}", "train acc (%)": format_pct(h["train_acc"]),
             "seconds": h["seconds"]} for h in r["history"]]
    text = (
        "# robustlab demo report\n\n"
        f"Dataset: **{cfg['dataset']}** ({r['train_images']} training images, {r['test_images']} test images). "
        f"Device: {r['device']} ({r['threads']} threads), torch {r['torch']}, Python {r['python']}.\n\n"
        "## Clean accuracy\n\n" + markdown_table(rows) +
        "\n## Training\n\n" + markdown_table(hist) +
        f"\nTraining took {r['train_seconds']} s; the whole demo {r['total_seconds']} s.\n"
    )
    (out / "report.md").write_text(text)
