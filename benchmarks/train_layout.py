"""Training in the channels-last layout against the usual (contiguous) one, same run otherwise.

``python benchmarks/train_layout.py [--images 2000] [--repeats 2]``: one epoch of ``Trainer.fit``
on a stratified Fashion-MNIST subset, per model and objective of the demo (resnet-mini with
cross-entropy, with PGD-AT (3 steps), with GradNorm after the GELU swap, and with a DCS layer under
GSAT), with ``channels_last`` off (the baseline) and on; prints seconds and the ratio on / off
(the best of ``repeats`` runs each, to discount a shared machine) and the largest difference of
the trained weights, which the layout changes only at float rounding.
"""

from __future__ import annotations

import argparse
import time

import torch

from robustlab.data import get_info, load_dataset
from robustlab.defenses import CONVERSIONS
from robustlab.models import create_model
from robustlab.train import TrainConfig, Trainer, create_objective

CASES = (
    ("resnet-mini, cross-entropy", (), "standard", {}),
    ("resnet-mini, PGD-AT (3 steps)", (), "pgd-at", {"eps": 0.1, "steps": 3}),
    ("resnet-mini GELU, GradNorm", (("activations", {"kind": "gelu"}),), "gradnorm", {"eps": 0.1}),
    ("resnet-mini + DCS, GSAT (3 steps)", (("dcs", {"layers": (2,), "k": 5, "n": 2}),), "gsat", {"eps": 0.1, "steps": 3}),
)


def train_once(conversions: tuple, objective: str, options: dict, images: int, channels_last: bool) -> tuple[float, torch.nn.Module]:
    info = get_info("fashion-mnist")
    model = create_model("resnet-mini", num_classes=info.num_classes, in_channels=info.in_channels,
                         mean=info.mean, std=info.std, seed=0)
    for name, opts in conversions:
        model = CONVERSIONS.meta(name)["convert"](model, **opts)
    cfg = TrainConfig(epochs=1, batch_size=128, lr=0.05, seed=0, channels_last=channels_last)
    data = load_dataset("fashion-mnist", "train", limit=images, seed=0)
    t0 = time.perf_counter()
    result = Trainer(model, create_objective(objective, **options), cfg, device="cpu").fit(data)
    return time.perf_counter() - t0, result.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images, one epoch")
    for label, conversions, objective, options in CASES:
        runs = {flag: [train_once(conversions, objective, options, args.images, flag) for _ in range(args.repeats)]
                for flag in (False, True)}
        off, on = min(t for t, _ in runs[False]), min(t for t, _ in runs[True])
        diff = max((a - b).abs().max().item() for a, b in zip(runs[False][0][1].state_dict().values(),
                                                               runs[True][0][1].state_dict().values(), strict=True)
                   if a.is_floating_point())
        print(f"{label}: contiguous {off:.1f} s, channels_last {on:.1f} s, ratio {on / off:.2f} "
              f"(largest weight difference {diff:.2e})")


if __name__ == "__main__":
    main()
