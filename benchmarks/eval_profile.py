"""Where an evaluation spends its time: per attack of a battery, the samples it still saw, the
forward and backward passes it spent, and its seconds (issue #31's profile).

``python benchmarks/eval_profile.py [--checkpoint PATH] [--battery standard] [--n 100] [--eps 0.1]``
runs one battery with :func:`robustlab.evaluate.run_battery` on a robustlab checkpoint (default:
a ``resnet-mini`` trained here for one epoch of cross-entropy on 4,000 Fashion-MNIST images; pass
the demo's ``runs/demo/pgd-at/model.safetensors`` for the PGD-AT case) and prints, per attack,
what the ledger row stores (:class:`robustlab.evaluate.AttackSummary`): samples seen and broken,
passes, seconds, the share of the battery's time, and milliseconds per image pass (forward +
backward), which separates attacks that are slow because they do many passes from attacks that
are slow per pass (overhead). The clean forward and the verdict's final judgement are the
remainder ("outside the attacks").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import robustlab
from robustlab.core import ThreatModel
from robustlab.data import get_info, load_dataset
from robustlab.evaluate import run_battery
from robustlab.models import create_model
from robustlab.train import TrainConfig, Trainer


def small_model() -> torch.nn.Module:
    info = get_info("fashion-mnist")
    model = create_model("resnet-mini", num_classes=info.num_classes, in_channels=info.in_channels,
                         mean=info.mean, std=info.std, seed=0)
    data = load_dataset("fashion-mnist", "train", limit=4000, seed=0)
    Trainer(model, "standard", TrainConfig(epochs=1, batch_size=128, lr=0.05, seed=0), device="cpu").fit(data)
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--battery", default="standard")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = robustlab.load(a.checkpoint).eval() if a.checkpoint else small_model()
    data = load_dataset("fashion-mnist", "test")
    t0 = time.perf_counter()
    result = run_battery(model, data, a.battery, threat=ThreatModel("linf", a.eps), n=a.n, seed=0,
                         batch_size=a.batch_size)
    wall = time.perf_counter() - t0
    print(f"battery {a.battery}, {a.n} images, L-inf eps {a.eps}, {torch.get_num_threads()} threads: "
          f"clean {100 * result.clean_acc:.2f}%, robust {100 * result.robust_acc:.2f}%, {wall:.1f} s wall")
    print("| attack | seen | broken | forwards | backwards | seconds | share | ms per image pass |")
    print("|---|---|---|---|---|---|---|---|")
    spent = 0.0
    for label, s in result.per_attack.items():
        passes = s.forward_passes + s.backward_passes
        per_pass = 1000 * s.seconds / passes if passes else float("nan")
        spent += s.seconds
        print(f"| {label} | {s.seen} | {s.broken} | {s.forward_passes} | {s.backward_passes} | {s.seconds:.1f} | "
              f"{100 * s.seconds / wall:.0f}% | {per_pass:.2f} |")
    print(f"| outside the attacks (clean forward, verdict, bookkeeping) | | | | | {wall - spent:.1f} | "
          f"{100 * (wall - spent) / wall:.0f}% | |")


if __name__ == "__main__":
    main()
